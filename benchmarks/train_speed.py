"""Training throughput and peak memory of the official architectures on this machine's CPU.

    python benchmarks/train_speed.py                 # the default table (about 10 min, 2 cores)
    python benchmarks/train_speed.py --models ViT-S --crop-s 616 1064   # the official canvas
    python benchmarks/train_speed.py --quick         # a smoke run: tiny ViT at 56x84, 2 steps

Every configuration runs in a **fresh subprocess** (so that ``ru_maxrss`` is its own peak) and
goes through the real training path of ``metricdepth.train``: the config is validated by
``train.config.config_from_dict``, the network built and set up by ``train.arch`` (activation
checkpointing included), the optimiser by ``train.optim.make_optimizer`` (AdamW, encoder and
decoder groups), the batch by ``train.loop.build_dataset`` (synthetic scenes rendered at the
crop and moved into the canonical space exactly as in training), and every step by
``train.step.accumulate_gradients`` (forward under bf16 autocast when asked, the objective of
``config.losses`` in float32 outside autocast, backward) followed by gradient clipping and the
optimiser step, as ``train.loop`` does.

The batch is rendered once before timing (so data rendering is not in the figures). Step 1
allocates the optimiser state and is timed separately; ``s/step`` and ``images/s`` are the
median of the following steps when there are any (``--steps`` > 1), else step 1 itself.
``RSS before`` is the resident set after building the network, optimiser and batch; ``peak
RSS`` is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end (the whole process, so it
includes the weights, the optimiser state, the batch and everything the steps allocated);
``step peak`` is their difference, the memory a step needs on top of the model. ``peak after
fwd+bwd 1`` is ``ru_maxrss`` right after the first backward pass, before the first optimiser
step allocates AdamW's two moment buffers (2 x 4 bytes per parameter), so it shows what
activation checkpointing saves; the final peak is usually set by the optimiser state.

A configuration that exceeds ``--timeout`` seconds is reported as such, not dropped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: (label, arch, size, crop (H, W), batch size, steps, activation checkpointing)
#: Half the official canvases in each direction (616 x 1064 ViT, 544 x 1216 ConvNeXt, rounded to
#: 32) so that the table fits in about 10 minutes on 2 cores; ``--crop-*`` for the full ones
#: (a ViT-S step at 616 x 1064 takes over a minute on 2 cores).
DEFAULT_CONFIGS = (
    ("ViT-S", "metric3d_vit", "small", (308, 532), 1, 2, False),
    ("ConvNeXt-T", "metric3d_convnext", "tiny", (288, 608), 1, 2, False),
    ("ViT-L", "metric3d_vit", "large", (308, 532), 1, 1, False),
    ("ViT-L", "metric3d_vit", "large", (308, 532), 1, 1, True),
)
QUICK_CONFIGS = (("ViT-tiny (test size)", "metric3d_vit", "tiny", (56, 84), 1, 2, False),)


def run_config(values: dict) -> dict:
    """Time ``values["steps"]`` training steps of one configuration (in this process)."""
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(values["threads"])
    from metricdepth.train import arch
    from metricdepth.train.config import config_from_dict
    from metricdepth.train.loop import build_dataset, build_network
    from metricdepth.train.optim import make_optimizer
    from metricdepth.train.step import accumulate_gradients, split_batch

    height, width = values["crop"]
    raw = {
        "name": "train-speed",
        "arch": values["arch"],
        "model_kwargs": {"size": values["size"]},
        "variant": "label",
        "input_hw": [height, width],
        "infer_hw": [height, width],
        "batch_size": values["batch"],
        "steps": 10,
        "warmup_steps": 1,
        "lr": 1e-4,
        "precision": values["precision"],
        "activation_checkpointing": values["checkpointing"],
        "losses": values["losses"],
        "threads": values["threads"],
        "device": "cpu",
        "datasets": [
            {
                "kind": "synthetic",
                "seed": 3,
                "num_scenes": values["batch"],
                "synth": {
                    "height": height,
                    "width": width,
                    "sizes": [[height, width]],
                    "focal_range": [0.6 * width, 1.5 * width],
                    "focal_follows_size": True,
                },
            }
        ],
    }
    config = config_from_dict(raw, source="train_speed")
    torch.manual_seed(0)
    net = build_network(config)
    arch.apply_freeze(net, config.arch, config.freeze)
    arch.set_activation_checkpointing(net, config.activation_checkpointing)
    optimizer = make_optimizer(net, config)
    dataset = build_dataset(config)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(config.batch_size)])
    device = torch.device("cpu")
    trainable = [p for p in net.parameters() if p.requires_grad]
    rss_before_kb = _current_rss_kb()
    net.train()
    times, losses = [], []
    for _ in range(values["steps"]):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        terms = accumulate_gradients(net, split_batch(batch, config.batch_size), config, device)
        if not times:  # before the first optimiser step allocates the AdamW state
            fwd_bwd_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        times.append(time.perf_counter() - started)
        losses.append(float(terms["total"]))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steady = times[1:] or times
    step_s = float(np.median(steady))
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "first_step_s": times[0],
        "step_s": step_s,
        "images_per_s": config.batch_size / step_s,
        "timed_steps": len(steady),
        "rss_before_mb": rss_before_kb / 1024,
        "peak_fwd_bwd_mb": fwd_bwd_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "losses": losses,
        "finite": bool(np.all(np.isfinite(losses))),
    }


def _current_rss_kb() -> int:
    """Resident set size of this process now (Linux ``/proc``; else the peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def machine_info() -> dict:
    """CPU model (lscpu), core count, torch version, load average, date."""
    import torch

    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                cpu = value.strip()
            if key.strip() == "Flags":
                flags = value
    except (OSError, subprocess.CalledProcessError):
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {
        "cpu": cpu,
        "cpu_flags": [f for f in wanted if f in flags.split()],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": list(os.getloadavg()),
    }


def launch(values: dict, timeout_s: float) -> dict:
    """Run one configuration in a fresh subprocess; its result, or why there is none."""
    env = dict(os.environ, OMP_NUM_THREADS=str(values["threads"]))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(values)]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:200]}", "wall_s": wall}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | crop (H x W) | batch | precision | act. ckpt | params (M) | step 1 (s) "
        "| s/step | images/s | RSS before (MB) | peak after fwd+bwd 1 (MB) | peak RSS (MB) "
        "| step peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, r = row["config"], row["result"]
        head = (
            f"| {c['label']} | {c['crop'][0]} x {c['crop'][1]} | {c['batch']} | "
            f"{c['precision']} | {'yes' if c['checkpointing'] else 'no'} |"
        )
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | | |")
            continue
        steady = f"{r['step_s']:.2f}" + ("" if r["timed_steps"] > 1 or c["steps"] > 1 else "*")
        lines.append(
            f"{head} {r['parameters'] / 1e6:.1f} | {r['first_step_s']:.2f} | {steady} | "
            f"{r['images_per_s']:.3f} | {r['rss_before_mb']:.0f} | {r['peak_fwd_bwd_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny ViT, 2 steps")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps of ViT-S and ConvNeXt-T (default 2)"
    )
    parser.add_argument("--steps-l", type=int, default=1, help="steps of ViT-L (default 1)")
    parser.add_argument(
        "--models", nargs="+", default=None, help="only these labels (ViT-S ConvNeXt-T ViT-L)"
    )
    parser.add_argument("--crop-s", type=int, nargs=2, default=None, help="ViT-S crop H W")
    parser.add_argument("--crop-convnext", type=int, nargs=2, default=None, help="ConvNeXt-T crop")
    parser.add_argument("--crop-l", type=int, nargs=2, default=None, help="ViT-L crop H W")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--losses", default='{"gru_sequence": 1.0}', help="config.losses, JSON")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per configuration")
    parser.add_argument("--out", type=Path, default=None, help="write the results as Markdown")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_config(json.loads(args.worker))))
        return 0

    crops = {"ViT-S": args.crop_s, "ConvNeXt-T": args.crop_convnext, "ViT-L": args.crop_l}
    configs = QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS
    runs = []
    for label, arch_name, size, crop, batch, steps, checkpointing in configs:
        if args.models and label not in args.models:
            continue
        for precision in args.precisions:
            runs.append(
                {
                    "label": label,
                    "arch": arch_name,
                    "size": size,
                    "crop": list(crops.get(label) or crop),
                    "batch": batch,
                    "steps": args.steps_l if label == "ViT-L" else (args.steps or steps),
                    "checkpointing": checkpointing,
                    "precision": precision,
                    "threads": args.threads,
                    "losses": json.loads(args.losses),
                }
            )
    info = machine_info()
    print(
        f"{info['cpu']} ({info['cores']} cores, {', '.join(info['cpu_flags'])}), torch "
        f"{info['torch']}, {info['date_utc']}, load average {info['load_average']}",
        flush=True,
    )
    started = time.perf_counter()
    rows = []
    for values in runs:
        load = os.getloadavg()[0]
        result = launch(values, args.timeout)
        rows.append({"config": values, "result": result, "load_1min_before": load})
        print("\n".join(table([rows[-1]])[2:]), flush=True)
    info["load_average_end"] = list(os.getloadavg())
    info["wall_s"] = time.perf_counter() - started
    command = "python benchmarks/train_speed.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    lines = [
        "# Training throughput and peak memory (CPU)",
        "",
        f"`{command}`",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores ({', '.join(info['cpu_flags'])}); "
        f"{args.threads} torch threads; torch {info['torch']}, Python {info['python']}",
        f"- date: {info['date_utc']}; load average (1, 5, 15 min) at start "
        f"{', '.join(f'{v:.2f}' for v in info['load_average'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in info['load_average_end'])}; "
        f"wall {info['wall_s']:.0f} s",
        f"- losses: `{args.losses}` (config.losses); random initialisation; one synthetic "
        "batch rendered at the crop, reused every step",
        "- one step = `train.step.accumulate_gradients` (forward, float32 objective, backward) + "
        "gradient clipping + AdamW step; `s/step` is the median of steps 2.. (`*`: one step "
        "only, step 1, which includes allocating the optimiser state)",
        "- peak RSS: `ru_maxrss` of a fresh process per row; step peak = peak RSS - RSS before "
        "the first step (network, optimiser, batch built); peak after fwd+bwd 1: `ru_maxrss` "
        "after the first backward pass, before the first optimiser step allocates AdamW's "
        "moments (the activation peak, where checkpointing shows)",
        "",
        *table(rows),
    ]
    print("\n".join(lines[-len(rows) - 2 :]))
    if args.out is not None:
        from metricdepth.io import atomic_write

        with atomic_write(args.out) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    if args.json is not None:
        from metricdepth.io import atomic_write

        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    failed = [r for r in rows if "error" in r["result"] and "timed out" not in r["result"]["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
