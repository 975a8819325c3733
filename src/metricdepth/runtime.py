"""How a model runs: the optimised PyTorch path and the ONNX Runtime backend.

``optimize(model, precision)`` wraps a loaded ``DepthModel`` for fast CPU inference without
changing its maths: channels-last activations where they help (convolutional models),
``inference_mode``, and optionally bfloat16 autocast (``precision="bf16"``; outputs are
returned in float32). The reference-faithful path is the plain ``DepthModel`` (what the
parity tests check); ``tests/test_speed_paths.py`` checks that the float32 optimised path
stays within 1e-4 of it.

``load_onnx(path)`` opens a file written by ``metricdepth.export.export_onnx`` and returns an
``OnnxModel``: its ``spec`` comes from the file's metadata; it is a ``predictor.Backend`` that
takes the image and its camera (the graph does the whole prediction) and reports the record
the graph used, so a ``Predictor`` of it returns the same ``Prediction`` (same record, same
camera source) as of the PyTorch model, and ``batch.run_batch`` writes the same files with
either backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metricdepth.camera import Camera
from metricdepth.models.registry import DepthModel, cached_weights_sha256
from metricdepth.models.spec import (
    ONNX_FORMAT,
    ONNX_META_FORMAT,
    ONNX_META_SPEC,
    PRECISIONS,
    ModelSpec,
)
from metricdepth.prediction import Prediction

BACKENDS = ("torch", "onnxruntime")


def default_threads() -> int:
    """Intra-op threads: the CPUs this process may use (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default ``default_threads()``); returns the number."""
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


class OptimizedModel(DepthModel):
    """A ``DepthModel`` run for speed: see ``optimize``. ``forward(x)`` as ``DepthModel``."""

    def __init__(self, model: DepthModel, precision: str, channels_last: bool) -> None:
        super().__init__(model.spec, model.net, model.weights_file)
        self.precision = precision
        self.channels_last = channels_last

    def forward(self, x: Tensor, record=None) -> dict[str, Tensor]:
        self.check_input(x, record)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        bf16 = self.precision == "bf16"
        with torch.inference_mode():
            if bf16 and self.spec.arch == "metric3d_vit":
                out = self._vit_bf16_encoder(x)
            else:
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = self.net(x)
        return {k: v.float().contiguous() for k, v in out.items()}

    def _vit_bf16_encoder(self, x: Tensor) -> dict[str, Tensor]:
        """bfloat16 backbone, float32 decoder.

        The RAFT decoder keeps depth as ``(d - 200) / 100`` in its GRU state; with bfloat16's
        8-bit mantissa there, the final depth moved by a median 3 % (measured on the KITTI
        fixture), so only the encoder (most of the matrix products) runs in bfloat16.
        """
        model = self.net.depth_model
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            features, grid = model.encoder(x)
        return model.decoder([f.float() for f in features], grid)


def optimize(model: DepthModel, precision: str = "fp32", channels_last: bool | None = None):
    """``model`` prepared for fast inference (same parameters, shared, not copied).

    Args:
        model: a loaded ``DepthModel`` in eval mode.
        precision: ``"fp32"`` (results within float32 rounding of the plain model) or
            ``"bf16"`` (bfloat16 autocast on the matrix products and convolutions; for the
            ViT models on the encoder only, see ``_vit_bf16_encoder``; the error is measured
            by ``benchmarks/speed.py``).
        channels_last: store convolution weights and activations channels-last; default: on
            for the convolutional models (ConvNeXt, ``small_unet``), off for the ViT, where
            an interleaved measurement on a busy 2-core machine showed no clear gain
            (23.4 s vs 25.3 s, within that machine's run-to-run spread).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(model, OptimizedModel):
        model = DepthModel(model.spec, model.net, model.weights_file)
    if channels_last is None:
        channels_last = model.spec.arch != "metric3d_vit"
    if channels_last:
        model.net.to(memory_format=torch.channels_last)
    return OptimizedModel(model, precision, channels_last).eval()


# ---------------------------------------------------------------------------------- ONNX


class OnnxModel:
    """An exported prediction graph run by ONNX Runtime (CPU).

    Attributes:
        spec: the ``ModelSpec`` stored in the file.
        meta: the file's ``metadata_props``.
        path: the file.
    """

    #: What ``infer`` takes (``metricdepth.predictor.Backend``): the image and its camera.
    takes = ("image", "camera")
    device = torch.device("cpu")

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads() if threads is None else int(threads)
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            first = str(error).strip().splitlines()[0] if str(error).strip() else error
            raise ValueError(f"{self.path}: not a loadable ONNX model ({first})") from None
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.meta.get(ONNX_META_FORMAT) != ONNX_FORMAT:
            raise ValueError(
                f"{self.path}: not a metricdepth export (no {ONNX_META_FORMAT}={ONNX_FORMAT} "
                "metadata); write one with 'metricdepth export'"
            )
        self.spec = ModelSpec.from_json(self.meta[ONNX_META_SPEC])
        self.weights_file = self.path
        self.camera_input = self.meta.get("metricdepth.camera_input", "focal")
        self.image_dtype = self.meta.get("metricdepth.image_dtype", "uint8")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def weights_sha256(self) -> str:
        """The SHA-256 of the ``.onnx`` file (computed once)."""
        return cached_weights_sha256(self)

    def run(self, image: np.ndarray, camera: Camera, focal_mode: str) -> dict[str, np.ndarray]:
        """Raw graph outputs (``depth`` metres, ``confidence``, ``normal``, ``canonical``) for
        one (H, W, 3) image."""
        focal = camera.focal(focal_mode)
        return self._run(image, np.array([focal, focal, camera.cx, camera.cy], np.float32))

    def _run(self, image: np.ndarray, camera: np.ndarray) -> dict[str, np.ndarray]:
        """The session on one image and its ``(focal, focal, cx, cy)`` float32 camera."""
        if self.camera_input == "focal":
            camera = camera[:1]  # an intrinsics graph honours the focal mode by fx = fy
        pixels = image if self.image_dtype == "uint8" else image.astype(np.float32)
        feed = dict(zip(self.input_names, (np.ascontiguousarray(pixels), camera), strict=True))
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))

    def infer(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The ``Backend`` method: ``image`` (B, H, W, 3) uint8 and ``camera`` (B, 4) in;
        ``depth_m`` (B, H, W) metres, ``confidence``, ``normal`` (B, H, W, 3) where the model
        has them, and ``canonical`` (B, 6): the record numbers the graph used."""
        if "canonical" not in self.output_names:
            raise ValueError(
                f"{self.path}: exported by an older metricdepth (no 'canonical' output); "
                "export it again with 'metricdepth export'"
            )
        names = {"depth": "depth_m", "confidence": "confidence", "normal": "normal"}
        rows = [
            self._run(image.numpy(), camera.numpy())
            for image, camera in zip(batch["image"], batch["camera"], strict=True)
        ]
        return {
            names.get(key, key): torch.from_numpy(np.stack([row[key] for row in rows]))
            for key in self.output_names
        }

    def predict(
        self,
        image: np.ndarray,
        camera: Camera,
        camera_source: str = "given",
        focal_mode: str | None = None,
    ) -> Prediction:
        """The ``Prediction`` of ``pipeline.predict`` for (H, W, 3) uint8 RGB ``image``."""
        from metricdepth.predictor import Predictor

        return Predictor(self, focal_mode).predict(image, camera, camera_source)

    def describe(self) -> dict:
        return json.loads(self.spec.to_json())


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """Open an exported ``.onnx`` file (``metricdepth export``) for the ONNX Runtime backend."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"--backend onnxruntime needs an exported .onnx file, got {path}")
    return OnnxModel(path, threads)
