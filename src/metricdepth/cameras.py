"""The camera policy: which camera each image gets, where it came from, and the checks on it.

Every entry point asks this module: the Python API (``predict``), the command line
(``predict``, ``measure``, ``camera``, ``canonical``), the batch runner, the web app, eval, and
training's annotation datasets. ``metricdepth.exif`` only reads what the tags say.

Sources, the first that applies wins (``camera.CAMERA_SOURCES``, recorded with every output):

1. ``"given"``: intrinsics (``"fx,fy,cx,cy"``, ``"fx,fy,cx,cy@WxH"``, ``[fx, fy, cx, cy]``,
   ``[fx, fy, cx, cy, W, H]`` or a ``Camera``) **or** a focal length in pixels with the principal
   point at the image centre; never both;
2. ``"annotation"``: an annotation file's ``cam_in`` (``[fx, fy, cx, cy]`` of the image as
   displayed);
3. ``"exif"``: the focal length the photo's EXIF tags give (``exif.camera_from_exif``);
4. ``"default"``: a ``DEFAULT_FOV_X_DEG`` horizontal field of view, centred, announced with a
   warning (its metric scale is a guess).

Checks, the same for every source of intrinsics (given or annotation, at predict, eval or
training time): ``fx`` and ``fy`` finite and > 0, ``cx`` and ``cy`` finite, and the principal
point inside the image (``[-0.5, W - 0.5] x [-0.5, H - 0.5]``): outside, the intrinsics were
written for another image size. ``fx,fy,cx,cy@WxH`` names the size they were measured on and
they are rescaled exactly (same aspect ratio only). Each problem is one ValueError line.

A model trained on one camera of unknown intrinsics (``ModelSpec.assumed_focal_px``) is metric
only for that camera's focal: ``assumed_focal_mismatch`` (per image) says when another focal is
used, ``run_camera_warning`` (before a run with one camera for every image) says it once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from metricdepth.camera import CAMERA_SOURCES, DEFAULT_FOV_X_DEG, Camera
from metricdepth.exif import (
    ORIENTATION_NAMES,
    DigitalZoomMode,
    camera_from_exif,
    camera_from_pil,
    tag_number,
)

__all__ = [
    "ASSUMED_FOCAL_TOLERANCE",
    "CAMERA_SOURCES",
    "DEFAULT_FOV_X_DEG",
    "CameraMismatchWarning",
    "CameraOptions",
    "annotation_camera",
    "assumed_camera_warning",
    "assumed_focal_mismatch",
    "camera_for_image",
    "camera_for_size",
    "camera_report",
    "centred_camera",
    "check_focal",
    "check_one_camera",
    "default_camera",
    "default_count_warning",
    "image_camera_mismatch",
    "parse_cam_in",
    "parse_intrinsics",
    "resolve_camera",
    "run_camera_warning",
]

#: ``predict`` warns when a model trained on one camera of unknown intrinsics
#: (``ModelSpec.assumed_focal_px``) is given a focal differing by more than this fraction.
ASSUMED_FOCAL_TOLERANCE = 0.05

#: What an annotation's intrinsics are called in error lines (predict, eval and training alike).
ANNOTATION_WHERE = "annotation cam_in"


class CameraMismatchWarning(UserWarning):
    """A model trained on one assumed camera was given a camera with another focal."""


# ---------------------------------------------------------------------- parsing and checks
def check_focal(value: Any, name: str = "focal") -> float:
    """A focal length in pixels (a number or its text) as a float, or one ValueError line naming
    ``name`` when it is not a finite number > 0 (the CLI's ``--focal``, the web form's ``focal``).
    """
    if isinstance(value, str):
        try:
            number: float | None = float(value)
        except ValueError:
            number = None
    else:
        number = tag_number(value)  # None unless a finite number
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number of pixels > 0, got {value!r}")
    return number


def parse_intrinsics(text: str) -> tuple[float, ...]:
    """``"fx,fy,cx,cy"`` -> four floats; ``"fx,fy,cx,cy@WxH"`` -> six (the calibrated size).

    ``fx`` and ``fy`` must be finite and > 0, ``cx`` and ``cy`` finite; anything else is one
    ValueError line quoting the text. ``@WxH`` says which image size the intrinsics were
    measured on; ``camera_for_size`` then rescales them to each image (same aspect ratio only).
    """
    body, _, size = text.partition("@")
    try:
        values = tuple(float(v) for v in body.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(
            f"intrinsics must be 4 comma-separated numbers fx,fy,cx,cy (optionally @WIDTHxHEIGHT),"
            f" got {text!r}"
        )
    if size:
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(
                f"intrinsics: the size after '@' must be WIDTHxHEIGHT in pixels, got {text!r}"
            )
        values += (float(parts[0]), float(parts[1]))
    _check_intrinsics(values, f"intrinsics {text!r}")
    return values


def parse_cam_in(value: Any, where: str) -> tuple[float, float, float, float]:
    """An annotation's ``cam_in`` (JSON) as ``(fx, fy, cx, cy)``, or one ValueError line
    starting with ``where`` (the file and entry): 4 finite numbers with ``fx, fy > 0``."""
    values = value if isinstance(value, (list, tuple)) else ()
    if not (
        len(values) == 4
        and all(_is_number(v) and math.isfinite(v) for v in values)
        and values[0] > 0
        and values[1] > 0
    ):
        raise ValueError(
            f"{where}: 'cam_in' must be [fx, fy, cx, cy], 4 finite numbers with "
            f"fx, fy > 0, got {value!r}"
        )
    fx, fy, cx, cy = (float(v) for v in values)
    return fx, fy, cx, cy


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_intrinsics(values: Sequence[float], where: str) -> None:
    for name, value in zip(("fx", "fy"), values[:2], strict=True):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{where}: {name} must be a finite number > 0, got {value!r}")
    for name, value in zip(("cx", "cy"), values[2:4], strict=True):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be finite, got {value!r}")


def _intrinsics_values(intrinsics: Sequence[float], where: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in intrinsics)
    if len(values) not in (4, 6):
        raise ValueError(
            f"{where}: expected [fx, fy, cx, cy] (+ [width, height]), got {list(values)}"
        )
    _check_intrinsics(values, where)
    return values


def check_one_camera(
    intrinsics: Any, focal: Any, names: tuple[str, str] = ("intrinsics", "focal")
) -> None:
    """ValueError ``give either intrinsics or focal, not both`` (``names``: how the caller calls
    them, e.g. ``("--intrinsics", "--focal")``) when both are given."""
    if intrinsics is not None and focal is not None:
        raise ValueError(f"give either {names[0]} or {names[1]}, not both")


@dataclass(frozen=True)
class CameraOptions:
    """One camera for every image of a run: ``intrinsics`` (4 values, or 6 with the size they
    were measured on) or ``focal_px`` (principal point centred), not both; neither lets each
    image find its own (annotation, EXIF, default). Checked on construction."""

    intrinsics: tuple[float, ...] | None = None
    focal_px: float | None = None

    def __post_init__(self) -> None:
        check_one_camera(self.intrinsics, self.focal_px)
        if self.intrinsics is not None:
            object.__setattr__(
                self, "intrinsics", _intrinsics_values(self.intrinsics, "intrinsics")
            )
        if self.focal_px is not None:
            object.__setattr__(self, "focal_px", check_focal(self.focal_px))

    @classmethod
    def parse(
        cls, intrinsics: str | Sequence[float] | None, focal: Any, *, flags: bool = False
    ) -> CameraOptions:
        """From user input: ``intrinsics`` as text (``parse_intrinsics``) or numbers, ``focal``
        as a number or text. ``flags``: error lines name ``--intrinsics``/``--focal``."""
        names = ("--intrinsics", "--focal") if flags else ("intrinsics", "focal")
        check_one_camera(intrinsics, focal, names)
        values = parse_intrinsics(intrinsics) if isinstance(intrinsics, str) else intrinsics
        return cls(values, None if focal is None else check_focal(focal, names[1]))


# ---------------------------------------------------------------------- the cameras
def camera_for_size(
    intrinsics: Sequence[float], width: int, height: int, where: str = "intrinsics"
) -> Camera:
    """The camera of a ``width x height`` image (as displayed) from user-given intrinsics.

    ``intrinsics`` is ``[fx, fy, cx, cy]`` for this image size, or ``[fx, fy, cx, cy, W, H]``
    measured on a ``W x H`` image: those are rescaled exactly (``Camera.resized``) when the
    aspect ratio agrees to within one pixel, and refused otherwise (a crop cannot be undone).
    A principal point outside the image is refused: it is the mark of intrinsics written for
    another image size. (``Camera`` itself accepts any principal point: crops make them.)
    ``where`` names the source in the one-line ValueError (e.g. ``"--intrinsics"``).
    """
    values = list(_intrinsics_values(intrinsics, where))
    if len(values) == 6 and (values[4], values[5]) != (width, height):
        cal_w, cal_h = int(values[4]), int(values[5])
        if (cal_w, cal_h) == (height, width):  # the stored size of a photo shown rotated
            raise ValueError(
                f"{where}: the intrinsics are for {cal_w}x{cal_h} pixels but the image as "
                f"displayed is {width}x{height} (turned by its EXIF orientation?); give the "
                "intrinsics of the displayed image (fx and fy, cx and cy swapped as the turn "
                "does) with its size"
            )
        if abs(cal_w * height - cal_h * width) > max(width, height, cal_w, cal_h):
            raise ValueError(
                f"{where}: the intrinsics are for {cal_w}x{cal_h} pixels but the image is "
                f"{width}x{height}, another aspect ratio (cropped?), so they cannot be rescaled"
            )
        camera = Camera(*values[:4], cal_w, cal_h).resized(width, height)
    else:
        camera = Camera(*values[:4], width, height)
    if not (-0.5 <= camera.cx <= width - 0.5 and -0.5 <= camera.cy <= height - 0.5):
        raise ValueError(
            f"{where}: principal point ({camera.cx:g}, {camera.cy:g}) lies outside the "
            f"{width}x{height} image; intrinsics for another image size? "
            "give fx,fy,cx,cy@WIDTHxHEIGHT to rescale them"
        )
    return camera


def annotation_camera(intrinsics: Sequence[float], width: int, height: int) -> Camera:
    """The camera of an annotation's ``cam_in`` for its ``width x height`` image as displayed,
    with the checks of given intrinsics (predict, eval and training read it through here)."""
    return camera_for_size(intrinsics, width, height, ANNOTATION_WHERE)


def centred_camera(focal_px: float, width: int, height: int) -> Camera:
    """``fx = fy = focal_px`` with the principal point at the centre ``((W-1)/2, (H-1)/2)``."""
    return Camera(focal_px, focal_px, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def default_camera(width: int, height: int) -> Camera:
    """The assumed camera (source ``"default"``): ``DEFAULT_FOV_X_DEG`` horizontally, centred."""
    return Camera.from_fov(DEFAULT_FOV_X_DEG, width, height)


def _given(
    width: int,
    height: int,
    intrinsics: Camera | Sequence[float] | str | None,
    focal: Any,
    annotation: Sequence[float] | None,
) -> tuple[Camera, str, str] | None:
    """``(camera, source, rule)`` from the first two sources (given, annotation), or None."""
    check_one_camera(intrinsics, focal)
    if intrinsics is not None:
        if isinstance(intrinsics, Camera):
            if intrinsics.size != (width, height):
                raise ValueError(
                    f"the given camera is for {intrinsics.width}x{intrinsics.height} pixels but "
                    f"the image is {width}x{height} as displayed"
                )
            camera = intrinsics
        else:
            values = parse_intrinsics(intrinsics) if isinstance(intrinsics, str) else intrinsics
            camera = camera_for_size(values, width, height)
        return camera, "given", "intrinsics given"
    if focal is not None:
        camera = centred_camera(check_focal(focal), width, height)
        return camera, "given", "focal given, principal point at the image centre"
    if annotation is not None:
        return annotation_camera(annotation, width, height), "annotation", "annotation cam_in"
    return None


def _size(path_or_size: Any) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in path_or_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"path_or_size must be an image path or (width, height), got {path_or_size!r}"
        ) from None
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return width, height


def _read_exif(
    image: str | os.PathLike | Image.Image, digital_zoom: DigitalZoomMode
) -> tuple[Camera | None, dict[str, Any]]:
    if isinstance(image, Image.Image):
        return camera_from_pil(image, digital_zoom=digital_zoom)
    return camera_from_exif(image, digital_zoom=digital_zoom)


def default_warning(exif_report: dict[str, Any] | None) -> tuple[str, str]:
    """``(rule, warning)`` of the default camera, saying why EXIF did not give one."""
    rule = f"default {DEFAULT_FOV_X_DEG:g} degree horizontal field of view, centred"
    rejected = exif_report.get("rejected") if exif_report else None
    why = "no usable EXIF focal length"
    if rejected:
        reasons = "; ".join(item["reason"] for item in rejected)
        rule += f"; exif rejected: {reasons}"
        why = f"the EXIF focal length was rejected ({reasons})"
    warning = (
        f"no intrinsics given and {why}; assuming a {DEFAULT_FOV_X_DEG:g} degree "
        "horizontal field of view (camera source: default)"
    )
    return rule, warning


def resolve_camera(
    path_or_size: str | os.PathLike | tuple[int, int] | Image.Image,
    *,
    intrinsics: Camera | Sequence[float] | str | None = None,
    focal: float | None = None,
    annotation: Sequence[float] | None = None,
    digital_zoom: DigitalZoomMode = "auto",
) -> tuple[Camera, str, dict[str, Any]]:
    """The camera of an image as displayed, where it came from, and a report.

    ``path_or_size`` is an image file, an open PIL image (its EXIF is read as a file's) or
    the displayed ``(width, height)`` (then EXIF cannot be consulted). Order (module
    docstring): ``intrinsics`` (``[fx, fy, cx, cy]``, ``"fx,fy,cx,cy"`` or a ``Camera`` of the
    displayed size) or ``focal`` in pixels -> ``"given"``; ``annotation`` (``cam_in``) ->
    ``"annotation"``; the EXIF focal (``camera_from_exif``) -> ``"exif"``; else a
    ``DEFAULT_FOV_X_DEG`` horizontal field of view -> ``"default"``.

    The report (JSON-ready) has ``source``, ``rule`` (how the camera was obtained, in words),
    ``camera`` (``Camera.to_dict()``), ``fov_x_deg``, ``fov_y_deg``, ``exif`` (the EXIF report
    whenever a file was given, even when not used; else None) and ``warning`` (a sentence when
    the default was assumed, else None). Raises ValueError for both ``intrinsics`` and ``focal``,
    malformed values, a principal point outside the image (``camera_for_size``; intrinsics
    measured on another size are given as ``"fx,fy,cx,cy@WxH"`` and rescaled), a ``Camera`` of
    another size, or an unreadable file.
    """
    check_one_camera(intrinsics, focal)
    exif_camera: Camera | None = None
    exif_report: dict[str, Any] | None = None
    if isinstance(path_or_size, (str, os.PathLike, Image.Image)):
        exif_camera, exif_report = _read_exif(path_or_size, digital_zoom)
        width, height = exif_report["size"]
    else:
        width, height = _size(path_or_size)

    warning = None
    chosen = _given(width, height, intrinsics, focal, annotation)
    if chosen is not None:
        camera, source, rule = chosen
    elif exif_camera is not None:
        assert exif_report is not None
        camera, source = exif_camera, "exif"
        rule = f"EXIF {exif_report['rule']}: {exif_report['rule_detail']}"
        if exif_report["digital_zoom_applied"]:
            rule += f", x digital zoom {exif_report['digital_zoom']:g}"
    else:
        camera, source = default_camera(width, height), "default"
        rule, warning = default_warning(exif_report)
    report = {
        "source": source,
        "rule": rule,
        "camera": camera.to_dict(),
        "fov_x_deg": camera.fov_x_deg,
        "fov_y_deg": camera.fov_y_deg,
        "exif": exif_report,
        "warning": warning,
    }
    return camera, source, report


def camera_for_image(
    image: str | os.PathLike | Image.Image | None,
    width: int,
    height: int,
    *,
    intrinsics: Camera | Sequence[float] | str | None = None,
    focal: float | None = None,
    annotation: Sequence[float] | None = None,
    digital_zoom: DigitalZoomMode = "auto",
) -> tuple[Camera, str]:
    """``(camera, source)`` of an image already decoded to ``width x height`` (as displayed):
    the order of ``resolve_camera``, with ``image`` (a path or PIL image; None: none) opened
    for its EXIF only when neither a given camera nor an annotation decides. The batch runner's
    and the Python API's per-image call."""
    chosen = _given(width, height, intrinsics, focal, annotation)
    if chosen is not None:
        return chosen[0], chosen[1]
    if image is not None:
        camera, report = _read_exif(image, digital_zoom)
        if camera is not None:
            if camera.size != (width, height):
                raise ValueError(
                    f"image is {width}x{height} but its EXIF camera is for "
                    f"{camera.width}x{camera.height}"
                )
            return camera, "exif"
    return default_camera(width, height), "default"


# ---------------------------------------------------------------------- warnings
def assumed_camera_warning(camera: Camera) -> str:
    """The line every output of a default-camera prediction carries (``camera assumed: ...``)."""
    fov = math.degrees(2 * math.atan(camera.width / (2 * camera.fx)))
    return (
        f"camera assumed: no intrinsics given and no usable EXIF focal length, so a "
        f"{fov:.0f} degree horizontal field of view (fx {camera.fx:.1f} px); every "
        "depth scales with this guess. Give --intrinsics or --focal (camera= in Python)"
    )


def default_count_warning(count: int) -> str:
    """The line after a batch run in which ``count`` images got the default camera."""
    return (
        f"{count} image(s) had no intrinsics and no EXIF focal; assumed a "
        f"{DEFAULT_FOV_X_DEG:g} degree horizontal field of view (camera source: default)"
    )


def assumed_focal_mismatch(spec: Any, focal_px: float) -> str | None:
    """Why ``focal_px`` (pixels of the image given) does not fit ``spec``, or None.

    Only models with ``spec.assumed_focal_px`` (trained on one camera of unknown intrinsics)
    can mismatch: their metric scale holds for that camera described by that focal, at the
    training resolution; another focal scales every depth by the ratio of the two.
    """
    assumed = getattr(spec, "assumed_focal_px", None)
    if assumed is None or abs(focal_px / assumed - 1.0) <= ASSUMED_FOCAL_TOLERANCE:
        return None
    return (
        f"model {spec.name!r} was trained on one camera of unknown intrinsics with an assumed "
        f"focal of {assumed:g} px, but this camera's focal is {focal_px:g} px "
        f"({focal_px / assumed - 1:+.0%}); depth is metric only for images of that camera "
        f"given that focal (at its training resolution)"
    )


def image_camera_mismatch(spec: Any, camera: Camera, focal_mode: str | None = None) -> str | None:
    """``assumed_focal_mismatch`` for one image's camera, its focal taken as the model takes it
    (``camera.focal(focal_mode or spec.focal_mode)``); for the batch runner, per image."""
    if getattr(spec, "assumed_focal_px", None) is None:
        return None
    return assumed_focal_mismatch(spec, camera.focal(focal_mode or spec.focal_mode))


def run_camera_warning(
    spec: Any,
    intrinsics: Sequence[float] | None,
    focal: float | None,
    focal_mode: str | None = None,
) -> str | None:
    """Before a run: why its one camera (``intrinsics`` or ``focal``) does not fit a model
    trained on an assumed camera, or a reminder when each image finds its own; None otherwise
    (and always for models with real intrinsics)."""
    assumed = getattr(spec, "assumed_focal_px", None)
    if assumed is None:
        return None
    if intrinsics is not None:
        mode = focal_mode or spec.focal_mode
        focal = intrinsics[0] if mode == "fx" else (intrinsics[0] + intrinsics[1]) / 2
    if focal is not None:
        return assumed_focal_mismatch(spec, focal)
    return (
        f"model {spec.name!r} was trained on one camera of unknown intrinsics with an "
        f"assumed focal of {assumed:g} px; images get their own cameras here (annotation, "
        f"EXIF or default): for images of that camera give --focal {assumed:g}"
    )


# ---------------------------------------------------------------------- the CLI text
def camera_report(
    path: str | os.PathLike,
    intrinsics: Camera | Sequence[float] | str | None = None,
    focal: float | None = None,
    *,
    digital_zoom: DigitalZoomMode = "auto",
) -> str:
    """The text ``metricdepth camera IMAGE`` prints: EXIF findings, rule, intrinsics, source."""
    camera, source, report = resolve_camera(
        path, intrinsics=intrinsics, focal=focal, digital_zoom=digital_zoom
    )
    exif = report["exif"]
    assert exif is not None
    stored_w, stored_h = exif["stored_size"]
    lines = [f"image: {exif['file']}"]
    orientation = exif["orientation"]
    size = f"size: {camera.width}x{camera.height} pixels as displayed"
    if orientation != 1:
        size += (
            f" (stored {stored_w}x{stored_h}, EXIF orientation {orientation}: "
            f"{ORIENTATION_NAMES[orientation]})"
        )
    lines.append(size)
    lines.append("EXIF:")
    if exif["tags"]:
        for name, value in exif["tags"].items():
            why = exif["ignored"].get(name)
            unit = " mm" if name in ("FocalLength", "FocalLengthIn35mmFilm") and not why else ""
            lines.append(f"  {name}: {value}{unit}" + (f"  (ignored: {why})" if why else ""))
    else:
        lines.append("  (no EXIF tags about the camera)")
    for note in exif["notes"]:
        lines.append(f"  note: {note}")
    if exif["rule"] is not None:
        lines.append(f"EXIF focal: {exif['rule']}: {exif['rule_detail']}")
        if exif["digital_zoom"] > 1.0:
            done = "applied" if exif["digital_zoom_applied"] else "not applied"
            lines.append(
                f"digital zoom: {exif['digital_zoom']:g} {done} ({exif['digital_zoom_reason']})"
            )
        lines.append(f"EXIF camera: fx={exif['focal_px'][0]:.2f} fy={exif['focal_px'][1]:.2f} px")
    else:
        lines.append("EXIF focal: none usable")
    for item in exif.get("rejected", []):
        lines.append(f"EXIF focal rejected: {item['rule']}: {item['detail']}: {item['reason']}")
    lines.append(f"camera source: {source}" + ("" if source == "exif" else f" ({report['rule']})"))
    lines.append(
        f"intrinsics: fx={camera.fx:.2f} fy={camera.fy:.2f} cx={camera.cx:.2f} "
        f"cy={camera.cy:.2f} pixels, size {camera.width}x{camera.height}"
    )
    lines.append(
        f"field of view: {camera.fov_x_deg:.1f} x {camera.fov_y_deg:.1f} degrees "
        "(horizontal x vertical)"
    )
    lines.append(
        f"reuse with: --intrinsics {camera.fx:.4f},{camera.fy:.4f},{camera.cx:.4f},{camera.cy:.4f}"
    )
    if report["warning"]:
        lines.append(f"warning: {report['warning']}")
    return "\n".join(lines)
