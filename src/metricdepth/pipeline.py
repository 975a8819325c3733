"""Prediction: image + camera -> canonical space -> network -> metric depth -> points.

The two names of the Python API live here: ``load_model(name_or_path)`` (the bundled default,
a registered name, or a ``.safetensors``/``.pth``/``.onnx`` file, as the command line takes)
and ``predict(model, image, camera)``, which decodes the image, settles its camera and runs
the ``metricdepth.predictor.Predictor`` of the model (its ``CanonicalSpace``, the network,
``from_canonical`` and the clamp); it returns a frozen ``Prediction`` at the original
resolution that records the camera used and where it came from.
Both are exported from the package: ``metricdepth.load_model`` and ``metricdepth.predict``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metricdepth.camera import CAMERA_SOURCES, Camera
from metricdepth.cameras import (  # noqa: F401 (the camera policy; these re-exported here)
    ASSUMED_FOCAL_TOLERANCE,
    CameraMismatchWarning,
    assumed_focal_mismatch,
)
from metricdepth.canonical import CanonicalRecord
from metricdepth.distortion import Distortion
from metricdepth.prediction import Prediction, check_image
from metricdepth.predictor import Backend, Predictor


def load_model(
    name_or_path: str | Path | None = None,
    *,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
):
    """A model for ``predict``: ``models.registry.load_model``, optionally ``runtime.optimize``d.

    Args:
        name_or_path: None for the bundled default (``metricdepth-small``, no download), a
            name from ``metricdepth models``, a metricdepth ``.safetensors`` file, an official
            Metric3D ``.pth`` (architecture detected) or an exported ``.onnx`` file (run by
            ONNX Runtime on the CPU).
        weights: the checkpoint of a registered official name.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ...; a device this machine lacks
            is a ValueError.
        precision: None (the reference-faithful model), ``"fp32"`` (optimised, same results
            within 1e-4) or ``"bf16"`` (bfloat16 autocast); see ``metricdepth.runtime``.
    """
    from metricdepth.models.registry import load_model as load_registered
    from metricdepth.runtime import PRECISIONS, load_onnx, optimize

    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if str(name_or_path or "").endswith(".onnx"):
        if weights is not None or precision is not None or str(device or "cpu") != "cpu":
            raise ValueError("an .onnx model takes no weights, device or precision (CPU only)")
        return load_onnx(name_or_path)
    model = load_registered(name_or_path, weights=weights, device=device)
    return model if precision is None else optimize(model, precision)


CameraLike = Camera | Sequence[float] | float | None


def as_camera(camera: CameraLike, width: int, height: int) -> Camera | None:
    """A ``Camera`` of a ``width`` x ``height`` image from a ``Camera``, intrinsics
    ``(fx, fy, cx, cy)`` or a focal length in pixels (principal point at the centre)."""
    if camera is None or isinstance(camera, Camera):
        return camera
    from metricdepth.cameras import resolve_camera

    if isinstance(camera, (int, float, np.number)) and not isinstance(camera, bool):
        return resolve_camera((width, height), focal=float(camera))[0]
    if isinstance(camera, (str, bytes)) or not isinstance(camera, (Sequence, np.ndarray)):
        raise TypeError(
            "camera must be a Camera, intrinsics (fx, fy, cx, cy), a focal length in pixels or "
            f"None, got {type(camera).__name__}"
        )
    return resolve_camera((width, height), intrinsics=[float(v) for v in camera])[0]


def _image_and_camera(
    image: Any, camera: CameraLike, source: str | None
) -> tuple[np.ndarray, Camera, str]:
    """Decode ``image`` (path, PIL image or array) and settle its camera and camera source:
    the camera given, else the EXIF focal (path or PIL image), else the stated default.
    A path and a PIL image of the same file are decoded and resolved by the same code."""
    from PIL import Image

    from metricdepth.cameras import resolve_camera
    from metricdepth.io import read_image, rgb_from_pil

    if isinstance(image, (str, Path, Image.Image)):
        given = image
        # as displayed (EXIF orientation applied)
        image, _ = rgb_from_pil(image) if isinstance(image, Image.Image) else read_image(image)
        camera = as_camera(camera, image.shape[1], image.shape[0])
        if camera is None:  # the EXIF focal, else the announced default
            camera, source, _ = resolve_camera(given)
    image = check_image(image)
    height, width = image.shape[:2]
    camera = as_camera(camera, width, height)
    if camera is None:
        camera, source, _ = resolve_camera((width, height))  # the stated default camera
    source = source or "given"
    if source not in CAMERA_SOURCES:
        known = ", ".join(CAMERA_SOURCES)
        raise ValueError(f"camera_source must be one of {known}, got {source!r}")
    if camera.size != (width, height):
        raise ValueError(
            f"image is {width}x{height} but its camera is for {camera.width}x{camera.height}"
        )
    return image, camera, source


def predict(
    model: Backend | Predictor,
    image: np.ndarray | str | Path | Any,
    camera: CameraLike = None,
    *,
    camera_source: str | None = None,
    focal_mode: str | None = None,
    distortion: Distortion | None = None,
    alpha: float | None = None,
) -> Prediction:
    """Metric depth for one image.

    Args:
        model: from ``load_model``.
        image: (H, W, 3) RGB uint8, a path or a PIL image (EXIF orientation applied to both).
        camera: the camera of the image as displayed: a ``Camera``, intrinsics
            ``(fx, fy, cx, cy)`` in pixels, or a focal length in pixels (principal point at the
            centre); None takes the EXIF focal of a path or PIL image (``camera_source=
            "exif"``), else assumes the default camera (``DEFAULT_FOV_X_DEG`` horizontal field
            of view) and records ``camera_source="default"``.
        camera_source: where ``camera`` came from (default ``"given"``).
        focal_mode: ``"mean"`` or ``"fx"``; default: the model's.
        distortion: the lens of ``camera`` (``metricdepth.distortion``): the image is
            undistorted to a pinhole image, predicted there, and every output mapped back onto
            the original pixel grid (``Prediction.lens`` records how).
        alpha: how much of a distorted photo the pinhole image keeps (0..1; default
            ``metricdepth.distortion.DEFAULT_ALPHA`` of the lens model).
    """
    return _run(model, [image], [camera], [camera_source], focal_mode, distortion, alpha)[0]


def predict_batch(
    model: Backend | Predictor,
    images: Sequence[np.ndarray | str | Path],
    cameras: Sequence[Camera | None] | None = None,
    *,
    camera_sources: Sequence[str | None] | None = None,
    focal_mode: str | None = None,
    distortion: Distortion | None = None,
    alpha: float | None = None,
) -> list[Prediction]:
    """Metric depth for several images of any sizes; images sharing a canvas run as one batch.

    ``images``, ``cameras`` (each as ``predict``'s ``camera``), ``distortion`` (one lens for
    every image) and ``alpha``: as ``predict``. An ONNX model (``load_model("x.onnx")``) runs
    each image through its exported graph (no ``distortion``).
    """
    n = len(images)
    cameras = list(cameras) if cameras is not None else [None] * n
    sources = list(camera_sources) if camera_sources is not None else [None] * n
    if len(cameras) != n or len(sources) != n:
        raise ValueError(f"{n} images but {len(cameras)} cameras and {len(sources)} sources")
    return _run(model, images, cameras, sources, focal_mode, distortion, alpha)


def _warn_mismatch(spec, record: CanonicalRecord) -> None:
    """``CameraMismatchWarning`` when ``record``'s focal does not fit ``spec``'s assumed one;
    attributed to the caller of ``predict``/``predict_batch`` (which call ``_run``, this)."""
    if (mismatch := assumed_focal_mismatch(spec, record.focal_px)) is not None:
        warnings.warn(mismatch, CameraMismatchWarning, stacklevel=4)


def _run(model, images, cameras, sources, focal_mode, distortion, alpha) -> list[Prediction]:
    """``predict_batch`` on checked, equally long lists: decode, then the ``Predictor``'s three
    stages (images sharing an input size run as one batch)."""
    predictor = model if isinstance(model, Predictor) else Predictor(model, focal_mode)
    if focal_mode is not None and focal_mode != predictor.focal_mode:
        predictor = Predictor(predictor.backend, focal_mode)
    prepared = []
    for image, camera, source in zip(images, cameras, sources, strict=True):
        started = time.perf_counter()
        image, camera, source = _image_and_camera(image, camera, source)
        decoded = time.perf_counter() - started
        item = predictor.prepare(image, camera, source, distortion=distortion, alpha=alpha)
        _warn_mismatch(predictor.spec, item.record)
        prepared.append(replace(item, pre_s=item.pre_s + decoded))  # decoding is pre-processing
    return predictor.predict_prepared(prepared)
