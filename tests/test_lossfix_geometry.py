"""Parity of VNL, PWN planes, NormalBranch and DeNo with the official Metric3D v2 losses.

Golden values, gradients and random draws: ``shared/lossfix`` (its README states the formulas,
quirks and tolerances). Each case runs in float64 and float32 with the recorded draws injected.
Corrected-mode tests check on small constructed inputs that the documented bugs are fixed.

Tolerances: the README's (float64: value rtol 1e-9, gradients 1e-8*max|g|, PWN 1e-6; float32:
value rtol 1e-5, gradients 2e-4*max|g|), against the float64 golden values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lossfix_util import (
    F32_GRAD_FRAC,
    F32_VALUE_ATOL,
    F32_VALUE_RTOL,
    F64_GRAD_FRAC,
    F64_VALUE_RTOL,
    PWN_F64_TOL,
    Case,
    case_params,
    grad_error,
    load_case,
    load_scene,
    tensor,
)
from metricdepth.train.loss_geometry import (
    FirstBatchPrincipalPoint,
    depth_to_normal,
    draw_pwn_triplets,
    draw_vnl_triplets,
    pwn_planes_loss,
    vnl_loss,
)
from metricdepth.train.loss_normal import deno_consistency_loss, normal_branch_loss

pytestmark = pytest.mark.lossfix

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check(case: Case, dtype: torch.dtype, value, grads, *, pwn: bool = False):
    """Compare ``value`` and ``grads`` ({key: tensor-or-None}) with the case file."""
    if dtype == torch.float64:
        v_tol = PWN_F64_TOL if pwn else F64_VALUE_RTOL
        g_tol = PWN_F64_TOL if pwn else F64_GRAD_FRAC
        want = float(case.arrays["value"])
        assert abs(float(value.detach()) - want) <= v_tol * abs(want), (float(value), want)
    else:
        g_tol = F32_GRAD_FRAC
        want = float(case.arrays["value"])
        got = float(value.detach())
        assert abs(got - want) <= F32_VALUE_RTOL * abs(want) + F32_VALUE_ATOL, (got, want)
    for key, got in grads.items():
        err = grad_error(got, case.arrays[key])
        assert err <= g_tol, (key, err)


# ---------------------------------------------------------------------------------------------
# VNL
# ---------------------------------------------------------------------------------------------


def run_vnl(case: Case, dtype: torch.dtype, mode: str = "official"):
    s = case.scene
    pred = tensor(s["predictions_list"][-1], dtype, grad=True)
    intrinsic = tensor(s["intrinsic"])
    centre = None
    if mode == "official":
        cache = FirstBatchPrincipalPoint()
        if case.meta.get("prelude"):  # first called on scene__indoor (quirk 4)
            assert "scene__indoor" in case.meta["prelude"]
            cache(tensor(load_scene("indoor")["intrinsic"]), s["target"].shape)
        centre = cache(intrinsic, s["target"].shape)
    loss = vnl_loss(
        pred,
        tensor(s["target"], dtype),
        intrinsic,
        mask=tensor(case.arrays["mask"]),
        triplets=tensor(case.arrays["samples__vnl_p_idx"]),
        sample_ratio=case.kwargs["sample_ratio"],
        weight=case.kwargs["loss_weight"],
        mode=mode,
        principal_point_from=centre,
    )
    loss.backward()
    return loss, pred


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("VNLoss__*.npz"))
def test_vnl_parity(path, dtype):
    case = load_case(path)
    loss, pred = run_vnl(case, dtype)
    check(case, dtype, loss, {"grad__prediction": pred.grad})


def test_vnl_stale_principal_point_is_quirk_4():
    case = load_case(case_params("VNLoss__pre__lidar_after_indoor.npz")[0].values[0])
    s = case.scene
    common = dict(
        mask=tensor(case.arrays["mask"]), triplets=tensor(case.arrays["samples__vnl_p_idx"])
    )
    pred = tensor(s["predictions_list"][-1], torch.float64)
    target = tensor(s["target"], torch.float64)
    own = vnl_loss(pred, target, tensor(s["intrinsic"]), mode="official", **common)
    # README quirk 4: with the batch's own u0, v0 the same triplets give 1.0205.
    assert abs(float(own.detach()) - 1.0205) < 1e-4
    assert abs(float(case.arrays["value"]) - float(own.detach())) > 0.05
    with pytest.raises(ValueError, match="official"):
        vnl_loss(pred, target, tensor(s["intrinsic"]), principal_point_from=tensor(s["intrinsic"]))


def test_first_batch_principal_point_cache():
    cache = FirstBatchPrincipalPoint()
    k1, k2 = torch.eye(3).expand(2, 3, 3).clone(), 2 * torch.eye(3).expand(2, 3, 3)
    assert torch.equal(cache(k1, (2, 1, 8, 8)), k1)
    assert torch.equal(cache(k2, (2, 1, 8, 8)), k1)  # same shape: stale
    assert torch.equal(cache(k2, (2, 1, 8, 9)), k2)  # new shape: rebuilt


def _plane_depth(k: torch.Tensor, normal: torch.Tensor, dist: float, h: int, w: int):
    """(1,1,H,W) depth of the plane n.X = dist seen by pinhole K (float64)."""
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    x = (u - k[0, 2]) / k[0, 0]
    y = (v - k[1, 2]) / k[1, 1]
    return (dist / (normal[0] * x + normal[1] * y + normal[2]))[None, None]


def test_vnl_corrected_uses_fy_and_own_principal_point():
    """Two planes: every kept triplet's loss is the L1 distance of the true unit normals."""
    h, w = 40, 56
    k = torch.tensor([[300.0, 0, 21.5], [0, 520.0, 31.25], [0, 0, 1]], dtype=torch.float64)
    n1 = torch.tensor([0.6, -0.9, 1.0], dtype=torch.float64)
    n2 = torch.tensor([-0.3, 0.5, 1.0], dtype=torch.float64)
    n1, n2 = n1 / n1.norm(), n2 / n2.norm()
    target = _plane_depth(k, n1, 3.0, h, w)
    pred = _plane_depth(k, n2, 4.0, h, w)
    assert (target > 0).all() and (pred > 0).all()
    gen = torch.Generator().manual_seed(0)
    trip = draw_vnl_triplets(target > 0, 0.2, gen)
    kk = k[None].float()
    expected = float((n1 - n2).abs().sum())
    got = vnl_loss(pred, target, kk, triplets=trip)
    assert abs(float(got.detach()) - expected) < 1e-5 * expected
    official = vnl_loss(pred, target, kk, triplets=trip, mode="official")
    assert abs(float(official.detach()) - expected) > 1e-2


def test_draw_vnl_triplets_format():
    mask = torch.zeros(2, 1, 10, 12, dtype=torch.bool)
    mask[0, 0, 2:8, 3:9] = True  # 36 px >= int(0.2*120) = 24
    mask[1, 0, 0, 5:15] = True  # 7 px: padded with index 0
    trip = draw_vnl_triplets(mask, 0.2, torch.Generator().manual_seed(1))
    assert trip.shape == (2, 3, 24) and trip.dtype == torch.int64
    flat = mask.reshape(2, -1)
    assert flat[0][trip[0]].all()
    assert flat[1][trip[1, :, :7]].all() and (trip[1, :, 7:] == 0).all()
    for k in range(3):  # a permutation: no repeats within one point list
        assert trip[0, k].unique().numel() == 24


# ---------------------------------------------------------------------------------------------
# PWN planes
# ---------------------------------------------------------------------------------------------


def pwn_triplets(case: Case) -> list:
    b = case.scene["target"].shape[0]
    out: list = [None] * b
    if "samples__pwn_call_batch_index" in case.arrays:
        for i, s in enumerate(case.arrays["samples__pwn_call_batch_index"]):
            out[int(s)] = tensor(case.arrays[f"samples__pwn_call{i}_p_yx"])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("PWNPlanesLoss__*.npz"))
def test_pwn_parity(path, dtype):
    case = load_case(path)
    s = case.scene
    pred = tensor(s["predictions_list"][-1], dtype, grad=True)
    loss = pwn_planes_loss(
        pred,
        tensor(s["intrinsic"]),
        tensor(s["sem_mask"]),
        case.dataset,
        triplets=pwn_triplets(case),
        weight=case.kwargs["loss_weight"],
        mode="official",
    )
    loss.backward()
    if "error" in case.meta:
        # The official code raises here (quirk 5: a 64x80 Taskonomy sample whose planes are all
        # under 9000 px). We skip those planes, as the official code does whenever it does not
        # raise, so the loss is exactly 0 with a zero gradient.
        assert case.meta["error"].startswith("RuntimeError")
        assert float(loss.detach()) == 0.0
        assert torch.equal(pred.grad, torch.zeros_like(pred))
        return
    check(case, dtype, loss, {"grad__prediction": pred.grad}, pwn=True)


@pytest.mark.parametrize("path", case_params("PWNPlanesLoss__*.npz"))
def test_draw_pwn_triplets_matches_official_format(path):
    """Our draw gives the recorded shape, skips the same planes, and never raises."""
    case = load_case(path)
    ids = tensor(case.scene["sem_mask"])
    gen = torch.Generator().manual_seed(3)
    calls = case.arrays.get("samples__pwn_call_batch_index", np.zeros(0, np.int32))
    for i, b in enumerate(calls):
        yx = draw_pwn_triplets(ids[int(b), 0], 5000, gen)
        want = case.arrays[f"samples__pwn_call{i}_p_yx"]
        assert yx.shape == want.shape
        assert case.arrays[f"samples__pwn_call{i}_plane_ids"].tolist() == sorted(
            int(v) for v in ids[int(b), 0].unique() if int(v) != 0
        )
        for j, pid in enumerate(case.arrays[f"samples__pwn_call{i}_plane_ids"]):
            if case.arrays[f"samples__pwn_call{i}_valid_plane"][j]:
                assert (ids[int(b), 0][yx[j, :, :, 0], yx[j, :, :, 1]] == int(pid)).all()
    if "error" in case.meta:  # the sample the official code fails on
        for b, name in enumerate(case.dataset):
            if name == "Taskonomy":
                draw_pwn_triplets(ids[b, 0], 5000, gen)


def test_pwn_corrected_axes():
    """README quirk 5: the conventional (col, row) grid gives 0.1324 on planes_b."""
    case = load_case(case_params("PWNPlanesLoss__pre__planes_b.npz")[0].values[0])
    s = case.scene
    pred = tensor(s["predictions_list"][-1], torch.float64)
    args = (pred, tensor(s["intrinsic"]), tensor(s["sem_mask"]), case.dataset)
    corrected = pwn_planes_loss(*args, triplets=pwn_triplets(case))
    assert abs(float(corrected.detach()) - 0.1324) < 1e-4
    assert abs(float(corrected.detach()) - float(case.arrays["value"])) > 1e-3


def test_pwn_perfect_plane_is_zero_and_others_ignored():
    h, w = 100, 160  # a 9600 px plane (>= 9000) and a 6400 px one (skipped)
    k = torch.tensor([[400.0, 0, 70.5], [0, 410.0, 52.0], [0, 0, 1]], dtype=torch.float64)
    n = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64)
    depth = _plane_depth(k, n / n.norm(), 2.5, h, w).repeat(2, 1, 1, 1).requires_grad_(True)
    ids = torch.zeros(2, 1, h, w, dtype=torch.int32)
    ids[:, :, :, :96] = 5
    ids[:, :, :, 96:] = 9
    gen = torch.Generator().manual_seed(0)
    loss = pwn_planes_loss(depth, k[None].expand(2, 3, 3), ids, ["Taskonomy", "NYU"], generator=gen)
    assert 0 <= float(loss.detach()) < 1e-5  # the +1e-8 / +1e-5 of the normalisations, not 0
    loss.backward()
    assert depth.grad[1].abs().max() == 0  # NYU sample: not a plane dataset


# ---------------------------------------------------------------------------------------------
# NormalBranch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("NormalBranchLoss__*.npz"))
def test_normal_branch_parity(path, dtype):
    case = load_case(path)
    s = case.scene
    outs = [tensor(o, dtype, grad=True) for o in s["normal_out_list"]]
    loss = normal_branch_loss(
        outs,
        tensor(s["normal"], dtype),
        tensor(case.arrays["mask"]),
        weight=case.kwargs["loss_weight"],
    )
    loss.backward()
    want = case.arrays["grad__normal_out_list"]
    tol = F64_GRAD_FRAC if dtype == torch.float64 else F32_GRAD_FRAC
    for i, out in enumerate(outs):
        assert grad_error(out.grad, want[i]) <= tol, i
    check(case, dtype, loss, {})


def test_normal_branch_single_output_and_nothing_labelled():
    torch.manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(1, 3, 8, 8, dtype=torch.float64), dim=1)
    out = torch.cat([n.roll(1, 2), torch.full((1, 1, 8, 8), 2.0, dtype=torch.float64)], 1)
    out.requires_grad_(True)
    loss = normal_branch_loss([out], n, torch.ones(1, 1, 8, 8, dtype=torch.bool))
    cos = torch.nn.functional.cosine_similarity(out[:, :3], n, dim=1).detach()
    keep = cos.abs() < 0.999
    k = 2.0
    want = (
        -math.log(k * k + 1) + k * torch.acos(cos[keep]) + math.log(1 + math.exp(-k * math.pi))
    ).mean()
    assert abs(float(loss.detach()) - float(want)) < 1e-12
    empty = normal_branch_loss([out], n, torch.zeros(1, 1, 8, 8, dtype=torch.bool))
    empty.backward()
    assert float(empty.detach()) == 0.0 and torch.equal(out.grad, torch.zeros_like(out))


# ---------------------------------------------------------------------------------------------
# DeNo
# ---------------------------------------------------------------------------------------------


def deno_inputs(case: Case, dtype: torch.dtype):
    s = case.scene
    return dict(
        prediction=tensor(s["predictions_list"][-1], dtype, grad=True),
        confidence=tensor(s["confidence_list"][-1], dtype),
        normal_pred=tensor(s["normal_out_list"][-1], dtype, grad=True),
        intrinsic=tensor(s["intrinsic"]),
        pad=tensor(s["pad"]),
        scale=tensor(s["scale"]),
        dataset=case.dataset,
    )


def deno_kwargs(case: Case) -> dict:
    k = case.kwargs
    assert k["loss_fn"] == "CEL"
    return dict(
        weight=k["loss_weight"], depth_detach=k.get("depth_detach", False), nonorm_scale=k["scale"]
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", case_params("DeNoConsistencyLoss__*.npz"))
def test_deno_parity(path, dtype):
    case = load_case(path)
    inputs = deno_inputs(case, dtype)
    before = {k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    loss = deno_consistency_loss(
        **inputs, mask=tensor(case.arrays["mask"]), mode="official", **deno_kwargs(case)
    )
    loss.backward()
    for key, old in before.items():  # no in-place writes (quirk 8)
        assert torch.equal(inputs[key].detach(), old), key
    grads = {
        "grad__prediction": inputs["prediction"].grad,
        "grad__prediction_normal": inputs["normal_pred"].grad,
    }
    check(case, dtype, loss, grads)


def test_deno_corrected_honours_mask():
    """mixed: the sfm sample has an empty mask; official ignores it, corrected drops it."""
    case = load_case(case_params("DeNoConsistencyLoss__pre__mixed.npz")[0].values[0])
    mask = tensor(case.arrays["mask"])
    assert not mask[1].any() and mask[0].any()
    grads = {}
    for mode in ("official", "corrected"):
        inputs = deno_inputs(case, torch.float64)
        loss = deno_consistency_loss(**inputs, mask=mask, mode=mode, **deno_kwargs(case))
        loss.backward()
        grads[mode] = inputs["normal_pred"].grad
        # nothing outside the mask reaches the loss in corrected mode
        outside = ~mask.expand(-1, 4, -1, -1)
        if mode == "corrected":
            assert grads[mode][outside].abs().max() == 0
    assert grads["official"][1].abs().max() > 0
    assert grads["official"][0].abs().max() > 0 and grads["corrected"][0].abs().max() > 0


def test_depth_to_normal_plane():
    h, w = 30, 40
    k = torch.tensor([[200.0, 0, 17.5], [0, 230.0, 12.0], [0, 0, 1]], dtype=torch.float64)
    n = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
    n = n / n.norm()
    depth = _plane_depth(k, n, 2.0, h, w)
    valid = torch.ones(1, 1, h, w, dtype=torch.bool)
    valid[..., 10, 10] = False
    normal, ok = depth_to_normal(depth, k[None], valid)
    # facing the camera: n.X > 0 for this plane, so the estimate is -n. The +1e-4 inside the
    # square roots shortens small normals, so compare directions.
    length = normal.norm(dim=1)[ok[:, 0]]
    assert length.max() <= 1.0 and length.min() > 0.5
    cos = -(normal * n[None, :, None, None]).sum(1)[ok[:, 0]] / length
    assert (1 - cos).max() < 1e-9
    assert not ok[0, 0, :2].any() and not ok[0, 0, 10, 10] and not ok[0, 0, 10, 8]
    assert ok[0, 0, 2:-2, 2:-2].sum() == (h - 4) * (w - 4) - 5


# ---------------------------------------------------------------------------------------------
# bf16 (quirk 11): the losses run in float32 even for bf16 inputs or inside autocast
# ---------------------------------------------------------------------------------------------


def _bf16_round(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.array(a)).to(torch.bfloat16).float().numpy()


def _bf16_runs(call):
    """Run ``call(dtype, autocast)`` three ways; return (float32, bf16 inputs, autocast)."""
    ref = call(torch.float32, False)
    low = call(torch.bfloat16, False)
    auto = call(torch.float32, True)
    return ref, low, auto


def _compare_bf16(ref, low, auto):
    """bf16 inputs and autocast give the float32 value within the float32 tolerance; gradients
    too (for bf16 leaves: the float32 gradient rounded to bf16, as the cast's backward does)."""
    (v_ref, g_ref), (v_low, g_low), (v_auto, g_auto) = ref, low, auto
    assert v_low.dtype == torch.float32 and v_auto.dtype == torch.float32
    for v, g in ((v_low, g_low), (v_auto, g_auto)):
        assert (
            abs(float(v.detach()) - float(v_ref.detach()))
            <= F32_VALUE_RTOL * abs(float(v_ref.detach())) + F32_VALUE_ATOL
        )
        for a, b in zip(g, g_ref, strict=True):
            b = b.to(a.dtype).float()
            scale = float(b.abs().max())
            assert float((a.float() - b).abs().max()) <= F32_GRAD_FRAC * max(scale, 1e-30)


def _ctx(on: bool):
    return (
        torch.autocast("cpu", dtype=torch.bfloat16) if on else torch.autocast("cpu", enabled=False)
    )


def test_bf16_vnl():
    case = load_case(case_params("VNLoss__pre__indoor.npz")[0].values[0])
    s = case.scene
    pred_np, tgt_np = _bf16_round(s["predictions_list"][-1]), _bf16_round(s["target"])

    def call(dtype, auto):
        pred = tensor(pred_np, dtype, grad=True)
        with _ctx(auto):
            v = vnl_loss(
                pred,
                tensor(tgt_np, dtype),
                tensor(s["intrinsic"]),
                mask=tensor(case.arrays["mask"]),
                triplets=tensor(case.arrays["samples__vnl_p_idx"]),
            )
        v.backward()
        return v, [pred.grad]

    _compare_bf16(*_bf16_runs(call))


def test_bf16_pwn():
    case = load_case(case_params("PWNPlanesLoss__pre__planes_b.npz")[0].values[0])
    s = case.scene
    pred_np = _bf16_round(s["predictions_list"][-1])

    def call(dtype, auto):
        pred = tensor(pred_np, dtype, grad=True)
        with _ctx(auto):
            v = pwn_planes_loss(
                pred,
                tensor(s["intrinsic"]),
                tensor(s["sem_mask"]),
                case.dataset,
                triplets=pwn_triplets(case),
            )
        v.backward()
        return v, [pred.grad]

    _compare_bf16(*_bf16_runs(call))


def test_bf16_normal_branch():
    case = load_case(case_params("NormalBranchLoss__pre__indoor.npz")[0].values[0])
    s = case.scene
    outs_np = [_bf16_round(o) for o in s["normal_out_list"]]
    normal_np = _bf16_round(s["normal"])

    def call(dtype, auto):
        outs = [tensor(o, dtype, grad=True) for o in outs_np]
        with _ctx(auto):
            v = normal_branch_loss(outs, tensor(normal_np, dtype), tensor(case.arrays["mask"]))
        v.backward()
        return v, [o.grad for o in outs]

    _compare_bf16(*_bf16_runs(call))


def test_bf16_deno():
    case = load_case(case_params("DeNoConsistencyLoss__ft__indoor.npz")[0].values[0])
    s = case.scene
    rounded = {k: _bf16_round(s[k][-1]) for k in ("predictions_list", "normal_out_list")}

    def call(dtype, auto):
        inputs = deno_inputs(case, torch.float32)
        inputs["prediction"] = tensor(rounded["predictions_list"], dtype, grad=True)
        inputs["normal_pred"] = tensor(rounded["normal_out_list"], dtype, grad=True)
        with _ctx(auto):
            v = deno_consistency_loss(
                **inputs, mask=tensor(case.arrays["mask"]), **deno_kwargs(case)
            )
        v.backward()
        return v, [inputs["prediction"].grad, inputs["normal_pred"].grad]

    _compare_bf16(*_bf16_runs(call))


def test_bf16_guard_matters():
    """Without the float32 guard, autocast moves DeNo's value beyond the float32 tolerance."""
    case = load_case(case_params("DeNoConsistencyLoss__ft__indoor.npz")[0].values[0])
    kwargs = dict(mask=tensor(case.arrays["mask"]), mode="official", **deno_kwargs(case))
    ref = deno_consistency_loss(**deno_inputs(case, torch.float32), **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guarded = deno_consistency_loss(**deno_inputs(case, torch.float32), **kwargs)
        bare = deno_consistency_loss.__wrapped__(**deno_inputs(case, torch.float32), **kwargs)
    tol = F32_VALUE_RTOL * abs(float(ref.detach())) + F32_VALUE_ATOL
    assert abs(float(guarded.detach()) - float(ref.detach())) <= tol
    assert abs(float(bare.detach()) - float(ref.detach())) > 10 * tol
