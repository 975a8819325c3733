"""The training configuration: one flat, frozen dataclass read from YAML.

A config file holds every field of ``TrainConfig`` it wants to change (no inheritance, no
includes); the resolved config (every field, dataset paths made absolute) is written beside the
run as ``config.yaml`` and inside every checkpoint. Example::

    name: cstm-label
    seed: 0
    variant: label                 # none | label (CSTM_label) | image (CSTM_image)
    canonical_focal_px: 250
    input_hw: [96, 128]            # training canvas (H, W), pixels
    resize_range: [0.75, 1.33]     # random resize t (Metric3D's to_scale_ratio)
    resize_base: fit               # t applies to the image fitted to the canvas, as at inference
    datasets:
      - {kind: synthetic, weight: 2, seed: 0, num_scenes: 4000, synth: {focal_range: [100, 600]}}
      - {kind: annotations, weight: 1, path: data/mine/annotations.json}
    steps: 600
    batch_size: 16
    precise_bn_batches: 100        # BatchNorm statistics averaged over 100 batches at the end

The official Metric3D architectures train the same way (``arch: metric3d_vit``, ``model_kwargs:
{size: small}``, ``init_from: metric_depth_vit_small_800k.pth``, ``loss_preset:
vit.raft5.large.kitti`` or ``losses: {vnl: 0.1, gru_sequence: 1.0, deno: 0.001}``,
``lr_encoder`` / ``lr_decoder``, ``freeze: encoder``, ``accumulate: 4``,
``activation_checkpointing: true``); see ``configs/finetune-vit-*-kitti.yaml`` and
``docs/finetune.md``.

Every problem is a ``ValueError`` with one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metricdepth.data.synthetic import SynthConfig
from metricdepth.io import atomic_write
from metricdepth.models.spec import DEFAULT_MODEL
from metricdepth.train.config_check import (  # noqa: F401 (the choice tables re-exported)
    DATASET_KINDS,
    DEVICES,
    PRECISIONS,
    SCHEDULES,
    Checker,
    check_fields,
    post_checks,
)

CONFIG_FORMAT = "metricdepth-train/1"
#: The bundled model's name (``models.spec.DEFAULT_MODEL``).
BUNDLED_MODEL_NAME = DEFAULT_MODEL


@dataclass(frozen=True)
class DatasetConfig:
    """One training source and its sampling weight.

    Attributes:
        kind: ``"synthetic"`` (scenes rendered on the fly by ``metricdepth.data.synthetic``)
            or ``"annotations"`` (a Metric3D-format annotation JSON with depth and ``cam_in``).
        weight: relative sampling weight (> 0) among the datasets.
        path: the annotation JSON (``annotations``); relative paths are relative to the
            config file's folder.
        root: folder the JSON's paths are relative to (default: the JSON's folder).
        seed: scene seed base (``synthetic``): scene ``i`` is ``scene_seed(seed, i)``.
        num_scenes: number of distinct scenes (``synthetic``); an epoch is this many samples.
        synth: ``SynthConfig`` fields (``synthetic``), e.g. ``{focal_range: [100, 600]}``.
        cache: keep decoded/rendered frames in memory after first use.
        depth_scale: override the JSON's ``depth_scale`` (stored units per metre); None: keep.
        name: the dataset's name in batches (``dataset``; the official losses treat some
            names specially, e.g. ``NYU``); default: the JSON's folder name, or ``synthetic``.
        data_type: Metric3D's data type (``metricdepth.data.dataset.DATA_TYPES``), which the
            official losses read; default ``lidar`` (annotations, as Metric3D's KITTI and NYU)
            or ``denselidar_syn`` (synthetic).
        sparse: resize depth by scattering (LiDAR: valid-only min-pooling) instead of nearest
            neighbour; None: per frame, sparse when under 30 % of its pixels are valid
            (annotations) or dense (synthetic).
        assumed_focal_px: focal in pixels of the stored images for entries without
            ``cam_in`` (one camera of unknown intrinsics; principal point at the centre);
            without it such entries are refused. The trained model records it.
    """

    kind: str
    weight: float = 1.0
    path: str | None = None
    root: str | None = None
    seed: int = 0
    num_scenes: int = 1000
    synth: dict[str, Any] = field(default_factory=dict)
    cache: bool = True
    depth_scale: float | None = None
    name: str | None = None
    data_type: str | None = None
    sparse: bool | None = None
    assumed_focal_px: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (see the module docstring for the YAML form).

    Attributes:
        name: run name; the run folder is ``out_dir / name``.
        out_dir: parent folder of runs (relative: to the working directory).
        seed: model initialisation, data order and augmentation all derive from it.
        variant: ``"none"`` (metric labels), ``"label"`` (CSTM_label: labels x f_c / f_eff)
            or ``"image"`` (CSTM_image: images resized to the canonical focal, metric labels).
        canonical_focal_px: f_c in pixels.
        input_hw: training canvas (H, W) in pixels (crop or pad to it).
        resize_range: random resize ``t ~ U(low, high)`` at fixed focal (to_scale_ratio).
        resize_prob: probability of drawing ``t`` (else ``t = 1``).
        resize_base: ``"none"``: ``t`` applies to the image as stored; ``"fit"``: to the image
            already resized as ``infer_resize: fit`` will at inference (``min(H_in / H, W_in /
            W)``), so that the network trains on what it will be given (label/none variants).
        crop: ``"rand"`` or ``"center"`` crop when the resized image exceeds the canvas.
        flip_prob: probability of a left-right flip (the camera's cx is mirrored with it).
        focal_mode: ``"mean"`` ((fx + fy) / 2) or ``"fx"``: the focal used by the transform.
        min_depth_m, max_depth_m: metric labels outside this range are ignored (masked).
        infer_resize: inference resize written into the model spec for ``label``/``none``:
            ``"fit"`` (keep-ratio resize to ``infer_hw``, pad) or ``"none"`` (no resize);
            the ``image`` variant always uses ``"focal"``.
        infer_hw: inference canvas (H, W) for ``"fit"`` (default: ``input_hw``).
        size_multiple: inference canvas multiple for ``"focal"``/``"none"``.
        model_name: the name in the saved model spec (default: ``name``). It cannot be a
            registered model's name (``models.registry.list_models``: the bundled
            ``metricdepth-small`` unless ``bundled_name`` is set, or an official one), so that
            a trained model's records never pass for that model's.
        bundled_name: allow ``model_name`` to be the bundled model's name (only the config
            that rebuilds the bundled model, ``configs/metricdepth-small.yaml``, sets it).
        description: one line for the saved model spec.
        intended_use: what the trained model is for, in the saved spec (default: a line on the
            training data, e.g. synthetic scenes only, not for real photographs).
        real_photos: whether it is meant for real photographs (default: false when every
            dataset is synthetic, else not stated); anything but true makes ``predict`` warn.
        arch: architecture: ``"small_unet"``, ``"metric3d_vit"`` or ``"metric3d_convnext"``
            (``metricdepth.train.arch``). For the official two, ``canonical_focal_px``
            defaults to 1000, ``input_hw`` (the training crop) and ``infer_hw`` to the
            official canvas (616x1064, 544x1216); sides must be multiples of 28 / 32.
        model_kwargs: builder keyword arguments (JSON values), e.g. ``{size: small}``
            (``metric3d_vit``: small, large, giant2, or the test-only tiny;
            ``metric3d_convnext``: tiny, large).
        init_from: start from these weights (an official ``.pth``, read weights-only, or a
            metricdepth ``.safetensors`` of the same arch and kwargs; strict); None: the
            initialiser. Relative paths are relative to the config file's folder.
        datasets: the sources, sampled by weight.
        batch_size: images per process per step.
        steps: optimiser steps.
        lr, weight_decay: AdamW (no decay on biases and norm weights).
        lr_encoder, lr_decoder: learning rates of the encoder and the decoder parameters
            (``metricdepth.train.optim``); None: ``lr``.
        weight_decay_encoder, weight_decay_decoder: their weight decays; None: ``weight_decay``.
        adam_betas, adam_eps: AdamW's betas and eps.
        freeze: parameters not trained (``requires_grad`` False, in no optimiser group):
            ``encoder`` or a list of parameter-name prefixes (and ``encoder``).
        accumulate: micro-batches of ``batch_size`` per optimiser step (gradient
            accumulation): a step sees ``batch_size * accumulate`` images per process.
        activation_checkpointing: recompute the ViT blocks' activations in the backward
            pass (``metric3d_vit`` only): less memory, about one more encoder forward.
        clamp_gradient: the gradient of the ViT decoder's depth clamp to [0.1, 200]
            canonical units: ``straight_through`` (default: as if unclamped, so a prediction
            pushed past the floor is pulled back) or ``official`` (ReLUs: no gradient outside
            the range, where a decoder trained from scratch can stay for good). The values,
            and so inference, are the same either way (docs/finetune.md, deviations).
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: ``"cosine"`` or ``"poly"`` (power 0.9) decay to ``lr * min_lr_ratio``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        min_lr: final learning rate of every group (absolute; overrides ``min_lr_ratio``).
        grad_clip: max gradient norm (0: no clipping).
        precise_bn_batches: after the last step, re-estimate the BatchNorm statistics as the
            plain average over this many further training batches (forward only; 0: keep the
            running averages of the last steps, which follow the last few batches).
        losses: the loss config (``metricdepth.train.objective``). Official architectures:
            the official Metric3D v2 losses by short name (``loss_set.LOSS_NAMES``:
            ``gru_sequence``, ``vnl``, ``hdn``, ``hdsn``, ``pwn_planes``, ``normal_branch``,
            ``deno``, ``sky``, ``sky_gru``, ``silog``), each a weight or ``{weight: w,
            <official constructor arguments>}``; default: ``loss_preset``'s list, else
            ``{gru_sequence: 1.0}``. ``small_unet``: its own ``l1_log`` and ``silog`` (weights
            only); default from ``loss_l1_log`` and ``loss_silog``.
        loss_preset: an official config's loss list (``loss_presets.preset``, e.g.
            ``vit.raft5.small``, ``vit.raft5.large.kitti``), used when ``losses`` is not
            given; the resolved config holds both (they must then agree).
        loss_mode: ``corrected`` (default: the documented bugs of the official losses fixed)
            or ``official`` (reproduced); official architectures only (docs/losses.md).
        loss_l1_log, loss_silog: ``small_unet``'s shorthand for ``losses: {l1_log: ..,
            silog: ..}`` (kept in step with ``losses`` in the resolved config; 0 for the
            official architectures).
        silog_lambda: the variance focus of ``small_unet``'s own SILog (0: log-RMSE, 1: fully
            scale-invariant).
        checkpoint_every: save a resumable checkpoint every N steps (and at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every: write a line to ``log.jsonl`` every N steps.
        progress: show a progress bar (rank 0).
        precision: ``"fp32"`` or ``"bf16"``: the forward pass under bfloat16 autocast (CPU or
            CUDA; the loss and the weights stay float32). The network's last layer runs in
            bfloat16 too, so the log-depth the loss sees is rounded to bfloat16 (steps of
            1.6-3 % in depth for depths of 7-3000 units); inference is float32 either way.
            About 1.4x faster steps on a CPU with AVX-512 bf16.
        threads: ``torch.set_num_threads`` per process (1 is fastest on a shared CPU).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        workers: DataLoader worker processes (0: load in the training process).
    """

    name: str
    datasets: tuple[DatasetConfig, ...]
    out_dir: str = "runs"
    seed: int = 0
    variant: str = "label"
    canonical_focal_px: float = 250.0
    input_hw: tuple[int, int] = (96, 128)
    resize_range: tuple[float, float] = (1.0, 1.0)
    resize_prob: float = 1.0
    resize_base: str = "none"
    crop: str = "rand"
    flip_prob: float = 0.5
    focal_mode: str = "mean"
    min_depth_m: float = 0.05
    max_depth_m: float = 80.0
    infer_resize: str = "fit"
    infer_hw: tuple[int, int] | None = None
    size_multiple: int = 32
    model_name: str = ""
    bundled_name: bool = False
    description: str = ""
    intended_use: str = ""
    real_photos: bool | None = None
    arch: str = "small_unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    batch_size: int = 16
    steps: int = 1000
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.02
    lr_encoder: float | None = None
    lr_decoder: float | None = None
    weight_decay_encoder: float | None = None
    weight_decay_decoder: float | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    min_lr: float | None = None
    freeze: tuple[str, ...] = ()
    accumulate: int = 1
    activation_checkpointing: bool = False
    clamp_gradient: str = "straight_through"
    grad_clip: float = 1.0
    precise_bn_batches: int = 0
    loss_l1_log: float = 1.0
    loss_silog: float = 0.0
    silog_lambda: float = 0.85
    losses: dict[str, Any] = field(default_factory=dict)
    loss_preset: str | None = None
    loss_mode: str = "corrected"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    precision: str = "fp32"
    threads: int = 1
    device: str = "auto"
    workers: int = 0

    def __post_init__(self) -> None:
        if not self.model_name:
            object.__setattr__(self, "model_name", self.name)
        _check_model_name(self.model_name, self.bundled_name)
        focals = {d.assumed_focal_px for d in self.datasets} - {None}
        if len(focals) > 1:  # a model records one assumed camera (data.dataset.assumed_focal)
            raise ValueError(f"datasets: assume different focal lengths {sorted(focals)}; use one")

    # ------------------------------------------------------------------ derived
    @property
    def inference_resize(self) -> str:
        """The ``CanonicalSpace.resize`` of the trained model."""
        return "focal" if self.variant == "image" else self.infer_resize

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (tuples as lists), with a format tag."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        data["format"] = CONFIG_FORMAT
        return data

    def training_fields(self) -> dict[str, Any]:
        """The fields that decide the trained weights (what a resume must not change)."""
        data = self.to_dict()
        for key in (
            "out_dir",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "progress",
            "threads",
            "device",
            "workers",
            "description",
            "intended_use",
            "real_photos",
            "activation_checkpointing",
            "format",
        ):
            data.pop(key, None)
        return data

    def write(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML (atomically)."""
        with atomic_write(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _check_model_name(model_name: str, bundled_name: bool) -> None:
    """A trained model's records must never pass for a registered model's (the bundled one
    unless ``bundled_name``, or an official one): ValueError naming ``model_name``."""
    from metricdepth.models.registry import list_models

    if model_name == DEFAULT_MODEL and not bundled_name:
        raise ValueError(
            f"model_name: {model_name!r} is the bundled model's name; give the trained model "
            "its own (model_name, or the config's name), or set bundled_name: true to rebuild "
            "the bundled model"
        )
    if model_name != DEFAULT_MODEL and model_name in list_models():
        raise ValueError(
            f"model_name: {model_name!r} is a registered model's name; give the trained model "
            "its own (model_name, or the config's name)"
        )


# ---------------------------------------------------------------------- parsing
def _defaults(cls) -> dict[str, Any]:
    """Every field of a config dataclass and its default (None for a required one)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


_DATASET_DEFAULTS = _defaults(DatasetConfig)
_TRAIN_DEFAULTS = _defaults(TrainConfig)


#: ``SynthConfig`` from a config's ``synth`` mapping (kept here for existing imports).
make_synth_config = SynthConfig.from_dict


def config_from_dict(
    raw: Any, *, base_dir: str | os.PathLike = ".", source: str = "config"
) -> TrainConfig:
    """Validate a mapping (as read from YAML) into a ``TrainConfig`` (``train.config_check``).

    Relative dataset paths are resolved against ``base_dir``. ``source`` names the file in
    error messages.
    """
    check = Checker(source)
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of config fields, got {type(raw).__name__}")
    raw = dict(raw)
    fmt = raw.pop("format", CONFIG_FORMAT)
    if fmt != CONFIG_FORMAT:
        check.fail("format", f"must be {CONFIG_FORMAT!r}, got {fmt!r}")
    values = check_fields(
        raw, base_dir, check, train_defaults=_TRAIN_DEFAULTS, dataset_defaults=_DATASET_DEFAULTS
    )
    values["datasets"] = tuple(DatasetConfig(**d) for d in values["datasets"])
    try:
        config = TrainConfig(**values)
    except ValueError as error:  # TrainConfig.__post_init__: model name, assumed focals
        raise ValueError(f"{source}: {error}") from None
    return post_checks(config, check)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML training config; relative dataset paths are relative to its folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({type(error).__name__}: {error})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(error).split())})") from None
    return config_from_dict(raw, base_dir=path.parent, source=str(path))
