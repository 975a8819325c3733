"""The training objective: the one seam between network outputs, a batch and the loss config.

``compute_loss(outputs, batch, config, *, generator=None) -> {term: Tensor, ..., "total"}``

Two loss families, chosen by the architecture (``arch.ArchInfo.own_losses``):

* the official Metric3D architectures (``metric3d_vit``, ``metric3d_convnext``) train with the
  official Metric3D v2 loss set: ``config.losses`` (short names of ``loss_set.LOSS_NAMES``:
  ``gru_sequence``, ``vnl``, ``hdn``, ``hdsn``, ``pwn_planes``, ``normal_branch``, ``deno``,
  ``sky``, ``sky_gru``, ``silog``; each a weight or ``{weight: w, <official arguments>}``) is
  read by ``loss_set.terms_from_config`` and run by ``loss_set.loss_terms`` in
  ``config.loss_mode`` (``corrected`` or ``official``). The terms are keyed as the official
  ``losses_dict`` (``decode_GRUSequenceLoss``, ``gru_0_SkyRegularizationLoss`` ...);
* ``small_unet`` trains with metricdepth's own log-depth losses (``OWN_LOSSES``: ``l1_log``,
  ``silog``), keyed by their names.

* ``outputs``: what the network returns in training mode, in float32 (the caller casts what
  ran under autocast): ``depth_c`` (B,1,H,W) canonical depth, and where the architecture has
  them ``log_depth_c`` (B,1,H,W), ``predictions_list`` (N x (B,1,H,W) canonical depth, entry 0
  the upsampled initial estimate), ``confidence_list`` (N x (B,1,H,W)) and ``normal_out_list``
  (N x (B,4,H,W)); see ``metricdepth.train.arch.ARCHS``.
* ``batch``: official Metric3D key names (``metricdepth.train.step.official_batch``):
  ``target`` (B,1,H,W) canonical depth, <= 0 where invalid; ``mask`` (B,1,H,W) bool, True on
  valid labels; ``intrinsic`` (B,3,3) canonical K of the canvas, ``pad`` (B,4) top, bottom,
  left, right, ``scale`` (B,) label scale, ``sem_mask`` (B,1,H,W), ``normal`` (B,3,H,W),
  ``dataset`` and ``data_type`` (B names each).
* ``generator``: the ``numpy.random.Generator`` the random losses (VNL, HDN, HDSN, PWN) draw
  from; the training step passes ``loss_generator(seed, step, rank, micro)``, so a run's
  draws are a pure function of the seed and the step (reproducible, and a resumed run draws
  what the uninterrupted one did). None: ``loss_generator(config.seed, 0)``.

Every entry but ``"total"`` is one weighted term; ``"total"`` is their sum. Terms are
computed in float32 with autocast disabled. A term with no valid pixel is 0 with a gradient
path, so every process of a data-parallel run can call ``backward``. Terms of weight 0 are not
computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metricdepth.train.arch import ARCHS
from metricdepth.train.loss_presets import LossTerm
from metricdepth.train.loss_set import loss_terms, required_outputs, terms_from_config
from metricdepth.train.losses import l1_log_loss, silog_loss

#: The stream tag of the loss draws (the data stream uses 1-3: ``metricdepth.data.dataset``).
_LOSS_STREAM = 4


def loss_generator(seed: int, step: int, rank: int = 0, micro: int = 0) -> np.random.Generator:
    """The random losses' generator of micro-batch ``micro`` of optimiser step ``step`` (0-based)
    on process ``rank``: ``numpy.random.default_rng([seed, 4, step, rank, micro])``."""
    return np.random.default_rng([int(seed), _LOSS_STREAM, int(step), int(rank), int(micro)])


def _log_prediction(outputs: Mapping[str, Any]) -> Tensor:
    """The network's log canonical depth (its own ``log_depth_c`` where it has one)."""
    if "log_depth_c" in outputs:
        return outputs["log_depth_c"]
    return torch.log(outputs["depth_c"].clamp_min(1e-6))


def _l1_log(outputs, batch, config) -> Tensor:
    return l1_log_loss(_log_prediction(outputs), batch["target"], batch["mask"])


def _silog(outputs, batch, config) -> Tensor:
    return silog_loss(_log_prediction(outputs), batch["target"], batch["mask"], config.silog_lambda)


@dataclass(frozen=True)
class OwnLoss:
    """One of metricdepth's own losses: ``fn(outputs, batch, config) -> scalar Tensor`` and
    the outputs it reads."""

    fn: Callable[[Mapping[str, Any], Mapping[str, Any], Any], Tensor]
    needs: tuple[str, ...]
    doc: str


#: The own losses of ``small_unet`` (``metricdepth.train.losses``), by config name.
OWN_LOSSES: dict[str, OwnLoss] = {
    "l1_log": OwnLoss(_l1_log, ("depth_c",), "mean |log p - log t|, pixel-weighted"),
    "silog": OwnLoss(_silog, ("depth_c",), "per-image scale-invariant log loss (silog_lambda)"),
}


def official_terms(losses: Mapping[str, Any]) -> tuple[LossTerm, ...]:
    """``loss_set.terms_from_config(losses)`` without the terms of weight 0."""
    return tuple(term for term in terms_from_config(losses) if term.weight)


def check_losses(losses: Mapping[str, Any], arch: str, mode: str = "corrected") -> None:
    """ValueError (one line) unless ``losses`` is a valid loss config for ``arch``: known
    names and arguments, and every output a loss reads returned by ``arch`` in training."""
    info = ARCHS[arch]
    outputs = info.outputs
    if info.own_losses:
        for name in losses:
            if name not in OWN_LOSSES:
                raise ValueError(
                    f"unknown loss {name!r} for {arch} (its own losses: {', '.join(OWN_LOSSES)}; "
                    "the official Metric3D losses train metric3d_vit and metric3d_convnext)"
                )
            missing = [key for key in OWN_LOSSES[name].needs if key not in outputs]
            if missing:  # pragma: no cover (every own loss reads depth_c)
                raise ValueError(f"loss {name!r} needs the output {missing[0]!r}")
        return
    for name, term in zip(losses, terms_from_config(losses), strict=True):
        missing = [key for key in required_outputs(term) if key not in outputs]
        if missing:
            raise ValueError(
                f"loss {name!r} ({term.loss}) needs the output {missing[0]!r}, which {arch} "
                f"does not return in training (it returns {', '.join(outputs)})"
            )
        if (
            mode == "official"
            and info.one_prediction
            and term.loss == "GRUSequenceLoss"
            and term.weight
        ):
            raise ValueError(
                f"loss 'gru_sequence' in loss_mode official divides by zero with the single "
                f"prediction of {arch} (the official weights use 15/(N-1)); use loss_mode "
                "corrected"
            )


def compute_loss(
    outputs: Mapping[str, Any],
    batch: Mapping[str, Any],
    config: Any,
    *,
    generator: np.random.Generator | None = None,
) -> dict[str, Tensor]:
    """Every weighted term of ``config.losses`` and their sum ``"total"`` (module docstring)."""
    if not ARCHS[config.arch].own_losses:
        if generator is None:
            generator = loss_generator(config.seed, 0)
        return loss_terms(
            outputs,
            batch,
            official_terms(config.losses),
            mode=config.loss_mode,
            generator=generator,
        )
    terms: dict[str, Tensor] = {}
    total = outputs["depth_c"].sum() * 0.0
    for name, weight in config.losses.items():
        if not weight:
            continue
        value = weight * OWN_LOSSES[name].fn(outputs, batch, config)
        terms[name] = value
        total = total + value
    terms["total"] = total
    return terms


# ---------------------------------------------------------------------- config resolution
def resolve_losses(
    raw: Mapping[str, Any], values: dict[str, Any], check, arch: str, defaults: Mapping[str, Any]
) -> None:
    """Validate the loss fields of a raw training config and write the resolved ones into
    ``values`` (``losses`` always holds the list that trains; ``train.config_check``).

    ``check``: the config's ``config_check.Checker`` (one-line errors naming the field);
    ``defaults``: ``TrainConfig``'s field defaults.
    """
    if ARCHS[arch].own_losses:
        _own_losses(raw, values, check, arch, defaults)
    else:
        _official_losses(raw, values, check, arch)


def _own_losses(
    raw: dict[str, Any], values: dict[str, Any], check, arch: str, defaults: Mapping[str, Any]
) -> None:
    """``small_unet``: ``losses`` (weights of ``objective.OWN_LOSSES``) or the legacy fields."""
    for key in ("loss_preset", "loss_mode"):
        if raw.get(key) is not None and raw[key] != defaults[key]:
            check.fail(key, f"applies to the official Metric3D losses, not to {arch}'s own")
    legacy = {name: values.get(f"loss_{name}") for name in ("l1_log", "silog")}
    if raw.get("losses") is not None:
        losses = check.json_dict("losses", raw["losses"])
        for name, weight in losses.items():
            check.number(f"losses.{name}", weight, 0)
            losses[name] = float(weight)
        for name, weight in legacy.items():
            if weight is not None and weight != losses.get(name, 0.0):
                check.fail(f"loss_{name}", f"is {weight}, but losses says {losses.get(name, 0)}")
    else:
        default = {"l1_log": defaults["loss_l1_log"], "silog": defaults["loss_silog"]}
        losses = {n: (default[n] if w is None else w) for n, w in legacy.items()}
        losses = {n: w for n, w in losses.items() if w}
        if not losses:
            check.fail("loss_l1_log", "loss_l1_log and loss_silog cannot both be 0")
    if not any(losses.values()):
        check.fail("losses", "every weight is 0")
    try:
        check_losses(losses, arch)
    except ValueError as error:
        check.fail("losses", str(error))
    values["losses"] = losses
    values["loss_l1_log"] = losses.get("l1_log", 0.0)
    values["loss_silog"] = losses.get("silog", 0.0)


def _official_losses(raw: dict[str, Any], values: dict[str, Any], check, arch: str) -> None:
    """The official architectures: ``losses`` (``loss_set`` short names), ``loss_preset``
    and ``loss_mode``; the resolved ``losses`` always holds the list that trains."""
    from metricdepth.train.loss_guard import MODES
    from metricdepth.train.loss_presets import preset
    from metricdepth.train.loss_set import config_from_terms

    for name in ("l1_log", "silog"):
        if values.get(f"loss_{name}"):
            check.fail(
                f"loss_{name}",
                f"applies to small_unet's own losses; {arch} takes losses: {{silog: w, ...}} "
                "(the official loss set)",
            )
    mode = check.choice("loss_mode", raw.get("loss_mode", "corrected"), MODES)
    from_preset = None
    if raw.get("loss_preset") is not None:
        name = raw["loss_preset"]
        if not isinstance(name, str):
            check.fail("loss_preset", f"must be a preset name, got {name!r}")
        try:
            chosen = preset(name)
        except KeyError as error:
            check.fail("loss_preset", str(error.args[0]))
        values["loss_preset"] = chosen.name
        from_preset = config_from_terms(chosen.losses)
    if raw.get("losses") is not None:
        losses = check.json_dict("losses", raw["losses"])
        for name, spec in losses.items():
            if isinstance(spec, dict):
                check.number(f"losses.{name}.weight", spec.get("weight"), 0)
                losses[name] = dict(spec, weight=float(spec["weight"]))
            else:
                losses[name] = float(check.number(f"losses.{name}", spec, 0))
    elif from_preset is not None:
        losses = from_preset
    else:
        losses = {"gru_sequence": 1.0}
    try:
        check_losses(losses, arch, mode)
    except ValueError as error:
        check.fail("losses", str(error))
    if from_preset is not None and _normal(terms_from_config(losses)) != _normal(
        terms_from_config(from_preset)
    ):
        check.fail("losses", f"differ from loss_preset {values['loss_preset']}; give one of them")
    if not any(term.weight for term in terms_from_config(losses)):
        check.fail("losses", "every weight is 0")
    values.update(losses=losses, loss_mode=mode, loss_l1_log=0.0, loss_silog=0.0)


def _normal(terms) -> list:
    """Loss terms as comparable JSON values (no config line)."""
    return json.loads(json.dumps([(t.loss, t.branch, t.weight, dict(t.kwargs)) for t in terms]))
