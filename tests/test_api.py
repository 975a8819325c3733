"""The two-name Python API: ``metricdepth.load_model`` and ``metricdepth.predict``, and the
low-level path's check that an input was prepared in the model's own canonical space."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

import metricdepth
from metricdepth import Camera, CanonicalSpace, from_canonical, load_image, prepare_input
from metricdepth.camera import DEFAULT_FOV_X_DEG
from metricdepth.cameras import resolve_camera
from metricdepth.io import rgb_from_pil

pytestmark = pytest.mark.usefixtures("one_thread")

NYU = (518.8579, 519.46961, 325.58245, 253.73617)


@pytest.fixture(scope="module")
def model():
    return metricdepth.load_model()


@pytest.fixture(scope="module")
def photo():
    return metricdepth.example_image()


@pytest.fixture(scope="module")
def given(model, photo):
    return metricdepth.predict(model, photo, Camera.from_intrinsics(NYU, 640, 480))


def test_the_two_names_are_the_pipeline_functions():
    module = importlib.import_module("metricdepth.pipeline")
    assert metricdepth.predict is module.predict  # the function, not a module
    assert metricdepth.load_model is module.load_model
    assert metricdepth.Prediction is module.Prediction
    assert {"load_model", "predict", "Prediction", "example_image"} <= set(metricdepth.__all__)


def test_load_model_default_is_the_bundled_model(model):
    assert model.spec.name == "metricdepth-small"
    assert (model.spec.space.focal_px, model.spec.space.input_hw) == (250.0, (96, 128))


def test_predict_returns_what_the_docs_promise(given):
    assert isinstance(given, metricdepth.Prediction)
    assert given.depth_m.shape == (480, 640) and given.depth_m.dtype == np.float32
    assert given.camera == Camera.from_intrinsics(NYU, 640, 480)
    assert given.camera_source == "given"
    assert given.normal is None and given.confidence is None  # the bundled model has neither
    points = given.points()
    assert points.shape == (480, 640, 3)
    np.testing.assert_array_equal(points[..., 2], given.depth_m)  # z is the depth
    assert given.record.canonical_focal_px == 250.0 and given.record.input_hw == (96, 128)
    assert given.model == "metricdepth-small"


def test_prediction_timings_are_the_records_schema(given):
    """One timings schema everywhere: ``timings_ms`` with ``pre``, ``forward``, ``post``."""
    assert set(given.timings_ms) == {"pre", "forward", "post"}
    assert all(value > 0 for value in given.timings_ms.values())
    summary = given.summary()
    assert "timings_s" not in summary
    assert summary["timings_ms"] == {k: round(v, 3) for k, v in given.timings_ms.items()}


def test_a_path_a_pil_image_and_an_array_give_the_same_depth(model, photo, given):
    """A path and a PIL image share io's decoder and the array is those pixels: the same
    pixels and camera through the same code, so equal to the bit."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    for image in (Image.open(photo), rgb):
        got = metricdepth.predict(model, image, NYU)  # intrinsics as a tuple
        assert got.camera == given.camera and got.camera_source == "given"
        np.testing.assert_array_equal(got.depth_m, given.depth_m)


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "I;16"])
def test_a_pil_image_is_decoded_as_its_file(model, photo, tmp_path, mode):
    """Palette (with transparency), alpha and 16-bit images: a PIL image gives the pixels, the
    camera and the depth of the same file given by path (one decoder for both)."""
    rgb = np.asarray(Image.open(photo).convert("RGB").resize((160, 120)))
    if mode == "I;16":
        grey = rgb.mean(axis=2).astype(np.uint16) * 257 + 3  # low bits that must not count
        image = Image.fromarray(grey)  # mode I;16
    else:
        image = Image.fromarray(rgb).convert(mode)
        if mode == "P":
            image.info["transparency"] = 0
    path = tmp_path / "image.png"
    image.save(path)
    with Image.open(path) as opened:
        from_pil = metricdepth.predict(model, opened)
        pixels, _ = rgb_from_pil(opened)
    from_path = metricdepth.predict(model, path)
    np.testing.assert_array_equal(pixels, load_image(path)[0])
    assert from_pil.camera == from_path.camera and from_pil.camera_source == "default"
    np.testing.assert_array_equal(from_pil.depth_m, from_path.depth_m)


def test_camera_as_a_focal_length(model, photo):
    got = metricdepth.predict(model, photo, 519.0)
    assert got.camera == Camera(519.0, 519.0, 319.5, 239.5, 640, 480)
    assert got.camera_source == "given"


def test_no_camera_is_the_stated_default_for_an_array(model, photo):
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    got = metricdepth.predict(model, rgb)
    assert got.camera_source == "default"
    assert got.camera.fov_x_deg == pytest.approx(DEFAULT_FOV_X_DEG)


def _with_exif(photo, tmp_path):
    """The example photo saved with an EXIF 35 mm-equivalent focal length of 30 mm."""
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLengthIn35mmFilm] = 30
    path = tmp_path / "exif.jpg"
    Image.open(photo).save(path, exif=exif, quality=95)
    return path


def test_no_camera_takes_the_exif_focal_of_a_path_or_pil_image(model, photo, tmp_path):
    path = _with_exif(photo, tmp_path)
    expected, source, _ = resolve_camera(path)
    assert source == "exif"
    from_path = metricdepth.predict(model, path)
    from_pil = metricdepth.predict(model, Image.open(path))
    for got in (from_path, from_pil):
        assert got.camera_source == "exif"
        assert got.camera == expected
    np.testing.assert_array_equal(from_pil.depth_m, from_path.depth_m)


def test_a_camera_of_another_size_or_kind_is_refused(model, photo):
    with pytest.raises(ValueError, match="640x480"):
        metricdepth.predict(model, photo, Camera.from_intrinsics(NYU, 320, 240))
    with pytest.raises(TypeError, match="camera must be"):
        metricdepth.predict(model, photo, "518,519,325,253")


def test_low_level_path_in_the_model_space_equals_predict(model, photo, given):
    rgb, camera, _ = load_image(photo, Camera.from_intrinsics(NYU, 640, 480))
    x, record = prepare_input(rgb, camera, model)
    assert record.space == model.spec.space
    with torch.inference_mode():
        out = model(x, record)
    np.testing.assert_array_equal(from_canonical(out, record)[0, 0].numpy(), given.depth_m)


def test_a_foreign_space_is_refused_with_its_record_and_warned_without(model, photo, given):
    """The README's old code (Metric3D's space with the bundled model) no longer passes
    silently: median 2.51 m instead of the model's 4.62 m."""
    rgb, camera, _ = load_image(photo, Camera.from_intrinsics(NYU, 640, 480))
    x, record = prepare_input(rgb, camera, CanonicalSpace(focal_px=1000.0, input_hw=(616, 1064)))
    with pytest.raises(ValueError, match="another canonical space.*f_c 250"):
        model(x, record)
    with pytest.warns(UserWarning, match="not a canvas of this model's canonical space"):
        with torch.inference_mode():
            out = model(x)
    wrong = float(np.median(from_canonical(out, record)))
    assert abs(wrong - float(np.median(given.depth_m))) > 1.0  # why it must not be silent


def test_same_canvas_other_focal_is_refused(model, photo):
    """Same canvas size, other f_c: only the record can tell, and it does."""
    rgb, camera, _ = load_image(photo, Camera.from_intrinsics(NYU, 640, 480))
    other = CanonicalSpace(focal_px=1000.0, input_hw=(96, 128))
    x, record = prepare_input(rgb, camera, other)
    with pytest.raises(ValueError, match="f_c 1000"):
        model(x, record)
    # a hand-made record (no space attached) is checked on what it holds
    from dataclasses import replace

    with pytest.raises(ValueError, match="f_c 1000"):
        model(x, replace(record, space=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own_x, own = prepare_input(rgb, camera, model)
        model(own_x, replace(own, space=None))  # same f_c, variant and size: accepted


def test_load_model_precision_and_device(model, photo, given, monkeypatch):
    fast = metricdepth.load_model(precision="fp32")
    got = metricdepth.predict(fast, photo, NYU)
    # channels-last kernels differ from the plain path by float32 rounding (runtime.py)
    np.testing.assert_allclose(got.depth_m, given.depth_m, rtol=1e-4)
    with pytest.raises(ValueError, match="precision"):
        metricdepth.load_model(precision="fp8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        metricdepth.load_model(device="cuda")
    with pytest.raises(ValueError, match="unknown; use cpu"):
        metricdepth.load_model(device="gpu")


def test_an_onnx_file_loads_and_predicts_like_the_torch_model(model, photo, given, tmp_path):
    pytest.importorskip("onnxruntime")
    from metricdepth.export import export_onnx

    path = export_onnx(model, tmp_path / "small.onnx")
    exported = metricdepth.load_model(str(path))
    got = metricdepth.predict(exported, photo, NYU)
    assert got.camera_source == "given" and got.camera == given.camera
    # another graph and kernels (ONNX Runtime): the tolerance test_onnx.py states
    np.testing.assert_allclose(got.depth_m, given.depth_m, rtol=1e-4)
    with pytest.raises(ValueError, match="takes no weights, device or precision"):
        metricdepth.load_model(str(path), precision="fp32")


def test_a_camera_other_than_the_assumed_one_warns_at_the_callers_line(model, photo):
    """A model trained on one camera of unknown intrinsics warns (``CameraMismatchWarning``)
    for another focal; the warning names the line that called ``predict``/``predict_batch``."""
    import copy
    import dataclasses

    from metricdepth.pipeline import CameraMismatchWarning, predict_batch

    assumed = copy.copy(model)
    object.__setattr__(assumed, "spec", dataclasses.replace(model.spec, assumed_focal_px=300.0))
    for call in (
        lambda: metricdepth.predict(assumed, photo, 519.0),
        lambda: predict_batch(assumed, [photo], [519.0]),
    ):
        with pytest.warns(CameraMismatchWarning, match="assumed focal of 300 px") as caught:
            call()
        assert [w.filename for w in caught] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metricdepth.predict(assumed, photo, 305.0)  # within ASSUMED_FOCAL_TOLERANCE


def test_a_missing_checkpoint_names_the_python_argument_too():
    if importlib.util.find_spec("huggingface_hub") is not None:
        pytest.skip("huggingface_hub is installed: load_model would try to download")
    with pytest.raises(ValueError, match=r"pass --weights FILE \(weights=FILE in Python; "):
        metricdepth.load_model("metric3d-vit-small")
