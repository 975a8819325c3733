"""The training benchmarks run end to end at toy size (``--quick``) and write their figures.

The real runs (``benchmarks/finetune_cstm.py``: ViT-S, about 15 min on 2 cores;
``benchmarks/train_speed.py``: about 10 min) are benchmarks; these check the commands: the
training path of ``metricdepth.train`` for each variant, the evaluation by focal set, the
per-configuration subprocess and its memory figures, and the results files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SRC = Path(__file__).resolve().parents[1] / "src"


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow  # about 10 s on 2 idle cores, 30 s on a loaded machine
@pytest.mark.skipif(not (BENCH / "finetune_cstm.py").is_file(), reason="no benchmarks/")
def test_finetune_cstm_quick_trains_both_variants_and_scores_every_focal_set(tmp_path):
    done = _run(
        [
            str(BENCH / "finetune_cstm.py"), "--quick", "--steps", "2",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "out"),
            "--tag", "smoke",
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "smoke.json").read_text())
    assert report["settings"]["size"] == "tiny" and report["settings"]["steps"] == 2
    assert set(report["runs"]) == {"label", "none"}
    for run in report["runs"].values():
        curve = run["curve"]
        assert curve["steps"] == 2 and len(curve["points"]) == 2
        assert math.isfinite(curve["first_mean"]) and curve["first_mean"] > 0
        assert set(run["eval"]) == {"in-range", "wide", "long"}
        for scores in run["eval"].values():
            assert scores["n_images"] == 3
            assert math.isfinite(scores["abs_rel"]) and 0 <= scores["delta1"] <= 1
            assert scores["aligned"]["scale"] > 0
    # the constant reference is scored on the same sets
    assert set(report["constant"]["sets"]) == {"in-range", "wide", "long"}
    markdown = (tmp_path / "out" / "smoke.md").read_text()
    assert "| wide 60-100 (**not trained on**) | label |" in markdown
    assert "random initialisation" in markdown


@pytest.mark.slow  # about 15 s on 2 idle cores (two fresh processes importing torch)
@pytest.mark.skipif(not (BENCH / "train_speed.py").is_file(), reason="no benchmarks/")
def test_train_speed_quick_measures_each_configuration_in_its_own_process(tmp_path):
    out, js = tmp_path / "speed.md", tmp_path / "speed.json"
    done = _run(
        [
            str(BENCH / "train_speed.py"), "--quick", "--threads", "1",
            "--out", str(out), "--json", str(js),
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(js.read_text())
    rows = report["rows"]
    assert [r["config"]["precision"] for r in rows] == ["fp32", "bf16"]
    for row in rows:
        result = row["result"]
        assert "error" not in result, result
        assert result["finite"] and len(result["losses"]) == 2
        assert result["images_per_s"] > 0 and result["step_s"] > 0
        assert result["peak_rss_mb"] >= result["peak_fwd_bwd_mb"] >= result["rss_before_mb"] > 0
    text = out.read_text()
    assert "| ViT-tiny (test size) | 56 x 84 | 1 | bf16 | no |" in text
    assert report["machine"]["torch"] in text


@pytest.mark.slow  # about 15 s on 2 idle cores
@pytest.mark.skipif(not (BENCH / "batch_throughput.py").is_file(), reason="no benchmarks/")
def test_batch_throughput_measures_the_runner_beside_forward_only(tmp_path):
    out = tmp_path / "batch.md"
    done = _run(
        [
            str(BENCH / "batch_throughput.py"), "--models", "default", "--images-default", "12",
            "--repeats-default", "1", "--out", str(out),
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    row = [line for line in out.read_text().splitlines() if line.startswith("| bundled")]
    assert len(row) == 1
    cells = [cell.strip() for cell in row[0].strip("|").split("|")]
    forward = [float(v) for v in cells[4].split(", ")]
    batch = [float(v) for v in cells[5].split(", ")]
    assert len(forward) == 2 and len(batch) == 1 and min(forward + batch) > 0
    ratio = float(cells[6].strip("*"))  # medians: of two forward-only passes, their mean
    assert ratio == pytest.approx(batch[0] / (sum(forward) / 2), rel=0.01)  # 3 digits shown
    assert "CPU: " in out.read_text() and ">= 0.85" in cells[7]
