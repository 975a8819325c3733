"""The CSTM ablation in one command: train ``none``, ``label`` and ``image`` alike, test by focal.

    python benchmarks/cstm_ablation.py                # defaults: about 15 min on 2 CPU cores

1. Renders synthetic scenes (``metricdepth.data.synthetic.write_dataset``, Metric3D-format
   annotation files) into a work folder (reused when present): a training set with focal
   lengths in ``--train-focal`` and three held-out test sets of unseen scenes: ``in-range``
   (the training focal range), ``wide`` (shorter focal lengths than any in training) and
   ``long`` (longer). Image sizes, principal points and fx/fy vary independently of the focal
   length (``focal_follows_size``: the focal ranges are in pixels of a 128-pixel-wide image,
   i.e. they are fields of view).
2. Trains every variant for every seed with the same config except ``variant``
   (``metricdepth.train``), ``--jobs`` processes at a time, one torch thread each.
3. Evaluates each model through the canonical space it was trained for
   (``train.loop.predict_depth_m``: the ``Predictor`` of ``metricdepth predict``, clamp included):
   ``image`` with ``resize="focal"`` (the whole image resized to f_c, padded to the network's
   multiple); ``label`` and ``none`` with ``resize="fit"`` to the training canvas, so the
   network sees at test time exactly what it saw in training (the whole image at the canvas
   size, no crop) and the compute per image is fixed; the label variant's ``f_eff`` accounts
   for the resize.
4. Writes ``<results>/<tag>.md``, ``.json`` and ``_scale_vs_focal.png``: AbsRel, RMSE, delta1
   (``metricdepth.evaluate.metrics.depth_metrics``, per image then averaged), the median over
   images of each image's median pred/gt, the standard deviation over images of its log, and
   the least-squares slope of log(pred/gt) against log f; per seed and their mean; a
   constant-prediction reference (the training set's median depth); and the issue's goals
   checked per seed for each CSTM variant.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "label", "image")
BINS = ("in-range", "wide", "long")
#: Reference image width of the focal ranges (``SynthConfig.width``).
REF_WIDTH = 128
SIZES = ((96, 128), (84, 112), (108, 144))
TRAIN_SHARDS = 2  # the training scenes are rendered as two annotation files (mixed 1:1)
DATA_KEYS = (
    "train_scenes",
    "test_scenes",
    "train_focal",
    "wide_focal",
    "long_focal",
    "camera_height",
    "wall_height",
)
GOAL_SLOPE = 0.05
GOAL_IN_RANGE = 0.85  # AbsRel at most 85 % of the none variant's
GOAL_WIDE = 0.5  # AbsRel at most half of the none variant's


# ---------------------------------------------------------------------- data
def synth_values(args, focal: tuple[float, float]) -> dict:
    """The ``SynthConfig`` fields of one set (JSON values)."""
    return {
        "height": 96,
        "width": REF_WIDTH,
        "focal_range": list(focal),
        "sizes": [list(s) for s in SIZES],
        "focal_follows_size": True,
        "camera_height_range_m": list(args.camera_height),
        "wall_height_m": args.wall_height,
    }


def _render(args: tuple[str, int, int, dict]) -> str:
    out, n, seed, values = args
    from metricdepth.data.synthetic import write_dataset
    from metricdepth.train.config import make_synth_config

    marker = Path(out) / "done.json"
    key = {"n": n, "seed": seed, "synth": values}
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return out
    write_dataset(out, n, seed, make_synth_config(values))
    marker.write_text(json.dumps(key))
    return out


def render_sets(args, data: Path) -> dict[str, Path]:
    """Render (or reuse) the training shards and the three test sets under ``data``."""
    low, high = args.train_focal
    focal = {
        "in-range": (low, high),
        "wide": tuple(args.wide_focal),
        "long": tuple(args.long_focal),
    }
    jobs = []
    for k in range(TRAIN_SHARDS):
        n = args.train_scenes // TRAIN_SHARDS + (k < args.train_scenes % TRAIN_SHARDS)
        jobs.append((str(data / f"train_{k}"), n, 1000 + k, synth_values(args, (low, high))))
    for i, name in enumerate(BINS):
        values = synth_values(args, focal[name])
        jobs.append((str(data / f"test_{name}"), args.test_scenes, 9000 + i, values))
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(_render, jobs))
    sets = {f"train_{k}": data / f"train_{k}" / "annotations.json" for k in range(TRAIN_SHARDS)}
    sets.update({name: data / f"test_{name}" / "annotations.json" for name in BINS})
    return sets


# ---------------------------------------------------------------------- training
def run_config(args, variant: str, seed: int, sets: dict[str, Path]) -> dict:
    """The training config of one run (identical across variants but for ``variant``)."""
    train_sets = [p for k, p in sets.items() if k.startswith("train_")]
    return {
        "name": f"{variant}-s{seed}",
        "seed": seed,
        "variant": variant,
        "canonical_focal_px": args.canonical_focal,
        "input_hw": [96, REF_WIDTH],
        "resize_range": list(args.resize_range),
        "resize_base": args.resize_base,
        "precise_bn_batches": args.precise_bn,
        "flip_prob": 0.5,
        "min_depth_m": 0.05,
        "max_depth_m": 80.0,
        "infer_resize": "fit",
        "size_multiple": 32,
        "model_name": f"cstm-ablation-{variant}",
        "model_kwargs": json.loads(args.model_kwargs),
        "datasets": [{"kind": "annotations", "path": str(p), "weight": 1.0} for p in train_sets],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "lr": args.lr,
        "warmup_steps": max(1, args.steps // 20),
        "schedule": "cosine",
        "loss_l1_log": 1.0,
        "loss_silog": 0.0,
        "checkpoint_every": max(1, args.steps // 4),
        "log_every": 10,
        "progress": False,
        "precision": args.precision,
        "threads": 1,
        "device": "cpu",
    }


def worker(config_path: Path, sets_json: Path) -> None:
    """Train one run (resuming if interrupted) and evaluate it on the test sets."""
    import torch

    torch.set_num_threads(1)
    from metricdepth.train.loop import run_training

    started, cpu = time.perf_counter(), time.process_time()
    run_dir = run_training(config_path)
    train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    summary = json.loads((run_dir / "summary.json").read_text())
    sets = {k: Path(v) for k, v in json.loads(sets_json.read_text()).items()}
    started = time.perf_counter()
    rows = evaluate_model(run_dir / "model.safetensors", sets)
    result = {
        "train_s": summary["wall_s_this_session"] if summary["resumed_from_step"] == 0 else None,
        "train_call_s": train_s,
        "train_cpu_s": train_cpu_s,
        "eval_s": time.perf_counter() - started,
        "rows": rows,
    }
    (run_dir / "eval.json").write_text(json.dumps(result))


def _load_test_set(path: Path):
    from metricdepth.data.dataset import AnnotationSource

    source = AnnotationSource(path, cache=False)
    for index in range(len(source)):
        yield source.entries[index].key, source.frame(index)


def _row(name: str, key: str, frame, pred_m: np.ndarray) -> dict:
    from metricdepth.evaluate.metrics import depth_metrics

    gt = frame.depth
    valid = frame.mask & (gt <= 80.0)
    metrics = depth_metrics(pred_m, gt, valid)
    ratio = float(np.median(pred_m[valid] / gt[valid]))
    cam = frame.camera
    return {
        "set": name,
        "key": key,
        "focal_px": cam.focal("mean"),
        "focal_ref_px": cam.focal("mean") * REF_WIDTH / cam.width,
        "abs_rel": metrics["abs_rel"],
        "rmse": metrics["rmse"],
        "delta1": metrics["delta1"],
        "ratio": ratio,
    }


def evaluate_model(model_path: Path, sets: dict[str, Path]) -> list[dict]:
    """Per-image rows of a trained model on the test sets."""
    from metricdepth.models.registry import load_model
    from metricdepth.train.loop import predict_depth_m

    model = load_model(model_path)
    rows = []
    for name in BINS:
        for key, frame in _load_test_set(sets[name]):
            pred = predict_depth_m(model, frame.image, frame.camera)
            rows.append(_row(name, key, frame, pred))
    return rows


def constant_rows(sets: dict[str, Path], samples: int = 400) -> tuple[float, list[dict]]:
    """The constant reference: the median training depth predicted everywhere."""
    from metricdepth.data.dataset import AnnotationSource

    values = []
    for key, path in sets.items():
        if key.startswith("train_"):
            source = AnnotationSource(path, cache=False)
            for index in range(min(len(source), samples)):
                frame = source.frame(index)
                values.append(frame.depth[frame.mask])
    constant = float(np.median(np.concatenate(values)))
    rows = []
    for name in BINS:
        for key, frame in _load_test_set(sets[name]):
            pred = np.full(frame.depth.shape, constant, dtype=np.float32)
            rows.append(_row(name, key, frame, pred))
    return constant, rows


# ---------------------------------------------------------------------- statistics
def summarize(rows: list[dict]) -> dict:
    """AbsRel, RMSE, delta1 (means over images), median ratio, log-ratio std, slope vs log f."""
    log_ratio = np.log([r["ratio"] for r in rows])
    log_f = np.log([r["focal_ref_px"] for r in rows])
    slope = float(np.polyfit(log_f, log_ratio, 1)[0]) if np.ptp(log_f) > 0 else float("nan")
    return {
        "abs_rel": float(np.mean([r["abs_rel"] for r in rows])),
        "rmse": float(np.mean([r["rmse"] for r in rows])),
        "delta1": float(np.mean([r["delta1"] for r in rows])),
        "median_ratio": float(np.exp(np.median(log_ratio))),
        "log_scale_std": float(np.std(log_ratio)),
        "slope": slope,
        "n": len(rows),
    }


def aggregate(results: dict[tuple[str, int], dict], constant: list[dict]) -> dict:
    """Per variant, seed and focal set (plus ``all``) statistics."""
    table: dict = {"constant": {}}
    for name in (*BINS, "all"):
        subset = [r for r in constant if name in ("all", r["set"])]
        table["constant"][name] = summarize(subset)
    for (variant, seed), result in results.items():
        per_set = {}
        for name in (*BINS, "all"):
            subset = [r for r in result["rows"] if name in ("all", r["set"])]
            per_set[name] = summarize(subset)
        table.setdefault(variant, {})[seed] = {
            "sets": per_set,
            "train_s": result["train_s"],
            "train_cpu_s": result.get("train_cpu_s"),
            "eval_s": result["eval_s"],
        }
    return table


def goals(table: dict, seeds: list[int]) -> dict:
    """The issue's goals per CSTM variant and seed."""
    out: dict = {}
    for variant in ("label", "image"):
        if variant not in table or "none" not in table:
            continue
        out[variant] = {}
        for seed in seeds:
            mine, base = table[variant][seed]["sets"], table["none"][seed]["sets"]
            checks = {
                "slope_in_range": abs(mine["in-range"]["slope"]) <= GOAL_SLOPE,
                "in_range_abs_rel": mine["in-range"]["abs_rel"]
                <= GOAL_IN_RANGE * base["in-range"]["abs_rel"],
                "wide_abs_rel": mine["wide"]["abs_rel"] <= GOAL_WIDE * base["wide"]["abs_rel"],
            }
            checks["all"] = all(checks.values())
            out[variant][seed] = checks
    return out


# ---------------------------------------------------------------------- report
_COLUMNS = (
    ("abs_rel", "AbsRel", "{:.3f}"),
    ("rmse", "RMSE (m)", "{:.2f}"),
    ("delta1", "δ1", "{:.3f}"),
    ("median_ratio", "median pred/gt", "{:.2f}"),
    ("log_scale_std", "per-image log-scale std", "{:.2f}"),
    ("slope", "slope of log(pred/gt) vs log f", "{:+.2f}"),
)


def _cell(values: list[float], fmt: str) -> str:
    mean = fmt.format(float(np.mean(values)))
    if len(values) == 1:
        return mean
    return f"{mean} [{' / '.join(fmt.format(v) for v in values)}]"


def markdown(report: dict) -> str:
    table, seeds, args = report["table"], report["seeds"], report["settings"]
    focal = {
        "in-range": args["train_focal"],
        "wide": args["wide_focal"],
        "long": args["long_focal"],
    }
    head = ["focal set", "variant", *(c[1] for c in _COLUMNS), "train CPU s"]
    lines = [
        "# CSTM ablation (synthetic multi-camera scenes)",
        "",
        f"Command: `{report['command']}`  ",
        f"Wall time: {report['wall_s'] / 60:.1f} min on {report['machine']}  ",
        f"Seeds {', '.join(map(str, seeds))}; cells are the mean over seeds "
        f"[{' / '.join(f'seed {s}' for s in seeds)}]. Focal ranges are in pixels of a "
        f"{REF_WIDTH}-pixel-wide image (fields of view). Constant reference: "
        f"{report['constant_m']:.2f} m everywhere (the training set's median depth).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in (*BINS, "all"):
        label = f"{name} f {focal[name][0]:g}-{focal[name][1]:g}" if name in focal else "all"
        rows = [("constant", [table["constant"][name]], "-")]
        for variant in VARIANTS:
            if variant in table:
                stats = [table[variant][s]["sets"][name] for s in seeds]
                train = [table[variant][s]["train_cpu_s"] for s in seeds]
                train_s = f"{np.mean(train):.0f}" if all(t is not None for t in train) else "-"
                rows.append((variant, stats, train_s))
        for variant, stats, train_s in rows:
            cells = [_cell([s[key] for s in stats], fmt) for key, _, fmt in _COLUMNS]
            lines.append(f"| {label} | {variant} | " + " | ".join(cells) + f" | {train_s} |")
    lines += ["", "## Goals (issue 4), per seed", ""]
    lines.append(
        f"|variant|seed|in-range |slope| <= {GOAL_SLOPE}|in-range AbsRel <= "
        f"{GOAL_IN_RANGE:g} x none|wide AbsRel <= {GOAL_WIDE:g} x none|all|"
    )
    lines.append("|---|---|---|---|---|---|")
    for variant, per_seed in report["goals"].items():
        for seed, checks in per_seed.items():
            marks = [
                "yes" if checks[k] else "NO"
                for k in ("slope_in_range", "in_range_abs_rel", "wide_abs_rel", "all")
            ]
            lines.append(f"|{variant}|{seed}|" + "|".join(marks) + "|")
    lines += [
        "",
        "## How it was run",
        "",
        *NOTES,
        "",
        "Settings: `" + json.dumps(args, sort_keys=True) + "`",
        "",
    ]
    return "\n".join(lines)


NOTES = (
    "- Every variant: the same config but `variant` (metricdepth.train): small_unet, batch of "
    "`batch_size` images on a 96 x 128 canvas (`resize_base: fit`: each image resized to fit "
    "the canvas exactly as inference will, then padded, padding masked; `image` resizes to f_c "
    "instead and crops or pads), left-right flip, random resize `resize_range`, L1 on log "
    "depth, AdamW (fused) + warm-up + cosine, 1 thread, forward pass in `precision` (bf16: "
    "bfloat16 autocast, float32 loss and weights; about 1.4x the steps of float32 in the same "
    "CPU time); after the last step the BatchNorm statistics are re-estimated as the average "
    "over `precise_bn` further batches.",
    "- `none`: metric labels. `label` (CSTM_label): labels x f_c / f_eff. `image` (CSTM_image): "
    "images resized by f_c / f, metric labels. f_c is the geometric centre of the training "
    "focal range, so CSTM_image up- and downsamples by at most about 2.5x in training.",
    "- Inference: `label` and `none` fit the whole image to the 96 x 128 training canvas "
    "(`resize: fit`): the network sees at test time what it saw in training and the label "
    "variant's f_eff accounts for the resize; `image` resizes by f_c / f (`resize: focal`) and "
    "pads to a multiple of 32, so long-focal test images shrink to about 30 pixels wide.",
    "- Test scenes are unseen; image size, principal point (5 %) and fx/fy (3 %) vary "
    "independently of the focal length. median pred/gt: median over images of each image's "
    "median ratio; log-scale std: standard deviation over images of its log; slope: least "
    "squares of log(pred/gt) on log f within the set.",
)

_COLORS = {
    "none": (40, 40, 200),
    "label": (30, 150, 30),
    "image": (200, 90, 20),
    "constant": (140, 140, 140),
}  # BGR


def plot(report: dict, results: dict, path: Path) -> None:
    """PNG: median pred/gt against focal length (log-log), one curve per variant."""
    import cv2

    width, height, margin, right = 1000, 540, 70, 140
    image = np.full((height, width, 3), 255, np.uint8)
    settings = report["settings"]
    f_lo = settings["wide_focal"][0] * 0.95
    f_hi = settings["long_focal"][1] * 1.05
    r_lo, r_hi = 0.4, 2.5

    def xy(f: float, r: float) -> tuple[int, int]:
        x = margin + (math.log(f) - math.log(f_lo)) / (math.log(f_hi) - math.log(f_lo)) * (
            width - margin - right
        )
        clipped = min(max(r, r_lo), r_hi)
        y = (
            height
            - margin
            - (math.log(clipped) - math.log(r_lo))
            / (math.log(r_hi) - math.log(r_lo))
            * (height - 2 * margin)
        )
        return int(round(x)), int(round(y))

    t0, t1 = settings["train_focal"]
    cv2.rectangle(
        image, (xy(t0, r_hi)[0], margin), (xy(t1, r_lo)[0], height - margin), (235, 235, 235), -1
    )
    for r in (0.5, 0.67, 1.0, 1.5, 2.0):
        y = xy(f_lo, r)[1]
        cv2.line(image, (margin, y), (width - right, y), (200, 200, 200) if r != 1 else (0, 0, 0))
        cv2.putText(image, f"{r:g}", (10, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for f in (60, 100, 150, 250, 400, 600, 1000, 1500, 2500):
        if f_lo <= f <= f_hi:
            x = xy(f, 1)[0]
            cv2.line(image, (x, height - margin), (x, height - margin + 6), (0, 0, 0))
            cv2.putText(
                image,
                str(f),
                (x - 12, height - margin + 22),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (0, 0, 0),
                1,
            )
    cv2.rectangle(image, (margin, margin), (width - right, height - margin), (0, 0, 0), 1)
    cv2.putText(
        image,
        f"focal length (px at {REF_WIDTH} px width), log scale; grey: training",
        (margin + 120, height - 18),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (0, 0, 0),
        1,
    )
    cv2.putText(
        image,
        "median pred/gt per focal bin (log scale), mean over seeds",
        (margin, margin - 30),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.55,
        (0, 0, 0),
        1,
    )
    edges = np.exp(
        np.linspace(math.log(settings["wide_focal"][0]), math.log(settings["long_focal"][1]), 15)
    )
    curves = {"constant": [results["constant_rows"]]}
    for variant in VARIANTS:
        runs = [r for (v, _), r in results["runs"].items() if v == variant]
        if runs:
            curves[variant] = [r["rows"] for r in runs]
    for index, (variant, row_sets) in enumerate(curves.items()):
        points = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            per_seed = []
            for rows in row_sets:
                logs = [math.log(r["ratio"]) for r in rows if lo <= r["focal_ref_px"] < hi]
                if len(logs) >= 3:
                    per_seed.append(float(np.median(logs)))
            if per_seed:
                points.append(xy(math.sqrt(lo * hi), math.exp(np.mean(per_seed))))
        color = _COLORS[variant]
        for a, b in zip(points[:-1], points[1:], strict=True):
            cv2.line(image, a, b, color, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(image, p, 4, color, -1, cv2.LINE_AA)
        cv2.putText(
            image,
            variant,
            (width - right + 12, margin + 20 + 22 * index),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            color,
            2,
        )
    from metricdepth.io import atomic_write

    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise ValueError(f"{path}: could not write the plot")


# ---------------------------------------------------------------------- a shipped model
REAL_PROTOCOLS = {"kitti": "kitti", "nyu": "nyu"}


def evaluate_real(model, folder: Path) -> dict:
    """Metric and median-aligned scores of ``model`` on Metric3D-format sample sets."""
    from metricdepth.data.dataset import AnnotationSource
    from metricdepth.evaluate.metrics import eval_mask, evaluate_image, protocol
    from metricdepth.train.loop import predict_depth_m

    out = {}
    for name, preset in REAL_PROTOCOLS.items():
        path = folder / name / "test_annotations.json"
        if not path.is_file():
            continue
        source = AnnotationSource(path, cache=False)
        rows = []
        for index in range(len(source)):
            frame = source.frame(index)
            pred = predict_depth_m(model, frame.image, frame.camera)  # clamped as predict
            metric = evaluate_image(pred, frame.depth, protocol(preset))
            aligned = evaluate_image(pred, frame.depth, protocol(preset, align="median"))
            mask = eval_mask(frame.depth, protocol(preset))
            rows.append(
                {
                    "key": source.entries[index].key,
                    "abs_rel": metric["abs_rel"],
                    "rmse": metric["rmse"],
                    "delta1": metric["delta1"],
                    "median_ratio": float(np.median(pred[mask] / frame.depth[mask])),
                    "aligned_abs_rel": aligned["abs_rel"],
                    "aligned_delta1": aligned["delta1"],
                    "focal_px": frame.camera.focal("mean"),
                    "size": [frame.camera.width, frame.camera.height],
                }
            )
        out[name] = {
            "protocol": protocol(preset).describe(),
            "images": rows,
            **{
                k: float(np.mean([r[k] for r in rows]))
                for k in ("abs_rel", "rmse", "delta1", "aligned_abs_rel", "aligned_delta1")
            },
            "median_ratio": float(np.exp(np.median(np.log([r["median_ratio"] for r in rows])))),
        }
    return out


def evaluate_shipped(args, sets: dict[str, Path], settings: dict) -> None:
    """Held-out synthetic focal sets and real samples for one model file -> results files."""
    from metricdepth.io import atomic_write
    from metricdepth.models.registry import load_model

    started = time.perf_counter()
    rows = evaluate_model(args.evaluate_model, sets)
    synthetic = {
        name: summarize([r for r in rows if name in ("all", r["set"])]) for name in (*BINS, "all")
    }
    model = load_model(args.evaluate_model)
    real = evaluate_real(model, args.real_samples)
    report = {
        "model": str(args.evaluate_model),
        "spec": json.loads(model.spec.to_json()),
        "settings": settings,
        "synthetic": synthetic,
        "real": real,
        "eval_s": time.perf_counter() - started,
    }
    focal = {"in-range": args.train_focal, "wide": args.wide_focal, "long": args.long_focal}
    lines = [
        f"# {model.spec.name}: evaluation",
        "",
        f"Held-out synthetic scenes ({args.test_scenes} per focal set, unseen seeds); focal "
        f"lengths in pixels of a {REF_WIDTH}-pixel-wide image.",
        "",
        "| focal set | " + " | ".join(c[1] for c in _COLUMNS) + " |",
        "|---|" + "---|" * len(_COLUMNS),
    ]
    for name, stats in synthetic.items():
        label = f"{name} f {focal[name][0]:g}-{focal[name][1]:g}" if name in focal else name
        lines.append(
            f"| {label} | " + " | ".join(fmt.format(stats[k]) for k, _, fmt in _COLUMNS) + " |"
        )
    lines += [
        "",
        "Real samples (metric, no alignment; and median-aligned AbsRel / δ1):",
        "",
        "| set | images | AbsRel | RMSE (m) | δ1 | median pred/gt | aligned AbsRel | aligned δ1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in real.items():
        lines.append(
            f"| {name} ({r['protocol']}) | {len(r['images'])} | {r['abs_rel']:.3f} | "
            f"{r['rmse']:.2f} | {r['delta1']:.3f} | {r['median_ratio']:.2f} | "
            f"{r['aligned_abs_rel']:.3f} | {r['aligned_delta1']:.3f} |"
        )
    out = args.results_dir
    with atomic_write(out / f"{args.tag}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_write(out / f"{args.tag}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (1 thread each)")
    parser.add_argument("--train-scenes", type=int, default=8000)
    parser.add_argument("--test-scenes", type=int, default=300, help="per focal set")
    parser.add_argument("--train-focal", type=float, nargs=2, default=[100.0, 600.0])
    parser.add_argument("--wide-focal", type=float, nargs=2, default=[60.0, 100.0])
    parser.add_argument("--long-focal", type=float, nargs=2, default=[600.0, 1000.0])
    parser.add_argument("--camera-height", type=float, nargs=2, default=[0.4, 4.0])
    parser.add_argument("--wall-height", type=float, default=5.0)
    parser.add_argument("--canonical-focal", type=float, default=250.0)
    parser.add_argument("--resize-range", type=float, nargs=2, default=[1.0, 1.0])
    parser.add_argument(
        "--resize-base",
        choices=("none", "fit"),
        default="fit",
        help="training resize base of label/none: as stored, or fitted to the canvas as at test",
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument(
        "--precise-bn", type=int, default=100, help="batches re-estimating BatchNorm statistics"
    )
    parser.add_argument("--model-kwargs", default="{}", help="small_unet kwargs as JSON")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="data and runs (default: a folder in the temp dir, reused)",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tag", default="cstm_ablation", help="results file name stem")
    parser.add_argument(
        "--evaluate-model",
        type=Path,
        default=None,
        help="only evaluate this model file on the test sets and real samples",
    )
    parser.add_argument(
        "--real-samples",
        type=Path,
        default=REPO.parent / "shared" / "samples" / "metric3d_demo",
        help="folder of <name>/test_annotations.json sets (kitti, nyu)",
    )
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sets", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.sets)
        return 0

    started = time.perf_counter()
    settings = {
        k: v
        for k, v in vars(args).items()
        if k
        not in (
            "worker",
            "sets",
            "work_dir",
            "results_dir",
            "tag",
            "evaluate_model",
            "real_samples",
        )
    }
    work = args.work_dir or Path(tempfile.gettempdir()) / "metricdepth-cstm-ablation"
    data = work / f"data-{_key({k: settings[k] for k in DATA_KEYS})}"
    work = work / f"runs-{_key(settings)}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"data folder: {data}\nruns folder: {work}", flush=True)
    sets = render_sets(args, data)
    print(f"data ready after {time.perf_counter() - started:.0f} s", flush=True)
    if args.evaluate_model is not None:
        evaluate_shipped(args, sets, settings)
        return 0
    sets_json = work / "sets.json"
    sets_json.write_text(json.dumps({k: str(v) for k, v in sets.items()}))

    import yaml

    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            config = run_config(args, variant, seed, sets)
            config["out_dir"] = str(work / "runs")
            path = work / "configs" / f"{config['name']}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            runs.append((variant, seed, path))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def launch(item):
        variant, seed, path = item
        t = time.perf_counter()
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(path),
            "--sets",
            str(sets_json),
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"run {variant}-s{seed} failed:\n{done.stderr[-3000:]}")
        print(f"  {variant}-s{seed} done in {time.perf_counter() - t:.0f} s", flush=True)
        result = json.loads((work / "runs" / f"{variant}-s{seed}" / "eval.json").read_text())
        return (variant, seed), result

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(pool.map(launch, runs))
    constant, const_rows = constant_rows(sets)
    table = aggregate(results, const_rows)
    machine = f"{os.cpu_count()} CPU cores, {args.jobs} processes x 1 thread"
    report = {
        "command": "python benchmarks/cstm_ablation.py"
        + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "wall_s": time.perf_counter() - started,
        "machine": machine,
        "seeds": args.seeds,
        "settings": settings,
        "constant_m": constant,
        "table": table,
        "goals": goals(table, args.seeds),
    }
    from metricdepth.io import atomic_write

    out = args.results_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / f"{args.tag}.json") as tmp:
        tmp.write_text(json.dumps(_json_keys(report), indent=1) + "\n")
    with atomic_write(out / f"{args.tag}.md") as tmp:
        tmp.write_text(markdown(report) + "\n")
    plot(
        report,
        {"runs": results, "constant_rows": const_rows},
        out / f"{args.tag}_scale_vs_focal.png",
    )
    print(markdown(report))
    return 0


def _key(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def _json_keys(value):
    if isinstance(value, dict):
        return {str(k): _json_keys(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    sys.exit(main())
