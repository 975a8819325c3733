"""The command line of issue 15: --version, --device, canonical --model, --save of an output
the model lacks, folder scans that skip outputs and depth maps, and train's model name."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from metricdepth import __version__
from metricdepth.cli import EXAMPLE_INTRINSICS


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metricdepth", *args], capture_output=True, text=True, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_version():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"metricdepth {__version__}\n"
    assert __version__ == "0.1.0"


COMMANDS = {
    "predict": [],
    "measure": ["src/metricdepth/assets/example_nyu.jpg", "--points", "1,1,2,2"],
    "eval": ["missing.json"],  # the device is checked before anything is read
    "serve": [],
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_without_cuda_is_one_error_line(command, tmp_path):
    result = run(command, *COMMANDS[command], "--device", "cuda")
    one_error_line(result, "--device cuda: no CUDA device here")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_device_is_one_error_line(command):
    one_error_line(run(command, *COMMANDS[command], "--device", "gpu"), "--device gpu: unknown")


def test_device_check_with_a_missing_gpu_index(monkeypatch):
    """In process: a machine with one CUDA device refuses cuda:1 (CUDA faked present)."""
    from metricdepth.models.registry import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="1 CUDA device"):
        check_device("cuda:1")


def canonical_record(tmp_path, *args):
    result = run("canonical", *args, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads((tmp_path / "example_nyu.canonical.json").read_text())


def test_canonical_shows_the_space_of_the_model_predict_uses(tmp_path):
    stdout, summary = canonical_record(tmp_path)
    assert summary["model"] == "metricdepth-small"
    assert summary["space"]["focal_px"] == 250.0 and summary["space"]["input_hw"] == [96, 128]
    record = summary["record"]
    assert record["canonical_focal_px"] == 250.0 and record["input_hw"] == [96, 128]
    fx, fy = EXAMPLE_INTRINSICS[:2]
    assert record["f_eff_px"] == pytest.approx((fx + fy) / 2 * 0.2, rel=1e-12)  # 480 -> 96
    assert "metricdepth-small" in stdout and "f_c 250 px" in stdout
    canvas = cv2.imread(str(tmp_path / "example_nyu.canonical.png"))
    assert canvas.shape == (96, 128, 3)


def test_canonical_model_option_and_overrides(tmp_path):
    _, vit = canonical_record(tmp_path / "vit", "--model", "metric3d-vit-small")
    assert vit["model"] == "metric3d-vit-small" and vit["record"]["input_hw"] == [616, 1064]
    _, custom = canonical_record(
        tmp_path / "c", "--input-size", "60x80", "--canonical-focal", "500"
    )
    assert custom["record"]["input_hw"] == [60, 80]
    assert custom["record"]["canonical_focal_px"] == 500.0
    one_error_line(run("canonical", "--model", "nope"), "no model or file named 'nope'")


def test_save_of_an_output_the_model_lacks_is_refused(tmp_path):
    out = tmp_path / "out"
    result = run("predict", "--save", "depth,normal", "--out", str(out))
    one_error_line(result, "--save normal", "metricdepth-small has no normal output")
    assert not out.exists()  # refused before anything is written


def test_a_folder_skips_outputs_and_depth_maps_and_counts_them(tmp_path):
    from metricdepth.data.inputs import collect_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    photo = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    cv2.imwrite(str(folder / "a.jpg"), photo)
    cv2.imwrite(str(folder / "b.png"), photo)
    cv2.imwrite(str(folder / "a.depth.png"), np.full((48, 64), 1500, np.uint16))  # our output
    cv2.imwrite(str(folder / "a.vis.png"), photo)  # our output, an RGB picture
    cv2.imwrite(str(folder / "c_depth.png"), np.full((48, 64), 900, np.uint16))  # a depth map
    skipped: list = []
    items = collect_inputs([folder], skipped)
    assert [item.stem for item in items] == ["a", "b"]
    assert sorted(path.name for path, _ in skipped) == ["a.depth.png", "a.vis.png", "c_depth.png"]
    # named explicitly, a file is always taken
    assert [i.stem for i in collect_inputs([folder / "c_depth.png"])] == ["c_depth"]

    out = tmp_path / "out"
    result = run("predict", str(folder), "--focal", "60", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 done" in result.stdout and "3 file(s) in the folders skipped" in result.stdout
    assert sorted(p.name for p in out.glob("*.depth.npy")) == ["a.depth.npy", "b.depth.npy"]


def test_a_folder_of_depth_maps_only_is_no_images(tmp_path):
    from metricdepth.data.inputs import collect_inputs

    cv2.imwrite(str(tmp_path / "d.png"), np.full((8, 8), 7, np.uint16))
    with pytest.raises(ValueError, match=r"no images .*\(1 depth maps"):
        collect_inputs([tmp_path])


# ------------------------------------------------------------------------------ train
TINY = {
    "out_dir": "runs",
    "input_hw": [32, 48],
    "canonical_focal_px": 80.0,
    "model_kwargs": {"widths": [8, 16, 32]},
    "datasets": [
        {
            "kind": "synthetic",
            "seed": 5,
            "num_scenes": 8,
            "synth": {"height": 32, "width": 48, "sizes": [[32, 48]]},
        }
    ],
    "batch_size": 2,
    "steps": 2,
    "warmup_steps": 1,
    "checkpoint_every": 2,
    "progress": False,
    "device": "cpu",
}


def test_a_trained_model_is_not_named_as_the_bundled_one(tmp_path):
    from metricdepth.models.registry import DEFAULT_MODEL
    from metricdepth.train.config import BUNDLED_MODEL_NAME, TrainConfig, config_from_dict

    assert BUNDLED_MODEL_NAME == DEFAULT_MODEL
    assert config_from_dict({**TINY, "name": "mine"}).model_name == "mine"  # from the name
    named = config_from_dict({**TINY, "name": "mine", "model_name": "kitchen-v2"})
    assert named.model_name == "kitchen-v2"
    for raw in ({"name": "metricdepth-small"}, {"name": "x", "model_name": "metricdepth-small"}):
        with pytest.raises(ValueError, match="bundled model's name.*bundled_name: true"):
            config_from_dict({**TINY, **raw})
    asked = config_from_dict({**TINY, "name": "metricdepth-small", "bundled_name": True})
    assert asked.model_name == "metricdepth-small"
    with pytest.raises(ValueError, match="bundled_name: must be true or false"):
        config_from_dict({**TINY, "name": "x", "bundled_name": "yes"})
    with pytest.raises(ValueError, match="bundled model's name"):
        TrainConfig(name="metricdepth-small", datasets=named.datasets)


def test_the_bundled_config_asks_for_the_bundled_name():
    from pathlib import Path

    from metricdepth.train.config import load_config

    config = load_config(Path(__file__).resolve().parent.parent / "configs/metricdepth-small.yaml")
    assert config.bundled_name and config.model_name == "metricdepth-small"


def test_train_prints_the_model_and_the_predict_command(tmp_path):
    import yaml

    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({**TINY, "name": "mine", "out_dir": str(tmp_path / "runs")}))
    result = run("train", str(config))
    assert result.returncode == 0, result.stderr
    model = tmp_path / "runs" / "mine" / "model.safetensors"
    assert model.is_file()
    lines = result.stdout.strip().splitlines()
    assert f"model: {model} (name mine)" in lines
    assert f"use it: metricdepth predict photo.jpg --model {model}" in lines
