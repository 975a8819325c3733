"""Readers for the official-loss fixtures (``../shared/lossfix``, format in its README.md).

The folder is env ``METRICDEPTH_LOSSFIX`` or ``<repo>/../shared/lossfix``, resolved at each call.
``case_params`` lists the files matching a glob as pytest parameters; when the folder (or every
matching file) is missing it yields one placeholder, and ``load_case`` / ``missing`` then skip the
test, or fail it when ``METRICDEPTH_REQUIRE_SHARED=1``.
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

from conftest import require_shared

#: Tolerances of the fixture README ("Tolerances for an independent implementation").
F64_VALUE_RTOL = 1e-9
F64_GRAD_FRAC = 1e-8  # times max |g| of the array
PWN_F64_TOL = 1e-6  # PWN accumulates in float32: value rtol and gradient fraction
F32_VALUE_RTOL = 1e-5
F32_VALUE_ATOL = 1e-8
F32_GRAD_FRAC = 2e-4  # times max |g| of the array
PIPELINE_F32_TOTAL_RTOL = 2e-5  # terms of opposite sign cancel in the total
PIPELINE_F32_TERM_RTOL = 1e-5


def lossfix_dir() -> Path:
    env = os.environ.get("METRICDEPTH_LOSSFIX")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "lossfix"


def missing(path: Path, what: str) -> None:
    """Skip the calling test when ``path`` is missing, or fail it under the CI switch
    (``conftest.require_shared``, the one policy for every shared fixture)."""
    require_shared(path, f"{what} (set METRICDEPTH_LOSSFIX)")


def case_params(pattern: str) -> list:
    """One pytest parameter per file matching ``pattern``; a placeholder path when none."""
    folder = lossfix_dir()
    files = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not files:
        return [pytest.param(folder / pattern, id=f"missing:{pattern}")]
    return [pytest.param(path, id=path.stem) for path in files]


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@dataclass(frozen=True)
class Case:
    """One ``<Loss>__<variant>__<scene>.npz`` (or ``pipeline__*``) file and its scene."""

    path: Path
    arrays: dict[str, np.ndarray]
    scene: dict[str, np.ndarray]
    meta: dict[str, Any]
    scene_meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.meta["constructor_kwargs"]

    @property
    def dataset(self) -> list[str]:
        return list(self.scene_meta["dataset"])

    def value(self, dtype: torch.dtype) -> float:
        return float(self.arrays["value" if dtype == torch.float64 else "value_f32"])

    def scene_tensor(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.from_numpy(np.array(self.scene[key]))
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    def tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.arrays[key]))

    @property
    def mask(self) -> torch.Tensor:
        return self.tensor("mask").bool()

    def leaves(self, key: str, dtype: torch.dtype) -> list[torch.Tensor]:
        """The N entries of a scene list (``predictions_list`` ...) as separate grad leaves."""
        stacked = self.scene_tensor(key, dtype)
        return [stacked[i].clone().requires_grad_(True) for i in range(stacked.shape[0])]


def load_case(path: Path) -> Case:
    """The case file and its scene; skips (or fails) when either is missing."""
    missing(path, "lossfix fixture")
    arrays = _read(path)
    meta = json.loads(str(arrays["meta_json"]))
    scene_path = path.parent / meta["scene_file"]
    missing(scene_path, "lossfix scene")
    scene = _read(scene_path)
    return Case(path, arrays, scene, meta, json.loads(str(scene["meta_json"])))


def load_scene(name: str) -> dict[str, np.ndarray]:
    path = lossfix_dir() / f"scene__{name}.npz"
    missing(path, "lossfix scene")
    return _read(path)


def tensor(arr: np.ndarray, dtype: torch.dtype | None = None, grad: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr))
    if dtype is not None:
        t = t.to(dtype)
    return t.requires_grad_(grad)


def value_error(got: torch.Tensor | float, want: float) -> float:
    """Relative error of a loss value (absolute when the reference is 0)."""
    got_f = float(got.detach()) if isinstance(got, torch.Tensor) else float(got)
    return abs(got_f - want) / abs(want) if want != 0 else abs(got_f)


def grad_error(grad: torch.Tensor | None, want: np.ndarray) -> float:
    """max |grad - want| / max |want| (absolute when the reference is all zeros)."""
    g = np.zeros_like(want) if grad is None else grad.detach().double().numpy()
    scale = float(np.abs(want).max())
    err = float(np.abs(g - want).max())
    return err / scale if scale > 0 else err


def assert_value(got: torch.Tensor, case: Case, dtype: torch.dtype) -> float:
    want = case.value(dtype)
    err = value_error(got, want)
    if dtype == torch.float64:
        assert err <= F64_VALUE_RTOL, f"value {float(got)!r} vs {want!r} (rel {err:.3g})"
    else:
        assert abs(float(got.detach()) - want) <= F32_VALUE_ATOL + F32_VALUE_RTOL * abs(want), (
            f"float32 value {float(got)!r} vs {want!r} (rel {err:.3g})"
        )
    return err


def assert_grad(
    grad: torch.Tensor | None, want: np.ndarray, dtype: torch.dtype, name: str
) -> float:
    """Compare with the float64 reference gradient at the README tolerance for ``dtype``."""
    err = grad_error(grad, want)
    tol = F64_GRAD_FRAC if dtype == torch.float64 else F32_GRAD_FRAC
    assert err <= tol, f"gradient {name}: max error {err:.3g} of max |g| (tol {tol:g})"
    return err


def assert_list_grads(leaves: list[torch.Tensor], want: np.ndarray, dtype, name: str) -> float:
    """Per-entry gradient check of a list of leaves against the stacked (N, ...) reference."""
    assert len(leaves) == want.shape[0]
    return max(
        assert_grad(leaf.grad, want[i], dtype, f"{name}[{i}]") for i, leaf in enumerate(leaves)
    )


def report(case: Case, dtype: torch.dtype, value_err: float, grad_err: float) -> None:
    """Print the measured errors (visible with ``pytest -s`` or in ``-rA`` summaries)."""
    tag = "f64" if dtype == torch.float64 else "f32"
    print(f"LOSSFIX {case.name} {tag} value_rel={value_err:.3g} grad_rel={grad_err:.3g}")
