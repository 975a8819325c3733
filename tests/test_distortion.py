"""Lens distortion: synthetic distorted scenes with known depth, rendered along distorted rays.

Truth: the synthetic ray caster renders the distorted image with one ray per distorted pixel
(``render_view(..., rays_xy=pixel_rays(...))``), so its depth is the exact z-depth of the
distorted photo; the rays themselves are checked against the distortion formulas written
out here (not OpenCV's). The pinhole twin is rendered with the pinhole camera directly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import PATH_RTOL
from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalSpace, inference_record
from metricdepth.data.synthetic import SynthConfig, render_view, sample_scene
from metricdepth.distortion import (
    Distortion,
    distort_rays,
    parse_distortion,
    pinhole_view,
    pixel_rays,
    to_original,
    undistort_image,
)
from metricdepth.geometry import depth_to_points
from metricdepth.measure import measure
from metricdepth.models.registry import DepthModel, load_model
from metricdepth.models.spec import ModelSpec
from metricdepth.pipeline import Prediction, predict

H, W = 96, 128
#: Strong lenses: barrel radial-tangential, rational, and a wide fisheye.
OPENCV = Distortion("opencv", (-0.32, 0.09, 0.001, -0.0015, -0.01))
RATIONAL = Distortion("opencv", (-0.25, 0.05, 0.0, 0.0, 0.0, 0.05, 0.0, 0.01))
FISHEYE = Distortion("fisheye", (0.02, -0.01, 0.003, -0.001))
LENSES = {"opencv": OPENCV, "rational": RATIONAL, "fisheye": FISHEYE}
#: Focal range (px at 128 wide) per lens: 50-70 degree (opencv) and 70-90 degree half-FOV.
FOCALS = {"opencv": (90.0, 150.0), "rational": (90.0, 150.0), "fisheye": (60.0, 110.0)}


def forward_model(xy: np.ndarray, lens: Distortion) -> np.ndarray:
    """Distorted normalised coordinates of rays ``(..., 2)``: OpenCV's formulas, written out."""
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    if lens.model == "fisheye":
        k1, k2, k3, k4 = lens.coeffs
        r = np.sqrt(r2)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + k1 * t2 + k2 * t2**2 + k3 * t2**3 + k4 * t2**4)
        scale = np.where(r > 0, theta_d / np.maximum(r, 1e-300), 1.0)
        return np.stack([x * scale, y * scale], -1)
    c = list(lens.coeffs) + [0.0] * (8 - len(lens.coeffs))
    k1, k2, p1, p2, k3, k4, k5, k6 = c
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], -1)


def scene(name: str, seed: int):
    """``(camera, lens, rays, distorted image, distorted depth)`` of synthetic scene ``seed``."""
    config = SynthConfig(
        height=H, width=W, sizes=((H, W),), focal_range=FOCALS[name], aspect_jitter=0.0,
        principal_jitter=0.02,
    )  # fmt: skip
    scene_dict, camera = sample_scene(seed, config)
    lens = LENSES[name]
    xy, valid = pixel_rays(camera, lens)
    assert valid.all()
    image, depth = render_view(scene_dict, camera, rays_xy=xy)
    return scene_dict, camera, lens, xy, image, depth


def abs_rel(prediction: np.ndarray, truth: np.ndarray) -> float:
    mask = (prediction > 0) & (truth > 0)
    return float(np.mean(np.abs(prediction[mask] - truth[mask]) / truth[mask]))


# ------------------------------------------------------------------ the lens itself
@pytest.mark.parametrize("name", LENSES)
def test_rays_project_back_onto_their_pixels_by_the_written_out_formulas(name):
    camera = Camera(110.0, 112.0, 64.3, 47.1, W, H)
    lens = LENSES[name]
    xy, valid = pixel_rays(camera, lens)
    assert valid.all()
    distorted = forward_model(xy, lens)
    u = camera.fx * distorted[..., 0] + camera.cx
    v = camera.fy * distorted[..., 1] + camera.cy
    grid_u, grid_v = np.meshgrid(np.arange(W), np.arange(H))
    assert np.abs(u - grid_u).max() < 1e-6 and np.abs(v - grid_v).max() < 1e-6
    assert np.abs(distort_rays(xy, camera, lens) - np.stack([grid_u, grid_v], -1)).max() < 1e-6
    # a strong lens: corner rays are far from the pinhole rays of the same pixel
    pinhole_x = (W - 1 - camera.cx) / camera.fx
    assert abs(xy[0, -1, 0] - pinhole_x) > 0.05 * pinhole_x


def test_parse_distortion_and_its_errors():
    assert parse_distortion("-0.3, 0.1,0,0") == Distortion("opencv", (-0.3, 0.1, 0.0, 0.0))
    assert parse_distortion("1,2,3,4,5,6,7,8").names[-1] == "k6"
    assert parse_distortion("0.1,0,0,0", "fisheye").model == "fisheye"
    for text, problem in (
        ("-0.3,0.1,0", "4 or 5 or 8 coefficients"),
        ("-0.3,nan,0,0", "finite"),
        ("-0.3,x,0,0", "comma-separated numbers"),
        ("", "comma-separated numbers"),
    ):
        with pytest.raises(ValueError, match=problem):
            parse_distortion(text)
    with pytest.raises(ValueError, match="--fisheye.*takes 4"):
        parse_distortion("0.1,0,0,0,0", "fisheye")
    with pytest.raises(ValueError, match="model"):
        Distortion("kb", (0, 0, 0, 0))
    assert Distortion.from_dict(FISHEYE.to_dict()) == FISHEYE
    camera = Camera(100.0, 100.0, 63.5, 47.5, W, H)
    for lens in (Distortion("opencv", (5, 5, 0, 0)), Distortion("opencv", (1e6, 0, 0, 0))):
        with pytest.raises(ValueError, match="keeps only"):  # garbage coefficients
            pinhole_view(camera, lens)
    with pytest.raises(ValueError, match="alpha"):
        pinhole_view(camera, OPENCV, alpha=1.5)


# ------------------------------------------------------------------ the pipeline, model-free
@pytest.mark.parametrize("name", LENSES)
def test_pinhole_view_and_back_reproduce_the_true_depth(name):
    """(1) Undistorting the true distorted depth gives the pinhole render; mapping the pinhole
    render back gives the distorted render (median relative error < 1 %, no border)."""
    scene_dict, camera, lens, _, image, depth = scene(name, 3)
    view = pinhole_view(camera, lens)
    assert view.coverage > 0.9 and view.fill > 0.85
    pinhole_image, pinhole_depth = render_view(scene_dict, view.pinhole)
    # forwards: the pipeline's resampling of the distorted depth onto the pinhole grid
    resampled = cv2.remap(depth, view.source_xy[..., 0], view.source_xy[..., 1], cv2.INTER_NEAREST)
    inner = np.zeros((H, W), bool)
    inner[3:-3, 3:-3] = True
    mask = inner & (resampled > 0) & (pinhole_depth > 0) & (view.source_xy[..., 0] >= 0)
    error = np.abs(resampled[mask] - pinhole_depth[mask]) / pinhole_depth[mask]
    assert mask.mean() > 0.5 and np.median(error) < 0.01
    # backwards: the pinhole truth mapped onto the original grid
    back, valid = to_original(pinhole_depth, view)
    mask = inner & valid & (depth > 0)
    error = np.abs(back[mask] - depth[mask]) / depth[mask]
    assert mask.sum() > 0.8 * (inner & (depth > 0)).sum()
    assert np.median(error) < 0.01 and np.mean(error < 0.01) > 0.9
    # ignoring the lens is far worse: the same pinhole depth on the same pixel index
    naive = pinhole_depth[mask]
    assert np.median(np.abs(naive - depth[mask]) / depth[mask]) > 3 * np.median(error)
    # the image is resampled the same way (an image of the rays: compare the pixel colours)
    pinhole_from_photo = undistort_image(image, view, (124, 116, 104))
    close = np.abs(pinhole_from_photo.astype(int) - pinhole_image.astype(int)).max(-1) < 40
    assert close[mask_inside(view)].mean() > 0.8


def test_to_original_never_marks_a_non_finite_value_valid():
    """NaN or inf on the pinhole grid: the original pixels that would blend it are either
    valid with a finite value (the blend of their finite neighbours) or invalid with 0."""
    camera = Camera(110.0, 110.0, (W - 1) / 2, (H - 1) / 2, W, H)
    view = pinhole_view(camera, OPENCV)
    depth = np.full((H, W), 3.0, np.float32)
    depth[40:44, 60] = np.nan
    depth[50, 30:33] = np.inf
    depth[20, 20] = -np.inf
    bad = ~np.isfinite(depth)
    x, y = view.target_xy[..., 0], view.target_xy[..., 1]
    with np.errstate(invalid="ignore"):
        x0, y0 = np.floor(x), np.floor(y)
    # original pixels with a non-finite value among the four they blend
    touched = np.zeros((H, W), bool)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            ok = np.isfinite(xi) & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
            touched[ok] |= bad[yi[ok].astype(int), xi[ok].astype(int)]
    assert touched.sum() > 20
    every = np.ones((H, W), bool)  # a caller's mask that calls the NaN and inf pixels valid
    for given in (None, every):
        back, valid = to_original(depth, view, given)
        assert np.isfinite(back).all()
        assert (back[~valid] == 0).all()
        np.testing.assert_allclose(back[valid], 3.0, rtol=1e-6)
        # the renormalised blend keeps most of the touched pixels, with finite values
        assert 0 < (touched & valid).sum() < touched.sum()
    # a normal map with NaN in one channel of one pixel
    normal = np.zeros((H, W, 3), np.float32)
    normal[..., 2] = -1.0
    normal[40:44, 60, 1] = np.nan
    back, valid = to_original(normal, view)
    assert np.isfinite(back).all() and (back[~valid] == 0).all()
    expected = np.broadcast_to(np.float32([0.0, 0.0, -1.0]), back[valid].shape)
    np.testing.assert_allclose(back[valid], expected, atol=1e-6)
    assert (touched & valid).any()


def mask_inside(view) -> np.ndarray:
    inside = view.source_xy[..., 0] >= 0
    inside[:3], inside[-3:], inside[:, :3], inside[:, -3:] = False, False, False, False
    return inside


class ConstantNet(nn.Module):
    """Canonical depth 2, a fixed normal and a confidence ramp, whatever the image."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        normal = torch.tensor([0.0, -0.6, -0.8]).view(1, 3, 1, 1).expand(n, 3, h, w)
        confidence = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return {"depth_c": torch.full((n, 1, h, w), 2.0) + self.bias, "normal": normal,
                "confidence": confidence}  # fmt: skip


def test_predict_runs_on_the_pinhole_camera_and_records_both_cameras():
    spec = ModelSpec(
        name="constant", arch="constant", space=CanonicalSpace(focal_px=100.0, input_hw=(64, 96)),
        outputs=("normal", "confidence"),
    )  # fmt: skip
    model = DepthModel(spec, ConstantNet()).eval()
    camera = Camera(100.0, 100.0, 63.5, 47.5, W, H)
    image = np.full((H, W, 3), 90, np.uint8)
    prediction = predict(model, image, camera, distortion=OPENCV)
    lens = prediction.lens
    assert prediction.camera == camera and prediction.distortion == OPENCV
    assert prediction.depth_m.shape == (H, W) and prediction.normal.shape == (H, W, 3)
    record = inference_record(lens.pinhole, spec.space, "mean")
    assert prediction.record == record  # the network saw the pinhole camera
    valid = prediction.depth_m > 0
    assert abs(valid.mean() - lens.coverage) < 0.02 and valid.mean() > 0.9
    assert np.allclose(prediction.depth_m[valid], 2.0 * record.metric_scale, rtol=1e-5)
    assert np.allclose(prediction.normal[valid], [0.0, -0.6, -0.8], atol=1e-5)
    assert (prediction.normal[~valid] == 0).all()
    # the confidence ramp runs along the pinhole x axis: sampled there, not at the same index
    target_u = lens.target_xy[..., 0]
    ramp = prediction.confidence[valid]
    assert np.corrcoef(ramp, target_u[valid])[0, 1] > 0.99
    summary = prediction.summary()
    assert summary["camera"] == camera.to_dict()
    assert summary["lens"]["distortion"] == OPENCV.to_dict()
    assert summary["lens"]["pinhole_camera"] == lens.pinhole.to_dict()
    assert summary["lens"]["alpha"] == 0.5
    # without a lens nothing changes
    plain = predict(model, image, camera)
    assert plain.lens is None and "lens" not in plain.summary() and (plain.depth_m > 0).all()


class PaddingMarker(nn.Module):
    """Canonical depth 2 where the canvas shows the photo's grey, 500 where it shows the
    model's padding colour (what the pinhole image holds outside the photo)."""

    def __init__(self, pad_normalised: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("pad", pad_normalised.view(1, 3, 1, 1))

    def forward(self, x):
        padding = ((x - self.pad).abs().sum(1, keepdim=True) < 1e-3).float()
        return {"depth_c": (2.0 + 498.0 * padding) * self.scale}


def test_the_padding_around_the_photo_never_leaks_into_its_rim():
    """Along the rim of a strongly distorted photo, original pixels sample the pinhole image
    next to its padding: they take only the pinhole pixels that see the photo."""
    from metricdepth.canonical import normalize

    space = CanonicalSpace(focal_px=100.0, input_hw=(96, 128))
    pad = normalize(np.array([[space.pad_rgb]], np.uint8), space)[0, :, 0, 0]
    model = DepthModel(ModelSpec(name="marker", arch="marker", space=space), PaddingMarker(pad))
    camera = Camera(100.0, 100.0, 63.5, 47.5, W, H)
    image = np.full((H, W, 3), 90, np.uint8)
    for lens in (OPENCV, FISHEYE):
        prediction = predict(model.eval(), image, camera, distortion=lens, alpha=1.0)
        record = prediction.record
        valid = prediction.depth_m > 0
        assert valid.mean() > 0.9 and prediction.lens.fill < 0.99  # there is padding to leak
        np.testing.assert_allclose(prediction.depth_m[valid], 2.0 * record.metric_scale, rtol=1e-5)


# ------------------------------------------------------------------ points and measurements
@pytest.mark.parametrize("name", ["opencv", "fisheye"])
def test_points_of_the_mapped_back_depth_are_the_true_points(name):
    """(3) Back-projected points of the mapped-back depth equal the true 3-D points."""
    scene_dict, camera, lens, xy, _, depth = scene(name, 5)
    view = pinhole_view(camera, lens)
    _, pinhole_depth = render_view(scene_dict, view.pinhole)
    back, valid = to_original(pinhole_depth, view)
    record = inference_record(view.pinhole, CanonicalSpace(), "mean")
    prediction = Prediction(np.where(valid, back, 0), camera, "given", record, "oracle", lens=view)
    truth = np.concatenate([xy, np.ones_like(xy[..., :1])], -1) * depth[..., None]
    mask = valid & (depth > 0)
    mask[:3], mask[-3:], mask[:, :3], mask[:, -3:] = False, False, False, False
    points = prediction.points()
    error = np.linalg.norm(points - truth, axis=-1)[mask] / np.linalg.norm(truth, axis=-1)[mask]
    assert np.median(error) < 0.01
    pinhole_points = depth_to_points(prediction.depth_m, camera)  # the lens ignored
    naive = np.linalg.norm(pinhole_points - truth, axis=-1)[mask] / depth[mask]
    assert np.median(naive) > 5 * np.median(error)
    # a measurement across the image uses the rays too
    rows, cols = np.nonzero(mask)
    first, last = np.argmin(cols + rows), np.argmax(cols - rows)
    p1, p2 = (int(cols[first]), int(rows[first])), (int(cols[last]), int(rows[last]))
    result = measure(prediction, p1, p2, window=0)
    true_distance = math.dist(truth[p1[1], p1[0]], truth[p2[1], p2[0]])
    assert result.distance_m == pytest.approx(true_distance, rel=0.01)
    assert result.point1_m == pytest.approx(tuple(points[p1[1], p1[0]]), rel=1e-5)


# ------------------------------------------------------------------ the default model
@pytest.mark.parametrize("name", ["opencv", "fisheye"])
def test_default_model_is_better_with_the_lens_given_than_ignored(name, capsys):
    """(2) metricdepth-small on strongly distorted scenes: the lens given beats it ignored."""
    model = load_model("metricdepth-small")
    given, ignored = [], []
    for seed in range(4):
        _, camera, lens, _, image, depth = scene(name, seed)
        given.append(abs_rel(predict(model, image, camera, distortion=lens).depth_m, depth))
        ignored.append(abs_rel(predict(model, image, camera).depth_m, depth))
    with capsys.disabled():
        print(f"\n{name}: AbsRel lens given {np.mean(given):.3f}, ignored {np.mean(ignored):.3f}")
    assert np.mean(given) < 0.85 * np.mean(ignored)


# ------------------------------------------------------------------ the command line
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metricdepth", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_predict_and_measure_with_a_lens(tmp_path):
    _, camera, lens, _, image, _ = scene("opencv", 2)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    intrinsics = ",".join(str(v) for v in camera.intrinsics)
    coeffs = ",".join(repr(c) for c in lens.coeffs)
    out = tmp_path / "out"
    args = ["predict", str(path), "--intrinsics", intrinsics, "--distortion", coeffs]
    result = run(*args, "--out", str(out), "--save", "ply", "--workers", "1")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "photo.json").read_text())
    assert record["camera"] == camera.to_dict() and record["camera_source"] == "given"
    assert record["lens"]["distortion"]["coeffs"] == list(lens.coeffs)
    assert record["lens"]["pinhole_camera"]["fx"] < camera.fx  # barrel: a wider pinhole
    depth = np.load(out / "photo.depth.npy")
    expected = predict(load_model("metricdepth-small"), image, camera, distortion=lens)
    # The batch path is the API's, but the CLI runs torch on one thread per usable CPU less
    # the worker, this process on torch's default: float32 sums in another order (9.2e-7 at
    # most on an Intel Sapphire Rapids), so PATH_RTOL (1e-5, 10 um at 1 m); invalid pixels
    # are the lens geometry's, the same in both.
    valid = expected.depth_m > 0
    assert np.array_equal(depth > 0, valid)
    np.testing.assert_allclose(depth, expected.depth_m, rtol=PATH_RTOL, atol=0)
    data = (out / "photo.ply").read_bytes()  # the point cloud follows the distorted rays
    body = data[data.index(b"end_header\n") + len(b"end_header\n") :]
    vertex = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    cloud = np.frombuffer(body, vertex)["xyz"]
    points = expected.points()[valid]  # each point is its depth times a fixed ray: same rtol
    np.testing.assert_allclose(cloud, points, rtol=PATH_RTOL, atol=1e-7 * np.abs(points).max())
    measured = run("measure", str(path), "--intrinsics", intrinsics, "--distortion", coeffs,
                   "--points", "10,10,100,80", "--window", "0")  # fmt: skip
    assert measured.returncode == 0, measured.stderr
    distance = float(measured.stdout.split("->")[1].split(":")[1].split("m")[0])
    p = expected.points()
    assert distance == pytest.approx(math.dist(p[10, 10], p[80, 100]), abs=1e-3)


@pytest.mark.parametrize(
    "option, problem",
    [
        (["--distortion", "-0.3,0.1"], "--distortion"),
        (["--distortion", "-0.3,nan,0,0"], "finite"),
        (["--distortion", "a,b,c,d"], "comma-separated numbers"),
        (["--fisheye", "0.1,0,0"], "--fisheye"),
        (["--distortion", "0,0,0,0", "--fisheye", "0,0,0,0"], "not both"),
    ],
)
def test_cli_bad_distortion_is_one_error_line(tmp_path, option, problem):
    from typer.testing import CliRunner

    from metricdepth.cli import app

    for command in ("predict", "measure"):  # in-process: a subprocess each costs seconds
        args = [command, "--out", str(tmp_path / "out")] if command == "predict" else [
            command, str(tmp_path / "none.png"), "--points", "0,0,1,1"
        ]  # fmt: skip
        result = CliRunner().invoke(app, [*args, *option])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0]
    assert not (tmp_path / "out").exists()
