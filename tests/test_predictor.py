"""The one prediction pipeline (``metricdepth.predictor``): its stages are ``predict``, every
backend implements the ``Backend`` protocol, the canonical arithmetic gives the same numbers
on Python floats and on tensors, and training's ``predict_depth_m`` is ``predict``."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metricdepth.camera import Camera, focal_of
from metricdepth.canonical import (
    CanonicalSpace,
    fit_geometry,
    inference_record,
    metric_scale,
    pad_offset,
    prepare_input,
)
from metricdepth.distortion import Distortion
from metricdepth.models.registry import DepthModel, load_model
from metricdepth.pipeline import predict, predict_batch
from metricdepth.predictor import (
    Backend,
    Predictor,
    Prepared,
    collate,
    prepare,
    split,
)
from metricdepth.runtime import optimize


@pytest.fixture(scope="module")
def model():
    return load_model()


def photo(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[height // 3 :, : width // 2] //= 3  # some structure, not only noise
    return image


def assert_same_prediction(got, expected) -> None:
    np.testing.assert_array_equal(got.depth_m, expected.depth_m)
    assert got.record == expected.record and got.camera == expected.camera
    assert got.camera_source == expected.camera_source and got.model == expected.model
    assert (got.lens is None) == (expected.lens is None)


# ------------------------------------------------------------------ stages == predict
@pytest.mark.parametrize("hw", [(120, 160), (301, 199), (96, 128)])
def test_the_three_stages_are_predict_to_the_bit(model, hw):
    image = photo(*hw, seed=hw[0])
    camera = Camera.from_intrinsics((150.0, 152.0, hw[1] / 2 - 3, hw[0] / 2 + 1), hw[1], hw[0])
    expected = predict(model, image, camera)
    predictor = Predictor(model)
    prepared = predictor.prepare(image, camera)
    assert prepared.x.shape == (3, *model.spec.space.input_hw) and prepared.x.dtype == torch.float32
    (outputs,) = split(predictor.forward(collate([prepared])))
    assert outputs["depth_c"].shape == (1, *model.spec.space.input_hw)
    assert_same_prediction(predictor.finish(outputs, prepared), expected)
    # a plain (B, 3, H_in, W_in) tensor is a batch of canvases too
    (again,) = split(predictor.forward(prepared.x[None]))
    assert_same_prediction(predictor.finish(again, prepared), expected)
    assert_same_prediction(predictor.predict(image, camera), expected)
    # the canvas is prepare_input's (the public pre-processing), to the bit
    x, record = prepare_input(image, camera, model)
    assert torch.equal(x[0], prepared.x) and record == prepared.record


def test_a_batch_of_several_sizes_is_each_image_alone(model):
    images = [photo(120, 160, 1), photo(90, 200, 2), photo(120, 160, 3)]
    cameras = [Camera.from_fov(60.0, im.shape[1], im.shape[0]) for im in images]
    predictor = Predictor(model)
    prepared = [predictor.prepare(im, cam) for im, cam in zip(images, cameras, strict=True)]
    together = predictor.predict_prepared(prepared)
    alone = [predict(model, im, cam) for im, cam in zip(images, cameras, strict=True)]
    batch = predict_batch(model, images, cameras)
    for got, via_batch, expected in zip(together, batch, alone, strict=True):
        # the same canvases in a batch of two: float32 sums may run in another order
        np.testing.assert_allclose(got.depth_m, expected.depth_m, rtol=1e-5)
        assert got.record == expected.record
        np.testing.assert_array_equal(got.depth_m, via_batch.depth_m)


def test_prepare_needs_no_network_and_pickles(model):
    """``prepare`` is a function of (space, focal mode, image, camera): a loader process makes
    it without the model, and it crosses processes by pickle."""
    image = photo(120, 160, seed=7)
    camera = Camera.from_fov(55.0, 160, 120)
    lens = Distortion("opencv", (-0.1, 0.02, 0.0, 0.0))
    for distortion in (None, lens):
        own = Predictor(model, "fx").prepare(image, camera, "exif", distortion=distortion)
        bare = prepare(model.spec.space, "fx", image, camera, "exif", distortion=distortion)
        again = pickle.loads(pickle.dumps(bare))
        assert isinstance(again, Prepared) and again.record == own.record
        assert torch.equal(again.x, own.x) and again.source == "exif"
        assert (again.lens is None) == (distortion is None) and again.record.focal_mode == "fx"
        expected = predict(model, image, camera, camera_source="exif", focal_mode="fx",
                           distortion=distortion)  # fmt: skip
        (outputs,) = split(Predictor(model, "fx").forward(collate([again])))
        assert_same_prediction(Predictor(model, "fx").finish(outputs, again), expected)


def test_prepare_refuses_a_camera_of_another_size(model):
    with pytest.raises(ValueError, match="image is 160x120 but its camera is for 320x240"):
        Predictor(model).prepare(photo(120, 160, 0), Camera.from_fov(60.0, 320, 240))


# ------------------------------------------------------------------ backends
def test_every_backend_implements_the_protocol(model, tmp_path):
    from metricdepth.export import export_onnx
    from metricdepth.runtime import load_onnx

    onnx_model = load_onnx(export_onnx(model, tmp_path / "m.onnx"), threads=1)
    for backend, takes in (
        (model, ("x",)),
        (optimize(model), ("x",)),
        (onnx_model, ("image", "camera")),
    ):  # noqa: E501
        assert isinstance(backend, Backend)
        assert backend.takes == takes and backend.describe()["name"] == "metricdepth-small"
        assert Predictor(backend).spec == model.spec
    assert not isinstance(model.net, Backend)  # a bare network has no spec
    with pytest.raises(TypeError, match="needs a Backend"):
        Predictor(model.net)  # type: ignore[arg-type]
    # the graph's prediction equals the PyTorch one within the ONNX path's tolerance
    image, camera = photo(120, 160, 5), Camera.from_fov(60.0, 160, 120)
    got = Predictor(onnx_model).predict(image, camera)
    expected = predict(model, image, camera)
    assert got.record == expected.record
    np.testing.assert_allclose(got.depth_m, expected.depth_m, rtol=1e-4)
    with pytest.raises(ValueError, match="ONNX graphs are pinhole"):
        Predictor(onnx_model).prepare(
            image, camera, distortion=Distortion("opencv", (0.1, 0.0, 0.0, 0.0))
        )


# ------------------------------------------------------------------ canonical: float == tensor
SPACES = [
    CanonicalSpace(),
    CanonicalSpace(focal_px=250.0, input_hw=(96, 128)),
    CanonicalSpace(input_hw=(544, 1216), pad_placement="bottom_right"),
    CanonicalSpace(focal_px=80.0, input_hw=(61, 83), variant="none"),
]


@settings(max_examples=300, deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    space=st.sampled_from(SPACES),
    fx=st.floats(1.0, 1e5),
    fy=st.floats(1.0, 1e5),
    mode=st.sampled_from(["mean", "fx"]),
)
def test_canonical_arithmetic_is_the_same_on_floats_and_tensors(height, width, space, fx, fy, mode):
    """What the exported graph computes from its dynamic (float64) size is ``inference_record``:
    the same scale to the bit, the same sizes and offsets, the same metric scale."""
    scale, size, offset = fit_geometry((height, width), space)
    hw = torch.tensor([height, width], dtype=torch.int64).double()
    t_scale, t_size, t_offset = fit_geometry((hw[0], hw[1]), space)
    assert isinstance(t_scale, torch.Tensor) and t_scale.dtype == torch.float64
    assert t_scale.item() == scale
    assert [int(v) for v in t_size] == list(size) and [int(v) for v in t_offset] == list(offset)
    assert all(v.dtype == torch.int64 for v in (*t_size, *t_offset))
    focal = focal_of(fx, fy, mode)
    t_focal = focal_of(
        torch.tensor(fx, dtype=torch.float64), torch.tensor(fy, dtype=torch.float64), mode
    )  # noqa: E501
    assert t_focal.item() == focal
    m = metric_scale(focal, scale, space.focal_px, space.variant)
    assert metric_scale(t_focal, t_scale, space.focal_px, space.variant).item() == m
    if min(size) >= 1:  # a record exists: it holds exactly these numbers
        camera = Camera(fx, fy, (width - 1) / 2, (height - 1) / 2, width, height)
        record = inference_record(camera, space, mode)
        assert (record.scale, record.resized_hw, record.offset) == (scale, size, offset)
        assert record.metric_scale == m and record.focal_px == focal


@pytest.mark.parametrize("placement", ["center", "bottom_right"])
def test_pad_offset_on_ints_and_tensors(placement):
    for h, w, big_h, big_w in ((10, 20, 15, 21), (7, 7, 7, 7), (1, 3, 100, 4)):
        ints = pad_offset((h, w), (big_h, big_w), placement)
        tensors = pad_offset((torch.tensor(h), torch.tensor(w)), (big_h, big_w), placement)
        assert tuple(int(v) for v in tensors) == ints
        assert ints == (((big_h - h) // 2, (big_w - w) // 2) if placement == "center" else (0, 0))


# ------------------------------------------------------------------ training == predict
def test_training_predict_depth_m_is_predict_clamp_included(model):
    """The CSTM ablation scores ``predict``'s path: with a clamp below the scene's depths, the
    clamped pixels are clamped there too (the old assembly skipped the clamp)."""
    from metricdepth.train.loop import predict_depth_m

    image = photo(120, 160, seed=11)
    camera = Camera.from_fov(60.0, 160, 120)
    free = predict(model, image, camera).depth_m
    ceiling = float(np.median(free))
    clamped = DepthModel(replace(model.spec, max_depth_m=ceiling), model.net).eval()
    expected = predict(clamped, image, camera).depth_m
    assert expected.max() == np.float32(ceiling) and (free > ceiling).mean() > 0.3
    got = predict_depth_m(clamped, image, camera)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        predict_depth_m(model, image, camera, "fx"),
        predict(model, image, camera, focal_mode="fx").depth_m,
    )
