"""How much to trust a result, and what made it: intended use in every model spec, the one
``warning:`` line of the CLI, the provenance and timings in ``S.json`` (every batch path), and
the picture ``S.vis.png`` (colour bar in metres, near and far labelled, the warning band)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from metricdepth import __version__
from metricdepth.batch import run_batch
from metricdepth.cli import app
from metricdepth.data.inputs import collect_inputs
from metricdepth.models.registry import ASSETS, MODELS, load_model, provenance, save_model
from metricdepth.models.spec import REAL_PHOTOS_COMMAND, ModelSpec
from metricdepth.vis import (
    BAND_RGB,
    WARNING_BAND_RGB,
    bar_labels,
    inverse_depth_range,
    turbo_lut,
    vis_layout,
    visualization,
)

BUNDLED = ASSETS / "metricdepth-small.safetensors"
EXAMPLE = ASSETS / "example_nyu.jpg"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trust_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "For real photos:" in line]


# ---------------------------------------------------------------- intended use in the spec
def test_every_model_states_its_intended_use():
    bundled = load_model().spec
    assert bundled.real_photos is False and "not for real photographs" in bundled.intended_use
    assert "synthetic" in bundled.intended_use
    warning = bundled.trust_warning()
    assert warning.startswith("metricdepth-small") and REAL_PHOTOS_COMMAND in warning
    for spec, _ in MODELS.values():
        assert spec.real_photos is True and spec.trust_warning() is None
        assert "real photographs" in spec.use_line()
    # the bundled file's spec and its .json copy agree
    copy = ModelSpec.from_json((ASSETS / "metricdepth-small.json").read_text())
    assert copy == bundled


def test_a_spec_written_before_intended_use_still_loads_and_says_what_is_known():
    old = load_model().spec.to_dict()
    del old["real_photos"], old["intended_use"]
    assert ModelSpec.from_dict(old).real_photos is False  # the bundled model, by its name
    official = MODELS["metric3d-vit-small"][0].to_dict()
    del official["real_photos"], official["intended_use"]
    assert ModelSpec.from_dict(official).real_photos is True
    unknown = {**old, "name": "someone-elses"}
    spec = ModelSpec.from_dict(unknown)
    assert spec.real_photos is None and spec.use_line() == "not stated"
    assert "does not state" in spec.trust_warning()
    with pytest.raises(ValueError, match="real_photos"):
        ModelSpec.from_dict({**old, "real_photos": "yes"})


def test_trained_models_get_an_intended_use_from_their_config(tmp_path):
    from metricdepth.train.config import config_from_dict
    from metricdepth.train.loop import model_spec

    synthetic = config_from_dict({"name": "a", "datasets": [{"kind": "synthetic"}]})
    spec = model_spec(synthetic)
    assert spec.real_photos is False and "synthetic scenes only" in spec.intended_use
    assert spec.trust_warning() is not None
    annotations = tmp_path / "mine.json"
    annotations.write_text("{}")
    mixed = config_from_dict(
        {"name": "b", "datasets": [{"kind": "annotations", "path": str(annotations)}]}
    )
    assert model_spec(mixed).real_photos is None
    assert model_spec(mixed).intended_use == "trained on mine.json"
    stated = config_from_dict(
        {
            "name": "c",
            "datasets": [{"kind": "annotations", "path": str(annotations)}],
            "real_photos": True,
            "intended_use": "indoor phone photos",
        }
    )
    assert (model_spec(stated).real_photos, model_spec(stated).intended_use) == (
        True,
        "indoor phone photos",
    )
    assert model_spec(stated).trust_warning() is None
    with pytest.raises(ValueError, match="real_photos"):
        config_from_dict({"name": "d", "datasets": [{"kind": "synthetic"}], "real_photos": 1})


# ---------------------------------------------------------------- the command line
def test_predict_warns_once_and_the_record_identifies_what_made_it(tmp_path):
    out = tmp_path / "out"
    given = str(EXAMPLE.relative_to(Path.cwd())) if EXAMPLE.is_relative_to(Path.cwd()) else None
    image = given or str(EXAMPLE)
    result = subprocess.run(
        [sys.executable, "-m", "metricdepth", "predict", image, "--out", str(out),
         "--save", "depth,vis"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(trust_lines(result.stderr)) == 1
    line = trust_lines(result.stderr)[0]
    assert line in warnings and "not for real photographs" in line
    assert REAL_PHOTOS_COMMAND in line
    record = json.loads((out / "example_nyu.json").read_text())
    assert record["metricdepth_version"] == __version__
    assert record["model"] == "metricdepth-small"
    assert record["weights_sha256"] == sha256(BUNDLED)
    assert record["input"] == image  # as given on the command line
    assert record["intended_use"]["real_photos"] is False
    assert record["camera_source"] == "default"  # no intrinsics, no EXIF: the camera is a guess
    camera_line = record["warnings"][1]
    assert record["warnings"] == [line.removeprefix("warning: "), camera_line]
    assert camera_line.startswith("camera assumed:") and "60 degree" in camera_line
    timings = record["timings_ms"]
    assert set(timings) == {"pre", "forward", "post"} and all(v > 0 for v in timings.values())
    picture = np.asarray(Image.open(out / "example_nyu.vis.png").convert("RGB"))
    assert picture.shape[1] == 2 * 640 and picture.shape[0] > 480
    band = picture[vis_layout(480, 640, 1).warning[0] :]
    assert (band == WARNING_BAND_RGB).all(axis=-1).mean() > 0.5  # the warning band is drawn


def test_an_assumed_camera_is_a_warning_in_the_record_and_picture_and_a_given_one_is_not(
    tmp_path,
):
    model = load_model()
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), np.uint8)).save(image)
    for name, focal in (("default", None), ("given", 50.0)):
        out = tmp_path / name
        run_batch(model, collect_inputs([image]), out, {"depth", "vis"}, focal=focal,
                  progress=False)  # fmt: skip
        record = json.loads((out / "a.json").read_text())
        assert record["camera_source"] == name
        camera_lines = [w for w in record["warnings"] if w.startswith("camera assumed: ")]
        assert len(camera_lines) == (name == "default")
        if camera_lines:  # fx of a 60 degree field of view on a 40 px wide image
            assert f"fx {20 / np.tan(np.radians(30)):.1f} px" in camera_lines[0]
    # the warning band grows by the camera's line
    heights = [Image.open(tmp_path / name / "a.vis.png").height for name in ("default", "given")]
    assert heights[0] > heights[1]


def test_a_model_for_real_photos_gives_no_warning_and_records_its_own_file(tmp_path):
    bundled = load_model()
    spec = dataclasses.replace(bundled.spec, name="real-test", real_photos=True, intended_use="x")
    path = save_model(bundled.net, spec, tmp_path / "real.safetensors")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", "--model", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert trust_lines(result.stderr) == []
    record = json.loads((out / "example_nyu.json").read_text())
    assert record["warnings"] == [] and record["intended_use"] == {"real_photos": True, "text": "x"}
    assert record["weights_sha256"] == sha256(path) != sha256(BUNDLED)


def test_measure_warns_and_models_lists_the_intended_use():
    result = CliRunner().invoke(app, ["measure", str(EXAMPLE), "--points", "100,400,500,400"])
    assert result.exit_code == 0, result.output
    assert len(trust_lines(result.stderr)) == 1 and " m" in result.stdout
    listing = CliRunner().invoke(app, ["models"])
    assert listing.exit_code == 0
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert lines["metricdepth-small"].endswith(
        "for: synthetic scenes only, not for real photographs"
    )
    for name in MODELS:
        assert "for: real photographs" in lines[name]


# ---------------------------------------------------------------- records on every batch path
@pytest.mark.parametrize("workers", [0, 2])  # 2: DataLoader worker processes
def test_every_batch_path_records_version_weights_input_and_timings(tmp_path, workers):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(images / f"{k}.png")
    model = load_model()
    out = tmp_path / "out"
    run_batch(model, collect_inputs([images]), out, {"depth", "vis"}, workers=workers,
              progress=False)  # fmt: skip
    made_by = provenance(model)
    for k in range(3):
        record = json.loads((out / f"{k}.json").read_text())
        for key in ("metricdepth_version", "model", "weights_sha256", "intended_use"):
            assert record[key] == made_by[key], key
        # the model's warning, then the assumed camera's (these images have no camera)
        assert record["warnings"][:-1] == made_by["warnings"]
        assert record["warnings"][-1].startswith("camera assumed: ")
        assert record["weights_sha256"] == sha256(BUNDLED)
        assert record["input"] == str(images / f"{k}.png")
        timings = record["timings_ms"]
        assert set(timings) == {"pre", "forward", "post"}
        assert all(isinstance(v, float) and v > 0 for v in timings.values()), timings


# ---------------------------------------------------------------- the picture
def kitti_like_depth() -> tuple[np.ndarray, np.ndarray]:
    """A 375x1242 photo and a depth that grows from 2 m (bottom) to 60 m (top)."""
    rows = np.linspace(60.0, 2.0, 375, dtype=np.float32)[:, None]
    depth = np.repeat(rows, 1242, axis=1)
    photo = np.random.default_rng(3).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    return photo, depth


def ink_rows(region: np.ndarray) -> np.ndarray:
    """Rows of ``region`` holding light text pixels on the dark band."""
    return np.flatnonzero((region.min(axis=-1) > 160).any(axis=1))


def test_the_picture_has_a_colour_bar_in_metres_legible_on_a_kitti_frame():
    photo, depth = kitti_like_depth()
    picture = visualization(photo, depth)
    layout = vis_layout(375, 1242)
    assert picture.shape == (layout.height, 2 * 1242, 3) and layout.warning[0] == layout.height
    np.testing.assert_array_equal(picture[:375, :1242], photo)
    # the bar: every column a colour of the map, in order from far (cold) to near (warm)
    y0, y1, x0, x1 = layout.bar
    assert x1 - x0 > 1000 and y1 - y0 >= 14
    bar = picture[y0:y1, x0:x1].astype(int)
    assert (bar == bar[:1]).all()  # the same in every row
    lut = turbo_lut().astype(int)
    index = np.argmin(((bar[0][:, None, :] - lut[None]) ** 2).sum(-1), axis=1)
    assert index[0] == 0 and index[-1] == 255 and (np.diff(index) >= 0).all()
    assert len(np.unique(index)) > 200
    # near and far labelled, in metres, from the colour map's range; text at least 14 px tall
    low, high = inverse_depth_range(depth)
    far, middle, near = bar_labels(depth)
    assert far == f"far {1 / low:.1f} m" and near == f"near {1 / high:.2f} m"
    assert middle.endswith(" m") and float(middle.split()[0]) == pytest.approx(
        2 / (low + high), abs=0.01
    )
    ly0, ly1, lx0, lx1 = layout.labels
    labels = picture[ly0:ly1, lx0:lx1]
    width = lx1 - lx0
    for part in (labels[:, : width // 4], labels[:, 3 * width // 8 : 5 * width // 8],
                 labels[:, 3 * width // 4 :]):  # fmt: skip
        rows = ink_rows(part)
        assert rows.size and rows[-1] - rows[0] + 1 >= 14, rows
    caption = picture[layout.caption[0] : layout.caption[1], layout.caption[2] : layout.caption[3]]
    assert ink_rows(caption).size >= 14
    # the rest of the band is the band's colour
    assert (picture[375:y0, 1242:] == BAND_RGB).all()


def test_the_picture_scales_its_text_and_shows_a_warning_band():
    photo, depth = kitti_like_depth()
    plain = visualization(photo, depth)
    warned = visualization(photo, depth, ["some model is not meant for real photographs"])
    layout = vis_layout(375, 1242, 1)
    assert warned.shape[0] == layout.height > plain.shape[0]
    np.testing.assert_array_equal(warned[: plain.shape[0]], plain)
    band = warned[layout.warning[0] : layout.warning[1]]
    assert (band == WARNING_BAND_RGB).all(axis=-1).mean() > 0.8
    assert (band.max(axis=-1) < 60).any()  # dark text on it
    small, large = vis_layout(96, 128), vis_layout(1080, 1920)
    assert small.font_px >= 12 and large.font_px > 2 * vis_layout(375, 1242).font_px


def test_file_sha256_needs_no_file_digest(tmp_path, monkeypatch):
    """Python 3.10 (requires-python) has no ``hashlib.file_digest``: hashing works without it,
    over more than one read chunk."""
    from metricdepth.models.registry import file_sha256

    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    path = tmp_path / "weights.bin"
    path.write_bytes(np.random.default_rng(0).bytes((1 << 20) * 2 + 123))
    assert file_sha256(path) == sha256(path)
