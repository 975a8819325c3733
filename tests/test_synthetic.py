"""Tests for metricdepth.data.synthetic: the synthetic multi-camera scene renderer.

Depth is checked against an independent ray caster written here (face-by-face plane
intersections with its own rotation matrix built from the documented angle conventions), not
against the module's slab test.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from metricdepth.camera import Camera
from metricdepth.data.annotations import read_annotations
from metricdepth.data.synthetic import (
    PNG_DEPTH_CAP_M,
    SynthConfig,
    _render,
    render_scene,
    render_view,
    sample_scene,
    scene_seed,
    write_dataset,
)
from metricdepth.io import read_depth, read_image

#: The fixed physical box sizes (x, y, height) in metres, footprint possibly turned by 90 deg.
FIXED_SIZES = {(0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (0.8, 0.8, 0.8), (1.2, 0.6, 0.75), (0.4, 0.4, 2.4)}
SEEDS = [0, 2, 11, 22, 5, 17, 101, 202]  # 2, 11 and 22 see sky above the walls


# ------------------------------------------------------------------ an independent reference
def _rotation(pose: dict) -> np.ndarray:
    """Camera-to-world rotation from the documented conventions, as a product of rotations."""
    yaw, pitch, roll = (math.radians(pose[k]) for k in ("yaw_deg", "pitch_deg", "roll_deg"))
    rz = np.array(
        [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]
    )
    ry = np.array(  # about world +Y; a positive angle tips +X down
        [[math.cos(pitch), 0, math.sin(pitch)], [0, 1, 0], [-math.sin(pitch), 0, math.cos(pitch)]]
    )
    base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # right=-Y down=-Z fwd=+X
    rc = np.array(  # about the optical axis; right turns towards down
        [[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]]
    )
    return rz @ ry @ base @ rc


def _reference(scene: dict, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """``(depth (H, W) float64, 0 = nothing hit; kind (H, W): 0 sky, 1 floor, 2 wall, 3 box)``."""
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(float)
    rays_cam = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)])
    rays = np.einsum("ij,jhw->ihw", _rotation(scene["pose"]), rays_cam)
    origin = np.array(scene["pose"]["position_m"])
    (x0, y0), (x1, y1) = scene["room"]["min_m"], scene["room"]["max_m"]
    top = scene["room"]["wall_height_m"]
    faces = [(2, 0.0, (x0, x1), (y0, y1), 1)]  # (normal axis, plane value, range a, range b, kind)
    faces += [(0, x, (y0, y1), (0.0, top), 2) for x in (x0, x1)]
    faces += [(1, y, (x0, x1), (0.0, top), 2) for y in (y0, y1)]
    for box in scene["boxes"]:
        low = np.array(box["min_m"])
        high = low + np.array(box["size_m"])
        for k in range(3):
            a, b = [axis for axis in range(3) if axis != k]
            for plane in (low[k], high[k]):
                faces.append((k, plane, (low[a], high[a]), (low[b], high[b]), 3))
    best = np.full(u.shape, np.inf)
    kind = np.zeros(u.shape, dtype=int)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, plane, (a0, a1), (b0, b1), what in faces:
            a, b = [axis for axis in range(3) if axis != k]
            t = (plane - origin[k]) / rays[k]
            pa, pb = origin[a] + t * rays[a], origin[b] + t * rays[b]
            hit = (t > 0) & (pa >= a0) & (pa <= a1) & (pb >= b0) & (pb <= b1) & (t < best)
            best[hit], kind[hit] = t[hit], what
    return np.where(np.isfinite(best), best, 0.0), kind


# ------------------------------------------------------------------ tests
def test_deterministic_and_regenerable_from_the_scene_dict():
    a, b = render_scene(7), render_scene(7)
    assert a.image.dtype == np.uint8 and a.image.shape == (96, 128, 3)
    assert a.depth_m.dtype == np.float32 and a.depth_m.shape == (96, 128)
    assert a.image.tobytes() == b.image.tobytes() and a.depth_m.tobytes() == b.depth_m.tobytes()
    assert a.scene == b.scene and a.camera == b.camera
    scene = json.loads(json.dumps(a.scene))  # JSON round trip is lossless
    assert scene == a.scene
    image, depth = render_view(scene, Camera(**scene["camera"]))
    assert image.tobytes() == a.image.tobytes() and depth.tobytes() == a.depth_m.tobytes()
    assert render_scene(8).image.tobytes() != a.image.tobytes()


@pytest.mark.parametrize("seed", SEEDS)
def test_depth_is_exact_z_depth_and_invalid_exactly_where_nothing_is_hit(seed):
    sample = render_scene(seed)
    depth_ref, kind = _reference(sample.scene, sample.camera)
    np.testing.assert_array_equal(sample.depth_m > 0, depth_ref > 0)
    valid = depth_ref > 0
    np.testing.assert_allclose(sample.depth_m[valid], depth_ref[valid], rtol=1e-6)
    # floor pixels back-project onto the floor plane (depth is z-depth, not ray length)
    cam = sample.camera
    v, u = np.nonzero(kind == 1)
    z = sample.depth_m[v, u].astype(float)
    points_cam = np.stack([(u - cam.cx) / cam.fx * z, (v - cam.cy) / cam.fy * z, z])
    world = (
        _rotation(sample.scene["pose"]) @ points_cam
        + np.array(sample.scene["pose"]["position_m"])[:, None]
    )
    assert np.abs(world[2]).max(initial=0.0) < 1e-5 * max(1.0, z.max(initial=0.0))


def test_sky_and_boxes_occur():
    kinds = [_reference(*sample_scene(seed))[1] for seed in SEEDS]
    assert sum((k == 0).sum() for k in kinds) > 100  # the invalid-mask check above is not vacuous
    assert all((k == 3).any() for k in kinds) and sum((k == 1).any() for k in kinds) >= 6


def test_boxes_have_fixed_physical_sizes_and_sit_in_the_room():
    for seed in range(300):
        scene, _ = sample_scene(seed)
        assert 1 <= len(scene["boxes"]) <= 10
        (x0, y0), (x1, y1) = scene["room"]["min_m"], scene["room"]["max_m"]
        for box in scene["boxes"]:
            sx, sy, sz = box["size_m"]
            assert (sx, sy, sz) in FIXED_SIZES or (sy, sx, sz) in FIXED_SIZES
            low = box["min_m"]
            assert low[2] == 0.0 and x0 < low[0] and low[0] + sx < x1
            assert y0 < low[1] and low[1] + sy < y1
            inside = low[0] <= 0 <= low[0] + sx and low[1] <= 0 <= low[1] + sy
            assert not inside  # the camera stands at x = y = 0


def test_focal_lengths_cover_the_log_range_and_cameras_vary():
    config = SynthConfig(sizes=((96, 128), (240, 320)))
    cameras = [sample_scene(seed, config)[1] for seed in range(1500)]
    fx = np.array([c.fx * 128 / c.width for c in cameras])  # back to the reference width
    lo, hi = config.focal_range
    assert fx.min() >= lo and fx.max() <= hi
    assert fx.min() < lo * 1.02 and fx.max() > hi / 1.02
    position = np.sort((np.log(fx) - math.log(lo)) / math.log(hi / lo))
    ks = np.abs(position - (np.arange(len(fx)) + 0.5) / len(fx)).max()  # vs uniform
    assert ks < 0.05
    aspect = np.array([c.fy / c.fx for c in cameras])
    assert np.abs(aspect - 1).max() <= 0.03 and aspect.std() > 0.01
    offset_x = np.array([(c.cx - (c.width - 1) / 2) / c.width for c in cameras])
    offset_y = np.array([(c.cy - (c.height - 1) / 2) / c.height for c in cameras])
    for offset in (offset_x, offset_y):
        assert np.abs(offset).max() <= 0.05 and offset.min() < -0.04 and offset.max() > 0.04
    widths = {c.width for c in cameras}
    assert widths == {128, 320}
    fixed = SynthConfig(focal_follows_size=False, sizes=((240, 320),))
    assert lo <= sample_scene(3, fixed)[1].fx <= hi


def test_pitch_aims_the_optical_axis_at_the_floor():
    for seed in range(50):
        scene, _ = sample_scene(seed)
        pose, aim = scene["pose"], scene["aim"]
        height = pose["position_m"][2]
        assert 1.0 <= height <= 2.0 and 1.5 <= aim["distance_m"] <= 40.0
        expected = math.degrees(math.atan2(height, aim["distance_m"])) + aim["pitch_jitter_deg"]
        assert pose["pitch_deg"] == pytest.approx(expected)
        forward = _rotation(pose)[:, 2]
        assert forward[2] == pytest.approx(-math.sin(math.radians(pose["pitch_deg"])))


def test_resolution_change_keeps_depth_at_corresponding_rays():
    scene, camera = sample_scene(3)
    _, depth = render_view(scene, camera)
    # triple size: pixel (3u + 1, 3v + 1) looks along exactly the ray of base pixel (u, v)
    _, depth3 = render_view(scene, camera.resized(3 * camera.width, 3 * camera.height))
    centre = depth3[1::3, 1::3]
    np.testing.assert_array_equal(centre > 0, depth > 0)
    np.testing.assert_allclose(centre, depth, rtol=1e-6)
    # double size, 2x2 block mean ~ base; half size ~ base 2x2 block mean (smooth regions)
    for small, big in [
        (depth, render_view(scene, camera.resized(2 * camera.width, 2 * camera.height))[1]),
        (render_view(scene, camera.resized(camera.width // 2, camera.height // 2))[1], depth),
    ]:
        blocks = big.reshape(small.shape[0], 2, small.shape[1], 2)
        low, high = blocks.min((1, 3)), blocks.max((1, 3))
        smooth = (low > 0) & (high < 1.02 * low)
        assert smooth.mean() > 0.6
        ratio = blocks.mean((1, 3))[smooth] / small[smooth]
        assert np.median(np.abs(ratio - 1)) < 1e-3 and np.abs(ratio - 1).max() < 0.02


def _far_floor_scene(yaw_deg: float) -> tuple[dict, Camera]:
    scene, _ = sample_scene(0)
    scene = copy.deepcopy(scene)
    scene["boxes"] = []
    scene["room"].update(min_m=[-600.0, -600.0], max_m=[600.0, 600.0])
    scene["pose"].update(position_m=[0.0, 0.0, 1.5], yaw_deg=yaw_deg, pitch_deg=8.0, roll_deg=0.0)
    scene["noise"]["sigma_dn"] = 0.0
    return scene, Camera(150.0, 150.0, 63.5, 47.5, 128, 96)


@pytest.mark.parametrize("yaw_deg", [0.0, 37.0])
def test_far_checker_fades_to_its_mean_colour(yaw_deg):
    scene, camera = _far_floor_scene(yaw_deg)
    light, (c0, c1) = scene["light"], np.array(scene["floor"]["colors"])
    shade = 255 * (light["ambient"] + light["sun"] * max(light["sun_dir"][2], 0.0))
    mean, half = shade * (c0 + c1) / 2, shade * np.abs(c0 - c1) / 2
    deviation = {}
    for texture_filter in ("box", "tent", "point"):
        image, depth, surface = _render(scene, camera, texture_filter=texture_filter)
        far = (surface == 1) & (depth > 25.0)
        near = (surface == 1) & (depth < 4.0)
        assert far.sum() > 300 and near.sum() > 300
        error = (image.astype(float) - mean) / half  # in units of the checker's half contrast
        deviation[texture_filter] = np.abs(error[far]).max()
        assert np.abs(error[far].mean(0)).max() < 0.1  # region mean ~ texture mean colour
        assert np.abs(error[near]).max() > 0.8  # near tiles keep their contrast
    assert deviation["box"] < 0.3 and deviation["tent"] < 0.1
    assert deviation["point"] > 0.9  # point sampling aliases: the test can tell


def test_texture_appearance_does_not_depend_on_the_sampling_grid():
    """Scale-leak check: 2x resolution, averaged over 2x2 blocks, looks like 1x resolution."""
    errors = {"box": [], "point": []}
    for seed in range(6):
        scene, camera = sample_scene(seed)
        big_camera = camera.resized(2 * camera.width, 2 * camera.height)
        _, depth_big = render_view(scene, big_camera)
        blocks = depth_big.reshape(camera.height, 2, camera.width, 2)
        smooth = (blocks.min((1, 3)) > 0) & (blocks.max((1, 3)) < 1.02 * blocks.min((1, 3)))
        for texture_filter, error in errors.items():
            small, _ = render_view(scene, camera, noise=False, texture_filter=texture_filter)
            big, _ = render_view(scene, big_camera, noise=False, texture_filter=texture_filter)
            pooled = big.reshape(camera.height, 2, camera.width, 2, 3).mean((1, 3))
            error.append(np.abs(small - pooled)[smooth].mean())
    assert np.mean(errors["box"]) < 2.0 and np.mean(errors["point"]) > 1.5 * np.mean(errors["box"])


def test_write_dataset_round_trips(tmp_path):
    path = write_dataset(tmp_path / "set", 3, seed=4)
    entries = read_annotations(path)
    assert [e.key for e in entries] == [f"rgb/{i:06d}" for i in range(3)]
    for index, entry in enumerate(entries):
        sample = render_scene(scene_seed(4, index))
        assert entry.depth_scale == 1000.0
        assert entry.intrinsics == tuple(sample.camera.intrinsics)
        assert entry.depth == tmp_path / "set" / "depth" / f"{index:06d}.png"
        np.testing.assert_array_equal(read_image(entry.rgb)[0], sample.image)
        depth = read_depth(entry.depth, entry.depth_scale)
        np.testing.assert_array_equal(depth > 0, sample.depth_m > 0)
        assert np.abs(depth - sample.depth_m).max() <= 0.001
    record = json.loads((tmp_path / "set" / "scenes.json").read_text())
    assert record["scenes"][1] == render_scene(scene_seed(4, 1)).scene


def test_write_dataset_stores_depth_beyond_the_png_cap_as_invalid(tmp_path):
    config = SynthConfig(distance_range=(45.0, 60.0), boxes_range=(0, 0), aim_jitter=0.0)
    path = write_dataset(tmp_path, 2, seed=1, config=config)
    far = 0
    for index, entry in enumerate(read_annotations(path)):
        rendered = render_scene(scene_seed(1, index), config).depth_m
        stored = read_depth(entry.depth, entry.depth_scale)
        beyond = rendered > PNG_DEPTH_CAP_M
        far += beyond.sum()
        assert np.all(stored[beyond] == 0)
        keep = (rendered > 0) & ~beyond
        assert np.abs(stored[keep] - rendered[keep]).max() <= 0.001
    assert far > 0


def test_config_and_filter_are_validated():
    with pytest.raises(ValueError):
        SynthConfig(focal_range=(500.0, 100.0))
    with pytest.raises(ValueError):
        SynthConfig(sizes=())
    scene, camera = sample_scene(0)
    with pytest.raises(ValueError):
        render_view(scene, camera, texture_filter="bilinear")
