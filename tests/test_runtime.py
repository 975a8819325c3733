"""The optimised PyTorch path keeps the reference-faithful results.

``runtime.optimize`` (SDPA attention, inference_mode, channels-last, threads) must stay within
1e-4 relative of the plain model (the one the parity tests check against the official code)
on the parity fixtures and on the default model; bf16 must run and stay close (its error is
reported by ``benchmarks/speed.py``).
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch

from conftest import PARITY, PARITY_IMAGES, needs_parity
from metricdepth.camera import Camera
from metricdepth.models.registry import MODELS, build_model, load_model
from metricdepth.pipeline import predict
from metricdepth.runtime import OptimizedModel, default_threads, optimize, set_threads


def _parity(key: str, weights) -> tuple:
    name = {"vit_small": "metric3d-vit-small", "convnext_tiny": "metric3d-convnext-tiny"}[key]
    model = build_model(MODELS[name][0])
    model.net.load_state_dict(weights, strict=True)
    return model


def _image(image_id: str) -> tuple[np.ndarray, Camera]:
    name, intrinsics = PARITY_IMAGES[image_id]
    rgb = cv2.imread(str(PARITY / name))[:, :, ::-1].copy()
    return rgb, Camera.from_intrinsics(intrinsics, rgb.shape[1], rgb.shape[0])


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


@needs_parity
@pytest.mark.parametrize(("key", "image_id"), [("vit_small", "wild"), ("convnext_tiny", "nyu")])
def test_optimised_fp32_matches_the_faithful_path_on_fixtures(request, key, image_id):
    model = _parity(key, request.getfixturevalue(f"{key}_weights"))
    rgb, camera = _image(image_id)
    expected = predict(model, rgb, camera, focal_mode="fx")
    fast = optimize(copy.deepcopy(model), "fp32")
    got = predict(fast, rgb, camera, focal_mode="fx")
    assert _max_rel(got.depth_m, expected.depth_m) <= 1e-4
    scale = np.max(np.abs(expected.confidence))
    assert np.max(np.abs(got.confidence - expected.confidence)) <= 1e-4 * scale
    official = np.load(PARITY / f"{key}__{image_id}.npz")["depth_final"]
    np.testing.assert_allclose(got.depth_m, official, atol=2e-3, rtol=0)  # README threshold
    if key == "vit_small":
        # bf16 on the same image: runs, finite, and close (measured median 0.1-0.5 %)
        half = predict(optimize(copy.deepcopy(model), "bf16"), rgb, camera, focal_mode="fx")
        rel = np.abs(half.depth_m - expected.depth_m) / expected.depth_m
        assert np.isfinite(half.depth_m).all() and half.depth_m.dtype == np.float32
        assert 0 < np.median(rel) < 0.02


def test_optimised_default_model_fp32_and_bf16():
    model = load_model()
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (320, 240))
    camera = Camera.from_fov(60.0, 320, 240)
    expected = predict(model, image, camera)
    fast = optimize(copy.deepcopy(model), "fp32")
    assert isinstance(fast, OptimizedModel) and fast.channels_last
    assert _max_rel(predict(fast, image, camera).depth_m, expected.depth_m) <= 1e-4
    half = predict(optimize(copy.deepcopy(model), "bf16"), image, camera)
    rel = np.abs(half.depth_m - expected.depth_m) / expected.depth_m
    assert 0 < np.median(rel) < 0.02


def test_optimize_checks_its_arguments_and_threads():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        optimize(load_model(), "fp16")
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads() == default_threads() >= 1
        with pytest.raises(ValueError, match="threads must be >= 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", [None, "metric3d-vit-small"])
def test_bf16_autocast_follows_the_input_device(monkeypatch, name):
    """bf16 autocasts on the device the input is on (a CUDA model must not run fp32 because
    autocast was opened for the CPU). Runs on the meta device: shapes only, no arithmetic."""
    import contextlib

    seen = []

    def autocast(device_type, *args, **kwargs):
        seen.append(device_type)
        return contextlib.nullcontext()

    spec = load_model().spec if name is None else MODELS[name][0]
    with torch.device("meta"):
        model = build_model(spec)
    fast = optimize(model, "bf16")
    monkeypatch.setattr(torch, "autocast", autocast)
    height, width = spec.space.input_hw
    out = fast(torch.zeros(1, 3, height, width, device="meta"))
    assert seen == ["meta"]
    assert out["depth_c"].dtype == torch.float32 and out["depth_c"].shape[:2] == (1, 1)
