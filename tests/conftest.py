"""Shared test fixtures: the parity folder and the synthetic weights of the official fixtures."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
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

#: Set to 1 (``.ci/run`` does) to make a test that needs a missing shared file fail instead of
#: skip, so that a run can tell "checked against the fixtures" from "fixtures not there".
REQUIRE_SHARED = "METRICDEPTH_REQUIRE_SHARED"


def require_shared(path: Path, what: str) -> None:
    """Skip the calling test or fixture when ``path`` (a shared file or folder: the parity
    fixtures, the samples, ...) does not exist; fail it instead when ``METRICDEPTH_REQUIRE_SHARED``
    is 1. ``what`` names it in the message, e.g. "parity fixtures"."""
    if path.exists():
        return
    message = f"{what} not found at {path} (set METRICDEPTH_SHARED to the shared folder)"
    if os.environ.get(REQUIRE_SHARED) == "1":
        pytest.fail(f"{REQUIRE_SHARED}=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def parity_fixtures() -> Path:
    """The parity folder (``require_shared``: skipped, or failed, without it)."""
    require_shared(PARITY / "make_weights.py", "parity fixtures")
    return PARITY


#: ``@needs_parity``: the test needs shared/parity (skipped without it, failed under
#: METRICDEPTH_REQUIRE_SHARED=1), checked before any of its other fixtures is built.
needs_parity = pytest.mark.usefixtures("parity_fixtures")


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
    require_shared(path, "official key list")
    return json.loads(path.read_text())


def state_layout(model: torch.nn.Module) -> list:
    """``[name, shape, dtype]`` of every tensor of ``model``, the key lists' format."""
    return [
        [name, list(t.shape), str(t.dtype).removeprefix("torch.")]
        for name, t in model.state_dict().items()
    ]


def synthetic_weights(model: str) -> dict[str, torch.Tensor]:
    """The fixtures' synthetic state dict of ``model``, checked against its published SHA-256."""
    require_shared(PARITY / "make_weights.py", "parity fixtures")
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


# ---------------------------------------------------------------- outputs of two execution paths
#: Relative tolerance between the float outputs of two numerically different execution paths of
#: the same model: another torch thread count (``--workers N`` lowers it, the CLI sets one thread
#: per usable CPU, the API keeps torch's default), another process (the writer process runs one
#: thread), a TorchScript trace, another CPU kernel (oneDNN/AMX on Intel, AVX2 on AMD, NEON on
#: ARM). float32 sums taken in another order differ by a few ulp per layer: 9.2e-7 was measured
#: between the CLI with ``--workers 1`` and the API on an Intel Sapphire Rapids. 1e-5 (about
#: 80 ulp) is 10 um at 1 m, far below any depth error that matters.
PATH_RTOL = 1e-5


def assert_outputs_match(
    actual: dict[str, bytes], expected: dict[str, bytes], rtol: float = PATH_RTOL
) -> None:
    """Two runs' files (relative name -> bytes) hold the same outputs, up to ``rtol``.

    For runs that took numerically different paths (see ``PATH_RTOL``); runs of the same code
    with the same thread count in the same kind of process are compared byte for byte instead.
    Same names; every file as ``assert_file_matches``; every record's ``bytes`` are the sizes
    of its own run's files.
    """
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_file_matches(name, actual[name], expected[name], rtol)
    for files in (actual, expected):
        for name, data in files.items():
            if name.endswith(".json") and not Path(name).name.startswith("."):
                record = json.loads(data)
                folder = Path(name).parent
                for kind, size in record.get("bytes", {}).items():
                    listed = (folder / record["files"][kind]).as_posix()
                    assert len(files[listed]) == size, (name, kind)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too): relative path -> bytes (records
    without their wall-clock ``timings_ms``, the one part of a run that is not reproducible)."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): untimed(p) for p in folder.rglob("*") if p.is_file()}


def untimed(path: Path) -> bytes:
    """The bytes of ``path``; for a record (``S.json``) with ``timings_ms``, its bytes with
    that entry removed (the rest of the record unchanged, byte for byte)."""
    data = path.read_bytes()
    if path.suffix != ".json" or b'"timings_ms"' not in data:
        return data
    return re.sub(rb'\n  "timings_ms": \{[^}]*\},?', b"", data)


def assert_file_matches(name: str, got: bytes, want: bytes, rtol: float = PATH_RTOL) -> None:
    """One output file of another execution path holds the values of ``want``.

    ``.npy``: same shape and dtype, the same invalid (zero or NaN) pixels, depth within
    ``rtol`` of each value, other maps (normals, confidence) within ``rtol`` of their largest
    value. ``.depth.png`` (uint16 mm): within 1 mm (a value near a half millimetre may round
    the other way). ``.ply``: the same header (so the same valid points), colours exact,
    coordinates within ``rtol``. ``.vis.png``: same size, at most 2 % of pixels differ (those
    near a step of the 256-colour map). ``.json``: the same keys and values, numbers within
    ``rtol``; ``timings_ms`` values (wall-clock) and the byte counts of PNGs (compressed:
    their size follows the pixels) are not compared. Anything else: byte for byte. A file
    cut short or another image's file fails (it does not parse, or its shape or values differ).
    """
    if got == want:
        return
    try:
        _assert_same_values(name, got, want, rtol)
    except (ValueError, EOFError, KeyError, IndexError) as error:  # it does not parse
        raise AssertionError(f"{name}: not a whole file ({error})") from error


def _assert_same_values(name: str, got: bytes, want: bytes, rtol: float) -> None:
    if name.endswith(".npy"):
        a, b = np.load(io.BytesIO(got)), np.load(io.BytesIO(want))
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a == 0, b == 0), name
        scale = 0.0 if name.endswith(".depth.npy") else rtol * float(np.nanmax(np.abs(b)))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=scale, err_msg=name)
    elif name.endswith(".depth.png"):
        a, b = _png(got, name), _png(want, name)
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint16, name
        assert np.abs(a.astype(np.int64) - b).max() <= 1, name
    elif name.endswith(".png"):
        a, b = _png(got, name), _png(want, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert np.any(a != b, axis=-1).mean() <= 0.02, name
    elif name.endswith(".ply"):
        (head_a, a), (head_b, b) = _ply(got, name), _ply(want, name)
        assert head_a == head_b, name
        for field in b.dtype.names:
            if b.dtype[field].kind == "u":
                assert np.array_equal(a[field], b[field]), (name, field)
        xyz_a = np.stack([a["x"], a["y"], a["z"]], -1)
        xyz_b = np.stack([b["x"], b["y"], b["z"]], -1)
        np.testing.assert_allclose(xyz_a, xyz_b, rtol=rtol, atol=1e-7 * float(np.abs(xyz_b).max()))
    elif name.endswith(".json"):
        _assert_json_close(json.loads(got), json.loads(want), rtol, name)
    else:
        assert got == want, name


def _png(data: bytes, name: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{name}: not a whole PNG"
    return image


def _ply(data: bytes, name: str) -> tuple[bytes, np.ndarray]:
    marker = b"end_header\n"
    assert marker in data, f"{name}: no PLY header"
    head, body = data.split(marker, 1)
    fields = [
        (line.split()[2], "u1" if line.split()[1] == "uchar" else "<f4")
        for line in head.decode("ascii").splitlines()
        if line.startswith("property ")
    ]
    count = int(head.split(b"element vertex ")[1].split(b"\n")[0])
    dtype = np.dtype(fields)
    assert len(body) == count * dtype.itemsize, f"{name}: {len(body)} bytes of points"
    return head, np.frombuffer(body, dtype)


def _assert_json_close(got, want, rtol: float, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key, value in want.items():
            if key == "timings_ms":  # wall-clock, not reproducible
                continue
            if key == "bytes":  # PNG sizes follow their pixels (assert_outputs_match checks)
                value = {k: v for k, v in value.items() if k not in ("png16", "vis")}
                got_value = {k: v for k, v in got[key].items() if k not in ("png16", "vis")}
                assert got_value == value, f"{where}: bytes"
                continue
            _assert_json_close(got[key], value, rtol, f"{where}: {key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_json_close(a, b, rtol, f"{where}[{k}]")
    elif isinstance(want, float):
        assert isinstance(got, (int, float)) and got == pytest.approx(want, rel=rtol), where
    else:
        assert got == want, where


@contextmanager
def torch_threads(count: int):
    """Torch's intra-op threads set to ``count`` for the block (as before afterwards): runs
    compared byte for byte must use one thread count (see ``PATH_RTOL``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
