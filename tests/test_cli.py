"""The command line: real processes, real files, one error line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from metricdepth.cli import EXAMPLE_INTRINSICS


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metricdepth", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0 and "canonical" in result.stdout


def test_canonical_on_the_bundled_example_writes_canvas_and_record(tmp_path):
    result = run("canonical", "--model", "metric3d-vit-small", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "example_nyu.canonical.json").read_text())
    assert record["camera_source"] == "annotation"
    assert record["record"]["pad_tblr"] == [0, 0, 121, 122]
    fx, fy = EXAMPLE_INTRINSICS[:2]
    assert record["record"]["f_eff_px"] == pytest.approx((fx + fy) / 2 * 616 / 480, rel=1e-12)
    canvas = cv2.imread(str(tmp_path / "example_nyu.canonical.png"))[:, :, ::-1]
    assert canvas.shape == (616, 1064, 3)
    assert canvas[300, 0].tolist() == [124, 116, 104]  # Metric3D's uint8 mean padding
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "example_nyu.canonical.json",
        "example_nyu.canonical.png",
    ]


def test_no_intrinsics_announces_the_default(tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((30, 40, 3), np.uint8))
    result = run("canonical", str(image), "--input-size", "60x80", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "assuming a 60 degree" in result.stderr
    record = json.loads((tmp_path / "a.canonical.json").read_text())
    assert record["camera_source"] == "default"
    assert record["record"]["camera"]["fx"] == pytest.approx(20 / np.tan(np.radians(30)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--intrinsics", "1,2,3"], "intrinsics must be 4 comma-separated numbers fx,fy,cx,cy"),
        (["--intrinsics", "0,500,320,240"], "fx must be a finite number > 0, got 0.0"),
        (["--focal", "nan"], "focal must be a finite number of pixels > 0, got nan"),
        (["--input-size", "616"], "--input-size must be HEIGHTxWIDTH"),
        (["--focal-mode", "fy"], "focal mode must be one of mean, fx"),
        (["--pad", "left"], "pad_placement must be one of center, bottom_right"),
        (["missing.jpg"], "missing.jpg"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = run("canonical", *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_not_an_image_is_refused(tmp_path):
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not an image")
    result = run("canonical", str(bogus))
    assert result.returncode == 2 and "notes.jpg" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_output_path_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("keep me")
    result = run("canonical", "--out", str(blocker))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert blocker.read_text() == "keep me"
    assert Path(blocker).is_file()


def test_synth_into_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("keep me")
    result = run("synth", str(blocker), "--n", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {blocker} exists and is not a folder"
    assert blocker.read_text() == "keep me"


# ------------------------------------------------------------------------------ predict
from conftest import PARITY, PARITY_IMAGES, needs_parity  # noqa: E402


@pytest.fixture(scope="module")
def convnext_pth(tmp_path_factory, convnext_tiny_weights):
    import torch

    path = tmp_path_factory.mktemp("weights") / "convtiny_hourglass_v1.pth"
    torch.save({"model_state_dict": convnext_tiny_weights}, path)
    return path


@needs_parity
def test_predict_reproduces_the_official_outputs_on_all_fixture_images(tmp_path, convnext_pth):
    """End to end through the CLI: an annotation JSON supplies each image's intrinsics."""
    data = tmp_path / "data"
    data.mkdir()
    files = []
    for name, intrinsics in PARITY_IMAGES.values():
        (data / name).symlink_to(PARITY / name)
        files.append({"rgb": name, "cam_in": list(intrinsics)})
    (data / "annotations.json").write_text(json.dumps({"files": files}))
    out = tmp_path / "out"
    result = run(
        "predict", str(data / "annotations.json"), "--model", "metric3d-convnext-tiny",
        "--weights", str(convnext_pth), "--focal-mode", "fx", "--out", str(out),
        "--save", "png16,confidence,ply,vis",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for image_id, (name, _) in PARITY_IMAGES.items():
        stem = Path(name).stem
        depth = np.load(out / f"{stem}.depth.npy")
        reference = np.load(PARITY / f"convnext_tiny__{image_id}.npz")["depth_final"]
        np.testing.assert_allclose(depth, reference, rtol=0, atol=2e-3)
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["camera_source"] == "annotation"
        assert record["model"] == "metric3d-convnext-tiny"
        assert set(record["files"]) == {"depth", "png16", "confidence", "ply", "vis"}
        png = cv2.imread(str(out / f"{stem}.depth.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16
        np.testing.assert_allclose(png / 1000.0, np.clip(depth, 0, 65.535), atol=5e-4)
        assert (out / f"{stem}.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@needs_parity
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "/nonexistent/w.pth"], "weights file not found: /nonexistent/w.pth"),
        (["--intrinsics", "700,700,600"], "intrinsics must be 4 comma-separated numbers"),
        (["--save", "depth,mesh"], "--save: unknown kind(s) mesh"),
        (["--model", "metric3d-vit-small"], "does not match the official Metric3D v2 ViT"),
    ],
)
def test_predict_bad_input_is_one_line_and_writes_nothing(tmp_path, convnext_pth, args, message):
    options = {"--model": "metric3d-convnext-tiny", "--weights": str(convnext_pth)}
    for key, value in zip(args[::2], args[1::2], strict=True):
        options[key] = value
    flat = [part for pair in options.items() for part in pair]
    image = PARITY / PARITY_IMAGES["nyu"][0]
    result = run("predict", str(image), *flat, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


@needs_parity
def test_predict_unreadable_image(tmp_path, convnext_pth):
    bogus = tmp_path / "broken.png"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    model = ["--model", "metric3d-convnext-tiny", "--weights", str(convnext_pth)]
    result = run("predict", str(bogus), *model, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "broken.png" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_camera_command_reads_the_exif_focal(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26  # FocalLengthIn35mmFilm
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (640, 480), (90, 120, 150)).save(path, exif=exif)
    result = run("camera", str(path))
    assert result.returncode == 0, result.stderr
    expected = 26 * np.hypot(640, 480) / np.hypot(36, 24)  # the diagonal rule: 480.74 px
    assert f"fx={expected:.2f}" in result.stdout and "camera source: exif" in result.stdout


@needs_parity
def test_measure_command(tmp_path, convnext_pth):
    image = PARITY / PARITY_IMAGES["nyu"][0]
    intrinsics = ",".join(map(str, PARITY_IMAGES["nyu"][1]))
    base = [str(image), "--model", "metric3d-convnext-tiny", "--weights", str(convnext_pth)]
    result = run("measure", *base, "--intrinsics", intrinsics, "--points", "100,200,500,210")
    assert result.returncode == 0, result.stderr
    assert " m" in result.stdout and "given" in result.stdout
    bad = run("measure", *base, "--points", "100,200,900,210")  # outside the 640x480 image
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr
