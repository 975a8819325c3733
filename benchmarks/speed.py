"""CPU/GPU timing of the official-architecture runtimes: pre-processing, forward, post-processing.

    python benchmarks/speed.py [--models vit_small,convnext_tiny] [--runs 5] [--threads 2]

Each model runs in its own process (so peak RSS is per model) on the parity fixtures' KITTI
image at the model's native input size, with the fixtures' deterministic synthetic weights
(timings do not depend on the weight values). It prints the median and spread over ``--runs``
timed runs after one warm-up, the peak RSS, and the reference's own CPU forward time from
``shared/parity/README.md`` for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METRICDEPTH_SHARED") or REPO.parent / "shared")
#: The official code's median CPU forward on this machine kind (shared/parity/README.md).
REFERENCE_FORWARD_S = {"vit_small": 5.6, "convnext_tiny": 1.8}
NAMES = {"vit_small": "metric3d-vit-small", "convnext_tiny": "metric3d-convnext-tiny"}
KITTI = ("img_kitti_0000000050.png", (707.0493, 707.0493, 604.0814, 180.5066))


def measure(key: str, runs: int, threads: int, device: str) -> dict:
    """Run in a child process: time one model and return the figures."""
    import importlib.util

    import cv2
    import numpy as np
    import torch

    from metricdepth.camera import Camera
    from metricdepth.canonical import from_canonical, prepare_input
    from metricdepth.models.registry import MODELS, build_model

    torch.set_num_threads(threads)
    spec_file = importlib.util.spec_from_file_location("mw", SHARED / "parity" / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(make_weights)
    keys = json.loads((SHARED / "parity" / f"{key}_keys.json").read_text())
    state = {k: torch.from_numpy(v) for k, v in make_weights.make_state_dict(keys).items()}
    model = build_model(MODELS[NAMES[key]][0])
    model.net.load_state_dict(state, strict=True)
    model.to(device)
    rgb = cv2.imread(str(SHARED / "parity" / KITTI[0]))[:, :, ::-1].copy()
    camera = Camera.from_intrinsics(KITTI[1], rgb.shape[1], rgb.shape[0])
    times: dict[str, list[float]] = {"preprocess": [], "forward": [], "postprocess": []}
    for run in range(runs + 1):
        start = time.perf_counter()
        x, record = prepare_input(rgb, camera, model.spec.space, "fx")
        x = x.to(device)
        mid = time.perf_counter()
        with torch.inference_mode():
            out = model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        end = time.perf_counter()
        depth = from_canonical(out["depth_c"][0, 0].float().cpu(), record).clamp(0, 300)
        np.asarray(depth)
        done = time.perf_counter()
        if run:  # the first run is the warm-up
            times["preprocess"].append(mid - start)
            times["forward"].append(end - mid)
            times["postprocess"].append(done - end)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": key,
        "input_hw": list(model.spec.space.input_hw),
        "times": times,
        "peak_rss_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vit_small,convnext_tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.runs, args.threads, args.device)))
        return
    if not (SHARED / "parity" / "make_weights.py").exists():
        sys.exit(f"error: parity fixtures not found in {SHARED} (set METRICDEPTH_SHARED)")
    print(f"device {args.device}, {args.threads} threads, {args.runs} timed runs after 1 warm-up")
    print(
        f"{'model':14} {'input':>9} {'pre (s)':>14} {'forward (s)':>16} {'post (s)':>14} "
        f"{'peak RSS':>9} {'ref fwd':>8}"
    )
    for key in args.models.split(","):
        command = [sys.executable, __file__, "--child", key, "--runs", str(args.runs),
                   "--threads", str(args.threads), "--device", args.device]  # fmt: skip
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):.3f} ±{(max(values) - min(values)) / 2:.3f}"

        t = result["times"]
        hw = "x".join(map(str, result["input_hw"]))
        ref = REFERENCE_FORWARD_S.get(key)
        print(
            f"{key:14} {hw:>9} {cell(t['preprocess']):>14} {cell(t['forward']):>16} "
            f"{cell(t['postprocess']):>14} {result['peak_rss_mb']:>6.0f} MB {ref:>7.1f}s"
        )


if __name__ == "__main__":
    main()
