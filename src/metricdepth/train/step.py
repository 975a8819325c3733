"""One optimiser step's gradients: micro-batches, autocast forward, float32 objective, backward.

``official_batch`` renames a loader batch to the official Metric3D keys the objective reads;
``accumulate_gradients`` runs the forward pass of each micro-batch (under bfloat16 autocast
when asked), casts the outputs to float32, computes ``objective.compute_loss`` *outside*
autocast and back-propagates ``total / n_micro``, so ``n`` micro-batches of ``b`` images give
the gradient of one batch of ``n b`` images for losses that average over images (or over
pixels, when every micro-batch has as many valid ones). The random losses of micro-batch
``m`` draw from ``objective.loss_generator(seed, step, rank, m)``. Under
``DistributedDataParallel`` only the last micro-batch synchronises gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metricdepth.train.loss_guard import upcast
from metricdepth.train.objective import compute_loss, loss_generator

#: Loader keys passed to the objective under their own (official) names when present.
PASS_THROUGH = ("intrinsic", "pad", "sem_mask", "normal", "scale", "dataset", "data_type")


def official_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The objective's batch: ``target`` (B,1,H,W) canonical depth, -1 where ``mask`` is
    False; ``mask`` (B,1,H,W) bool; ``scale`` (B,) = ``label_scale`` (Metric3D's
    ``label_scale_factor``) unless the loader gives ``scale``; and the keys of
    ``PASS_THROUGH`` the loader provides (tensors moved to ``device``): from
    ``CanonicalTrainingSet``, ``intrinsic`` (B,3,3) float32 canonical K of the canvas and
    ``pad`` (B,4) int64 [top, bottom, left, right], ``sem_mask``, ``normal``, ``dataset``,
    ``data_type``."""
    mask = batch["mask"].to(device, non_blocking=True).bool()
    depth_c = batch["depth_c"].to(device, non_blocking=True)
    out: dict[str, Any] = {
        "target": torch.where(mask, depth_c, torch.full_like(depth_c, -1.0)),
        "mask": mask,
    }
    if "label_scale" in batch:
        out["scale"] = batch["label_scale"].to(device)
    for key in PASS_THROUGH:
        if key in batch:
            value = batch[key]
            out[key] = value.to(device) if isinstance(value, Tensor) else value
    return out


def split_batch(batch: Mapping[str, Any], size: int) -> list[dict[str, Any]]:
    """A collated batch cut into micro-batches of ``size`` samples (tensors and lists)."""
    n = len(batch["image"])
    return [
        {key: value[start : start + size] for key, value in batch.items()}
        for start in range(0, n, size)
    ]


def to_float32(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Floating tensors (and lists of them) of ``outputs`` as float32 (``loss_guard.upcast``)."""
    return {key: upcast(value, float64=True) for key, value in outputs.items()}


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[Mapping[str, Any]],
    config,
    device: torch.device,
    *,
    channels_last: bool = False,
    step: int = 0,
    rank: int = 0,
) -> dict[str, Tensor]:
    """Back-propagate the mean objective of ``micro_batches`` into ``.grad`` (not zeroed here).

    ``step`` (0-based optimiser step) and ``rank`` (process) seed the random losses' draws.
    Returns the detached terms (each the mean over micro-batches), ``"total"`` included.
    """
    n = len(micro_batches)
    bf16 = config.precision == "bf16"
    sums: dict[str, Tensor] = {}
    for i, micro in enumerate(micro_batches):
        sync = i == n - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():
            memory = torch.channels_last if channels_last else torch.contiguous_format
            image = micro["image"].to(device, memory_format=memory)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                outputs = model(image)
            terms = compute_loss(
                to_float32(outputs),
                official_batch(micro, device),
                config,
                generator=loss_generator(config.seed, step, rank, i),
            )
            total = terms["total"] if n == 1 else terms["total"] / n
            total.backward()
        for key, value in terms.items():
            value = value.detach() if n == 1 else value.detach() / n
            sums[key] = value if key not in sums else sums[key] + value
    return sums
