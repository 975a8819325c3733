"""Reading checkpoints and loading them strictly: the one place a state dict is checked.

Every loader in metricdepth goes through ``load_strict``: each expected tensor present, none
extra, every shape and dtype equal, or one ValueError line that names the architecture and the
first offending keys. Torch files are read with ``weights_only=True``, so a checkpoint can
never run code.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def _short_list(items: list[str], limit: int = 3) -> str:
    more = len(items) - limit
    return "[" + ", ".join(items[:limit]) + (f", ... +{more} more" if more > 0 else "") + "]"


def check_state_dict(
    expected: Mapping[str, Tensor],
    given: Mapping[str, Any],
    label: str,
    *,
    optional: Iterable[str] = (),
    hint: str = "",
) -> None:
    """Raise one ValueError line unless ``given`` has exactly ``expected``'s tensors.

    Keys in ``optional`` may be missing (the model keeps its own value for them).
    """
    optional = set(optional)
    missing = [k for k in expected if k not in given and k not in optional]
    unexpected = [k for k in given if k not in expected]
    bad_shape: list[str] = []
    bad_dtype: list[str] = []
    for key, ref in expected.items():
        got = given.get(key)
        if got is None:
            continue
        if not isinstance(got, Tensor):
            bad_dtype.append(f"{key}: got {type(got).__name__}, expected a tensor")
        elif tuple(got.shape) != tuple(ref.shape):
            bad_shape.append(f"{key}: got {tuple(got.shape)}, expected {tuple(ref.shape)}")
        elif got.dtype != ref.dtype:
            bad_dtype.append(f"{key}: got {got.dtype}, expected {ref.dtype}")
    parts = []
    for what, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("with wrong shape", bad_shape),
        ("with wrong dtype", bad_dtype),
    ):
        if items:
            parts.append(f"{len(items)} {what} {_short_list(items)}")
    if parts:
        raise ValueError(
            f"state dict does not match {label} ({len(expected)} tensors): "
            + "; ".join(parts)
            + (f"; {hint}" if hint else "")
        )


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    label: str,
    *,
    optional: Iterable[str] = (),
    hint: str = "",
) -> None:
    """``check_state_dict`` then load; a model built on ``meta`` takes the tensors themselves."""
    expected = model.state_dict()
    check_state_dict(expected, state_dict, label, optional=optional, hint=hint)
    state = dict(state_dict)
    for key in set(optional) - set(state):
        if key in expected:  # keep the model's own (initial) value of an unused tensor
            state[key] = torch.zeros_like(expected[key], device="cpu")
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict(state, strict=True, assign=on_meta)


def read_torch_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """A ``.pth`` state dict (``{"model_state_dict": ...}`` unwrapped), weights only.

    A file that is neither a zip archive (``torch.save``) nor a pickle (the legacy format),
    e.g. a photo given as weights, is refused as such before torch reads it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except FileNotFoundError:
        raise ValueError(f"weights file not found: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({_first_line(error)})") from None
    if head and not (head == b"PK" or head[:1] == b"\x80"):
        raise ValueError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle); "
            "give the .pth file of the official weights or a metricdepth .safetensors"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"weights file not found: {path}") from None
    except pickle.UnpicklingError as error:  # a pickle that would import or call anything
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f"it would load {found.group(1)}" if found else _first_line(error)
        raise ValueError(
            f"{path}: refused: not plain weights ({what}); unpickling it could run code, and "
            "checkpoints are only read weights-only"
        ) from None
    except Exception as error:  # truncated files, other files
        raise ValueError(
            f"{path}: cannot load as a weights-only torch checkpoint ({_first_line(error)})"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("model_state_dict"), Mapping):
        data = data["model_state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(data).__name__}")
    return data
