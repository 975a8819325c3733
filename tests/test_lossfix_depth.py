"""Parity of the depth / ranking losses with the official Metric3D v2 code (``../shared/lossfix``).

Each case file holds the inputs' scene, the mask the official loss received, the samples it drew,
its value (float64 and float32 runs) and the float64 gradients. We feed the recorded samples to
our functions and compare at the fixture README's tolerances: float64 value rtol 1e-9 and
gradients 1e-8 * max|g|; float32 value rtol 1e-5 (+1e-8) and gradients 2e-4 * max|g|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lossfix_util import (
    Case,
    assert_grad,
    assert_list_grads,
    assert_value,
    case_params,
    load_case,
    report,
)
from metricdepth.train.loss_depth import (
    OFFICIAL_DATA_TYPES,
    data_type_mask,
    gru_sequence_loss,
    gru_step_weights,
    metric3d_silog_loss,
    sky_regularization_gru_loss,
    sky_regularization_loss,
)
from metricdepth.train.loss_presets import preset
from metricdepth.train.loss_ranking import (
    draw_hdn_masks,
    draw_hdsn_windows,
    hdn_random_loss,
    hdsn_random_loss,
    hdsn_semantic_masks,
)

pytestmark = pytest.mark.lossfix

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


def _sky_kwargs(kwargs: dict) -> dict:
    return {
        "weight": kwargs["loss_weight"],
        "regress_value": kwargs["regress_value"],
        "normal_regress": kwargs["normal_regress"],
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("GRUSequenceLoss__*.npz"))
def test_gru_sequence_loss_parity(path, dtype):
    case = load_case(path)
    preds = case.leaves("predictions_list", dtype)
    confs = case.leaves("confidence_list", dtype)
    kw = case.kwargs
    loss = gru_sequence_loss(
        preds,
        case.scene_tensor("target", dtype),
        case.mask,
        confs,
        weight=kw["loss_weight"],
        gamma=kw["loss_gamma"],
        stereo_sup=kw["stereo_sup"],
        mode="official",
    )
    v_err = assert_value(loss, case, dtype)
    loss.backward()
    g_err = max(
        assert_list_grads(preds, case.arrays["grad__predictions_list"], dtype, "predictions"),
        assert_list_grads(confs, case.arrays["grad__confidence_list"], dtype, "confidences"),
    )
    report(case, dtype, v_err, g_err)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("SilogLoss__*.npz"))
def test_silog_loss_parity(path, dtype):
    case = load_case(path)
    pred = case.leaves("predictions_list", dtype)[-1]
    loss = metric3d_silog_loss(
        pred,
        case.scene_tensor("target", dtype),
        case.mask,
        weight=case.kwargs["loss_weight"],
        variance_focus=case.kwargs["variance_focus"],
    )
    v_err = assert_value(loss, case, dtype)
    loss.backward()
    g_err = assert_grad(pred.grad, case.arrays["grad__prediction"], dtype, "prediction")
    report(case, dtype, v_err, g_err)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("SkyRegularizationLoss__*.npz"))
def test_sky_regularization_loss_parity(path, dtype):
    case = load_case(path)
    preds = case.leaves("predictions_list", dtype)
    normals = case.leaves("normal_out_list", dtype)
    sem_mask = case.scene_tensor("sem_mask")
    kwargs = _sky_kwargs(case.kwargs)
    if case.meta["branch"] == "gru":
        loss = sky_regularization_gru_loss(preds, sem_mask, normals, **kwargs)
    else:
        loss = sky_regularization_loss(preds[-1], sem_mask, normals[-1], **kwargs)
    v_err = assert_value(loss, case, dtype)
    loss.backward()
    if case.meta["branch"] == "gru":
        g_err = max(
            assert_list_grads(preds, case.arrays["grad__predictions_list"], dtype, "predictions"),
            assert_list_grads(normals, case.arrays["grad__normal_out_list"], dtype, "normals"),
        )
    else:
        g_err = max(
            assert_grad(preds[-1].grad, case.arrays["grad__prediction"], dtype, "prediction"),
            assert_grad(normals[-1].grad, case.arrays["grad__prediction_normal"], dtype, "normal"),
        )
    report(case, dtype, v_err, g_err)


def _hdn_masks(case: Case) -> dict[int, torch.Tensor]:
    calls = case.arrays["samples__hdn_call_batch_index"]
    masks = case.arrays["samples__hdn_masks"]
    return {int(b): torch.from_numpy(masks[i]) for i, b in enumerate(calls)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("HDNRandomLoss__*.npz"))
def test_hdn_random_loss_parity(path, dtype):
    case = load_case(path)
    pred = case.leaves("predictions_list", dtype)[-1]
    loss = hdn_random_loss(
        pred,
        case.scene_tensor("target", dtype),
        case.mask,
        weight=case.kwargs["loss_weight"],
        random_num=case.kwargs["random_num"],
        dataset=case.dataset,
        masks=_hdn_masks(case),
        mode="official",
    )
    v_err = assert_value(loss, case, dtype)
    loss.backward()
    g_err = assert_grad(pred.grad, case.arrays["grad__prediction"], dtype, "prediction")
    report(case, dtype, v_err, g_err)


def _hdsn_samples(case: Case) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    windows = torch.from_numpy(case.arrays["samples__hdsn_windows"].astype(np.int64))
    calls = case.arrays["samples__hdsn_call_batch_index"]
    sem = {
        int(b): torch.from_numpy(case.arrays[f"samples__hdsn_sem_masks_call{i}"])
        for i, b in enumerate(calls)
    }
    return windows, sem


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("HDSNRandomLoss__*.npz"))
def test_hdsn_random_loss_parity(path, dtype):
    case = load_case(path)
    pred = case.leaves("predictions_list", dtype)[-1]
    windows, sem_masks = _hdsn_samples(case)
    loss = hdsn_random_loss(
        pred,
        case.scene_tensor("target", dtype),
        case.mask,
        case.scene_tensor("sem_mask"),
        weight=case.kwargs["loss_weight"],
        random_num=case.kwargs["random_num"],
        chunk=case.kwargs["batch_limit"],
        dataset=case.dataset,
        windows=windows,
        sem_masks=sem_masks,
        mode="official",
    )
    v_err = assert_value(loss, case, dtype)
    loss.backward()
    g_err = assert_grad(pred.grad, case.arrays["grad__prediction"], dtype, "prediction")
    report(case, dtype, v_err, g_err)


class _Replay:
    """A stand-in numpy Generator whose ``choice`` returns recorded outputs in order."""

    def __init__(self, outputs: list[np.ndarray]):
        self.outputs = list(outputs)

    def choice(self, *args, **kwargs):
        return self.outputs.pop(0)


@pytest.mark.parametrize("path", case_params("HDSNRandomLoss__*.npz"))
def test_hdsn_draws_rebuild_recorded_samples(path):
    """The recorded raw draws give the recorded windows; the semantic masks are rebuilt."""
    case = load_case(path)
    height, width = case.scene["target"].shape[-2:]
    raw = [case.arrays[f"rng__{i:03d}"] for i in range(4)]
    windows = draw_hdsn_windows(height, width, 20, _Replay(raw))
    assert np.array_equal(windows.numpy(), case.arrays["samples__hdsn_windows"])
    _, recorded = _hdsn_samples(case)
    sem_mask = case.scene_tensor("sem_mask")
    for b, masks in recorded.items():
        assert torch.equal(hdsn_semantic_masks(sem_mask[b]), masks)


@pytest.mark.parametrize("path", case_params("HDSNRandomLoss__pre__indoor.npz"))
def test_hdsn_corrected_matches_readme_masked_scale(path):
    """The README quotes 0.322 for HDSN on ``indoor`` with a masked scale (quirk 2)."""
    case = load_case(path)
    windows, sem_masks = _hdsn_samples(case)
    loss = hdsn_random_loss(
        case.leaves("predictions_list", torch.float64)[-1],
        case.scene_tensor("target", torch.float64),
        case.mask,
        case.scene_tensor("sem_mask"),
        weight=case.kwargs["loss_weight"],
        dataset=case.dataset,
        windows=windows,
        sem_masks=sem_masks,
    )
    assert round(float(loss.detach()), 3) == 0.322
    assert abs(float(loss.detach()) - case.value(torch.float64)) > 0.2


@pytest.mark.parametrize("path", case_params("GRUSequenceLoss__*.npz"))
def test_gru_corrected_detaches_confidence_target(path):
    """Same value; same confidence gradient; the depth gradient loses the confidence part."""
    case = load_case(path)
    grads = {}
    for mode in ("official", "corrected"):
        preds = case.leaves("predictions_list", torch.float64)
        confs = case.leaves("confidence_list", torch.float64)
        loss = gru_sequence_loss(
            preds,
            case.scene_tensor("target", torch.float64),
            case.mask,
            confs,
            weight=case.kwargs["loss_weight"],
            mode=mode,
        )
        assert_value(loss, case, torch.float64)
        loss.backward()
        grads[mode] = (torch.stack([p.grad for p in preds]), torch.stack([c.grad for c in confs]))
    assert torch.equal(grads["official"][1], grads["corrected"][1])
    depth_off, depth_cor = grads["official"][0], grads["corrected"][0]
    assert (depth_off - depth_cor).abs().max() > 0.01 * depth_off.abs().max()
    # Without the confidence term the depth gradient is the corrected one.
    preds = case.leaves("predictions_list", torch.float64)
    gru_sequence_loss(
        preds,
        case.scene_tensor("target", torch.float64),
        case.mask,
        weight=case.kwargs["loss_weight"],
    ).backward()
    assert torch.allclose(torch.stack([p.grad for p in preds]), depth_cor, rtol=0, atol=1e-18)


def _pipeline_terms(path, dtype) -> dict[str, tuple[float, float]]:
    """Our terms of a ``pipeline__*`` case (recorded samples, preset kwargs) -> (ours, official)."""
    case = load_case(path)
    p = preset(Path(case.meta["config"]).name)
    data_type = list(case.meta["data_type"])
    dataset = list(case.meta["dataset"])
    target = case.scene_tensor("target", dtype)
    preds = [x.detach() for x in case.leaves("predictions_list", dtype)]
    confs = [x.detach() for x in case.leaves("confidence_list", dtype)]
    normals = [x.detach() for x in case.leaves("normal_out_list", dtype)]
    sem_mask = case.scene_tensor("sem_mask")
    official = case.meta["terms" if dtype == torch.float64 else "terms_f32"]

    def mask(loss: str) -> torch.Tensor:
        return data_type_mask(target, data_type, OFFICIAL_DATA_TYPES[loss])

    ours = {}
    for term in p.branch("decoder"):
        kw = term.kwargs_dict()
        if term.loss == "GRUSequenceLoss":
            ours[term.loss] = gru_sequence_loss(
                preds,
                target,
                mask(term.loss),
                confs,
                weight=term.weight,
                gamma=kw["loss_gamma"],
                stereo_sup=kw["stereo_sup"],
                mode="official",
            )
        elif term.loss == "SkyRegularizationLoss":
            ours[term.loss] = sky_regularization_loss(
                preds[-1], sem_mask, normals[-1], **_sky_kwargs({**kw, "loss_weight": term.weight})
            )
        elif term.loss == "HDNRandomLoss":
            ours[term.loss] = hdn_random_loss(
                preds[-1],
                target,
                mask(term.loss),
                weight=term.weight,
                dataset=dataset,
                masks=_hdn_masks(case),
                mode="official",
            )
        elif term.loss == "HDSNRandomLoss":
            windows, sem_masks = _hdsn_samples(case)
            ours[term.loss] = hdsn_random_loss(
                preds[-1],
                target,
                mask(term.loss),
                sem_mask,
                weight=term.weight,
                dataset=dataset,
                windows=windows,
                sem_masks=sem_masks,
                chunk=kw["batch_limit"],
                mode="official",
            )
    out = {name: (float(v), float(official[f"decode_{name}"])) for name, v in ours.items()}
    for term in p.branch("gru"):
        assert term.loss == "SkyRegularizationLoss"
        weights = gru_step_weights(len(preds))
        kwargs = _sky_kwargs({**term.kwargs_dict(), "loss_weight": term.weight})
        for i in range(len(preds) - 1):
            v = sky_regularization_loss(preds[i], sem_mask, normals[i], **kwargs) * weights[i]
            key = f"gru_{i}_{term.loss}"
            out[key] = (float(v), float(official[key]))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("pipeline__*.npz"))
def test_pipeline_terms_with_presets(path, dtype):
    """Presets + our losses reproduce the official pipeline's terms of these five losses."""
    terms = _pipeline_terms(path, dtype)
    assert "GRUSequenceLoss" in terms
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    for name, (ours, official) in terms.items():
        assert abs(ours - official) <= rtol * abs(official) + (
            0 if dtype == torch.float64 else 1e-8
        ), (
            name,
            ours,
            official,
        )
    worst = max(abs(o - w) / abs(w) if w else abs(o) for o, w in terms.values())
    print(f"LOSSFIX {path.stem} {dtype} terms={len(terms)} worst_rel={worst:.3g}")


MY_CASES = [
    p
    for pattern in (
        "GRUSequenceLoss__*.npz",
        "SilogLoss__*.npz",
        "SkyRegularizationLoss__*.npz",
        "HDNRandomLoss__*.npz",
        "HDSNRandomLoss__*.npz",
    )
    for p in case_params(pattern)
]


@pytest.mark.parametrize("path", MY_CASES)
def test_data_type_mask_equals_recorded_mask(path):
    """``data_type_mask`` rebuilds the mask the official ``branch_loss`` gave each loss."""
    case = load_case(path)
    data_type = list(case.scene_meta["data_type"])
    want = case.mask
    got = data_type_mask(
        case.scene_tensor("target", torch.float64),
        data_type,
        OFFICIAL_DATA_TYPES[case.meta["loss_class"]],
    )
    assert torch.equal(got, want)


def test_missing_folder_skips_or_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("METRICDEPTH_LOSSFIX", str(tmp_path / "nowhere"))
    (param,) = case_params("GRUSequenceLoss__*.npz")
    monkeypatch.delenv("METRICDEPTH_REQUIRE_SHARED", raising=False)
    with pytest.raises(pytest.skip.Exception):
        load_case(param.values[0])
    monkeypatch.setenv("METRICDEPTH_REQUIRE_SHARED", "1")
    with pytest.raises(pytest.fail.Exception):
        load_case(param.values[0])


class _UniformReplay:
    """Stand-in Generator: ``uniform`` gives the recorded ``u_lo``, ``random`` the given U."""

    def __init__(self, u_lo: np.ndarray, unit: np.ndarray):
        self.u_lo, self.unit = u_lo, unit

    def uniform(self, low, high, size):
        return self.u_lo

    def random(self, size):
        return self.unit


@pytest.mark.parametrize("path", case_params("HDNRandomLoss__*.npz"))
def test_hdn_official_draw_rebuilds_recorded_masks(path):
    """Quirk 1 as read: ``u_hi = s + (1 - 1e-6 - s) U`` with ``s = lo_metres + 0.1``, U in [0, 1).

    Solving the recorded ``u_hi`` for U gives values in [0, 1), and feeding the recorded ``u_lo``
    and that U to ``draw_hdn_masks(mode="official")`` gives the recorded masks bit for bit.
    """
    case = load_case(path)
    a = case.arrays
    target = case.scene_tensor("target")
    for i, b in enumerate(a["samples__hdn_call_batch_index"]):
        lo_d, hi_d = a["samples__hdn_min_max"][i]
        u_lo, u_hi = a["samples__hdn_u_lo"][i], a["samples__hdn_u_hi"][i]
        assert np.array_equal(u_lo * (hi_d - lo_d) + lo_d, a["samples__hdn_range_lo"][i])
        start = a["samples__hdn_range_lo"][i] + 0.1
        unit = (u_hi - start) / ((1 - 1e-6) - start)
        assert ((unit >= 0) & (unit < 1)).all()
        masks = draw_hdn_masks(
            target[b], case.mask[b], len(u_lo), _UniformReplay(u_lo, unit), "official"
        )
        assert torch.equal(masks, torch.from_numpy(a["samples__hdn_masks"][i]))
