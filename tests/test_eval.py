"""``run_eval``: model vs prediction folder, protocols checked by hand, alignment, missing files.

A tiny seeded convolutional network stands in for a depth model; annotation sets (images, 16-bit
depth PNGs, ``cam_in``) are written by the tests.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TINY_SPEC, TinyNet, tiny_model
from metricdepth.batch import run_batch
from metricdepth.data.inputs import collect_inputs
from metricdepth.evaluate.harness import eval_report, run_eval
from metricdepth.evaluate.metrics import METRIC_NAMES
from metricdepth.models import registry
from metricdepth.models.registry import save_model


def write_set(root: Path, count: int = 4, height: int = 24, width: int = 32) -> Path:
    """Images, 16-bit depth PNGs (mm) with a few holes, and an annotation JSON; its path."""
    rng = np.random.default_rng(2)
    files = []
    for k in range(count):
        rgb, depth = root / "rgb" / f"{k:03d}.png", root / "depth" / f"{k:03d}.png"
        rgb.parent.mkdir(parents=True, exist_ok=True)
        depth.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(rgb), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        metres = np.linspace(1.0, 3.0 + k, width)[None, :] * np.ones((height, 1))
        millimetres = np.round(metres * 1000).astype(np.uint16)
        millimetres[0, :5] = 0  # no measurement
        cv2.imwrite(str(depth), millimetres)
        files.append(
            {
                "rgb": f"rgb/{k:03d}.png",
                "depth": f"depth/{k:03d}.png",
                "depth_scale": 1000.0,
                "cam_in": [30.0 + k, 31.0 + k, width / 2, height / 2],
            }
        )
    path = root / "annotations.json"
    path.write_text(json.dumps({"files": files}))
    return path


def metrics_of(result: dict) -> dict:
    return {k: result[k] for k in ("n_images", "skipped", *METRIC_NAMES)}


def assert_metrics_close(got: dict, want: dict) -> None:
    """The metrics of predictions made on another execution path (see the caller)."""
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        if name == "protocol":
            continue
        if name.startswith("delta"):
            assert got[name] == pytest.approx(value, abs=1e-3), name
        else:
            assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_model_and_predictions_give_the_same_metrics(tmp_path, monkeypatch):
    annotations = write_set(tmp_path / "data")
    model = tiny_model()
    out = tmp_path / "pred"
    summary = run_batch(
        model, collect_inputs([annotations]), out, {"depth"}, workers=2, progress=False
    )
    assert summary.done == 4 and (out / "rgb" / "000.depth.npy").is_file()
    from_files = run_eval(annotations, predictions=out, align="median")
    from_model = run_eval(annotations, model=model, align="median")
    # The files come from a run with 2 loader workers (the network on fewer torch threads),
    # the model here runs on this process's: depth within PATH_RTOL (conftest),
    # so each mean metric (and the alignment scale) within 1e-4 of itself, and a delta may
    # count a pixel on its 1.25**k bound the other way (1 of 763 in one of 4 images: 3.3e-4).
    assert_metrics_close(metrics_of(from_files), metrics_of(from_model))
    assert from_files["aligned"]["protocol"] == from_model["aligned"]["protocol"]
    assert_metrics_close(from_files["aligned"], from_model["aligned"])
    assert from_files["n_images"] == 4 and 0 < from_files["abs_rel"] < 10
    # the same through a model file loaded by path (architecture registered for the test)
    monkeypatch.setitem(registry.ARCHITECTURES, "tiny_test", TinyNet)
    path = save_model(model.net, TINY_SPEC, tmp_path / "tiny.safetensors")
    from_path = run_eval(annotations, model=str(path), align="median")
    assert metrics_of(from_path) == metrics_of(from_model)  # the same code and threads: exactly
    assert from_path["source"] == {"model": "tiny-test", "model_argument": str(path)}


def write_case(root: Path, gts: list[np.ndarray], preds: list[np.ndarray]) -> tuple[Path, Path]:
    """An annotation set with the given ground truths (stored in mm) and prediction files."""
    files = []
    for k, (gt, pred) in enumerate(zip(gts, preds, strict=True)):
        (root / "rgb").mkdir(parents=True, exist_ok=True)
        (root / "depth").mkdir(parents=True, exist_ok=True)
        (root / "pred" / "rgb").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "rgb" / f"{k}.png"), np.zeros((*gt.shape, 3), np.uint8))
        cv2.imwrite(str(root / "depth" / f"{k}.png"), np.round(gt * 1000).astype(np.uint16))
        np.save(root / "pred" / "rgb" / f"{k}.depth.npy", pred.astype(np.float32))
        files.append({"rgb": f"rgb/{k}.png", "depth": f"depth/{k}.png", "depth_scale": 1000.0})
    (root / "annotations.json").write_text(json.dumps({"files": files}))
    return root / "annotations.json", root / "pred"


def test_protocol_caps_and_crop_match_a_hand_computed_example(tmp_path):
    # 48x64: the Eigen crop is rows 45*48//480 = 4 : 471*48//480 = 47, cols 4 : 60.
    gt = np.full((48, 64), 2.0)
    gt[10:20, 10:20] = 20.0  # 100 px beyond the NYU 10 m cap, inside the crop
    pred = np.full((48, 64), 2.2)  # abs_rel 0.1 on every 2 m pixel
    pred[10:20, 10:20] = 20.0  # exact where gt is 20 m
    pred[0:4, :] = 4.0  # rows 0-3, outside the crop: abs_rel 1.0 (256 px)
    gt2 = np.full((48, 64), 2.0)
    pred2 = np.full((48, 64), 3.0)  # abs_rel 0.5 everywhere
    annotations, predictions = write_case(tmp_path, [gt, gt2], [pred, pred2])
    rel = float(np.float32(2.2)) / 2 - 1  # 0.1 as stored in float32

    nyu = run_eval(annotations, predictions=predictions, protocol="nyu")
    assert nyu["protocol"]["crop"] == "nyu-eigen" and nyu["protocol"]["max_depth_m"] == 10.0
    assert nyu["abs_rel"] == pytest.approx((rel + 0.5) / 2, rel=1e-12)  # mean over images
    assert nyu["delta1"] == pytest.approx((1.0 + 0.0) / 2)  # 1.5 > 1.25 in image 2
    assert nyu["rmse"] == pytest.approx((2 * rel + 1.0) / 2, rel=1e-6)

    capped = run_eval(annotations, predictions=predictions, protocol="plain", max_depth=10)
    n_valid = 48 * 64 - 100
    expected = (256 * 1.0 + (n_valid - 256) * rel) / n_valid
    assert capped["abs_rel"] == pytest.approx((expected + 0.5) / 2, rel=1e-12)
    assert capped["delta1"] == pytest.approx(((n_valid - 256) / n_valid + 0.0) / 2)

    plain = run_eval(annotations, predictions=predictions)  # all valid pixels, no cap
    expected = (256 * 1.0 + (48 * 64 - 356) * rel + 100 * 0.0) / (48 * 64)
    assert plain["abs_rel"] == pytest.approx((expected + 0.5) / 2, rel=1e-12)
    assert plain["protocol"]["max_depth_m"] is None  # infinite cap written as null


def test_median_alignment_is_a_separate_labelled_row(tmp_path):
    gt = np.tile(np.linspace(1.0, 5.0, 40), (30, 1))
    annotations, predictions = write_case(tmp_path, [gt], [2 * np.round(gt * 1000) / 1000])
    report_json = tmp_path / "report" / "eval.json"
    result = run_eval(annotations, predictions=predictions, align="median", json_path=report_json)
    assert result["abs_rel"] == pytest.approx(1.0, rel=1e-6)  # metric row: twice too far
    assert result["delta1"] == 0.0
    aligned = result["aligned"]
    assert aligned["scale"] == pytest.approx(0.5, rel=1e-6)
    assert aligned["abs_rel"] == pytest.approx(0.0, abs=1e-6) and aligned["delta1"] == 1.0
    assert aligned["protocol"]["align"] == "median" and result["protocol"]["align"] == "none"

    def no_constants(name: str):
        raise AssertionError(f"{name} is not JSON")

    written = json.loads(report_json.read_text(), parse_constant=no_constants)
    assert written == result
    assert {"protocol", "n_images", *METRIC_NAMES, "aligned", "skipped"} <= set(written)

    text = eval_report(result)
    assert "[metric]" in text and "[median-aligned]" in text
    tables = text.split("[median-aligned]")
    assert "protocol plain: no crop, depth in [0.001, inf] m, no alignment" in tables[0]
    assert "protocol plain: no crop, depth in [0.001, inf] m, median scale alignment" in tables[1]
    assert "scale" in tables[1] and "scale" not in tables[0].split("no alignment")[1]


def test_missing_prediction_is_an_error_naming_it_unless_skipped(tmp_path):
    gt = np.full((12, 16), 2.0)
    gts = [gt, gt, gt]
    preds = [gt * 1.1, gt * 1.2, gt * 1.4]
    annotations, predictions = write_case(tmp_path, gts, preds)
    missing = predictions / "rgb" / "1.depth.npy"
    missing.unlink()
    with pytest.raises(ValueError, match="^" + re.escape(f"{missing}: prediction file not found")):
        run_eval(annotations, predictions=predictions)

    table = tmp_path / "rows.csv"
    result = run_eval(annotations, predictions=predictions, skip_missing=True, csv_path=table)
    assert result["skipped"] == 1 and result["n_images"] == 2
    assert result["skipped_files"] == [f"{missing}: prediction file not found"]
    assert result["abs_rel"] == pytest.approx((0.1 + 0.4) / 2, rel=1e-6)
    rows = list(csv.DictReader(table.open()))
    assert [row["key"] for row in rows] == ["rgb/0", "rgb/1", "rgb/2"]
    reason = f"skipped: {missing}: prediction file not found"
    assert [row["status"] for row in rows] == ["ok", reason, "ok"]
    assert float(rows[0]["abs_rel"]) == pytest.approx(0.1, rel=1e-6)
    assert float(rows[2]["abs_rel"]) == pytest.approx(0.4, rel=1e-6)
    assert rows[1]["abs_rel"] == "" and rows[0]["n_pixels"] == str(12 * 16)
    assert "skipped 1 image(s)" in eval_report(result)


def test_missing_ground_truth_and_size_mismatch_name_the_files(tmp_path):
    gt = np.full((12, 16), 2.0)
    annotations, predictions = write_case(tmp_path, [gt, gt], [gt, gt])
    depth = tmp_path / "depth" / "0.png"
    depth.unlink()
    with pytest.raises(
        ValueError, match="^" + re.escape(f"{depth}: ground-truth depth file not found")
    ):
        run_eval(annotations, predictions=predictions)
    assert run_eval(annotations, predictions=predictions, skip_missing=True)["skipped"] == 1

    np.save(predictions / "rgb" / "1.depth.npy", np.ones((6, 8), np.float32))
    with pytest.raises(
        ValueError, match=r"prediction is 8x6 pixels but the ground truth .* is 16x12"
    ):
        run_eval(annotations, predictions=predictions, skip_missing=True)


def test_bad_arguments_are_one_line_errors(tmp_path):
    annotations, predictions = write_case(tmp_path, [np.ones((4, 4))], [np.ones((4, 4))])
    with pytest.raises(ValueError, match="give either a model"):
        run_eval(annotations)
    with pytest.raises(ValueError, match="give either a model"):
        run_eval(annotations, model=tiny_model(), predictions=predictions)
    with pytest.raises(ValueError, match="--align must be one of none, median"):
        run_eval(annotations, predictions=predictions, align="mean")
    with pytest.raises(ValueError, match="unknown protocol 'eth3d'"):
        run_eval(annotations, predictions=predictions, protocol="eth3d")
    with pytest.raises(ValueError, match="no valid ground-truth pixel"):
        run_eval(annotations, predictions=predictions, min_depth=2.0, max_depth=3.0)
    assert math.isfinite(run_eval(annotations, predictions=predictions)["rmse"])


def test_kitti_crops_are_named_and_recorded(tmp_path):
    # 375x1242: the KITTI Eigen crop is rows 124:342, the Garg crop rows 153:371 (cols 44:1197
    # for both). Rows 124:153 lie in the Eigen crop only and rows 342:371 in the Garg crop only.
    gt = np.full((375, 1242), 10.0)
    pred = np.full((375, 1242), 10.0)
    pred[124:153, :] = 12.0  # abs_rel 0.2, Eigen crop only
    pred[342:371, :] = 15.0  # abs_rel 0.5, Garg crop only
    annotations, predictions = write_case(tmp_path, [gt], [pred])
    n_crop = 218 * 1153
    cols = 1197 - 44
    report = tmp_path / "eval.json"

    eigen = run_eval(annotations, predictions=predictions, protocol="kitti", json_path=report)
    assert eigen["abs_rel"] == pytest.approx(29 * cols * 0.2 / n_crop, rel=1e-12)
    assert eigen["protocol"]["crop"] == "kitti-eigen"  # the default
    assert eigen["protocol"]["crop_fractions"] == {
        "rows": [0.3324324, 0.91351351],
        "cols": [0.0359477, 0.96405229],
    }
    assert json.loads(report.read_text())["protocol"]["crop"] == "kitti-eigen"
    assert "protocol kitti: kitti-eigen crop" in eval_report(eigen)

    garg = run_eval(annotations, predictions=predictions, protocol="kitti", crop="garg")
    assert garg["abs_rel"] == pytest.approx(29 * cols * 0.5 / n_crop, rel=1e-12)
    assert garg["protocol"]["crop"] == "kitti-garg"
    assert garg["protocol"]["crop_fractions"] == {
        "rows": [0.40810811, 0.99189189],
        "cols": [0.03594771, 0.96405229],
    }
    assert "protocol kitti: kitti-garg crop" in eval_report(garg)
    plain = run_eval(annotations, predictions=predictions, protocol="plain")
    assert plain["protocol"]["crop"] == "none" and plain["protocol"]["crop_fractions"] is None


def test_cli_eval_crop_option(tmp_path):
    from typer.testing import CliRunner

    from metricdepth.cli import app

    gt = np.full((375, 1242), 10.0)
    pred = gt.copy()
    pred[342:371, :] = 15.0  # inside the Garg crop only
    annotations, predictions = write_case(tmp_path, [gt], [pred])
    runner = CliRunner()
    args = ["eval", str(annotations), "--predictions", str(predictions), "--protocol", "kitti"]
    run = runner.invoke(app, [*args, "--crop", "garg", "--json", str(tmp_path / "g.json")])
    assert run.exit_code == 0, run.output
    assert "protocol kitti: kitti-garg crop, depth in [0.001, 80] m" in run.output
    assert json.loads((tmp_path / "g.json").read_text())["protocol"]["crop"] == "kitti-garg"
    run = runner.invoke(app, args)
    assert run.exit_code == 0 and "protocol kitti: kitti-eigen crop" in run.output
    bad = runner.invoke(app, [*args[:-1], "nyu", "--crop", "garg"])
    assert bad.exit_code == 2
    assert "error: protocol nyu has no crop 'garg'" in bad.output
