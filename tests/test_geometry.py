"""Tests of metricdepth.geometry against hand-computed values and analytic scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metricdepth.camera import Camera
from metricdepth.geometry import (
    depth_to_points,
    normals_from_depth,
    pixel_distance,
    point_at,
    points_to_depth,
    valid_mask,
)

CAM = Camera(fx=500.0, fy=400.0, cx=3.7, cy=2.2, width=9, height=7)


def random_depth(shape=(7, 9), seed=0, low=0.5, high=5.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def plane_depth(camera: Camera, normal, h: float) -> np.ndarray:
    """Analytic z-depth of the plane ``normal . P = -h`` (``normal`` unit, facing the camera)."""
    u = np.arange(camera.width, dtype=np.float64)
    v = np.arange(camera.height, dtype=np.float64)[:, None]
    rx, ry = (u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy
    n_dot_r = normal[0] * rx + normal[1] * ry + normal[2]
    return -h / n_dot_r


TILTED = np.array([0.3, -0.2, -1.0]) / np.linalg.norm([0.3, -0.2, -1.0])


# ---------------------------------------------------------------------- depth_to_points
def test_hand_computed_pixels():
    depth = np.full((7, 9), 2.0)
    depth[6, 8] = 3.5
    points = depth_to_points(depth, CAM)
    assert points.shape == (7, 9, 3)
    assert tuple(points[0, 0]) == ((0 - 3.7) * 2 / 500, (0 - 2.2) * 2 / 400, 2.0)
    assert tuple(points[6, 8]) == ((8 - 3.7) * 3.5 / 500, (6 - 2.2) * 3.5 / 400, 3.5)
    # Row index is v (y), column index is u (x).
    assert tuple(points[2, 5]) == ((5 - 3.7) * 2 / 500, (2 - 2.2) * 2 / 400, 2.0)


def test_z_channel_is_the_depth_and_batches_share_the_camera():
    depth = random_depth((2, 3, 7, 9))
    points = depth_to_points(depth, CAM)
    assert points.shape == (2, 3, 7, 9, 3)
    assert np.array_equal(points[..., 2], depth)
    assert np.array_equal(points[1, 2], depth_to_points(depth[1, 2], CAM))


def test_invalid_depth_keeps_z_as_given():
    depth = np.full((7, 9), 1.0)
    depth[0, 0], depth[1, 1], depth[2, 2], depth[3, 3] = 0.0, -2.0, np.nan, np.inf
    points = depth_to_points(depth, CAM)
    assert np.array_equal(points[..., 2], depth, equal_nan=True)
    assert np.array_equal(points[0, 0], [0.0, 0.0, 0.0])
    assert tuple(points[1, 1]) == ((1 - 3.7) * -2 / 500, (1 - 2.2) * -2 / 400, -2.0)
    assert np.isnan(points[2, 2]).all()
    mask = valid_mask(depth)
    assert mask.dtype == np.bool_
    assert mask.sum() == 63 - 4
    assert not mask[0, 0] and not mask[1, 1] and not mask[2, 2] and not mask[3, 3]
    assert torch.equal(valid_mask(torch.from_numpy(depth)), torch.from_numpy(mask))


# ---------------------------------------------------------------------- kinds and dtypes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_dtype_is_preserved(dtype):
    depth = random_depth().astype(dtype)
    points = depth_to_points(depth, CAM)
    assert isinstance(points, np.ndarray) and points.dtype == dtype
    assert points_to_depth(points, CAM).dtype == dtype
    assert normals_from_depth(depth, CAM).dtype == dtype


def test_non_float_numpy_computes_in_float64():
    depth = np.full((7, 9), 2, dtype=np.int64)
    assert depth_to_points(depth, CAM).dtype == np.float64
    assert normals_from_depth(depth, CAM).dtype == np.float64


def test_read_only_and_strided_numpy_inputs(recwarn):
    depth = random_depth(seed=5)
    depth.flags.writeable = False
    expected = depth_to_points(depth.copy(), CAM)
    assert np.array_equal(depth_to_points(depth, CAM), expected)
    flipped = np.ascontiguousarray(depth[:, ::-1])
    assert np.array_equal(depth_to_points(depth[:, ::-1], CAM), depth_to_points(flipped, CAM))
    assert not recwarn.list


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_dtype_and_device_are_preserved(dtype):
    depth = torch.from_numpy(random_depth()).to(dtype)
    for result in (
        depth_to_points(depth, CAM),
        normals_from_depth(depth, CAM),
        points_to_depth(depth_to_points(depth, CAM), CAM),
    ):
        assert isinstance(result, torch.Tensor)
        assert result.dtype == dtype and result.device == depth.device


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_and_numpy_agree_exactly(dtype):
    depth = random_depth(seed=1).astype(dtype)
    depth[3, 4] = 0.0
    tensor = torch.from_numpy(depth.copy())
    pts_np, pts_t = depth_to_points(depth, CAM), depth_to_points(tensor, CAM)
    assert np.array_equal(pts_np, pts_t.numpy())
    assert np.array_equal(points_to_depth(pts_np, CAM), points_to_depth(pts_t, CAM).numpy())
    assert np.array_equal(normals_from_depth(depth, CAM), normals_from_depth(tensor, CAM).numpy())
    assert pixel_distance(depth, CAM, (1, 1), (7, 5)) == pixel_distance(tensor, CAM, (1, 1), (7, 5))


def test_gradcheck_depth_to_points():
    camera = Camera(50.0, 40.0, 1.3, 0.7, 4, 3)
    depth = torch.from_numpy(random_depth((3, 4), seed=2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: depth_to_points(d, camera), (depth,))


def test_gradcheck_normals_from_depth():
    camera = Camera(50.0, 40.0, 1.3, 0.7, 5, 4)
    depth = torch.from_numpy(random_depth((4, 5), seed=3, low=2.0, high=2.5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: normals_from_depth(d, camera), (depth,))


# ---------------------------------------------------------------------- shape errors
def test_camera_size_must_match_and_is_named():
    with pytest.raises(ValueError, match=r"10x7 \(W x H\).*camera is 9x7"):
        depth_to_points(np.ones((7, 10)), CAM)
    with pytest.raises(ValueError, match="camera is 9x7"):
        normals_from_depth(np.ones((9, 7)), CAM)
    with pytest.raises(ValueError, match="camera is 9x7"):
        pixel_distance(np.ones((9, 7)), CAM, (0, 0), (1, 1))


def test_bad_shapes_and_cameras():
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        depth_to_points(np.ones(9), CAM)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        points_to_depth(np.ones((5, 2)), CAM)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        point_at(np.ones((2, 7, 9)), CAM, (0, 0))
    with pytest.raises(TypeError, match="Camera"):
        depth_to_points(np.ones((7, 9)), CAM.K)


# ---------------------------------------------------------------------- points_to_depth
def test_projection_rounds_to_nearest_centre_and_z_buffers():
    camera = Camera(1.0, 1.0, 0.0, 0.0, 5, 4)
    points = np.array(
        [
            [2.5, 1.0, 1.0],  # u = 2.5 is a tie: goes up, to pixel (3, 1)
            [1.2, 0.8, 2.0],  # u = 0.6, v = 0.4 -> pixel (1, 0)
            [2.7, 0.9, 3.0],  # u = 0.9, v = 0.3: also pixel (1, 0), farther: hidden
            [-0.5, 3.4, 1.0],  # the image's left edge -> pixel (0, 3)
            [4.5, 0.0, 1.0],  # the right edge u = W - 0.5 is outside
            [1.0, 1.0, -1.0],  # behind the camera
            [1.0, 1.0, 0.0],  # on the camera plane
            [np.nan, 1.0, 1.0],
            [1.0, 1.0, np.inf],
            [99.0, 0.0, 1.0],  # far outside
        ]
    )
    expected = np.zeros((4, 5))
    expected[1, 3], expected[0, 1], expected[3, 0] = 1.0, 2.0, 1.0
    assert np.array_equal(points_to_depth(points, camera), expected)
    # Order of the points does not matter for the z-buffer.
    assert np.array_equal(points_to_depth(points[::-1], camera), expected)


def test_nothing_lands_gives_zeros():
    out = points_to_depth(np.zeros((0, 3), dtype=np.float32), CAM)
    assert out.shape == (7, 9) and out.dtype == np.float32 and not out.any()


def test_round_trip_with_invalid_pixels():
    depth = random_depth(seed=4)
    depth[0, 0], depth[4, 4], depth[6, 8] = 0.0, np.nan, -1.0
    back = points_to_depth(depth_to_points(depth, CAM), CAM)
    assert np.array_equal(back, np.where(valid_mask(depth), depth, 0.0))


# The principal point may lie outside the image; sizes go down to a single pixel.
@settings(max_examples=200, deadline=None, database=None)
@given(
    width=st.integers(1, 9),
    height=st.integers(1, 7),
    fx=st.floats(0.5, 5000.0),
    fy=st.floats(0.5, 5000.0),
    cx=st.floats(-10.0, 20.0),
    cy=st.floats(-10.0, 20.0),
    dtype=st.sampled_from([np.float32, np.float64]),
    use_torch=st.booleans(),
    data=st.data(),
)
def test_property_project_unproject_is_identity(
    width, height, fx, fy, cx, cy, dtype, use_torch, data
):
    camera = Camera(fx, fy, cx, cy, width, height)
    shape = (height, width)
    depth = data.draw(arrays(np.float64, shape, elements=st.floats(1e-3, 1e4))).astype(dtype)
    invalid = data.draw(arrays(np.bool_, shape))
    bad = data.draw(st.sampled_from([0.0, -1.0, np.nan, np.inf, -np.inf]))
    depth[invalid] = bad
    given_depth = torch.from_numpy(depth) if use_torch else depth
    back = points_to_depth(depth_to_points(given_depth, camera), camera)
    back = back.numpy() if use_torch else back
    assert back.dtype == dtype
    assert np.array_equal(back, np.where(invalid, 0.0, depth).astype(dtype))


# ---------------------------------------------------------------------- normals
def test_fronto_parallel_plane_faces_the_camera():
    normals = normals_from_depth(np.full((7, 9), 3.0), CAM)
    assert normals.shape == (7, 9, 3)
    assert np.array_equal(normals[1:-1, 1:-1], np.broadcast_to([0.0, 0.0, -1.0], (5, 7, 3)))
    border = np.ones((7, 9), dtype=bool)
    border[1:-1, 1:-1] = False
    assert not normals[border].any()


def test_tilted_plane_gives_its_exact_normal():
    camera = Camera(300.0, 280.0, 10.3, 7.9, 21, 15)
    depth = plane_depth(camera, TILTED, h=2.0)
    assert (depth > 0).all()
    normals = normals_from_depth(depth, camera)
    np.testing.assert_allclose(normals[1:-1, 1:-1], np.broadcast_to(TILTED, (13, 19, 3)), atol=1e-5)
    # Float32 and a batch of planes also work.
    batch = np.stack([depth, np.full_like(depth, 1.5)]).astype(np.float32)
    normals32 = normals_from_depth(batch, camera)
    assert normals32.shape == (2, 15, 21, 3)
    np.testing.assert_allclose(
        normals32[0, 1:-1, 1:-1], np.broadcast_to(TILTED, (13, 19, 3)), atol=1e-4
    )
    np.testing.assert_allclose(normals32[1, 1:-1, 1:-1, 2], -1.0, atol=1e-6)


def test_sphere_normals_point_outwards_towards_the_camera():
    camera = Camera(200.0, 200.0, 20.0, 20.0, 41, 41)
    centre, radius = np.array([0.0, 0.0, 5.0]), 1.0
    u, v = np.meshgrid(np.arange(41.0), np.arange(41.0))
    rays = np.stack([(u - 20.0) / 200.0, (v - 20.0) / 200.0, np.ones_like(u)], -1)
    a, b = (rays * rays).sum(-1), -2.0 * rays @ centre
    disc = b * b - 4 * a * (centre @ centre - radius**2)
    depth = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)
    normals = normals_from_depth(depth, camera)
    inner = (depth > 0) & (np.hypot(u - 20, v - 20) < 25)
    inner[[0, -1], :] = inner[:, [0, -1]] = False
    truth = (depth_to_points(depth, camera) - centre) / radius
    np.testing.assert_allclose(normals[inner], truth[inner], atol=2e-3)
    points = depth_to_points(depth, camera)
    assert ((normals * points).sum(-1) < 0)[inner].all()


def test_invalid_neighbourhood_gives_zero_normals():
    depth = np.full((7, 9), 2.0)
    depth[3, 4] = np.nan
    normals = normals_from_depth(depth, CAM)
    has_normal = (normals != 0).any(-1)
    for v, u in [(3, 4), (2, 4), (4, 4), (3, 3), (3, 5)]:
        assert not has_normal[v, u]
    assert has_normal[2, 3] and has_normal[4, 5]  # diagonal neighbours are unaffected
    assert has_normal.sum() == 5 * 7 - 5
    assert not normals_from_depth(np.ones((2, 9)), Camera(1, 1, 0, 0, 9, 2)).any()


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data(), fx=st.floats(10.0, 2000.0), cx=st.floats(-5.0, 12.0))
def test_property_normals_are_unit_or_zero_and_face_the_camera(data, fx, cx):
    camera = Camera(fx, fx * 1.1, cx, 3.0, 9, 7)
    depth = data.draw(arrays(np.float64, (7, 9), elements=st.floats(0.1, 10.0)))
    normals = normals_from_depth(depth, camera)
    lengths = np.linalg.norm(normals, axis=-1)
    has_normal = lengths > 0
    np.testing.assert_allclose(lengths[has_normal], 1.0, atol=1e-12)
    assert ((normals * depth_to_points(depth, camera)).sum(-1)[has_normal] <= 0).all()


# ---------------------------------------------------------------------- distances
@pytest.mark.parametrize(
    ("focal", "width", "cx", "left", "right"),
    [(1000.0, 401, 200.0, 75, 325), (500.0, 202, 100.5, 38, 163)],
)
def test_seed_example_object_width(focal, width, cx, left, right):
    """An object 0.25 m wide at 1 m spans 250 px at f = 1000 and 125 px at f = 500.

    Measured between its edge pixels, ``pixel_distance`` gives 0.25 m at either focal length.
    """
    camera = Camera(focal, focal, cx, 10.0, width, 21)
    u = np.arange(width, dtype=np.float64)
    on_object = np.abs((u - cx) / focal) <= 0.125  # pixel centres that see the object at 1 m
    depth = np.broadcast_to(np.where(on_object, 1.0, 3.0), (21, width)).copy()
    columns = np.flatnonzero(on_object)
    assert (columns[0], columns[-1]) == (left, right)
    assert right - left == round(0.25 * focal)  # 250 px and 125 px
    # The 3x3 windows at the edges straddle the background; the median keeps the object.
    assert pixel_distance(depth, camera, (left, 10), (right, 10)) == pytest.approx(0.25, abs=1e-12)
    assert pixel_distance(depth, camera, (left, 10), (right, 10), window=0) == pytest.approx(0.25)


def test_distance_on_a_tilted_plane_matches_the_known_segment():
    camera = Camera(300.0, 280.0, 10.3, 7.9, 21, 15)
    depth = plane_depth(camera, TILTED, h=2.0)
    (u1, v1), (u2, v2) = (2, 3), (17, 12)
    # The segment's endpoints on the plane, computed independently of the module.
    ends = []
    for u, v in ((u1, v1), (u2, v2)):
        ray = np.array([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, 1.0])
        ends.append(ray * (-2.0 / (TILTED @ ray)))
    assert abs(TILTED @ ends[0] + 2.0) < 1e-12 and abs(TILTED @ ends[1] + 2.0) < 1e-12
    length = float(np.linalg.norm(ends[0] - ends[1]))
    assert pixel_distance(depth, camera, (u1, v1), (u2, v2), window=0) == pytest.approx(
        length, rel=1e-12
    )
    np.testing.assert_allclose(point_at(depth, camera, (u2, v2), window=0), ends[1], rtol=1e-12)
    # A median over 3x3 on a tilted plane is close to, not exactly, the centre depth.
    assert pixel_distance(depth, camera, (u1, v1), (u2, v2)) == pytest.approx(length, rel=1e-3)
    assert pixel_distance(depth, camera, (u1, v1), (u1, v1)) == 0.0


def test_point_at_uses_the_median_of_valid_depths():
    depth = np.full((7, 9), 9.0)
    depth[1:4, 3:6] = [[1.0, 0.0, 2.0], [np.nan, 4.0, 100.0], [-3.0, 3.0, np.inf]]
    x, y, z = point_at(depth, CAM, (4, 2))
    assert z == np.median([1.0, 2.0, 4.0, 100.0, 3.0]) == 3.0
    assert (x, y) == ((4 - 3.7) * 3.0 / 500, (2 - 2.2) * 3.0 / 400)
    assert point_at(depth, CAM, (4, 2), window=0)[2] == 4.0
    # Even counts average the two middle values; windows are clipped at the border.
    depth[0:2, 0:2] = [[1.0, 2.0], [5.0, 0.0]]
    assert point_at(depth, CAM, (0, 0))[2] == 2.0
    depth[0, 0] = 1.5
    assert point_at(depth, CAM, (0, 0))[2] == 2.0
    depth[1, 1] = 6.0
    assert point_at(depth, CAM, (0, 0))[2] == 3.5
    assert point_at(torch.from_numpy(depth), CAM, (np.int64(0), np.int64(0)))[2] == 3.5


def test_pixel_validation():
    depth = np.full((7, 9), 2.0)
    for bad in [(9, 0), (0, 7), (-1, 0), (1.5, 2), (True, 1), (1,), "ab", None]:
        with pytest.raises(ValueError, match="p2"):
            pixel_distance(depth, CAM, (0, 0), bad)
    with pytest.raises(ValueError, match="outside the 9x7 image"):
        point_at(depth, CAM, (9, 6))
    for bad_window in (-1, 1.0, True):
        with pytest.raises(ValueError, match="window"):
            point_at(depth, CAM, (0, 0), window=bad_window)
    depth[0:3, 0:3] = 0.0
    with pytest.raises(ValueError, match=r"no valid depth .* 3x3 window around pixel \(1, 1\)"):
        point_at(depth, CAM, (1, 1))
    assert point_at(depth, CAM, (1, 1), window=2)[2] == 2.0
    assert math.isfinite(pixel_distance(depth, CAM, (3, 3), (8, 6)))
