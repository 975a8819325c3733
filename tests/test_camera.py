"""Camera: construction, validation, and pixel-exact updates at an odd, non-square size."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from metricdepth import frame as frames
from metricdepth.camera import Camera
from metricdepth.frame import Frame

W, H = 249, 125  # odd and non-square, as in pytorch3d's pixel tests
CAM = Camera(fx=211.3, fy=207.9, cx=131.37, cy=58.21, width=W, height=H)


def project(camera: Camera, points: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points -> (N, 2) pixel coordinates under the documented convention."""
    return np.stack(
        [
            camera.fx * points[:, 0] / points[:, 2] + camera.cx,
            camera.fy * points[:, 1] / points[:, 2] + camera.cy,
        ],
        axis=1,
    )


def unproject(camera: Camera, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    x = (uv[:, 0] - camera.cx) * z / camera.fx
    y = (uv[:, 1] - camera.cy) * z / camera.fy
    return np.stack([x, y, z], axis=1)


def id_image(width: int = W, height: int = H) -> np.ndarray:
    """An image whose three channels hold (u, v, 1) of each pixel, as float32."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([u, v, np.ones_like(u)], axis=2)


def where_did_pixels_go(image: np.ndarray) -> dict[tuple[int, int], tuple[int, int]]:
    """Map original integer pixel -> its integer position in a transformed id image."""
    out = {}
    for v in range(image.shape[0]):
        for u in range(image.shape[1]):
            if image[v, u, 2] == 1:
                out[(int(image[v, u, 0]), int(image[v, u, 1]))] = (u, v)
    return out


def test_constructors_agree():
    from_k = Camera.from_K(CAM.K, W, H)
    from_list = Camera.from_intrinsics(CAM.intrinsics, W, H)
    assert from_k == CAM == from_list
    fov = Camera.from_fov(90.0, 640, 480)
    assert fov.fx == pytest.approx(320.0) and fov.fy == pytest.approx(320.0)
    assert (fov.cx, fov.cy) == (319.5, 239.5)
    assert fov.fov_x_deg == pytest.approx(90.0)
    assert Camera.from_fov(60.0, 100, 50, fov_y_deg=30.0).fy == pytest.approx(
        25 / math.tan(math.radians(15))
    )


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"fx": 0.0}, "fx", "0.0"),
        ({"fx": -5.0}, "fx", "-5.0"),
        ({"fy": float("nan")}, "fy", "nan"),
        ({"fy": float("inf")}, "fy", "inf"),
        ({"cx": float("nan")}, "cx", "nan"),
        ({"width": 0}, "width", "0"),
        ({"height": -3}, "height", "-3"),
        ({"width": 12.5}, "width", "12.5"),
        ({"fx": "abc"}, "fx", "'abc'"),
    ],
)
def test_invalid_values_name_field_and_value(kwargs, field, shown):
    values = {"fx": 100.0, "fy": 100.0, "cx": 5.0, "cy": 5.0, "width": 10, "height": 10}
    values.update(kwargs)
    with pytest.raises(ValueError) as error:
        Camera(**values)
    assert f"Camera.{field}" in str(error.value) and shown in str(error.value)


def test_invalid_constructor_inputs():
    with pytest.raises(ValueError, match="3x3"):
        Camera.from_K(np.eye(4), 10, 10)
    with pytest.raises(ValueError, match="fx, fy, cx, cy"):
        Camera.from_intrinsics([1.0, 2.0, 3.0], 10, 10)
    with pytest.raises(ValueError, match="fov_x_deg"):
        Camera.from_fov(180.0, 10, 10)
    with pytest.raises(ValueError, match="orientation"):
        CAM.rotated(9)
    with pytest.raises(ValueError, match="leaves"):
        CAM.cropped(200, 0, 100, 10)


def test_camera_is_frozen():
    with pytest.raises(AttributeError):
        CAM.fx = 3.0  # type: ignore[misc]


def test_focal_modes():
    assert CAM.focal() == pytest.approx((211.3 + 207.9) / 2)
    assert CAM.focal("fx") == 211.3
    with pytest.raises(ValueError, match="focal mode"):
        CAM.focal("fy")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(498, 250), (83, 25), (300, 101), (124, 62)])
def test_resize_matches_opencv_bilinear_sampling(size):
    """OpenCV samples source (u'+0.5)/sx - 0.5: the camera must describe the same rays."""
    new_w, new_h = size
    resized = cv2.resize(id_image(), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    camera = CAM.resized(new_w, new_h)
    v, u = np.mgrid[0:new_h, 0:new_w]
    src = resized[..., :2].reshape(-1, 2).astype(np.float64)
    inside = (src[:, 0] > 0) & (src[:, 0] < W - 1) & (src[:, 1] > 0) & (src[:, 1] < H - 1)
    dst = np.stack([u.reshape(-1), v.reshape(-1)], axis=1).astype(np.float64)[inside]
    z = np.linspace(0.5, 7.0, dst.shape[0])
    np.testing.assert_allclose(unproject(camera, dst, z), unproject(CAM, src[inside], z), atol=2e-4)


def test_resize_by_two_is_block_exact():
    """Each source pixel becomes a 2x2 block; its centre (2u + 0.5) must be the projection."""
    camera = CAM.resized(2 * W, 2 * H)
    points = unproject(CAM, np.array([[0.0, 0.0], [248.0, 124.0], [17.0, 99.0]]), np.ones(3))
    uv = project(camera, points)
    np.testing.assert_allclose(uv, [[0.5, 0.5], [496.5, 248.5], [34.5, 198.5]], atol=1e-9)
    assert camera.fx == 2 * CAM.fx and camera.fy == 2 * CAM.fy


def exact_transform_cases():
    yield "crop", lambda f: frames.crop(f, 17, 9, 101, 77), np.eye(3)
    yield "pad", lambda f: frames.pad(f, 3, 5, 7, 11, pad_value=-1), np.eye(3)
    yield "flip", lambda f: frames.flip(f), np.diag([-1.0, 1.0, 1.0])
    yield "vflip", lambda f: frames.flip(f, vertical=True), np.diag([1.0, -1.0, 1.0])
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    for orientation in range(1, 9):
        transpose = orientation >= 5
        mirror = swap if transpose else np.eye(3)
        flip_h = orientation in (2, 3, 6, 7)
        flip_v = orientation in (3, 4, 7, 8)
        mirror = np.diag([-1.0 if flip_h else 1.0, -1.0 if flip_v else 1.0, 1.0]) @ mirror
        yield f"exif{orientation}", (lambda o: lambda f: frames.rotate(f, o))(orientation), mirror


@pytest.mark.parametrize(("name", "op", "mirror"), list(exact_transform_cases()))
def test_exact_operations_are_pixel_exact(name, op, mirror):
    """Move an id image with the operation; every pixel's ray must be the same 3-D ray."""
    moved = op(Frame(id_image(), CAM))
    mapping = where_did_pixels_go(moved.image)
    assert mapping, name
    src = np.array(list(mapping.keys()), dtype=np.float64)
    dst = np.array(list(mapping.values()), dtype=np.float64)
    z = np.linspace(0.3, 9.0, src.shape[0])
    before = unproject(CAM, src, z) @ mirror.T
    after = unproject(moved.camera, dst, z)
    np.testing.assert_allclose(after, before, atol=1e-9)
    assert moved.image.shape[:2] == (moved.camera.height, moved.camera.width)


def test_orientation_6_is_clockwise_portrait():
    """EXIF 6 (phone held upright): the top-left stored pixel ends at the top-right."""
    moved = frames.rotate(Frame(id_image(), CAM), 6)
    assert moved.camera.size == (H, W)
    assert tuple(moved.image[0, H - 1, :2]) == (0.0, 0.0)
    expected = Camera(CAM.fy, CAM.fx, H - 1 - CAM.cy, CAM.cx, H, W)
    assert moved.camera == expected


def same(a: Camera, b: Camera) -> bool:
    return a.size == b.size and np.allclose(a.intrinsics, b.intrinsics, rtol=0, atol=1e-9)


def test_rotations_compose_like_the_group():
    # two quarter turns clockwise (6) make a half turn (3); four make the identity
    assert same(CAM.rotated(6).rotated(6), CAM.rotated(3))
    assert same(CAM.rotated(6).rotated(6).rotated(6).rotated(6), CAM)
    assert same(CAM.rotated(6).rotated(8), CAM)
    assert not same(CAM.rotated(6), CAM.rotated(8))
    for orientation in (2, 4, 5, 7):  # mirrors are involutions
        assert same(CAM.rotated(orientation).rotated(orientation), CAM)


def test_normalized_is_resolution_free():
    assert CAM.resized(2 * W, 2 * H).normalized() == pytest.approx(CAM.normalized())
    assert CAM.normalized()[2] == pytest.approx((CAM.cx + 0.5) / W)
