"""Lens distortion: undistort to a pinhole image, predict there, map depth back.

A :class:`Distortion` describes the lens of a :class:`~metricdepth.camera.Camera` in OpenCV's
conventions (coefficients act on normalised camera coordinates ``x = X/Z``, ``y = Y/Z``):

* ``"opencv"``, radial-tangential: ``k1, k2, p1, p2[, k3]`` (4 or 5 numbers), or the rational
  model ``k1, k2, p1, p2, k3, k4, k5, k6`` (8 numbers), as ``cv2.undistortPoints``;
* ``"fisheye"``, equidistant / Kannala-Brandt: ``k1, k2, k3, k4``, as ``cv2.fisheye``
  (``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``).

The camera's intrinsics and the coefficients both refer to the image as displayed (after its
EXIF orientation), like every camera in metricdepth.

How a distorted image is predicted (:func:`pinhole_view`, ``predict(..., distortion=...)``):

1. a new pinhole camera of the same size is computed (``cv2.getOptimalNewCameraMatrix`` with
   ``alpha``, or ``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify`` with ``balance``;
   both are the ``alpha`` argument here: 0 keeps only pixels the photo covers (its corners are
   cut off), 1 keeps (about) every pixel of the photo (a wide padding border for strong
   distortion); ``DEFAULT_ALPHA`` is 0.5 for opencv and 1 for fisheye;
2. the image is resampled onto that pinhole camera (bilinear; pixels whose ray the photo does
   not cover get the model's padding colour, as canonical padding does);
3. the network predicts on the pinhole image;
4. every output is mapped back onto the ORIGINAL pixel grid: each original pixel's ray meets
   the pinhole image at ``undistortPoints(pixel, P=pinhole)``; the pinhole maps are sampled
   there (:func:`to_original`, bilinear over the valid neighbours). z-depth is the same along
   one ray and the pinhole camera has the same axes as the original, so depth needs no rescale
   and normals no rotation. Original pixels whose ray leaves the pinhole image get depth 0
   (invalid, the project's convention).

3-D points of a distorted image follow its rays, not the pinhole formula:
:func:`pixel_rays` gives the normalised ray ``(x, y, 1)`` of any pixel and
``Prediction.points()`` / ``measure`` use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from metricdepth.camera import Camera

__all__ = [
    "DEFAULT_ALPHA",
    "DISTORTION_MODELS",
    "Distortion",
    "PinholeView",
    "distort_rays",
    "lens_from_options",
    "parse_distortion",
    "pinhole_view",
    "pixel_rays",
    "points_from_depth",
    "to_original",
    "undistort_image",
]

#: Lens models and the coefficient counts each accepts.
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {"opencv": (4, 5, 8), "fisheye": (4,)}

#: Coefficient names per model and count (what outputs record).
COEFFICIENT_NAMES: dict[tuple[str, int], tuple[str, ...]] = {
    ("opencv", 4): ("k1", "k2", "p1", "p2"),
    ("opencv", 5): ("k1", "k2", "p1", "p2", "k3"),
    ("opencv", 8): ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
    ("fisheye", 4): ("k1", "k2", "k3", "k4"),
}

#: How much of the photo the pinhole image keeps, per model (OpenCV's alpha / fisheye balance,
#: 0..1). Chosen on synthetic scenes so that neither lost photo pixels nor padding dominate:
#: opencv alpha 0.5 (k1 = -0.3 at a 65 degree field of view: 98.6 % of the photo kept, 6 % of
#: the pinhole image padding); fisheye balance 1 (OpenCV's fisheye estimate already crops at the
#: edge midpoints: 94-98 % kept, 2-9 % padding at 60-90 degrees half field of view).
DEFAULT_ALPHA: dict[str, float] = {"opencv": 0.5, "fisheye": 1.0}

#: Fewest original pixels (a fraction) that must keep a depth, else the lens is refused.
MIN_COVERAGE = 0.2

#: Undistortion iterations (OpenCV's default of 5 is too few for strong distortion).
_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
#: A pixel whose undistorted ray does not project back within this many pixels has no ray
#: (beyond a fisheye's 90 degrees, or where a polynomial folds over).
_ROUND_TRIP_PX = 0.05


@dataclass(frozen=True)
class Distortion:
    """Lens distortion coefficients of a camera (see the module docstring).

    Attributes:
        model: ``"opencv"`` (radial-tangential, 4/5 numbers, or rational, 8) or ``"fisheye"``
            (equidistant / Kannala-Brandt, 4 numbers).
        coeffs: the coefficients in OpenCV's order (``COEFFICIENT_NAMES``).
    """

    model: str
    coeffs: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in DISTORTION_MODELS:
            raise ValueError(
                f"Distortion.model must be one of {', '.join(DISTORTION_MODELS)}, "
                f"got {self.model!r}"
            )
        try:
            coeffs = tuple(float(c) for c in self.coeffs)
        except (TypeError, ValueError):
            raise ValueError(f"Distortion.coeffs must be numbers, got {self.coeffs!r}") from None
        counts = DISTORTION_MODELS[self.model]
        if len(coeffs) not in counts:
            raise ValueError(
                f"{self.model} distortion takes {' or '.join(map(str, counts))} coefficients "
                f"({', '.join(COEFFICIENT_NAMES[(self.model, counts[-1])])}), got {len(coeffs)}"
            )
        bad = [c for c in coeffs if not math.isfinite(c)]
        if bad:
            raise ValueError(f"Distortion coefficients must be finite, got {bad[0]!r}")
        object.__setattr__(self, "coeffs", coeffs)

    @property
    def names(self) -> tuple[str, ...]:
        """The coefficient names, e.g. ``("k1", "k2", "p1", "p2")``."""
        return COEFFICIENT_NAMES[(self.model, len(self.coeffs))]

    @property
    def array(self) -> np.ndarray:
        """The coefficients as OpenCV takes them: float64 ``(N,)``."""
        return np.asarray(self.coeffs, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"model", "coeffs", "names"}``."""
        return {"model": self.model, "coeffs": list(self.coeffs), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Distortion:
        """Inverse of :meth:`to_dict` (``names`` is not needed)."""
        return cls(data["model"], tuple(data["coeffs"]))


def parse_distortion(text: str, model: str = "opencv") -> Distortion:
    """``"k1,k2,p1,p2[,k3]"`` (or 8 rational numbers; ``model="fisheye"``: ``"k1,k2,k3,k4"``).

    Any problem is one ValueError line naming the option (``--distortion`` / ``--fisheye``).
    """
    option = "--fisheye" if model == "fisheye" else "--distortion"
    shape = "k1,k2,k3,k4" if model == "fisheye" else "k1,k2,p1,p2[,k3] or 8 rational numbers"
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"{option} must be {shape} (comma-separated numbers), got {text!r}"
        ) from None
    try:
        return Distortion(model, values)
    except ValueError as error:
        raise ValueError(f"{option} {text!r}: {error}") from None


def lens_from_options(distortion: str | None, fisheye: str | None) -> Distortion | None:
    """The lens of the command line's ``--distortion`` / ``--fisheye`` (at most one), or None."""
    if distortion is not None and fisheye is not None:
        raise ValueError("give either --distortion or --fisheye, not both")
    if distortion is not None:
        return parse_distortion(distortion, "opencv")
    if fisheye is not None:
        return parse_distortion(fisheye, "fisheye")
    return None


def _matrix(camera: Camera) -> np.ndarray:
    return np.array(
        [[camera.fx, 0.0, camera.cx], [0.0, camera.fy, camera.cy], [0.0, 0.0, 1.0]], np.float64
    )


def _camera(matrix: np.ndarray, width: int, height: int) -> Camera:
    return Camera(
        float(matrix[0, 0]), float(matrix[1, 1]), float(matrix[0, 2]), float(matrix[1, 2]),
        width, height,
    )  # fmt: skip


def _undistort(uv: np.ndarray, camera: Camera, distortion: Distortion, new: Camera | None):
    """Distorted pixels ``(N, 2)`` -> normalised ``(x, y)`` (``new``: pixels of that camera)."""
    src = np.ascontiguousarray(uv, dtype=np.float64).reshape(-1, 1, 2)
    k, d = _matrix(camera), distortion.array
    p = None if new is None else _matrix(new)
    if distortion.model == "fisheye":
        out = cv2.fisheye.undistortPoints(src, k, d, R=np.eye(3), P=p, criteria=_CRITERIA)
    elif hasattr(cv2, "undistortPointsIter"):  # OpenCV 4
        out = cv2.undistortPointsIter(src, k, d, np.eye(3), p, _CRITERIA)
    else:  # OpenCV 5: undistortPoints takes the criteria
        out = cv2.undistortPoints(src, k, d, R=np.eye(3), P=p, criteria=_CRITERIA)
    return out.reshape(-1, 2)


def distort_rays(xy: np.ndarray, camera: Camera, distortion: Distortion) -> np.ndarray:
    """Normalised rays ``(..., 2)`` (``x = X/Z``, ``y = Y/Z``) -> distorted pixels ``(..., 2)``."""
    xy = np.asarray(xy, dtype=np.float64)
    points = np.concatenate([xy.reshape(-1, 2), np.ones((xy.size // 2, 1))], 1).reshape(-1, 1, 3)
    zero = np.zeros(3)
    if distortion.model == "fisheye":
        uv, _ = cv2.fisheye.projectPoints(points, zero, zero, _matrix(camera), distortion.array)
    else:
        uv, _ = cv2.projectPoints(points, zero, zero, _matrix(camera), distortion.array)
    return uv.reshape(xy.shape)


def _grid(width: int, height: int) -> np.ndarray:
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([u, v], -1)


def pixel_rays(
    camera: Camera, distortion: Distortion, uv: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised rays of distorted pixels: ``(xy (..., 2), valid (...))``.

    ``uv`` is ``(..., 2)`` pixel coordinates of the distorted image (default: every pixel
    centre, ``(H, W, 2)``). The ray of pixel ``(u, v)`` is ``(x, y, 1)`` in the camera frame, so
    the point at z-depth ``Z`` is ``(x Z, y Z, Z)``. ``valid`` is False where no ray projects
    back onto the pixel (beyond a fisheye's 90 degrees, where a polynomial folds over).
    """
    if uv is None:
        uv = _grid(camera.width, camera.height)
    uv = np.asarray(uv, dtype=np.float64)
    xy = _undistort(uv, camera, distortion, None).reshape(uv.shape)
    back = distort_rays(xy, camera, distortion)
    valid = np.all(np.isfinite(xy), -1) & (
        np.hypot(*np.moveaxis(back - uv, -1, 0)) < _ROUND_TRIP_PX
    )
    return xy, valid


def points_from_depth(depth_m: np.ndarray, camera: Camera, distortion: Distortion) -> np.ndarray:
    """(H, W) z-depth of a distorted image -> (H, W, 3) float32 points along each pixel's ray.

    Pixels without a ray (``pixel_rays``) get NaN points.
    """
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.shape != (camera.height, camera.width):
        raise ValueError(
            f"depth_m is {depth.shape[1]}x{depth.shape[0]} (W x H) but the camera is "
            f"{camera.width}x{camera.height}"
        )
    xy, valid = pixel_rays(camera, distortion)
    rays = np.concatenate([xy, np.ones_like(xy[..., :1])], -1).astype(np.float32)
    rays[~valid] = np.nan
    return rays * depth[..., None]


@dataclass(frozen=True, eq=False)
class PinholeView:
    """A distorted camera's pinhole twin and the maps between their pixel grids.

    Attributes:
        camera: the original (distorted) camera, ``W x H``.
        distortion: its lens.
        pinhole: the pinhole camera the network sees (same ``W x H``).
        alpha: the alpha (opencv) or balance (fisheye) ``pinhole`` was computed with.
        source_xy: (H, W, 2) float32: for each pinhole pixel, where it lies in the original
            image (``cv2.remap`` maps); -1 where no original ray leads there.
        target_xy: (H, W, 2) float32: for each original pixel, where its ray meets the pinhole
            image (continuous pixel coordinates); NaN where the pixel has no ray.
        coverage: fraction of original pixels whose ray lands inside the pinhole image.
        fill: fraction of the pinhole image that sees the photo (the rest is padding).
    """

    camera: Camera
    distortion: Distortion
    pinhole: Camera
    alpha: float
    source_xy: np.ndarray
    target_xy: np.ndarray
    coverage: float
    fill: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: distortion, pinhole camera, alpha, coverage and fill."""
        return {
            "distortion": self.distortion.to_dict(),
            "pinhole_camera": self.pinhole.to_dict(),
            "alpha": self.alpha,
            "coverage": round(self.coverage, 6),
            "fill": round(self.fill, 6),
        }


def _new_camera(camera: Camera, distortion: Distortion, alpha: float) -> Camera:
    k, d, size = _matrix(camera), distortion.array, (camera.width, camera.height)
    if distortion.model == "fisheye":
        new = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
            k, d, size, np.eye(3), balance=alpha, new_size=size
        )
    else:
        new, _ = cv2.getOptimalNewCameraMatrix(k, d, size, alpha, size)
    if not np.all(np.isfinite(new)) or new[0, 0] <= 0 or new[1, 1] <= 0:
        raise ValueError(
            f"no pinhole camera for this lens ({distortion.model} {list(distortion.coeffs)})"
        )
    return _camera(new, camera.width, camera.height)


def pinhole_view(camera: Camera, distortion: Distortion, alpha: float | None = None) -> PinholeView:
    """The pinhole twin of ``camera`` with ``distortion`` and the maps between both grids.

    ``alpha``: OpenCV's alpha (opencv) or balance (fisheye), default ``DEFAULT_ALPHA`` of the
    model. Cached (the last 2; the maps of a 12 MP photo take about 200 MB): a batch of photos
    from one camera computes it once. Raises ValueError for an ``alpha`` outside [0, 1], a lens
    OpenCV finds no pinhole camera for, or one whose pinhole image keeps less than
    ``MIN_COVERAGE`` of the photo (implausible coefficients).
    """
    alpha = DEFAULT_ALPHA[distortion.model] if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return _pinhole_view(camera, distortion, alpha)


@lru_cache(maxsize=2)
def _pinhole_view(camera: Camera, distortion: Distortion, alpha: float) -> PinholeView:
    pinhole = _new_camera(camera, distortion, alpha)
    width, height = camera.width, camera.height
    # original pixel -> pinhole pixel: its ray through the pinhole camera
    xy, valid = pixel_rays(camera, distortion)
    target = np.stack(
        [pinhole.fx * xy[..., 0] + pinhole.cx, pinhole.fy * xy[..., 1] + pinhole.cy], -1
    )
    target[~valid] = np.nan
    # pinhole pixel -> original pixel: project its ray through the lens
    grid = _grid(width, height)
    rays = np.stack(
        [(grid[..., 0] - pinhole.cx) / pinhole.fx, (grid[..., 1] - pinhole.cy) / pinhole.fy], -1
    )
    source = distort_rays(rays, camera, distortion)
    # a ray must also come back (a folding polynomial maps far rays into the image)
    back, ok = pixel_rays(camera, distortion, source)
    ok &= np.hypot(*np.moveaxis(back - rays, -1, 0)) < 1e-4 * (
        1 + np.hypot(*np.moveaxis(rays, -1, 0))
    )
    inside = ok & _inside(source, width, height)
    source[~inside] = -1.0
    landed = valid & _inside(np.nan_to_num(target, nan=-1.0), width, height)
    if landed.mean() < MIN_COVERAGE:
        raise ValueError(
            f"{distortion.model} distortion {list(distortion.coeffs)}: the pinhole image keeps "
            f"only {landed.mean():.0%} of the {width}x{height} photo (coefficients of another "
            "camera or image size?)"
        )
    return PinholeView(
        camera=camera,
        distortion=distortion,
        pinhole=pinhole,
        alpha=alpha,
        source_xy=source.astype(np.float32),
        target_xy=target.astype(np.float32),
        coverage=float(landed.mean()),
        fill=float(inside.mean()),
    )


def _inside(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Coordinates within the pixel area ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``."""
    x, y = xy[..., 0], xy[..., 1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def undistort_image(
    image: np.ndarray, view: PinholeView, fill: tuple[float, ...] = (0, 0, 0)
) -> np.ndarray:
    """Resample a distorted ``(H, W, C)`` image onto ``view.pinhole`` (bilinear).

    Pinhole pixels the photo does not cover get ``fill`` (pass the model's padding colour).
    """
    if image.shape[:2] != (view.camera.height, view.camera.width):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} (W x H) but the camera is "
            f"{view.camera.width}x{view.camera.height}"
        )
    out = cv2.remap(
        image, view.source_xy[..., 0], view.source_xy[..., 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    outside = view.source_xy[..., 0] < -0.5
    out[outside] = np.asarray(fill, dtype=np.float64)[: image.shape[2] if image.ndim == 3 else 1]
    return out


def to_original(
    values: np.ndarray, view: PinholeView, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a pinhole-grid map at every original pixel's ray: ``(mapped, valid)``.

    ``values`` is ``(H, W)`` or ``(H, W, C)`` on ``view.pinhole``'s grid, ``valid`` its
    ``(H, W)`` mask (default: finite and, for a 2-D map, > 0). A pixel with a non-finite value
    (any channel) is invalid whatever ``valid`` says. Each original pixel takes the bilinear
    blend of the valid pinhole pixels among the four around ``view.target_xy`` (weights
    renormalised), provided the nearest of them is valid; otherwise (ray outside the pinhole
    image, or onto an invalid area) it is invalid and its value 0. A blend that is not finite
    (float32 overflow) is invalid too, so every valid result is finite. Float32 results.
    """
    values = np.asarray(values, dtype=np.float32)
    height, width = values.shape[:2]
    finite = np.isfinite(values) if values.ndim == 2 else np.isfinite(values).all(-1)
    if valid is None:
        valid = finite & (values > 0) if values.ndim == 2 else finite
    else:
        valid = np.asarray(valid, dtype=bool) & finite
    target = view.target_xy
    x, y = target[..., 0], target[..., 1]
    has_ray = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(has_ray, x, -10.0), np.where(has_ray, y, -10.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    flat = values.reshape(height * width, -1)
    flat_valid = valid.reshape(-1)
    total = np.zeros((*x.shape, flat.shape[1]), np.float32)
    weight = np.zeros(x.shape, np.float32)
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)),
                      (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        index = np.where(inside, yi * width + xi, 0)
        ok = inside & flat_valid[index]
        w = np.where(ok, w, 0.0).astype(np.float32)
        # where() rather than a zero weight: 0 x NaN (an invalid neighbour) would be NaN
        with np.errstate(over="ignore"):  # a float32 overflow is caught below as non-finite
            total += np.where(ok[..., None], flat[index], 0.0) * w[..., None]
        weight += w
    nearest_x, nearest_y = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    inside = (nearest_x >= 0) & (nearest_x < width) & (nearest_y >= 0) & (nearest_y < height)
    nearest = np.where(inside, nearest_y * width + nearest_x, 0)
    mapped_valid = has_ray & inside & flat_valid[nearest] & (weight > 0)
    with np.errstate(over="ignore", invalid="ignore"):
        blend = (total / np.maximum(weight, 1e-12)[..., None]).astype(np.float32)
    mapped_valid &= np.isfinite(blend).all(-1)
    mapped = np.where(mapped_valid[..., None], blend, 0.0).astype(np.float32)
    return (mapped[..., 0] if values.ndim == 2 else mapped), mapped_valid
