"""The three stages of a prediction for the batch runner: ``prepare`` / ``forward`` / ``finish``.

A stand-in with the shape of ``predictor.Predictor`` (issue 17, point 1) over the pipeline's
functions (``pipeline.prepare``, ``canonical.normalize``, the model, ``pipeline.postprocess``);
when the Predictor lands, ``batch`` uses it instead and this module goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalRecord
from metricdepth.distortion import Distortion
from metricdepth.prediction import Prediction


@dataclass(frozen=True)
class Prepared:
    """One image ready for the network (picklable: it crosses from a loader worker).

    Attributes:
        x: (3, H_in, W_in) float32 normalised network input, a numpy array (it crosses from
            a loader worker as plain bytes: a shared-memory tensor costs the receiver about
            twice the CPU); None for an ONNX model.
        record: the canonical record (resize, padding, f_eff).
        camera / source: the image's camera as displayed and where it came from.
        image: the (H, W, 3) uint8 RGB, for an ONNX model only (its graph takes the image).
        distortion / alpha: the lens of ``camera`` (the network saw the undistorted image).
    """

    x: np.ndarray | None
    record: CanonicalRecord
    camera: Camera
    source: str
    image: np.ndarray | None = None
    distortion: Distortion | None = None
    alpha: float | None = None


@dataclass(frozen=True)
class _Prepare:
    """``prepare(image, camera, source) -> Prepared`` without the model (cheap to pickle)."""

    space: Any
    focal_mode: str
    distortion: Distortion | None
    alpha: float | None
    onnx: bool

    def __call__(self, image: np.ndarray, camera: Camera, source: str) -> Prepared:
        from metricdepth.canonical import inference_record, normalize
        from metricdepth.pipeline import prepare

        if self.onnx:  # the exported graph does the canonical steps itself
            record = inference_record(camera, self.space, self.focal_mode)
            return Prepared(None, record, camera, source, image)
        canvas, record, _ = prepare(
            image, camera, self.space, self.focal_mode, self.distortion, self.alpha
        )
        x = normalize(canvas, self.space)[0].numpy()
        return Prepared(x, record, camera, source, None, self.distortion, self.alpha)


class Stages:
    """``prepare`` / ``forward`` / ``finish`` of one model over the pipeline's functions.

    The shape of ``predictor.Predictor``: swapping this class for it is the change.
    ``run(prepared)`` is the forward of one image (a batch of one, or an ONNX graph).
    """

    def __init__(self, model, focal_mode: str, distortion=None, alpha=None) -> None:
        self.model = model
        self.onnx = bool(getattr(model, "needs_image", False))
        self.prepare = _Prepare(model.spec.space, focal_mode, distortion, alpha, self.onnx)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H_in, W_in) network input -> the network's canonical outputs."""
        with torch.inference_mode():
            return self.model(x.to(self.model.device))

    def run(self, prepared: Prepared) -> dict[str, Any]:
        if self.onnx:
            p = prepared
            return {"onnx": self.model.predict(p.image, p.camera, p.source, p.record.focal_mode)}
        return self.forward(torch.from_numpy(prepared.x)[None])

    def finish(self, out: dict[str, Any], prepared: Prepared) -> Prediction:
        """One image's outputs -> the metric ``Prediction`` at the image's size."""
        from metricdepth.distortion import pinhole_view
        from metricdepth.pipeline import postprocess

        if self.onnx:
            return out["onnx"]
        lens = None
        if prepared.distortion is not None:  # cached per camera and lens
            lens = pinhole_view(prepared.camera, prepared.distortion, prepared.alpha)
        p = prepared
        return postprocess(out, 0, p.camera, p.source, p.record, self.model, lens)
