"""What ``predict`` returns: the frozen ``Prediction`` (depth at the image's resolution, the
camera used and where it came from, the canonical record, timings), and the checks and
helpers the PyTorch path (``metricdepth.pipeline``) and the ONNX backend
(``metricdepth.runtime``) share. It imports only core modules (camera, canonical,
distortion), so neither of those two has to import the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalRecord
from metricdepth.distortion import Distortion, PinholeView


@dataclass(frozen=True, eq=False)
class Prediction:
    """Metric depth (and what else the model gives) for one image, at its resolution.

    Attributes:
        depth_m: (H, W) float32 metric z-depth.
        camera: the camera of the image (as displayed).
        camera_source: ``"given"``, ``"annotation"``, ``"exif"`` or ``"default"``.
        record: the canonical record: f_eff (``record.f_eff_px``), the canonical scale
            (``record.metric_scale``), resize and padding.
        model: the model's registered name.
        confidence: (H, W) float32 raw confidence, or None.
        normal: (H, W, 3) float32 unit normals in the camera frame (towards the camera), or None.
        timings_ms: wall time of pre-processing (``pre``), the forward pass (``forward``) and
            post-processing (``post``) in milliseconds (the schema of ``S.json`` and the web
            API; empty for a prediction not made by ``predict``).
        lens: for a distorted image, the ``PinholeView`` the network saw (distortion, pinhole
            camera, alpha); every map above is on the ORIGINAL (distorted) pixel grid and
            ``camera`` is the original camera. None for a pinhole image.
    """

    depth_m: np.ndarray
    camera: Camera
    camera_source: str
    record: CanonicalRecord
    model: str
    confidence: np.ndarray | None = None
    normal: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    lens: PinholeView | None = None

    @property
    def distortion(self) -> Distortion | None:
        """The lens distortion the prediction was made with (``lens.distortion``), or None."""
        return None if self.lens is None else self.lens.distortion

    def points(self) -> np.ndarray:
        """(H, W, 3) points in the camera frame, metres (along the distorted rays if any)."""
        if self.lens is not None:
            from metricdepth.distortion import points_from_depth

            return points_from_depth(self.depth_m, self.camera, self.lens.distortion)
        from metricdepth.geometry import depth_to_points

        return depth_to_points(self.depth_m, self.camera)

    @property
    def camera_warning(self) -> str | None:
        """A line saying the camera was assumed (source ``default``), else None: the metric
        scale of every depth and distance then rests on that guess."""
        if self.camera_source != "default":
            return None
        from metricdepth.cameras import assumed_camera_warning

        return assumed_camera_warning(self.camera)

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of how this prediction was made."""
        valid = self.depth_m[self.depth_m > 0]  # a copy: the median may reorder it
        return {
            "model": self.model,
            "camera": self.camera.to_dict(),
            "camera_source": self.camera_source,
            **({} if self.lens is None else {"lens": self.lens.to_dict()}),
            "canonical": self.record.to_dict(),
            "depth_m": {
                "min": float(valid.min()) if valid.size else None,
                "median": float(np.median(valid, overwrite_input=True)) if valid.size else None,
                "max": float(valid.max()) if valid.size else None,
            },
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


def timings_ms(pre_s: float, forward_s: float, post_s: float) -> dict[str, float]:
    """``Prediction.timings_ms`` from the three wall times in seconds."""
    return {"pre": pre_s * 1e3, "forward": forward_s * 1e3, "post": post_s * 1e3}


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` as an array if it is (H, W, 3) RGB uint8, else ValueError."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return image
