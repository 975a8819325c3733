"""Reading the official-loss fixtures of ``shared/lossfix`` (README there) for the parity tests.

The folder is env ``METRICDEPTH_LOSSFIX`` or ``<repo>/../shared/lossfix``. When it is missing the
tests skip, unless ``METRICDEPTH_REQUIRE_SHARED=1`` (then they fail).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

LOSSFIX = Path(
    os.environ.get("METRICDEPTH_LOSSFIX")
    or Path(__file__).resolve().parents[2] / "shared" / "lossfix"
)

#: README "Tolerances": float64 value rtol, gradient atol as a fraction of max|g|.
F64_VALUE_RTOL = 1e-9
F64_GRAD_FRAC = 1e-8
PWN_F64_TOL = 1e-6
#: float32: value rtol / atol, gradient fraction of max|g|.
F32_VALUE_RTOL = 1e-5
F32_VALUE_ATOL = 1e-8
F32_GRAD_FRAC = 2e-4


def case_params(pattern: str) -> list[Any]:
    """pytest params, one per case file matching ``pattern`` (a placeholder when none)."""
    files = sorted(LOSSFIX.glob(pattern)) if LOSSFIX.is_dir() else []
    if not files:
        return [pytest.param(None, id=f"no-{pattern}")]
    return [pytest.param(f, id=f.stem) for f in files]


def require(path: Path | None) -> Path:
    """``path``, or skip (fail with METRICDEPTH_REQUIRE_SHARED=1) when there is no fixture."""
    if path is None:
        msg = f"lossfix fixtures not found in {LOSSFIX} (set METRICDEPTH_LOSSFIX)"
        if os.environ.get("METRICDEPTH_REQUIRE_SHARED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@dataclass(frozen=True)
class Case:
    name: str
    case: dict[str, np.ndarray]
    scene: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.meta["constructor_kwargs"]

    @property
    def scene_meta(self) -> dict[str, Any]:
        return json.loads(str(self.scene["meta_json"]))

    def datasets(self) -> list[str]:
        return list(self.scene_meta["dataset"])


def load_case(path: Path | None) -> Case:
    path = require(path)
    with np.load(path) as data:
        case = {k: data[k] for k in data.files}
    meta = json.loads(str(case["meta_json"]))
    with np.load(path.parent / meta["scene_file"]) as data:
        scene = {k: data[k] for k in data.files}
    return Case(path.stem, case, scene, meta)


def load_scene(name: str) -> dict[str, np.ndarray]:
    path = require(
        LOSSFIX / f"scene__{name}.npz" if (LOSSFIX / f"scene__{name}.npz").is_file() else None
    )
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def tensor(arr: np.ndarray, dtype: torch.dtype | None = None, grad: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr))
    if dtype is not None:
        t = t.to(dtype)
    return t.requires_grad_(grad)


def value_rel_error(got: torch.Tensor | float, want: float) -> float:
    got = float(got.detach()) if isinstance(got, torch.Tensor) else float(got)
    if want == 0:
        return abs(got)
    return abs(got - want) / abs(want)


def grad_error(got: torch.Tensor | None, want: np.ndarray) -> float:
    """max|got - want| / max|want| (absolute when want is all zero)."""
    g = np.zeros_like(want) if got is None else got.detach().double().numpy()
    scale = np.abs(want).max()
    err = np.abs(g - want).max()
    return float(err / scale) if scale > 0 else float(err)
