"""Camera from EXIF: JPEGs written here with Pillow, expected intrinsics computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from metricdepth.camera import DEFAULT_FOV_X_DEG, Camera
from metricdepth.cameras import camera_report, resolve_camera
from metricdepth.exif import camera_from_exif, camera_from_pil
from metricdepth.io import read_image

B = ExifTags.Base
DIAG_35 = math.sqrt(36**2 + 24**2)  # 43.2666 mm
F35_26_640x480 = 26 * 800 / DIAG_35  # hypot(640, 480) = 800 -> 480.740 px
# FocalLength 4.25 mm, 7000 px/cm = 700 px/mm on a 4032x3024 sensor, image 640x480:
PLANE_FX = 4.25 * 700 * 640 / 4032  # 472.222 px
PLANE_FY_6000 = 4.25 * 600 * 480 / 3024  # 404.762 px (FocalPlaneYResolution 6000 px/cm)


def write_jpeg(
    path: Path,
    size: tuple[int, int] = (640, 480),
    exif_tags: dict | None = None,
    ifd0: dict | None = None,
    fmt: str = "JPEG",
) -> Path:
    """A small JPEG whose Exif sub-IFD holds ``exif_tags`` and IFD0 holds ``ifd0``."""
    image = Image.new("RGB", size, (90, 120, 150))
    if exif_tags is None and ifd0 is None:
        image.save(path, fmt)
        return path
    exif = Image.Exif()
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    for tag, value in (exif_tags or {}).items():
        sub[tag] = value
    image.save(path, fmt, exif=exif)
    return path


def plane_tags(extra: dict | None = None) -> dict:
    tags = {
        B.FocalLength: IFDRational(17, 4),
        B.FocalPlaneXResolution: IFDRational(7000, 1),
        B.FocalPlaneYResolution: IFDRational(7000, 1),
        B.FocalPlaneResolutionUnit: 3,
        B.ExifImageWidth: 4032,
        B.ExifImageHeight: 3024,
    }
    tags.update(extra or {})
    return tags


def assert_camera(camera: Camera | None, fx, fy, cx, cy, width, height) -> None:
    assert camera is not None
    assert camera.size == (width, height)
    assert camera.fx == pytest.approx(fx, rel=1e-9)
    assert camera.fy == pytest.approx(fy, rel=1e-9)
    assert (camera.cx, camera.cy) == (cx, cy)


# ---------------------------------------------------------------------- FocalLengthIn35mmFilm
def test_f35_diagonal_rule(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", exif_tags={B.FocalLengthIn35mmFilm: 26})
    camera, report = camera_from_exif(path)
    assert F35_26_640x480 == pytest.approx(480.740, abs=1e-3)
    assert_camera(camera, F35_26_640x480, F35_26_640x480, 319.5, 239.5, 640, 480)
    assert report["rule"] == "f35_diagonal"
    assert report["tags"]["FocalLengthIn35mmFilm"] == 26
    assert report["orientation"] == 1 and report["size"] == [640, 480]
    json.dumps(report)  # JSON-ready


def test_f35_orientation_6_swaps_size_keeps_diagonal_focal(tmp_path):
    path = write_jpeg(
        tmp_path / "portrait.jpg",
        exif_tags={B.FocalLengthIn35mmFilm: 26},
        ifd0={B.Orientation: 6},
    )
    camera, report = camera_from_exif(path)
    assert_camera(camera, F35_26_640x480, F35_26_640x480, 239.5, 319.5, 480, 640)
    assert report["stored_size"] == [640, 480] and report["size"] == [480, 640]
    assert report["orientation"] == 6
    rgb, orientation = read_image(path)
    assert orientation == 6 and rgb.shape[:2] == (camera.height, camera.width)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_io(tmp_path, orientation):
    path = write_jpeg(
        tmp_path / "o.jpg",
        size=(64, 48),
        exif_tags=plane_tags({B.FocalPlaneYResolution: IFDRational(6000, 1)}),
        ifd0={B.Orientation: orientation},
    )
    camera, _ = camera_from_exif(path)
    stored = Camera(4.25 * 700 * 64 / 4032, 4.25 * 600 * 48 / 3024, 31.5, 23.5, 64, 48)
    expected = stored.rotated(orientation)
    assert camera.size == expected.size
    assert camera.intrinsics == pytest.approx(expected.intrinsics, rel=1e-12)
    rgb, _ = read_image(path)
    assert rgb.shape[:2] == (camera.height, camera.width)


def test_png_with_exif(tmp_path):
    # (Pillow reads a PNG's EXIF back only when IFD0 holds a tag besides the Exif pointer.)
    tags = {B.FocalLengthIn35mmFilm: 26}
    path = write_jpeg(tmp_path / "a.png", exif_tags=tags, ifd0={B.Make: "Test"}, fmt="PNG")
    camera, _ = camera_from_exif(path)
    assert_camera(camera, F35_26_640x480, F35_26_640x480, 319.5, 239.5, 640, 480)


# ---------------------------------------------------------------------- FocalLength + focal plane
@pytest.mark.parametrize(
    ("unit", "resolution"),
    [
        (3, IFDRational(7000, 1)),  # px per cm
        (2, IFDRational(17780, 1)),  # px per inch = 700 px/mm
        (4, IFDRational(700, 1)),  # px per mm
        (5, IFDRational(7, 10)),  # px per micrometre
    ],
)
def test_focal_plane_units(tmp_path, unit, resolution):
    tags = plane_tags(
        {
            B.FocalPlaneResolutionUnit: unit,
            B.FocalPlaneXResolution: resolution,
            B.FocalPlaneYResolution: resolution,
        }
    )
    camera, report = camera_from_exif(write_jpeg(tmp_path / "p.jpg", exif_tags=tags))
    assert PLANE_FX == pytest.approx(472.2222, abs=1e-4)
    assert_camera(camera, PLANE_FX, PLANE_FX, 319.5, 239.5, 640, 480)
    assert report["rule"] == "focal_plane"
    assert report["tags"]["FocalLength"] == 4.25


def test_focal_plane_missing_unit_means_inches(tmp_path):
    tags = plane_tags({B.FocalPlaneXResolution: IFDRational(17780, 1)})
    del tags[B.FocalPlaneResolutionUnit], tags[B.FocalPlaneYResolution]
    camera, report = camera_from_exif(write_jpeg(tmp_path / "p.jpg", exif_tags=tags))
    assert_camera(camera, PLANE_FX, PLANE_FX, 319.5, 239.5, 640, 480)  # Y missing: square
    assert any("inches assumed" in note for note in report["notes"])


def test_focal_plane_unit_none_is_unusable(tmp_path):
    tags = plane_tags({B.FocalPlaneResolutionUnit: 1})
    camera, report = camera_from_exif(write_jpeg(tmp_path / "p.jpg", exif_tags=tags))
    assert camera is None and report["rule"] is None
    assert "FocalPlaneResolutionUnit" in report["ignored"]


def test_focal_plane_different_resolutions_and_rotation(tmp_path):
    tags = plane_tags({B.FocalPlaneYResolution: IFDRational(6000, 1)})
    path = write_jpeg(tmp_path / "p.jpg", exif_tags=tags)
    camera, _ = camera_from_exif(path)
    assert_camera(camera, PLANE_FX, PLANE_FY_6000, 319.5, 239.5, 640, 480)
    rotated = write_jpeg(tmp_path / "r.jpg", exif_tags=tags, ifd0={B.Orientation: 6})
    camera, _ = camera_from_exif(rotated)  # 90 degrees: fx and fy swap
    assert_camera(camera, PLANE_FY_6000, PLANE_FX, 239.5, 319.5, 480, 640)


def test_focal_plane_exif_size_swapped_against_stored_pixels(tmp_path):
    # An editor rotated the pixels (stored 480x640, orientation 1) but kept 4032x3024.
    tags = plane_tags({B.FocalPlaneYResolution: IFDRational(6000, 1)})
    camera, report = camera_from_exif(write_jpeg(tmp_path / "p.jpg", (480, 640), tags))
    assert_camera(camera, PLANE_FY_6000, PLANE_FX, 239.5, 319.5, 480, 640)
    assert "turned 90 degrees" in report["rule_detail"]


def test_focal_plane_unscaled_without_or_with_mismatching_exif_size(tmp_path):
    tags = plane_tags()
    del tags[B.ExifImageWidth], tags[B.ExifImageHeight]
    # at the sensor's full resolution: 4032 px / 700 px/mm = a 5.76 mm sensor, plausible
    full = write_jpeg(tmp_path / "full.jpg", (4032, 3024), exif_tags=tags)
    camera, report = camera_from_exif(full)
    assert_camera(camera, 4.25 * 700, 4.25 * 700, 2015.5, 1511.5, 4032, 3024)
    assert report["rejected"] == [] and "sensor 5.76 mm wide" in report["rule_detail"]
    cropped = write_jpeg(tmp_path / "b.jpg", (640, 400), plane_tags())  # 16:10 from 4:3
    camera, report = camera_from_exif(cropped)
    assert_camera(camera, 4.25 * 700, 4.25 * 700, 319.5, 199.5, 640, 400)
    assert any("does not match" in note for note in report["notes"])


def test_downscaled_photo_without_exif_size_is_rejected_not_8x_wrong(tmp_path):
    # The phone photo downscaled to 640x480 with ExifImageWidth/Height stripped: taking the
    # stored pixels as the sensor's would give 4.25 * 700 = 2975 px (true: 472.2 px), a sensor
    # 640 / 700 = 0.91 mm wide. Rejected; the default camera is used and says why.
    tags = plane_tags()
    del tags[B.ExifImageWidth], tags[B.ExifImageHeight]
    path = write_jpeg(tmp_path / "small.jpg", exif_tags=tags)
    camera, report = camera_from_exif(path)
    assert camera is None and report["rule"] is None and report["focal_px"] is None
    [rejected] = report["rejected"]
    assert rejected["rule"] == "focal_plane"
    assert rejected["reason"].startswith(
        "implied sensor width 0.91 mm is outside 2-60 mm (no ExifImageWidth: a resized "
        "image's pixels are not the sensor's)"
    )
    json.dumps(report)

    camera, source, resolved = resolve_camera(path)
    assert source == "default" and camera.fov_x_deg == pytest.approx(DEFAULT_FOV_X_DEG)
    assert "exif rejected: implied sensor width 0.91 mm" in resolved["rule"]
    assert "EXIF focal length was rejected (implied sensor width 0.91 mm" in resolved["warning"]
    text = camera_report(path)
    assert "EXIF focal rejected: focal_plane: FocalLength 4.25 mm" in text
    assert "camera source: default (default 60 degree" in text
    assert "exif rejected: implied sensor width 0.91 mm is outside 2-60 mm" in text
    assert "warning: no intrinsics given and the EXIF focal length was rejected" in text
    # a PIL image of the file: the same rules, the same rejection and the same report
    with Image.open(path) as image:
        pil_camera, pil_report = camera_from_pil(image)
        assert pil_camera is None and pil_report["file"] is None
        assert pil_report == {**camera_from_exif(path)[1], "file": None}
        pil_camera, pil_source, pil_resolved = resolve_camera(image)
    assert pil_source == source == "default" and pil_camera == camera
    assert pil_resolved["rule"] == resolved["rule"]
    assert pil_resolved["warning"] == resolved["warning"]
    # with the camera's pixel count recorded the same file is scaled correctly instead
    camera, report = camera_from_exif(write_jpeg(tmp_path / "ok.jpg", exif_tags=plane_tags()))
    assert_camera(camera, PLANE_FX, PLANE_FX, 319.5, 239.5, 640, 480)


@pytest.mark.parametrize(
    ("extra", "size", "reason"),
    [
        # 4032 px at 50 px/mm: an 80.64 mm wide sensor
        (
            {B.FocalPlaneXResolution: IFDRational(500, 1), B.FocalPlaneYResolution: None},
            (640, 480),
            "implied sensor width 80.64 mm is outside 2-60 mm",
        ),
        # 4000 mm on the 5.76 mm sensor: 444,444 px on 640 px, a 0.08 degree view
        (
            {B.FocalLength: IFDRational(4000, 1)},
            (640, 480),
            "implied field of view 0.1 degrees (the wider of horizontal and vertical) is "
            "outside 1-150 degrees",
        ),
        # 0.2 mm on the 5.76 mm sensor: fx = 22.2 px on 640 px, a 172 degree view
        ({B.FocalLength: IFDRational(1, 5)}, (640, 480), "implied field of view 172.1 degrees"),
        # an image bigger than the camera's 4032x3024 pixels, and not a resize of them
        ({}, (5000, 3000), "the stored 5000x3000 image is larger than the camera's 4032x3024"),
    ],
)
def test_implausible_focal_plane_is_rejected(tmp_path, extra, size, reason):
    tags = {k: v for k, v in plane_tags(extra).items() if v is not None}
    camera, report = camera_from_exif(write_jpeg(tmp_path / "p.jpg", size, exif_tags=tags))
    assert camera is None
    [rejected] = report["rejected"]
    assert rejected["rule"] == "focal_plane" and rejected["reason"].startswith(reason)


def test_implausible_f35_gives_way_to_the_focal_plane(tmp_path):
    # f35 3 mm: 3 * 800 / 43.27 = 55.5 px on 640 px, a 160.3 degree view: rejected
    camera, report = camera_from_exif(
        write_jpeg(tmp_path / "a.jpg", exif_tags={B.FocalLengthIn35mmFilm: 3})
    )
    assert camera is None
    assert report["rejected"][0]["reason"].startswith("implied field of view 160.3 degrees")
    tags = plane_tags({B.FocalLengthIn35mmFilm: 3})
    camera, report = camera_from_exif(write_jpeg(tmp_path / "b.jpg", exif_tags=tags))
    assert_camera(camera, PLANE_FX, PLANE_FX, 319.5, 239.5, 640, 480)
    assert report["rule"] == "focal_plane"
    assert [item["rule"] for item in report["rejected"]] == ["f35_diagonal"]


def test_f35_wins_over_focal_plane(tmp_path):
    tags = plane_tags({B.FocalLengthIn35mmFilm: 26})
    camera, report = camera_from_exif(write_jpeg(tmp_path / "p.jpg", exif_tags=tags))
    assert_camera(camera, F35_26_640x480, F35_26_640x480, 319.5, 239.5, 640, 480)
    assert report["rule"] == "f35_diagonal"


# ---------------------------------------------------------------------- digital zoom
def test_digital_zoom_multiplies_focal_plane(tmp_path):
    tags = plane_tags({B.DigitalZoomRatio: IFDRational(2, 1)})
    camera, report = camera_from_exif(write_jpeg(tmp_path / "z.jpg", exif_tags=tags))
    assert_camera(camera, 2 * PLANE_FX, 2 * PLANE_FX, 319.5, 239.5, 640, 480)
    assert report["digital_zoom"] == 2.0 and report["digital_zoom_applied"] is True
    camera, _ = camera_from_exif(tmp_path / "z.jpg", digital_zoom="ignore")
    assert camera.fx == pytest.approx(PLANE_FX)


def test_digital_zoom_on_f35(tmp_path):
    tags = {B.FocalLengthIn35mmFilm: 26, B.DigitalZoomRatio: IFDRational(2, 1)}
    plain = write_jpeg(tmp_path / "z.jpg", exif_tags=tags)
    camera, report = camera_from_exif(plain)  # not known to include it: multiplied
    assert camera.fx == pytest.approx(2 * F35_26_640x480)
    assert report["digital_zoom_applied"] is True
    assert camera_from_exif(plain, digital_zoom="ignore")[0].fx == pytest.approx(F35_26_640x480)

    apple = write_jpeg(tmp_path / "apple.jpg", exif_tags=tags, ifd0={B.Make: "Apple"})
    camera, report = camera_from_exif(apple)  # Apple writes the zoom into f35
    assert camera.fx == pytest.approx(F35_26_640x480)
    assert report["digital_zoom_applied"] is False and "Apple" in report["digital_zoom_reason"]
    forced = camera_from_exif(apple, digital_zoom="apply")[0]
    assert forced.fx == pytest.approx(2 * F35_26_640x480)


def test_digital_zoom_on_f35_decided_by_focal_plane(tmp_path):
    # Unzoomed f35 26 agrees with the focal plane (480.7 vs 472.2 px): zoom not yet in f35.
    tags = plane_tags({B.FocalLengthIn35mmFilm: 26, B.DigitalZoomRatio: IFDRational(2, 1)})
    camera, report = camera_from_exif(write_jpeg(tmp_path / "a.jpg", exif_tags=tags))
    assert camera.fx == pytest.approx(2 * F35_26_640x480) and report["digital_zoom_applied"]
    # f35 52 is twice the focal-plane focal: the zoom is already in it (even for non-Apple).
    tags[B.FocalLengthIn35mmFilm] = 52
    camera, report = camera_from_exif(write_jpeg(tmp_path / "b.jpg", exif_tags=tags))
    assert camera.fx == pytest.approx(52 * 800 / DIAG_35)
    assert report["digital_zoom_applied"] is False


@pytest.mark.parametrize("ratio", [IFDRational(0, 1), IFDRational(1, 1), IFDRational(1, 0), -2.0])
def test_digital_zoom_unused_or_garbage(tmp_path, ratio):
    tags = {B.FocalLengthIn35mmFilm: 26, B.DigitalZoomRatio: ratio}
    camera, report = camera_from_exif(write_jpeg(tmp_path / "z.jpg", exif_tags=tags))
    assert camera.fx == pytest.approx(F35_26_640x480)
    assert report["digital_zoom"] == 1.0 and report["digital_zoom_applied"] is False


# ---------------------------------------------------------------------- odd EXIF and no EXIF
def test_zero_f35_falls_back_to_focal_plane(tmp_path):
    tags = plane_tags({B.FocalLengthIn35mmFilm: 0})
    camera, report = camera_from_exif(write_jpeg(tmp_path / "z.jpg", exif_tags=tags))
    assert_camera(camera, PLANE_FX, PLANE_FX, 319.5, 239.5, 640, 480)
    assert report["ignored"]["FocalLengthIn35mmFilm"] == "0 (unknown)"


def test_garbage_tags_are_ignored(tmp_path):
    tags = {
        B.FocalLengthIn35mmFilm: "twenty",
        B.FocalLength: IFDRational(1, 0),
        B.FocalPlaneXResolution: b"xx",
        B.FocalPlaneYResolution: -5.0,
        B.DigitalZoomRatio: (1, 2, 3),
        B.ExifImageWidth: 0,
    }
    path = write_jpeg(tmp_path / "g.jpg", exif_tags=tags, ifd0={B.Orientation: 9})
    camera, report = camera_from_exif(path)
    assert camera is None and report["rule"] is None and report["orientation"] == 1
    assert {"FocalLengthIn35mmFilm", "FocalLength"} <= set(report["ignored"])
    json.dumps(report)
    camera, source, full = resolve_camera(path)
    assert source == "default" and full["warning"]
    assert camera == Camera.from_fov(DEFAULT_FOV_X_DEG, 640, 480)


def test_implausible_f35_is_ignored(tmp_path):
    path = write_jpeg(tmp_path / "g.jpg", exif_tags={B.FocalLengthIn35mmFilm: 65535})
    camera, report = camera_from_exif(path)
    assert camera is None and "implausible" in report["ignored"]["FocalLengthIn35mmFilm"]


@pytest.mark.parametrize(
    "blob", [b"Exif\x00\x00garbage", b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff"]
)
def test_corrupt_exif_block(tmp_path, blob):
    path = tmp_path / "c.jpg"
    Image.new("RGB", (32, 24)).save(path, exif=blob)
    camera, report = camera_from_exif(path)
    assert camera is None and report["size"] == [32, 24]


def test_no_exif(tmp_path):
    path = write_jpeg(tmp_path / "plain.jpg", size=(320, 240))
    camera, report = camera_from_exif(path)
    assert camera is None and report["tags"] == {} and report["rule"] is None
    camera, source, full = resolve_camera(path)
    assert source == "default" and camera == Camera.from_fov(DEFAULT_FOV_X_DEG, 320, 240)
    assert "60 degree" in full["warning"]


@pytest.mark.parametrize("content", [None, b"", b"not an image at all"])
def test_unreadable_file_is_one_line_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        camera_from_exif(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(ValueError, match="broken.jpg"):
        resolve_camera(path)
