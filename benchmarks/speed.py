"""CPU speed of the prediction paths, side by side: eager (reference-faithful), optimised
PyTorch (float32 and bfloat16) and ONNX Runtime.

    python benchmarks/speed.py [--models vit_small,convnext_tiny,default] [--runs 5]
                               [--threads 2] [--quick] [--no-profile]

Each model runs in its own process (so peak RSS belongs to one model) at its native network
input size: ``vit_small`` and ``convnext_tiny`` with the parity fixtures' deterministic
synthetic weights on the fixtures' KITTI image (375x1242, fitted to 616x1064 / 544x1216),
the bundled default model on the bundled example (480x640, fitted to 96x128). In one process
the paths run **interleaved** (path A, B, C, D, then A again ...) after one warm-up each, so
that a busy shared machine slows all of them alike and the ratios stay fair:

* ``eager``: the reference-faithful path: ``Predictor.prepare``, the plain network under
  ``torch.no_grad`` (the ViT with the official code's written-out softmax attention, as the
  parity fixtures were made), ``Predictor.finish``;
* ``opt-fp32`` / ``opt-bf16``: ``runtime.optimize`` (SDPA attention, ``inference_mode``,
  channels-last for the convolutional models, bfloat16 autocast for ``bf16``), same pre/post;
* ``onnxruntime``: the exported whole-prediction graph (``metricdepth export``); pre-, post-
  processing and the network all run inside ``session.run`` and are reported as its forward.

Per path: median and spread (min-max) of pre, forward and post wall time, peak RSS during the
path's runs (``VmHWM`` after resetting it with ``/proc/self/clear_refs``), the ratio of the
total to the eager total, the output difference to eager, and the achieved GFLOP/s of the
forward (FLOPs counted once with ``torch.utils.flop_counter.FlopCounterMode``) against a
2048x2048 matrix product timed in the same process in float32 and bfloat16. The load
average (``os.getloadavg``) is printed before and after each model. Last, the default model's
images/s on 240x320 images (whole ``predict``), and a profile of the optimised float32 ViT
forward (encoder/decoder split and the top operators).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METRICDEPTH_SHARED") or REPO.parent / "shared")
#: The official code's median CPU forward, 2 threads (shared/parity/README.md).
REFERENCE_FORWARD_S = {"vit_small": 5.6, "convnext_tiny": 1.8}
NAMES = {
    "vit_small": "metric3d-vit-small",
    "convnext_tiny": "metric3d-convnext-tiny",
    "default": "metricdepth-small",
}
KITTI = ("img_kitti_0000000050.png", (707.0493, 707.0493, 604.0814, 180.5066))
EXAMPLE = (
    REPO / "src/metricdepth/assets/example_nyu.jpg",
    (518.8579, 519.46961, 325.58245, 253.73617),
)
PATHS = ("eager", "opt-fp32", "opt-bf16", "onnxruntime")


def _load(key: str):
    import importlib.util

    import torch

    from metricdepth.models.registry import MODELS, build_model, load_model

    if key == "default":
        return load_model()
    spec_file = importlib.util.spec_from_file_location("mw", SHARED / "parity" / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(make_weights)
    keys = json.loads((SHARED / "parity" / f"{key}_keys.json").read_text())
    state = {k: torch.from_numpy(v) for k, v in make_weights.make_state_dict(keys).items()}
    model = build_model(MODELS[NAMES[key]][0])
    model.net.load_state_dict(state, strict=True)
    return model


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _current_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def matmul_peak(dtype_name: str, size: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of the best of ``reps`` ``size``-square matrix products in ``dtype_name``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure(key: str, runs: int, threads: int, profile: bool) -> dict:
    """Child process: time every path of one model, interleaved; return the figures."""
    import copy

    import cv2
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from metricdepth.camera import Camera
    from metricdepth.canonical import prepare_input
    from metricdepth.export import export_onnx
    from metricdepth.predictor import Predictor, split
    from metricdepth.runtime import load_onnx, optimize, set_threads

    set_threads(threads)
    load_before = os.getloadavg()
    base = _load(key)
    eager = copy.deepcopy(base)
    for module in eager.net.modules():  # the official code's attention (no xFormers)
        if hasattr(module, "impl"):
            module.impl = "explicit"
    models = {
        "eager": eager,
        "opt-fp32": optimize(copy.deepcopy(base), "fp32"),
        "opt-bf16": optimize(copy.deepcopy(base), "bf16"),
    }
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        onnx_model = load_onnx(export_onnx(copy.deepcopy(base), Path(folder) / "m.onnx"), threads)
        export_s = time.perf_counter() - started
    if key == "default":
        rgb = cv2.imread(str(EXAMPLE[0]))[:, :, ::-1].copy()
        intrinsics = EXAMPLE[1]
    else:
        rgb = cv2.imread(str(SHARED / "parity" / KITTI[0]))[:, :, ::-1].copy()
        intrinsics = KITTI[1]
    camera = Camera.from_intrinsics(intrinsics, rgb.shape[1], rgb.shape[0])
    mode = "fx"  # the hub demo's focal, as the fixtures

    def run_torch(name: str):
        model = models[name]
        predictor = Predictor(model, mode)
        t0 = time.perf_counter()
        prepared = predictor.prepare(rgb, camera)
        t1 = time.perf_counter()
        if name == "eager":
            with torch.no_grad():
                out = model(prepared.x[None])
        else:
            out = model(prepared.x[None])
        t2 = time.perf_counter()
        prediction = predictor.finish(split(out)[0], prepared)
        t3 = time.perf_counter()
        return (t1 - t0, t2 - t1, t3 - t2), prediction.depth_m

    def run_onnx(_: str):
        prediction = onnx_model.predict(rgb, camera, "given", mode)
        t = prediction.timings_ms
        return (t["pre"] / 1e3, t["forward"] / 1e3, t["post"] / 1e3), prediction.depth_m

    runners = {name: run_torch for name in models} | {"onnxruntime": run_onnx}
    times = {name: {"pre": [], "forward": [], "post": []} for name in runners}
    loaded_mb = _current_mb()
    if key == "default":  # milliseconds per run: more runs for a stable median
        runs *= 4
    peak = dict.fromkeys(runners, 0.0)
    depth = {}
    for run in range(runs + 1):  # run 0 is each path's warm-up
        for name, runner in runners.items():
            _reset_peak()
            (pre, forward, post), depth[name] = runner(name)
            peak[name] = max(peak[name], _peak_mb())
            if run:
                times[name]["pre"].append(pre)
                times[name]["forward"].append(forward)
                times[name]["post"].append(post)
    load_after = os.getloadavg()
    x, _ = prepare_input(rgb, camera, base.spec.space, mode)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():  # the explicit attention: the CPU SDPA kernel is not counted
        eager(x)
    flops = counter.get_total_flops()
    reference = depth["eager"]
    errors = {}
    for name, values in depth.items():
        rel = np.abs(values - reference) / np.maximum(np.abs(reference), 1e-6)
        errors[name] = {q: float(np.quantile(rel, p)) for q, p in
                        (("median", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}  # fmt: skip
    result = {
        "model": key,
        "input_hw": list(base.spec.space.input_hw),
        "image_hw": list(rgb.shape[:2]),
        "times": times,
        "peak_rss_mb": peak,
        "errors": errors,
        "gflop": flops / 1e9,
        "export_s": export_s,
        "loaded_rss_mb": loaded_mb,
        "load": [load_before, load_after],
        "matmul_gflops": {"fp32": matmul_peak("fp32"), "bf16": matmul_peak("bf16")},
        "threads": torch.get_num_threads(),
    }
    if key == "default":
        result["throughput"] = throughput(base, onnx_model, runs)
    if profile and key == "vit_small":
        result["profile"] = profile_forward(models["opt-fp32"], x)
    return result


def throughput(model, onnx_model, runs: int) -> dict:
    """Images/s of the whole ``predict`` on 240x320 images (default model, fp32 paths)."""
    import numpy as np

    from metricdepth.camera import Camera
    from metricdepth.pipeline import predict
    from metricdepth.runtime import optimize

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(8)]
    camera = Camera.from_fov(60.0, 320, 240)
    fast = optimize(model, "fp32")
    paths = {
        "eager": lambda im: predict(model, im, camera),
        "opt-fp32": lambda im: predict(fast, im, camera),
        "onnxruntime": lambda im: onnx_model.predict(im, camera),
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for run in range(max(3, runs) + 1):
        for name, call in paths.items():
            start = time.perf_counter()
            for image in images:
                call(image)
            if run:
                rates[name].append(len(images) / (time.perf_counter() - start))
    return rates


def profile_forward(model, x) -> dict:
    """Encoder/decoder wall time and the top operators of one optimised ViT forward."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    net = model.net.depth_model
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        features = net.encoder(x)
        middle = time.perf_counter()
        net.decoder(*features)
        end = time.perf_counter()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    top = [(e.key, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total, e.count)
           for e in rows[:10]]  # fmt: skip
    return {"encoder_s": middle - start, "decoder_s": end - middle, "top": top}


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(result: dict) -> list[str]:
    """Markdown lines for one model."""
    key = result["model"]
    t = result["times"]
    total = {p: statistics.median([sum(v) for v in zip(*t[p].values(), strict=True)]) for p in t}
    ref = REFERENCE_FORWARD_S.get(key)
    hw = "x".join(map(str, result["input_hw"]))
    peak32, peak16 = result["matmul_gflops"]["fp32"], result["matmul_gflops"]["bf16"]
    lines = [
        f"### {key} ({NAMES[key]}), canvas {hw}, image {'x'.join(map(str, result['image_hw']))}",
        "",
        f"load average before {_load_text(result['load'][0])}, after "
        f"{_load_text(result['load'][1])}; {result['threads']} threads; forward "
        f"{result['gflop']:.3g} GFLOP; 2048² matmul here: {peak32:.0f} GFLOP/s fp32, "
        f"{peak16:.0f} GFLOP/s bf16; ONNX export took {result['export_s']:.1f} s; RSS with "
        f"all four paths loaded {result['loaded_rss_mb']:.0f} MB (peak RSS below is the "
        "process's peak while that path ran)",
        "",
        "| path | pre s | forward s | post s | total s | ratio to eager | (pre+post)/fwd "
        "| fwd GFLOP/s (% of matmul peak) | peak RSS MB | rel. diff to eager: median / p99 / max "
        "| total / reference fwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in PATHS:
        times = t[path]
        forward = statistics.median(times["forward"])
        pre_post = statistics.median(times["pre"]) + statistics.median(times["post"])
        rate = result["gflop"] / forward
        peak = peak16 if path == "opt-bf16" else peak32
        err = result["errors"][path]
        vs_ref = f"{total[path] / ref:.2f}" if ref else "-"
        lines.append(
            f"| {path} | {_cell(times['pre'])} | {_cell(times['forward'])} | "
            f"{_cell(times['post'])} | {total[path]:.3f} | {total[path] / total['eager']:.2f} | "
            f"{pre_post / forward:.1%} | {rate:.3g} ({rate / peak:.0%}) | "
            f"{result['peak_rss_mb'][path]:.0f} | {err['median']:.1e} / {err['p99']:.1e} / "
            f"{err['max']:.1e} | {vs_ref} |"
        )
    bf16 = result["errors"]["opt-bf16"]
    lines += [
        "",
        f"bf16 vs eager float32, final depth relative difference: median {bf16['median']:.2e}, "
        f"p90 {bf16['p90']:.2e}, p99 {bf16['p99']:.2e}, max {bf16['max']:.2e}.",
    ]
    if ref:
        lines.append(
            f"Reference (official code, quiet machine, shared/parity/README.md): forward "
            f"{ref:.1f} s. Goal float32 <= {0.5 * ref:.2f} s, bf16 <= {0.15 * ref:.2f} s."
        )
    if "throughput" in result:
        rates = result["throughput"]
        lines.append(
            "Default model, whole predict on 240x320 images (8 per run): "
            + ", ".join(f"{p} {_cell(v)} images/s" for p, v in rates.items())
            + " (goal >= 20)."
        )
    if "profile" in result:
        prof = result["profile"]
        lines += [
            "",
            f"Profile of one opt-fp32 forward: encoder {prof['encoder_s']:.2f} s, decoder "
            f"{prof['decoder_s']:.2f} s. Top operators (self CPU time):",
            "",
            "| operator | s | share | calls |",
            "|---|---|---|---|",
            *(f"| {n} | {s:.2f} | {f:.0%} | {c} |" for n, s, f, c in prof["top"]),
        ]
    return lines + [""]


def _load_text(load: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vit_small,convnext_tiny,default")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 timed runs, no profile")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs
    profile = not (args.quick or args.no_profile)
    if args.child:
        print(json.dumps(measure(args.child, runs, args.threads, profile)))
        return
    if not (SHARED / "parity" / "make_weights.py").exists():
        sys.exit(f"error: parity fixtures not found in {SHARED} (set METRICDEPTH_SHARED)")
    uname = os.uname()
    print(f"## CPU speed, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(
        f"{uname.machine}, {_cpu_name()}, {os.cpu_count()} CPUs visible, {args.threads} "
        f"threads, {runs} timed runs after 1 warm-up, paths interleaved\n"
    )
    for key in args.models.split(","):
        if key not in NAMES:
            sys.exit(f"error: unknown model {key!r}; choose from {', '.join(NAMES)}")
        command = [sys.executable, __file__, "--child", key, "--runs", str(runs),
                   "--threads", str(args.threads)] + (["--quick"] if args.quick else []) + (
                   ["--no-profile"] if args.no_profile else [])  # fmt: skip
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print("\n".join(report(result)), flush=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
