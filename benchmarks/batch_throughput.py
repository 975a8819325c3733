"""Throughput of the batch runner (``batch.run_batch``) against forward-only, side by side.

    python benchmarks/batch_throughput.py [--models convnext,default] [--workers 1]
        [--images-convnext 4] [--images-default 400] [--repeats-convnext 1]
        [--repeats-default 2] [--out benchmarks/results/batch_throughput.md]

Two models (issue 17's goals):

* ``convnext``: the official ConvNeXt-T architecture (``metric3d-convnext-tiny``, canvas
  544x1216) with random weights (the timing does not depend on weight values); goal: batch
  >= 0.97 of forward-only;
* ``default``: the bundled default model (``metricdepth-small``); goal: >= 0.85.

For each it writes JPEGs into a temporary folder (480x640 for ConvNeXt, 240x320 for the small
model), then times alternately, so both see the same machine load: forward-only (the model's
forward on the already prepared inputs, one image per pass, as the runner does: its ceiling),
then ``run_batch`` (decode and ``prepare`` in ``--workers`` DataLoader processes, the forward,
the metric post-processing and atomic writes of ``S.depth.npy`` and ``S.json`` on writer
threads; start-up included), ``--repeats`` times, and forward-only once more at the end. Both
paths run the network on the same torch thread count (``batch.network_threads``). It prints
and writes the medians, their ratio, the CPU model (``lscpu``) and the load averages (the
machine may be shared: the ratio matters more than the absolute figures).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "batch_throughput.md"
#: model key -> (label, image HEIGHTxWIDTH, goal ratio)
MODELS = {
    "convnext": ("metric3d-convnext-tiny, random weights", (480, 640), 0.97),
    "default": ("bundled default model (metricdepth-small)", (240, 320), 0.85),
}


def cpu_model() -> str:
    """The CPU's model name (``lscpu``), else the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def load(key: str):
    import torch

    from metricdepth.models.registry import MODELS as REGISTERED
    from metricdepth.models.registry import build_model, load_model

    if key == "default":
        return load_model()
    torch.manual_seed(0)
    return build_model(REGISTERED["metric3d-convnext-tiny"][0])


def make_images(folder: Path, count: int, height: int, width: int) -> None:
    """``count`` smooth random JPEGs (about what photos cost to decode)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for k in range(count):
        low = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"img_{k:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def forward_only(predictor, inputs) -> float:
    """Images/s of the bare forward over prepared inputs, one image per pass."""
    started = time.perf_counter()
    for x in inputs:
        out = predictor.forward(x)
    out["depth_c"].cpu()  # an accelerator has finished
    return len(inputs) / (time.perf_counter() - started)


def measure(key: str, images: int, repeats: int, workers: int, tmp: Path) -> dict:
    import torch

    from metricdepth.batch import network_threads, run_batch
    from metricdepth.camera import Camera
    from metricdepth.data.inputs import collect_inputs
    from metricdepth.io import read_image
    from metricdepth.predictor import Predictor

    label, (height, width), goal = MODELS[key]
    model = load(key).eval()
    folder = tmp / key
    make_images(folder / "in", images, height, width)
    items = collect_inputs([folder / "in"])
    predictor = Predictor(model)
    camera = Camera(300.0, 300.0, (width - 1) / 2, (height - 1) / 2, width, height)
    inputs = [predictor.prepare(read_image(i.image)[0], camera, "given").x[None] for i in items]
    threads = torch.get_num_threads()
    torch.set_num_threads(network_threads(workers))  # what run_batch gives the network
    try:
        forward_only(predictor, inputs[:1])  # warm-up
        forward, batch = [], []
        load_before = os.getloadavg()
        for repeat in range(repeats):
            forward.append(forward_only(predictor, inputs))
            summary = run_batch(
                model, items, folder / f"out{repeat}", {"depth"}, focal=300.0,
                workers=workers, progress=False,
            )  # fmt: skip
            if summary.done != len(items):
                raise SystemExit(f"batch run failed: {summary.line()}")
            batch.append(summary.images_per_s)
            print(f"  {key} run {repeat + 1}: forward-only {forward[-1]:.3f}, batch "
                  f"{batch[-1]:.3f} images/s", flush=True)  # fmt: skip
        forward.append(forward_only(predictor, inputs))
        load_after = os.getloadavg()
        network = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    ratio = statistics.median(batch) / statistics.median(forward)
    return {
        "key": key, "label": label, "images": images, "size": f"{height}x{width}",
        "canvas": "x".join(map(str, model.spec.space.input_hw)), "threads": network,
        "forward": forward, "batch": batch, "ratio": ratio, "goal": goal,
        "load": (load_before[0], load_after[0]),
    }  # fmt: skip


def report(rows: list[dict], workers: int) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Batch runner against forward-only throughput",
        "",
        f"`python benchmarks/batch_throughput.py` ({when}"
        f"; CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} usable cores; "
        f"`--workers {workers}`; torch {__import__('torch').__version__}).",
        "",
        "| model | images | image / canvas | torch threads | forward-only images/s | "
        "batch images/s | ratio (medians) | goal | load average (1 min) before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "met" if r["ratio"] >= r["goal"] else "**not met**"
        lines.append(
            f"| {r['label']} | {r['images']} | {r['size']} / {r['canvas']} | {r['threads']} | "
            + ", ".join(f"{v:.3g}" for v in r["forward"])
            + " | "
            + ", ".join(f"{v:.3g}" for v in r["batch"])
            + f" | **{r['ratio']:.3f}** | >= {r['goal']} ({verdict}) | "
            f"{r['load'][0]:.2f} / {r['load'][1]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="convnext,default")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the run")
    parser.add_argument("--images-convnext", type=int, default=4)
    parser.add_argument("--images-default", type=int, default=400)
    parser.add_argument("--repeats-convnext", type=int, default=1)
    parser.add_argument("--repeats-default", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown results file")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="metricdepth-bench-") as tmp:
        for key in keys:
            images = getattr(args, f"images_{key}")
            repeats = getattr(args, f"repeats_{key}")
            rows.append(measure(key, images, repeats, args.workers, Path(tmp)))
    text = report(rows, args.workers)
    print(text)
    previous = args.out.read_text() if args.out.is_file() else ""
    notes = previous.split("\n## ", 1)[1] if "\n## " in previous else ""
    args.out.write_text(text + ("\n## " + notes if notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
