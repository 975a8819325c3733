"""The CSTM ablation command runs end to end (tiny settings) and writes its table and plot.

The real run (``python benchmarks/cstm_ablation.py``, about 14 min on 2 cores) is a benchmark;
this checks the command itself: training through ``metricdepth.train`` for each variant,
evaluation through the canonical space by focal set, and the results files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cstm_ablation.py"


@pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ is not in this checkout")
def test_ablation_command_trains_each_variant_and_writes_table_json_and_plot(tmp_path):
    args = [
        sys.executable, str(SCRIPT), "--variants", "none", "label", "--seeds", "0",
        "--steps", "4", "--batch-size", "2", "--train-scenes", "12", "--test-scenes", "4",
        "--jobs", "2", "--work-dir", str(tmp_path / "work"),
        "--results-dir", str(tmp_path / "results"), "--tag", "smoke",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert report["settings"]["precision"] == "bf16" and report["settings"]["steps"] == 4
    table = report["table"]
    assert set(table) == {"constant", "none", "label"}
    for variant in ("none", "label"):
        sets = table[variant]["0"]["sets"]
        assert set(sets) == {"in-range", "wide", "long", "all"}
        for stats in sets.values():
            assert stats["n"] == 4 * (3 if stats is sets["all"] else 1)
            assert math.isfinite(stats["abs_rel"]) and stats["abs_rel"] > 0
            assert math.isfinite(stats["slope"]) and stats["median_ratio"] > 0
    markdown = (tmp_path / "results" / "smoke.md").read_text()
    assert "| in-range f 100-600 | label |" in markdown
    png = (tmp_path / "results" / "smoke_scale_vs_focal.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
