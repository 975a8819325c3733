"""The test suite's own machinery (conftest): the shared-fixture switch and the comparison of
outputs made on two execution paths."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import (
    PATH_RTOL,
    REQUIRE_SHARED,
    assert_file_matches,
    assert_outputs_match,
    require_shared,
    tiny_model,
)
from metricdepth.batch import run_batch
from metricdepth.data.inputs import collect_inputs

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ shared fixtures: skip or fail
def test_require_shared_skips_without_the_switch_and_fails_with_it(tmp_path, monkeypatch):
    require_shared(tmp_path, "a folder that exists")  # nothing happens
    missing = tmp_path / "lossfix" / "cases.json"
    monkeypatch.delenv(REQUIRE_SHARED, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"lossfix cases not found at .*cases\.json"):
        require_shared(missing, "lossfix cases")
    monkeypatch.setenv(REQUIRE_SHARED, "1")
    with pytest.raises(pytest.fail.Exception, match=r"METRICDEPTH_REQUIRE_SHARED=1 but lossfix"):
        require_shared(missing, "lossfix cases")


PARITY_TESTS = """
from conftest import PARITY, needs_parity, require_shared


@needs_parity
def test_marked():
    pass


def test_calling():
    require_shared(PARITY / "vit_small__nyu.npz", "parity fixtures")
"""


def run_parity_tests(folder: Path, required: bool) -> subprocess.CompletedProcess:
    """Two tiny parity tests, with tests/conftest.py as a plugin and ``folder`` as the shared
    folder (it has no parity/)."""
    (folder / "test_tiny_parity.py").write_text(PARITY_TESTS)
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_SHARED}
    env["METRICDEPTH_SHARED"] = str(folder)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    if required:
        env[REQUIRE_SHARED] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p"]
    return subprocess.run(
        [*command, "conftest", "test_tiny_parity.py"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_without_the_parity_folder_the_parity_tests_skip_or_under_the_switch_fail(tmp_path):
    """``.ci/run`` sets the switch: a CI run without ../shared/parity fails."""
    skipped = run_parity_tests(tmp_path, required=False)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "2 skipped" in skipped.stdout and "failed" not in skipped.stdout, skipped.stdout
    failed = run_parity_tests(tmp_path, required=True)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "skipped" not in failed.stdout, failed.stdout
    assert "1 failed, 1 error" in failed.stdout, failed.stdout  # the marked one: in its setup
    message = f"{REQUIRE_SHARED}=1 but parity fixtures not found at {tmp_path / 'parity'}/"
    assert failed.stdout.count(message) >= 2, failed.stdout
    assert f"export {REQUIRE_SHARED}=1\n" in (ROOT / ".ci" / "run").read_text()


# ------------------------------------------------------------------ outputs of two paths
@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, bytes]:
    """Every kind of file a run writes, for two small images (relative name -> bytes)."""
    folder = tmp_path_factory.mktemp("harness")
    rng = np.random.default_rng(5)
    (folder / "in").mkdir()
    for k in range(2):
        image = rng.integers(0, 256, (24 + 4 * k, 36, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / "in" / f"im{k}.png"), image)
    out = folder / "out"
    save = {"depth", "png16", "ply", "vis"}
    run_batch(tiny_model(), collect_inputs([folder / "in"]), out, save, progress=False)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def scaled_ply(data: bytes, factor: float) -> bytes:
    head, body = data.split(b"end_header\n", 1)
    vertex = np.frombuffer(body, np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])).copy()
    vertex["xyz"] *= np.float32(factor)
    return head + b"end_header\n" + vertex.tobytes()


def test_outputs_within_the_tolerance_match(outputs):
    assert_outputs_match(outputs, dict(outputs))
    near = dict(outputs)
    depth = np.load(io.BytesIO(outputs["im0.depth.npy"]))
    near["im0.depth.npy"] = npy(depth * np.float32(1 + PATH_RTOL / 5))
    mm = cv2.imdecode(np.frombuffer(outputs["im0.depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    near["im0.depth.png"] = png(mm + np.uint16(1))  # a millimetre rounded the other way
    near["im0.ply"] = scaled_ply(outputs["im0.ply"], 1 + PATH_RTOL / 5)
    record = json.loads(outputs["im0.json"])
    record["depth_m"]["median"] *= 1 + PATH_RTOL / 5
    record["bytes"]["png16"] = len(near["im0.depth.png"])
    near["im0.json"] = json.dumps(record).encode()
    assert_outputs_match(near, outputs)


@pytest.mark.parametrize(
    "change",
    ["depth off", "depth cut short", "depth pixel invalid", "mm off by 2", "png cut short",
     "ply off", "ply cut short", "vis repainted", "record number off", "record key missing",
     "record bytes wrong", "file missing", "file added"],
)  # fmt: skip
def test_outputs_beyond_the_tolerance_or_damaged_do_not_match(outputs, change):
    changed = dict(outputs)
    depth = np.load(io.BytesIO(outputs["im0.depth.npy"]))
    mm = cv2.imdecode(np.frombuffer(outputs["im0.depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    record = json.loads(outputs["im0.json"])
    if change == "depth off":
        changed["im0.depth.npy"] = npy(depth * np.float32(1 + 5 * PATH_RTOL))
    elif change == "depth cut short":
        changed["im0.depth.npy"] = outputs["im0.depth.npy"][:-7]
    elif change == "depth pixel invalid":
        depth[0, 0] = 0
        changed["im0.depth.npy"] = npy(depth)
    elif change == "mm off by 2":
        changed["im0.depth.png"] = png(mm + np.uint16(2))
    elif change == "png cut short":
        changed["im0.depth.png"] = outputs["im0.depth.png"][:-20]
    elif change == "ply off":
        changed["im0.ply"] = scaled_ply(outputs["im0.ply"], 1 + 5 * PATH_RTOL)
    elif change == "ply cut short":
        changed["im0.ply"] = outputs["im0.ply"][:-15]
    elif change == "vis repainted":
        vis = cv2.imdecode(np.frombuffer(outputs["im0.vis.png"], np.uint8), cv2.IMREAD_COLOR)
        changed["im0.vis.png"] = png(255 - vis)
    elif change == "record number off":
        record["depth_m"]["median"] *= 1 + 5 * PATH_RTOL
        changed["im0.json"] = json.dumps(record).encode()
    elif change == "record key missing":
        del record["camera_source"]
        changed["im0.json"] = json.dumps(record).encode()
    elif change == "record bytes wrong":
        record["bytes"]["depth"] += 1
        changed["im0.json"] = json.dumps(record).encode()
    elif change == "file missing":
        del changed["im1.ply"]
    else:
        changed["im1.normal.npy"] = npy(depth)
    with pytest.raises(AssertionError):
        assert_outputs_match(changed, outputs)


def test_a_file_of_another_image_does_not_match(outputs):
    for suffix in ("depth.npy", "depth.png", "ply", "vis.png"):
        with pytest.raises(AssertionError):
            assert_file_matches(f"im0.{suffix}", outputs[f"im1.{suffix}"], outputs[f"im0.{suffix}"])
