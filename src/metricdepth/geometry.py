"""3-D geometry of metric depth maps: back-projection, projection, normals and distances.

Every function follows the pixel convention of :mod:`metricdepth.camera` exactly (OpenCV camera
frame, integer pixel coordinates are pixel centres, depth is z-depth in metres) and takes a
:class:`~metricdepth.camera.Camera` whose size must equal the depth map's ``W x H``.

Arrays are channel-last: a depth map is ``(..., H, W)``, a point map ``(..., H, W, 3)`` holding
``(X, Y, Z)`` in metres, a normal map ``(..., H, W, 3)``.

Array functions accept a numpy array or a torch tensor and return the same kind. Torch results
keep the input's device and floating dtype and are differentiable (non-floating tensors compute
in ``torch.get_default_dtype()``). Numpy results keep float16/float32/float64; other numpy dtypes
compute in float64. The maths is written once, in torch; numpy is converted at the boundary.

A depth is *valid* when it is finite and > 0 (:func:`valid_mask`).
"""

from __future__ import annotations

import math
import operator
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

from metricdepth.camera import Camera

__all__ = [
    "depth_to_points",
    "normals_from_depth",
    "pixel_distance",
    "point_at",
    "points_to_depth",
    "valid_mask",
]

#: An array argument: the result is of the same kind (numpy array or torch tensor).
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------- boundary helpers
def _as_tensor(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(floating tensor, came_from_numpy)``; numpy shares memory where it can."""
    if isinstance(x, torch.Tensor):
        return (x if x.is_floating_point() else x.to(torch.get_default_dtype())), False
    array = np.asarray(x)
    if array.dtype not in _NUMPY_FLOATS:
        array = array.astype(np.float64)
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # torch cannot wrap read-only memory
        array = array.copy()
    return torch.from_numpy(array), True


def _as_output(t: torch.Tensor, as_numpy: bool):
    return t.detach().cpu().numpy() if as_numpy else t


def _check_camera(camera: Camera) -> Camera:
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a metricdepth.Camera, got {type(camera).__name__}")
    return camera


def _check_depth(depth: torch.Tensor, camera: Camera, name: str = "depth_m") -> tuple[int, int]:
    """Check ``depth`` is ``(..., H, W)`` with ``W x H`` the camera's size; return ``(H, W)``."""
    _check_camera(camera)
    if depth.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {tuple(depth.shape)}")
    height, width = int(depth.shape[-2]), int(depth.shape[-1])
    if (width, height) != (camera.width, camera.height):
        raise ValueError(
            f"{name} is {width}x{height} (W x H) but the camera is {camera.width}x{camera.height}"
        )
    return height, width


def _valid(depth: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(depth) & (depth > 0)


# ---------------------------------------------------------------------- the convention
def _unproject(u, v, z, camera: Camera):
    """``(X, Y)`` of pixel ``(u, v)`` at depth ``z`` (tensors broadcast, or plain floats)."""
    return (u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy


def _project(x, y, z, camera: Camera):
    """Continuous pixel coordinates ``(u, v)`` of the point ``(x, y, z)``."""
    return camera.fx * x / z + camera.cx, camera.fy * y / z + camera.cy


def _points(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    height, width = depth.shape[-2:]
    u = torch.arange(width, dtype=depth.dtype, device=depth.device)
    v = torch.arange(height, dtype=depth.dtype, device=depth.device).unsqueeze(-1)
    x, y = _unproject(u, v, depth, camera)
    return torch.stack((x, y, depth), dim=-1)


# ---------------------------------------------------------------------- public API
def valid_mask(depth: ArrayT) -> ArrayT:
    """Boolean mask of valid depths (finite and > 0), same shape and kind as ``depth``."""
    d, as_numpy = _as_tensor(depth)
    return _as_output(_valid(d), as_numpy)


def depth_to_points(depth_m: ArrayT, camera: Camera) -> ArrayT:
    """Back-project a depth map ``(..., H, W)`` to camera-frame points ``(..., H, W, 3)``.

    ``points[..., v, u, :] = (X, Y, Z)`` with ``Z = depth_m[..., v, u]`` and ``X``, ``Y`` from the
    convention of :mod:`metricdepth.camera`. Invalid depths are not masked: ``Z`` is the depth as
    given and ``X``, ``Y`` follow the same formula (0 gives the origin, NaN gives NaN, ...); use
    :func:`valid_mask` on the depth to select real points. Leading dimensions are batch
    dimensions sharing ``camera``. Raises ValueError if the depth map is not ``W x H`` of the
    camera.
    """
    d, as_numpy = _as_tensor(depth_m)
    _check_depth(d, camera)
    return _as_output(_points(d, camera), as_numpy)


def points_to_depth(points: ArrayT, camera: Camera) -> ArrayT:
    """Render camera-frame points ``(..., 3)`` (e.g. ``(N, 3)`` or ``(H, W, 3)``) to a depth map.

    Returns ``(camera.height, camera.width)`` z-depth. Each point is projected with the
    convention of :mod:`metricdepth.camera` and lands on the nearest pixel centre: pixel ``k``
    takes ``[k - 0.5, k + 0.5)`` (ties go up). Where several points land, the smallest ``Z``
    wins (z-buffer); pixels where nothing lands are 0. Points with ``Z <= 0``, a non-finite
    coordinate, or landing outside the image are dropped. All leading dimensions are flattened
    into one set of points.

    For valid depths this inverts :func:`depth_to_points` exactly:
    ``points_to_depth(depth_to_points(d, cam), cam) == where(valid_mask(d), d, 0)``.
    """
    p, as_numpy = _as_tensor(points)
    _check_camera(camera)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {tuple(p.shape)}")
    height, width = camera.height, camera.width
    x, y, z = p.reshape(-1, 3).unbind(-1)
    u, v = _project(x, y, z, camera)
    col, row = torch.floor(u + 0.5), torch.floor(v + 0.5)
    # Comparisons are False for NaN, and +-inf pixel coordinates fall outside the range.
    keep = (z > 0) & torch.isfinite(z) & (col >= 0) & (col <= width - 1)
    keep &= (row >= 0) & (row <= height - 1)
    index = row[keep].long() * width + col[keep].long()
    inf = torch.full((height * width,), math.inf, dtype=p.dtype, device=p.device)
    nearest = inf.scatter_reduce(0, index, z[keep], reduce="amin", include_self=True)
    depth = torch.where(torch.isinf(nearest), torch.zeros_like(nearest), nearest)
    return _as_output(depth.reshape(height, width), as_numpy)


def normals_from_depth(depth_m: ArrayT, camera: Camera) -> ArrayT:
    """Unit surface normals ``(..., H, W, 3)`` in the camera frame from a depth map ``(..., H, W)``.

    At pixel ``(u, v)`` the tangents are central differences of back-projected points,
    ``t_u = P[v, u+1] - P[v, u-1]`` and ``t_v = P[v+1, u] - P[v-1, u]``, and the normal is
    ``t_v x t_u`` normalised. Normals face the camera (Metric3D's convention): ``n . P <= 0``
    at the pixel's point, so a fronto-parallel plane gives ``(0, 0, -1)``; a normal facing away
    (possible across depth edges) is negated.

    The border pixels, pixels whose depth or any of whose four neighbours' depth is invalid,
    and degenerate pixels (parallel tangents) get the zero vector. The mask of pixels with a
    normal is therefore ``(normals != 0).any(-1)``. Images narrower or shorter than 3 pixels
    give all zeros.
    """
    d, as_numpy = _as_tensor(depth_m)
    height, width = _check_depth(d, camera)
    if height < 3 or width < 3:
        return _as_output(torch.zeros((*d.shape, 3), dtype=d.dtype, device=d.device), as_numpy)
    valid = _valid(d)
    # Invalid depths never reach the result; replacing them keeps gradients finite.
    p = _points(torch.where(valid, d, torch.ones_like(d)), camera)
    centre = p[..., 1:-1, 1:-1, :]
    t_u = p[..., 1:-1, 2:, :] - p[..., 1:-1, :-2, :]
    t_v = p[..., 2:, 1:-1, :] - p[..., :-2, 1:-1, :]
    n = torch.linalg.cross(t_v, t_u, dim=-1)
    n = torch.where((n * centre).sum(-1, keepdim=True) > 0, -n, n)
    norm = torch.linalg.vector_norm(n, dim=-1, keepdim=True)
    stencil = (
        valid[..., 1:-1, 1:-1]
        & valid[..., 1:-1, 2:]
        & valid[..., 1:-1, :-2]
        & valid[..., 2:, 1:-1]
        & valid[..., :-2, 1:-1]
    )
    ok = stencil.unsqueeze(-1) & (norm > 0) & torch.isfinite(norm)
    unit = n / torch.where(ok, norm, torch.ones_like(norm))
    unit = torch.where(ok, unit, torch.zeros_like(unit))
    return _as_output(F.pad(unit, (0, 0, 1, 1, 1, 1)), as_numpy)


def _check_pixel(name: str, pixel, width: int, height: int) -> tuple[int, int]:
    try:
        u, v = pixel
        if isinstance(u, bool) or isinstance(v, bool):
            raise TypeError
        u, v = operator.index(u), operator.index(v)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be integer pixel coordinates (u, v), got {pixel!r}"
        ) from None
    if not (0 <= u < width and 0 <= v < height):
        raise ValueError(f"{name}=({u}, {v}) is outside the {width}x{height} image")
    return u, v


def _median_depth(depth: torch.Tensor, u: int, v: int, window: int) -> float:
    patch = depth[max(v - window, 0) : v + window + 1, max(u - window, 0) : u + window + 1]
    values = patch[_valid(patch)].detach()
    if values.numel() == 0:
        side = 2 * window + 1
        raise ValueError(
            f"no valid depth (finite, > 0) in the {side}x{side} window around pixel ({u}, {v})"
        )
    values = torch.sort(values.reshape(-1)).values
    middle = values.numel() // 2
    if values.numel() % 2:
        return float(values[middle])
    return 0.5 * (float(values[middle - 1]) + float(values[middle]))


def _check_window(window: int) -> int:
    try:
        if isinstance(window, bool):
            raise TypeError
        window = operator.index(window)
    except TypeError:
        raise ValueError(f"window must be an integer >= 0, got {window!r}") from None
    if window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    return window


def _check_depth_map(depth_m: np.ndarray | torch.Tensor, camera: Camera) -> torch.Tensor:
    d, _ = _as_tensor(depth_m)
    if d.ndim != 2:
        raise ValueError(f"depth_m must have shape (H, W), got {tuple(d.shape)}")
    _check_depth(d, camera)
    return d


def _point(
    depth: torch.Tensor, camera: Camera, u: int, v: int, window: int
) -> tuple[float, float, float]:
    z = _median_depth(depth, u, v, window)
    x, y = _unproject(float(u), float(v), z, camera)
    return (x, y, z)


def point_at(
    depth_m: np.ndarray | torch.Tensor, camera: Camera, p: tuple[int, int], window: int = 1
) -> tuple[float, float, float]:
    """The camera-frame point ``(X, Y, Z)`` in metres under pixel ``p = (u, v)``.

    ``depth_m`` is ``(H, W)``. ``Z`` is the median of the valid depths in the
    ``(2 * window + 1)^2`` neighbourhood of ``p`` clipped to the image (``window=0``: the pixel
    itself; an even count takes the mean of the two middle values, as ``numpy.median``), and
    ``X``, ``Y`` back-project the pixel centre ``p`` at that depth. Computed in float64 and
    returned as Python floats (not differentiable). Raises ValueError if ``p`` is not integer
    coordinates inside the image or its neighbourhood has no valid depth.
    """
    d = _check_depth_map(depth_m, camera)
    window = _check_window(window)
    u, v = _check_pixel("p", p, camera.width, camera.height)
    return _point(d, camera, u, v, window)


def pixel_distance(
    depth_m: np.ndarray | torch.Tensor,
    camera: Camera,
    p1: tuple[int, int],
    p2: tuple[int, int],
    window: int = 1,
) -> float:
    """Euclidean distance in metres between the 3-D points under pixels ``p1`` and ``p2``.

    Each point is :func:`point_at` with the same ``window`` (median of the valid depths around
    the pixel). Raises ValueError as :func:`point_at` does, naming ``p1`` or ``p2``.
    """
    d = _check_depth_map(depth_m, camera)
    window = _check_window(window)
    u1, v1 = _check_pixel("p1", p1, camera.width, camera.height)
    u2, v2 = _check_pixel("p2", p2, camera.width, camera.height)
    return math.dist(_point(d, camera, u1, v1, window), _point(d, camera, u2, v2, window))
