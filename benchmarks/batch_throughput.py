"""Throughput of the batch path (``run_batch``) against forward-only throughput of the same model.

    python benchmarks/batch_throughput.py [--images 1000] [--size 240x320] [--workers 2]
                                          [--repeats 3] [--threads N] [--save depth]
                                          [--fsync] [--canvas HxW] [--device cpu]

The model is the bundled default (``src/metricdepth/assets/metricdepth-small.safetensors``)
when it exists, else a randomly initialised ``small_unet`` (the default model's architecture,
timings do not depend on weight values) with the training defaults' canonical space; without
either the script says so and exits 1.

It writes ``--images`` JPEGs of ``--size`` (HEIGHTxWIDTH) into a temporary folder, then times,
``--repeats`` times each and alternating (so both see the same machine load):

* forward-only: the model's forward pass on the already prepared network inputs, one image per
  pass (what ``run_batch`` does), nothing else: the ceiling of the batch path;
* batch: ``run_batch`` over the folder (decode in ``--workers`` loader processes, canonical
  transform, forward, metric post-processing, atomic writes of ``S.depth.npy`` and ``S.json``,
  fsync'ed with ``--fsync`` as ``metricdepth predict --fsync`` does), start-up of the workers
  included.

and once more forward-only after the last batch run (the batch runs are sandwiched). It prints
the median images/s of each and their ratio (goal: batch >= 0.9 x forward-only), and with
``--profile`` the CPU and wall time per image of each stage run one after the other in this
process (decode, canonical pre-processing, forward, metric post-processing, writes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "metricdepth" / "assets" / "metricdepth-small.safetensors"
SMALL_ARCH = REPO / "src" / "metricdepth" / "models" / "small.py"
GOAL_RATIO = 0.9


def load_benchmark_model():
    """The bundled default model, else a random ``small_unet``; None when neither exists."""
    from metricdepth.models.registry import build_model, load_model

    if BUNDLED.is_file():
        return load_model(BUNDLED), f"bundled default model ({BUNDLED.name})"
    if not SMALL_ARCH.is_file():
        return None, ""
    import torch

    from metricdepth.canonical import CanonicalSpace
    from metricdepth.models.spec import ModelSpec

    torch.manual_seed(0)
    # the training defaults of metricdepth.train.config (f_c 250 px, 96x128 canvas, "fit")
    spec = ModelSpec(
        name="small-unet-random",
        arch="small_unet",
        space=CanonicalSpace(focal_px=250.0, input_hw=(96, 128)),
        max_depth_m=80.0,
    )
    return build_model(spec), "randomly initialised small_unet (no bundled default model yet)"


def make_images(folder: Path, count: int, height: int, width: int) -> None:
    """``count`` smooth random JPEGs (about what photos cost to decode)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for k in range(count):
        low = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(-8, 9, image.shape)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img_{k:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (the loader workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def forward_only(network, inputs, device) -> float:
    """Images/s of the bare forward pass over prepared inputs, one image per pass."""
    import torch

    model = network
    started = time.perf_counter()
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for x in inputs:
            out = model(x.to(device))
        out["depth_c"].cpu()  # wait for an accelerator to finish
    return len(inputs) / (time.perf_counter() - started)


def profile(model, items, out: Path, save: set[str], sync: bool) -> None:
    """Print CPU and wall ms per image of each stage of the batch path, run serially here."""
    import torch

    from metricdepth.io import read_image
    from metricdepth.outputs import (
        PredictionInputs,
        run_network,
        to_prediction,
        write_prediction,
    )

    dataset = PredictionInputs(
        items, model.spec.space, model.spec.focal_mode, focal=300.0, keep_image=True
    )
    results: dict[str, list] = {}

    def timed(name, function, values):
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = [function(value) for value in values]
        count = len(values)
        results[name] = [
            (time.process_time() - cpu) / count * 1e3,
            (time.perf_counter() - wall) / count * 1e3,
        ]
        return outputs

    timed("decode (read_image)", lambda item: read_image(item.image), items)
    samples = timed("decode + canonical input (worker)", dataset.__getitem__, range(len(items)))
    with torch.inference_mode():
        outs = timed("forward", lambda sample: run_network(model, sample), samples)
    pairs = list(zip(samples, outs, strict=True))
    predictions = timed("metric post-processing", lambda pair: to_prediction(model, *pair), pairs)
    timed(
        "writes (" + ",".join(sorted(save)) + (", fsync'ed)" if sync else ")"),
        lambda k: write_prediction(
            predictions[k], samples[k].image, out, items[k].stem, save, sync=sync
        ),
        range(len(items)),
    )
    print("profile, per image, serially in one process (CPU ms / wall ms):")
    for name, (cpu, wall) in results.items():
        print(f"  {name:38s} {cpu:6.2f} / {wall:6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="number of images (>= 200)")
    parser.add_argument("--size", default="240x320", help="image HEIGHTxWIDTH in pixels")
    parser.add_argument("--workers", type=int, default=2, help="loader processes of run_batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads before run_batch lowers them"
    )
    parser.add_argument("--save", default="depth", help="--save kinds of the batch path")
    parser.add_argument("--fsync", action="store_true", help="fsync the batch path's files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument(
        "--canvas", default=None, help="override the model's network input HEIGHTxWIDTH"
    )
    parser.add_argument("--profile", action="store_true", help="time each stage serially")
    args = parser.parse_args(argv)

    import torch

    from metricdepth.canonical import normalize
    from metricdepth.data.inputs import collect_inputs
    from metricdepth.outputs import (
        PredictionInputs,
        can_trace,
        network_threads,
        parse_save,
        run_batch,
        traced_network,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    # run_batch lowers the threads so that threads + loader workers fit the cores; the
    # forward-only runs use the same count, so both paths run the same network the same way
    torch.set_num_threads(network_threads(args.workers))
    model, label = load_benchmark_model()
    if model is None:
        print(
            f"no model to benchmark: neither {BUNDLED} nor the small_unet architecture "
            f"({SMALL_ARCH}) exists",
            file=sys.stderr,
        )
        return 1
    model = model.to(args.device).eval()
    if args.canvas:  # a fully convolutional net runs at any canvas: a heavier forward pass
        import dataclasses

        hw = tuple(int(v) for v in args.canvas.lower().split("x"))
        space = dataclasses.replace(model.spec.space, input_hw=hw)
        model.spec = dataclasses.replace(model.spec, space=space)
    height, width = (int(v) for v in args.size.lower().split("x"))
    save = parse_save(args.save)
    print(f"model: {label}; canvas {model.spec.space.input_hw}, resize {model.spec.space.resize}")
    print(
        f"{args.images} JPEGs of {height}x{width}; torch threads {torch.get_num_threads()}; "
        f"workers {args.workers}; device {args.device}; save {','.join(sorted(save))}"
        + ("; fsync" if args.fsync else "")
    )
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="metricdepth-bench-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, args.images, height, width)
        items = collect_inputs([folder])
        dataset = PredictionInputs(items, model.spec.space, model.spec.focal_mode, focal=300.0)
        space = model.spec.space
        inputs = [normalize(dataset[k].canvas, space) for k in range(len(dataset))]
        # run_batch traces a short forward after its first image (kept when bit-identical):
        # forward-only runs that same network
        network = model
        with torch.inference_mode():
            expected = model(inputs[0].to(args.device))
        if can_trace(model, len(items)):
            network = traced_network(model, dataset[0], expected) or model
        print("network: " + ("TorchScript trace" if network is not model else "the model"))
        forward_only(network, inputs[:10], model.device)  # warm-up
        forward_rates, batch_rates = [], []
        forward_cpu, batch_cpu = [], []
        for repeat in range(args.repeats):
            cpu = cpu_seconds()
            forward_rates.append(forward_only(network, inputs, model.device))
            forward_cpu.append((cpu_seconds() - cpu) / len(inputs) * 1e3)
            cpu = cpu_seconds()
            summary = run_batch(
                model,
                items,
                Path(tmp) / f"out{repeat}",
                save,
                focal=300.0,
                workers=args.workers,
                progress=False,
                fsync=args.fsync,
            )
            if summary.done != len(items):
                print(f"batch run failed: {summary.line()}", file=sys.stderr)
                return 1
            batch_cpu.append((cpu_seconds() - cpu) / len(items) * 1e3)
            batch_rates.append(summary.images_per_s)
            print(
                f"  run {repeat + 1}: forward-only {forward_rates[-1]:.1f} images/s "
                f"({forward_cpu[-1]:.2f} CPU ms/image), batch {batch_rates[-1]:.1f} images/s "
                f"({batch_cpu[-1]:.2f} CPU ms/image, loader workers included)"
            )
        forward_rates.append(forward_only(network, inputs, model.device))
        print(f"  forward-only after the last batch run: {forward_rates[-1]:.1f} images/s")
        if args.profile:
            profile(model, items, Path(tmp) / "profile", save, args.fsync)
    forward, batch = statistics.median(forward_rates), statistics.median(batch_rates)
    ratio = batch / forward
    verdict = "meets" if ratio >= GOAL_RATIO else "below"
    print("load average after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"forward-only: {forward:.1f} images/s (median of {len(forward_rates)})")
    print(f"batch:        {batch:.1f} images/s (median of {args.repeats})")
    print(f"ratio:        {ratio:.3f} ({verdict} the {GOAL_RATIO:g}x goal)")
    cpu_ratio = statistics.median(forward_cpu) / statistics.median(batch_cpu)
    print(
        f"CPU per image: forward-only {statistics.median(forward_cpu):.2f} ms, batch "
        f"{statistics.median(batch_cpu):.2f} ms (medians); ratio {cpu_ratio:.3f}: the most the "
        "batch path can reach when every core is busy anyway"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
