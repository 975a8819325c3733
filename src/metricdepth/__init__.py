"""metricdepth: metric depth from one photo of any camera (Metric3D's canonical camera space).

The public API is importable from here; modules that need torch load on first use, so
``import metricdepth`` (and the command line's ``--help``) stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from metricdepth.camera import Camera

__version__ = "0.1.0"

_LAZY = {
    "load_model": "metricdepth.pipeline",
    "predict": "metricdepth.pipeline",
    "Prediction": "metricdepth.pipeline",
    "Predictor": "metricdepth.predictor",
    "Frame": "metricdepth.frame",
    "CanonicalSpace": "metricdepth.canonical",
    "CanonicalRecord": "metricdepth.canonical",
    "inference_record": "metricdepth.canonical",
    "training_record": "metricdepth.canonical",
    "to_canonical": "metricdepth.canonical",
    "from_canonical": "metricdepth.canonical",
    "prepare_input": "metricdepth.canonical",
    "depth_to_points": "metricdepth.geometry",
    "points_to_depth": "metricdepth.geometry",
    "normals_from_depth": "metricdepth.geometry",
    "pixel_distance": "metricdepth.geometry",
    "Distortion": "metricdepth.distortion",
    "load_image": "metricdepth.io",
    "read_depth": "metricdepth.io",
    "write_depth": "metricdepth.io",
    "write_ply": "metricdepth.io",
    "read_annotations": "metricdepth.data.annotations",
}

__all__ = ["Camera", "__version__", "example_image", *_LAZY]


def example_image() -> Path:
    """The bundled example photo: NYU Depth v2, 640x480, taken with fx 518.8579, fy 519.46961,
    cx 325.58245, cy 253.73617 px (its published calibration)."""
    return Path(__file__).resolve().parent / "assets" / "example_nyu.jpg"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metricdepth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
