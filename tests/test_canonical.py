"""The canonical transform: worked numbers, the seed example, and properties over random chains."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from metricdepth import frame as frames
from metricdepth.camera import Camera
from metricdepth.canonical import (
    CanonicalSpace,
    from_canonical,
    inference_record,
    normalize,
    prepare_input,
    to_canonical,
    training_record,
    unpad,
)
from metricdepth.frame import Frame

KITTI = Camera.from_intrinsics([707.0493, 707.0493, 604.0814, 180.5066], 1242, 375)
NYU = Camera.from_intrinsics([518.8579, 519.46961, 325.58245, 253.73617], 640, 480)
WILD = Camera.from_intrinsics([1000.0, 1000.0, 400.0, 600.0], 800, 1200)
VIT = CanonicalSpace(input_hw=(616, 1064))
CONVNEXT = CanonicalSpace(input_hw=(544, 1216))


# ---------------------------------------------------------------------------- worked numbers
@pytest.mark.parametrize(
    ("camera", "space", "scale", "resized", "pad", "f_fx", "f_mean"),
    [  # metric3d-behaviour.md §1.5, every column
        (KITTI, VIT, 0.856683, (321, 1064), (147, 148, 0, 0), 0.605717, 0.605717),
        (KITTI, CONVNEXT, 0.979066, (367, 1216), (88, 89, 0, 0), 0.692248, 0.692248),
        (NYU, VIT, 1.283333, (616, 821), (0, 0, 121, 122), 0.665868, 0.666260),
        (NYU, CONVNEXT, 1.133333, (544, 725), (0, 0, 245, 246), 0.588039, 0.588386),
        (WILD, VIT, 0.513333, (616, 410), (0, 0, 327, 327), 0.513333, 0.513333),
    ],
)
def test_worked_numbers(camera, space, scale, resized, pad, f_fx, f_mean):
    hub = inference_record(camera, space, "fx")
    cli = inference_record(camera, space, "mean")
    assert round(hub.scale, 6) == scale
    assert hub.resized_hw == resized and hub.pad == pad
    assert round(hub.f_eff_px / 1000, 6) == f_fx
    assert round(cli.f_eff_px / 1000, 6) == f_mean
    assert hub.label_scale == pytest.approx(1000 / hub.f_eff_px, rel=1e-15)
    assert hub.metric_scale * hub.label_scale == pytest.approx(1.0, rel=1e-15)
    # Metric3D's two ratios: label_scale_factor = to_canonical_ratio / to_scale_ratio
    assert hub.to_canonical_ratio / hub.to_scale_ratio == pytest.approx(hub.label_scale, rel=1e-14)


def test_pad_colour_is_the_uint8_mean_and_normalises_off_zero():
    image = np.full((375, 1242, 3), 200, dtype=np.uint8)
    x, record = prepare_input(image, KITTI, VIT)
    corner = x[0, :, 0, 0].numpy()
    expected = (np.array([124, 116, 104]) - np.array(VIT.mean_rgb)) / np.array(VIT.std_rgb)
    np.testing.assert_allclose(corner, expected, atol=1e-6)
    assert np.all(np.abs(corner) > 1e-3)  # not exactly 0: the official quirk
    top, bottom, _, _ = record.pad
    inside = x[0, :, top + 5, 500].numpy()
    np.testing.assert_allclose(
        inside, (200 - np.array(VIT.mean_rgb)) / np.array(VIT.std_rgb), atol=1e-6
    )


def test_bottom_right_placement_keeps_pixel_coordinates():
    space = CanonicalSpace(input_hw=(616, 1064), pad_placement="bottom_right")
    record = inference_record(NYU, space)
    assert record.offset == (0, 0) and record.pad == (0, 0, 0, 1064 - 821)
    assert record.camera_c.cx == pytest.approx((NYU.cx + 0.5) * 821 / 640 - 0.5)


def test_official_input_bytes_match_the_parity_fixture():
    """The uint8 canvas and the normalised tensor equal the official pipeline's, bit for bit."""
    import hashlib
    import json

    from conftest import PARITY as parity
    from conftest import require_shared

    require_shared(parity / "vit_small__nyu.npz", "parity fixtures")
    image = cv2.imread(str(parity / "img_nyu_rgb_00000.jpg"))[:, :, ::-1]
    meta = json.loads(str(np.load(parity / "vit_small__nyu.npz")["meta_json"]))
    record = inference_record(NYU, VIT, "fx")
    canvas = to_canonical(Frame(image, NYU), record, pad_rgb=VIT.pad_rgb)
    x = normalize(canvas.image, VIT)
    assert hashlib.sha256(canvas.image.tobytes()).hexdigest() == meta["input_uint8_sha256"]
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == meta["input_norm_sha256"]


# ---------------------------------------------------------------------------- the seed example
def render_bar(camera: Camera, width_m: float, depth_m: float) -> Frame:
    """A white bar ``width_m`` wide centred on the optical axis at ``depth_m``, black elsewhere."""
    x_centre = (np.arange(camera.width) - camera.cx) * depth_m / camera.fx
    covered = np.abs(x_centre) < width_m / 2  # pixel centres on the bar
    image = np.zeros((camera.height, camera.width, 3), dtype=np.uint8)
    image[:, covered] = 255
    depth = np.full((camera.height, camera.width), depth_m, dtype=np.float32)
    return Frame(image, camera, depth)


def oracle_canonical_depth(canvas: np.ndarray, width_m: float, focal_c: float) -> float:
    """What a perfect network would say: the canonical camera sees ``width_m`` over N pixels."""
    bar_px = int((canvas[canvas.shape[0] // 2, :, 0] > 127).sum())
    return focal_c * width_m / bar_px


@pytest.mark.parametrize("input_hw", [(800, 1400), (616, 1064), (300, 400)])
def test_seed_example_quarter_metre_at_one_metre(input_hw):
    space = CanonicalSpace(input_hw=input_hw)
    results = {}
    for focal in (1000.0, 500.0):
        # 1400x600 px at f = 1000 and 701x301 at f = 500: same view, bar centred on pixel centres
        width_px, height_px = (1400, 600) if focal == 1000.0 else (701, 301)
        camera = Camera(focal, focal, (width_px - 1) / 2, (height_px - 1) / 2, width_px, height_px)
        scene = render_bar(camera, 0.25, 1.0)
        assert int((scene.image[0, :, 0] > 127).sum()) == int(250 * focal / 1000)
        record = inference_record(camera, space)
        canvas = to_canonical(scene, record)
        depth_c = oracle_canonical_depth(canvas.image, 0.25, space.focal_px)
        # the training label the network would be given is the same number
        label = float(np.median(canvas.depth[canvas.mask]))
        assert label == pytest.approx(1.0 * record.label_scale, rel=1e-6)
        assert depth_c == pytest.approx(label, rel=0.02)
        depth_map_c = np.full(record.input_hw, depth_c, dtype=np.float32)
        results[focal] = (from_canonical(depth_map_c, record), depth_c)
    for focal, (depth_m, _) in results.items():
        assert depth_m.shape == ((600, 1400) if focal == 1000.0 else (301, 701))
        assert float(np.median(depth_m)) == pytest.approx(1.0, rel=0.02)


def test_seed_example_without_the_transform_reads_two_metres():
    """No resize (s = 1): the bar is 250 px at f = 1000 and 125 px at f = 500. A network that
    learned 'a 0.25 m bar over 250 px is 1 m away' reads the f = 500 image as 2 m unless the
    canonical scale f_eff / f_c is applied."""
    space = CanonicalSpace(input_hw=(700, 1500))
    rng = np.random.default_rng(0)
    for focal, width_px, height_px in ((1000.0, 1400, 600), (500.0, 701, 301)):
        camera = Camera(focal, focal, (width_px - 1) / 2, (height_px - 1) / 2, width_px, height_px)
        scene = render_bar(camera, 0.25, 1.0)
        for variant, expected in (("none", 1000.0 / focal), ("label", 1.0)):
            record = training_record(camera, space, rng, variant=variant, crop="center")
            assert record.scale == 1.0
            canvas = to_canonical(scene, record)
            reading = oracle_canonical_depth(canvas.image, 0.25, space.focal_px)
            depth_m = from_canonical(np.full(space.input_hw, reading, np.float32), record)
            assert float(np.median(depth_m)) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------- properties
cameras = st.builds(
    lambda w, h, f, aspect, px, py: Camera(f, f * aspect, px * (w - 1), py * (h - 1), w, h),
    st.integers(8, 160),
    st.integers(8, 160),
    st.floats(50.0, 3000.0),
    st.floats(0.95, 1.05),
    st.floats(-0.2, 1.2),
    st.floats(-0.2, 1.2),
)


@st.composite
def chains(draw, allow_rotation: bool):
    """A random chain of (name, args) camera/frame operations."""
    kinds = ["resize", "crop", "pad", "flip"] + (["rotate"] if allow_rotation else [])
    return [
        (draw(st.sampled_from(kinds)), draw(st.tuples(*[st.floats(0, 1)] * 4)))
        for _ in range(draw(st.integers(1, 6)))
    ]


def apply_step(item, step, *, ratio_range=(0.3, 3.0)):
    """Apply one chain step to a Frame (array operations) or a Camera.

    Returns ``(result, resize)`` where ``resize`` is ``(w, h, t)`` for a resize step, else None.
    """
    name, (a, b, c, d) = step
    is_frame = isinstance(item, Frame)
    camera = item.camera if is_frame else item
    if name == "resize":
        t = ratio_range[0] + a * (ratio_range[1] - ratio_range[0])
        w, h = int(camera.width * t + 0.5), int(camera.height * t + 0.5)
        if min(w, h) < 2:
            return item, None
        return (frames.resize(item, w, h) if is_frame else camera.resized(w, h)), (w, h, t)
    if name == "crop":
        w = max(1, int(camera.width * (0.5 + 0.5 * a)))
        h = max(1, int(camera.height * (0.5 + 0.5 * b)))
        left, top = int((camera.width - w) * c), int((camera.height - h) * d)
        out = frames.crop(item, left, top, w, h) if is_frame else camera.cropped(left, top, w, h)
        return out, None
    if name == "pad":
        sides = [int(10 * v) for v in (a, b, c, d)]
        return (
            frames.pad(item, *sides, pad_value=(-1e6, -1e6, 0))
            if is_frame
            else camera.padded(*sides)
        ), None
    if name == "flip":
        vertical = a > 0.5
        return (frames.flip(item, vertical) if is_frame else camera.flipped(vertical)), None
    orientation = 1 + int(a * 7.999)
    return (frames.rotate(item, orientation) if is_frame else camera.rotated(orientation)), None


@settings(max_examples=1000, deadline=None)
@given(camera=cameras, chain=chains(allow_rotation=True), mode=st.sampled_from(["fx", "mean"]))
def test_property_two_ratio_bookkeeping_equals_updated_camera(camera, chain, mode):
    """(a) Metric3D's label_scale_factor == f_c / f_eff of the camera after the chain.

    Metric3D's rules (metric3d-behaviour.md §2.3-2.4): LabelScaleCononical sets the factor to
    f_c / f; every RandomResize by t divides it by t; crops, pads and flips leave it alone.
    The camera is updated exactly by our methods. The nominal t and the realised integer
    ratio differ by at most half a pixel per resize, which bounds the difference.
    """
    f_c = 1000.0
    label_scale_factor = f_c / camera.focal(mode)  # to_canonical_ratio
    tolerance = 1.0
    for step in chain:
        if mode == "fx" and step[0] == "rotate":
            continue  # Metric3D has no rotation; 'fx' is defined on the stored x axis
        camera, info = apply_step(camera, step)
        if info is not None:
            w, h, t = info
            label_scale_factor /= t  # to_scale_ratio
            tolerance *= 1 + 0.5 / (min(w, h) - 0.5)
    f_eff = camera.focal(mode)
    assert label_scale_factor == pytest.approx(f_c / f_eff, rel=tolerance - 1 + 1e-12)


def _sampled_inside(size_in: int, size_out: int) -> np.ndarray:
    """1.0 where OpenCV's bilinear sample (dst + 0.5) * in / out - 0.5 lies inside [0, in - 1]."""
    x = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    return ((x >= 0) & (x <= size_in - 1)).astype(np.float32)


@settings(max_examples=1000, deadline=None)
@given(camera=cameras, chain=chains(allow_rotation=True))
@example(  # padding mixed in with a weight of 3e-5 by five resizes (a float32 trust of 0.99997)
    camera=Camera(50.0, 50.0, 0.0, 0.0, 8, 8),
    chain=[("pad", (0.75, 0.0, 0.4375, 0.0))]
    + [("resize", (t, 0.0, 0.0, 0.0)) for t in (1.0, 0.0, 0.75, 0.5, 0.0)],
)
def test_property_points_are_unchanged_by_any_chain(camera, chain):
    """(b) Back-projecting a pixel with the updated camera gives the same 3-D point.

    The image holds each pixel's original (u, v); array operations (OpenCV bilinear resize,
    crops, pads, flips, EXIF rotations) move it; where a value survives unclamped, the ray
    through the new pixel with the new camera must equal the ray through the old pixel with the
    old camera, up to the mirror the flips and transposes apply to the 3-D frame.
    """
    # float64, so that "trusted" is exactly 1 unless padding was mixed in (with float32, a
    # padding weight of 3e-5 passed as trusted and moved a coordinate by 30 px)
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    frame = Frame(np.stack([u, v, np.ones_like(u)], axis=2), camera)  # (u, v, trusted)
    mirror = np.eye(3)
    for step in chain:
        before = frame.camera
        frame, resize = apply_step(frame, step)
        if resize is not None:  # OpenCV clamps samples beyond the border: not trusted
            frame.image[..., 2] *= _sampled_inside(before.width, resize[0])[None, :]
            frame.image[..., 2] *= _sampled_inside(before.height, resize[1])[:, None]
        if step[0] == "flip":
            axis = 1 if step[1][0] > 0.5 else 0
            mirror = np.diag([-1.0 if axis == 0 else 1.0, -1.0 if axis == 1 else 1.0, 1.0]) @ mirror
        elif step[0] == "rotate":
            orientation = 1 + int(step[1][0] * 7.999)
            if orientation >= 5:
                mirror = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]) @ mirror
            if orientation in (2, 3, 6, 7):
                mirror = np.diag([-1.0, 1, 1]) @ mirror
            if orientation in (3, 4, 7, 8):
                mirror = np.diag([1.0, -1, 1]) @ mirror
    src = frame.image[..., :2].reshape(-1, 2).astype(np.float64)
    inside = frame.image[..., 2].reshape(-1) > 1 - 1e-12  # padding or clamped samples: < 1
    if not inside.any():
        return
    new = frame.camera
    vv, uu = np.mgrid[0 : new.height, 0 : new.width]
    dst = np.stack([uu.reshape(-1), vv.reshape(-1)], axis=1).astype(np.float64)[inside]
    src = src[inside]
    before = np.stack(
        [
            (src[:, 0] - camera.cx) / camera.fx,
            (src[:, 1] - camera.cy) / camera.fy,
            np.ones(len(src)),
        ],
        1,
    )
    after = np.stack(
        [(dst[:, 0] - new.cx) / new.fx, (dst[:, 1] - new.cy) / new.fy, np.ones(len(dst))], 1
    )
    # float32 storage of coordinates up to ~500 px: 1e-4 px, i.e. 1e-4 / f in ray slope
    np.testing.assert_allclose(
        after, before @ mirror.T, atol=5e-4 * (1.0 / min(camera.fx, camera.fy)) + 1e-7
    )


@st.composite
def spaces(draw, camera: Camera) -> CanonicalSpace:
    """Any inference space: Metric3D's fit-and-pad, CSTM_image's focal resize, or no resize."""
    resize = draw(st.sampled_from(["fit", "focal", "none"]))
    return CanonicalSpace(
        focal_px=camera.fx * draw(st.floats(0.3, 3.0)),
        input_hw=draw(st.tuples(st.integers(8, 200), st.integers(8, 200))),
        pad_placement=draw(st.sampled_from(["center", "bottom_right"])),
        variant=draw(st.sampled_from(["label", "none"])) if resize != "focal" else "image",
        resize=resize,
        size_multiple=draw(st.sampled_from([1, 7, 32])),
    )


@settings(max_examples=1000, deadline=None)
@given(
    camera=cameras,
    data=st.data(),
    plane=st.tuples(st.floats(0.5, 50.0), st.floats(-0.01, 0.01), st.floats(-0.01, 0.01)),
)
def test_property_round_trip_returns_the_depth(camera, data, plane):
    """(c) from_canonical(to_canonical(depth)) == depth, up to interpolation error."""
    space = data.draw(spaces(camera))
    try:
        record = inference_record(camera, space)
    except ValueError as error:  # documented: a resize that leaves no pixel
        assert "leaves no pixel" in str(error)
        return
    if space.resize == "focal":
        assert record.f_eff_px == pytest.approx(space.focal_px, rel=1e-12)
        assert record.label_scale == pytest.approx(1.0, rel=1e-12)  # CSTM_image: metric labels
    if space.resize != "fit":
        assert all(side % space.size_multiple == 0 for side in record.input_hw)
    if space.variant == "none":
        assert record.label_scale == 1.0 == record.metric_scale
    z0, gu, gv = plane
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    depth = (z0 * (1 + gu * u + gv * v)).clip(0.1).astype(np.float32)
    image = np.zeros((camera.height, camera.width, 3), dtype=np.uint8)
    canvas = to_canonical(Frame(image, camera, depth), record)
    assert canvas.image.shape[:2] == record.input_hw and canvas.camera == record.camera_c
    # labels: exactly depth x label_scale wherever valid, and the padding is masked out
    assert not canvas.mask[: record.pad[0]].any() and not canvas.mask[:, : record.pad[2]].any()
    assert canvas.mask.sum() == record.resized_hw[0] * record.resized_hw[1]
    back = from_canonical(canvas.depth, record)
    assert back.shape == depth.shape and back.dtype == np.float32
    # nearest then bilinear: at most ~one source pixel (plus one canvas pixel) of the gradient
    step = (1.0 / record.scale + 1.0) * z0 * (abs(gu) + abs(gv))
    np.testing.assert_allclose(back, depth, rtol=2e-6, atol=step + 1e-5)
    constant = np.full_like(depth, z0)
    canvas_c = to_canonical(Frame(image, camera, constant), record)
    np.testing.assert_allclose(canvas_c.depth[canvas_c.mask], z0 * record.label_scale, rtol=1e-6)
    np.testing.assert_allclose(from_canonical(canvas_c.depth, record), constant, rtol=2e-6)


# ---------------------------------------------------------------------------- training form
def test_training_variants_give_the_label_scale_metric3d_would():
    rng = np.random.default_rng(0)
    space = CanonicalSpace(input_hw=(64, 96))
    for _ in range(200):
        record = training_record(
            NYU, space, rng, variant="label", resize_range=(0.1, 0.2), focal_mode="fx"
        )
        t = record.scale
        assert record.resized_hw == (int(480 * t + 0.5), int(640 * t + 0.5))
        assert record.label_scale == pytest.approx(1000 / NYU.fx / t, rel=1e-14)
        image = training_record(NYU, space, rng, variant="image", resize_range=(0.5, 2.0))
        t_image = image.to_scale_ratio
        assert image.f_eff_px == pytest.approx(1000 * t_image, rel=1e-12)  # f_eff = f_c * t
        assert image.label_scale == pytest.approx(1 / t_image, rel=1e-12)  # labels / t only
        none = training_record(NYU, space, rng, variant="none", resize_range=(0.5, 2.0))
        assert none.label_scale == 1.0 and none.metric_scale == 1.0


def test_training_crop_and_pad_masks():
    rng = np.random.default_rng(1)
    space = CanonicalSpace(input_hw=(40, 200))
    camera = Camera(100.0, 100.0, 30.0, 20.0, 64, 48)
    depth = rng.uniform(1, 5, (48, 64)).astype(np.float32)
    depth[5:9, 10:20] = 0  # invalid pixels
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    seen_offsets = set()
    for _ in range(50):
        record = training_record(camera, space, rng, resize_range=(1.0, 1.0))
        sample = to_canonical(Frame(image, camera, depth), record)
        top, left = record.offset
        seen_offsets.add(top)
        assert record.resized_hw == (48, 64) and left == (200 - 64) // 2 and -8 <= top <= 0
        assert record.crop[0] == -top and record.pad[2:] == (68, 68)
        # every valid canvas pixel is an original valid pixel, scaled
        rows, cols = np.nonzero(sample.mask)
        np.testing.assert_allclose(
            sample.depth[rows, cols], depth[rows - top, cols - left] * record.label_scale, rtol=1e-6
        )
        assert sample.mask.sum() == (depth[-top : -top + 40] > 0).sum()
        assert (sample.image[:, :left] == 0).all()  # training pads black, as Metric3D
        assert sample.camera == record.camera_c
    assert len(seen_offsets) > 3  # the crop really is random


@pytest.mark.parametrize("sparse", [False, True])
def test_resampling_never_makes_invalid_pixels_valid(sparse):
    rng = np.random.default_rng(2)
    depth = np.where(rng.random((37, 53)) < 0.1, rng.uniform(1, 80, (37, 53)), 0).astype(np.float32)
    camera = Camera(60.0, 60.0, 26.0, 18.0, 53, 37)
    image = np.zeros((37, 53, 3), np.uint8)
    for size in [(106, 74), (20, 13), (53, 37), (71, 50)]:
        moved = frames.resize(Frame(image, camera, depth), *size, sparse=sparse)
        values = set(np.round(moved.depth[moved.mask], 4).tolist())
        assert values <= set(np.round(depth[depth > 0], 4).tolist())
        assert (moved.depth[~moved.mask] == 0).all()
    if sparse:  # scattering keeps every point when there is room, one each
        moved = frames.resize(Frame(image, camera, depth), 106, 74, sparse=True)
        assert moved.mask.sum() == (depth > 0).sum()


def test_scatter_keeps_the_nearest_point_on_collision():
    depth = np.array([[5.0, 2.0], [0.0, 9.0]], dtype=np.float32)
    frame = Frame(np.zeros((2, 2, 3), np.uint8), Camera(1.0, 1.0, 0.5, 0.5, 2, 2), depth)
    moved = frames.resize(frame, 1, 1, sparse=True)
    assert moved.depth[0, 0] == 2.0


def test_from_canonical_torch_and_batch_shapes():
    record = inference_record(NYU, VIT)
    depth_c = torch.rand(2, 1, 616, 1064) * 10 + 1
    out = from_canonical(depth_c, record)
    assert out.shape == (2, 1, 480, 640) and isinstance(out, torch.Tensor)
    single = from_canonical(depth_c[1, 0].numpy(), record)
    np.testing.assert_allclose(out[1, 0].numpy(), single, rtol=1e-6)
    assert unpad(depth_c, record).shape == (2, 1, 616, 821)
    with pytest.raises(ValueError, match="expected"):
        from_canonical(torch.rand(10, 10), record)


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="pad_placement"):
        CanonicalSpace(pad_placement="left")
    with pytest.raises(ValueError, match="go together"):
        CanonicalSpace(variant="image")  # CSTM_image needs the focal resize
    with pytest.raises(ValueError, match="resize"):
        CanonicalSpace(resize="stretch")
    with pytest.raises(ValueError, match="focal mode"):
        inference_record(NYU, VIT, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant"):
        training_record(NYU, VIT, np.random.default_rng(0), variant="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        normalize(np.zeros((4, 4, 3), np.float32), VIT)
    with pytest.raises(ValueError, match="camera"):
        to_canonical(Frame(np.zeros((480, 640, 3), np.uint8), NYU), inference_record(KITTI, VIT))


def test_normalize_equals_the_torch_expression_to_the_bit():
    """The numpy per-channel normalisation gives exactly torch's ``(x - mean) / std``."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[0, :3] = [[0, 0, 0], [255, 255, 255], [124, 116, 104]]  # extremes and the pad colour
    for space in (
        VIT,
        CanonicalSpace(
            focal_px=250.0,
            input_hw=(96, 128),
            mean_rgb=(1.5, 2.0, 250.25),
            std_rgb=(0.3, 7.0, 300.0),
        ),
    ):
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mean = torch.tensor(space.mean_rgb, dtype=torch.float32)[:, None, None]
        std = torch.tensor(space.std_rgb, dtype=torch.float32)[:, None, None]
        expected = ((x - mean) / std)[None]
        got = normalize(image, space)
        assert got.dtype == torch.float32 and got.shape == (1, 3, 37, 53)
        assert torch.equal(got, expected)
    # a non-contiguous view (a crop of a larger image) works the same
    view = image[5:30, 7:40]
    x = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))).float()
    mean = torch.tensor(VIT.mean_rgb, dtype=torch.float32)[:, None, None]
    std = torch.tensor(VIT.std_rgb, dtype=torch.float32)[:, None, None]
    assert torch.equal(normalize(view, VIT), ((x - mean) / std)[None])


@pytest.mark.parametrize("size", [(112, 84), (128, 96), (144, 108), (160, 90), (50, 70)])
def test_training_resize_base_fit_matches_the_inference_fit(size):
    """``resize_base="fit"`` (t = 1): the training record resizes and places the image exactly
    as inference's ``fit`` does, so both give the same canvas, f_eff and label scale."""
    width, height = size
    camera = Camera(0.9 * width, 0.93 * width, 0.52 * width, 0.47 * height, width, height)
    space = CanonicalSpace(focal_px=250.0, input_hw=(96, 128), variant="label")
    rng = np.random.default_rng(0)
    train = training_record(camera, space, rng, resize_base="fit", crop="center")
    infer = inference_record(camera, space)
    expected = min(96 / height, 128 / width)
    assert train.scale == pytest.approx(expected, rel=1e-12) == infer.scale
    assert train.resized_hw == infer.resized_hw
    assert train.offset == infer.offset and train.crop == (0, 0, 0, 0)
    assert train.label_scale == pytest.approx(250.0 / (camera.focal("mean") * expected))
    assert train.metric_scale == pytest.approx(infer.metric_scale, rel=1e-12)
    # a random resize t multiplies the fit factor
    t_record = training_record(camera, space, rng, resize_base="fit", resize_range=(1.5, 1.5))
    assert t_record.scale == pytest.approx(1.5 * expected, rel=1e-12)
    # the default keeps the stored size; the image variant keeps its focal resize
    assert training_record(camera, space, rng).scale == 1.0
    image_space = CanonicalSpace(
        focal_px=250.0, input_hw=(96, 128), variant="image", resize="focal"
    )
    fitted = training_record(camera, image_space, rng, resize_base="fit")
    assert fitted.scale == pytest.approx(250.0 / camera.focal("mean"), rel=1e-12)
    with pytest.raises(ValueError, match="resize_base"):
        training_record(camera, space, rng, resize_base="crop")
