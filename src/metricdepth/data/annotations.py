"""Metric3D's annotation JSON: a list of images with optional depth and intrinsics.

Format (``data/*/test_annotations.json`` in Metric3D)::

    {"files": [{"rgb": "rgb/0001.png", "depth": "depth/0001.png", "depth_scale": 256.0,
                "cam_in": [fx, fy, cx, cy]}, ...]}

``rgb`` is required; ``depth`` needs ``depth_scale`` (stored value / depth_scale = metres);
``cam_in`` (pixels of the rgb image as displayed, EXIF orientation applied; checked by
``cameras.annotation_camera``) is optional. Optional labels for training: ``sky_mask`` (an 8- or
16-bit image, nonzero = sky), or Metric3D's ``sem`` (a
grey semantic-label image, 142 = sky, 255 = no label; not both), and ``normal`` (a ``.npy``
(H, W, 3) float array of camera-frame normals, x right, y down, z forward, zero = none).
Other keys are ignored. Paths are relative to a root: the JSON's folder by default, or
``root`` (Metric3D's own files are relative to its repository root).

A path may not leave its root: absolute paths and ``..`` segments that climb above the root are
refused. The check is lexical (``os.path.normpath``), so symlinks *inside* the root that point
elsewhere (the usual way datasets are linked into a data folder) are allowed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from metricdepth.camera import Camera
from metricdepth.cameras import parse_cam_in
from metricdepth.frame import SKY_ID
from metricdepth.io import atomic_write

#: Optional per-file label keys (see the module docstring).
LABEL_KEYS: tuple[str, ...] = ("sky_mask", "sem", "normal")


@dataclass(frozen=True)
class AnnotationEntry:
    """One image of an annotation file.

    ``rgb``/``depth`` (and the optional ``sky_mask``, ``sem``, ``normal`` label files):
    absolute, normalised paths. ``depth_scale``: stored depth units per metre.
    ``intrinsics``: ``(fx, fy, cx, cy)`` in pixels of the image as displayed (EXIF orientation
    applied, as OpenCV and Metric3D read it). ``key``: the rgb path
    relative to the root, POSIX separators, extension dropped (``"rgb/0001"``); outputs are
    named by it and it is unique within a file.
    """

    rgb: Path
    depth: Path | None
    depth_scale: float | None
    intrinsics: tuple[float, float, float, float] | None
    key: str
    sky_mask: Path | None = None
    sem: Path | None = None
    normal: Path | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _inside(root: Path, value: Any, where: str) -> tuple[Path, str]:
    """``(absolute path, relative POSIX path)`` of ``value`` under ``root``, or ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty path string, got {value!r}")
    if os.path.isabs(value) or value.startswith(("/", "\\")):
        raise ValueError(f"{where} {value!r} is absolute; paths must be relative to the root")
    relative = os.path.normpath(value)
    parts = Path(relative).parts
    if relative == "." or parts[0] == "..":
        raise ValueError(f"{where} {value!r} is not a file inside the root {root}")
    return root / relative, Path(relative).as_posix()


def _parse(data: Any, root: Path, source: str) -> list[AnnotationEntry]:
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ValueError(f"{source}: expected an object with a 'files' list")
    entries: list[AnnotationEntry] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(data["files"]):
        where = f"{source}: entry {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object, got {type(item).__name__}")
        if "rgb" not in item:
            raise ValueError(f"{where}: missing 'rgb'")
        rgb, rgb_rel = _inside(root, item["rgb"], f"{where}: 'rgb'")
        depth = None
        if item.get("depth") is not None:
            depth, _ = _inside(root, item["depth"], f"{where}: 'depth'")
        scale = item.get("depth_scale")
        if scale is not None and not (_is_number(scale) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"{where}: 'depth_scale' must be a number > 0, got {scale!r}")
        if depth is not None and scale is None:
            raise ValueError(f"{where}: 'depth' is given without 'depth_scale'")
        intrinsics = item.get("cam_in")
        if intrinsics is not None:
            intrinsics = parse_cam_in(intrinsics, where)
        labels: dict[str, Path] = {}
        for name in LABEL_KEYS:
            if item.get(name) is not None:
                labels[name], _ = _inside(root, item[name], f"{where}: {name!r}")
        if "sky_mask" in labels and "sem" in labels:
            raise ValueError(f"{where}: give 'sky_mask' or 'sem', not both")
        if "normal" in labels and labels["normal"].suffix.lower() != ".npy":
            raise ValueError(
                f"{where}: 'normal' must be a .npy (H, W, 3) float array, got {item['normal']!r}"
            )
        key = PurePosixPath(rgb_rel).with_suffix("").as_posix()
        if key in seen:
            raise ValueError(
                f"{where}: 'rgb' {item['rgb']!r} duplicates entry {seen[key]} (same key {key!r})"
            )
        seen[key] = index
        entries.append(
            AnnotationEntry(
                rgb, depth, None if scale is None else float(scale), intrinsics, key, **labels
            )
        )
    return entries


def _root(root: str | os.PathLike) -> Path:
    return Path(os.path.normpath(Path(root).absolute()))


def read_annotations(
    json_path: str | os.PathLike, root: str | os.PathLike | None = None
) -> list[AnnotationEntry]:
    """Read and validate an annotation file; paths are relative to ``root`` (default: its folder).

    Every problem (unreadable or invalid JSON, missing ``files`` or ``rgb``, wrong types, a path
    leaving the root, duplicate rgb keys) raises ValueError naming the entry index and key.
    Files are not checked for existence.
    """
    json_path = Path(json_path)
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{json_path}: cannot read ({type(exc).__name__}: {exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path}: invalid JSON ({exc})") from None
    return _parse(data, _root(json_path.parent if root is None else root), str(json_path))


def camera_for(entry: AnnotationEntry, width: int, height: int) -> Camera:
    """The camera of ``entry``'s image of ``width x height`` pixels as displayed, from
    ``cam_in``, with the checks ``predict`` and eval make (``cameras.annotation_camera``)."""
    from metricdepth.cameras import annotation_camera

    if entry.intrinsics is None:
        raise ValueError(f"annotation {entry.key!r} has no 'cam_in' intrinsics")
    return annotation_camera(entry.intrinsics, width, height)


def read_sem(entry: AnnotationEntry) -> np.ndarray | None:
    """``entry``'s semantic labels, (H, W) int32: 142 = sky, -1 = no label; None if it has none.

    ``sky_mask``: nonzero (in any colour channel; alpha ignored) -> 142, else 0. ``sem``:
    Metric3D's grey label image as stored, with 255 -> -1 (its "no label").
    """
    path = entry.sky_mask or entry.sem
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            bands = image.getbands()
            stored = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the label image ({type(exc).__name__})") from None
    if entry.sem is not None:
        if stored.ndim != 2 or stored.dtype.kind not in "iub":
            raise ValueError(f"{path}: 'sem' must be a grey integer image, got {bands}")
        sem = stored.astype(np.int32)
        sem[sem == 255] = -1
        return sem
    if stored.ndim == 3:
        stored = stored[..., [i for i, band in enumerate(bands) if band != "A"]]
        stored = stored.any(axis=2)
    return np.where(stored != 0, np.int32(SKY_ID), np.int32(0))


def read_normal(entry: AnnotationEntry) -> np.ndarray | None:
    """``entry``'s normals, (H, W, 3) float32 as stored (``Frame`` normalises them), or None."""
    if entry.normal is None:
        return None
    try:
        normal = np.load(entry.normal, allow_pickle=False)
    except Exception as exc:  # numpy raises many types for a bad file
        raise ValueError(f"{entry.normal}: cannot read normals ({type(exc).__name__})") from None
    if normal.ndim != 3 or normal.shape[2] != 3 or normal.dtype.kind != "f":
        raise ValueError(
            f"{entry.normal}: normals must be an (H, W, 3) float array, "
            f"got {normal.dtype} {normal.shape}"
        )
    return normal.astype(np.float32)


def write_annotations(
    path: str | os.PathLike, entries: Iterable[AnnotationEntry], root: str | os.PathLike
) -> None:
    """Write ``entries`` as an annotation file (atomically), paths relative to ``root``.

    Every path must lie inside ``root`` and the result must pass ``read_annotations``' checks
    (the ``key`` field is not stored: it is derived from ``rgb`` when read).
    """
    root_dir = _root(root)
    files = []
    for index, entry in enumerate(entries):
        item: dict[str, Any] = {}
        if entry.intrinsics is not None:
            item["cam_in"] = [float(v) for v in entry.intrinsics]
        for name in ("rgb", "depth", *LABEL_KEYS):
            value = getattr(entry, name)
            if value is None:
                continue
            try:
                item[name] = _root(value).relative_to(root_dir).as_posix()
            except ValueError:
                raise ValueError(
                    f"{path}: entry {index}: '{name}' {value} is not inside {root_dir}"
                ) from None
        if entry.depth_scale is not None:
            item["depth_scale"] = entry.depth_scale
        files.append(item)
    data = {"files": files}
    _parse(data, root_dir, str(path))
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
