"""Synthetic multi-camera scenes whose metric scale can be read from appearance.

A vectorised numpy ray caster renders a floor, an open-topped room of four walls and a few
axis-aligned boxes of **fixed physical sizes** (``BOX_SIZES_M``), all covered with checkers of
**fixed physical tile size** (``FLOOR_TILE_M``, ``WALL_TILE_M``, ``BOX_TILE_M``) in random
colours, so only sizes and patterns carry scale. Cameras vary in focal length (log-uniform),
``fx != fy``, principal point, image size, height, pitch, yaw and roll.

Rendering
---------
* World frame: metres, ``+Z`` up, floor ``Z = 0``; walls ``wall_height_m`` high; sky above them.
* Camera: ``metricdepth.camera``'s convention. Pixel ``(u, v)`` looks along
  ``R @ ((u - cx)/fx, (v - cy)/fy, 1)`` with ``R = [right, down, forward]`` (camera to world),
  so the ray parameter ``t`` of the first hit **is** the z-depth (``depth_m``, float64 until
  stored as float32). Sky pixels have depth 0 (invalid).
* Checkers are box-filtered analytically over each pixel's footprint in texture space (exact
  derivatives of the ray-plane hit give the pixel's parallelogram; the box is its bounding
  rectangle), so tiles smaller than a pixel fade to their mean colour instead of aliasing into
  a focal-dependent moire. Geometry edges are point-sampled (one ray per pixel).
* Shading (float32): Lambertian sun plus ambient, no shadows, then Gaussian sensor noise. There
  is no fog and no depth-dependent blur: neither may become a focal-independent depth cue.

A scene is a small JSON-able dict (``sample_scene``); ``render_view(scene, camera)`` renders it
with any camera, byte-identically on the same platform. Dataset files: ``write_dataset``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from metricdepth.camera import Camera
from metricdepth.data.annotations import AnnotationEntry, write_annotations
from metricdepth.io import atomic_write, write_depth

#: Box kinds and their sizes ``(x, y, z)`` in metres before an optional 90 degree turn about
#: the vertical (which swaps x and y); ``z`` is the height.
BOX_SIZES_M: dict[str, tuple[float, float, float]] = {
    "cube_0.5": (0.5, 0.5, 0.5),
    "cube_1.0": (1.0, 1.0, 1.0),
    "crate_0.8": (0.8, 0.8, 0.8),
    "table": (1.2, 0.6, 0.75),
    "pillar": (0.4, 0.4, 2.4),
}
FLOOR_TILE_M = 0.5  #: checker tile edge on the floor
WALL_TILE_M = 0.4  #: checker tile edge on the walls
BOX_TILE_M = 0.25  #: checker tile edge on boxes (tiles start at each box's min corner)
#: Largest depth a ``write_dataset`` depth PNG can hold (uint16 millimetres); beyond: invalid.
PNG_DEPTH_CAP_M = 65.535
SCENE_VERSION = 1

TextureFilter = Literal["box", "tent", "point"]
TEXTURE_FILTERS: tuple[str, ...] = ("box", "tent", "point")

SKY, FLOOR, WALL = 0, 1, 2  # surface ids; box i has surface id 3 + i


@dataclass(frozen=True)
class SynthConfig:
    """How scenes and cameras are drawn (all ranges inclusive, ``(low, high)``).

    height, width: reference image size (pixels) that ``focal_range`` refers to.
    focal_range: ``fx`` in pixels at the reference width, drawn log-uniform.
    aspect_jitter: ``fy = fx * (1 + U(-a, a))``.
    principal_jitter: ``cx = (w - 1)/2 + U(-j, j) * w`` (``cy`` likewise with ``h``).
    sizes: ``(height, width)`` image sizes; one is drawn uniformly per scene.
    focal_follows_size: scale ``fx`` by ``w / width`` for a scene of width ``w`` (the field of
        view distribution is then the same at every size); False: ``focal_range`` is in pixels
        of whatever size is drawn (``f`` independent of size, field of view not).
    distance_range: metres along the floor from the camera to where the optical axis meets
        the floor (before ``aim_jitter``), drawn log-uniform; sets the pitch.
    camera_height_range_m: camera height above the floor, uniform.
    aim_jitter: pitch offset ``U(-a, a) * vertical field of view`` added to the aim.
    roll_deg: roll ``U(-r, r)`` degrees; yaw is uniform over the full circle.
    boxes_range: number of boxes tried, uniform (a box that finds no free spot is dropped).
    near_box_fraction: chance that a box is placed in the view near the aim point (visible
        even in narrow fields of view); the others are anywhere in the room.
    wall_height_m: height of the room walls (sky above).
    noise_dn: standard deviation of the Gaussian sensor noise, in 8-bit digital numbers.
    """

    height: int = 96
    width: int = 128
    focal_range: tuple[float, float] = (150.0, 2500.0)
    aspect_jitter: float = 0.03
    principal_jitter: float = 0.05
    sizes: tuple[tuple[int, int], ...] = ((96, 128),)
    focal_follows_size: bool = True
    distance_range: tuple[float, float] = (1.5, 40.0)
    camera_height_range_m: tuple[float, float] = (1.0, 2.0)
    aim_jitter: float = 0.3
    roll_deg: float = 5.0
    boxes_range: tuple[int, int] = (4, 10)
    near_box_fraction: float = 0.6
    wall_height_m: float = 3.0
    noise_dn: float = 2.0

    def __post_init__(self) -> None:
        def check_range(name: str, low: float, high: float, minimum: float) -> None:
            if not (math.isfinite(low) and math.isfinite(high) and minimum <= low <= high):
                raise ValueError(f"SynthConfig.{name} must satisfy {minimum} <= low <= high")

        check_range("focal_range", *self.focal_range, 1e-9)
        check_range("distance_range", *self.distance_range, 1e-3)
        check_range("camera_height_range_m", *self.camera_height_range_m, 1e-3)
        check_range("boxes_range", *self.boxes_range, 0)
        if not self.sizes or any(h <= 0 or w <= 0 for h, w in self.sizes):
            raise ValueError("SynthConfig.sizes must be non-empty (height, width) pairs > 0")
        if self.height <= 0 or self.width <= 0:
            raise ValueError("SynthConfig.height and width must be > 0")
        if not (0 <= self.aspect_jitter < 1 and 0 <= self.principal_jitter < 0.5):
            raise ValueError("SynthConfig.aspect_jitter must be in [0, 1), principal in [0, .5)")
        if max(self.camera_height_range_m) >= self.wall_height_m:
            raise ValueError("SynthConfig: the camera must be lower than the walls")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SynthConfig:
        """``SynthConfig(**values)`` with JSON lists turned into the tuples it expects (the
        ``synth`` mapping of a training config); an unknown field is a ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SynthConfig field {unknown[0]!r}")
        converted: dict[str, Any] = {}
        for key, value in values.items():
            if key == "sizes":
                converted[key] = tuple(tuple(int(v) for v in pair) for pair in value)
            elif isinstance(value, list):
                converted[key] = tuple(value)
            else:
                converted[key] = value
        return cls(**converted)


@dataclass(frozen=True, eq=False)
class SynthSample:
    """One rendered scene.

    image: ``(H, W, 3)`` uint8 RGB. depth_m: ``(H, W)`` float32 z-depth in metres, 0 where
    nothing is hit (sky). camera: the intrinsics of this image. scene: the JSON-able scene dict
    (``render_view(scene, camera)`` reproduces ``image`` and ``depth_m`` exactly).
    """

    image: np.ndarray
    depth_m: np.ndarray
    camera: Camera
    scene: dict[str, Any]


# ------------------------------------------------------------------ scene sampling
def camera_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Camera-to-world rotation ``(3, 3)``: columns are the camera's right, down, forward.

    Yaw turns counter-clockwise about ``+Z`` from ``+X``; pitch > 0 looks down; roll > 0 turns
    the image clockwise (right axis towards down).
    """
    yaw, pitch, roll = np.radians([yaw_deg, pitch_deg, roll_deg])
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    right, down = (
        np.cos(roll) * right + np.sin(roll) * down,
        np.cos(roll) * down - np.sin(roll) * right,
    )
    return np.stack([right, down, forward], axis=1)


def _colors(rng: np.random.Generator) -> list[list[float]]:
    """Two checker albedos: a random colour and a darker copy (contrast always visible)."""
    base = rng.uniform(0.2, 0.95, 3)
    return [base.tolist(), (base * rng.uniform(0.3, 0.7)).tolist()]


def _place_boxes(
    rng: np.random.Generator,
    config: SynthConfig,
    aim: float,
    forward: np.ndarray,
    tan_half_x: float,
    room_min: np.ndarray,
    room_max: np.ndarray,
) -> list[dict[str, Any]]:
    """Boxes on the floor inside the room, 5 cm apart, >= 0.5 m from the camera (at x=y=0).

    A near box is centred ``aim * exp(U(-0.25, 0.25))`` metres ahead and sideways so that it
    overlaps the horizontal field of view there (edges often visible even in narrow views);
    the others anywhere. Each box has 8 tries to find room, else it is dropped.
    """
    (x_lo, y_lo), (x_hi, y_hi) = (room_min + 0.05).tolist(), (room_max - 0.05).tolist()
    (fwd_x, fwd_y), kinds = forward.tolist(), list(BOX_SIZES_M)
    boxes: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(config.boxes_range[0], config.boxes_range[1] + 1))):
        kind = kinds[int(rng.integers(len(kinds)))]
        size_x, size_y, size_z = BOX_SIZES_M[kind]
        if rng.random() < 0.5:
            size_x, size_y = size_y, size_x
        near = rng.random() < config.near_box_fraction
        colors = _colors(rng)
        for _try in range(8):
            if near:
                along = aim * math.exp(rng.uniform(-0.25, 0.25))
                reach = along * tan_half_x + 0.5 * max(size_x, size_y)
                side = reach * rng.uniform(-1.0, 1.0)
                centre_x, centre_y = along * fwd_x - side * fwd_y, along * fwd_y + side * fwd_x
            else:
                centre_x, centre_y = rng.uniform(room_min, room_max).tolist()
            x0 = min(max(centre_x - size_x / 2, x_lo), x_hi - size_x)
            y0 = min(max(centre_y - size_y / 2, y_lo), y_hi - size_y)
            x1, y1 = x0 + size_x, y0 + size_y
            if not (x0 > 0.5 or y0 > 0.5 or x1 < -0.5 or y1 < -0.5):
                continue
            if all(
                x0 > u1 + 0.05 or y0 > v1 + 0.05 or x1 < u0 - 0.05 or y1 < v0 - 0.05
                for u0, v0, u1, v1 in placed
            ):
                placed.append((x0, y0, x1, y1))
                boxes.append(
                    {
                        "kind": kind,
                        "min_m": [x0, y0, 0.0],
                        "size_m": [size_x, size_y, size_z],
                        "colors": colors,
                    }
                )
                break
    return boxes


def sample_scene(seed: int, config: SynthConfig = SynthConfig()) -> tuple[dict[str, Any], Camera]:
    """Draw a scene dict and its camera from ``np.random.default_rng(seed)`` (no rendering).

    The scene (plain JSON types; lengths in metres, world ``+Z`` up, camera at ``x = y = 0``):
    ``version``, ``seed``, ``camera`` (``Camera.to_dict()`` of the drawn camera), ``pose``
    (``position_m``, ``yaw_deg``, ``pitch_deg``, ``roll_deg``: see ``camera_rotation``), ``aim``
    (``distance_m``, ``pitch_jitter_deg``: how the pitch was chosen), ``room`` (``min_m``,
    ``max_m`` corners in x, y; ``wall_height_m``), ``floor`` and ``walls`` (``colors``: two RGB
    albedos in [0, 1]; ``offset_m``: checker origin in x, y), ``boxes`` (each ``kind``,
    ``min_m`` corner, ``size_m``, ``colors``), ``light`` (``sun_dir`` unit vector towards the
    sun, ``sun`` and ``ambient`` intensities), ``sky`` (``zenith``, ``horizon`` RGB) and
    ``noise`` (``sigma_dn``, ``seed``).
    """
    rng = np.random.default_rng(seed)
    height, width = config.sizes[int(rng.integers(len(config.sizes)))]
    log_f = rng.uniform(math.log(config.focal_range[0]), math.log(config.focal_range[1]))
    fx = math.exp(log_f) * (width / config.width if config.focal_follows_size else 1.0)
    fy = fx * (1.0 + rng.uniform(-config.aspect_jitter, config.aspect_jitter))
    jitter_x, jitter_y = rng.uniform(-config.principal_jitter, config.principal_jitter, 2)
    cx, cy = (width - 1) / 2 + jitter_x * width, (height - 1) / 2 + jitter_y * height
    camera = Camera(fx, fy, cx, cy, width, height)

    cam_height = rng.uniform(*config.camera_height_range_m)
    aim = math.exp(rng.uniform(*np.log(config.distance_range)))
    yaw = rng.uniform(0.0, 360.0)
    fov_y = math.degrees(2 * math.atan(height / (2 * fy)))
    pitch_jitter = rng.uniform(-config.aim_jitter, config.aim_jitter) * fov_y
    pitch = math.degrees(math.atan2(cam_height, aim)) + pitch_jitter
    roll = rng.uniform(-config.roll_deg, config.roll_deg)

    forward = np.array([math.cos(math.radians(yaw)), math.sin(math.radians(yaw))])
    ends = np.stack([np.zeros(2), aim * forward])
    margins = rng.uniform(1.5, 2.0 + 0.4 * aim, 4)
    room_min, room_max = ends.min(0) - margins[:2], ends.max(0) + margins[2:]

    boxes = _place_boxes(rng, config, aim, forward, width / (2 * fx), room_min, room_max)

    sun_azimuth, sun_elevation = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(20, 70))
    sun = [
        math.cos(sun_elevation) * math.cos(sun_azimuth),
        math.cos(sun_elevation) * math.sin(sun_azimuth),
        math.sin(sun_elevation),
    ]
    zenith = np.array([rng.uniform(0.25, 0.6), rng.uniform(0.45, 0.75), rng.uniform(0.75, 1.0)])
    horizon = zenith + (1 - zenith) * rng.uniform(0.3, 0.8)
    scene = {
        "version": SCENE_VERSION,
        "seed": int(seed),
        "camera": camera.to_dict(),
        "pose": {
            "position_m": [0.0, 0.0, float(cam_height)],
            "yaw_deg": float(yaw),
            "pitch_deg": float(pitch),
            "roll_deg": float(roll),
        },
        "aim": {"distance_m": float(aim), "pitch_jitter_deg": float(pitch_jitter)},
        "room": {
            "min_m": room_min.tolist(),
            "max_m": room_max.tolist(),
            "wall_height_m": float(config.wall_height_m),
        },
        "floor": {"colors": _colors(rng), "offset_m": rng.uniform(0, 2 * FLOOR_TILE_M, 2).tolist()},
        "walls": {"colors": _colors(rng), "offset_m": rng.uniform(0, 2 * WALL_TILE_M, 2).tolist()},
        "boxes": boxes,
        "light": {
            "sun_dir": sun,
            "sun": float(rng.uniform(0.45, 0.7)),
            "ambient": float(rng.uniform(0.25, 0.4)),
        },
        "sky": {"zenith": zenith.tolist(), "horizon": horizon.tolist()},
        "noise": {"sigma_dn": float(config.noise_dn), "seed": int(rng.integers(2**63))},
    }
    return scene, camera


# ------------------------------------------------------------------ rendering
_CORNERS = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=bool)


def _box_windows(
    lows: np.ndarray, highs: np.ndarray, origin: np.ndarray, rot: np.ndarray, camera: Camera
) -> list[tuple[slice, slice] | None]:
    """Per box ``(N, 3)``: the pixel rows/cols that may see it (conservative), or None."""
    corners = np.where(_CORNERS, highs[:, None], lows[:, None])  # (N, 8, 3)
    cam = (corners - origin) @ rot  # camera-frame coordinates
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = camera.fx * cam[..., 0] / z + camera.cx
        v = camera.fy * cam[..., 1] / z + camera.cy
    bounds = np.stack([u.min(1), u.max(1), v.min(1), v.max(1)], 1).tolist()
    windows: list[tuple[slice, slice] | None] = []
    for z_box, (u0, u1, v0, v1) in zip(z.tolist(), bounds, strict=True):
        if max(z_box) <= 0:  # wholly behind the camera: no ray with t = z-depth > 0 meets it
            windows.append(None)
        elif min(z_box) <= 1e-6:  # straddles the camera plane: test every pixel
            windows.append((slice(None), slice(None)))
        else:
            c0, c1 = max(math.floor(u0) - 1, 0), min(math.ceil(u1) + 2, camera.width)
            r0, r1 = max(math.floor(v0) - 1, 0), min(math.ceil(v1) + 2, camera.height)
            windows.append((slice(r0, r1), slice(c0, c1)) if c0 < c1 and r0 < r1 else None)
    return windows


def _cast(
    scene: dict[str, Any], camera: Camera, rays_xy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cast one ray per pixel centre (``rays_xy``: per-pixel ``(x, y)`` instead of the pinhole's).

    Returns ``rays (3, H, W)`` (world, unnormalised: camera-frame z component 1), ``origin
    (3,)``, ``rot (3, 3)``, ``t (H, W)`` (z-depth in metres, inf for sky), ``surface (H, W)``
    (0 sky, 1 floor, 2 wall, 3 + i box i) and ``axis (H, W)`` (world axis of the hit face's
    normal), all float64 / int64.
    """
    pose = scene["pose"]
    rot = camera_rotation(pose["yaw_deg"], pose["pitch_deg"], pose["roll_deg"])
    origin = np.asarray(pose["position_m"], dtype=np.float64)
    if rays_xy is None:
        x = (np.arange(camera.width) - camera.cx) / camera.fx
        y = (np.arange(camera.height)[:, None] - camera.cy) / camera.fy
    else:
        x, y = rays_xy[..., 0], rays_xy[..., 1]
    rays = rot[:, 0, None, None] * x + rot[:, 1, None, None] * y + rot[:, 2, None, None]
    dx, dy, dz = rays
    room = scene["room"]
    (x0, y0), (x1, y1) = room["min_m"], room["max_m"]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_x = np.where(
            dx > 0, (x1 - origin[0]) / dx, np.where(dx < 0, (x0 - origin[0]) / dx, np.inf)
        )
        t_y = np.where(
            dy > 0, (y1 - origin[1]) / dy, np.where(dy < 0, (y0 - origin[1]) / dy, np.inf)
        )
        t_floor = np.where(dz < 0, -origin[2] / dz, np.inf)
    t_wall = np.minimum(t_x, t_y)
    floor = t_floor <= t_wall  # the floor point lies inside the room
    wall = ~floor & (origin[2] + t_wall * dz <= room["wall_height_m"])
    t = np.where(floor, t_floor, np.where(wall, t_wall, np.inf))
    surface = np.where(floor, FLOOR, np.where(wall, WALL, SKY))
    axis = np.where(floor, 2, np.where(t_x < t_y, 0, 1))

    boxes = scene["boxes"]
    if not boxes:
        return rays, origin, rot, t, surface, axis
    lows = np.array([b["min_m"] for b in boxes], dtype=np.float64)
    highs = lows + np.array([b["size_m"] for b in boxes], dtype=np.float64)
    inverse = 1.0 / np.where(rays == 0, 1e-300, rays)
    if rays_xy is None:
        windows = _box_windows(lows, highs, origin, rot, camera)
    else:  # the pinhole bounds do not hold for other rays: test every pixel
        windows = [(slice(None), slice(None))] * len(boxes)
    for index, window in enumerate(windows):
        if window is None:
            continue
        inv = inverse[(slice(None), *window)]
        t0 = (lows[index] - origin)[:, None, None] * inv  # slab test, (3, rows, cols)
        t1 = (highs[index] - origin)[:, None, None] * inv
        t_min = np.minimum(t0, t1)
        t_near = t_min.max(0)
        t_sub = t[window]
        hit = (t_near <= np.maximum(t0, t1).min(0)) & (t_near > 0) & (t_near < t_sub)
        if hit.any():
            t_sub[hit] = t_near[hit]  # views: these write into t, surface and axis
            surface[window][hit] = 3 + index
            axis[window][hit] = t_min.argmax(0)[hit]
    return rays, origin, rot, t, surface, axis


def _filtered_square(
    x: np.ndarray, width: np.ndarray, tile: np.ndarray, kind: TextureFilter
) -> np.ndarray:
    """The +-1 square wave (+1 on ``[0, tile)``, period ``2 tile``) filtered at ``x``.

    ``"box"``: mean over ``[x - width/2, x + width/2]`` (first antiderivative: a triangle
    wave). ``"tent"``: the box convolved with itself, half-width ``width`` (second
    antiderivative, the periodic ``tile**2/2 * z * (1 - |z|)``, ``z = (x/tile mod 2) - 1``);
    ``"point"``: the wave itself. All exact. ``floor`` is used because ``np.mod`` is slow.
    """
    half_periods = x / tile
    if kind == "point":
        return np.where(half_periods - 2.0 * np.floor(0.5 * half_periods) < 1.0, 1.0, -1.0)
    width = np.maximum(width, 1e-6 * tile)
    if kind == "box":

        def g1(z: np.ndarray) -> np.ndarray:
            y = z / tile
            return np.abs(1.0 - y + 2.0 * np.floor(0.5 * y))

        return (g1(x - 0.5 * width) - g1(x + 0.5 * width)) * (tile / width)

    def g2(z: np.ndarray) -> np.ndarray:
        y = z / tile
        y = y - 2.0 * np.floor(0.5 * y) - 1.0
        return y * (1.0 - np.abs(y))

    return (g2(x + width) - 2.0 * g2(x) + g2(x - width)) * (0.5 * tile * tile / (width * width))


def _surface_table(scene: dict[str, Any], rot: np.ndarray, camera: Camera) -> np.ndarray:
    """Per ``surface * 3 + axis`` row: what shading a pixel needs, ``(3 * surfaces, 16)``.

    Columns: tile, texture origin along axes a and b (the two axes spanning the face: x->(y, z),
    y->(x, z), z->(x, y)), d(ray)/du along a, b, k and d(ray)/dv along a, b, k (k: the normal
    axis), the sun direction's k component, mean RGB (3) and half the checker's RGB step (3).
    """
    boxes = scene["boxes"]
    origins = np.zeros((3 + len(boxes), 3))
    origins[FLOOR, :2] = scene["floor"]["offset_m"]
    origins[WALL, :2] = scene["walls"]["offset_m"]
    origins[3:] = np.reshape([b["min_m"] for b in boxes], (-1, 3))
    tiles = np.array([1.0, FLOOR_TILE_M, WALL_TILE_M] + [BOX_TILE_M] * len(boxes))
    colors = np.array(
        [[[0.0] * 3] * 2, scene["floor"]["colors"], scene["walls"]["colors"]]
        + [b["colors"] for b in boxes]
    )  # (surfaces, 2, 3)
    face_axes = np.array([[1, 2, 0], [0, 2, 1], [0, 1, 2]])  # per normal axis k: a, b, k
    ray_u, ray_v = rot[:, 0] / camera.fx, rot[:, 1] / camera.fy
    per_axis = np.concatenate(
        [ray_u[face_axes], ray_v[face_axes], np.asarray(scene["light"]["sun_dir"])[:, None]], 1
    )  # (3, 7)
    table = np.empty((len(tiles), 3, 16))
    table[:, :, 0] = tiles[:, None]
    table[:, :, 1:3] = origins[:, face_axes[:, :2]]
    table[:, :, 3:10] = per_axis
    table[:, :, 10:13] = colors.mean(1)[:, None]
    table[:, :, 13:16] = ((colors[:, 0] - colors[:, 1]) / 2)[:, None]
    return table.reshape(-1, 16)


def _render(
    scene: dict[str, Any],
    camera: Camera,
    *,
    noise: bool = True,
    texture_filter: TextureFilter = "box",
    rays_xy: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (H, W, 3) uint8, depth_m (H, W) float32, surface (H, W) int)``."""
    rays, origin, rot, t, surface, axis = _cast(scene, camera, rays_xy)
    sky = surface == SKY
    t_hit = np.where(sky, 1.0, t)
    px, py, pz = origin[:, None, None] + t_hit * rays  # float64; shading runs in float32
    x_face, z_face = axis == 0, axis == 2
    key = surface * 3 + axis
    table = _surface_table(scene, rot, camera).astype(np.float32).T.copy()
    (tile, origin_a, origin_b, u_a, u_b, u_k, v_a, v_b, v_k, sun_k, *color) = (
        np.take(column, key) for column in table
    )
    tex_a = (np.where(x_face, py, px) - origin_a).astype(np.float32)
    tex_b = (np.where(z_face, py, pz) - origin_b).astype(np.float32)
    dx, dy, dz = rays.astype(np.float32)
    d_k = np.choose(axis, (dx, dy, dz))
    if texture_filter == "point":
        width_a = width_b = tile
    else:  # d(hit)/du = t (r_u - (r_u[k] / d[k]) d) with r_u = d(ray)/du; same for v
        t_hit = t_hit.astype(np.float32)
        slide = t_hit / d_k
        dir_a, dir_b = np.where(x_face, dy, dx) * slide, np.where(z_face, dy, dz) * slide
        width_a = np.abs(t_hit * u_a - u_k * dir_a) + np.abs(t_hit * v_a - v_k * dir_a)
        width_b = np.abs(t_hit * u_b - u_k * dir_b) + np.abs(t_hit * v_b - v_k * dir_b)
    checker = _filtered_square(tex_a, width_a, tile, texture_filter)
    checker *= _filtered_square(tex_b, width_b, tile, texture_filter)
    light = scene["light"]
    facing_sun = np.maximum(np.where(d_k > 0, -sun_k, sun_k), 0.0)  # normal: -sign(d_k) e_k
    shade = np.float32(255 * light["sun"]) * facing_sun + np.float32(255 * light["ambient"])
    rgb = np.empty((*t.shape, 3), np.float32)
    for channel in range(3):
        rgb[..., channel] = (color[channel] + color[3 + channel] * checker) * shade
    if sky.any():
        zenith, horizon = np.asarray(scene["sky"]["zenith"]), np.asarray(scene["sky"]["horizon"])
        up = rays[2][sky] / np.sqrt((rays[:, sky] ** 2).sum(0))
        rgb[sky] = 255.0 * (horizon + (zenith - horizon) * np.sqrt(np.clip(up, 0, 1))[:, None])
    if noise and scene["noise"]["sigma_dn"] > 0:
        generator = np.random.default_rng(scene["noise"]["seed"])
        rgb += scene["noise"]["sigma_dn"] * generator.standard_normal(rgb.shape, np.float32)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    depth_m = np.where(sky, 0.0, t).astype(np.float32)
    return image, depth_m, surface


def render_view(
    scene: dict[str, Any],
    camera: Camera,
    *,
    noise: bool = True,
    texture_filter: TextureFilter = "box",
    rays_xy: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` (see ``sample_scene``) seen by ``camera`` from the scene's pose.

    Returns ``(image (H, W, 3) uint8 RGB, depth_m (H, W) float32)``, depth 0 where nothing is
    hit. ``camera`` may differ from ``scene["camera"]`` (another size, focal, principal point);
    the sensor noise is drawn from ``scene["noise"]["seed"]`` (``noise=False`` drops it) and
    ``texture_filter`` (``TEXTURE_FILTERS``): ``"box"`` averages the checker over the pixel's
    footprint (default; closest to the pixel-area integral), ``"tent"`` over the footprint
    convolved with itself (softer, < 5 % moire side lobes instead of < 22 %), ``"point"``
    samples it at the pixel centre (an ablation: it aliases).

    ``rays_xy``: ``(H, W, 2)`` per-pixel normalised rays ``(x, y)`` (pixel ``(u, v)`` looks
    along ``(x, y, 1)`` in the camera frame) in place of the pinhole rays of ``camera``, e.g.
    ``metricdepth.distortion.pixel_rays`` of a distorted lens: the depth is then the exact
    z-depth along each distorted ray (the texture filter's footprint still uses ``camera``'s
    pinhole derivatives, an approximation that only softens textures).
    """
    if texture_filter not in TEXTURE_FILTERS:
        raise ValueError(f"texture_filter must be one of {TEXTURE_FILTERS}, got {texture_filter!r}")
    if rays_xy is not None:
        rays_xy = np.asarray(rays_xy, dtype=np.float64)
        if rays_xy.shape != (camera.height, camera.width, 2):
            raise ValueError(
                f"rays_xy must have shape (H, W, 2) = {(camera.height, camera.width, 2)}, "
                f"got {rays_xy.shape}"
            )
    image, depth_m, _ = _render(
        scene, camera, noise=noise, texture_filter=texture_filter, rays_xy=rays_xy
    )
    return image, depth_m


def render_scene(seed: int, config: SynthConfig = SynthConfig()) -> SynthSample:
    """Draw scene ``seed`` (``sample_scene``) and render it with its own camera."""
    scene, camera = sample_scene(seed, config)
    image, depth_m = render_view(scene, camera)
    return SynthSample(image, depth_m, camera, scene)


# ------------------------------------------------------------------ dataset files
def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` in a dataset of seed ``seed``: ``seed * 1_000_003 + index``."""
    return seed * 1_000_003 + index


def write_dataset(
    out_dir: str | os.PathLike, n: int, seed: int = 0, config: SynthConfig = SynthConfig()
) -> Path:
    """Render ``n`` scenes into ``out_dir`` and return the annotation file's path.

    Layout: ``rgb/000000.png`` (8-bit RGB), ``depth/000000.png`` (uint16 millimetres,
    ``depth_scale`` 1000, 0 = invalid; depths beyond ``PNG_DEPTH_CAP_M`` = 65.535 m cannot be
    stored and are written as invalid), ``annotations.json`` (Metric3D's format, paths relative
    to ``out_dir``, ``cam_in = [fx, fy, cx, cy]``) and ``scenes.json`` (the config, the seeds
    and every scene dict, enough to re-render any image). Scene ``i`` uses
    ``scene_seed(seed, i)``. Every file is written atomically.
    """
    from PIL import Image

    out = Path(out_dir)
    entries, scenes = [], []
    for index in range(n):
        sample = render_scene(scene_seed(seed, index), config)
        rgb, depth = out / "rgb" / f"{index:06d}.png", out / "depth" / f"{index:06d}.png"
        with atomic_write(rgb) as tmp:  # zlib level 1: 2.5x faster to write than 6, +15 % size
            Image.fromarray(sample.image).save(tmp, format="PNG", compress_level=1)
        storable = np.where(sample.depth_m > PNG_DEPTH_CAP_M, 0.0, sample.depth_m)
        write_depth(depth, storable, depth_scale=1000.0, compress_level=1)
        entries.append(AnnotationEntry(rgb, depth, 1000.0, tuple(sample.camera.intrinsics), ""))
        scenes.append(sample.scene)
    annotations = out / "annotations.json"
    write_annotations(annotations, entries, out)
    record = {"config": asdict(config), "seed": seed, "n": n, "scenes": scenes}
    with atomic_write(out / "scenes.json") as tmp:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return annotations
