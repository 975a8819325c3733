"""Precision guard and small helpers shared by the Metric3D loss modules.

``full_precision`` makes a loss compute in float32 (or the caller's float64) even when the
network runs under bf16/fp16 autocast (README quirk 11 of shared/lossfix): autocast is
disabled inside, and float16/bfloat16 tensor arguments are cast to float32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

_LOW_PRECISION = (torch.float16, torch.bfloat16)
#: The loss modes: ``corrected`` fixes the documented bugs of the official losses, ``official``
#: reproduces them (docs/losses.md).
MODES = ("corrected", "official")


def upcast(value: Any, *, float64: bool = False) -> Any:
    """``value`` with float16/bfloat16 tensors as float32 (with ``float64``: every floating
    tensor, float64 included); lists and tuples of tensors element by element, anything else
    as it is."""
    if isinstance(value, torch.Tensor):
        low = value.dtype in _LOW_PRECISION or (float64 and value.is_floating_point())
        return value.float() if low else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(upcast(v, float64=float64) for v in value)
    return value


def _device_type(args: Sequence[Any]) -> str:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)):
            for v in value:
                if isinstance(v, torch.Tensor):
                    return v.device.type
    return "cpu"


def full_precision(fn: F) -> F:
    """Run ``fn`` with autocast disabled and float16/bfloat16 tensor arguments cast to float32.

    Gradients still reach the low-precision tensors (through the cast). Lists and tuples of
    tensors (e.g. ``normal_out_list``) are cast element by element.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(upcast(a) for a in args)
        kwargs = {k: upcast(v) for k, v in kwargs.items()}
        device = _device_type(list(args) + list(kwargs.values()))
        guard = (
            torch.autocast(device_type=device, enabled=False)
            if device in ("cpu", "cuda")
            else contextlib.nullcontext()
        )
        with guard:
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of ``MODES``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """0 with a gradient path to every tensor given (for a loss with nothing to do)."""
    return sum((t.sum() * 0.0 for t in tensors), tensors[0].new_zeros(()))
