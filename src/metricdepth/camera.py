"""Pinhole cameras and how they change when the image they describe changes.

Pixel convention (used by every module of metricdepth, tested pixel-exactly)
-----------------------------------------------------------------------------
OpenCV camera frame: +x right, +y down, +z forward (the optical axis). Depth is z-depth.

Integer pixel coordinates are pixel *centres*: pixel ``(u, v)`` (column, row) covers the square
``[u - 0.5, u + 0.5] x [v - 0.5, v + 0.5]``; an image of ``width x height`` pixels spans
``[-0.5, width - 0.5] x [-0.5, height - 0.5]``. A point ``(X, Y, Z)`` in the camera frame
projects to::

    u = fx * X / Z + cx          v = fy * Y / Z + cy

and pixel ``(u, v)`` with depth ``Z`` back-projects to ``X = (u - cx) * Z / fx``,
``Y = (v - cy) * Z / fy``.

Under this convention every image operation has an exact camera update:

=====================  ===========================================================
resize W->W', H->H'    ``sx = W'/W``, ``sy = H'/H``;
                       ``fx' = fx*sx``, ``cx' = (cx + 0.5)*sx - 0.5`` (same for y)
crop at (left, top)    ``cx' = cx - left``, ``cy' = cy - top``
pad (left, top, ...)   ``cx' = cx + left``, ``cy' = cy + top``
horizontal flip        ``cx' = W - 1 - cx``
vertical flip          ``cy' = H - 1 - cy``
transpose              swap ``fx``/``fy``, ``cx``/``cy`` and ``W``/``H``
=====================  ===========================================================

The eight EXIF orientations are compositions of a transpose and the two flips (``rotated``).
A flip or transpose mirrors the 3-D frame (``X -> -X``, ``Y -> -Y``, or ``X <-> Y``); depth
``Z`` is unchanged by every operation here.

Metric3D differs in two places, both deliberate there and documented in
``docs/canonical.md``: it scales ``cx`` by ``s`` instead of ``(cx + 0.5)*s - 0.5`` (a sub-pixel
shift) and its training flip also rewrites ``cy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

FocalMode = Literal["mean", "fx"]
FOCAL_MODES: tuple[str, ...] = ("mean", "fx")

#: Where a camera's intrinsics came from. Every output of metricdepth records one of these.
CAMERA_SOURCES: tuple[str, ...] = ("given", "annotation", "exif", "default")

#: Horizontal field of view assumed when nothing says what the camera is (recorded as
#: camera source "default" and announced; a typical phone or webcam main camera).
DEFAULT_FOV_X_DEG = 60.0

#: EXIF orientation -> (transpose, flip horizontally, flip vertically), applied in that order.
EXIF_ORIENTATIONS: dict[int, tuple[bool, bool, bool]] = {
    1: (False, False, False),
    2: (False, True, False),
    3: (False, True, True),
    4: (False, False, True),
    5: (True, False, False),
    6: (True, True, False),
    7: (True, True, True),
    8: (True, False, True),
}


def _check_positive(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Camera.{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"Camera.{name} must be a finite number > 0, got {number!r}")
    return number


def _check_finite(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Camera.{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"Camera.{name} must be finite, got {number!r}")
    return number


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        shown = value.item() if isinstance(value, np.generic) else value
        raise ValueError(f"Camera.{name} must be an integer > 0, got {shown!r}")
    return int(value)


def check_focal_mode(mode: str) -> str:
    """Return ``mode`` if it is a known focal mode, else raise ValueError."""
    if mode not in FOCAL_MODES:
        raise ValueError(f"focal mode must be one of {', '.join(FOCAL_MODES)}, got {mode!r}")
    return mode


def focal_of(fx, fy, mode: str):
    """The focal length under ``mode`` (``Camera.focal``): ``fx``, or ``(fx + fy) / 2`` for
    ``"mean"``; Python floats or tensors (the exported graph's intrinsics input)."""
    return fx if mode == "fx" else 0.5 * (fx + fy)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera for an image of ``width x height`` pixels (see the module docstring).

    All values are in pixels. Instances are immutable; every image operation returns a new
    camera. Invalid values raise ValueError naming the field and the value.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "fx", _check_positive("fx", self.fx))
        object.__setattr__(self, "fy", _check_positive("fy", self.fy))
        object.__setattr__(self, "cx", _check_finite("cx", self.cx))
        object.__setattr__(self, "cy", _check_finite("cy", self.cy))
        object.__setattr__(self, "width", _check_size("width", self.width))
        object.__setattr__(self, "height", _check_size("height", self.height))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_K(cls, K, width: int, height: int) -> Camera:  # noqa: N802 (K is the usual name)
        """From a 3x3 intrinsic matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (no skew)."""
        matrix = np.asarray(K, dtype=np.float64)
        if matrix.shape != (3, 3):
            raise ValueError(f"K must be a 3x3 matrix, got shape {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError(f"K must be finite, got {matrix.tolist()}")
        expected_zero = (matrix[0, 1], matrix[1, 0], matrix[2, 0], matrix[2, 1])
        if any(abs(v) > 1e-9 for v in expected_zero) or abs(matrix[2, 2] - 1.0) > 1e-9:
            raise ValueError(f"K must be [[fx,0,cx],[0,fy,cy],[0,0,1]], got {matrix.tolist()}")
        return cls(matrix[0, 0], matrix[1, 1], matrix[0, 2], matrix[1, 2], width, height)

    @classmethod
    def from_intrinsics(cls, intrinsics, width: int, height: int) -> Camera:
        """From ``[fx, fy, cx, cy]`` (Metric3D's ``cam_in``) and the image size."""
        values = [float(v) for v in np.asarray(intrinsics, dtype=np.float64).reshape(-1)]
        if len(values) != 4:
            raise ValueError(f"intrinsics must be [fx, fy, cx, cy], got {len(values)} values")
        return cls(values[0], values[1], values[2], values[3], width, height)

    @classmethod
    def from_fov(
        cls, fov_x_deg: float, width: int, height: int, fov_y_deg: float | None = None
    ) -> Camera:
        """From a horizontal field of view in degrees (square pixels unless ``fov_y_deg``).

        The field of view spans the full image, edge to edge (``width`` pixels), and the
        principal point is the image centre ``((width - 1) / 2, (height - 1) / 2)``.
        """
        width, height = _check_size("width", width), _check_size("height", height)
        fx = _focal_from_fov("fov_x_deg", fov_x_deg, width)
        fy = fx if fov_y_deg is None else _focal_from_fov("fov_y_deg", fov_y_deg, height)
        return cls(fx, fy, (width - 1) / 2.0, (height - 1) / 2.0, width, height)

    # ------------------------------------------------------------------ views
    @property
    def K(self) -> np.ndarray:  # noqa: N802
        """The 3x3 intrinsic matrix, float64."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    @property
    def intrinsics(self) -> list[float]:
        """``[fx, fy, cx, cy]``, Metric3D's ``cam_in`` order."""
        return [self.fx, self.fy, self.cx, self.cy]

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return (self.width, self.height)

    @property
    def fov_x_deg(self) -> float:
        """Horizontal field of view, edge to edge, in degrees."""
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))

    @property
    def fov_y_deg(self) -> float:
        """Vertical field of view, edge to edge, in degrees."""
        return math.degrees(2.0 * math.atan(self.height / (2.0 * self.fy)))

    def focal(self, mode: FocalMode = "mean") -> float:
        """The focal length used for the canonical transform, in pixels.

        ``"mean"`` (default): ``(fx + fy) / 2``, what Metric3D's CLI and evaluation use.
        ``"fx"``: ``fx`` alone, what Metric3D's hub demo and training transforms use.
        For ordinary cameras the two differ by well under 0.1 %.
        """
        check_focal_mode(mode)
        return focal_of(self.fx, self.fy, mode)

    def normalized(self) -> tuple[float, float, float, float]:
        """Resolution-free ``(fx/W, fy/H, (cx+0.5)/W, (cy+0.5)/H)``."""
        return (
            self.fx / self.width,
            self.fy / self.height,
            (self.cx + 0.5) / self.width,
            (self.cy + 0.5) / self.height,
        )

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict of the six fields."""
        return {
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "width": self.width,
            "height": self.height,
        }

    # ------------------------------------------------------------------ image operations
    def resized(self, width: int, height: int) -> Camera:
        """The camera of this image resized to ``width x height`` (x and y scaled separately)."""
        width, height = _check_size("width", width), _check_size("height", height)
        sx, sy = width / self.width, height / self.height
        return Camera(
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            width,
            height,
        )

    def cropped(self, left: int, top: int, width: int, height: int) -> Camera:
        """The camera of the window ``[left, left+width) x [top, top+height)`` of this image.

        The window must lie inside the image; use ``padded`` to grow an image.
        """
        left, top = _check_offset("left", left), _check_offset("top", top)
        width, height = _check_size("width", width), _check_size("height", height)
        if left + width > self.width or top + height > self.height:
            raise ValueError(
                f"crop window {width}x{height} at ({left}, {top}) leaves the "
                f"{self.width}x{self.height} image; use padded() to grow an image"
            )
        return Camera(self.fx, self.fy, self.cx - left, self.cy - top, width, height)

    def padded(self, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0) -> Camera:
        """The camera of this image with borders of the given widths added (all >= 0)."""
        left, top = _check_offset("left", left), _check_offset("top", top)
        right, bottom = _check_offset("right", right), _check_offset("bottom", bottom)
        return Camera(
            self.fx,
            self.fy,
            self.cx + left,
            self.cy + top,
            self.width + left + right,
            self.height + top + bottom,
        )

    def flipped(self, vertical: bool = False) -> Camera:
        """The camera of this image mirrored left-right (or top-bottom with ``vertical``)."""
        if vertical:
            return Camera(self.fx, self.fy, self.cx, self.height - 1 - self.cy, *self.size)
        return Camera(self.fx, self.fy, self.width - 1 - self.cx, self.cy, *self.size)

    def transposed(self) -> Camera:
        """The camera of this image with rows and columns swapped."""
        return Camera(self.fy, self.fx, self.cy, self.cx, self.height, self.width)

    def rotated(self, orientation: int) -> Camera:
        """The camera of this image after applying EXIF ``orientation`` (1-8) to display it.

        Orientation 6 (the usual portrait phone photo) is a 90 degree clockwise rotation:
        ``fx' = fy``, ``fy' = fx``, ``cx' = H - 1 - cy``, ``cy' = cx``.
        """
        transpose, flip_h, flip_v = exif_steps(orientation)
        camera = self.transposed() if transpose else self
        if flip_h:
            camera = camera.flipped()
        if flip_v:
            camera = camera.flipped(vertical=True)
        return camera


def exif_steps(orientation: int) -> tuple[bool, bool, bool]:
    """``(transpose, flip_h, flip_v)`` for an EXIF orientation, or ValueError."""
    if isinstance(orientation, bool) or orientation not in EXIF_ORIENTATIONS:
        raise ValueError(f"EXIF orientation must be an integer 1-8, got {orientation!r}")
    return EXIF_ORIENTATIONS[int(orientation)]


def _check_offset(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _focal_from_fov(name: str, fov_deg: float, pixels: int) -> float:
    fov = float(fov_deg)
    if not math.isfinite(fov) or not 0.0 < fov < 180.0:
        raise ValueError(f"{name} must be in (0, 180) degrees, got {fov_deg!r}")
    return pixels / (2.0 * math.tan(math.radians(fov) / 2.0))
