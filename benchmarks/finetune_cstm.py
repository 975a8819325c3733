"""Train the official ViT-S architecture on synthetic multi-camera scenes, label scaling on/off.

    python benchmarks/finetune_cstm.py                 # defaults: 2 runs in parallel, ~15 min
    python benchmarks/finetune_cstm.py --quick         # smoke run: test-size ViT, 3 steps

1. Renders held-out test scenes (``metricdepth.data.synthetic.write_dataset``, the renderer of
   ``metricdepth synth``; Metric3D-format annotation files, reused when present) from three
   camera sets: ``in-range`` (the training focal range, unseen scenes), ``wide`` (shorter focal
   lengths than any in training) and ``long`` (longer). Focal ranges are in pixels of a
   128-pixel-wide image (fields of view, as in ``benchmarks/cstm_ablation.py``); image sizes,
   principal points and fx/fy vary independently of the focal length.
2. Trains ``arch: metric3d_vit`` with ``model_kwargs: {size: small}`` (the official ViT-S
   architecture: DINOv2-S/14 with registers and the RAFT decoder) **from random
   initialisation** (``init_from`` none: no official weights are used) once per ``variant``
   (``label``: CSTM_label, labels x f_c / f_eff; ``none``: metric labels), with the same config
   otherwise, through ``metricdepth.train.loop.run_training``. Training data: the ``synthetic``
   dataset kind (scenes rendered on the fly) at the training focal range, on a reduced canvas
   (``--crop``; every image fitted to it as inference will, padding masked), f_c the official
   1000 px (``--canonical-focal`` to change it). The official decoder clamps canonical depth to
   [0.1, 200] with ReLUs; labels far below its starting range (metric labels of a few metres,
   or f_c scaled down with the canvas) drive its GRU stage to the 0.1 floor, where no gradient
   flows, within a few dozen steps from random initialisation (see the results' clamp column).
   The variants run as ``--jobs`` parallel processes of ``--threads`` torch threads each.
3. Evaluates each trained ``model.safetensors`` with ``metricdepth.evaluate.harness.run_eval``
   (the code of ``metricdepth eval MODEL``; protocol ``plain``, plus the median-aligned row) on
   every test set, and a constant prediction (the median training depth) as a reference.
4. Prints and writes ``<results>/<tag>.md`` and ``.json``: the loss curve of each run (mean of
   the first and last 30 steps, and means over windows of steps), wall and images/s, and
   AbsRel / RMSE / delta1 per focal set for each variant.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("label", "none")
SETS = ("in-range", "wide", "long")
REF_WIDTH = 128  #: focal ranges are in pixels of a 128-pixel-wide image (``SynthConfig.width``)
OFFICIAL_CANVAS_W = 1064  #: the official ViT canvas width, where f_c is 1000 px
LOWER_CLAMP = 0.1  #: the ViT decoder's smallest canonical depth (``raft_head``)
WINDOW = 30  #: steps averaged at the start and the end of the loss curve


# ---------------------------------------------------------------------- data
def image_sizes(crop: tuple[int, int]) -> list[list[int]]:
    """Rendered image sizes: the canvas, and 7/8 and 9/8 of it (fitted to it in training)."""
    h, w = crop
    return [[h, w], [h * 7 // 8, w * 7 // 8], [h * 9 // 8, w * 9 // 8]]


def synth_values(args, focal: tuple[float, float]) -> dict:
    """``SynthConfig`` fields (JSON values) of one camera set."""
    return {
        "height": REF_WIDTH * 3 // 4,
        "width": REF_WIDTH,
        "focal_range": list(focal),
        "sizes": image_sizes(args.crop),
        "focal_follows_size": True,
        "camera_height_range_m": [0.4, 4.0],
        "wall_height_m": 5.0,
    }


def render_test_sets(args, data: Path) -> dict[str, Path]:
    """Render (or reuse) the three held-out test sets under ``data``; their annotation files."""
    from metricdepth.data.synthetic import write_dataset
    from metricdepth.train.config import make_synth_config

    focal = {"in-range": args.train_focal, "wide": args.wide_focal, "long": args.long_focal}
    out = {}
    for i, name in enumerate(SETS):
        folder = data / f"test_{name}"
        values = synth_values(args, tuple(focal[name]))
        key = {"n": args.test_scenes, "seed": 9000 + i, "synth": values}
        marker = folder / "done.json"
        if not (marker.is_file() and json.loads(marker.read_text()) == key):
            write_dataset(folder, args.test_scenes, 9000 + i, make_synth_config(values))
            marker.write_text(json.dumps(key))
        out[name] = folder / "annotations.json"
    return out


# ---------------------------------------------------------------------- training
def canonical_focal(args) -> float:
    """``--canonical-focal``, else the official 1000 px (``--scale-focal``: scaled with the
    canvas width, 1000 x W / 1064)."""
    if args.canonical_focal is not None:
        return args.canonical_focal
    if args.scale_focal:
        return round(1000.0 * args.crop[1] / OFFICIAL_CANVAS_W, 1)
    return 1000.0


def warmup_steps(args) -> int:
    return args.warmup if args.warmup is not None else max(1, args.steps // 10)


def run_config(args, variant: str) -> dict:
    """The training config of one run (identical across variants but for ``variant``)."""
    return {
        "name": f"vit-{args.size}-{variant}",
        "model_name": f"finetune-cstm-vit-{args.size}-{variant}",
        "seed": args.seed,
        "arch": "metric3d_vit",
        "model_kwargs": {"size": args.size},
        "init_from": None,
        "variant": variant,
        "canonical_focal_px": canonical_focal(args),
        "input_hw": list(args.crop),
        "infer_hw": list(args.crop),
        "infer_resize": "fit",
        "resize_base": "fit",
        "resize_range": [1.0, 1.0],
        "flip_prob": 0.5,
        "size_multiple": 28,
        "min_depth_m": 0.05,
        "max_depth_m": 80.0,
        "datasets": [
            {
                "kind": "synthetic",
                "seed": 1000 + args.seed,
                "num_scenes": args.train_scenes,
                "cache": False,
                "synth": synth_values(args, tuple(args.train_focal)),
            }
        ],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "lr": args.lr_decoder,
        "lr_encoder": args.lr_encoder,
        "lr_decoder": args.lr_decoder,
        "weight_decay": 0.01,
        "warmup_steps": warmup_steps(args),
        "schedule": "cosine",
        "min_lr_ratio": 0.05,
        "grad_clip": 1.0,
        "losses": json.loads(args.losses),
        "precision": args.precision,
        "clamp_gradient": args.clamp_gradient,
        "checkpoint_every": args.steps,
        "keep_checkpoints": 1,
        "log_every": 1,
        "progress": False,
        "threads": args.threads,
        "device": "cpu",
        "workers": 0,
    }


def worker(config_path: Path, sets_json: Path) -> None:
    """Train one run and evaluate it on the test sets (``eval.json`` in the run folder)."""
    import torch

    from metricdepth.evaluate.harness import run_eval
    from metricdepth.train.loop import run_training

    started = time.perf_counter()
    load = os.getloadavg()
    run_dir = run_training(config_path)
    train_call_s = time.perf_counter() - started
    sets = {k: Path(v) for k, v in json.loads(sets_json.read_text()).items()}
    evals, started = {}, time.perf_counter()
    for name, path in sets.items():
        result = run_eval(path, model=str(run_dir / "model.safetensors"), align="median")
        evals[name] = {k: result[k] for k in ("n_images", "abs_rel", "rmse", "delta1", "silog")}
        evals[name]["aligned"] = {k: result["aligned"][k] for k in ("abs_rel", "delta1", "scale")}
    result = {
        "clamped": clamped_fraction(run_dir / "model.safetensors", sets),
        "train_call_s": train_call_s,
        "eval_s": time.perf_counter() - started,
        "load_at_start": list(load),
        "load_at_end": list(os.getloadavg()),
        "threads": torch.get_num_threads(),
        "eval": evals,
    }
    (run_dir / "eval.json").write_text(json.dumps(result))


def clamped_fraction(model_path: Path, sets: dict[str, Path], images: int = 8) -> dict:
    """Per test set: the fraction of canvas pixels whose canonical depth sits at the head's
    lower clamp (0.1; no gradient flows there), over the first ``images`` images."""
    import torch

    from metricdepth.canonical import inference_record, normalize, to_canonical
    from metricdepth.data.dataset import AnnotationSource
    from metricdepth.frame import Frame
    from metricdepth.models.registry import load_model

    model = load_model(model_path)
    net, spec = model.net.eval(), model.spec
    out = {}
    for name, path in sets.items():
        source = AnnotationSource(path, cache=False)
        fractions = []
        for index in range(min(images, len(source))):
            frame = source.frame(index)
            record = inference_record(frame.camera, spec.space, spec.focal_mode)
            canvas = to_canonical(
                Frame(frame.image, frame.camera), record, pad_rgb=spec.space.pad_rgb
            )
            with torch.inference_mode():
                depth_c = net(normalize(canvas.image, spec.space))["depth_c"]
            fractions.append(float((depth_c <= LOWER_CLAMP * 1.001).float().mean()))
        out[name] = sum(fractions) / len(fractions)
    return out


def constant_reference(args, sets: dict[str, Path], samples: int = 200) -> tuple[float, dict]:
    """The median depth of ``samples`` training scenes, predicted everywhere: its scores."""
    import numpy as np

    from metricdepth.data.dataset import AnnotationSource
    from metricdepth.data.synthetic import render_scene, scene_seed
    from metricdepth.evaluate.metrics import average_metrics, evaluate_image, protocol
    from metricdepth.train.config import make_synth_config

    config = make_synth_config(synth_values(args, tuple(args.train_focal)))
    depths = []
    for index in range(samples):
        sample = render_scene(scene_seed(1000 + args.seed, index), config)
        depths.append(sample.depth_m[sample.depth_m > 0])
    constant = float(np.median(np.concatenate(depths)))
    out = {}
    for name, path in sets.items():
        source = AnnotationSource(path, cache=False)
        rows = []
        for index in range(len(source)):
            gt = source.frame(index).depth
            pred = np.full(gt.shape, constant, np.float32)
            rows.append(evaluate_image(pred, gt, protocol("plain")))
        out[name] = average_metrics(rows)
    return constant, out


# ---------------------------------------------------------------------- loss curve
def loss_curve(run_dir: Path, window: int = WINDOW) -> dict:
    """Summary of ``log.jsonl`` (one line per step): first/last window means, window means."""
    import numpy as np

    lines = (run_dir / "log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines if line.strip()]
    steps = [e["step"] for e in log]
    loss = np.array([e["loss"] for e in log], dtype=float)
    n = len(loss)
    w = max(1, min(window, n // 2 or 1))
    edges = np.linspace(0, n, min(10, n) + 1).astype(int)
    return {
        "steps": n,
        "window": w,
        "first_mean": float(loss[:w].mean()),
        "last_mean": float(loss[-w:].mean()),
        "ratio": float(loss[-w:].mean() / loss[:w].mean()),
        "points": {str(steps[i]): float(loss[i]) for i in sorted({0, n // 4, n // 2, n - 1})},
        "windows": [
            [int(steps[a]), int(steps[b - 1]), float(loss[a:b].mean())]
            for a, b in zip(edges[:-1], edges[1:], strict=True)
            if b > a
        ],
        "images_per_s_last": log[-1].get("images_per_s"),
        "elapsed_s_last": log[-1].get("elapsed_s"),
    }


def native_precision() -> str:
    """``bf16`` where this CPU runs bfloat16 matrix products natively, else ``fp32``."""
    import torch

    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


# ---------------------------------------------------------------------- report
def machine_info() -> dict:
    import torch

    cpu = "unknown"
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                cpu = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown(report: dict) -> str:
    s = report["settings"]
    focal = {"in-range": s["train_focal"], "wide": s["wide_focal"], "long": s["long_focal"]}
    m = report["machine"]
    lines = [
        "# Training the official ViT-S architecture on synthetic multi-camera scenes: "
        "CSTM_label vs no label scaling",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}; {m['date_utc']}; "
        f"{s['jobs']} runs in parallel x {s['threads']} torch thread(s) each  ",
        f"Load average (1, 5, 15 min) at start {_fmt_load(report['load_start'])}, at end "
        f"{_fmt_load(report['load_end'])}; total wall {report['wall_s'] / 60:.1f} min",
        "",
        f"**Model**: `arch: metric3d_vit`, `model_kwargs: {{size: {s['size']}}}` "
        f"({report['parameters'] / 1e6:.1f} M parameters), **trained from random "
        "initialisation** (`init_from` none; no official or pre-trained weights were used, "
        "so these are figures for a from-scratch network after a few hundred steps, not for a "
        "fine-tuned Metric3D). "
        f"Canvas {s['crop'][0]} x {s['crop'][1]}, f_c {report['canonical_focal_px']:g} px, "
        f"batch {s['batch_size']}, "
        f"{s['steps']} steps, AdamW lr encoder {s['lr_encoder']:g} / decoder "
        f"{s['lr_decoder']:g}, warm-up {report['warmup_steps']} steps then cosine, "
        f"grad clip 1.0, {s['precision']} forward; losses `{s['losses']}`.",
        "",
        f"**Data**: training scenes rendered on the fly (`synthetic` dataset kind), focal "
        f"{focal['in-range'][0]:g}-{focal['in-range'][1]:g} px at {REF_WIDTH} px width "
        f"(fields of view {_fov(focal['in-range'][1])}-{_fov(focal['in-range'][0])} deg), "
        f"images {', '.join(f'{h}x{w}' for h, w in image_sizes(s['crop']))} fitted to the "
        f"canvas; {s['test_scenes']} held-out scenes per test set, each from unseen scenes.",
        "",
        "## Loss (training objective, per step)",
        "",
        "The objective is in canonical depth units: metres x f_c / f_eff for `label`, metres "
        "for `none`, so the two variants' values are not comparable with each other.",
        "",
        "| variant | steps | train wall (s) | images/s | mean loss, first "
        f"{WINDOW} | mean loss, last {WINDOW} | last / first | loss at steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, run in report["runs"].items():
        c = run["curve"]
        points = ", ".join(f"{k}: {v:.3g}" for k, v in c["points"].items())
        lines.append(
            f"| {variant} | {c['steps']} | {run['train_s']:.0f} | "
            f"{run['images_per_s']:.2f} | {c['first_mean']:.3f} | {c['last_mean']:.3f} | "
            f"{c['ratio']:.2f} | {points} |"
        )
    lines += ["", "Mean loss over windows of steps:", ""]
    for variant, run in report["runs"].items():
        windows = "; ".join(f"{a}-{b}: {v:.3f}" for a, b, v in run["curve"]["windows"])
        lines.append(f"- `{variant}`: {windows}")
    lines += [
        "",
        "## Held-out cameras (`metricdepth eval`, protocol plain)",
        "",
        "Metric scores (no alignment); then median-aligned AbsRel / δ1 (structure only) and the "
        "mean median-alignment factor gt/pred (1 = right scale); `at lower clamp`: the share of "
        "canvas pixels (first 8 images) whose canonical depth is the decoder's floor 0.1, where "
        "no gradient flows (a collapsed GRU stage).",
        "",
        "| test set (focal px at 128 px width) | variant | AbsRel | RMSE (m) | δ1 | aligned "
        "AbsRel | aligned δ1 | scale gt/pred | at lower clamp |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SETS:
        label = f"{name} {focal[name][0]:g}-{focal[name][1]:g}"
        if name != "in-range":
            label += " (**not trained on**)"
        for variant, run in report["runs"].items():
            e = run["eval"][name]
            a = e["aligned"]
            lines.append(
                f"| {label} | {variant} | {e['abs_rel']:.3f} | {e['rmse']:.2f} | "
                f"{e['delta1']:.3f} | {a['abs_rel']:.3f} | {a['delta1']:.3f} | {a['scale']:.2f} | "
                f"{run['clamped'][name]:.0%} |"
            )
        c = report["constant"]["sets"][name]
        lines.append(
            f"| {label} | constant {report['constant']['depth_m']:.2f} m | {c['abs_rel']:.3f} | "
            f"{c['rmse']:.2f} | {c['delta1']:.3f} | - | - | - | - |"
        )
    lines += [
        "",
        "Equivalent command line per test set: `metricdepth eval "
        "<data>/test_<set>/annotations.json --model <run>/model.safetensors --align median`.",
        "",
        f"Settings: `{json.dumps(s, sort_keys=True)}`",
    ]
    return "\n".join(lines)


def _fov(f: float) -> str:
    return f"{math.degrees(2 * math.atan(REF_WIDTH / 2 / f)):.0f}"


def _fmt_load(load) -> str:
    return ", ".join(f"{v:.2f}" for v in load)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny ViT, 3 steps")
    parser.add_argument("--steps", type=int, default=None, help="default 300 (quick: 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 2 (quick: 1)")
    parser.add_argument("--crop", type=int, nargs=2, default=None, help="H W (default 168 224)")
    parser.add_argument("--size", default=None, help="ViT size (default small; quick: tiny)")
    parser.add_argument("--lr-encoder", type=float, default=5e-5)
    parser.add_argument("--lr-decoder", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=None, help="steps (default steps / 10)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 where oneDNN has native bf16 (AVX-512 BF16 / AMX), else fp32 "
        "(bf16 is emulated, many times slower, on AVX2-only CPUs)",
    )
    parser.add_argument(
        "--clamp-gradient",
        choices=("straight_through", "official"),
        default="straight_through",
        help="config.clamp_gradient: the decoder clamp's gradient (default straight_through)",
    )
    parser.add_argument("--losses", default='{"gru_sequence": 1.0}', help="config.losses, JSON")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-scenes", type=int, default=20000)
    parser.add_argument("--test-scenes", type=int, default=None, help="per set (default 60)")
    parser.add_argument("--train-focal", type=float, nargs=2, default=[100.0, 600.0])
    parser.add_argument("--wide-focal", type=float, nargs=2, default=[60.0, 100.0])
    parser.add_argument("--long-focal", type=float, nargs=2, default=[600.0, 1000.0])
    parser.add_argument("--canonical-focal", type=float, default=None, help="default 1000")
    parser.add_argument(
        "--scale-focal", action="store_true", help="f_c = 1000 x crop width / 1064 instead"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="data and runs (temp dir)")
    parser.add_argument("--results-dir", type=Path, default=None, help="write <tag>.md/.json")
    parser.add_argument("--tag", default="finetune_cstm")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="the runs folder of an earlier call with the same settings: finished runs are "
        "not trained again (their logs and wall times are reported), only evaluated",
    )
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sets", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.sets)
        return 0
    quick = {"steps": 3, "batch_size": 1, "crop": [56, 84], "size": "tiny", "test_scenes": 3}
    full = {"steps": 300, "batch_size": 2, "crop": [168, 224], "size": "small", "test_scenes": 60}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.crop = list(args.crop)
    if args.precision == "auto":
        args.precision = native_precision()
    if args.crop[0] % 28 or args.crop[1] % 28:
        parser.error(f"--crop must be multiples of 28, got {args.crop}")

    started = time.perf_counter()
    load_start = os.getloadavg()
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("worker", "sets", "work_dir", "results_dir", "tag", "runs_dir")
    }
    root = args.work_dir or Path(tempfile.gettempdir()) / "metricdepth-finetune-cstm"
    data_key = {k: settings[k] for k in ("crop", "train_focal", "wide_focal", "long_focal")}
    data = root / f"data-{_key({**data_key, 'n': args.test_scenes})}"
    work = args.runs_dir or root / f"runs-{_key(settings)}-{int(time.time())}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"data folder: {data}\nruns folder: {work}", flush=True)
    sets = render_test_sets(args, data)
    print(f"test sets ready after {time.perf_counter() - started:.0f} s", flush=True)
    sets_json = work / "sets.json"
    sets_json.write_text(json.dumps({k: str(v) for k, v in sets.items()}))

    import yaml

    paths = {}
    for variant in args.variants:
        config = run_config(args, variant)
        config["out_dir"] = str(work / "runs")
        path = work / "configs" / f"{config['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        paths[variant] = path
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p
    )

    def launch(variant: str) -> tuple[str, dict]:
        t = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(paths[variant])]
        done = subprocess.run(
            [*cmd, "--sets", str(sets_json)], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"run {variant} failed:\n{done.stderr[-3000:]}")
        run_dir = work / "runs" / run_config(args, variant)["name"]
        result = json.loads((run_dir / "eval.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        result.update(
            curve=loss_curve(run_dir),
            train_s=summary["wall_s_this_session"],
            images_per_s=summary["steps"] * args.batch_size / summary["wall_s_this_session"],
            parameters=summary["parameters"],
            model=str(run_dir / "model.safetensors"),
        )
        print(
            f"  {variant}: trained in {result['train_s']:.0f} s, evaluated in "
            f"{result['eval_s']:.0f} s (process {time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        return variant, result

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = dict(pool.map(launch, args.variants))
    constant, constant_sets = constant_reference(args, sets)
    first = next(iter(runs.values()))
    command = "python benchmarks/finetune_cstm.py" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv)
    )
    report = {
        "command": command,
        "machine": machine_info(),
        "load_start": list(load_start),
        "load_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "settings": settings,
        "canonical_focal_px": canonical_focal(args),
        "warmup_steps": warmup_steps(args),
        "parameters": first["parameters"],
        "constant": {"depth_m": constant, "sets": constant_sets},
        "runs": runs,
    }
    text = markdown(report)
    print(text)
    if args.results_dir is not None:
        from metricdepth.io import atomic_write

        args.results_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.results_dir / f"{args.tag}.json") as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
        with atomic_write(args.results_dir / f"{args.tag}.md") as tmp:
            tmp.write_text(text + "\n")
    return 0


def _key(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


if __name__ == "__main__":
    sys.exit(main())
