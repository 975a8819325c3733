"""Tests of metricdepth.evaluate.metrics: formulas by hand, protocols, crops, caps, alignment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metricdepth.evaluate.metrics import (
    CROPS,
    METRIC_NAMES,
    PRED_EPS_M,
    PROTOCOLS,
    Protocol,
    average_metrics,
    crop_fractions,
    depth_metrics,
    eval_mask,
    evaluate_image,
    format_metrics,
    median_scale,
    protocol,
)

LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------
# Formulas
# ------------------------------------------------------------------------------------------


def test_pred_twice_gt() -> None:
    gt = np.array([[1.0, 2.0], [3.0, 7.5]])
    m = depth_metrics(2 * gt, gt)
    assert set(m) == set(METRIC_NAMES)
    assert m["abs_rel"] == pytest.approx(1.0, abs=1e-15)
    assert m["rmse_log"] == pytest.approx(LN2, abs=1e-15)
    assert m["log10"] == pytest.approx(math.log10(2.0), abs=1e-15)
    assert m["silog"] == pytest.approx(0.0, abs=1e-12)
    assert m["delta1"] == 0.0
    assert m["delta2"] == 0.0
    assert m["delta3"] == 0.0  # 2 > 1.25**3 = 1.953125
    # sq_rel = mean(d) and rmse = sqrt(mean(d^2)) when d_hat - d = d
    assert m["sq_rel"] == pytest.approx(np.mean(gt))
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean(gt**2)))


def test_perfect_prediction() -> None:
    gt = np.linspace(0.5, 20, 48).reshape(6, 8)
    m = depth_metrics(gt.copy(), gt)
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"):
        assert m[k] == 0.0
    assert m["delta1"] == m["delta2"] == m["delta3"] == 1.0


def test_two_pixels_by_hand() -> None:
    # d = (1, 2), d_hat = (1.2, 1.1): errors 0.2 and -0.9, ratios 1.2 and 2/1.1 = 1.818...
    gt = np.array([[1.0, 2.0]])
    pred = np.array([[1.2, 1.1]])
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx((0.2 / 1 + 0.9 / 2) / 2)  # 0.325
    assert m["abs_rel"] == pytest.approx(0.325)
    assert m["sq_rel"] == pytest.approx((0.04 / 1 + 0.81 / 2) / 2)  # 0.2225
    assert m["sq_rel"] == pytest.approx(0.2225)
    assert m["rmse"] == pytest.approx(math.sqrt((0.04 + 0.81) / 2))  # sqrt(0.425)
    g1, g2 = math.log(1.2), math.log(0.55)
    assert m["rmse_log"] == pytest.approx(math.sqrt((g1**2 + g2**2) / 2))
    assert m["log10"] == pytest.approx((abs(math.log10(1.2)) + abs(math.log10(0.55))) / 2)
    # two values: sqrt(mean(g^2) - mean(g)^2) = |g1 - g2| / 2 = ln(1.2 / 0.55) / 2
    assert m["silog"] == pytest.approx(math.log(1.2 / 0.55) / 2)
    assert m["silog"] == pytest.approx(math.sqrt((g1**2 + g2**2) / 2 - ((g1 + g2) / 2) ** 2))
    # ratio 1.2 < 1.25 passes all; 1.818 passes only 1.25**3 = 1.953
    assert m["delta1"] == 0.5
    assert m["delta2"] == 0.5
    assert m["delta3"] == 1.0


def test_delta_thresholds_are_strict_and_symmetric() -> None:
    gt = np.ones(6)
    # ratios (either way) 1.1, 1/1.5, 1.9, 1/2.5 and exactly 1.25 (strict: not < 1.25)
    pred = np.array([1.1, 1 / 1.5, 1.9, 1 / 2.5, 1.25, 1.0])
    m = depth_metrics(pred, gt)
    assert m["delta1"] == pytest.approx(2 / 6)  # 1.1, 1.0
    assert m["delta2"] == pytest.approx(4 / 6)  # + 1.5, 1.25
    assert m["delta3"] == pytest.approx(5 / 6)  # + 1.9


def test_non_positive_prediction_is_clamped() -> None:
    gt = np.array([1.0, 1.0])
    pred = np.array([0.0, -3.0])
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx(1.0 - PRED_EPS_M)
    assert m["rmse_log"] == pytest.approx(-math.log(PRED_EPS_M))
    assert m["log10"] == pytest.approx(6.0)
    assert m["silog"] == pytest.approx(0.0, abs=1e-12)
    assert m["delta3"] == 0.0
    assert all(math.isfinite(v) for v in m.values())


def test_invalid_gt_is_skipped_and_mask_applies() -> None:
    gt = np.array([[1.0, 0.0, -1.0], [np.nan, np.inf, 2.0]])
    pred = np.array([[2.0, 5.0, 5.0], [5.0, 5.0, 4.0]])
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx(1.0)  # only the pixels 1 -> 2 and 2 -> 4
    mask = np.array([[True, True, True], [True, True, False]])
    m = depth_metrics(pred, gt, mask)
    assert m["abs_rel"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(1.0)  # only 1 -> 2 left


def test_empty_raises() -> None:
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(np.ones((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(np.ones((3, 3)), np.ones((3, 3)), np.zeros((3, 3), dtype=bool))
    gt = np.zeros((480, 640))
    gt[0, 0] = 5.0  # outside the Eigen crop
    with pytest.raises(ValueError, match="no valid pixel"):
        evaluate_image(np.ones_like(gt), gt, PROTOCOLS["nyu"])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        depth_metrics(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(TypeError, match="boolean"):
        depth_metrics(np.ones(2), np.ones(2), np.ones(2))


def test_torch_equals_numpy() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 10, (24, 32)).astype(np.float32)
    gt[rng.random(gt.shape) < 0.2] = 0
    pred = (gt * rng.uniform(0.7, 1.4, gt.shape)).astype(np.float32) + 0.1
    mask = rng.random(gt.shape) < 0.8
    a = depth_metrics(pred, gt, mask)
    b = depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(mask))
    assert a == b
    p = PROTOCOLS["plain"]
    assert evaluate_image(pred, gt, p) == evaluate_image(
        torch.from_numpy(pred), torch.tensor(gt), p
    )


# ------------------------------------------------------------------------------------------
# Per image, then averaged
# ------------------------------------------------------------------------------------------


def test_per_image_then_average_differs_from_pooled() -> None:
    gt_a, pred_a = np.array([1.0]), np.array([2.0])  # abs_rel 1 on one pixel
    gt_b, pred_b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])  # abs_rel 0 on three
    per_image = [depth_metrics(pred_a, gt_a), depth_metrics(pred_b, gt_b)]
    avg = average_metrics(per_image)
    pooled = depth_metrics(np.concatenate([pred_a, pred_b]), np.concatenate([gt_a, gt_b]))
    assert avg["abs_rel"] == pytest.approx(0.5)
    assert pooled["abs_rel"] == pytest.approx(0.25)
    assert avg["delta1"] == pytest.approx(0.5)
    assert pooled["delta1"] == pytest.approx(0.75)
    assert set(avg) == set(METRIC_NAMES)


def test_average_metrics_errors() -> None:
    with pytest.raises(ValueError, match="no image"):
        average_metrics([])
    with pytest.raises(ValueError, match="keys"):
        average_metrics([{"abs_rel": 1.0}, {"abs_rel": 1.0, "scale": 2.0}])
    assert average_metrics([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 0.0}]) == {"a": 2.0, "b": 1.0}


# ------------------------------------------------------------------------------------------
# Protocols, crops, caps
# ------------------------------------------------------------------------------------------


def _window_mask(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_eigen_crop_480x640() -> None:
    gt = np.full((480, 640), 3.0)
    mask = eval_mask(gt, PROTOCOLS["nyu"])
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, _window_mask((480, 640), 45, 471, 41, 601))
    assert mask.sum() == 426 * 560


def test_eigen_crop_scaled_size() -> None:
    # 45*240//480 = 22, 471*240//480 = 235, 41*320//640 = 20, 601*320//640 = 300
    mask = eval_mask(np.ones((240, 320)), PROTOCOLS["nyu"])
    np.testing.assert_array_equal(mask, _window_mask((240, 320), 22, 235, 20, 300))


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, last row + 1, first col, last col + 1) of the True pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def test_kitti_eigen_crop_375x1242() -> None:
    # Metric3D/BTS "eigen" fractions: int(0.3324324*375)=124, int(0.91351351*375)=342,
    # int(0.0359477*1242)=44, int(0.96405229*1242)=1197. The kitti preset's default crop.
    gt = np.full((375, 1242), 20.0)
    full = protocol("kitti", crop="kitti-eigen")
    for p in (PROTOCOLS["kitti"], protocol("kitti", crop="eigen"), full):
        assert p.crop == "kitti-eigen"
        mask = eval_mask(gt, p)
        assert _bounds(mask) == (124, 342, 44, 1197)
        np.testing.assert_array_equal(mask, _window_mask((375, 1242), 124, 342, 44, 1197))
        assert mask.sum() == 218 * 1153


def test_kitti_garg_crop_375x1242() -> None:
    # Garg fractions: int(0.40810811*375)=153, int(0.99189189*375)=371,
    # int(0.03594771*1242)=44, int(0.96405229*1242)=1197
    gt = np.full((375, 1242), 20.0)
    p = protocol("kitti", crop="garg")
    assert p.crop == "kitti-garg" and p.name == "kitti"
    mask = eval_mask(gt, p)
    assert _bounds(mask) == (153, 371, 44, 1197)
    np.testing.assert_array_equal(mask, _window_mask((375, 1242), 153, 371, 44, 1197))
    assert mask.sum() == 218 * 1153
    assert crop_fractions("kitti-garg") == (0.40810811, 0.99189189, 0.03594771, 0.96405229)
    assert crop_fractions("kitti-eigen") == (0.3324324, 0.91351351, 0.0359477, 0.96405229)
    assert crop_fractions("none") is None


def test_crop_names_and_legacy_names() -> None:
    assert CROPS == ("none", "nyu-eigen", "kitti-eigen", "kitti-garg")
    assert protocol("nyu", crop="eigen").crop == "nyu-eigen"
    assert protocol("kitti", crop="none").crop == "none"
    with pytest.raises(ValueError, match="protocol nyu has no crop 'garg'"):
        protocol("nyu", crop="garg")
    with pytest.raises(ValueError, match="protocol plain has no crop 'eigen'"):
        protocol("plain", crop="eigen")
    # "eigen" in an old record meant the NYU window, which it still is
    assert Protocol("nyu", 1e-3, 10.0, "eigen", "none") == PROTOCOLS["nyu"]  # type: ignore[arg-type]
    # "garg" in an old record meant the KITTI Eigen window: refused, never silently re-read
    with pytest.raises(ValueError, match="'garg' is ambiguous.*kitti-eigen.*kitti-garg"):
        Protocol("kitti", 1e-3, 80.0, "garg", "none")  # type: ignore[arg-type]


def test_crop_needs_2d() -> None:
    with pytest.raises(ValueError, match="H, W"):
        eval_mask(np.ones((1, 480, 640)), PROTOCOLS["nyu"])
    assert eval_mask(np.ones((1, 4, 4)), PROTOCOLS["plain"]).all()


def test_caps_are_inclusive_and_drop_invalid() -> None:
    gt = np.array([0.0, 1e-4, 1e-3, 5.0, 10.0, 10.0001, np.inf, np.nan, -1.0])
    p = protocol("plain", max_depth_m=10.0)
    np.testing.assert_array_equal(
        eval_mask(gt, p), [False, False, True, True, True, False, False, False, False]
    )
    # the plain preset has no upper cap
    np.testing.assert_array_equal(
        eval_mask(gt, PROTOCOLS["plain"]),
        [False, False, True, True, True, True, False, False, False],
    )


def test_caps_with_crop() -> None:
    gt = np.full((480, 640), 5.0)
    gt[100, 100] = 10.5  # inside the crop, above the NYU cap
    gt[200, 200] = 150.0  # inside, kept by Metric3D's own [0.1, 200] range
    gt[300, 300] = 0.05  # inside, below Metric3D's 0.1 m
    nyu = eval_mask(gt, PROTOCOLS["nyu"])
    assert not nyu[100, 100] and not nyu[200, 200] and nyu[300, 300]
    m3d = eval_mask(gt, protocol("nyu", 0.1, 200))
    assert m3d[100, 100] and m3d[200, 200] and not m3d[300, 300]
    assert not m3d[0, 0]  # still cropped


def test_protocol_presets_and_describe() -> None:
    assert PROTOCOLS["nyu"].describe() == (
        "protocol nyu: nyu-eigen crop, depth in [0.001, 10] m, no alignment"
    )
    assert PROTOCOLS["kitti"].describe() == (
        "protocol kitti: kitti-eigen crop, depth in [0.001, 80] m, no alignment"
    )
    assert protocol("kitti", crop="garg").describe() == (
        "protocol kitti: kitti-garg crop, depth in [0.001, 80] m, no alignment"
    )
    assert PROTOCOLS["plain"].describe() == (
        "protocol plain: no crop, depth in [0.001, inf] m, no alignment"
    )
    p = protocol("kitti", min_depth_m=0.1, max_depth_m=200, align="median")
    assert p == Protocol("kitti", 0.1, 200.0, "kitti-eigen", "median")
    assert "median" in p.describe() and "[0.1, 200]" in p.describe()
    d = p.to_dict()
    assert d == {
        "name": "kitti",
        "min_depth_m": 0.1,
        "max_depth_m": 200.0,
        "crop": "kitti-eigen",
        "align": "median",
    }
    assert Protocol(**d) == p
    json.dumps(PROTOCOLS["plain"].to_dict())  # inf is serialisable (as Infinity)


def test_protocol_validation() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol("eth3d")
    with pytest.raises(ValueError, match="min_depth_m < max_depth_m"):
        protocol("nyu", min_depth_m=20.0)
    with pytest.raises(ValueError, match="crop"):
        Protocol("x", 0.0, 1.0, "centre", "none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="align"):
        protocol("nyu", align="mean")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        PROTOCOLS["nyu"].max_depth_m = 5.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# Median alignment
# ------------------------------------------------------------------------------------------


def test_median_scale_value() -> None:
    gt = np.array([1.0, 2.0, 3.0, 100.0])
    pred = np.array([5.0, 6.0, 4.0, 0.0])
    mask = np.array([True, True, True, False])
    assert median_scale(pred, gt, mask) == pytest.approx(2.0 / 5.0)
    with pytest.raises(ValueError, match="no pixel"):
        median_scale(pred, gt, np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="median prediction"):
        median_scale(-pred, gt, mask)


def test_median_alignment_recovers_scaled_prediction() -> None:
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.5, 9.5, (480, 640))
    gt[rng.random(gt.shape) < 0.3] = 0.0
    pred = 3.7 * gt + (gt == 0) * 1.0  # wrong scale; junk where gt is missing
    metric = evaluate_image(pred, gt, PROTOCOLS["nyu"])
    assert "scale" not in metric
    assert metric["abs_rel"] == pytest.approx(2.7)
    aligned = evaluate_image(pred, gt, protocol("nyu", align="median"))
    assert aligned["scale"] == pytest.approx(1 / 3.7)
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"):
        assert aligned[k] == pytest.approx(0.0, abs=1e-12)
    assert aligned["delta1"] == 1.0
    # silog is scale-invariant: the same with and without alignment
    assert aligned["silog"] == pytest.approx(metric["silog"], abs=1e-12)


# ------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------


def test_format_metrics() -> None:
    p = PROTOCOLS["nyu"]
    avg = average_metrics([depth_metrics(np.array([1.2, 1.1]), np.array([1.0, 2.0]))])
    text = format_metrics(avg, p, n_images=1)
    lines = text.splitlines()
    assert lines[0] == p.describe()
    assert "1 image;" in lines[1]
    assert lines[2].split() == list(METRIC_NAMES)
    assert float(lines[3].split()[0]) == pytest.approx(0.325)
    assert all(len(line) <= 100 for line in lines)
    aligned = dict(avg, scale=0.5)
    text = format_metrics(aligned, protocol("nyu", align="median"), n_images=654)
    lines = text.splitlines()
    assert "median" in lines[0] and "654 images" in lines[1]
    assert lines[2].split()[-1] == "scale"
    assert lines[3].split()[-1] == "0.5000"


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

_depths = st.lists(st.tuples(st.floats(0.05, 80.0), st.floats(0.05, 80.0)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(pairs=_depths, seed=st.integers(0, 2**32 - 1))
def test_pixel_order_invariance(pairs: list[tuple[float, float]], seed: int) -> None:
    pred = np.array([p for p, _ in pairs])
    gt = np.array([g for _, g in pairs])
    perm = np.random.default_rng(seed).permutation(len(pairs))
    a = depth_metrics(pred, gt)
    b = depth_metrics(pred[perm], gt[perm])
    for k in METRIC_NAMES:
        assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(pairs=_depths, c=st.floats(1e-2, 1e2))
def test_silog_scale_invariance(pairs: list[tuple[float, float]], c: float) -> None:
    pred = np.array([p for p, _ in pairs])
    gt = np.array([g for _, g in pairs])
    a = depth_metrics(pred, gt)["silog"]
    b = depth_metrics(c * pred, gt)["silog"]
    assert b == pytest.approx(a, rel=1e-9, abs=1e-9)
