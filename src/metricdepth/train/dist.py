"""Data-parallel plumbing of the training loop (``torchrun``): process group, barrier, mean.

``setup_distributed`` reads torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with one
process nothing is initialised and every helper is a no-op.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> Dist:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); ``Dist()`` when alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local)


def teardown(ctx: Dist) -> None:
    """Leave the process group (if this run joined one)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Dist) -> None:
    """Wait for every process (no-op alone)."""
    if ctx.active:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, ctx: Dist) -> float:
    """The mean of a scalar tensor over the processes (its value alone)."""
    if ctx.active:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return float(value)


def broadcast_buffers(net: torch.nn.Module, ctx: Dist) -> None:
    """Give every process rank 0's buffers (e.g. BatchNorm statistics; no-op alone)."""
    if ctx.active:
        for buffer in net.buffers():
            dist.broadcast(buffer.data, src=0)
