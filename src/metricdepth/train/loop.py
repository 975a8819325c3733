"""The training loop: canonical labels, AdamW with warm-up and decay, checkpoints, resume, DDP.

Pieces live beside it: ``train.arch`` (building any registered architecture, ``init_from``,
freezing, activation checkpointing), ``train.optim`` (encoder/decoder groups, schedule),
``train.step`` (micro-batches, autocast forward, float32 objective outside autocast),
``train.objective`` (``compute_loss``, the seam every loss goes through) and ``train.dist``
(the torchrun process group).

``run_training(config_path)`` trains one run into ``out_dir / name`` and returns that folder::

    config.yaml            the resolved config (every field)
    log.jsonl              step, loss (and each weighted term when there are several),
                           learning rates (``lr``: the decoder's, ``lr_encoder``; null
                           for a part with nothing to train), images/s
    checkpoints/step_*.pt  resumable state every ``checkpoint_every`` steps (and at the end)
    model.safetensors      final weights with their ModelSpec (``models.registry.save_model``)
    model.json             the spec, readable
    summary.json           steps, wall time, final loss, images/s, parameter count
    rank_<r>.json          per process: final step and a SHA-256 of its parameters and buffers

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains a replica in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA); process ``r`` reads its own slice of
the deterministic sample stream (``metricdepth.data.dataset``), gradients are averaged, and
rank 0 writes the files.

Resume: a checkpoint holds the model, optimizer and scheduler state, the step, the torch RNG
state and the config; the data order is a pure function of the seed, batch size, number of
processes and step, so a run stopped at any checkpoint and resumed ends with the same weights
as an uninterrupted run (bit for bit on the same machine, thread count and world size).
Checkpoints load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalSpace
from metricdepth.data.dataset import (
    CanonicalTrainingSet,
    StepBatchSampler,
    assumed_focal,
    build_source,
)
from metricdepth.io import atomic_write
from metricdepth.train import arch
from metricdepth.train.arch import ARCHS
from metricdepth.train.checkpoint import (  # noqa: F401 (latest_checkpoint re-exported)
    CHECKPOINT_FORMAT,
    check_resumable,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    read_log,
    save_checkpoint,
)
from metricdepth.train.config import TrainConfig, load_config
from metricdepth.train.dist import (
    Dist,
    barrier,
    broadcast_buffers,
    mean_over_ranks,
    setup_distributed,
    teardown,
)
from metricdepth.train.optim import lr_factor, make_optimizer, make_scheduler  # noqa: F401 (lr_factor re-exported)
from metricdepth.train.step import accumulate_gradients, split_batch

_PROBE_SAMPLES = 32


# ---------------------------------------------------------------------- pieces
def training_space(config: TrainConfig) -> CanonicalSpace:
    """The space of the training canvas: f_c, ``input_hw``, variant (for ``training_record``)."""
    return CanonicalSpace(
        focal_px=config.canonical_focal_px,
        input_hw=config.input_hw,
        variant=config.variant,
        resize=config.inference_resize,
        size_multiple=config.size_multiple,
    )


def inference_space(config: TrainConfig) -> CanonicalSpace:
    """The space the trained model expects at inference (written into its ModelSpec).

    ``image``: ``resize="focal"`` (s = f_c / focal, canvas padded to ``size_multiple``);
    ``label``/``none``: ``config.infer_resize`` (``"fit"`` to ``infer_hw`` or ``"none"``).
    """
    return CanonicalSpace(
        focal_px=config.canonical_focal_px,
        input_hw=config.infer_hw or config.input_hw,
        variant=config.variant,
        resize=config.inference_resize,
        size_multiple=config.size_multiple,
    )


def model_spec(config: TrainConfig):
    """The ``ModelSpec`` saved with the trained weights."""
    from metricdepth.models.spec import ModelSpec

    what = (
        "small U-Net"
        if config.arch == "small_unet"
        else f"{config.arch} {config.model_kwargs.get('size', '')}".rstrip()
    )
    origin = f", from {Path(config.init_from).name}" if config.init_from else ""
    description = config.description or (
        f"{what} trained by metricdepth ({config.variant} variant, f_c "
        f"{config.canonical_focal_px:g} px, {config.steps} steps{origin})"
    )
    return ModelSpec(
        name=config.model_name,
        arch=config.arch,
        arch_kwargs=dict(config.model_kwargs),
        space=inference_space(config),
        focal_mode=config.focal_mode,
        max_depth_m=config.max_depth_m,
        outputs=ARCHS[config.arch].spec_outputs,
        description=description,
        assumed_focal_px=assumed_focal(config),
        **intended_use(config),
    )


def intended_use(config: TrainConfig) -> dict:
    """``real_photos`` and ``intended_use`` of the saved spec: the config's, else a line on
    the training data (synthetic only: not for real photographs; else not stated)."""
    synthetic = all(d.kind == "synthetic" for d in config.datasets)
    real_photos = config.real_photos
    if real_photos is None and synthetic:
        real_photos = False
    text = config.intended_use
    if not text and synthetic:
        text = "trained on synthetic scenes only (metricdepth.data.synthetic)"
        text += "" if real_photos else ", not for real photographs"
    elif not text:
        names = ", ".join(
            Path(d.path).name if d.kind == "annotations" else d.kind for d in config.datasets
        )
        text = f"trained on {names}"
    return {"real_photos": real_photos, "intended_use": text}


def build_network(config: TrainConfig) -> nn.Module:
    """The untrained network of ``config`` (initialised from the current torch RNG)."""
    return arch.build_network(config.arch, config.model_kwargs)


def build_dataset(config: TrainConfig) -> CanonicalTrainingSet:
    """The training sample stream of ``config`` (see ``metricdepth.data.dataset``)."""
    return CanonicalTrainingSet(
        [build_source(d) for d in config.datasets],
        [d.weight for d in config.datasets],
        training_space(config),
        variant=config.variant,
        resize_range=config.resize_range,
        resize_prob=config.resize_prob,
        crop=config.crop,
        flip_prob=config.flip_prob,
        focal_mode=config.focal_mode,
        resize_base=config.resize_base,
        min_depth_m=config.min_depth_m,
        max_depth_m=config.max_depth_m,
        seed=config.seed,
    )


def parameter_digest(net: nn.Module, buffers: bool = False) -> str:
    """SHA-256 over every parameter (and with ``buffers``, every buffer), in name order."""
    digest = hashlib.sha256()
    items = dict(net.named_parameters())
    if buffers:
        items.update(net.named_buffers())
    for key in sorted(items):
        digest.update(key.encode())
        digest.update(items[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def predict_depth_m(
    model, image: np.ndarray, camera: Camera, focal_mode: str | None = None
) -> np.ndarray:
    """Metric depth (H, W) float32 of one RGB uint8 (H, W, 3) image: exactly ``predict``'s.

    ``model`` is a loaded ``DepthModel`` (its spec: canonical space, focal mode, clamp); the
    ``metricdepth.predictor.Predictor`` runs ``inference_record`` -> canvas -> network ->
    ``from_canonical`` -> clamp to ``[0, max_depth_m]``, so the CSTM ablation scores the path
    ``metricdepth predict`` runs. ``focal_mode``: default the model's.
    """
    from metricdepth.predictor import Predictor

    return Predictor(model, focal_mode).predict(image, camera).depth_m


# ---------------------------------------------------------------------- device
def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (always on CUDA; on a CPU
    where oneDNN has bf16 kernels, i.e. AVX-512 BF16 or AMX)."""
    return device.type != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _device(config: TrainConfig) -> torch.device:
    """``config.device`` (``auto``: CUDA when present); CUDA device ``LOCAL_RANK`` under
    torchrun. ValueError when this machine lacks it (``registry.check_device``)."""
    from metricdepth.models.registry import check_device

    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return check_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


# ---------------------------------------------------------------------- progress
def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


# ---------------------------------------------------------------------- entry points
def run_training(
    config_path: str | os.PathLike, *, out_dir: str | os.PathLike | None = None, resume: bool = True
) -> Path:
    """Train the run described by a YAML config; return its folder (``out_dir / name``).

    Args:
        config_path: the YAML config (``metricdepth.train.config``).
        out_dir: parent folder of runs; overrides the config's ``out_dir``.
        resume: continue from the run folder's latest checkpoint if there is one. With False,
            a run folder that already has checkpoints is an error (nothing is deleted).
    """
    config = load_config(config_path)
    if out_dir is not None:
        config = dataclasses.replace(config, out_dir=str(out_dir))
    return train(config, resume=resume)


def train(config: TrainConfig, *, resume: bool = True, stop_at_step: int | None = None) -> Path:
    """Train ``config``; see ``run_training``. ``stop_at_step`` stops early (as if interrupted
    right after that step, its checkpoint written if one was due), without the final files."""
    torch.set_num_threads(config.threads)
    device = _device(config)
    ctx = setup_distributed(device)
    try:
        return _train(config, ctx, device, resume, stop_at_step)
    finally:
        teardown(ctx)


def _train(
    config: TrainConfig, ctx: Dist, device: torch.device, resume: bool, stop_at: int | None
) -> Path:
    run_dir = Path(config.out_dir) / config.name
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and not resume:
        raise ValueError(
            f"{run_dir} already has checkpoints; resume it, or choose another name or out_dir"
        )
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None:
        check_resumable(state, config, ctx.world_size, checkpoint)
        if int(state["step"]) >= config.steps and (run_dir / "model.safetensors").is_file():
            return run_dir  # already finished
    barrier(ctx)  # every rank has read the checkpoint before rank 0 may prune it
    if ctx.rank == 0:
        config.write(run_dir / "config.yaml")

    if ctx.rank == 0 and config.precision == "bf16" and not native_bf16(device):
        print(
            "warning: precision bf16 on a CPU without native bfloat16 (AVX-512 BF16 or AMX): "
            "it is emulated here and runs many times slower than fp32; use precision: fp32",
            file=sys.stderr,
        )
    torch.manual_seed(config.seed)
    net = build_network(config)
    dataset = build_dataset(config)
    small = config.arch == "small_unet"
    if state is None and config.init_from is not None:
        arch.load_initial_weights(net, config.arch, config.model_kwargs, config.init_from)
    elif state is None and small:
        _init_output_bias(net, dataset)
    arch.apply_freeze(net, config.arch, config.freeze)
    arch.set_activation_checkpointing(net, config.activation_checkpointing)
    arch.set_clamp_gradient(net, config.clamp_gradient)
    if small:  # about 10 % faster convolutions on CPU
        net.to(device, memory_format=torch.channels_last)
    else:
        net.to(device)
    optimizer = make_optimizer(net, config)
    scheduler = make_scheduler(optimizer, config)
    start = 0
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
    model: nn.Module = net
    if ctx.active:
        ids = [device.index] if device.type == "cuda" else None
        # official archs: some parameters may get no gradient (giant2's final norm)
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=ids, find_unused_parameters=not small
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(
            start, config.steps, config.batch_size * config.accumulate, ctx.rank, ctx.world_size
        ),
        num_workers=config.workers,
    )
    log_lines = read_log(run_dir, start) if ctx.rank == 0 else []

    images_per_step = config.batch_size * config.accumulate * ctx.world_size
    trainable = [p for p in net.parameters() if p.requires_grad]
    started = time.perf_counter()
    ips = 0.0
    loss_value = float("nan")
    step = start
    model.train()
    with _progress(config.progress and ctx.rank == 0) as bar:
        task = bar.add_task(config.name, total=config.steps, completed=start, loss=0.0, ips=0.0)
        tick = time.perf_counter()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            terms = accumulate_gradients(
                model,
                split_batch(batch, config.batch_size),
                config,
                device,
                channels_last=small,
                step=step,
                rank=ctx.rank,
            )
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = mean_over_ranks(terms["total"], ctx)
            now = time.perf_counter()
            rate = images_per_step / max(now - tick, 1e-9)
            ips = rate if ips == 0.0 else 0.9 * ips + 0.1 * rate
            tick = now
            bar.update(task, completed=step, loss=loss_value, ips=ips)
            if ctx.rank == 0 and (step % config.log_every == 0 or step == config.steps):
                entry = {"step": step, "loss": loss_value}
                if len(terms) > 2:  # more than one term: log each
                    entry.update({k: float(v) for k, v in terms.items() if k != "total"})
                entry.update(
                    {
                        "lr": _group_lr(optimizer, "decoder"),
                        "lr_encoder": _group_lr(optimizer, "encoder"),
                        "images_per_s": ips,
                        "elapsed_s": now - started,
                    }
                )
                log_lines.append(json.dumps(entry))
            if step % config.checkpoint_every == 0 or step == config.steps:
                _checkpoint(run_dir, step, net, optimizer, scheduler, config, ctx, log_lines)
            if stop_at is not None and step >= stop_at:
                return run_dir

    elapsed = time.perf_counter() - started
    if config.precise_bn_batches and ctx.rank == 0:
        precise_batch_norm(net, dataset, config, device, world_size=ctx.world_size)
    broadcast_buffers(net, ctx)  # BatchNorm statistics of the last step differ per rank
    with atomic_write(run_dir / f"rank_{ctx.rank}.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "rank": ctx.rank,
                    "world_size": ctx.world_size,
                    "step": step,
                    "parameters_sha256": parameter_digest(net),
                    "parameters_and_buffers_sha256": parameter_digest(net, buffers=True),
                }
            )
            + "\n"
        )
    if ctx.rank == 0:
        from metricdepth.models.registry import save_model
        from metricdepth.models.small import count_parameters

        save_model(net.cpu(), model_spec(config), run_dir / "model.safetensors")
        summary = {
            "name": config.name,
            "variant": config.variant,
            "steps": step,
            "resumed_from_step": start,
            "world_size": ctx.world_size,
            "batch_size_per_process": config.batch_size,
            "final_loss": loss_value,
            "wall_s_this_session": elapsed,
            "images_per_s": ips,
            "parameters": count_parameters(net),
            "device": str(device),
        }
        with atomic_write(run_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    barrier(ctx)
    return run_dir


def precise_batch_norm(
    net: nn.Module,
    dataset: CanonicalTrainingSet,
    config: TrainConfig,
    device: torch.device,
    *,
    world_size: int = 1,
) -> None:
    """Replace every BatchNorm's running statistics by their plain average over
    ``config.precise_bn_batches`` training batches (the batches after the last step, as one
    process would draw them: deterministic, so a resumed run gets the same weights).

    ``world_size``: the processes that trained; their ``steps * accumulate * world_size``
    batches of ``batch_size`` come first in the stream, so these batches follow all of them.

    The running averages (momentum 0.1) mostly follow the last ten batches; evaluation then
    normalises with a noisy estimate. The forward passes run in train mode without gradients,
    in float32; nothing but the BatchNorm buffers changes.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    # in batches of batch_size: every process's every micro-batch of every step came first
    first = config.steps * config.accumulate * world_size
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(first, first + config.precise_bn_batches, config.batch_size),
        num_workers=config.workers,
    )
    was_training = net.training
    net.train()
    with torch.no_grad():
        for batch in loader:
            net(batch["image"].to(device, memory_format=torch.channels_last))
    net.train(was_training)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _group_lr(optimizer: torch.optim.Optimizer, part: str) -> float | None:
    """The current learning rate of the first ``part`` (encoder/decoder) group, if any."""
    for group in optimizer.param_groups:
        if str(group.get("name", "")).startswith(part):
            return group["lr"]
    return None


def _checkpoint(run_dir, step, net, optimizer, scheduler, config, ctx, log_lines) -> None:
    if ctx.rank == 0:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": config.to_dict(),
            "world_size": ctx.world_size,
        }
        save_checkpoint(run_dir / "checkpoints" / f"step_{step:07d}.pt", state)
        prune_checkpoints(run_dir, config.keep_checkpoints)
        with atomic_write(run_dir / "log.jsonl") as tmp:
            tmp.write_text("".join(line + "\n" for line in log_lines))
    barrier(ctx)


@torch.no_grad()
def _init_output_bias(net: nn.Module, dataset: CanonicalTrainingSet) -> None:
    """Start the output at the median log label of the stream's first samples."""
    head = getattr(net, "head", None)
    if head is None or getattr(head, "bias", None) is None:
        return
    logs = []
    for index in range(_PROBE_SAMPLES):
        canvas, _, _ = dataset.sample(index)
        if canvas.mask.any():
            logs.append(np.log(canvas.depth[canvas.mask]))
    if logs:
        head.bias.fill_(float(np.median(np.concatenate(logs))))
