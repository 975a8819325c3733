"""A tiny annotation dataset whose every pixel has a depth label, for tests of batch averaging.

The official GRU-sequence loss averages over the valid pixels of the whole batch, and its
confidence term over the pixels with ``|t - p| < t``. With every pixel labelled, no padding
(``resize_range: [1, 1]``, canvas = image size) and canonical labels above 100 (the ViT's
predictions are clamped to [0.1, 200], so ``|t - p| < t`` always holds), both masks are full
and the loss of a batch is the mean of its images' losses: micro-batches and data-parallel
processes then add up to the gradient of one big batch.

``tiny_vit_config`` is the raw training config the tiny-ViT tests start from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: Synthetic scenes of the tiny-ViT canvas (56x84, a multiple of the ViT's 28 px).
TINY_VIT_SYNTH = {"height": 56, "width": 84, "sizes": [[56, 84]], "focal_range": [40.0, 160.0]}


def tiny_vit_config(
    name: str, *, seed: int, scene_seed: int = 3, num_scenes: int = 16, **overrides
):
    """The raw config (a dict for ``config_from_dict`` or YAML) of a short CPU run of the
    test-only ``metric3d_vit`` ``size: tiny`` on 56x84 synthetic canvases; ``overrides``
    replace or add fields."""
    raw = {
        "name": name,
        "seed": seed,
        "arch": "metric3d_vit",
        "model_kwargs": {"size": "tiny"},
        "input_hw": [56, 84],
        "infer_hw": [56, 84],
        "datasets": [
            {
                "kind": "synthetic",
                "seed": scene_seed,
                "num_scenes": num_scenes,
                "synth": TINY_VIT_SYNTH,
            }
        ],
        "batch_size": 2,
        "steps": 2,
        "warmup_steps": 0,
        "progress": False,
        "device": "cpu",
    }
    raw.update(overrides)
    return raw


def write_dense_annotations(
    folder: Path,
    *,
    count: int = 8,
    hw: tuple[int, int] = (56, 84),
    focal_px: float = 100.0,
    depth_range_m: tuple[float, float] = (12.0, 18.0),
    seed: int = 0,
) -> Path:
    """``count`` frames of random RGB with depth in ``depth_range_m`` everywhere (``.npy``,
    metres) and ``cam_in = [f, f, centre]``; returns the annotation JSON. With f = 100 px the
    canonical labels (f_c = 1000 px) are 10 x the depth: 120-180."""
    rng = np.random.default_rng(seed)
    height, width = hw
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    files = []
    rows, cols = np.mgrid[0:height, 0:width]
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            folder / f"rgb/{i}.png"
        )
        low, high = depth_range_m
        tilt = rng.uniform(-1, 1, 2)
        ramp = 0.5 + 0.5 * np.tanh(tilt[0] * (rows / height - 0.5) + tilt[1] * (cols / width - 0.5))
        np.save(folder / f"depth/{i}.npy", (low + (high - low) * ramp).astype(np.float32))
        files.append(
            {
                "rgb": f"rgb/{i}.png",
                "depth": f"depth/{i}.npy",
                "depth_scale": 1.0,
                "cam_in": [focal_px, focal_px, (width - 1) / 2, (height - 1) / 2],
            }
        )
    path = folder / "annotations.json"
    path.write_text(json.dumps({"files": files}), encoding="utf-8")
    return path
