"""Two-process data-parallel training on CPU with torchrun (gloo): the replicas stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from metricdepth.models.registry import load_model
from metricdepth.train.config import load_config
from metricdepth.train.loop import _init_output_bias, build_dataset, build_network, parameter_digest


def test_two_process_torchrun_keeps_the_replicas_identical(tmp_path):
    config = {
        "name": "ddp",
        "seed": 1,
        "variant": "label",
        "canonical_focal_px": 80.0,
        "input_hw": [32, 48],
        "resize_range": [0.8, 1.25],
        "model_kwargs": {"widths": [8, 16, 32]},
        "datasets": [
            {
                "kind": "synthetic",
                "seed": 2,
                "num_scenes": 16,
                "synth": {"height": 32, "width": 48, "sizes": [[32, 48]], "focal_range": [40, 160]},
            }
        ],
        "batch_size": 2,
        "steps": 4,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
        "device": "cpu",
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "metricdepth.train",
        str(path),
        "--out-dir",
        str(tmp_path / "runs"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    ranks = [json.loads((run_dir / f"rank_{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["step"] == 4 for r in ranks)
    # The replicas, not two ways of computing: each rank applies the same all-reduced gradient
    # (gloo hands both ranks the same bytes) with the same code on one thread, so they are
    # identical to the bit; a rank that drifted is the bug this test is for.
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    assert ranks[0]["parameters_and_buffers_sha256"] == ranks[1]["parameters_and_buffers_sha256"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert all(entry["loss"] > 0 for entry in log)
    assert (run_dir / "checkpoints" / "step_0000004.pt").is_file()
    assert str(run_dir) in done.stdout.splitlines()  # printed once, by rank 0
    # the replicas trained: their weights are not the initial ones
    train_config = load_config(run_dir / "config.yaml")
    torch.manual_seed(train_config.seed)
    initial = build_network(train_config)
    _init_output_bias(initial, build_dataset(train_config))
    assert parameter_digest(initial) != ranks[0]["parameters_sha256"]
    trained = load_model(run_dir / "model.safetensors").net  # rank 0's weights, as saved
    assert parameter_digest(trained) == ranks[0]["parameters_sha256"]


@pytest.mark.slow  # about 25 s: two torchrun processes plus one in-process run
def test_two_process_tiny_vit_matches_one_process_on_the_same_global_batch(tmp_path):
    """torchrun, 2 CPU processes (gloo) x 2 micro-batches of 1 image (``accumulate: 2``, only
    the last one synchronises) vs 1 process x 4 images, 3 steps of the test-only tiny
    ``metric3d_vit``. With every pixel labelled (``dense_frames``) the official GRU-sequence
    loss of a batch is the mean of its images' losses, and the model has no BatchNorm, so the
    averaged gradient is the batch-4 gradient up to float32 summation order; the weights agree
    to 1e-5 absolute (1 % of one AdamW step at lr 1e-3)."""
    from safetensors.torch import load_file

    from dense_frames import tiny_vit_config, write_dense_annotations
    from metricdepth.train.config import config_from_dict
    from metricdepth.train.loop import train

    dense = write_dense_annotations(tmp_path / "dense", seed=3)
    config = tiny_vit_config(
        "vit-ddp", seed=4, resize_range=[1.0, 1.0],
        datasets=[{"kind": "annotations", "path": str(dense), "data_type": "denselidar"}],
        losses={"gru_sequence": 1.0}, batch_size=1, accumulate=2, steps=3, lr=1e-3,
        checkpoint_every=3,
    )  # fmt: skip
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "metricdepth.train", str(path), "--out-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "vit-ddp"
    ranks = [json.loads((run_dir / f"rank_{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]

    torch.set_num_threads(1)
    single = dict(config, name="vit-one", batch_size=4, accumulate=1)
    single["out_dir"] = str(tmp_path / "runs")
    one_dir = train(config_from_dict(single, base_dir=tmp_path))
    two = load_file(str(run_dir / "model.safetensors"))
    one = load_file(str(one_dir / "model.safetensors"))
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
    torch.manual_seed(4)
    initial = build_network(load_config(run_dir / "config.yaml")).state_dict()
    assert max((initial[k] - one[k]).abs().max().item() for k in one) > 1e-3  # it trained
