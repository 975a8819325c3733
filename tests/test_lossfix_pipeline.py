"""The whole official loss list (``loss_set.loss_terms``) against the official ``get_loss``.

Each ``pipeline__<config>__<scene>.npz`` of ``../shared/lossfix`` holds every term of one config's
loss list run through the official ``BaseDepthModel.get_loss`` on one scene, the total, the
gradients of the final prediction, confidence and normal output, and every random draw. The
config's preset (``loss_presets.preset``) with the recorded draws must give, in float64, every
term and the total at rtol 1e-9 (a PWN term 1e-6) and the gradients at 1e-8 * max|g|; in float32
the total at rtol 2e-5, each term at rtol 1e-5 (+1e-8), the gradients at 2e-4 * max|g| (README
"Tolerances").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lossfix_util import (
    F32_GRAD_FRAC,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_GRAD_FRAC,
    F64_VALUE_RTOL,
    PIPELINE_F32_TERM_RTOL,
    PIPELINE_F32_TOTAL_RTOL,
    PWN_F64_TOL,
    Case,
    case_params,
    grad_error,
    load_case,
    value_error,
)
from metricdepth.train.loss_depth import OFFICIAL_DATA_TYPES, data_type_mask
from metricdepth.train.loss_normal import normal_branch_loss
from metricdepth.train.loss_presets import LossTerm, preset
from metricdepth.train.loss_set import LOSS_NAMES, loss_terms, terms_from_config

pytestmark = pytest.mark.lossfix

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
OUTPUT_KEYS = ("predictions_list", "confidence_list", "normal_out_list")
#: Stored gradient -> the output list whose last entry it belongs to.
GRADS = {
    "prediction": "predictions_list",
    "confidence": "confidence_list",
    "prediction_normal": "normal_out_list",
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def outputs_of(case: Case, dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    return {key: case.leaves(key, dtype) for key in OUTPUT_KEYS}


def batch_of(case: Case, dtype: torch.dtype) -> dict:
    """The official ``paras`` inputs: labels in ``dtype``; K float32 and scale float64 as stored."""
    batch = {k: case.scene_tensor(k, dtype) for k in ("target", "normal")}
    batch.update({k: case.scene_tensor(k) for k in ("intrinsic", "pad", "scale", "sem_mask")})
    batch["dataset"] = list(case.meta["dataset"])
    batch["data_type"] = [tuple(case.meta["data_type"])]  # as the default collation gives it
    return batch


def samples_of(case: Case) -> dict[str, np.ndarray]:
    return {k: v for k, v in case.arrays.items() if k.startswith("samples__")}


def run_pipeline(case: Case, dtype: torch.dtype, mode: str = "official", **kwargs):
    outputs = outputs_of(case, dtype)
    batch = batch_of(case, dtype)
    terms = kwargs.pop("terms", preset(Path(case.meta["config"]).name).losses)
    if "generator" not in kwargs:
        kwargs["samples"] = samples_of(case)
    out = loss_terms(outputs, batch, terms, mode=mode, **kwargs)
    return out, outputs, batch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("pipeline__*.npz"))
def test_pipeline_parity(path, dtype):
    case = load_case(path)
    out, outputs, batch = run_pipeline(case, dtype)
    official = dict(case.meta["terms" if dtype == torch.float64 else "terms_f32"])
    official["total"] = official.pop("total_loss")
    assert set(out) == set(official)
    assert float(case.arrays["value"]) == case.meta["terms"]["total_loss"]
    errors = {}
    for key, want in official.items():
        got = float(out[key].detach())
        assert out[key].dtype == dtype, key
        errors[key] = value_error(out[key], want)
        if dtype == torch.float64:
            tol = PWN_F64_TOL if "PWN" in key else F64_VALUE_RTOL
            assert abs(got - want) <= tol * abs(want), (key, got, want, errors[key])
        else:
            rtol = PIPELINE_F32_TOTAL_RTOL if key == "total" else PIPELINE_F32_TERM_RTOL
            assert abs(got - want) <= rtol * abs(want) + F32_VALUE_ATOL, (key, got, want)
    out["total"].backward()
    pwn_active = official.get("decode_PWNPlanesLoss", 0.0) != 0.0
    if dtype == torch.float64:
        g_tol = PWN_F64_TOL if pwn_active else F64_GRAD_FRAC
    else:
        g_tol = F32_GRAD_FRAC
    g_errors = {}
    for name, key in GRADS.items():
        g_errors[name] = grad_error(outputs[key][-1].grad, case.arrays[f"grad__{name}"])
        assert g_errors[name] <= g_tol, (name, g_errors[name])
    # the caller's tensors are never written (the official DeNo writes -1e4 into them)
    for key in OUTPUT_KEYS:
        stored = case.scene_tensor(key, dtype)
        assert all(torch.equal(x.detach(), stored[i]) for i, x in enumerate(outputs[key]))
    worst = max(errors, key=errors.get)
    print(
        f"LOSSFIX {case.name} {str(dtype)[6:]} total_rel={errors['total']:.3g} "
        f"worst_term={worst}:{errors[worst]:.3g} "
        + " ".join(f"grad_{k}={v:.3g}" for k, v in g_errors.items())
    )


@pytest.mark.parametrize("path", case_params("pipeline__vit.raft5.small__mixed.npz"))
def test_config_mapping_equals_preset(path):
    """A short-name mapping with the pre-training weights reproduces the preset's terms."""
    case = load_case(path)
    config = {
        "vnl": 1.0,
        "gru_sequence": 0.5,
        "sky": 0.001,
        "hdn": 0.5,
        "hdsn": {"weight": 0.5, "batch_limit": 4},
        "pwn_planes": 1,
        "normal_branch": 1.0,
        "deno": {"weight": 0.01, "depth_detach": True},
        "sky_gru": 0.001,
    }
    terms = terms_from_config(config)
    assert [(t.loss, t.branch, t.weight) for t in terms] == [
        (t.loss, t.branch, float(t.weight)) for t in preset("vit.raft5.small").losses
    ]
    ours, _, _ = run_pipeline(case, torch.float64, terms=terms)
    want, _, _ = run_pipeline(case, torch.float64)
    assert list(ours) == list(want)
    assert all(torch.equal(ours[k], want[k]) for k in want)


def test_config_mapping_errors():
    with pytest.raises(ValueError, match="unknown loss 'vnl_loss'; known: gru_sequence, vnl"):
        terms_from_config({"vnl_loss": 1.0})
    with pytest.raises(ValueError, match="unknown argument.*ratio.*known: weight, sample_ratio"):
        terms_from_config({"vnl": {"weight": 1.0, "ratio": 0.3}})
    with pytest.raises(ValueError, match="missing 'weight'"):
        terms_from_config({"hdn": {"random_num": 5}})
    with pytest.raises(ValueError, match="weight must be a number"):
        terms_from_config({"hdn": "0.5"})
    (term,) = terms_from_config({"hdn": {"weight": 0.25, "random_num": 5}})
    assert (term.loss, term.branch, term.weight, term.kwargs_dict()) == (
        "HDNRandomLoss",
        "decoder",
        0.25,
        {"random_num": 5},
    )
    assert set(LOSS_NAMES) >= {"gru_sequence", "vnl", "hdn", "hdsn", "deno", "sky_gru"}


@pytest.mark.parametrize("path", case_params("pipeline__vit.raft5.small__mixed.npz"))
def test_loss_list_errors(path):
    case = load_case(path)
    outputs, batch = outputs_of(case, torch.float64), batch_of(case, torch.float64)
    with pytest.raises(ValueError, match="gru branch runs only"):
        loss_terms(outputs, batch, (LossTerm("VNLoss", "gru", 1.0, (), 0),))
    with pytest.raises(ValueError, match="appears twice"):
        loss_terms(outputs, batch, terms_from_config({"vnl": 1.0}) * 2)
    with pytest.raises(KeyError, match="normal_out_list"):
        loss_terms(
            {"predictions_list": outputs["predictions_list"]},
            batch,
            terms_from_config({"normal_branch": 1.0}),
        )
    with pytest.raises(ValueError, match="mode"):
        loss_terms(outputs, batch, (), mode="exact")
    with pytest.raises(ValueError, match="data_type has 3 names"):
        loss_terms(outputs, {**batch, "data_type": ["lidar"] * 3}, ())


@pytest.mark.parametrize("path", case_params("pipeline__vit.raft5.giant2__indoor9.npz"))
def test_official_deno_overwrites_for_later_losses(path):
    """Quirk 8: after DeNo, official mode shows later losses kappa = -1e4 outside DeNo's region.

    On ``indoor9`` both samples are padded, so the region misses pixels with normal labels. With
    DeNo first, NormalBranch's final-output term sees those kappas; corrected mode, and official
    mode with DeNo last (every released config), do not depend on the order.
    """
    case = load_case(path)
    before = terms_from_config({"deno": 0.01, "normal_branch": 1.0})
    after = terms_from_config({"normal_branch": 1.0, "deno": 0.01})
    values = {}
    for mode in ("official", "corrected"):
        for name, terms in (("before", before), ("after", after)):
            out, outputs, _ = run_pipeline(case, torch.float64, mode, terms=terms)
            values[mode, name] = {k: float(v.detach()) for k, v in out.items()}
            for key in OUTPUT_KEYS:  # never written
                stored = case.scene_tensor(key, torch.float64)
                assert all(torch.equal(x.detach(), stored[i]) for i, x in enumerate(outputs[key]))
    nb = "decode_NormalBranchLoss"
    assert values["corrected", "before"] == values["corrected", "after"]
    assert values["official", "after"][nb] == pytest.approx(case.meta["terms"][nb] / 1.5, rel=1e-12)
    assert abs(values["official", "before"][nb] - values["official", "after"][nb]) > 1e-3
    # the same as NormalBranch on a copy whose final kappa is -1e4 outside the region
    batch = batch_of(case, torch.float64)
    normals = [x.detach().clone() for x in outputs_of(case, torch.float64)["normal_out_list"]]
    pad = batch["pad"]
    h, w = normals[-1].shape[-2:]
    for b in range(2):
        top, bottom, left, right = (int(v) for v in pad[b])
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[top + 2 : h - bottom - 2, left + 2 : w - right - 2] = True
        normals[-1][b, 3][~inside] = -1e4
    mask = data_type_mask(
        batch["target"], case.meta["data_type"], OFFICIAL_DATA_TYPES["NormalBranchLoss"]
    )
    want = normal_branch_loss(normals, batch["normal"], mask)
    assert values["official", "before"][nb] == pytest.approx(float(want), rel=1e-12)


@pytest.mark.parametrize("path", case_params("pipeline__vit.raft5.small__mixed.npz"))
def test_drawing_with_a_generator(path):
    """Without samples the random losses draw from the generator: same seed, same terms."""
    case = load_case(path)
    runs = [
        run_pipeline(case, torch.float64, generator=np.random.default_rng(seed))[0]
        for seed in (5, 5, 6)
    ]
    assert all(math.isfinite(float(v.detach())) for v in runs[0].values())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    for key in ("decode_VNLoss", "decode_HDNRandomLoss", "decode_HDSNRandomLoss"):
        assert float(runs[0][key].detach()) != float(runs[2][key].detach()), key
    for key in ("decode_GRUSequenceLoss", "decode_NormalBranchLoss", "decode_DeNoConsistencyLoss"):
        assert torch.equal(runs[0][key], runs[2][key]), key
    recorded, _, _ = run_pipeline(case, torch.float64)
    assert float(recorded["decode_VNLoss"].detach()) != float(runs[0]["decode_VNLoss"].detach())


@pytest.mark.parametrize("path", case_params("pipeline__vit.raft5.small__lidar.npz"))
def test_corrected_mode_runs_the_corrected_losses(path):
    """Corrected mode: the same GRU value (quirk 3 moves only gradients), another HDSN (quirk 2)."""
    case = load_case(path)
    official, _, _ = run_pipeline(case, torch.float64, "official")
    corrected, outputs, _ = run_pipeline(case, torch.float64, "corrected")
    gru = "decode_GRUSequenceLoss"
    assert float(corrected[gru].detach()) == pytest.approx(float(official[gru].detach()), rel=1e-12)
    hdsn = "decode_HDSNRandomLoss"
    assert abs(float(corrected[hdsn].detach()) - float(official[hdsn].detach())) > 1e-3
    corrected["total"].backward()
    assert all(x.grad is not None for x in outputs["predictions_list"])


@pytest.mark.parametrize("path", case_params("pipeline__vit.raft5.small__mixed.npz"))
def test_low_precision_inputs_and_autocast(path):
    """bf16 autocast around the call and bf16 outputs: the losses still run in float32."""
    case = load_case(path)
    ref, _, _ = run_pipeline(case, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, _, _ = run_pipeline(case, torch.float32)
    assert auto["total"].dtype == torch.float32
    assert abs(
        float(auto["total"].detach()) - float(ref["total"].detach())
    ) <= F32_VALUE_RTOL * abs(float(ref["total"].detach()))
    # bf16 outputs give the float32 terms of their (bf16-rounded) values
    low = {k: [x.to(torch.bfloat16) for x in v] for k, v in outputs_of(case, torch.float32).items()}
    rounded = {k: [x.float() for x in v] for k, v in low.items()}
    args = (batch_of(case, torch.float32), preset("vit.raft5.small").losses)
    out = loss_terms(low, *args, samples=samples_of(case))
    want = loss_terms(rounded, *args, samples=samples_of(case))
    for key, value in want.items():
        assert out[key].dtype == torch.float32, key
        got, ref_value = float(out[key].detach()), float(value.detach())
        assert abs(got - ref_value) <= F32_VALUE_RTOL * abs(ref_value) + F32_VALUE_ATOL, key


@pytest.mark.parametrize(
    "path",
    [
        p
        for pattern in ("VNLoss__*.npz", "NormalBranchLoss__*.npz", "DeNoConsistencyLoss__*.npz")
        for p in case_params(pattern)
    ],
)
def test_geometry_data_type_masks_equal_recorded(path):
    """``OFFICIAL_DATA_TYPES`` of VNL, NormalBranch and DeNo rebuild the recorded masks."""
    case = load_case(path)
    got = data_type_mask(
        case.scene_tensor("target", torch.float64),
        list(case.scene_meta["data_type"]),
        OFFICIAL_DATA_TYPES[case.meta["loss_class"]],
    )
    assert torch.equal(got, case.mask)


def test_single_output_runs_the_gru_branch_on_nothing():
    """With one output the gru branch has no term (the official loop stops before weighting)."""
    torch.manual_seed(0)
    pred = (torch.rand(1, 1, 8, 8, dtype=torch.float64) + 1).requires_grad_(True)
    target = torch.full((1, 1, 8, 8), 1.5, dtype=torch.float64)
    sem = torch.full((1, 1, 8, 8), 142, dtype=torch.int32)
    batch = {"target": target, "sem_mask": sem, "dataset": ["KITTI"], "data_type": ["lidar"]}
    terms = terms_from_config({"silog": 1.0, "sky_gru": 0.5})
    for mode in ("official", "corrected"):
        out = loss_terms({"predictions_list": [pred]}, batch, terms, mode=mode)
        assert list(out) == ["decode_SilogLoss", "total"]
        assert torch.equal(out["total"], out["decode_SilogLoss"])
