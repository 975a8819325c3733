"""Training with the canonical camera space transform (``variant``: none, label, image).

``run_training(config_path, out_dir=None, resume=True) -> run folder`` trains one run from a
YAML config (``metricdepth.train.config.TrainConfig``); ``python -m metricdepth.train CONFIG``
does the same from a shell and under ``torchrun`` (multi-process data parallel). Attributes load
on first use, so importing this package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_training": "metricdepth.train.loop",
    "train": "metricdepth.train.loop",
    "TrainConfig": "metricdepth.train.config",
    "DatasetConfig": "metricdepth.train.config",
    "load_config": "metricdepth.train.config",
    "config_from_dict": "metricdepth.train.config",
    "compute_loss": "metricdepth.train.objective",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metricdepth.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
