"""Depth on strongly distorted synthetic photos: lens given, lens ignored, pinhole ceiling.

    python benchmarks/distortion_eval.py [--scenes 12] [--size 96x128] [--model metricdepth-small]

Each scene of ``metricdepth.data.synthetic`` is rendered twice: along the rays of a distorted
lens (``render_view(..., rays_xy=pixel_rays(camera, lens))``, exact depth per distorted pixel)
and with the pinhole camera the pipeline computes (``pinhole_view``). It prints AbsRel (mean
over scenes of the per-image mean of ``|d - d*| / d*`` over pixels valid in both) of:

* lens given: ``predict(model, photo, camera, distortion=lens)`` (undistort, predict, map back);
* lens ignored: ``predict(model, photo, camera)`` (the distorted photo taken as pinhole);
* pinhole ceiling: the model on the pinhole render itself (what undistortion can reach);
* oracle: the true pinhole depth mapped back by ``to_original`` (median relative error), the
  model-free error of the mapping itself.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

LENSES = {
    "opencv k1,k2,p1,p2,k3 = -0.32,0.09,0.001,-0.0015,-0.01": (
        ("opencv", (-0.32, 0.09, 0.001, -0.0015, -0.01)), (90.0, 150.0)
    ),
    "fisheye k1..k4 = 0.02,-0.01,0.003,-0.001": (
        ("fisheye", (0.02, -0.01, 0.003, -0.001)), (60.0, 110.0)
    ),
}  # fmt: skip


def abs_rel(prediction: np.ndarray, truth: np.ndarray) -> float:
    mask = (prediction > 0) & (truth > 0)
    return float(np.mean(np.abs(prediction[mask] - truth[mask]) / truth[mask]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--size", default="96x128", help="HEIGHTxWIDTH")
    parser.add_argument("--model", default="metricdepth-small")
    args = parser.parse_args(argv)

    from metricdepth.data.synthetic import SynthConfig, render_view, sample_scene
    from metricdepth.distortion import Distortion, pinhole_view, pixel_rays, to_original
    from metricdepth.models.registry import load_model
    from metricdepth.pipeline import predict

    height, width = (int(v) for v in args.size.lower().split("x"))
    model = load_model(args.model)
    print(f"model {args.model}; {args.scenes} scenes of {height}x{width} per lens")
    print("| lens | focal px | AbsRel lens given | AbsRel lens ignored | pinhole ceiling "
          "| oracle mapping (median rel.) | photo kept | pinhole padding |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, ((kind, coeffs), focals) in LENSES.items():
        lens = Distortion(kind, coeffs)
        rows: dict[str, list[float]] = {k: [] for k in ("given", "ignored", "pin", "oracle")}
        kept, padding = [], []
        config = SynthConfig(
            height=height, width=width, sizes=((height, width),), focal_range=focals,
            aspect_jitter=0.0, principal_jitter=0.02,
        )  # fmt: skip
        for seed in range(args.scenes):
            scene, camera = sample_scene(seed, config)
            xy, _ = pixel_rays(camera, lens)
            photo, depth = render_view(scene, camera, rays_xy=xy)
            view = pinhole_view(camera, lens)
            pin_image, pin_depth = render_view(scene, view.pinhole)
            back, valid = to_original(pin_depth, view)
            mask = valid & (depth > 0)
            rows["oracle"].append(float(np.median(np.abs(back[mask] - depth[mask]) / depth[mask])))
            given = predict(model, photo, camera, distortion=lens).depth_m
            rows["given"].append(abs_rel(given, depth))
            rows["ignored"].append(abs_rel(predict(model, photo, camera).depth_m, depth))
            rows["pin"].append(abs_rel(predict(model, pin_image, view.pinhole).depth_m, pin_depth))
            kept.append(view.coverage)
            padding.append(1 - view.fill)
        mean = {k: float(np.mean(v)) for k, v in rows.items()}
        print(
            f"| {label} | {focals[0]:g}-{focals[1]:g} | {mean['given']:.3f} | "
            f"{mean['ignored']:.3f} | {mean['pin']:.3f} | {mean['oracle']:.2e} | "
            f"{np.mean(kept):.1%} | {np.mean(padding):.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
