"""The prediction pipeline, written once: ``prepare`` -> ``forward`` -> ``finish``.

A ``Predictor`` is a model (a ``Backend``) with its canonical space and focal mode:

* ``prepare(image, camera)`` -> ``Prepared``: the network input of one image and the
  ``CanonicalRecord`` that made it (undistortion first when a lens is given). A pure function
  of (space, focal mode, image, camera): the module-level ``prepare`` needs no network, so it
  runs in loader processes; a ``Prepared`` is frozen and pickles without model state.
* ``forward(batch)`` -> the backend's outputs for a batch (``collate`` of ``Prepared`` inputs
  of one size, or a (B, 3, H_in, W_in) tensor of canvases).
* ``finish(outputs, prepared)`` -> ``Prediction`` of ONE image (``split`` cuts a batch's
  outputs per image): metric depth at the original size (``from_canonical``: un-pad, resize
  back, x ``f_eff / f_c``), clamped to ``[0, max_depth_m]``, confidence and unit normals
  resized, mapped back onto the distorted grid, timings, the camera and its source.
* ``predict(image, camera)``: the three in a row.

``metricdepth.predict``, the command line, eval, the web page, training's ``predict_depth_m``
and the batch runner all predict through here.

Backends implement ``Backend`` (``spec``, ``device``, ``takes``, ``describe()``,
``infer(batch)``): the eager and the optimised PyTorch models (``models.registry.DepthModel``,
``runtime.OptimizedModel``) take normalised canvases ``x`` and return canonical outputs
(``depth_c`` (B, 1, H_in, W_in), ``confidence``, ``normal``); an exported graph run by ONNX
Runtime (``runtime.OnnxModel``) takes the ``image`` and its ``camera`` and does the whole
prediction in-graph, built from the same ``canonical`` functions: it returns metric maps at
the image size (``depth_m`` (B, H, W), ...) and the record numbers it used (``canonical``),
which ``finish`` reads instead of its own (``canonical.record_from_graph``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metricdepth.camera import Camera, check_focal_mode
from metricdepth.canonical import (
    CanonicalRecord,
    CanonicalSpace,
    canonical_canvas,
    from_canonical,
    inference_record,
    normalize,
    record_from_graph,
    unpad,
)
from metricdepth.distortion import Distortion, PinholeView
from metricdepth.models.spec import ModelSpec
from metricdepth.prediction import Prediction, check_image, timings_ms

#: ``Backend.takes`` of a model run on normalised canvases.
CANVAS_INPUTS = ("x",)
#: ``Backend.takes`` of a whole-prediction graph: the image (H, W, 3) uint8 and its camera
#: (4,) float32 ``(focal, focal, cx, cy)`` with the focal under the predictor's focal mode.
IMAGE_INPUTS = ("image", "camera")


@runtime_checkable
class Backend(Protocol):
    """What runs a ``Predictor``'s model.

    Attributes:
        spec: the ``ModelSpec`` (canonical space, focal mode, clamp, outputs, name).
        device: where ``infer`` wants its inputs.
        takes: the inputs ``infer`` reads: ``CANVAS_INPUTS`` or ``IMAGE_INPUTS``.
    """

    spec: ModelSpec
    device: torch.device
    takes: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary of the model."""
        ...

    def infer(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Outputs of a batch (each input (B, ...)): canonical maps on the canvas, or for a
        whole-prediction graph metric maps at the image size and ``canonical`` numbers."""
        ...


@dataclass(frozen=True, eq=False)
class Prepared:
    """One image made ready for the network (picklable: no model state).

    Attributes:
        inputs: the backend's inputs of this image, without a batch axis: ``x`` (3, H_in,
            W_in) float32 normalised canvas, or ``image`` (H, W, 3) uint8 and ``camera`` (4,).
        record: the canonical record (of the pinhole camera when there is a lens).
        camera: the camera of the image as given (distorted when there is a lens).
        source: where ``camera`` came from (``given``, ``annotation``, ``exif``, ``default``).
        lens: the ``PinholeView`` the network saw for a distorted image, else None.
        pre_s: seconds spent preparing it.
    """

    inputs: dict[str, Tensor]
    record: CanonicalRecord
    camera: Camera
    source: str = "given"
    lens: PinholeView | None = None
    pre_s: float = 0.0

    @property
    def x(self) -> Tensor:
        """The normalised canvas (3, H_in, W_in) float32 (canvas backends)."""
        return self.inputs["x"]


def undistorted(
    image: np.ndarray,
    camera: Camera,
    distortion: Distortion | None,
    alpha: float | None = None,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, PinholeView | None]:
    """``(pinhole image, PinholeView)`` of a distorted image; ``(image, None)`` without a lens."""
    if distortion is None:
        return image, None
    from metricdepth.distortion import pinhole_view, undistort_image

    lens = pinhole_view(camera, distortion, alpha)
    return undistort_image(image, lens, fill), lens


def prepare_canvas(
    space: CanonicalSpace,
    focal_mode: str,
    image: np.ndarray,
    camera: Camera,
    distortion: Distortion | None = None,
    alpha: float | None = None,
) -> tuple[np.ndarray, CanonicalRecord, PinholeView | None]:
    """``(canvas, record, lens)``: the (H_in, W_in, 3) uint8 canvas of one image (``prepare``
    without normalising; what crosses from a loader process as plain bytes)."""
    seen, lens = undistorted(image, camera, distortion, alpha, space.pad_rgb)
    net_camera = camera if lens is None else lens.pinhole  # the camera the network sees
    canvas, record = canonical_canvas(seen, net_camera, space, focal_mode)
    return canvas, record, lens


def check_camera(image: np.ndarray, camera: Camera) -> np.ndarray:
    """``image`` as a checked (H, W, 3) uint8 array whose size is ``camera``'s, else ValueError."""
    image = check_image(image)
    height, width = image.shape[:2]
    if camera.size != (width, height):
        raise ValueError(
            f"image is {width}x{height} but its camera is for {camera.width}x{camera.height}"
        )
    return image


def prepare(
    space: CanonicalSpace,
    focal_mode: str,
    image: np.ndarray,
    camera: Camera,
    source: str = "given",
    *,
    takes: Sequence[str] = CANVAS_INPUTS,
    distortion: Distortion | None = None,
    alpha: float | None = None,
) -> Prepared:
    """One (H, W, 3) uint8 ``image`` of ``camera`` made ready for a backend that ``takes``
    these inputs (``Predictor.prepare`` without a model)."""
    started = time.perf_counter()
    image = check_camera(image, camera)
    check_focal_mode(focal_mode)
    inputs: dict[str, Tensor] = {}
    if "image" in takes:  # a whole-prediction graph: the canvas is made in the graph
        if distortion is not None:
            raise ValueError("distortion needs a PyTorch model (ONNX graphs are pinhole)")
        record, lens = inference_record(camera, space, focal_mode), None
        inputs["image"] = torch.from_numpy(np.ascontiguousarray(image))
        focal = camera.focal(focal_mode)  # an intrinsics graph honours the mode by fx = fy
        inputs["camera"] = torch.tensor([focal, focal, camera.cx, camera.cy], dtype=torch.float32)
    else:
        canvas, record, lens = prepare_canvas(space, focal_mode, image, camera, distortion, alpha)
        inputs["x"] = normalize(canvas, space)[0]
    return Prepared(inputs, record, camera, source, lens, time.perf_counter() - started)


def collate(prepared: Sequence[Prepared]) -> dict[str, Tensor]:
    """The batch of some ``Prepared`` of one input size: each input stacked (B, ...)."""
    if not prepared:
        raise ValueError("collate: no inputs")
    return {key: torch.stack([p.inputs[key] for p in prepared]) for key in prepared[0].inputs}


def split(outputs: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """A batch's outputs -> one dict per image (the batch axis taken off)."""
    n = len(next(iter(outputs.values())))
    return [{key: value[i] for key, value in outputs.items()} for i in range(n)]


def finish(
    spec: ModelSpec, outputs: Mapping[str, Tensor], prepared: Prepared, forward_s: float = 0.0
) -> Prediction:
    """The outputs of ONE image (``split``) -> its ``Prediction`` at the original resolution.

    Canonical outputs (``depth_c`` (1, H_in, W_in), ``confidence`` (1, H_in, W_in),
    ``normal`` (C >= 3, H_in, W_in)) are un-padded, resized back (bilinear), depth scaled by
    ``f_eff / f_c`` and clamped to ``[0, spec.max_depth_m]``, normals made unit again. A
    whole-prediction graph's outputs (``depth_m`` (H, W), ...) are already that; its record
    is the one the graph reports (``canonical``). With a lens every map is moved back onto
    the distorted camera's grid (``distortion.to_original``).
    """
    started = time.perf_counter()
    if "depth_m" in outputs:
        prediction = _graph_prediction(spec, outputs, prepared)
    else:
        camera = prepared.camera if prepared.lens is None else prepared.lens.pinhole
        prediction = _canvas_prediction(spec, outputs, prepared.record, camera, prepared.source)
    if prepared.lens is not None:
        prediction = _on_original_grid(prediction, prepared.camera, prepared.lens)
    post_s = time.perf_counter() - started
    return replace(prediction, timings_ms=timings_ms(prepared.pre_s, forward_s, post_s))


def _canvas_prediction(
    spec: ModelSpec, out: Mapping[str, Tensor], record: CanonicalRecord, camera: Camera,
    source: str,
) -> Prediction:  # fmt: skip
    depth_m = from_canonical(out["depth_c"][0].float().cpu(), record)
    if spec.max_depth_m is not None:
        depth_m.clamp_(0, spec.max_depth_m)  # a fresh tensor of from_canonical
    confidence = normal = None
    size = (camera.height, camera.width)
    if "confidence" in spec.outputs and "confidence" in out:
        conf = unpad(out["confidence"][None].float().cpu(), record)
        confidence = F.interpolate(conf, size=size, mode="bilinear", align_corners=False)[0, 0]
        confidence = confidence.numpy()
    if "normal" in spec.outputs and "normal" in out:
        nrm = unpad(out["normal"][None, :3].float().cpu(), record)
        nrm = F.interpolate(nrm, size=size, mode="bilinear", align_corners=False)[0]
        nrm = nrm / nrm.norm(dim=0, keepdim=True).clamp_min(1e-12)  # unit again after resizing
        normal = nrm.permute(1, 2, 0).contiguous().numpy()
    return Prediction(
        depth_m=depth_m.numpy(),
        camera=camera,
        camera_source=source,
        record=record,
        model=spec.name,
        confidence=confidence,
        normal=normal,
    )


def _graph_prediction(spec: ModelSpec, out: Mapping[str, Tensor], prepared: Prepared):
    def array(key: str) -> np.ndarray | None:
        return out[key].cpu().numpy() if key in out else None

    return Prediction(
        depth_m=array("depth_m"),
        camera=prepared.camera,
        camera_source=prepared.source,
        record=record_from_graph(out["canonical"].cpu().numpy(), prepared.record),
        model=spec.name,
        confidence=array("confidence"),
        normal=array("normal"),
    )


def _on_original_grid(prediction: Prediction, camera: Camera, lens: PinholeView) -> Prediction:
    """A prediction on ``lens.pinhole``'s grid -> the same on the distorted ``camera``'s grid.

    z-depth is the same along a ray and both cameras share their axes, so values are sampled,
    not changed; normals are re-normalised after the blend. Invalid pixels: depth 0, normal 0.
    """
    from metricdepth.distortion import to_original

    # only pinhole pixels that see the photo count: the padding around it has a prediction
    # too, which must not be blended into the pixels along the photo's rim
    seen = (lens.source_xy[..., 0] >= 0) & (prediction.depth_m > 0)
    depth_m, valid = to_original(prediction.depth_m, lens, valid=seen)
    confidence = normal = None
    if prediction.confidence is not None:
        confidence, _ = to_original(prediction.confidence, lens, valid=seen)
    if prediction.normal is not None:
        normal, _ = to_original(prediction.normal, lens, valid=seen)
        norm = np.linalg.norm(normal, axis=-1, keepdims=True)
        normal = np.where(norm > 0, normal / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    return replace(
        prediction,
        depth_m=np.where(valid, depth_m, 0.0).astype(np.float32),
        camera=camera,
        confidence=confidence,
        normal=normal,
        lens=lens,
    )


class Predictor:
    """A model (``Backend``) with its canonical space and focal mode: the three stages.

    Args:
        backend: a loaded model (``metricdepth.load_model``).
        focal_mode: ``"mean"`` or ``"fx"``; default: the model's.
    """

    def __init__(self, backend: Backend, focal_mode: str | None = None) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(
                f"a Predictor needs a Backend (spec, device, takes, describe(), infer()), "
                f"got {type(backend).__name__}"
            )
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.space: CanonicalSpace = backend.spec.space
        self.focal_mode = check_focal_mode(focal_mode or backend.spec.focal_mode)

    def prepare(
        self,
        image: np.ndarray,
        camera: Camera,
        source: str = "given",
        *,
        distortion: Distortion | None = None,
        alpha: float | None = None,
    ) -> Prepared:
        """Stage 1: ``prepare`` for this model's space, focal mode and inputs."""
        return prepare(
            self.space, self.focal_mode, image, camera, source,
            takes=self.backend.takes, distortion=distortion, alpha=alpha,
        )  # fmt: skip

    def forward(self, batch: Mapping[str, Tensor] | Tensor) -> dict[str, Tensor]:
        """Stage 2: the backend's outputs of a batch (``collate``; a tensor is taken as the
        canvases ``x`` (B, 3, H_in, W_in))."""
        if isinstance(batch, Tensor):
            batch = {"x": batch}
        return self.backend.infer(batch)

    def finish(
        self, outputs: Mapping[str, Tensor], prepared: Prepared, forward_s: float = 0.0
    ) -> Prediction:
        """Stage 3: ``finish`` of ONE image's outputs (``split``)."""
        return finish(self.spec, outputs, prepared, forward_s)

    def predict(
        self,
        image: np.ndarray,
        camera: Camera,
        source: str = "given",
        *,
        distortion: Distortion | None = None,
        alpha: float | None = None,
    ) -> Prediction:
        """The three stages for one (H, W, 3) uint8 image of ``camera``."""
        prepared = self.prepare(image, camera, source, distortion=distortion, alpha=alpha)
        return self.predict_prepared([prepared])[0]

    def predict_prepared(self, prepared: Sequence[Prepared]) -> list[Prediction]:
        """``forward`` and ``finish`` of some ``Prepared``; those of one input size (canvas,
        or image for a graph) run as one batch. The forward time is shared out per image."""
        results: list[Prediction | None] = [None] * len(prepared)
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(prepared):
            shapes = tuple(tuple(v.shape) for v in item.inputs.values())
            groups.setdefault(shapes, []).append(index)
        for indices in groups.values():
            started = time.perf_counter()
            outputs = self.forward(collate([prepared[i] for i in indices]))
            forward_s = (time.perf_counter() - started) / len(indices)
            for index, row in zip(indices, split(outputs), strict=True):
                results[index] = self.finish(row, prepared[index], forward_s)
        return results  # type: ignore[return-value]
