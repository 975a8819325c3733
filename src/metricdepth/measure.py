"""Distances in metres between the 3-D points under two pixels of a metric depth prediction.

``measure(prediction, p1, p2)`` back-projects each pixel with the prediction's camera at the
median of the valid depths in its ``(2 * window + 1)^2`` neighbourhood
(:func:`metricdepth.geometry.point_at`), which resists single-pixel noise and holes, and returns
a frozen :class:`Measurement`. Pixels are ``(u, v)`` = (column, row), integer pixel centres, in
the image as displayed (the grid of ``prediction.depth_m``), as everywhere in metricdepth.

The distance is only as right as the camera: a wrong focal length scales the depth (canonical
camera space) and the lateral offsets, so ``measure_report`` states the camera source.

``parse_points`` reads the command line's ``--points x1,y1,x2,y2`` (repeatable; several groups
in one value may be separated by spaces or ``;``), and ``measure_report`` formats the results.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from metricdepth.camera import Camera
from metricdepth.geometry import pixel_distance, point_at

__all__ = ["Measurement", "measure", "measure_report", "parse_points"]

Pixel = tuple[int, int]
Point = tuple[float, float, float]

#: Default neighbourhood half-size: the median of a 5 x 5 window.
DEFAULT_WINDOW = 2


class _HasDepth(Protocol):
    depth_m: np.ndarray
    camera: Camera


@dataclass(frozen=True)
class Measurement:
    """The distance between the 3-D points under two pixels.

    Attributes:
        distance_m: Euclidean distance between ``point1_m`` and ``point2_m``, metres.
        point1_m, point2_m: ``(X, Y, Z)`` in the camera frame (x right, y down, z forward), metres.
        depth1_m, depth2_m: the z-depths used (the neighbourhood medians), metres.
        pixels: ``((u1, v1), (u2, v2))``, the measured pixels.
        window: the neighbourhood half-size (``(2 * window + 1)^2`` pixels, clipped at borders).
    """

    distance_m: float
    point1_m: Point
    point2_m: Point
    depth1_m: float
    depth2_m: float
    pixels: tuple[Pixel, Pixel]
    window: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["point1_m"], data["point2_m"] = list(self.point1_m), list(self.point2_m)
        data["pixels"] = [list(p) for p in self.pixels]
        return data


def _depth_map(prediction: _HasDepth) -> np.ndarray | torch.Tensor:
    depth = getattr(prediction, "depth_m", None)
    camera = getattr(prediction, "camera", None)
    if depth is None or not isinstance(camera, Camera):
        raise TypeError(
            "prediction must have depth_m and camera (a metricdepth Prediction), got "
            f"{type(prediction).__name__}"
        )
    return depth if isinstance(depth, torch.Tensor) else np.asarray(depth)


def measure(
    prediction: _HasDepth, p1: Pixel, p2: Pixel, window: int = DEFAULT_WINDOW
) -> Measurement:
    """Measure the distance between the 3-D points under pixels ``p1`` and ``p2``.

    ``prediction`` is a :class:`metricdepth.pipeline.Prediction` (or anything with an ``(H, W)``
    ``depth_m`` in metres and the ``camera`` of that grid); a prediction with a ``distortion``
    back-projects each pixel along its distorted ray (``metricdepth.distortion.pixel_rays``).
    Each depth is the median of the valid depths (finite, > 0) in the ``(2 * window + 1)^2``
    neighbourhood of the pixel (``window=0``: the pixel alone). Raises ValueError naming ``p1``
    or ``p2`` for a pixel that is not integer coordinates inside the image, and when a
    neighbourhood holds no valid depth.
    """
    depth = _depth_map(prediction)
    camera = prediction.camera
    # pixel_distance checks both pixels (naming p1/p2) and the window before any work.
    distance_m = pixel_distance(depth, camera, p1, p2, window)
    point1 = point_at(depth, camera, p1, window)
    point2 = point_at(depth, camera, p2, window)
    u1, v1 = (int(c) for c in p1)
    u2, v2 = (int(c) for c in p2)
    distortion = getattr(prediction, "distortion", None)
    if distortion is not None:  # a distorted image: each pixel's own ray, not the pinhole one
        point1 = _along_ray(camera, distortion, (u1, v1), point1[2])
        point2 = _along_ray(camera, distortion, (u2, v2), point2[2])
        distance_m = math.dist(point1, point2)
    return Measurement(
        distance_m=distance_m,
        point1_m=point1,
        point2_m=point2,
        depth1_m=point1[2],
        depth2_m=point2[2],
        pixels=((u1, v1), (u2, v2)),
        window=int(window),
    )


def _along_ray(camera: Camera, distortion, pixel: Pixel, z: float) -> Point:
    """The point at z-depth ``z`` on the ray of distorted pixel ``(u, v)``."""
    from metricdepth.distortion import pixel_rays

    xy, valid = pixel_rays(camera, distortion, np.array([pixel], dtype=np.float64))
    if not valid[0]:
        raise ValueError(f"pixel {pixel} has no ray under the lens distortion")
    return (float(xy[0, 0]) * z, float(xy[0, 1]) * z, z)


_INTEGER = re.compile(r"[+-]?\d+")


def parse_points(
    text: str | Iterable[str], size: tuple[int, int] | None = None
) -> list[tuple[Pixel, Pixel]]:
    """Pixel pairs from ``"x1,y1,x2,y2"`` values: ``[((u1, v1), (u2, v2)), ...]``.

    ``text`` is one value or several (a repeated ``--points`` option); one value may hold several
    groups separated by spaces or ``;`` (spaces around commas are allowed). Coordinates are
    integers, ``x`` the column and ``y`` the row. With ``size = (width, height)`` every pixel
    must lie inside the image. Any problem is one ValueError line quoting the offending group.
    """
    values = [text] if isinstance(text, str) else list(text)
    groups = [
        group
        for value in values
        for group in re.split(r"[;\s]+", re.sub(r"\s*,\s*", ",", str(value)).strip())
        if group
    ]
    if not groups:
        raise ValueError("--points needs at least one x1,y1,x2,y2 group")
    pairs = []
    for group in groups:
        parts = group.split(",")
        if len(parts) != 4 or not all(_INTEGER.fullmatch(p.strip()) for p in parts):
            raise ValueError(
                f"--points groups must be 4 comma-separated integers x1,y1,x2,y2, got {group!r}"
            )
        u1, v1, u2, v2 = (int(p) for p in parts)
        pair = ((u1, v1), (u2, v2))
        if size is not None:
            width, height = size
            for u, v in pair:
                if not (0 <= u < width and 0 <= v < height):
                    raise ValueError(
                        f"--points {group}: pixel ({u}, {v}) is outside the {width}x{height} "
                        f"image (x in 0..{width - 1}, y in 0..{height - 1})"
                    )
        pairs.append(pair)
    return pairs


def measure_report(
    measurements: Sequence[Measurement],
    *,
    camera: Camera | None = None,
    camera_source: str | None = None,
) -> str:
    """The text ``metricdepth measure`` prints: one line per measurement, then the 3-D points.

    With ``camera`` / ``camera_source`` (pass the prediction's) a first line says which camera
    the metres rest on.
    """
    lines = []
    if camera is not None or camera_source is not None:
        head = "camera"
        if camera_source is not None:
            head += f" source {camera_source}"
        if camera is not None:
            head += (
                f": fx={camera.fx:.2f} fy={camera.fy:.2f} cx={camera.cx:.2f} cy={camera.cy:.2f}"
                f" ({camera.width}x{camera.height})"
            )
        lines.append(head)
    if not measurements:
        lines.append("no measurements")
    for index, m in enumerate(measurements, start=1):
        (u1, v1), (u2, v2) = m.pixels
        side = 2 * m.window + 1
        lines.append(
            f"{index}: ({u1}, {v1}) -> ({u2}, {v2}): {_metres(m.distance_m)}"
            f"  depths {_metres(m.depth1_m)} and {_metres(m.depth2_m)}"
            f"  ({side}x{side} median)"
        )
        lines.append(f"   point 1 (x, y, z) = {_xyz(m.point1_m)}")
        lines.append(f"   point 2 (x, y, z) = {_xyz(m.point2_m)}")
    return "\n".join(lines)


def _metres(value: float) -> str:
    return f"{value:.3f} m" if math.isfinite(value) else f"{value} m"


def _xyz(point: Point) -> str:
    return "(" + ", ".join(f"{c:+.3f}" for c in point) + ") m"
