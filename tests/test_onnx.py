"""ONNX export of the whole prediction and the ONNX Runtime backend.

(a) The in-graph fit-resize + pad equals OpenCV's uint8 canvas (``to_canonical``) bit for bit.
(b) Exported graphs run by ONNX Runtime agree with the PyTorch ``predict`` within 1e-4
    relative: the default model on images of several shapes (dynamic height and width), and
    ViT-small / ConvNeXt-tiny with the parity fixtures' synthetic weights on one fixture image
    each (also checked against the official code's ``depth_final``).
(c) The CLI: ``metricdepth export`` + ``predict --backend onnxruntime`` write the files of the
    PyTorch path; bad arguments give one error line and write nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from conftest import PARITY, PARITY_IMAGES, PATH_RTOL, needs_parity
from metricdepth.camera import Camera
from metricdepth.canonical import (
    GRAPH_RECORD,
    CanonicalSpace,
    inference_record,
    record_from_graph,
    to_canonical,
)
from metricdepth.cli import app
from metricdepth.export import _opencv_linear_canvas, export_onnx
from metricdepth.frame import Frame
from metricdepth.models.registry import MODELS, build_model, load_model
from metricdepth.pipeline import predict
from metricdepth.runtime import load_onnx

RTOL = 1e-4


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metricdepth", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def parity_image(key: str) -> tuple[np.ndarray, Camera]:
    name, intrinsics = PARITY_IMAGES[key]
    rgb = cv2.imread(str(PARITY / name))[:, :, ::-1].copy()
    return rgb, Camera.from_intrinsics(intrinsics, rgb.shape[1], rgb.shape[0])


def textured(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (so resizing matters) with some sharp edges."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    image[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 90)
    return image


def assert_relative(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    """Elementwise |a - e| <= rtol |e| (depth is positive), and the same shape."""
    assert actual.shape == expected.shape
    assert np.all(expected > 0)
    worst = float(np.max(np.abs(actual - expected) / expected))
    assert worst <= rtol, f"max relative difference {worst:.3g} > {rtol:g}"


def assert_scaled(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    """max |a - e| <= rtol * max |e|: for maps that cross zero (confidence, normals)."""
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= rtol * np.max(np.abs(expected))


# ----------------------------------------------------------------- (a) the in-graph canvas
@pytest.mark.parametrize(
    ("hw", "canvas_hw"),
    [
        ((375, 1242), (616, 1064)),  # KITTI: down-scale, top/bottom padding
        ((1200, 800), (544, 1216)),  # portrait: down-scale, wide left/right padding
        ((37, 51), (96, 128)),  # up-scale
        ((192, 256), (96, 128)),  # exact 2x reduction (OpenCV switches to INTER_AREA)
        ((96, 128), (96, 128)),  # identity
    ],
)
def test_in_graph_canvas_equals_opencv(hw, canvas_hw):
    image = textured(*hw, seed=sum(hw))
    camera = Camera.from_fov(60.0, hw[1], hw[0])
    space = CanonicalSpace(input_hw=canvas_hw)
    record = inference_record(camera, space)
    expected = to_canonical(Frame(image, camera), record, pad_rgb=space.pad_rgb).image
    got = _opencv_linear_canvas(
        torch.from_numpy(image),
        torch.tensor(record.resized_hw),
        torch.tensor(record.offset),
        canvas_hw,
        torch.tensor(space.pad_rgb, dtype=torch.int32),
    )
    np.testing.assert_array_equal(got.numpy().astype(np.uint8), expected)


# ----------------------------------------------------------------- (b) graph vs PyTorch
@pytest.fixture(scope="module")
def default_model():
    return load_model()


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory, default_model):
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    return load_onnx(export_onnx(default_model, path), threads=2)


@pytest.mark.parametrize(
    ("hw", "intrinsics"),
    [
        ((480, 640), (518.8579, 519.46961, 325.58245, 253.73617)),
        ((375, 1242), (707.0493, 707.0493, 604.0814, 180.5066)),
        ((301, 199), (240.0, 250.0, 99.0, 150.0)),  # portrait, odd sizes, fx != fy
        ((96, 128), (100.0, 100.0, 64.0, 48.0)),  # the canvas itself
    ],
)
def test_default_model_graph_matches_pytorch(default_model, default_onnx, hw, intrinsics):
    image = textured(*hw, seed=hw[0])
    camera = Camera.from_intrinsics(intrinsics, hw[1], hw[0])
    expected = predict(default_model, image, camera)
    got = default_onnx.predict(image, camera)
    assert got.record == expected.record and got.model == "metricdepth-small"
    assert_relative(got.depth_m, expected.depth_m)
    assert 0 < got.depth_m.min() and got.depth_m.max() <= 80.0
    assert np.std(got.depth_m) > 1e-3  # not a constant map


@pytest.mark.parametrize(
    ("hw", "focal_mode"), [((480, 640), "mean"), ((375, 1242), "fx"), ((301, 199), "mean")]
)
def test_the_onnx_backend_reports_the_record_the_graph_used(default_onnx, hw, focal_mode):
    """The graph's ``canonical`` output is the geometry ``inference_record`` computes (the
    same ``canonical`` functions, in-graph), and the prediction's record is read from it."""
    from metricdepth.predictor import Predictor, collate, split

    image = textured(*hw, seed=hw[1])
    camera = Camera.from_intrinsics((240.0, 250.5, hw[1] / 2, hw[0] / 2), hw[1], hw[0])
    expected = inference_record(camera, default_onnx.spec.space, focal_mode)
    numbers = default_onnx.run(image, camera, focal_mode)["canonical"]
    scale, h, w, top, left, metric = numbers.tolist()
    assert scale == expected.scale  # float64 arithmetic of the same expression, bit-equal
    assert (h, w, top, left) == (*expected.resized_hw, *expected.offset)
    assert metric == pytest.approx(expected.metric_scale, rel=1e-7)  # float32 focal input
    predictor = Predictor(default_onnx, focal_mode)
    prepared = predictor.prepare(image, camera)
    batch = collate([prepared])
    assert set(batch) == {"image", "camera"} and batch["image"].shape == (1, *hw, 3)
    (row,) = split(predictor.forward(batch))
    assert predictor.finish(row, prepared).record == expected
    # finish reads the graph's numbers: other numbers give another record (or are refused)
    moved = numbers.copy()
    moved[3] += 1  # one row lower on the canvas
    tampered = predictor.finish({**row, "canonical": torch.from_numpy(moved)}, prepared)
    assert tampered.record.offset == (expected.offset[0] + 1, expected.offset[1])
    assert tampered.record == record_from_graph(moved, expected) != expected
    wrong = numbers.copy()
    wrong[5] *= 2
    with pytest.raises(ValueError, match="metric scale"):
        predictor.finish({**row, "canonical": torch.from_numpy(wrong)}, prepared)


def test_a_camera_for_another_image_size_is_refused_as_by_torch(default_model, default_onnx):
    image = textured(120, 160, seed=4)
    camera = Camera.from_intrinsics([100.0, 100.0, 160.0, 120.0], 320, 240)
    with pytest.raises(ValueError, match="is 160x120 but its camera is for 320x240"):
        default_onnx.predict(image, camera)
    with pytest.raises(ValueError, match="160x120 but its camera is for 320x240"):
        predict(default_model, image, camera)


def test_onnx_model_warns_for_a_camera_other_than_the_assumed_one(default_onnx):
    """As the torch path: an ONNX model of one assumed camera warns for another focal."""
    import copy

    from metricdepth.pipeline import CameraMismatchWarning

    assumed = copy.copy(default_onnx)
    assumed.spec = replace(default_onnx.spec, assumed_focal_px=300.0)
    image = textured(120, 160, seed=5)
    with pytest.warns(CameraMismatchWarning, match="assumed focal of 300 px") as caught:
        predict(assumed, image, 150.0)
    assert [w.filename for w in caught] == [__file__]


def test_focal_is_a_runtime_input(default_onnx):
    """Twice the focal length is twice the depth (below the clamp): de-canonicalised in-graph."""
    image = textured(120, 160, seed=3)
    camera = Camera.from_fov(60, 160, 120)
    one = default_onnx.run(image, camera, "mean")["depth"]
    two = default_onnx.run(image, replace(camera, fx=2 * camera.fx, fy=2 * camera.fy), "mean")
    below = 2 * one < 80.0
    assert below.mean() > 0.9
    np.testing.assert_allclose(two["depth"][below], 2 * one[below], rtol=1e-6)


def test_onnx_runtime_threads_leave_the_loader_workers_their_cores(default_onnx, monkeypatch):
    """``predict --backend onnxruntime --workers N``: the session's intra-op threads are the
    usable cores less N (at least 1), as torch's threads in ``run_batch``."""
    from metricdepth import cli, runtime

    monkeypatch.setattr(runtime, "default_threads", lambda: 4)
    for workers, threads in ((0, 4), (1, 3), (3, 1), (8, 1)):
        net = cli.load_predictor(str(default_onnx.path), None, "cpu", "onnxruntime", None, workers)
        assert net.session.get_session_options().intra_op_num_threads == threads


def test_exported_file_describes_itself(default_onnx):
    proto = onnx.load(str(default_onnx.path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["metricdepth.model"] == "metricdepth-small"
    assert float(meta["metricdepth.canonical_focal_px"]) == 250.0
    assert json.loads(meta["metricdepth.input_hw"]) == [96, 128]
    assert meta["metricdepth.focal_mode"] == "mean"
    assert meta["metricdepth.version"] == "0.1.0"
    assert default_onnx.spec == load_model().spec
    inputs = {i.name: i for i in proto.graph.input}
    dims = inputs["image"].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][2] == 3
    assert all(d.dim_param for d in dims[:2])  # dynamic height and width
    assert inputs["image"].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in proto.graph.output] == ["depth", "canonical"]
    record = {o.name: o for o in proto.graph.output}["canonical"].type.tensor_type
    assert record.elem_type == onnx.TensorProto.DOUBLE
    assert [d.dim_value for d in record.shape.dim] == [len(GRAPH_RECORD)]


def test_intrinsics_input_and_float_image(tmp_path, default_model, default_onnx):
    path = export_onnx(
        default_model, tmp_path / "k.onnx", camera_input="intrinsics", image_dtype="float32"
    )
    graph = load_onnx(path, threads=2)
    image = textured(200, 150, seed=5)
    camera = Camera.from_intrinsics((180.0, 200.0, 70.0, 99.0), 150, 200)
    feed = {"image": image.astype(np.float32), "intrinsics": np.float32([180, 200, 70, 99])}
    (depth,) = graph.session.run(["depth"], feed)
    (expected,) = default_onnx.session.run(
        ["depth"], {"image": image, "focal_px": np.float32([camera.focal("mean")])}
    )
    # two graphs (a float image and intrinsics in, or uint8 and a focal): ONNX Runtime may
    # fuse and lay out each one differently, float32 sums in another order (conftest.PATH_RTOL)
    np.testing.assert_allclose(depth, expected, rtol=PATH_RTOL)
    # the ``fx`` focal mode of the caller is honoured through the intrinsics input too
    fx = graph.predict(image, camera, focal_mode="fx")
    assert_relative(fx.depth_m, predict(default_model, image, camera, focal_mode="fx").depth_m)


def _fixture_model(key: str, weights):
    name = {"vit_small": "metric3d-vit-small", "convnext_tiny": "metric3d-convnext-tiny"}[key]
    model = build_model(MODELS[name][0])
    model.net.load_state_dict(weights, strict=True)
    return model


@pytest.fixture(scope="module")
def vit_pair(tmp_path_factory, vit_small_weights):
    model = _fixture_model("vit_small", vit_small_weights)
    path = export_onnx(model, tmp_path_factory.mktemp("vit") / "vit.onnx")
    return model, load_onnx(path, threads=2)


@pytest.fixture(scope="module")
def convnext_pair(tmp_path_factory, convnext_tiny_weights):
    model = _fixture_model("convnext_tiny", convnext_tiny_weights)
    path = export_onnx(model, tmp_path_factory.mktemp("convnext") / "convnext.onnx")
    return model, load_onnx(path, threads=2)


@needs_parity
@pytest.mark.parametrize(("key", "image_id"), [("vit_small", "nyu"), ("convnext_tiny", "wild")])
def test_parity_models_graph_matches_pytorch_and_the_official_code(request, key, image_id):
    model, graph = request.getfixturevalue("vit_pair" if key == "vit_small" else "convnext_pair")
    rgb, camera = parity_image(image_id)
    expected = predict(model, rgb, camera, focal_mode="fx")  # the hub demo uses fx
    got = graph.predict(rgb, camera, focal_mode="fx")
    assert_relative(got.depth_m, expected.depth_m)
    # The ViT's raw confidence and normals come out of 4 GRU iterations of tanh/sigmoid, which
    # ONNX Runtime evaluates with ~10x the float32 error of torch (2.7e-7 vs 3e-8 for tanh);
    # measured: 1.1e-4 of the largest |value|, so these two are held to 3e-4 of it.
    assert_scaled(got.confidence, expected.confidence, rtol=3e-4)
    if key == "vit_small":
        assert_scaled(got.normal, expected.normal, rtol=3e-4)
        np.testing.assert_allclose(np.linalg.norm(got.normal, axis=-1), 1.0, atol=1e-5)
    else:
        assert got.normal is None
    official = np.load(PARITY / f"{key}__{image_id}.npz")["depth_final"]
    np.testing.assert_allclose(got.depth_m, official, atol=2e-3, rtol=0)  # README threshold


# ----------------------------------------------------------------- (c) the command line
def test_cli_export_then_onnxruntime_predict_writes_the_pytorch_outputs(tmp_path):
    onnx_file = tmp_path / "small.onnx"
    result = run_cli("export", "--out", str(onnx_file))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and onnx_file.is_file()
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), textured(150, 220, seed=9)[:, :, ::-1])
    outs = {}
    for backend, model in (("torch", "metricdepth-small"), ("onnxruntime", str(onnx_file))):
        out = tmp_path / backend
        args = ["predict", str(image), "--model", model, "--backend", backend, "--out", str(out)]
        result = run_cli(*args, "--focal", "180")
        assert result.returncode == 0, result.stderr
        outs[backend] = out
    for stem in ("photo",):
        torch_json = json.loads((outs["torch"] / f"{stem}.json").read_text())
        onnx_json = json.loads((outs["onnxruntime"] / f"{stem}.json").read_text())
        assert onnx_json["camera_source"] == "given"
        for key in ("model", "camera", "camera_source", "canonical", "files", "save"):
            assert onnx_json[key] == torch_json[key]
        assert_relative(
            np.load(outs["onnxruntime"] / f"{stem}.depth.npy"),
            np.load(outs["torch"] / f"{stem}.depth.npy"),
        )
    # the graph is pinhole: a lens model is refused in one line, and nothing is written
    lens_out = tmp_path / "lens"
    result = run_cli(
        "predict", str(image), "--model", str(onnx_file), "--out", str(lens_out),
        "--distortion", "-0.2,0.05,0,0",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --distortion and --fisheye need the torch backend (ONNX graphs are pinhole)"
    ]
    assert not lens_out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "nosuch", "--out", "x.onnx"], "error: no model or file named 'nosuch'"),
        (
            ["export", "metric3d-vit-small", "--out", "x.onnx"],
            "error: metric3d-vit-small needs its checkpoint: pass --weights FILE",
        ),
        (["export", "--out", "missing/x.onnx"], "does not exist or is not writable"),
        (["export", "--out", "x.txt"], "error: --out must end in .onnx, got x.txt"),
        (["export", "--out", "x.onnx", "--format", "tflite"], "error: --format must be onnx"),
        (["export"], "error: --out FILE.onnx is required"),
        (["predict", "--model", "bad.onnx"], "error: bad.onnx: not a loadable ONNX model"),
        (
            ["predict", "--model", "bad.onnx", "--backend", "torch"],
            "error: bad.onnx is an ONNX file: run it with --backend onnxruntime",
        ),
        (["predict", "--backend", "tensorrt"], "error: --backend must be one of torch"),
        (["predict", "--precision", "fp8"], "error: --precision must be one of fp32, bf16"),
    ],
)
def test_bad_export_and_backend_arguments_are_one_line(tmp_path, monkeypatch, args, message):
    (tmp_path / "bad.onnx").write_text("not a model")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)  # in-process: these fail before any model runs
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]  # nothing written


def test_unwritable_export_target_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("export", "--out", str(blocker / "x.onnx"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --out {blocker / 'x.onnx'}: folder {blocker} does not exist or is not writable"
    ]


def test_an_onnx_file_not_from_metricdepth_is_refused(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    info = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [info("x", 1, [1])], [info("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="not a metricdepth export"):
        load_onnx(tmp_path / "plain.onnx")


def test_the_batch_runner_runs_an_onnx_model_with_loader_workers(tmp_path, default_onnx):
    """``run_batch`` with 2 DataLoader workers hands the ONNX model the decoded images: each
    image's depth is the model's own ``predict`` on it (to ``PATH_RTOL``), with its camera."""
    from conftest import PATH_RTOL
    from metricdepth.batch import run_batch
    from metricdepth.camera import Camera
    from metricdepth.data.inputs import collect_inputs
    from metricdepth.io import read_image

    (tmp_path / "in").mkdir()
    for k in range(3):
        cv2.imwrite(str(tmp_path / "in" / f"p{k}.png"), textured(120 + 10 * k, 160, k)[:, :, ::-1])
    items = collect_inputs([tmp_path / "in"])
    out = tmp_path / "out"
    summary = run_batch(default_onnx, items, out, {"depth"}, focal=150.0, workers=2,
                        progress=False)  # fmt: skip
    assert summary.done == 3 and not summary.failed
    for item in items:
        rgb, _ = read_image(item.image)
        height, width = rgb.shape[:2]
        camera = Camera(150.0, 150.0, (width - 1) / 2, (height - 1) / 2, width, height)
        alone = default_onnx.predict(rgb, camera, "given")
        record = json.loads((out / f"{item.stem}.json").read_text())
        assert record["camera"] == alone.summary()["camera"]
        assert record["model"] == default_onnx.spec.name
        written = np.load(out / f"{item.stem}.depth.npy")
        np.testing.assert_allclose(written, alone.depth_m, rtol=PATH_RTOL, atol=0)


def test_a_fixed_grid_makes_the_vit_position_embedding_a_constant():
    """``DinoVisionTransformer.fixed_grid`` (what the export uses instead of patching the
    encoder): within it the embedding of that grid is computed once, the same values; an
    exported program then has no bicubic resampling of ``pos_embed``; other grids and the
    time after it are as usual."""
    from metricdepth.models.vit import VIT_CONFIGS, DinoVisionTransformer

    torch.manual_seed(0)
    encoder = DinoVisionTransformer(VIT_CONFIGS["tiny"]).eval()
    with torch.no_grad():
        encoder.pos_embed.normal_()
    usual = encoder.interpolate_pos_encoding(4, 6).detach().clone()
    x = torch.randn(1, 3, 4 * 14, 6 * 14)

    def bicubic_nodes() -> int:
        program = torch.export.export(encoder, (x,))
        return sum("upsample_bicubic" in str(node.target) for node in program.graph.nodes)

    assert bicubic_nodes() == 1
    with encoder.fixed_grid(4, 6):
        assert torch.equal(encoder.interpolate_pos_encoding(4, 6), usual)
        assert bicubic_nodes() == 0
        with torch.no_grad():
            encoder.pos_embed.add_(1.0)  # a constant: computed on entry
        assert torch.equal(encoder.interpolate_pos_encoding(4, 6), usual)
        other = encoder.interpolate_pos_encoding(5, 6)  # another grid: resampled now
        assert other.shape[1] == 1 + 30 and torch.equal(other[:, :1], encoder.pos_embed[:, :1])
    assert not torch.equal(encoder.interpolate_pos_encoding(4, 6), usual)  # follows pos_embed
