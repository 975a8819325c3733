"""Pre- and post-processing of the default model against its forward pass, in a steady loop.

    python benchmarks/prepost_loop.py [--loops 400] [--sizes 240x320,480x640] [--threads 2]

``benchmarks/speed.py`` interleaves four paths and resets the peak RSS between runs, which
slows a 3 ms forward; this script runs only the optimised float32 path of the bundled default
model (``metricdepth-small``) on random images of each size: ``Predictor.prepare`` (keep-ratio
resize, padding, normalising), the forward, ``Predictor.finish`` (un-padding, upsampling to the
image size, metric scale, clamp), ``--loops`` times after 50 warm-up loops, and prints the
medians and (pre + post) / forward (issue 6's goal: <= 5 %).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=400)
    parser.add_argument("--sizes", default="240x320,480x640", help="HEIGHTxWIDTH,...")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from metricdepth.camera import Camera
    from metricdepth.models.registry import load_model
    from metricdepth.predictor import Predictor, split
    from metricdepth.runtime import optimize, set_threads

    set_threads(args.threads)
    model = optimize(load_model("metricdepth-small"), "fp32")
    predictor = Predictor(model)
    rng = np.random.default_rng(0)
    print(f"default model, optimised fp32, {torch.get_num_threads()} threads, {args.loops} loops")
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.lower().split("x"))
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        camera = Camera.from_fov(60.0, width, height)
        times: dict[str, list[float]] = {"pre": [], "forward": [], "post": []}
        for loop in range(args.loops + 50):
            t0 = time.perf_counter()
            prepared = predictor.prepare(rgb, camera)
            t1 = time.perf_counter()
            out = model(prepared.x[None])
            t2 = time.perf_counter()
            predictor.finish(split(out)[0], prepared)
            t3 = time.perf_counter()
            if loop >= 50:
                times["pre"].append(t1 - t0)
                times["forward"].append(t2 - t1)
                times["post"].append(t3 - t2)
        pre, forward, post = (statistics.median(times[k]) * 1e3 for k in ("pre", "forward", "post"))
        print(
            f"{height}x{width}: pre {pre:.3f} ms, forward {forward:.3f} ms, post {post:.3f} ms, "
            f"(pre + post) / forward {(pre + post) / forward:.1%}"
        )


if __name__ == "__main__":
    main()
