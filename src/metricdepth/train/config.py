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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metricdepth.data.synthetic import SynthConfig
from metricdepth.io import atomic_write
from metricdepth.models.spec import DEFAULT_MODEL
from metricdepth.train.arch import ARCHS, apply_freeze, check_architecture

DATASET_KINDS = ("synthetic", "annotations")
SCHEDULES = ("cosine", "poly")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
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
_DATASET_FIELDS = {f.name: f for f in dataclasses.fields(DatasetConfig)}
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise ValueError(f"{self.source}: {key}: {message}")

    def int(self, key: str, value: Any, minimum: int) -> int:
        if not _is_int(value) or value < minimum:
            self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def number(self, key: str, value: Any, minimum: float, *, strict: bool = False) -> float:
        ok = _is_number(value) and math.isfinite(value)
        ok = ok and (value > minimum if strict else value >= minimum)
        if not ok:
            relation = ">" if strict else ">="
            self.fail(key, f"must be a finite number {relation} {minimum}, got {value!r}")
        return float(value)

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def hw(self, key: str, value: Any) -> tuple[int, int]:
        if not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_int(v) and v > 0 for v in value)
        ):
            self.fail(key, f"must be [height, width], two integers > 0, got {value!r}")
        return (int(value[0]), int(value[1]))

    def range(self, key: str, value: Any) -> tuple[float, float]:
        if not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_number(v) and math.isfinite(v) for v in value)
            and 0 < value[0] <= value[1]
        ):
            self.fail(key, f"must be [low, high] with 0 < low <= high, got {value!r}")
        return (float(value[0]), float(value[1]))

    def json_dict(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.fail(key, f"must be a mapping with string keys, got {value!r}")
        try:
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            self.fail(key, "must hold plain JSON values only")
        raise AssertionError  # unreachable


def _dataset(raw: Any, index: int, base_dir: Path, check: _Checker) -> DatasetConfig:
    where = f"datasets[{index}]"
    if not isinstance(raw, dict):
        check.fail(where, f"must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(_DATASET_FIELDS))
    if unknown:
        check.fail(f"{where}.{unknown[0]}", f"unknown field (known: {', '.join(_DATASET_FIELDS)})")
    if "kind" not in raw:
        check.fail(f"{where}.kind", f"missing; one of {', '.join(DATASET_KINDS)}")
    kind = check.choice(f"{where}.kind", raw["kind"], DATASET_KINDS)
    values: dict[str, Any] = {"kind": kind}
    values["weight"] = check.number(f"{where}.weight", raw.get("weight", 1.0), 0, strict=True)
    values["cache"] = raw.get("cache", True)
    if not isinstance(values["cache"], bool):
        check.fail(f"{where}.cache", f"must be true or false, got {values['cache']!r}")
    _dataset_labels(raw, kind, where, check, values)
    if kind == "annotations":
        for key in ("seed", "num_scenes", "synth"):  # written configs hold the defaults
            if key in raw and raw[key] != DatasetConfig(kind).to_dict()[key]:
                check.fail(f"{where}.{key}", "only applies to kind 'synthetic'")
        path = raw.get("path")
        if not isinstance(path, str) or not path:
            check.fail(f"{where}.path", f"must name an annotation JSON, got {path!r}")
        values["path"] = str((base_dir / path).resolve())
        root = raw.get("root")
        if root is not None:
            if not isinstance(root, str) or not root:
                check.fail(f"{where}.root", f"must be a folder path, got {root!r}")
            values["root"] = str((base_dir / root).resolve())
        scale = raw.get("depth_scale")
        if scale is not None:
            values["depth_scale"] = check.number(f"{where}.depth_scale", scale, 0, strict=True)
    else:
        for key in ("path", "root", "depth_scale"):
            if raw.get(key) is not None:
                check.fail(f"{where}.{key}", "only applies to kind 'annotations'")
        values["seed"] = check.int(f"{where}.seed", raw.get("seed", 0), 0)
        values["num_scenes"] = check.int(f"{where}.num_scenes", raw.get("num_scenes", 1000), 1)
        synth = check.json_dict(f"{where}.synth", raw.get("synth", {}))
        try:
            SynthConfig.from_dict(synth)
        except (TypeError, ValueError) as error:
            check.fail(f"{where}.synth", " ".join(str(error).split()))
        values["synth"] = synth
    return DatasetConfig(**values)


def _dataset_labels(
    raw: dict[str, Any], kind: str, where: str, check: _Checker, values: dict[str, Any]
) -> None:
    """Validate ``name``, ``data_type``, ``sparse`` and ``assumed_focal_px`` into ``values``."""
    from metricdepth.data.dataset import check_data_type

    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        check.fail(f"{where}.name", f"must be a non-empty string, got {name!r}")
    if raw.get("data_type") is not None:
        try:
            values["data_type"] = check_data_type(raw["data_type"])
        except ValueError as error:
            check.fail(f"{where}.data_type", str(error).removeprefix("data_type: "))
    sparse = raw.get("sparse")
    if sparse is not None and not isinstance(sparse, bool):
        check.fail(f"{where}.sparse", f"must be true, false or null (auto), got {sparse!r}")
    values.update(name=name, sparse=sparse)
    focal = raw.get("assumed_focal_px")
    if focal is not None:
        if kind != "annotations":
            check.fail(f"{where}.assumed_focal_px", "only applies to kind 'annotations'")
        values["assumed_focal_px"] = check.number(
            f"{where}.assumed_focal_px", focal, 0, strict=True
        )


#: ``SynthConfig`` from a config's ``synth`` mapping (kept here for existing imports).
make_synth_config = SynthConfig.from_dict


def config_from_dict(
    raw: Any, *, base_dir: str | os.PathLike = ".", source: str = "config"
) -> TrainConfig:
    """Validate a mapping (as read from YAML) into a ``TrainConfig``.

    Relative dataset paths are resolved against ``base_dir``. ``source`` names the file in
    error messages.
    """
    check = _Checker(source)
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of config fields, got {type(raw).__name__}")
    raw = dict(raw)
    fmt = raw.pop("format", CONFIG_FORMAT)
    if fmt != CONFIG_FORMAT:
        check.fail("format", f"must be {CONFIG_FORMAT!r}, got {fmt!r}")
    unknown = sorted(set(raw) - set(_TRAIN_FIELDS))
    if unknown:
        check.fail(unknown[0], "unknown field (see metricdepth.train.config.TrainConfig)")
    for key in ("name", "datasets"):
        if key not in raw:
            check.fail(key, "missing (required)")
    values: dict[str, Any] = {}
    name = raw["name"]
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        check.fail("name", f"must be a non-empty folder name without slashes, got {name!r}")
    values["name"] = name
    datasets = raw["datasets"]
    if not isinstance(datasets, list) or not datasets:
        check.fail("datasets", "must be a non-empty list")
    values["datasets"] = tuple(
        _dataset(item, i, Path(base_dir), check) for i, item in enumerate(datasets)
    )
    for key in ("out_dir", "model_name", "description", "intended_use"):
        if key in raw:
            optional = key in ("description", "intended_use")
            if not isinstance(raw[key], str) or (not optional and not raw[key]):
                check.fail(key, f"must be a string, got {raw[key]!r}")
            values[key] = raw[key]
    ints = {
        "seed": 0,
        "size_multiple": 1,
        "batch_size": 1,
        "steps": 1,
        "warmup_steps": 0,
        "precise_bn_batches": 0,
        "checkpoint_every": 1,
        "keep_checkpoints": 1,
        "log_every": 1,
        "threads": 1,
        "workers": 0,
        "accumulate": 1,
    }
    for key, minimum in ints.items():
        if key in raw:
            values[key] = check.int(key, raw[key], minimum)
    positive = ("canonical_focal_px", "lr", "max_depth_m", "adam_eps")
    non_negative = (
        "weight_decay",
        "min_lr_ratio",
        "grad_clip",
        "loss_l1_log",
        "loss_silog",
        "silog_lambda",
        "min_depth_m",
        "resize_prob",
        "flip_prob",
    )
    for key in positive:
        if key in raw:
            values[key] = check.number(key, raw[key], 0, strict=True)
    for key in non_negative:
        if key in raw:
            values[key] = check.number(key, raw[key], 0)
    for key in ("lr_encoder", "lr_decoder"):
        if raw.get(key) is not None:
            values[key] = check.number(key, raw[key], 0, strict=True)
    for key in ("weight_decay_encoder", "weight_decay_decoder", "min_lr"):
        if raw.get(key) is not None:
            values[key] = check.number(key, raw[key], 0)
    for key in ("resize_prob", "flip_prob", "min_lr_ratio", "silog_lambda"):
        if values.get(key, 0) > 1:
            check.fail(key, f"must be in [0, 1], got {values[key]!r}")
    choices = {
        "variant": ("none", "label", "image"),
        "crop": ("rand", "center"),
        "resize_base": ("none", "fit"),
        "focal_mode": ("mean", "fx"),
        "infer_resize": ("fit", "none"),
        "schedule": SCHEDULES,
        "device": DEVICES,
        "arch": tuple(ARCHS),
        "precision": PRECISIONS,
    }
    for key, options in choices.items():
        if key in raw:
            values[key] = check.choice(key, raw[key], options)
    for key in ("input_hw", "infer_hw"):
        if raw.get(key) is not None:
            values[key] = check.hw(key, raw[key])
    if "resize_range" in raw:
        values["resize_range"] = check.range("resize_range", raw["resize_range"])
    if "model_kwargs" in raw:
        values["model_kwargs"] = check.json_dict("model_kwargs", raw["model_kwargs"])
    for key in ("progress", "activation_checkpointing", "bundled_name"):
        if key in raw:
            if not isinstance(raw[key], bool):
                check.fail(key, f"must be true or false, got {raw[key]!r}")
            values[key] = raw[key]
    if "adam_betas" in raw:
        betas = raw["adam_betas"]
        if not (
            isinstance(betas, (list, tuple))
            and len(betas) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in betas)
        ):
            check.fail("adam_betas", f"must be [beta1, beta2], each in [0, 1), got {betas!r}")
        values["adam_betas"] = (float(betas[0]), float(betas[1]))
    if raw.get("init_from") is not None:
        if not isinstance(raw["init_from"], str) or not raw["init_from"]:
            check.fail("init_from", f"must be a weights file path, got {raw['init_from']!r}")
        values["init_from"] = str((Path(base_dir) / raw["init_from"]).resolve())
    values["freeze"] = _freeze(raw.get("freeze"), check)
    _arch_defaults(raw, values, check)
    if raw.get("real_photos") is not None:
        if not isinstance(raw["real_photos"], bool):
            check.fail("real_photos", f"must be true, false or null, got {raw['real_photos']!r}")
        values["real_photos"] = raw["real_photos"]
    try:
        config = TrainConfig(**values)
    except ValueError as error:  # TrainConfig.__post_init__: model name, assumed focals
        raise ValueError(f"{source}: {error}") from None
    if config.min_depth_m >= config.max_depth_m:
        check.fail(
            "min_depth_m", f"must be < max_depth_m ({config.max_depth_m}), got {config.min_depth_m}"
        )
    if config.warmup_steps >= config.steps:
        check.fail("warmup_steps", f"must be < steps ({config.steps}), got {config.warmup_steps}")
    if config.infer_hw is None:
        config = dataclasses.replace(config, infer_hw=config.input_hw)
    try:
        meta_net = check_architecture(config.arch, config.model_kwargs)
    except (TypeError, ValueError) as error:
        check.fail("model_kwargs", " ".join(str(error).split()))
    try:
        apply_freeze(meta_net, config.arch, config.freeze)
    except ValueError as error:
        check.fail("freeze", " ".join(str(error).split()).removeprefix("freeze: "))
    info = ARCHS[config.arch]
    for key in ("input_hw", "infer_hw"):
        hw = getattr(config, key)
        if hw[0] % info.input_multiple or hw[1] % info.input_multiple:
            check.fail(key, f"{config.arch} needs multiples of {info.input_multiple}, got {hw}")
    if config.activation_checkpointing and config.arch != "metric3d_vit":
        check.fail("activation_checkpointing", "applies to metric3d_vit only")
    if config.init_from is not None:
        _check_init_space(config, info, check)
    return config


def _check_init_space(config: TrainConfig, info, check: _Checker) -> None:
    """``init_from``'s weights must predict in the space the config trains (f_c, variant):
    else training would silently move them to another label scale.

    Official ``.pth``: the architecture's f_c (label variant). Our ``.safetensors``: the spec
    inside (when the file is there; a missing file is the loader's error).
    """
    path = Path(config.init_from)
    if path.suffix != ".safetensors":
        if config.canonical_focal_px != info.canonical_focal_px:
            check.fail(
                "canonical_focal_px",
                f"official weights predict at f_c = {info.canonical_focal_px:g} px, got "
                f"{config.canonical_focal_px:g}",
            )
        return
    if not path.is_file():
        return
    from metricdepth.models.registry import read_spec

    try:
        space = read_spec(path).space
    except ValueError as error:
        check.fail("init_from", " ".join(str(error).split()))
    if space.focal_px != config.canonical_focal_px:
        check.fail(
            "canonical_focal_px",
            f"init_from {path.name} predicts at f_c = {space.focal_px:g} px, got "
            f"{config.canonical_focal_px:g}",
        )
    if space.variant != config.variant:
        check.fail(
            "variant",
            f"init_from {path.name} was trained as {space.variant!r}, got {config.variant!r}",
        )


def _freeze(value: Any, check: _Checker) -> tuple[str, ...]:
    """``freeze``: None, ``"encoder"``, or a list of non-empty parameter-name prefixes."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
        check.fail("freeze", f"must be 'encoder' or a list of name prefixes, got {value!r}")
    return tuple(items)


def _arch_defaults(raw: dict[str, Any], values: dict[str, Any], check: _Checker) -> None:
    """Fill the architecture's defaults (f_c, canvas) and resolve ``losses`` (in ``values``)."""
    arch = values.get("arch", "small_unet")
    info = ARCHS[arch]
    if info.canonical_focal_px is not None and "canonical_focal_px" not in raw:
        values["canonical_focal_px"] = info.canonical_focal_px
    if info.canvas_hw is not None:
        values.setdefault("input_hw", info.canvas_hw)
        values.setdefault("infer_hw", info.canvas_hw)
    if info.own_losses:
        _own_losses(raw, values, check, arch)
    else:
        _official_losses(raw, values, check, arch)


def _own_losses(raw: dict[str, Any], values: dict[str, Any], check: _Checker, arch: str) -> None:
    """``small_unet``: ``losses`` (weights of ``objective.OWN_LOSSES``) or the legacy fields."""
    from metricdepth.train.objective import check_losses

    for key in ("loss_preset", "loss_mode"):
        if raw.get(key) is not None and raw[key] != getattr(TrainConfig, key):
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
        defaults = {"l1_log": TrainConfig.loss_l1_log, "silog": TrainConfig.loss_silog}
        losses = {n: (defaults[n] if w is None else w) for n, w in legacy.items()}
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


def _official_losses(
    raw: dict[str, Any], values: dict[str, Any], check: _Checker, arch: str
) -> None:
    """The official architectures: ``losses`` (``loss_set`` short names), ``loss_preset``
    and ``loss_mode``; the resolved ``losses`` always holds the list that trains."""
    from metricdepth.train.loss_guard import MODES
    from metricdepth.train.loss_presets import preset
    from metricdepth.train.loss_set import config_from_terms, terms_from_config
    from metricdepth.train.objective import check_losses

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
