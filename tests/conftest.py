"""Shared test fixtures: the parity folder and the synthetic weights of the official fixtures."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from torch import nn

from metricdepth.canonical import CanonicalSpace
from metricdepth.models.registry import DepthModel
from metricdepth.models.spec import ModelSpec

# CI (`.ci/run` sets METRICDEPTH_HYPOTHESIS=ci) replays the same generated examples every run,
# so a landing never depends on luck; a developer's run draws new ones and keeps exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("METRICDEPTH_HYPOTHESIS") == "ci":
    settings.load_profile("ci")

#: ``<repo>/../shared`` unless METRICDEPTH_SHARED names another folder.
SHARED = Path(
    os.environ.get("METRICDEPTH_SHARED") or Path(__file__).resolve().parents[2] / "shared"
)
PARITY = SHARED / "parity"

#: Global SHA-256 of the synthetic weights (shared/parity/README.md).
WEIGHTS_SHA256 = {
    "vit_small": "0da8a6d13e68e73dd1163c0eec5cac2098abe993152569d3f14756c5c81fa527",
    "convnext_tiny": "e4e81cfca5ea5af056b7a53e11d5280d80b1318cc0554daf27e19f39e21cedd4",
}

#: Official intrinsics of the fixture images (shared/parity/README.md).
PARITY_IMAGES = {
    "kitti": ("img_kitti_0000000050.png", (707.0493, 707.0493, 604.0814, 180.5066)),
    "nyu": ("img_nyu_rgb_00000.jpg", (518.8579, 519.46961, 325.58245, 253.73617)),
    "wild": ("img_wild_jonathan-borba-CnthDZXCdoY-unsplash.jpg", (1000.0, 1000.0, 400.0, 600.0)),
}

needs_parity = pytest.mark.skipif(
    not (PARITY / "make_weights.py").is_file(),
    reason=f"parity fixtures not found at {PARITY} (set METRICDEPTH_SHARED to the shared folder)",
)


def make_weights_module() -> ModuleType:
    """``shared/parity/make_weights.py``, imported by path."""
    spec = importlib.util.spec_from_file_location(
        "_parity_make_weights", PARITY / "make_weights.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_keys(model: str) -> list:
    """The official state-dict key list ``[name, shape, dtype]`` of ``model`` (e.g. vit_small)."""
    path = PARITY / f"{model}_keys.json"
    if not path.is_file():
        pytest.skip(f"official key list {path} not found (set METRICDEPTH_SHARED)")
    return json.loads(path.read_text())


def state_layout(model: torch.nn.Module) -> list:
    """``[name, shape, dtype]`` of every tensor of ``model``, the key lists' format."""
    return [
        [name, list(t.shape), str(t.dtype).removeprefix("torch.")]
        for name, t in model.state_dict().items()
    ]


def synthetic_weights(model: str) -> dict[str, torch.Tensor]:
    """The fixtures' synthetic state dict of ``model``, checked against its published SHA-256."""
    if not (PARITY / "make_weights.py").is_file():
        pytest.skip(f"parity fixtures not found at {PARITY} (set METRICDEPTH_SHARED)")
    make_weights = make_weights_module()
    arrays = make_weights.make_state_dict(official_keys(model))
    _, global_sha = make_weights.sha256_report(arrays)
    assert global_sha == WEIGHTS_SHA256[model], "regenerated weights differ from the fixtures'"
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


@pytest.fixture(scope="session")
def vit_small_weights() -> dict[str, torch.Tensor]:
    return synthetic_weights("vit_small")


@pytest.fixture(scope="session")
def convnext_tiny_weights() -> dict[str, torch.Tensor]:
    return synthetic_weights("convnext_tiny")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    much faster than two OpenMP threads contending on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- a tiny deterministic model
class TinyNet(nn.Module):
    """Two seeded 3x3 convolutions -> positive canonical depth that depends on the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth_c": F.softplus(self.conv2(torch.tanh(self.conv1(x)))) + 1.0}


TINY_SPEC = ModelSpec(
    name="tiny-test", arch="tiny_test", space=CanonicalSpace(focal_px=100.0, input_hw=(32, 48))
)


def tiny_model() -> DepthModel:
    return DepthModel(TINY_SPEC, TinyNet()).eval()
