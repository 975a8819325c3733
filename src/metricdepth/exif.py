"""The camera of a photo as its EXIF tags describe it: reading and interpreting the tags only.

``camera_from_exif(path)`` reads the tags with Pillow (no decoding of the pixels) and returns the
camera of the image *as displayed* (EXIF orientation applied, the size ``metricdepth.io``
returns) or None, plus a JSON-ready report of what was found and which rule was used. Which
camera an image gets (given, annotation, EXIF or the default) is decided in
``metricdepth.cameras``, which calls this module for the EXIF step.

EXIF rules, in order (only the Exif sub-IFD holds these tags; Pillow's ``getexif()`` alone is
IFD0, so the tags are read from ``get_ifd(IFD.Exif)``, then IFD0 as a fallback):

``f35_diagonal``
    ``FocalLengthIn35mmFilm`` (mm, "35 mm equivalent") with the diagonal rule
    ``f_px = f35 * hypot(W, H) / hypot(36, 24)``: the image diagonal stands for the 43.27 mm
    diagonal of a 36 x 24 mm frame. A rotation leaves the diagonal unchanged, so stored or
    displayed size gives the same focal. ``fx = fy``.
``focal_plane``
    ``FocalLength`` (mm) times the focal-plane resolution (``FocalPlaneXResolution`` /
    ``FocalPlaneYResolution`` pixels per ``FocalPlaneResolutionUnit``: 2 inch (the EXIF
    default when the unit is absent), 3 cm, 4 mm, 5 um; 1 "no unit" makes the rule unusable).
    The resolutions refer to the pixel grid the camera recorded, ``ExifImageWidth`` x
    ``ExifImageHeight``, so the focal is scaled by the stored width over ``ExifImageWidth``
    when both dimensions are present and their aspect matches the stored image; when they
    match with width and height swapped (pixels rotated by an editor that kept the camera's
    dimensions) the sensor's x axis is the image's y axis; any other mismatch (a crop) leaves
    the focal unscaled. ``fx = fy`` unless the two resolutions differ (then each axis gets its
    own, and its own scale). This focal is computed on the stored pixel grid and then rotated
    with ``Camera.rotated(orientation)``: a 90 degree orientation swaps ``fx`` and ``fy``.

The principal point is always the image centre ``((W - 1) / 2, (H - 1) / 2)``.

Digital zoom (``DigitalZoomRatio`` > 1; 0 or 1 mean "not used") crops the sensor and enlarges
the crop back to the full size, so the focal in pixels grows by the ratio:

* ``focal_plane``: always multiplied (``FocalLength`` is the physical lens, which digital zoom
  does not change).
* ``f35_diagonal``: writers disagree. Apple phones write ``FocalLengthIn35mmFilm`` with the
  zoom already in it (an iPhone SE 3 photo at ``DigitalZoomRatio`` 1.951 says 55 mm where the
  unzoomed photo says 28 mm; Hugin bug #2064625 came from multiplying again), while other
  cameras record the lens's equivalent and the ratio separately (Hugin multiplies for them).
  With ``digital_zoom="auto"`` (default) the ratio is applied to f35 **unless** (a) the
  ``focal_plane`` rule can also be computed and the f35 focal lies nearer ``ratio x`` that
  focal than ``1 x`` (the zoom is already in f35), or (b) without that evidence, ``Make`` is
  Apple. ``"apply"`` and ``"ignore"`` force either choice. The report says what was done and
  why (``digital_zoom_applied``, ``digital_zoom_reason``).

Odd EXIF never raises: zero, negative, non-numeric, ``x/0`` or implausible values (f35 outside
2-5000 mm, focal length outside 0.1-5000 mm, zoom above 100) are ignored and listed in the
report's ``ignored``. Only an unreadable file raises a one-line ValueError naming the file.

A focal that a rule computes is also checked as a whole, and rejected (listed in the report's
``rejected`` with the reason; the next rule is tried, then the default camera) when

* the widest field of view of the image (horizontal or vertical, after digital zoom) is outside
  1-150 degrees (1 degree is a ~2000 mm full-frame-equivalent telephoto; 150 degrees is beyond
  any rectilinear lens), or
* (``focal_plane``) the sensor the tags imply is not 2-60 mm wide (1/6" phone modules are 2.4 mm
  wide, medium format up to ~54 mm). Its width is the sensor's pixel grid (``ExifImageWidth``,
  else the stored width) over ``FocalPlaneXResolution``. Without ``ExifImageWidth`` the stored
  pixels are taken as the sensor's, which is wrong for a resized image: a phone photo (4.25 mm
  lens, 700 px/mm, 4032 px wide) downscaled to 640 px would give 2975 px instead of 472 px, and
  its implied 0.91 mm sensor rejects it. (A camera with a large sensor downscaled by a small
  factor still implies a plausible sensor and cannot be told apart.) An image larger than the
  camera's ``ExifImageWidth`` x ``ExifImageHeight`` that is no resize of it is rejected too.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from PIL import ExifTags, Image, UnidentifiedImageError
from PIL.TiffImagePlugin import IFDRational

from metricdepth.camera import EXIF_ORIENTATIONS, Camera

__all__ = [
    "DIGITAL_ZOOM_MODES",
    "FILM_DIAGONAL_MM",
    "ORIENTATION_NAMES",
    "camera_from_exif",
    "camera_from_pil",
    "tag_number",
]

DigitalZoomMode = Literal["auto", "apply", "ignore"]
DIGITAL_ZOOM_MODES: tuple[str, ...] = ("auto", "apply", "ignore")

#: Diagonal of the 36 x 24 mm frame that "35 mm equivalent" focal lengths refer to.
FILM_DIAGONAL_MM = math.hypot(36.0, 24.0)

#: FocalPlaneResolutionUnit -> millimetres per unit (1 = "no absolute unit": unusable).
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_UNIT_NAMES = {1: "none", 2: "inch", 3: "cm", 4: "mm", 5: "um"}

_F35_RANGE_MM = (2.0, 5000.0)
_FOCAL_RANGE_MM = (0.1, 5000.0)
#: Width of the sensor the focal-plane tags imply (its pixel grid over their resolution). Camera
#: sensors that write these tags run from ~2.4 mm (1/6" phone modules) through phones (4-10 mm),
#: 1" (13.2), APS-C (22-24), full frame (36) to medium format (44-54 mm).
_SENSOR_WIDTH_RANGE_MM = (2.0, 60.0)
#: Widest field of view of the image (the larger of horizontal and vertical), degrees. 150
#: degrees is beyond any rectilinear lens (a 12 mm full-frame-equivalent lens sees ~113 degrees
#: across 36 mm); 1 degree is a ~2000 mm full-frame-equivalent telephoto.
_FOV_RANGE_DEG = (1.0, 150.0)
_MAX_ZOOM = 100.0
_ASPECT_TOLERANCE = 0.01

_TAGS = {
    "FocalLengthIn35mmFilm": ExifTags.Base.FocalLengthIn35mmFilm,
    "FocalLength": ExifTags.Base.FocalLength,
    "FocalPlaneXResolution": ExifTags.Base.FocalPlaneXResolution,
    "FocalPlaneYResolution": ExifTags.Base.FocalPlaneYResolution,
    "FocalPlaneResolutionUnit": ExifTags.Base.FocalPlaneResolutionUnit,
    "ExifImageWidth": ExifTags.Base.ExifImageWidth,
    "ExifImageHeight": ExifTags.Base.ExifImageHeight,
    "DigitalZoomRatio": ExifTags.Base.DigitalZoomRatio,
}
_IFD0_TAGS = {
    "Orientation": ExifTags.Base.Orientation,
    "Make": ExifTags.Base.Make,
    "Model": ExifTags.Base.Model,
}

ORIENTATION_NAMES = {
    1: "as stored",
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed",
    6: "rotated 90 degrees clockwise",
    7: "transversed",
    8: "rotated 90 degrees counter-clockwise",
}

RULE_F35 = "f35_diagonal"
RULE_FOCAL_PLANE = "focal_plane"


# ---------------------------------------------------------------------- tag values
def tag_number(value: Any) -> float | None:
    """A finite float from an EXIF value (int, float, IFDRational, 1-tuple, num/den), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, IFDRational):
        if value.denominator == 0:
            return None
        number = float(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, tuple) and len(value) == 1:
        return tag_number(value[0])
    elif (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        if value[1] == 0:
            return None
        number = value[0] / value[1]
    else:
        return None
    return number if math.isfinite(number) else None


def _shown(value: Any) -> Any:
    """A JSON-ready form of a raw tag value for the report."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, IFDRational):
        if value.denominator == 0:
            return f"{value.numerator}/0"
        return float(value)
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value.strip("\x00 ")[:64]
    return repr(value)[:64]


class _Tags:
    """The EXIF tags of one file with the checks that turn them into usable numbers."""

    def __init__(self, ifd0: dict, exif_ifd: dict) -> None:
        self.found: dict[str, Any] = {}
        self.ignored: dict[str, str] = {}
        self._raw: dict[str, Any] = {}
        for name, tag in _TAGS.items():
            value = exif_ifd.get(tag, ifd0.get(tag))
            if value is not None:
                self._raw[name] = value
                self.found[name] = _shown(value)
        for name, tag in _IFD0_TAGS.items():
            value = ifd0.get(tag)
            if value is not None:
                self._raw[name] = value
                self.found[name] = _shown(value)

    def positive(self, name: str, low: float = 0.0, high: float = math.inf) -> float | None:
        """The tag as a number in ``(0, inf)`` and within ``[low, high]``, else None (noted)."""
        if name not in self._raw:
            return None
        number = tag_number(self._raw[name])
        if number is None:
            self.ignored[name] = f"not a number: {self.found[name]}"
        elif number == 0:
            self.ignored[name] = "0 (unknown)"
        elif number < 0:
            self.ignored[name] = f"negative: {number:g}"
        elif not low <= number <= high:
            self.ignored[name] = f"implausible: {number:g} (expected {low:g} to {high:g})"
        else:
            return number
        return None

    def integer(self, name: str, allowed) -> int | None:
        """The tag as an int in ``allowed``, else None (noted)."""
        if name not in self._raw:
            return None
        number = tag_number(self._raw[name])
        if number is None or number != int(number) or int(number) not in allowed:
            self.ignored[name] = f"not one of {sorted(allowed)}: {self.found[name]}"
            return None
        return int(number)

    def text(self, name: str) -> str:
        value = self._raw.get(name)
        return value.strip("\x00 ") if isinstance(value, str) else ""


# ---------------------------------------------------------------------- reading
def _exif_tags(image: Image.Image) -> tuple[dict, dict, str | None]:
    """``(ifd0, exif_ifd, problem)`` of an opened image; odd EXIF is reported, never raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; we report it instead
            exif = image.getexif()
            return dict(exif), dict(exif.get_ifd(ExifTags.IFD.Exif)), None
    except Exception as exc:  # odd EXIF must never stop us: report it
        return {}, {}, f"EXIF unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})"


def _read_tags(path: Path) -> tuple[tuple[int, int], dict, dict, str | None]:
    """``((width, height) stored, ifd0, exif_ifd, problem)``; raises only on unreadable files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; we report it instead
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = (int(image.size[0]), int(image.size[1]))
                ifd0, exif_ifd, problem = _exif_tags(image)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{path}: refused as a decompression bomb") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image Pillow can read (or an empty file)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = " ".join(str(exc).split())
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {text})") from None
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"{path}: empty image")
    return size, ifd0, exif_ifd, problem


def _orientation(tags: _Tags, notes: list[str]) -> int:
    """The EXIF orientation as ``metricdepth.io`` applies it (1 when absent or invalid)."""
    raw = tags._raw.get("Orientation")
    if raw is None:
        return 1
    if isinstance(raw, bool) or not isinstance(raw, int) or raw not in EXIF_ORIENTATIONS:
        notes.append(f"Orientation {tags.found['Orientation']!r} is not 1-8: treated as 1")
        return 1
    return raw


def _diagonal_focal_px(f35_mm: float, width: int, height: int) -> float:
    return f35_mm * math.hypot(width, height) / FILM_DIAGONAL_MM


def _focal_plane(
    tags: _Tags, stored: tuple[int, int], notes: list[str]
) -> tuple[float, float, str, float, str | None] | None:
    """``(fx, fy, detail, sensor_width_mm, problem)`` on the stored grid from FocalLength and
    the focal-plane tags, before digital zoom. ``sensor_width_mm`` is the width of the sensor
    they imply (its grid width in pixels, ``ExifImageWidth`` or else the stored width, over the
    x resolution); ``problem`` says why the focal cannot be right (else None)."""
    focal_mm = tags.positive("FocalLength", *_FOCAL_RANGE_MM)
    xres = tags.positive("FocalPlaneXResolution")
    yres = tags.positive("FocalPlaneYResolution")
    if focal_mm is None or (xres is None and yres is None):
        return None
    if "FocalPlaneResolutionUnit" in tags._raw:
        unit = tags.integer("FocalPlaneResolutionUnit", _UNIT_NAMES)
        if unit is None:
            return None
    else:
        unit = 2
        notes.append("FocalPlaneResolutionUnit missing: inches assumed (the EXIF default)")
    if unit not in _UNIT_MM:
        tags.ignored["FocalPlaneResolutionUnit"] = "1 (no absolute unit): focal plane unusable"
        return None
    xres = xres if xres is not None else yres
    yres = yres if yres is not None else xres
    assert xres is not None and yres is not None
    x_px_per_mm, y_px_per_mm = xres / _UNIT_MM[unit], yres / _UNIT_MM[unit]

    width, height = stored
    exif_w = tags.positive("ExifImageWidth")
    exif_h = tags.positive("ExifImageHeight")
    transposed = False
    problem = None
    grid_w = exif_w  # the sensor's pixel grid along its x axis
    if exif_w is None or exif_h is None:
        sx = sy = 1.0
        grid_w = width
        grid = (
            "ExifImageWidth/Height missing: resolution taken as per stored pixel (right only "
            "if the image has the camera's full resolution)"
        )
    else:
        aspect = width / height
        if abs(aspect / (exif_w / exif_h) - 1.0) <= _ASPECT_TOLERANCE:
            sx, sy = width / exif_w, height / exif_h
            grid = f"scaled by {width}/{exif_w:g} (stored / ExifImageWidth)"
        elif abs(aspect / (exif_h / exif_w) - 1.0) <= _ASPECT_TOLERANCE:
            transposed = True
            sx, sy = width / exif_h, height / exif_w
            grid = (
                f"ExifImageWidth x Height {exif_w:g}x{exif_h:g} is the stored {width}x{height} "
                f"turned 90 degrees: the sensor's x axis is the image's y axis; scaled by "
                f"{width}/{exif_h:g}"
            )
        else:
            sx = sy = 1.0
            grid = (
                f"ExifImageWidth x Height {exif_w:g}x{exif_h:g} does not match the stored "
                f"{width}x{height} aspect (cropped?): resolution used unscaled"
            )
            notes.append(grid)
            fits = (width <= exif_w and height <= exif_h) or (width <= exif_h and height <= exif_w)
            if not fits:
                problem = (
                    f"the stored {width}x{height} image is larger than the camera's "
                    f"{exif_w:g}x{exif_h:g} pixels (ExifImageWidth x Height), so it is no crop "
                    "of them and the focal-plane resolution does not apply to its pixels"
                )
    assert grid_w is not None
    sensor_width_mm = grid_w / x_px_per_mm
    if transposed:
        x_px_per_mm, y_px_per_mm = y_px_per_mm, x_px_per_mm
    if xres == yres:  # square pixels: one focal, scaled by the width ratio
        fx = fy = focal_mm * x_px_per_mm * sx
    else:
        fx, fy = focal_mm * x_px_per_mm * sx, focal_mm * y_px_per_mm * sy
    unit_name = _UNIT_NAMES[unit]
    detail = (
        f"FocalLength {focal_mm:g} mm x FocalPlaneResolution {xres:g}"
        + ("" if xres == yres else f"/{yres:g}")
        + f" px/{unit_name}; {grid}; sensor {sensor_width_mm:.2f} mm wide"
    )
    if problem is None:
        problem = _implausible_sensor(sensor_width_mm, exif_w is None or exif_h is None)
    return fx, fy, detail, sensor_width_mm, problem


def _implausible_sensor(sensor_width_mm: float, grid_unknown: bool) -> str | None:
    """Why a sensor this wide cannot be (``_SENSOR_WIDTH_RANGE_MM``), or None."""
    low, high = _SENSOR_WIDTH_RANGE_MM
    if low <= sensor_width_mm <= high:
        return None
    why = f"implied sensor width {sensor_width_mm:.2f} mm is outside {low:g}-{high:g} mm"
    if grid_unknown:
        why += " (no ExifImageWidth: a resized image's pixels are not the sensor's)"
    return why


def _implausible_fov(camera: Camera) -> str | None:
    """Why a camera with this field of view cannot be (``_FOV_RANGE_DEG``), or None."""
    low, high = _FOV_RANGE_DEG
    fov = max(camera.fov_x_deg, camera.fov_y_deg)
    if low <= fov <= high:
        return None
    return (
        f"implied field of view {fov:.1f} degrees (the wider of horizontal and vertical) is "
        f"outside {low:g}-{high:g} degrees"
    )


def _zoom_ratio(tags: _Tags) -> float:
    """DigitalZoomRatio when > 1 (digital zoom used), else 1."""
    if "DigitalZoomRatio" not in tags._raw:
        return 1.0
    number = tag_number(tags._raw["DigitalZoomRatio"])
    if number is not None and number == 0:
        return 1.0  # EXIF: numerator 0 = digital zoom not used
    ratio = tags.positive("DigitalZoomRatio", 0.0, _MAX_ZOOM)
    return ratio if ratio is not None and ratio > 1.0 else 1.0


def camera_from_exif(
    path: str | os.PathLike, *, digital_zoom: DigitalZoomMode = "auto"
) -> tuple[Camera | None, dict[str, Any]]:
    """The camera of the image at ``path`` as displayed, from its EXIF, and a report.

    Returns ``(camera or None, report)``. ``camera`` has the displayed size (EXIF orientation
    applied, as ``metricdepth.io.read_image`` returns the pixels) and the principal point at its
    centre; None when no rule applies (see the module docstring for the rules and the digital
    zoom policy). ``report`` (JSON-ready) holds ``file``, ``stored_size`` and ``size`` as
    ``[W, H]``, ``orientation``, ``tags`` (every relevant tag found, raw), ``ignored``
    (tag -> why), ``rule`` (``"f35_diagonal"``, ``"focal_plane"`` or None), ``rule_detail``,
    ``digital_zoom`` (the ratio found, 1 if none), ``digital_zoom_applied``,
    ``digital_zoom_reason``, ``focal_px`` (``[fx, fy]`` or None), ``notes`` and ``rejected``
    (``{"rule", "detail", "reason"}`` per rule whose focal was computed but is implausible; see
    :func:`_implausible_sensor` and :func:`_implausible_fov`). A rejected rule gives way to the
    next (``f35_diagonal``, then ``focal_plane``); when all are rejected the camera is None.

    Raises ValueError (one line naming the file) only when the file cannot be read as an image.
    A PIL image already open: ``camera_from_pil``.
    """
    _check_zoom_mode(digital_zoom)
    path = Path(path)
    return _camera_from_tags(str(path), *_read_tags(path), digital_zoom)


def camera_from_pil(
    image: Image.Image, *, digital_zoom: DigitalZoomMode = "auto"
) -> tuple[Camera | None, dict[str, Any]]:
    """``camera_from_exif`` for a PIL image: the same rules on its EXIF and stored size
    (``image.size``); the report's ``file`` is None."""
    _check_zoom_mode(digital_zoom)
    stored = (int(image.size[0]), int(image.size[1]))
    if stored[0] <= 0 or stored[1] <= 0:
        raise ValueError("empty image")
    return _camera_from_tags(None, stored, *_exif_tags(image), digital_zoom)


def _check_zoom_mode(digital_zoom: str) -> None:
    if digital_zoom not in DIGITAL_ZOOM_MODES:
        raise ValueError(
            f"digital_zoom must be one of {', '.join(DIGITAL_ZOOM_MODES)}, got {digital_zoom!r}"
        )


def _camera_from_tags(
    file: str | None,
    stored: tuple[int, int],
    ifd0: dict,
    exif_ifd: dict,
    problem: str | None,
    digital_zoom: DigitalZoomMode,
) -> tuple[Camera | None, dict[str, Any]]:
    """``camera_from_exif`` on tags already read (``file``: for the report only)."""
    tags = _Tags(ifd0, exif_ifd)
    notes: list[str] = [problem] if problem else []
    orientation = _orientation(tags, notes)
    transpose = EXIF_ORIENTATIONS[orientation][0]
    displayed = (stored[1], stored[0]) if transpose else stored
    report: dict[str, Any] = {
        "file": file,
        "stored_size": list(stored),
        "size": list(displayed),
        "orientation": orientation,
        "tags": tags.found,
        "ignored": tags.ignored,
        "rule": None,
        "rule_detail": None,
        "digital_zoom": 1.0,
        "digital_zoom_applied": False,
        "digital_zoom_reason": "no digital zoom recorded",
        "focal_px": None,
        "notes": notes,
    }

    zoom = _zoom_ratio(tags)
    report["digital_zoom"] = zoom
    f35_mm = tags.positive("FocalLengthIn35mmFilm", *_F35_RANGE_MM)
    plane = _focal_plane(tags, stored, notes)
    centre = ((stored[0] - 1) / 2.0, (stored[1] - 1) / 2.0)
    rejected: list[dict[str, str]] = []
    report["rejected"] = rejected

    if f35_mm is not None:
        focal_px = _diagonal_focal_px(f35_mm, *stored)
        fx = fy = focal_px
        detail = (
            f"FocalLengthIn35mmFilm {f35_mm:g} mm x hypot({stored[0]}, {stored[1]}) / "
            f"hypot(36, 24) = {focal_px:.1f} px"
        )
        apply, reason = False, report["digital_zoom_reason"]
        if zoom > 1.0:
            evidence = plane if plane is not None and plane[4] is None else None
            apply, reason = _zoom_for_f35(digital_zoom, zoom, focal_px, evidence, tags.text("Make"))
            if apply:
                fx = fy = focal_px * zoom
        camera = Camera(fx, fy, *centre, *stored).rotated(orientation)
        problem = _implausible_fov(camera)
        if problem is None:
            if plane is not None:
                notes.append(
                    f"FocalLength with the focal plane would give fx={plane[0]:.1f}, "
                    f"fy={plane[1]:.1f} px (stored grid, before zoom); "
                    "FocalLengthIn35mmFilm wins"
                    + ("" if plane[4] is None else f" (and that focal is implausible: {plane[4]})")
                )
            report["digital_zoom_applied"], report["digital_zoom_reason"] = apply, reason
            return _used(camera, report, RULE_F35, detail)
        rejected.append({"rule": RULE_F35, "detail": detail, "reason": problem})

    if plane is not None:
        fx, fy, detail, _, problem = plane
        apply = zoom > 1.0 and digital_zoom != "ignore"
        if apply:
            fx, fy = fx * zoom, fy * zoom
        camera = Camera(fx, fy, *centre, *stored).rotated(orientation)
        if problem is None:
            problem = _implausible_fov(camera)
        if problem is None:
            if zoom > 1.0:
                report["digital_zoom_applied"] = apply
                report["digital_zoom_reason"] = (
                    "the physical focal length never includes digital zoom: multiplied"
                    if apply
                    else "digital_zoom='ignore'"
                )
            return _used(camera, report, RULE_FOCAL_PLANE, detail)
        rejected.append({"rule": RULE_FOCAL_PLANE, "detail": detail, "reason": problem})

    if zoom > 1.0:
        report["digital_zoom_reason"] = (
            "no usable focal length to apply it to"
            if rejected
            else "no focal length to apply it to"
        )
    return None, report


def _used(
    camera: Camera, report: dict[str, Any], rule: str, detail: str
) -> tuple[Camera, dict[str, Any]]:
    """``(camera, report)`` with the rule that made the camera filled in."""
    report["rule"], report["rule_detail"] = rule, detail
    report["focal_px"] = [camera.fx, camera.fy]
    return camera, report


def _zoom_for_f35(
    mode: str, zoom: float, f35_px: float, plane: tuple[Any, ...] | None, make: str
) -> tuple[bool, str]:
    """Whether to multiply the f35 focal by ``zoom``, and why (module docstring)."""
    if mode == "apply":
        return True, "digital_zoom='apply'"
    if mode == "ignore":
        return False, "digital_zoom='ignore'"
    if plane is not None:
        ratio = f35_px / math.sqrt(plane[0] * plane[1])
        if abs(math.log(ratio / zoom)) < abs(math.log(ratio)):
            return False, (
                f"FocalLengthIn35mmFilm is {ratio:.2f}x the FocalLength/focal-plane focal, "
                f"nearer the zoom {zoom:g}x than 1x: the zoom is already in it"
            )
        return True, (
            f"FocalLengthIn35mmFilm is {ratio:.2f}x the FocalLength/focal-plane focal, "
            f"nearer 1x than the zoom {zoom:g}x: multiplied"
        )
    if make.lower().startswith("apple"):
        return False, "Apple writes FocalLengthIn35mmFilm with the digital zoom already in it"
    return True, "FocalLengthIn35mmFilm taken as the lens without digital zoom: multiplied"
