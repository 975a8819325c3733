"""Metric3D v1 (ConvNeXt + HourglassDecoder): key layout, strict loading and numerical parity.

The parity tests regenerate the deterministic synthetic weights of the shared parity fixtures
(``shared/parity/make_weights.py``), run the official hub pipeline (keep-ratio resize to fit
544x1216, uint8 pad colour, normalisation; then un-pad, bilinear resize, x fx*s/1000, clamp)
through ``metricdepth.canonical`` and this package's model, and compare every stage that the
official run recorded, at the thresholds of ``shared/parity/README.md``.

The shared folder is ``<repo>/../shared`` unless ``METRICDEPTH_SHARED`` names another one; the
tests that need it skip when it is absent.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from conftest import (
    PARITY,
    needs_parity,
    official_keys,
    require_shared,
    state_layout,
    synthetic_weights,
)
from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalSpace, from_canonical, prepare_input
from metricdepth.models.convnext import ConvNeXt, convnext
from metricdepth.models.hourglass_head import depth_bins
from metricdepth.models.metric3d_convnext import (
    Metric3DConvNeXt,
    build_metric3d_convnext,
    load_official_state_dict,
)

IMAGE_IDS = ("kitti", "nyu", "wild")
INPUT_HW = (544, 1216)

# Acceptance thresholds (shared/parity/README.md, "Suggested acceptance thresholds").
DEPTH_ATOL, DEPTH_RTOL = 2e-3, 2e-5
FINAL_ATOL = 2e-3
CONFIDENCE_ATOL = 1e-4
FEATURE_ATOL = 1e-4


def _official_keys(size: str) -> list[list[Any]]:
    return official_keys(f"convnext_{size}")


# ---------------------------------------------------------------------------------------------
# (a) key layout and strict loading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "large"])
def test_state_dict_layout_equals_official(size: str) -> None:
    ref = _official_keys(size)
    with torch.device("meta"):
        model = build_metric3d_convnext(size)
    assert state_layout(model) == ref  # names, order, shapes and dtypes
    # The backbone alone carries the encoder keys without their prefix.
    with torch.device("meta"):
        encoder = convnext(size)
    prefix = "depth_model.encoder."
    assert state_layout(encoder) == [
        [k[len(prefix) :], s, d] for k, s, d in ref if k.startswith(prefix)
    ]


def test_unknown_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown Metric3D ConvNeXt size"):
        build_metric3d_convnext("base")
    with pytest.raises(ValueError, match="unknown ConvNeXt size"):
        convnext("small")


def test_depth_bins_match_official() -> None:
    path = PARITY / "convnext_tiny__constants.npz"
    require_shared(path, "parity constants")
    ref = np.load(path)["depth_bins"]
    got = depth_bins(0.3, 150.0, 512).numpy()
    assert got.dtype == np.float32
    # Same operations as upstream (float32 linspace, then exp). torch's vectorised exp rounds
    # differently per CPU kernel (AVX2 here vs the fixtures' machine: 8 of 512 bins 1 ulp
    # apart), so allow one ulp; numpy/float64 bins would be off in hundreds of bins.
    np.testing.assert_array_max_ulp(got, ref, maxulp=1)


# ---------------------------------------------------------------------------------------------
# (b) parity with the official outputs on the golden fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, torch.Tensor]:
    """The synthetic ConvNeXt-Tiny state dict of the fixtures, checked against its SHA-256."""
    return synthetic_weights("convnext_tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny_weights: dict[str, torch.Tensor]) -> Metric3DConvNeXt:
    model = build_metric3d_convnext("tiny")
    load_official_state_dict(model, tiny_weights)
    return model.eval()


def test_loader_rejects_mismatches(tiny_weights: dict[str, torch.Tensor]) -> None:
    model = build_metric3d_convnext("tiny")
    first = next(iter(tiny_weights))
    bn_count = "depth_model.decoder.conv_out_2.conv0.bn.num_batches_tracked"
    stem = "depth_model.encoder.downsample_layers.0.0.weight"

    missing = {k: v for k, v in tiny_weights.items() if k != first}
    with pytest.raises(ValueError, match=rf"ConvNeXt-tiny.*1 missing \[{first}\]"):
        load_official_state_dict(model, missing)

    extra = dict(tiny_weights, **{"depth_model.decoder.depth_expectation_anchor": torch.ones(512)})
    with pytest.raises(ValueError, match="1 unexpected .*depth_expectation_anchor"):
        load_official_state_dict(model, extra)

    shape = dict(tiny_weights, **{stem: tiny_weights[stem][:, :, :2]})
    with pytest.raises(
        ValueError, match=r"wrong shape .*\(96, 3, 2, 4\), expected \(96, 3, 4, 4\)"
    ):
        load_official_state_dict(model, shape)

    dtype = dict(tiny_weights, **{bn_count: tiny_weights[bn_count].float()})
    with pytest.raises(ValueError, match="wrong dtype .*num_batches_tracked: got torch.float32"):
        load_official_state_dict(model, dtype)

    with torch.device("meta"):
        large = build_metric3d_convnext("large").state_dict()
    with pytest.raises(ValueError, match="looks like ConvNeXt-large") as info:
        load_official_state_dict(model, large)
    assert "\n" not in str(info.value)


def test_loader_materialises_meta_model(tiny_weights: dict[str, torch.Tensor]) -> None:
    with torch.device("meta"):
        model = build_metric3d_convnext("tiny")
    load_official_state_dict(model, tiny_weights)
    state = model.state_dict()
    assert list(state) == list(tiny_weights)
    for name, value in state.items():
        assert value.device.type == "cpu", name
        assert torch.equal(value, tiny_weights[name]), name


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return np.ascontiguousarray(bgr[:, :, ::-1])


class _Recorder:
    """Forward hooks capturing the intermediates that the fixtures store."""

    def __init__(self, model: Metric3DConvNeXt) -> None:
        self.out: dict[str, Any] = {}
        targets = {
            "encoder": model.encoder,
            "decoder_mono": model.decoder.decoder_mono,
            "conv_up_2": model.decoder.conv_up_2,
        }
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in targets.items()
        ]

    def _hook(self, name: str) -> Callable[[torch.nn.Module, Any, Any], None]:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            self.out[name] = output

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def parity_runs(tiny_model: Metric3DConvNeXt) -> Callable[[str], dict[str, Any]]:
    """Run the pipeline once per image (lazily) and cache the arrays to compare."""
    cache: dict[str, dict[str, Any]] = {}

    def run(image_id: str) -> dict[str, Any]:
        if image_id in cache:
            return cache[image_id]
        fixture = np.load(PARITY / f"convnext_tiny__{image_id}.npz")
        meta = json.loads(str(fixture["meta_json"]))
        image = _read_rgb(PARITY / meta["image_file"])
        h, w = image.shape[:2]
        camera = Camera.from_intrinsics(meta["intrinsic"], w, h)
        space = CanonicalSpace(focal_px=1000.0, input_hw=INPUT_HW)
        x, record = prepare_input(image, camera, space, focal_mode="fx")

        recorder = _Recorder(tiny_model)
        try:
            with torch.inference_mode():
                out = tiny_model(x)
        finally:
            recorder.remove()
        with torch.inference_mode():
            depth_final = torch.clamp(from_canonical(out["depth_c"][0, 0], record), 0, 300)
        cache[image_id] = {
            "fixture": fixture,
            "meta": meta,
            "x": x,
            "record": record,
            "out": out,
            "hooks": recorder.out,
            "depth_final": depth_final,
        }
        return cache[image_id]

    return run


def _assert_close(
    name: str, got: torch.Tensor, ref: np.ndarray, atol: float, rtol: float = 0.0
) -> None:
    """``|got - ref| <= atol + rtol * |ref|`` everywhere, shapes equal, all finite."""
    g = got.detach().cpu().numpy()
    assert g.shape == ref.shape, f"{name}: shape {g.shape} != {ref.shape}"
    err = np.abs(g.astype(np.float64) - ref.astype(np.float64))
    bound = atol + rtol * np.abs(ref.astype(np.float64))
    worst = float(np.max(err - bound))
    assert np.all(np.isfinite(g)), f"{name}: non-finite values"
    assert worst <= 0, f"{name}: max |diff| {err.max():.3g} exceeds atol {atol} + rtol {rtol}"


def _crop(a: torch.Tensor, origin: list[int], size: int) -> torch.Tensor:
    y0, x0 = origin
    return a[..., y0 : y0 + size, x0 : x0 + size]


@needs_parity
@pytest.mark.parametrize("image_id", IMAGE_IDS)
def test_preprocessing_matches_official(image_id: str, parity_runs) -> None:
    run = parity_runs(image_id)
    fx, meta, x, record = run["fixture"], run["meta"], run["x"], run["record"]
    assert record.scale == meta["scale"]
    assert [record.resized_hw[1], record.resized_hw[0]] == meta["resized_wh"]
    assert list(record.pad) == meta["pad_info"]
    assert record.metric_scale == pytest.approx(meta["canonical_to_real_scale"], rel=1e-15)
    x_chw = x[0].contiguous()
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 3, *INPUT_HW)
    # The uint8 canvas, recovered exactly from the normalised input.
    mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    restored = (x_chw.double() * std.double() + mean.double()).numpy()
    canvas = np.rint(restored)
    assert np.abs(restored - canvas).max() < 1e-3
    canvas = canvas.astype(np.uint8)  # (3, H, W)
    hwc = np.ascontiguousarray(canvas.transpose(1, 2, 0))
    opencv = f"OpenCV {cv2.__version__} here, {meta['environment']['opencv']} in the fixtures"
    assert hashlib.sha256(hwc.tobytes()).hexdigest() == meta["input_uint8_sha256"], (
        f"resized/padded uint8 image differs from the official one ({opencv}: decoding and the "
        "fixed-point INTER_LINEAR resize must be the same OpenCV)"
    )
    np.testing.assert_array_equal(hwc[::4, ::4], fx["input_uint8_ds4"])
    size, origins = meta["crop_size"], meta["crop_origins_yx"]
    for where in ("tl", "center"):
        y0, x0 = origins[where]
        crop = canvas[:, y0 : y0 + size, x0 : x0 + size]
        np.testing.assert_array_equal(crop, fx[f"input_uint8_crop_{where}"])
        np.testing.assert_array_equal(
            _crop(x_chw, origins[where], size).numpy(), fx[f"input_norm_crop_{where}"]
        )
    # The normalised input, bit for bit.
    assert hashlib.sha256(x_chw.numpy().tobytes()).hexdigest() == meta["input_norm_sha256"]


@needs_parity
@pytest.mark.parametrize("image_id", IMAGE_IDS)
def test_network_matches_official(image_id: str, parity_runs) -> None:
    run = parity_runs(image_id)
    fx, meta, out, hooks = run["fixture"], run["meta"], run["out"], run["hooks"]
    size, origins = meta["crop_size"], meta["crop_origins_yx"]

    for k, feature in enumerate(hooks["encoder"]):
        _assert_close(f"encoder_{k}", feature[0, :8, :8, :8], fx[f"encoder_{k}_crop"], FEATURE_ATOL)
    _assert_close(
        "decoder_mono", hooks["decoder_mono"][0, :, :8, :8], fx["decoder_mono_crop"], FEATURE_ATOL
    )
    _assert_close(
        "depth_lowres", out["depth_lowres"][0, 0], fx["depth_lowres"], DEPTH_ATOL, DEPTH_RTOL
    )
    _assert_close(
        "confidence_lowres",
        out["confidence_lowres"][0, 0],
        fx["confidence_lowres"],
        CONFIDENCE_ATOL,
    )
    _assert_close(
        "conv_up_2_ds4",
        hooks["conv_up_2"][0, 0, ::4, ::4],
        fx["conv_up_2_ds4"],
        DEPTH_ATOL,
        DEPTH_RTOL,
    )

    depth, confidence = out["depth_c"][0, 0], out["confidence"][0, 0]
    assert tuple(out["depth_c"].shape) == (1, 1, *INPUT_HW) == tuple(out["confidence"].shape)
    if "pred_depth" in fx:
        _assert_close("pred_depth", depth, fx["pred_depth"], DEPTH_ATOL, DEPTH_RTOL)
    _assert_close("pred_depth_ds4", depth[::4, ::4], fx["pred_depth_ds4"], DEPTH_ATOL, DEPTH_RTOL)
    _assert_close("confidence_ds4", confidence[::4, ::4], fx["confidence_ds4"], CONFIDENCE_ATOL)
    for where in ("tl", "center"):
        _assert_close(
            f"pred_depth_crop_{where}",
            _crop(depth, origins[where], size),
            fx[f"pred_depth_crop_{where}"],
            DEPTH_ATOL,
            DEPTH_RTOL,
        )
        _assert_close(
            f"confidence_crop_{where}",
            _crop(confidence, origins[where], size),
            fx[f"confidence_crop_{where}"],
            CONFIDENCE_ATOL,
        )


@needs_parity
@pytest.mark.parametrize("image_id", IMAGE_IDS)
def test_metric_depth_matches_official(image_id: str, parity_runs) -> None:
    run = parity_runs(image_id)
    fx, final = run["fixture"], run["depth_final"]
    assert tuple(final.shape) == tuple(run["meta"]["original_hw"])
    _assert_close("depth_final", final, fx["depth_final"], FINAL_ATOL)
    _assert_close("depth_final_ds4", final[::4, ::4], fx["depth_final_ds4"], FINAL_ATOL)


@needs_parity
def test_forward_registers_no_state(tiny_model: Metric3DConvNeXt, parity_runs) -> None:
    parity_runs("nyu")  # at least one forward pass has run
    assert state_layout(tiny_model) == _official_keys("tiny")


# ---------------------------------------------------------------------------------------------
# (c) ConvNeXt-Large runs
# ---------------------------------------------------------------------------------------------


def _fill_synthetic_(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill every tensor in place with weights of sensible scale (the fixtures' rules)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                t.zero_()
                continue
            if name.endswith("running_var"):
                center, half = 1.0, 0.25
            elif name.endswith("running_mean"):
                center, half = 0.0, 0.1
            elif name.endswith(".gamma"):
                center, half = 0.2, 0.1
            elif t.dim() == 1 and name.endswith(".weight"):
                center, half = 1.0, 0.1
            elif name.endswith(".bias"):
                center, half = 0.0, 0.05
            else:
                center, half = 0.0, math.sqrt(3.0 / (t[0].numel()))
            t.uniform_(center - half, center + half, generator=gen)


def test_convnext_large_forward_small_input() -> None:
    with torch.device("meta"):
        model = build_metric3d_convnext("large")
    model = model.to_empty(device="cpu")
    _fill_synthetic_(model)
    model.eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    captured: list[list[torch.Tensor]] = []
    handle = model.encoder.register_forward_hook(lambda _m, _i, o: captured.append(o))
    with torch.inference_mode():
        out = model(x)
    handle.remove()
    features = captured[0]
    assert [tuple(f.shape) for f in features] == [
        (2, 192, 16, 24),
        (2, 384, 8, 12),
        (2, 768, 4, 6),
        (2, 1536, 2, 3),
    ]
    assert tuple(out["depth_c"].shape) == (2, 1, 64, 96)
    assert tuple(out["confidence"].shape) == (2, 1, 64, 96)
    assert tuple(out["depth_lowres"].shape) == (2, 1, 16, 24)
    assert tuple(out["confidence_lowres"].shape) == (2, 1, 16, 24)
    for name, value in out.items():
        assert torch.isfinite(value).all(), name
    # The stride-4 depth is an expectation over bins in [0.3, 150].
    assert out["depth_lowres"].min() >= 0.3 - 1e-4 and out["depth_lowres"].max() <= 150 + 1e-3
    # Batch elements are independent in eval mode.
    with torch.inference_mode():
        single = model(x[1:])
    torch.testing.assert_close(single["depth_c"], out["depth_c"][1:], rtol=1e-5, atol=1e-4)


def test_input_size_is_checked() -> None:
    with torch.device("meta"):
        model = build_metric3d_convnext("tiny")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 544, 1000, device="meta"))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 4, 64, 64, device="meta"))
    assert isinstance(model.encoder, ConvNeXt)


@pytest.mark.parametrize("size", ["tiny", "large"])
def test_forward_is_device_agnostic(size: str) -> None:
    """A whole forward pass on the meta device: any tensor made on a fixed device would clash."""
    with torch.device("meta"):
        model = build_metric3d_convnext(size).eval()
        x = torch.zeros(1, 3, *INPUT_HW)
    with torch.inference_mode():
        out = model(x)
    assert {k: (v.device.type, tuple(v.shape)) for k, v in out.items()} == {
        "depth_c": ("meta", (1, 1, *INPUT_HW)),
        "confidence": ("meta", (1, 1, *INPUT_HW)),
        "depth_lowres": ("meta", (1, 1, INPUT_HW[0] // 4, INPUT_HW[1] // 4)),
        "confidence_lowres": ("meta", (1, 1, INPUT_HW[0] // 4, INPUT_HW[1] // 4)),
    }
