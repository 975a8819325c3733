"""``python -m metricdepth.train CONFIG.yaml [--out-dir DIR] [--no-resume]``.

Trains one run (``metricdepth.train.loop.run_training``) and prints its folder. Works as the
script of ``torchrun``, e.g. ``torchrun --standalone --nproc_per_node=2 -m metricdepth.train
CONFIG.yaml`` (one process per GPU, or per CPU share with the gloo backend).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metricdepth.train", description=__doc__)
    parser.add_argument("config", help="training config (YAML)")
    parser.add_argument("--out-dir", default=None, help="parent folder of runs (overrides config)")
    parser.add_argument(
        "--no-resume", action="store_true", help="refuse to continue an existing run"
    )
    args = parser.parse_args(argv)
    from metricdepth.train.loop import run_training

    try:
        run_dir = run_training(args.config, out_dir=args.out_dir, resume=not args.no_resume)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
