"""The training objective: the one seam between network outputs, a batch and the loss weights.

``compute_loss(outputs, batch, config) -> {term: Tensor, ..., "total": Tensor}``

* ``outputs``: what the network returns in training mode, in float32 (the caller casts what
  ran under autocast): ``depth_c`` (B,1,H,W) canonical depth, and where the architecture has
  them ``log_depth_c`` (B,1,H,W), ``predictions_list`` (N x (B,1,H,W) canonical depth, entry 0
  the upsampled initial estimate), ``confidence_list`` (N x (B,1,H,W)) and ``normal_out_list``
  (N x (B,4,H,W)); see ``metricdepth.train.arch.TRAINING_OUTPUTS``.
* ``batch``: official Metric3D key names (``metricdepth.train.step.official_batch``):
  ``target`` (B,1,H,W) canonical depth, <= 0 where invalid; ``mask`` (B,1,H,W) bool, True on
  valid labels; and, when the data provides them, ``intrinsic`` (B,3,3) canonical K of the
  canvas, ``pad`` (B,4) top, bottom, left, right, ``sem_mask``, ``normal``, ``dataset``,
  ``data_type``, ``scale``.
* ``config``: a ``TrainConfig``; ``config.losses`` maps loss names (``LOSSES``) to weights.

The loss functions see ``outputs`` with the official aliases added (``OUTPUT_ALIASES``:
``prediction`` is ``depth_c``, ``prediction_normal`` is ``normal``, ``pred_logit`` None), so
a function written against the official ``paras`` names reads them unchanged.

Every entry but ``"total"`` is one weighted term (``weight x loss``); ``"total"`` is their sum.
Terms are computed in float32 and must be called outside autocast. A term with no valid pixel
is 0 with a gradient path, so every process of a data-parallel run can call ``backward``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metricdepth.train.losses import l1_log_loss, silog_loss

#: Official output names -> ours (the same tensors).
OUTPUT_ALIASES = {"prediction": "depth_c", "prediction_normal": "normal"}


def with_official_aliases(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """``outputs`` plus ``OUTPUT_ALIASES`` (same tensor objects) and ``pred_logit=None``."""
    out = dict(outputs)
    for alias, ours in OUTPUT_ALIASES.items():
        if ours in out:
            out[alias] = out[ours]
    out.setdefault("pred_logit", None)
    return out


def _valid(target: Tensor, mask: Tensor) -> Tensor:
    return mask.bool() & torch.isfinite(target) & (target > 0)


def _log_prediction(outputs: Mapping[str, Any]) -> Tensor:
    """The network's log canonical depth (its own ``log_depth_c`` where it has one)."""
    if "log_depth_c" in outputs:
        return outputs["log_depth_c"]
    return torch.log(outputs["depth_c"].clamp_min(1e-6))


def gru_sequence_l1(
    predictions: list[Tensor], target: Tensor, mask: Tensor, gamma: float = 0.9
) -> Tensor:
    """``sum_i gamma ** (N - 1 - i) * mean |p_i - t|`` over the valid pixels of the batch.

    Args:
        predictions: N tensors (B, 1, H, W) of canonical depth (the last one weighs 1).
        target: (B, 1, H, W) canonical depth labels; ``<= 0``, inf or NaN where invalid.
        mask: (B, 1, H, W) bool, True where the label may be used.
        gamma: decay of the weights of earlier iterations.

    Returns:
        A scalar in canonical depth units (not the official confidence term: that is
        ``GRUSequenceLoss`` of the official loss set).
    """
    valid = _valid(target, mask)
    safe = torch.where(valid, target, torch.zeros_like(target))
    count = valid.sum().clamp_min(1)
    n = len(predictions)
    total = predictions[-1].sum() * 0.0
    for i, pred in enumerate(predictions):
        diff = torch.where(valid, (pred - safe).abs(), torch.zeros_like(pred))
        total = total + gamma ** (n - 1 - i) * diff.sum() / count
    return total


def _l1_log(outputs, batch, config) -> Tensor:
    return l1_log_loss(_log_prediction(outputs), batch["target"], batch["mask"])


def _silog(outputs, batch, config) -> Tensor:
    return silog_loss(_log_prediction(outputs), batch["target"], batch["mask"], config.silog_lambda)


def _gru_sequence(outputs, batch, config) -> Tensor:
    return gru_sequence_l1(
        outputs["predictions_list"], batch["target"], batch["mask"], config.gru_gamma
    )


@dataclass(frozen=True)
class LossTerm:
    """One loss: ``fn(outputs, batch, config) -> scalar Tensor`` and the outputs it reads."""

    fn: Callable[[Mapping[str, Any], Mapping[str, Any], Any], Tensor]
    needs: tuple[str, ...]
    doc: str


#: Loss name -> term. ``l1_log`` and ``silog`` read the final depth; ``gru_sequence`` every
#: iteration. The official Metric3D v2 losses are added here under their own names.
LOSSES: dict[str, LossTerm] = {
    "l1_log": LossTerm(_l1_log, ("depth_c",), "mean |log p - log t|, pixel-weighted"),
    "silog": LossTerm(_silog, ("depth_c",), "per-image scale-invariant log loss (silog_lambda)"),
    "gru_sequence": LossTerm(
        _gru_sequence,
        ("predictions_list",),
        "gamma-weighted L1 on canonical depth over all iterations (gru_gamma)",
    ),
}


def check_losses(losses: Mapping[str, float], outputs: tuple[str, ...], arch: str) -> None:
    """ValueError unless every name is in ``LOSSES`` and ``arch`` returns what it reads."""
    outputs = (*outputs, *(a for a, ours in OUTPUT_ALIASES.items() if ours in outputs))
    for name in losses:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})")
        missing = [key for key in LOSSES[name].needs if key not in outputs]
        if missing:
            raise ValueError(
                f"loss {name!r} needs the output {missing[0]!r}, which {arch} does not return "
                f"in training (it returns {', '.join(outputs)})"
            )


def compute_loss(
    outputs: Mapping[str, Any], batch: Mapping[str, Any], config: Any
) -> dict[str, Tensor]:
    """Every weighted term of ``config.losses`` and their sum ``"total"`` (module docstring)."""
    terms: dict[str, Tensor] = {}
    outputs = with_official_aliases(outputs)
    total = outputs["depth_c"].sum() * 0.0
    for name, weight in config.losses.items():
        if not weight:
            continue
        value = weight * LOSSES[name].fn(outputs, batch, config)
        terms[name] = value
        total = total + value
    terms["total"] = total
    return terms
