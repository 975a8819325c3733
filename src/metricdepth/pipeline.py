"""Prediction: image + camera -> canonical space -> network -> metric depth -> points.

The two names of the Python API live here: ``load_model(name_or_path)`` (the bundled default,
a registered name, or a ``.safetensors``/``.pth``/``.onnx`` file, as the command line takes)
and ``predict(model, image, camera)``, which runs the model's own pre-processing (its
``CanonicalSpace``), the network, and ``from_canonical``; it returns a frozen ``Prediction``
at the original resolution that records the camera used and where it came from.
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
import torch.nn.functional as F

from metricdepth.camera import CAMERA_SOURCES, Camera
from metricdepth.cameras import (  # noqa: F401 (the camera policy; these re-exported here)
    ASSUMED_FOCAL_TOLERANCE,
    CameraMismatchWarning,
    assumed_focal_mismatch,
)
from metricdepth.canonical import (
    CanonicalRecord,
    CanonicalSpace,
    from_canonical,
    inference_record,
    normalize,
    to_canonical,
    unpad,
)
from metricdepth.distortion import Distortion, PinholeView
from metricdepth.frame import Frame
from metricdepth.models.registry import DepthModel
from metricdepth.prediction import Prediction, check_image, timings_ms


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
    model: DepthModel,
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
    model: DepthModel,
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
    """``predict_batch`` on checked, equally long lists."""
    n, spec = len(images), model.spec
    mode = focal_mode or spec.focal_mode
    if getattr(model, "needs_image", False):  # an exported graph: image + focal in, metres out
        if distortion is not None:
            raise ValueError("distortion needs a PyTorch model (ONNX graphs are pinhole)")
        predictions = []
        for image, camera, source in zip(images, cameras, sources, strict=True):
            prediction = model.predict(*_image_and_camera(image, camera, source), focal_mode=mode)
            _warn_mismatch(spec, prediction.record)
            predictions.append(prediction)
        return predictions
    started = time.perf_counter()
    items = []
    for image, camera, source in zip(images, cameras, sources, strict=True):
        image, camera, source = _image_and_camera(image, camera, source)
        canvas, record, lens = prepare(image, camera, spec.space, mode, distortion, alpha)
        _warn_mismatch(spec, record)
        items.append((camera, source, record, normalize(canvas, spec.space), lens))
    preprocess = (time.perf_counter() - started) / max(n, 1)

    results: list[Prediction | None] = [None] * n
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (_, _, record, _, _) in enumerate(items):
        groups.setdefault(record.input_hw, []).append(index)
    device = model.device
    for indices in groups.values():
        x = torch.cat([items[i][3] for i in indices]).to(device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model(x)
        forward = (time.perf_counter() - started) / len(indices)
        for row, index in enumerate(indices):
            started = time.perf_counter()
            camera, source, record, _, lens = items[index]
            prediction = postprocess(out, row, camera, source, record, model, lens)
            post = time.perf_counter() - started
            results[index] = replace(prediction, timings_ms=timings_ms(preprocess, forward, post))
    return results  # type: ignore[return-value]


def prepare(
    image: np.ndarray,
    camera: Camera,
    space: CanonicalSpace,
    focal_mode: str,
    distortion: Distortion | None = None,
    alpha: float | None = None,
) -> tuple[np.ndarray, CanonicalRecord, PinholeView | None]:
    """The network's canvas of one decoded image: ``(canvas, record, lens)``.

    ``image`` (H, W, 3) uint8 of ``camera``; with ``distortion`` it is first undistorted
    (``lens``: the ``PinholeView``, else None) and the pinhole camera is the one the network
    sees. ``canvas`` is the (H_in, W_in, 3) uint8 canonical canvas (``to_canonical``, padded
    with ``space.pad_rgb``), ``record`` its ``inference_record``; ``normalize`` makes the
    network input. ``predict`` and ``outputs.PredictionInputs`` both prepare through here.
    """
    seen, lens = undistorted(image, camera, distortion, alpha, space.pad_rgb)
    net_camera = camera if lens is None else lens.pinhole  # the camera the network sees
    record = inference_record(net_camera, space, focal_mode)
    canvas = to_canonical(Frame(seen, net_camera), record, pad_rgb=space.pad_rgb)
    return canvas.image, record, lens


def undistorted(
    image: np.ndarray,
    camera: Camera,
    distortion: Distortion | None,
    alpha: float | None = None,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, PinholeView | None]:
    """``(pinhole image, PinholeView)`` of a distorted image; ``(image, None)`` without a lens."""
    if distortion is None:
        return image, None
    from metricdepth.distortion import pinhole_view, undistort_image

    lens = pinhole_view(camera, distortion, alpha)
    return undistort_image(image, lens, fill), lens


def postprocess(
    out, row, camera, source, record, model: DepthModel, lens: PinholeView | None = None
) -> Prediction:
    """Network output row ``row`` -> a ``Prediction`` at the original resolution.

    With ``lens`` the network saw ``lens.pinhole``; the maps are moved back onto the grid of
    the distorted ``camera`` (``metricdepth.distortion.to_original``).
    """
    if lens is not None:
        return _on_original_grid(
            postprocess(out, row, lens.pinhole, source, record, model), camera, lens
        )
    spec = model.spec
    depth_m = from_canonical(out["depth_c"][row, 0].float().cpu(), record)
    if spec.max_depth_m is not None:
        depth_m.clamp_(0, spec.max_depth_m)  # a fresh tensor of from_canonical
    confidence = normal = None
    size = (camera.height, camera.width)
    if "confidence" in spec.outputs and "confidence" in out:
        conf = unpad(out["confidence"][row : row + 1].float().cpu(), record)
        confidence = F.interpolate(conf, size=size, mode="bilinear", align_corners=False)[0, 0]
        confidence = confidence.numpy()
    if "normal" in spec.outputs and "normal" in out:
        nrm = unpad(out["normal"][row : row + 1, :3].float().cpu(), record)
        nrm = F.interpolate(nrm, size=size, mode="bilinear", align_corners=False)[0]
        nrm = nrm / nrm.norm(dim=0, keepdim=True).clamp_min(1e-12)  # unit again after resizing
        normal = nrm.permute(1, 2, 0).contiguous().numpy()
    return Prediction(
        depth_m=depth_m.numpy(),
        camera=camera,
        camera_source=source,
        record=record,
        model=spec.name,
        confidence=confidence,
        normal=normal,
    )


def _on_original_grid(prediction: Prediction, camera: Camera, lens: PinholeView) -> Prediction:
    """A prediction on ``lens.pinhole``'s grid -> the same on the distorted ``camera``'s grid.

    z-depth is the same along a ray and both cameras share their axes, so values are sampled,
    not changed; normals are re-normalised after the blend. Invalid pixels: depth 0, normal 0.
    """
    from metricdepth.distortion import to_original

    # only pinhole pixels that see the photo count: the padding around it has a prediction
    # too, which must not be blended into the pixels along the photo's rim
    seen = (lens.source_xy[..., 0] >= 0) & (prediction.depth_m > 0)
    depth_m, valid = to_original(prediction.depth_m, lens, valid=seen)
    confidence = normal = None
    if prediction.confidence is not None:
        confidence, _ = to_original(prediction.confidence, lens, valid=seen)
    if prediction.normal is not None:
        normal, _ = to_original(prediction.normal, lens, valid=seen)
        norm = np.linalg.norm(normal, axis=-1, keepdims=True)
        normal = np.where(norm > 0, normal / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    return replace(
        prediction,
        depth_m=np.where(valid, depth_m, 0.0).astype(np.float32),
        camera=camera,
        confidence=confidence,
        normal=normal,
        lens=lens,
    )
