"""Optimiser, parameter groups and learning-rate schedule of a training run.

AdamW (fused) over four groups: encoder and decoder parameters (``train.arch.ArchInfo.
encoder_prefixes``), each split into weights that decay (convolution and linear weights) and
those that do not (biases, norms, tokens). The encoder takes ``lr_encoder`` and
``weight_decay_encoder``, the decoder ``lr_decoder`` and ``weight_decay_decoder`` (each
defaulting to ``lr`` / ``weight_decay``). Frozen parameters (``requires_grad=False``) are in
no group. Every group follows ``lr_factor``: linear warm-up, then cosine or poly decay to its
own floor (``min_lr`` absolute, else ``min_lr_ratio`` of its base rate).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metricdepth.train.arch import ARCHS


def lr_factor(step: int, config, min_ratio: float | None = None) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine or poly decay.

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps``. Then with
    ``p = (step - warmup) / (steps - warmup)`` in [0, 1] and ``m = min_ratio`` (default
    ``config.min_lr_ratio``): cosine ``m + (1 - m) (1 + cos(pi p)) / 2``; poly
    ``m + (1 - m) (1 - p) ** 0.9`` (Metric3D's ``(base - min) (1 - p) ** 0.9 + min``).
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    m = config.min_lr_ratio if min_ratio is None else min_ratio
    if config.schedule == "poly":
        return m + (1 - m) * (1 - progress) ** 0.9
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))


def group_settings(config) -> dict[str, tuple[float, float]]:
    """``{"encoder": (lr, weight_decay), "decoder": (lr, weight_decay)}`` of ``config``."""

    def pick(value, default):
        return default if value is None else value

    return {
        "encoder": (
            pick(config.lr_encoder, config.lr),
            pick(config.weight_decay_encoder, config.weight_decay),
        ),
        "decoder": (
            pick(config.lr_decoder, config.lr),
            pick(config.weight_decay_decoder, config.weight_decay),
        ),
    }


def make_optimizer(net: nn.Module, config) -> torch.optim.AdamW:
    """AdamW over the trainable parameters in encoder/decoder x decay/no-decay groups."""
    prefixes = ARCHS[config.arch].encoder_prefixes
    settings = group_settings(config)
    groups = []
    for part in ("encoder", "decoder"):
        lr, decay = settings[part]
        params = [
            (name, p)
            for name, p in net.named_parameters()
            if p.requires_grad and name.startswith(prefixes) == (part == "encoder")
        ]
        for suffix, chosen, wd in (
            ("decay", [p for _, p in params if p.ndim > 1], decay),
            ("no_decay", [p for _, p in params if p.ndim <= 1], 0.0),
        ):
            if chosen:
                groups.append(
                    {"params": chosen, "lr": lr, "weight_decay": wd, "name": f"{part}.{suffix}"}
                )
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    # fused: one kernel for all parameters (6x faster optimiser steps on CPU than for-each)
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=tuple(config.adam_betas),
        eps=config.adam_eps,
        fused=True,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-group ``lr_factor`` (each group decays to ``min_lr`` or ``min_lr_ratio`` of its rate)."""

    def factor(base_lr: float):
        ratio = None if config.min_lr is None else min(1.0, config.min_lr / base_lr)
        return lambda step: lr_factor(step, config, ratio)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor(group["lr"]) for group in optimizer.param_groups]
    )
