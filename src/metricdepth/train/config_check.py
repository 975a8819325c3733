"""Validation of a training config mapping (``train.config.config_from_dict``'s rules).

``check_fields`` turns the raw mapping (as read from YAML) into ``TrainConfig`` fields, one field
at a time; ``post_checks`` applies the rules between fields of the built config (the network
built on the meta device for ``model_kwargs`` and ``freeze``, canvas multiples, ``init_from``'s
space). The loss fields are resolved by ``train.objective.resolve_losses``. Every problem is a
``ValueError`` with one line naming the file and the field (``Checker``).

This module does not import ``train.config``: the config passes its field defaults in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metricdepth.data.synthetic import SynthConfig
from metricdepth.models.spec import PRECISIONS
from metricdepth.train.arch import ARCHS, apply_freeze, check_architecture

DATASET_KINDS = ("synthetic", "annotations")
SCHEDULES = ("cosine", "poly")
DEVICES = ("auto", "cpu", "cuda")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Checker:
    """One-line ``ValueError``'s naming the config file and the field."""

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


def dataset_values(
    raw: Any, index: int, base_dir: Path, check: Checker, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``datasets[index]`` validated into ``DatasetConfig`` fields (``defaults``: its field
    defaults, which a written config holds)."""
    where = f"datasets[{index}]"
    if not isinstance(raw, dict):
        check.fail(where, f"must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        check.fail(f"{where}.{unknown[0]}", f"unknown field (known: {', '.join(defaults)})")
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
            if key in raw and raw[key] != defaults[key]:
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
    return values


def _dataset_labels(
    raw: dict[str, Any], kind: str, where: str, check: Checker, values: dict[str, Any]
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


def check_fields(
    raw: dict[str, Any],
    base_dir: str | os.PathLike,
    check: Checker,
    *,
    train_defaults: Mapping[str, Any],
    dataset_defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``TrainConfig`` fields given in ``raw``, validated (datasets as field dicts);
    ``train_defaults`` / ``dataset_defaults``: every field and its default."""
    raw = dict(raw)
    unknown = sorted(set(raw) - set(train_defaults))
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
    values["datasets"] = [
        dataset_values(item, i, Path(base_dir), check, dataset_defaults)
        for i, item in enumerate(datasets)
    ]
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
        "clamp_gradient": ("straight_through", "official"),
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
    _arch_defaults(raw, values, check, train_defaults)
    if raw.get("real_photos") is not None:
        if not isinstance(raw["real_photos"], bool):
            check.fail("real_photos", f"must be true, false or null, got {raw['real_photos']!r}")
        values["real_photos"] = raw["real_photos"]
    return values


def post_checks(config, check: Checker):
    """The rules between fields of a built ``TrainConfig``; returns it with ``infer_hw``
    filled in."""
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


def _check_init_space(config, info, check: Checker) -> None:
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


def _freeze(value: Any, check: Checker) -> tuple[str, ...]:
    """``freeze``: None, ``"encoder"``, or a list of non-empty parameter-name prefixes."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
        check.fail("freeze", f"must be 'encoder' or a list of name prefixes, got {value!r}")
    return tuple(items)


def _arch_defaults(
    raw: dict[str, Any], values: dict[str, Any], check: Checker, defaults: Mapping[str, Any]
) -> None:
    """Fill the architecture's defaults (f_c, canvas) and resolve ``losses`` (in ``values``)."""
    arch = values.get("arch", "small_unet")
    info = ARCHS[arch]
    if info.canonical_focal_px is not None and "canonical_focal_px" not in raw:
        values["canonical_focal_px"] = info.canonical_focal_px
    if info.canvas_hw is not None:
        values.setdefault("input_hw", info.canvas_hw)
        values.setdefault("infer_hw", info.canvas_hw)
    from metricdepth.train.objective import resolve_losses

    resolve_losses(raw, values, check, arch, defaults)
