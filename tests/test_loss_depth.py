"""Behaviour of the official-loss functions on small constructed inputs (no fixtures needed).

The parity with the official code is in ``test_lossfix_depth.py``; here: the corrected modes,
the draw functions, the generator paths and the edge cases, each against hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metricdepth.train.loss_depth import (
    gru_sequence_loss,
    gru_step_weights,
    metric3d_silog_loss,
    sky_regularization_gru_loss,
    sky_regularization_loss,
)
from metricdepth.train.loss_ranking import (
    draw_hdn_masks,
    draw_hdsn_windows,
    hdn_random_loss,
    hdsn_random_loss,
    hdsn_semantic_masks,
    windows_to_masks,
)


def _ramp(h=8, w=10, lo=1.0, hi=9.0, dtype=torch.float64):
    return torch.linspace(lo, hi, h * w, dtype=dtype).reshape(1, 1, h, w)


# ------------------------------------------------------------------------------ GRU


def test_gru_step_weights():
    w = gru_step_weights(5, 0.9)
    assert w[-1] == 1.0
    assert w[0] == pytest.approx(0.9**15, rel=1e-12)
    assert w[2] == pytest.approx(0.9**7.5, rel=1e-12)
    assert gru_step_weights(1, 0.9) == [1.0]
    with pytest.raises(ValueError, match="at least 2"):
        gru_step_weights(1, 0.9, mode="official")
    with pytest.raises(ValueError, match="mode"):
        gru_step_weights(3, 0.9, mode="fixed")


def test_gru_sequence_loss_by_hand():
    target = torch.tensor([[[[2.0, 4.0, -1.0]]]], dtype=torch.float64)
    mask = target > 0
    p0 = torch.tensor([[[[3.0, 9.0, 5.0]]]], dtype=torch.float64)  # |p-t| = 1, 5
    p1 = torch.tensor([[[[2.5, 4.0, 5.0]]]], dtype=torch.float64)  # |p-t| = 0.5, 0
    c = torch.full_like(target, 0.5)
    loss = gru_sequence_loss([p0, p1], target, mask, [c, c], weight=2.0, gamma=0.9)
    g = 0.9**15
    # Step 0: L1 3.0; only pixel 0 passes |t-p| < t: target 1-1/2 = 0.5 -> conf term 0.
    # Step 1: L1 0.25; both pass: targets 0.75 and 1.0 -> conf term (0.25 + 0.5) / 2.
    want = 2.0 * (g * 3.0 + (0.25 + 0.375))
    assert float(loss) == pytest.approx(want, rel=1e-6)


def test_gru_single_output_corrected_is_plain_l1():
    target = _ramp()
    pred = (target * 1.1).requires_grad_(True)
    mask = torch.ones_like(target, dtype=torch.bool)
    loss = gru_sequence_loss([pred], target, mask)
    assert float(loss.detach()) == pytest.approx(float((0.1 * target).mean()), rel=1e-6)
    with pytest.raises(ValueError):
        gru_sequence_loss([pred], target, mask, mode="official")


def test_gru_stereo_term_only_for_stereo_datasets_and_far_pixels():
    target = torch.full((2, 1, 8, 8), 5.0, dtype=torch.float64)
    target[..., 4:] = -1  # labels in columns 0-3 only
    mask = target > 0
    pred = torch.full_like(target, 5.0)
    stereo = torch.full_like(target, 7.0)
    base = dict(stereo_depth=stereo, stereo_sup=0.5, stereo_datasets=("KITTI",))
    one = gru_sequence_loss([pred, pred], target, mask, dataset=["KITTI", "DDAD"], **base)
    # Closing of the mask = columns 0-3, so columns 4-7 (64 px over the batch) are "far";
    # only the KITTI sample's 32 count: 0.5 * 32 * 2 / 64, at weights 0.9^15 and 1.
    assert float(one) == pytest.approx((1 + 0.9**15) * 0.5 * 32 * 2 / 64, rel=1e-6)
    none = gru_sequence_loss([pred, pred], target, mask, dataset=["NYU", "DDAD"], **base)
    assert float(none) == 0.0
    with pytest.raises(ValueError, match="stereo"):
        gru_sequence_loss([pred, pred], target, mask, stereo_sup=0.5)


# ---------------------------------------------------------------------------- SiLog


def test_silog_by_hand_and_empty():
    target = torch.tensor([[[[1.0, 2.0, 4.0, -1.0]]]], dtype=torch.float64)
    pred = torch.tensor([[[[2.0, 2.0, 2.0, 3.0]]]], dtype=torch.float64, requires_grad=True)
    mask = target > 0
    d = np.log([2.0, 1.0, 0.5])
    want = (d**2).sum() / 3 - 0.5 * (d.sum() / 3) ** 2
    assert metric3d_silog_loss(pred, target, mask).item() == pytest.approx(want, rel=1e-6)
    # Scale invariance with variance_focus 1: a global factor changes nothing.
    a = metric3d_silog_loss(pred, target, mask, variance_focus=1.0)
    b = metric3d_silog_loss(pred * 3, target, mask, variance_focus=1.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)  # up to the 1e-6 in n + 1e-6
    zero = metric3d_silog_loss(pred, target, torch.zeros_like(mask))
    assert zero.item() == 0.0
    zero.backward()
    assert pred.grad is not None and not pred.grad.any()


# ------------------------------------------------------------------------------ Sky


def test_sky_loss_by_hand():
    pred = torch.tensor([[[[150.0, 190.0, 5.0]]]], dtype=torch.float64, requires_grad=True)
    sem = torch.tensor([[[[142, 142, 7]]]])
    normal = torch.zeros(1, 4, 1, 3, dtype=torch.float64)
    normal[0, 2, 0, 0] = -1.0  # exactly the sky direction: |cos| >= 0.999, left out
    normal[0, 0, 0, 1] = 1.0  # perpendicular: 1 - cos = 1
    normal[0, 2, 0, 2] = 1.0  # not sky
    normal.requires_grad_(True)
    loss = sky_regularization_loss(pred, sem, normal, weight=0.5, regress_value=200)
    n = 2 + 1e-6
    assert loss.item() == pytest.approx(0.5 * ((50 + 10) / n + 1 / n), rel=1e-6)
    loss.backward()
    assert pred.grad[0, 0, 0, 2] == 0 and pred.grad[0, 0, 0, 0] < 0
    assert not normal.grad[0, :, 0, 0].any()  # the aligned normal gets no gradient
    assert normal.grad[0, :3, 0, 1].any()
    depth_only = sky_regularization_loss(pred, sem, None, regress_value=200)
    assert depth_only.item() == pytest.approx(60 / n, rel=1e-6)


def test_sky_loss_without_sky_is_zero_with_grad_path():
    pred = _ramp().requires_grad_(True)
    loss = sky_regularization_loss(pred, torch.zeros(1, 1, 8, 10, dtype=torch.int32))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None


def test_sky_gru_branch_skips_last_output():
    sem = torch.full((1, 1, 2, 2), 142)
    preds = [torch.full((1, 1, 2, 2), v, dtype=torch.float64) for v in (100.0, 150.0, 0.0)]
    loss = sky_regularization_gru_loss(preds, sem, None, weight=1.0, regress_value=200)
    w = gru_step_weights(3)
    n = 4 / (4 + 1e-6)
    assert float(loss) == pytest.approx(n * (100 * w[0] + 50 * w[1]), rel=1e-9)


# ------------------------------------------------------------------------------ HDN


def test_draw_hdn_masks_corrected_and_official_ranges():
    target = _ramp(lo=1.0, hi=20.0)[0]  # metres >= 1: lo + 0.1 > 1 in every draw
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[..., 0] = False
    values = target[mask]
    for mode in ("corrected", "official"):
        masks = draw_hdn_masks(target, mask, 50, np.random.default_rng(3), mode)
        assert masks.shape == (50, 8, 10)
        assert not (masks & ~mask).any()
        same = draw_hdn_masks(target, mask, 50, np.random.default_rng(3), mode)
        assert torch.equal(masks, same)
        has_max = torch.tensor([bool((m & (target[0] == values.max())).any()) for m in masks])
        if mode == "official":
            assert has_max.all()  # quirk 1: every range reaches the maximum depth
        else:
            assert not has_max.all()
            spans = torch.tensor([float(target[0][m].max() - target[0][m].min()) for m in masks])
            rng = float(values.max() - values.min())
            assert (spans >= 0.1 * rng - 0.5).all()  # >= 10% of the range (one ramp step)


def test_hdn_generator_path_equals_injected_masks():
    target = _ramp()
    target = torch.cat([target, target.flip(-1) * 0.7])
    pred = (target * (1 + 0.05 * torch.sin(torch.arange(80.0)).reshape(1, 1, 8, 10))).double()
    mask = target > 2
    drawn = hdn_random_loss(
        pred, target, mask, dataset=["A", "B"], generator=np.random.default_rng(7)
    )
    g = np.random.default_rng(7)
    masks = {b: draw_hdn_masks(target[b], mask[b], 10, g) for b in range(2)}
    injected = hdn_random_loss(pred, target, mask, dataset=["A", "B"], masks=masks)
    assert float(drawn) == float(injected)
    assert float(injected) > 0
    # A disabled sample is ignored; a missing injected entry is an error.
    only_a = hdn_random_loss(pred, target, mask, dataset=["A", "MapillaryPSD"], masks=masks)
    assert float(only_a) != float(injected)
    with pytest.raises(ValueError, match="sample 1"):
        hdn_random_loss(pred, target, mask, dataset=["A", "B"], masks={0: masks[0]})


def test_hdn_is_shift_and_scale_invariant():
    target = _ramp()
    mask = torch.ones_like(target, dtype=torch.bool)
    masks = {0: draw_hdn_masks(target[0], mask[0], 10, np.random.default_rng(1))}
    exact = hdn_random_loss(target * 3 + 2, target, mask, masks=masks)
    assert float(exact) == pytest.approx(0.0, abs=1e-5)  # up to the 1e-6 added to s


# ----------------------------------------------------------------------------- HDSN


def test_draw_hdsn_windows_bounds_and_masks():
    win = draw_hdsn_windows(64, 80, 20, np.random.default_rng(0))
    assert win.shape == (20, 4)
    y0, y1, x0, x1 = win.T
    assert ((y0 >= 0) & (y0 < y1) & (y1 <= 64) & (x0 >= 0) & (x0 < x1) & (x1 <= 80)).all()
    masks = windows_to_masks(win, 64, 80)
    assert torch.equal(masks.flatten(1).sum(1), (y1 - y0) * (x1 - x0))
    with pytest.raises(ValueError, match="too small"):
        draw_hdsn_windows(40, 80, 20, np.random.default_rng(0))


def test_hdsn_semantic_masks_rules():
    label = torch.full((1, 40, 40), -1)
    label[0, :20] = 3  # 800 px
    label[0, 20:30] = 142  # sky, 400 px
    label[0, 30:, :10] = 5  # 100 px: too small
    label[0, 30:, 10:] = 1  # 300 px: too small
    masks = hdsn_semantic_masks(label)
    assert masks.shape == (1, 40, 40) and torch.equal(masks[0], label[0] == 3)
    label[0, :20] = 9  # the only big id goes -> fallback "label > 0", sky included
    label[0, :20, :15] = 2  # 300 px, 9 keeps 500 -> too small both
    fallback = hdsn_semantic_masks(label)
    assert torch.equal(fallback, label > 0)
    many = torch.arange(30).repeat_interleave(600).reshape(1, 120, 150) + 1
    picked = hdsn_semantic_masks(many, random_num=20, generator=np.random.default_rng(0))
    assert picked.shape == (20, 120, 150)
    assert (picked.flatten(1).sum(1) == 600).all()


def _hdsn_inputs():
    target = _ramp(h=64, w=80, lo=1.0, hi=30.0)
    target = torch.cat([target, target.flip(-1)])
    target[:, :, :6] = -1  # padding rows
    wobble = 1 + 0.1 * torch.sin(torch.arange(64 * 80.0) / 7).reshape(1, 1, 64, 80)
    pred = (target.abs() * wobble).double()
    sem = torch.zeros(2, 1, 64, 80, dtype=torch.int32)
    sem[:, :, 10:40, 10:50] = 4
    return pred, target, target > 0, sem


def test_hdsn_generator_path_equals_injected_samples():
    pred, target, mask, sem = _hdsn_inputs()
    drawn = hdsn_random_loss(
        pred, target, mask, sem, dataset=["A", "B"], generator=np.random.default_rng(5)
    )
    windows = draw_hdsn_windows(64, 80, 20, np.random.default_rng(5))
    sem_masks = {b: hdsn_semantic_masks(sem[b]) for b in range(2)}
    injected = hdsn_random_loss(
        pred, target, mask, sem, dataset=["A", "B"], windows=windows, sem_masks=sem_masks
    )
    assert float(drawn) == float(injected) > 0


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_hdsn_padding_prediction_matters_only_officially(mode):
    """Quirk 2: the official scale sums over the whole image, padding included."""
    pred, target, mask, sem = _hdsn_inputs()
    windows = draw_hdsn_windows(64, 80, 20, np.random.default_rng(2))
    pred = pred.clone().requires_grad_(True)
    loss = hdsn_random_loss(pred, target, mask, sem, windows=windows, mode=mode)
    loss.backward()
    pad_grad = pred.grad[:, :, :6]
    moved = pred.detach().clone()
    moved[:, :, :6] *= 5
    other = hdsn_random_loss(moved, target, mask, sem, windows=windows, mode=mode)
    if mode == "official":
        assert pad_grad.abs().max() > 0
        assert not math.isclose(loss.item(), float(other), rel_tol=1e-6)
    else:
        assert not pad_grad.any()
        assert loss.item() == pytest.approx(float(other), rel=1e-12)
