"""The camera policy (``metricdepth.cameras``): one order, given > annotation > EXIF > default,
and one set of checks, whichever entry point asks: the Python API, the command line, the batch
runner, the web app and training's annotation datasets."""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from conftest import TINY_SPEC, TinyNet, tiny_model
from metricdepth import cli
from metricdepth.batch import run_batch
from metricdepth.camera import DEFAULT_FOV_X_DEG, Camera
from metricdepth.cameras import (
    ASSUMED_FOCAL_TOLERANCE,
    CameraOptions,
    annotation_camera,
    camera_for_image,
    camera_report,
    centred_camera,
    default_camera,
    image_camera_mismatch,
    resolve_camera,
    run_camera_warning,
)
from metricdepth.data.annotations import read_annotations
from metricdepth.data.dataset import AnnotationSource
from metricdepth.data.inputs import InputItem, collect_inputs
from metricdepth.models.registry import DepthModel
from metricdepth.pipeline import CameraMismatchWarning, predict
from test_exif import F35_26_640x480, assert_camera, write_jpeg

pytestmark = pytest.mark.usefixtures("one_thread")

B = ExifTags.Base


# ---------------------------------------------------------------------- resolve_camera
def test_resolve_camera_order(tmp_path):
    path = write_jpeg(
        tmp_path / "a.jpg", exif_tags={B.FocalLengthIn35mmFilm: 26}, ifd0={B.Orientation: 6}
    )
    camera, source, report = resolve_camera(path)
    assert source == "exif" and report["warning"] is None
    assert_camera(camera, F35_26_640x480, F35_26_640x480, 239.5, 319.5, 480, 640)

    camera, source, report = resolve_camera(path, intrinsics=[500, 510, 240, 320])
    assert source == "given" and camera == Camera(500, 510, 240, 320, 480, 640)
    assert report["exif"]["rule"] == "f35_diagonal"  # what EXIF said is still reported
    camera, source, _ = resolve_camera(path, intrinsics="500,510,240,320")
    assert source == "given" and camera == Camera(500, 510, 240, 320, 480, 640)
    given = Camera(400, 400, 239.5, 319.5, 480, 640)
    assert resolve_camera(path, intrinsics=given)[:2] == (given, "given")

    camera, source, _ = resolve_camera(path, focal=600.0)
    assert source == "given" and camera == Camera(600, 600, 239.5, 319.5, 480, 640)

    camera, source, report = resolve_camera(path, annotation=[450, 460, 240, 300])
    assert source == "annotation" and camera == Camera(450, 460, 240, 300, 480, 640)
    assert report["rule"] == "annotation cam_in" and report["warning"] is None
    assert resolve_camera(path, focal=600.0, annotation=[450, 460, 240, 300])[1] == "given"


def test_resolve_camera_from_size_and_errors(tmp_path):
    camera, source, report = resolve_camera((640, 480))
    assert source == "default" and report["exif"] is None
    assert camera.fov_x_deg == pytest.approx(DEFAULT_FOV_X_DEG)
    assert camera == default_camera(640, 480)
    assert resolve_camera((640, 480), focal=500)[0] == Camera(500, 500, 319.5, 239.5, 640, 480)
    assert centred_camera(500, 640, 480) == Camera(500, 500, 319.5, 239.5, 640, 480)
    with pytest.raises(ValueError, match="not both"):
        resolve_camera((640, 480), intrinsics=[1, 1, 1, 1], focal=1)
    with pytest.raises(ValueError, match="4 comma-separated"):
        resolve_camera((640, 480), intrinsics="1,2,3")
    with pytest.raises(ValueError, match="focal"):
        resolve_camera((640, 480), focal=-3)
    with pytest.raises(ValueError, match="640x480"):
        resolve_camera((640, 480), intrinsics=Camera(1, 1, 1, 1, 480, 640))
    with pytest.raises(ValueError, match=r"^annotation cam_in: principal point \(700, 1\)"):
        resolve_camera((640, 480), annotation=[500, 500, 700, 1])


def test_camera_report_text(tmp_path):
    tags = {B.FocalLengthIn35mmFilm: 26, B.FocalLength: IFDRational(17, 4)}
    path = write_jpeg(tmp_path / "a.jpg", exif_tags=tags, ifd0={B.Orientation: 6})
    text = camera_report(path)
    for expected in (
        "FocalLengthIn35mmFilm: 26 mm",
        "FocalLength: 4.25 mm",
        "orientation 6",
        "f35_diagonal",
        "camera source: exif",
        "fx=480.74 fy=480.74 cx=239.50 cy=319.50",
        "size 480x640",
        "degrees",
    ):
        assert expected in text, expected
    assert "camera source: given" in camera_report(path, focal=500)
    default = camera_report(write_jpeg(tmp_path / "b.jpg"))
    assert "camera source: default" in default and "warning:" in default


def test_camera_options_check_once_and_name_the_flags():
    assert CameraOptions.parse("100,90,79.5,59.5@80x60", None).intrinsics == (
        100.0, 90.0, 79.5, 59.5, 80.0, 60.0,
    )  # fmt: skip
    assert CameraOptions.parse(None, "12.5").focal_px == 12.5
    assert CameraOptions() == CameraOptions.parse(None, None)
    for args, flags, message in [
        (("1,1,1,1", 5.0), True, "give either --intrinsics or --focal, not both"),
        (("1,1,1,1", 5.0), False, "give either intrinsics or focal, not both"),
        ((None, 0.0), True, "--focal must be a finite number of pixels > 0, got 0.0"),
        ((None, "wide"), False, "focal must be a finite number of pixels > 0, got 'wide'"),
        (("0,1,1,1", None), True, "intrinsics '0,1,1,1': fx must be a finite number > 0"),
        (("1,2,3", None), True, "intrinsics must be 4 comma-separated numbers"),
    ]:
        with pytest.raises(ValueError) as caught:
            CameraOptions.parse(*args, flags=flags)
        assert str(caught.value).startswith(message), str(caught.value)
    with pytest.raises(ValueError, match="not both"):
        CameraOptions((1.0, 1.0, 1.0, 1.0), 5.0)
    with pytest.raises(ValueError, match=r"intrinsics: expected \[fx, fy, cx, cy\]"):
        CameraOptions((1.0, 1.0, 1.0))


# ---------------------------------------------------------------------- one order everywhere
#: the photo: 64x48 stored, EXIF orientation 6 (shown 48x64), FocalLengthIn35mmFilm 26 mm
STORED, SHOWN = (64, 48), (48, 64)
GIVEN = [40.0, 41.0, 23.0, 31.0]  # fx, fy, cx, cy of the image as displayed
FOCAL = 37.5
CAM_IN = [44.0, 45.0, 24.0, 30.5]

#: case -> (run intrinsics, run focal, annotation cam_in, EXIF?) -> expected source
CASES = {
    "intrinsics beat annotation and EXIF": (GIVEN, None, CAM_IN, True, "given"),
    "focal beats annotation and EXIF": (None, FOCAL, CAM_IN, True, "given"),
    "annotation beats EXIF": (None, None, CAM_IN, True, "annotation"),
    "EXIF beats the default": (None, None, None, True, "exif"),
    "the default": (None, None, None, False, "default"),
}


def photo(folder: Path, exif: bool) -> Path:
    """A random 64x48 JPEG turned by EXIF orientation 6, with a 26 mm f35 focal or none."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(3).integers(0, 255, (STORED[1], STORED[0], 3), np.uint8)
    exif_block = Image.Exif()
    exif_block[B.Orientation] = 6
    if exif:
        exif_block.get_ifd(ExifTags.IFD.Exif)[B.FocalLengthIn35mmFilm] = 26
    path = folder / ("exif.jpg" if exif else "plain.jpg")
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif_block)
    return path


def annotation_file(folder: Path, image: Path, cam_in, *, depth: bool = False) -> Path:
    entry = {"rgb": image.name}
    if cam_in is not None:
        entry["cam_in"] = cam_in
    if depth:
        depth_mm = np.full((SHOWN[1], SHOWN[0]), 2000, np.uint16)  # as displayed
        Image.fromarray(depth_mm).save(folder / "depth.png")
        entry.update(depth="depth.png", depth_scale=1000.0)
    path = folder / f"{image.stem}.annotations.json"
    path.write_text(json.dumps({"files": [entry]}))
    return path


def expected(image: Path, intrinsics, focal, cam_in) -> tuple[Camera, str]:
    camera, source, _ = resolve_camera(image, intrinsics=intrinsics, focal=focal, annotation=cam_in)
    assert camera.size == SHOWN
    return camera, source


def cli_predict(monkeypatch, capsys, *args) -> dict:
    """``metricdepth predict ARGS --out OUT`` in this process; the one record it writes."""
    out = Path(args[-1])
    monkeypatch.setattr(sys, "argv", ["metricdepth", "predict", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code in (0, None), capsys.readouterr().err
    (record,) = [p for p in out.rglob("*.json")]
    return json.loads(record.read_text())


def record_camera(record: dict) -> tuple[Camera, str]:
    return Camera(**record["camera"]), record["camera_source"]


@pytest.mark.parametrize("case", list(CASES))
def test_every_entry_point_picks_the_same_camera_and_source(tmp_path, monkeypatch, capsys, case):
    """For the same inputs the Python API, ``metricdepth predict`` (a file, an annotation
    file), the batch runner, the web app and training's annotation datasets end in the same
    ``Camera`` and source; an entry point that cannot take an input (the API and the web take
    no annotation, training takes no EXIF and no run-wide camera) is left out of the cases
    that need it."""
    intrinsics, focal, cam_in, exif, source = CASES[case]
    image = photo(tmp_path / "in", exif)
    want = expected(image, intrinsics, focal, cam_in)
    assert want[1] == source
    got: dict[str, tuple[Camera, str]] = {}
    model = tiny_model()

    # the batch runner: an item with the annotation's cam_in, the run's camera
    item = InputItem(image, "item", None if cam_in is None else tuple(cam_in))
    run_batch(
        model, [item], tmp_path / "batch", set(), intrinsics=intrinsics, focal=focal,
        progress=False,
    )  # fmt: skip
    got["batch"] = record_camera(json.loads((tmp_path / "batch" / "item.json").read_text()))

    # the command line: the annotation file when there is one, else the photo itself
    options = []
    if intrinsics is not None:
        options = ["--intrinsics", ",".join(map(str, intrinsics))]
    elif focal is not None:
        options = ["--focal", str(focal)]
    source_arg = image if cam_in is None else annotation_file(image.parent, image, cam_in)
    record = cli_predict(monkeypatch, capsys, source_arg, *options, "--out", tmp_path / "cli")
    got["cli"] = record_camera(record)

    if cam_in is None or source == "given":  # (given beats an annotation they cannot take)
        # the Python API: a Camera, intrinsics or a focal, else EXIF, else the default
        given = intrinsics if intrinsics is not None else focal
        prediction = predict(model, image, given)
        got["api"] = (prediction.camera, prediction.camera_source)
        got["api, PIL image"] = camera_for_image(
            Image.open(image), *SHOWN, intrinsics=intrinsics, focal=focal
        )
        # the web app
        pytest.importorskip("fastapi")
        from fastapi.testclient import TestClient

        from metricdepth.web.app import create_app

        form = {}
        if intrinsics is not None:
            form["intrinsics"] = ",".join(map(str, intrinsics))
        elif focal is not None:
            form["focal"] = str(focal)
        with TestClient(create_app(model, work_dir=tmp_path / "web")) as client:
            files = {"image": ("photo.jpg", image.read_bytes(), "image/jpeg")}
            answer = client.post("/api/predict", files=files, data=form)
        assert answer.status_code == 200, answer.text
        got["web"] = record_camera(answer.json())

    if intrinsics is None and focal is None and cam_in is not None:
        # training: the annotation camera (a dataset has no run-wide camera and no EXIF step)
        json_path = annotation_file(image.parent, image, cam_in, depth=True)
        got["training"] = (AnnotationSource(json_path).frame(0).camera, "annotation")

    assert len(got) >= 3
    for name, (camera, found) in got.items():
        assert found == want[1], name
        assert camera == want[0], name


# ---------------------------------------------------------------------- the same checks
def test_training_refuses_the_annotation_cameras_predict_refuses(tmp_path, monkeypatch, capsys):
    """A ``cam_in`` whose principal point lies outside the image: ``predict`` (the batch path)
    skips the image, training refuses the frame, with the same line; a non-positive focal:
    both refuse the annotation file, with the same line."""
    image = photo(tmp_path / "in", exif=True)
    outside = [44.0, 45.0, 400.0, 300.0]
    message = "annotation cam_in: principal point (400, 300) lies outside the 48x64 image"

    summary = run_batch(
        tiny_model(), [InputItem(image, "item", tuple(outside))], tmp_path / "out", set(),
        keep_going=True, progress=False,
    )  # fmt: skip
    (failed,) = summary.failed
    assert failed.startswith(f"{image}: {message}")
    with pytest.raises(ValueError) as caught:
        AnnotationSource(annotation_file(image.parent, image, outside, depth=True)).frame(0)
    assert str(caught.value) == failed.removeprefix(f"{image}: ")

    for bad in ([0.0, 45.0, 24.0, 30.5], [44.0, -1.0, 24.0, 30.5]):
        json_path = annotation_file(image.parent, image, bad, depth=True)
        with pytest.raises(ValueError) as at_predict:
            collect_inputs([json_path])
        with pytest.raises(ValueError) as at_training:
            AnnotationSource(json_path)
        assert "'cam_in' must be [fx, fy, cx, cy]" in str(at_predict.value)
        assert str(at_training.value) == str(at_predict.value)
        entry = read_annotations(annotation_file(image.parent, image, CAM_IN))[0]
        with pytest.raises(ValueError, match="annotation cam_in: f[xy] must be a finite number"):
            annotation_camera(bad, *SHOWN)  # a cam_in that skipped the file check
        assert annotation_camera(entry.intrinsics, *SHOWN) == Camera(*CAM_IN, *SHOWN)


# ---------------------------------------------------------------------- assumed_focal_px
def test_the_batch_runner_counts_images_whose_camera_does_not_fit(tmp_path, capsys):
    """``run_batch`` checks each image's camera with ``image_camera_mismatch`` for a model
    trained on an assumed camera: it counts those that do not fit and keeps the first's line;
    ``metricdepth predict`` says so in one ``warning:`` line after the run (not when the run's
    own camera was given: that was warned about before). A model with real intrinsics: none."""
    image = photo(tmp_path / "in", exif=False)
    items = [
        InputItem(image, "fits", (102.0, 102.0, 31.5, 23.5)),  # +2 %
        InputItem(image, "wide", (150.0, 150.0, 31.5, 23.5)),  # +50 %
        InputItem(image, "long", (60.0, 60.0, 31.5, 23.5)),  # -40 %
    ]
    model = DepthModel(replace(TINY_SPEC, assumed_focal_px=100.0), TinyNet()).eval()
    summary = run_batch(model, items, tmp_path / "out", set(), progress=False)
    assert (summary.done, summary.camera_mismatch) == (3, 2)
    assert summary.mismatch_example == image_camera_mismatch(
        model.spec, Camera(150.0, 150.0, 31.5, 23.5, *SHOWN)
    )
    assert "this camera's focal is 150 px (+50%)" in summary.mismatch_example
    cli.warn_camera_mismatch(summary, given=False)
    line = capsys.readouterr().err
    assert line == (
        "warning: 2 image(s) had a camera that does not fit the model; the first: "
        f"{summary.mismatch_example}\n"
    )
    cli.warn_camera_mismatch(summary, given=True)
    assert capsys.readouterr().err == ""
    plain = run_batch(tiny_model(), items, tmp_path / "plain", set(), progress=False)
    assert (plain.done, plain.camera_mismatch, plain.mismatch_example) == (3, 0, None)


def test_the_per_image_assumed_focal_check_agrees_with_predict():
    """``image_camera_mismatch`` (the batch runner's per-image check) says a camera does not
    fit exactly when ``predict`` warns, for either focal mode."""
    spec = replace(TINY_SPEC, assumed_focal_px=100.0)
    image = np.zeros((48, 64, 3), np.uint8)
    cameras = [
        Camera(104.0, 104.0, 31.5, 23.5, 64, 48),  # +4 %: fits
        Camera(150.0, 150.0, 31.5, 23.5, 64, 48),  # +50 %
        Camera(96.0, 112.0, 31.5, 23.5, 64, 48),  # mean +4 %, fx -4 %: fits either way
        Camera(90.0, 112.0, 31.5, 23.5, 64, 48),  # mean +1 %, fx -10 %
    ]
    verdicts = {}
    for mode in ("mean", "fx"):
        model = DepthModel(replace(spec, focal_mode=mode), TinyNet()).eval()
        for index, camera in enumerate(cameras):
            message = image_camera_mismatch(model.spec, camera)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                predict(model, image, camera)
            warned = [w for w in caught if issubclass(w.category, CameraMismatchWarning)]
            assert (message is None) == (not warned), (mode, camera)
            if message is not None:
                assert str(warned[0].message) == message
            verdicts[mode, index] = message is not None
    assert verdicts == {
        ("mean", 0): False, ("mean", 1): True, ("mean", 2): False, ("mean", 3): False,
        ("fx", 0): False, ("fx", 1): True, ("fx", 2): False, ("fx", 3): True,
    }  # fmt: skip
    mismatch = image_camera_mismatch(spec, cameras[1])
    assert "assumed focal of 100 px, but this camera's focal is 150 px (+50%)" in mismatch
    assert image_camera_mismatch(spec, cameras[3], "fx").endswith("(at its training resolution)")
    assert image_camera_mismatch(TINY_SPEC, cameras[1]) is None  # real intrinsics: never
    edge = 100.0 * (1 + ASSUMED_FOCAL_TOLERANCE)  # the tolerance, either side of it
    assert image_camera_mismatch(spec, centred_camera(edge - 0.01, 64, 48)) is None
    assert image_camera_mismatch(spec, centred_camera(edge + 0.01, 64, 48)) is not None


def test_the_run_wide_check_before_a_batch():
    spec = replace(TINY_SPEC, assumed_focal_px=100.0)
    assert "150 px (+50%)" in run_camera_warning(spec, None, 150.0)
    assert run_camera_warning(spec, (99.0, 101.0, 31.5, 23.5), None) is None  # mean 100
    assert run_camera_warning(spec, (99.0, 101.0, 31.5, 23.5), None, "fx") is None  # fx -1 %
    assert "90 px (-10%)" in run_camera_warning(spec, (90.0, 112.0, 31.5, 23.5), None, "fx")
    reminder = run_camera_warning(spec, None, None)
    assert "images get their own cameras here" in reminder and "--focal 100" in reminder
    assert run_camera_warning(TINY_SPEC, None, 150.0) is None
    assert math.isclose(default_camera(64, 48).fov_x_deg, DEFAULT_FOV_X_DEG)
