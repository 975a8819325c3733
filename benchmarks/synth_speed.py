"""Rendering speed of metricdepth.data.synthetic on one thread, in images per second.

Usage::

    python benchmarks/synth_speed.py [--n 300] [--repeats 5] [--sizes 96x128 240x320] [--write]

Each repeat renders ``n`` fresh scenes (``render_scene``: scene sampling + ray casting +
shading + noise); the median over repeats is printed, by wall clock and by this process's CPU
time (CPU time is the better estimate of an idle core when the machine is shared). The focal
range follows the image size (``SynthConfig.focal_follows_size``), so every size sees the same
fields of view. ``--write`` also times ``write_dataset`` (adds PNG encoding and file writes).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from metricdepth.data.synthetic import SynthConfig, render_scene, write_dataset  # noqa: E402


def _rates(run: Callable[[int], None], n: int, repeats: int) -> tuple[float, float]:
    """Median images/s over ``repeats`` runs of ``run(repeat)``: ``(wall, cpu)``."""
    wall, cpu = [], []
    for repeat in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        run(repeat)
        wall.append(n / (time.perf_counter() - start_wall))
        cpu.append(n / max(time.process_time() - start_cpu, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="images per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["96x128", "240x320"], help="HxW")
    parser.add_argument("--write", action="store_true", help="also time write_dataset")
    args = parser.parse_args()
    for size in args.sizes:
        height, width = (int(v) for v in size.lower().split("x"))
        config = SynthConfig(sizes=((height, width),))
        render_scene(0, config)  # warm-up

        def render(repeat: int, config: SynthConfig = config) -> None:
            for index in range(args.n):
                render_scene(repeat * args.n + index, config)

        wall, cpu = _rates(render, args.n, args.repeats)
        print(
            f"render_scene {height}x{width}: {wall:7.1f} images/s wall, {cpu:7.1f} images/s CPU "
            f"(median of {args.repeats} x {args.n})"
        )
        if args.write:
            with tempfile.TemporaryDirectory() as folder:

                def write(repeat: int, config: SynthConfig = config, folder: str = folder) -> None:
                    write_dataset(f"{folder}/{repeat}", args.n, seed=repeat, config=config)

                wall, cpu = _rates(write, args.n, args.repeats)
            print(
                f"write_dataset {height}x{width}: {wall:7.1f} images/s wall, {cpu:7.1f} "
                f"images/s CPU (PNG rgb + depth, annotations)"
            )


if __name__ == "__main__":
    main()
