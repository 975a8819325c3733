"""Training checkpoints: writing, pruning, reading (weights-only) and resume checks.

A checkpoint (``checkpoints/step_*.pt`` in a run folder) holds the model, optimizer and
scheduler state, the step, the torch RNG state, the resolved config and the world size; it
loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from metricdepth.io import atomic_write
from metricdepth.train.config import TrainConfig, config_from_dict

CHECKPOINT_FORMAT = "metricdepth-train-checkpoint/1"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``run_dir/checkpoints``, or None."""
    files = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    return files[-1] if files else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    files = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``); a bad file is a ValueError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign files raise many types
        raise ValueError(f"{path}: cannot read checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a metricdepth training checkpoint")
    return state


def check_resumable(state: dict[str, Any], config: TrainConfig, world: int, path: Path) -> None:
    saved = config_from_dict(state["config"], source=f"{path} (config)").training_fields()
    current = config.training_fields()
    for key in current:
        if saved.get(key) != current[key]:
            raise ValueError(
                f"{path}: cannot resume, the config's {key!r} changed ({saved.get(key)!r} -> "
                f"{current[key]!r}); give the run another name (or out_dir), or restore the value"
            )
    if int(state["world_size"]) != world:
        raise ValueError(
            f"{path}: cannot resume with {world} process(es), the run used "
            f"{int(state['world_size'])} (the data order depends on it)"
        )


def read_log(run_dir: Path, start: int) -> list[str]:
    """The log lines of steps <= ``start`` (a resumed run rewrites what came after)."""
    path = run_dir / "log.jsonl"
    if start == 0 or not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= start:
                lines.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    return lines
