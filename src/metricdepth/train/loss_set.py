"""Run a whole configured loss list, as the official Metric3D v2 ``BaseDepthModel.get_loss``.

``loss_terms(outputs, batch, terms)`` evaluates every ``LossTerm`` (from
``loss_presets.preset(name).losses`` or from ``terms_from_config``) and returns each term under
the official ``losses_dict`` key plus ``"total"``:

- the ``decoder`` branch runs each loss on the final outputs (``decode_<Class>``), with the
  official per-loss mask ``target > 1e-8`` restricted to the samples of an accepted data type;
- the ``gru`` branch runs each loss on outputs 0..N-2 (``gru_<i>_<Class>``), times the GRU
  weight ``w_i`` of output i;
- ``total`` is their sum in that order.

``outputs``: ``predictions_list`` N x (B, 1, H, W) canonical metres, ``confidence_list``
N x (B, 1, H, W) raw confidence, ``normal_out_list`` N x (B, 4, H, W) normal + kappa; the last
entry of each list is the final output. ``batch`` (the official ``paras`` names): ``target``
(B, 1, H, W) canonical metres (<= 0 unlabelled), ``intrinsic`` (B, 3, 3) canonical K, ``pad``
(B, 4) [top, bottom, left, right], ``scale`` (B,), ``sem_mask`` (B, 1, H, W) int, ``normal``
(B, 3, H, W), ``dataset`` B names, ``data_type`` B names (or the collated ``[tuple]``), and
optionally ``stereo_depth`` (B, 1, H, W).

Random draws: ``samples`` (the recorded draws, keyed as in the ``shared/lossfix`` files:
``samples__vnl_p_idx``, ``samples__hdn_masks`` ...; the ``samples__`` prefix is optional)
or else ``generator`` (``numpy.random.Generator``; VNL and PWN draw with a torch generator
seeded from it). Everything runs in the inputs' float32/float64 with autocast disabled
(float16/bfloat16 inputs are computed in float32; quirk 11).

``mode="official"`` passes ``official`` to every loss that has a mode and copies DeNo's
in-place writes (quirk 8): the losses after a ``DeNoConsistencyLoss`` see the final confidence
and kappa set to -1e4 outside DeNo's valid region (without touching the caller's tensors).
Not reproduced: VNL's principal point cached across batches (quirk 4; one call here uses the
batch's own K, as the official code does on its first batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metricdepth.train.loss_depth import (
    OFFICIAL_DATA_TYPES,
    data_type_mask,
    gru_sequence_loss,
    gru_step_weights,
    metric3d_silog_loss,
    sky_regularization_loss,
)
from metricdepth.train.loss_geometry import depth_to_normal, pwn_planes_loss, vnl_loss
from metricdepth.train.loss_guard import check_mode, upcast
from metricdepth.train.loss_normal import deno_consistency_loss, normal_branch_loss, pad_mask
from metricdepth.train.loss_presets import LossTerm
from metricdepth.train.loss_ranking import hdn_random_loss, hdsn_random_loss

#: Short config names -> (official class, branch, default constructor arguments). The defaults
#: are those of the pre-training configs (``vit.raft5.small``); SiLog's are its docstring's.
LOSS_NAMES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gru_sequence": ("GRUSequenceLoss", "decoder", {"loss_gamma": 0.9, "stereo_sup": 0.0}),
    "vnl": ("VNLoss", "decoder", {"sample_ratio": 0.2}),
    "hdn": ("HDNRandomLoss", "decoder", {"random_num": 10}),
    "hdsn": ("HDSNRandomLoss", "decoder", {"random_num": 20, "batch_limit": 4}),
    "pwn_planes": ("PWNPlanesLoss", "decoder", {"sample_groups": 5000}),
    "normal_branch": ("NormalBranchLoss", "decoder", {"loss_fn": "NLL_ours_GRU"}),
    "deno": (
        "DeNoConsistencyLoss",
        "decoder",
        {"loss_fn": "CEL", "scale": 2, "depth_detach": False},
    ),
    "sky": (
        "SkyRegularizationLoss",
        "decoder",
        {"sample_ratio": 0.4, "regress_value": 200, "normal_regress": (0, 0, -1)},
    ),
    "sky_gru": (
        "SkyRegularizationLoss",
        "gru",
        {"sample_ratio": 0.4, "regress_value": 200, "normal_regress": (0, 0, -1)},
    ),
    "silog": ("SilogLoss", "decoder", {"variance_focus": 0.5}),
}

#: Losses the ``gru`` branch can run (one output each, no random draws).
GRU_BRANCH_LOSSES = ("SkyRegularizationLoss", "SilogLoss")

DENO_FILL = -1e4

#: Outputs a loss cannot run without.
_NEEDS = {
    "NormalBranchLoss": ("normal_out_list",),
    "DeNoConsistencyLoss": ("normal_out_list", "confidence_list"),
}


def terms_from_config(config: Mapping[str, Any]) -> tuple[LossTerm, ...]:
    """LossTerms from a user mapping ``{short_name: weight | {"weight": w, **arguments}}``.

    Short names are the keys of ``LOSS_NAMES`` (e.g. ``{"gru_sequence": 0.5, "vnl": 1.0,
    "hdn": 0.5, "sky_gru": 0.001}``); arguments use the official constructor names and default
    to the pre-training configs' values. Terms keep the mapping's order (``line`` is 0: not
    from a config file). Unknown names or arguments raise ``ValueError`` listing the known ones.
    """
    out = []
    for name, spec in config.items():
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}")
        loss, branch, defaults = LOSS_NAMES[name]
        if isinstance(spec, Mapping):
            args = dict(spec)
            if "weight" not in args:
                raise ValueError(f"loss {name!r}: missing 'weight'")
            weight = args.pop("weight")
        else:
            weight, args = spec, {}
        unknown = sorted(set(args) - set(defaults))
        if unknown:
            raise ValueError(
                f"loss {name!r}: unknown argument(s) {', '.join(unknown)}; "
                f"known: weight, {', '.join(defaults)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"loss {name!r}: weight must be a number, got {weight!r}")
        kwargs = {**defaults, **args}
        out.append(LossTerm(loss, branch, float(weight), tuple(kwargs.items()), 0))
    return tuple(out)


def config_from_terms(terms: Sequence[LossTerm]) -> dict[str, dict[str, Any]]:
    """The ``terms_from_config`` mapping of ``terms`` (e.g. ``preset(name).losses``):
    ``{short_name: {"weight": w, **official arguments}}``, JSON values (tuples as lists).

    ``terms_from_config(config_from_terms(terms))`` gives the same losses, weights and
    arguments (unset arguments filled with the defaults of ``LOSS_NAMES``).
    """
    short = {(loss, branch): name for name, (loss, branch, _) in LOSS_NAMES.items()}
    out: dict[str, dict[str, Any]] = {}
    for term in terms:
        name = short.get((term.loss, term.branch))
        if name is None:
            raise ValueError(f"{term.loss} in the {term.branch} branch has no short name")
        if name in out:
            raise ValueError(f"{term.loss} appears twice in the {term.branch} branch")
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in term.kwargs}
        out[name] = {"weight": float(term.weight), **args}
    return out


def required_outputs(term: LossTerm) -> tuple[str, ...]:
    """The network outputs ``term`` cannot run without (``predictions_list`` always)."""
    return ("predictions_list", *_NEEDS.get(term.loss, ()))


# ------------------------------------------------------------------------------ helpers


def _names(values: Sequence[Any], batch: int, what: str) -> list[str]:
    """B names; the default collation's ``[tuple of B str]`` is unwrapped."""
    values = list(values)
    if len(values) == 1 and isinstance(values[0], (tuple, list)):
        values = list(values[0])
    if len(values) != batch:
        raise ValueError(f"{what} has {len(values)} names for a batch of {batch}")
    return [str(v) for v in values]


class _Samples:
    """Recorded draws (fixture format) or a generator to draw from."""

    def __init__(self, samples: Mapping[str, Any] | None, generator: np.random.Generator | None):
        self.recorded = None
        if samples is not None:
            self.recorded = {k.removeprefix("samples__"): v for k, v in samples.items()}
        self.rng = generator if generator is not None else np.random.default_rng()

    def get(self, key: str) -> np.ndarray:
        assert self.recorded is not None
        if key not in self.recorded:
            raise ValueError(f"samples has no 'samples__{key}'")
        return np.asarray(self.recorded[key])

    def torch_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.rng.integers(0, 2**63 - 1)))

    def per_call(self, prefix: str, item: str) -> dict[int, torch.Tensor]:
        """Sample index -> the recorded array of each call: ``item`` is a key with ``{i}``
        (one array per call) or without (one stacked array, indexed by call)."""
        calls = self.get(f"{prefix}_call_batch_index")
        out = {}
        for i, b in enumerate(calls):
            arr = self.get(item.format(i=i)) if "{i}" in item else self.get(item)[i]
            out[int(b)] = torch.from_numpy(np.array(arr))
        return out


def _run(
    term: LossTerm,
    *,
    preds: list[torch.Tensor],
    confs: list[torch.Tensor] | None,
    normals: list[torch.Tensor] | None,
    batch: Mapping[str, Any],
    dataset: list[str],
    data_type: list[str],
    samples: _Samples,
    mode: str,
) -> torch.Tensor:
    """One decoder-branch term on the final outputs (``preds[-1]`` ...)."""
    kw = term.kwargs_dict()
    name, w = term.loss, term.weight
    pred = preds[-1]
    target = batch["target"].to(pred.dtype)
    mask = data_type_mask(target, data_type, OFFICIAL_DATA_TYPES[name])
    rec = samples.recorded is not None
    if name == "GRUSequenceLoss":
        return gru_sequence_loss(
            preds,
            target,
            mask,
            confs,
            weight=w,
            gamma=kw.get("loss_gamma", 0.9),
            stereo_sup=kw.get("stereo_sup", 0.0),
            stereo_depth=batch.get("stereo_depth"),
            dataset=dataset,
            mode=mode,
        )
    if name == "VNLoss":
        return vnl_loss(
            pred,
            target,
            batch["intrinsic"],
            mask=mask,
            triplets=torch.from_numpy(samples.get("vnl_p_idx")) if rec else None,
            generator=None if rec else samples.torch_generator(),
            sample_ratio=kw.get("sample_ratio", 0.2),
            weight=w,
            mode=mode,
        )
    if name == "HDNRandomLoss":
        return hdn_random_loss(
            pred,
            target,
            mask,
            weight=w,
            random_num=kw.get("random_num", 10),
            dataset=dataset,
            masks=samples.per_call("hdn", "hdn_masks") if rec else None,
            generator=samples.rng,
            mode=mode,
        )
    if name == "HDSNRandomLoss":
        windows = sem_masks = None
        if rec:
            windows = torch.from_numpy(samples.get("hdsn_windows").astype(np.int64))
            sem_masks = samples.per_call("hdsn", "hdsn_sem_masks_call{i}")
        return hdsn_random_loss(
            pred,
            target,
            mask,
            batch.get("sem_mask"),
            weight=w,
            random_num=kw.get("random_num", 20),
            chunk=kw.get("batch_limit", 4),
            dataset=dataset,
            windows=windows,
            sem_masks=sem_masks,
            generator=samples.rng,
            mode=mode,
        )
    if name == "PWNPlanesLoss":
        triplets = None
        if rec:
            triplets = [None] * pred.shape[0]
            for b, yx in samples.per_call("pwn", "pwn_call{i}_p_yx").items():
                triplets[b] = yx
        return pwn_planes_loss(
            pred,
            batch["intrinsic"],
            batch["sem_mask"],
            dataset,
            triplets=triplets,
            generator=samples.torch_generator(),
            sample_groups=kw.get("sample_groups", 5000),
            weight=w,
            mode=mode,
        )
    if name == "NormalBranchLoss":
        if kw.get("loss_fn", "NLL_ours_GRU") != "NLL_ours_GRU":
            raise ValueError("NormalBranchLoss: only loss_fn='NLL_ours_GRU' is implemented")
        return normal_branch_loss(normals, batch["normal"].to(pred.dtype), mask, weight=w)
    if name == "DeNoConsistencyLoss":
        if kw.get("loss_fn", "CEL") != "CEL":
            raise ValueError("DeNoConsistencyLoss: only loss_fn='CEL' is implemented")
        return deno_consistency_loss(
            pred,
            confs[-1],
            normals[-1],
            batch["intrinsic"],
            batch["pad"],
            torch.as_tensor(batch["scale"]),
            dataset,
            mask=mask,
            weight=w,
            depth_detach=bool(kw.get("depth_detach", False)),
            nonorm_scale=float(kw.get("scale", 1)),
            mode=mode,
        )
    if name == "SkyRegularizationLoss":
        return sky_regularization_loss(
            pred,
            batch["sem_mask"],
            normals[-1] if normals is not None else None,
            weight=w,
            regress_value=kw.get("regress_value", 200),
            normal_regress=kw.get("normal_regress", (0, 0, -1)),
        )
    if name == "SilogLoss":
        return metric3d_silog_loss(
            pred, target, mask, weight=w, variance_focus=kw.get("variance_focus", 0.5)
        )
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(OFFICIAL_DATA_TYPES)}")


def _deno_overwrite(
    confs: list[torch.Tensor], normals: list[torch.Tensor], batch: Mapping[str, Any]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Copies of the lists whose final confidence and kappa are -1e4 outside DeNo's region.

    The official DeNo writes -1e4 in place there (quirk 8); later losses see it, and no
    gradient reaches those pixels through them (as with the in-place write).
    """
    conf, normal = confs[-1], normals[-1]
    with torch.no_grad():
        region = pad_mask(torch.as_tensor(batch["pad"]), conf.shape)
        _, valid = depth_to_normal(
            torch.ones_like(conf), batch["intrinsic"], region, ray_dtype=torch.float32
        )
    fill = torch.full((), DENO_FILL, dtype=conf.dtype, device=conf.device)
    conf = torch.where(valid, conf, fill)
    kappa = torch.where(valid, normal[:, 3:4], fill.to(normal.dtype))
    normal = torch.cat([normal[:, :3], kappa, normal[:, 4:]], 1)
    return [*confs[:-1], conf], [*normals[:-1], normal]


def loss_terms(
    outputs: Mapping[str, torch.Tensor | Sequence[torch.Tensor]],
    batch: Mapping[str, Any],
    terms: Sequence[LossTerm],
    *,
    mode: str = "corrected",
    generator: np.random.Generator | None = None,
    samples: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Every term of ``terms`` on ``outputs`` and ``batch`` (see the module docstring), and
    ``"total"``: ``{"decode_VNLoss": ..., "gru_0_SkyRegularizationLoss": ..., "total": ...}``.

    Each value is a scalar already multiplied by its weight (and by ``w_i`` in the gru branch).
    A loss needing an absent output (e.g. DeNo without ``normal_out_list``) raises ``KeyError``.
    """
    check_mode(mode)
    preds = upcast(list(outputs["predictions_list"]))
    confs = outputs.get("confidence_list")
    normals = outputs.get("normal_out_list")
    confs = upcast(list(confs)) if confs is not None else None
    normals = upcast(list(normals)) if normals is not None else None
    batch = {k: upcast(v) for k, v in batch.items()}
    n_batch = preds[-1].shape[0]
    dataset = _names(batch["dataset"], n_batch, "dataset")
    data_type = _names(batch["data_type"], n_batch, "data_type")
    draws = _Samples(samples, generator)
    seen: set[tuple[str, str]] = set()
    for term in terms:
        if term.branch not in ("decoder", "gru"):
            raise ValueError(f"{term.loss}: branch must be 'decoder' or 'gru', not {term.branch!r}")
        if term.branch == "gru" and term.loss not in GRU_BRANCH_LOSSES:
            raise ValueError(f"the gru branch runs only {', '.join(GRU_BRANCH_LOSSES)}")
        if (term.loss, term.branch) in seen:
            raise ValueError(f"{term.loss} appears twice in the {term.branch} branch")
        seen.add((term.loss, term.branch))
        for key in _NEEDS.get(term.loss, ()):
            if outputs.get(key) is None:
                raise KeyError(f"{term.loss} needs outputs[{key!r}]")
    device = preds[-1].device.type
    guard = (
        torch.autocast(device_type=device, enabled=False)
        if device in ("cpu", "cuda")
        else contextlib.nullcontext()
    )
    with guard:
        return _evaluate(terms, preds, confs, normals, mode, batch, dataset, data_type, draws)


def _evaluate(terms, preds, confs, normals, mode, batch, dataset, data_type, draws):
    """The decoder terms in list order, then the gru terms by output (as ``get_loss``)."""
    out: dict[str, torch.Tensor] = {}
    context = dict(batch=batch, dataset=dataset, data_type=data_type, samples=draws, mode=mode)
    for term in terms:
        if term.branch != "decoder":
            continue
        out[f"decode_{term.loss}"] = _run(
            term, preds=preds, confs=confs, normals=normals, **context
        )
        if term.loss == "DeNoConsistencyLoss" and mode == "official":
            confs, normals = _deno_overwrite(confs, normals, batch)
    gru_terms = [t for t in terms if t.branch == "gru"]
    if gru_terms and len(preds) > 1:  # one output: the official loop stops before weighting
        step_weights = gru_step_weights(len(preds), 0.9, mode)
        for i in range(len(preds) - 1):
            for term in gru_terms:
                value = _run(
                    term,
                    preds=[preds[i]],
                    confs=None,
                    normals=[normals[i]] if normals is not None else None,
                    **context,
                )
                out[f"gru_{i}_{term.loss}"] = value * step_weights[i]
    total = None
    for value in out.values():  # the official sum(losses_dict.values()), in the same order
        total = value if total is None else total + value
    out["total"] = total if total is not None else preds[-1].sum() * 0
    return out
