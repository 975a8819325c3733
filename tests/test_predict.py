"""load_model + predict on the official architectures with the parity fixtures' weights."""

from __future__ import annotations

import json
import pickle

import cv2
import numpy as np
import pytest
import torch

from conftest import PARITY, PARITY_IMAGES, needs_parity
from metricdepth.camera import Camera
from metricdepth.models.registry import (
    MODELS,
    convert_official,
    list_models,
    load_model,
    read_spec,
)
from metricdepth.pipeline import predict, predict_batch

FINAL_ATOL = 2e-3  # shared/parity/README.md: final metric depth


def fixture_image(image_id: str) -> tuple[np.ndarray, Camera]:
    name, intrinsics = PARITY_IMAGES[image_id]
    rgb = cv2.imread(str(PARITY / name))[:, :, ::-1].copy()
    return rgb, Camera.from_intrinsics(intrinsics, rgb.shape[1], rgb.shape[0])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, vit_small_weights, convnext_tiny_weights):
    """Official-layout ``.pth`` files ({"model_state_dict": ...}) of the fixture weights."""
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, weights in (
        ("vit_small", vit_small_weights),
        ("convnext_tiny", convnext_tiny_weights),
    ):
        paths[name] = folder / f"{name}.pth"
        torch.save({"model_state_dict": weights}, paths[name])
    return paths


@pytest.fixture(scope="module")
def kitti_predictions(checkpoints):
    rgb, camera = fixture_image("kitti")
    out = {}
    for key, name in (
        ("vit_small", "metric3d-vit-small"),
        ("convnext_tiny", "metric3d-convnext-tiny"),
    ):
        model = load_model(name, weights=checkpoints[key])
        out[key] = predict(model, rgb, camera, focal_mode="fx")  # the hub demo's focal
    return out


@needs_parity
@pytest.mark.parametrize("key", ["vit_small", "convnext_tiny"])
def test_predict_reproduces_the_official_metric_depth(kitti_predictions, key):
    prediction = kitti_predictions[key]
    reference = np.load(PARITY / f"{key}__kitti.npz")["depth_final"]
    assert prediction.depth_m.shape == reference.shape == (375, 1242)
    np.testing.assert_allclose(prediction.depth_m, reference, rtol=0, atol=FINAL_ATOL)
    assert prediction.camera_source == "given"
    meta = json.loads(str(np.load(PARITY / f"{key}__kitti.npz")["meta_json"]))
    assert prediction.record.pad == tuple(meta["pad_info"])
    assert prediction.record.metric_scale == pytest.approx(meta["scale"] * 707.0493 / 1000)
    assert prediction.confidence is not None and prediction.confidence.shape == (375, 1242)
    summary = prediction.summary()
    assert (
        summary["camera_source"] == "given"
        and summary["model"] == MODELS["metric3d-" + key.replace("_", "-")][0].name
    )


@needs_parity
def test_vit_normals_are_unit_vectors_at_full_resolution(kitti_predictions):
    normal = kitti_predictions["vit_small"].normal
    assert normal.shape == (375, 1242, 3)
    np.testing.assert_allclose(np.linalg.norm(normal, axis=2), 1.0, atol=1e-5)
    assert kitti_predictions["convnext_tiny"].normal is None  # v1 has no normal head


@needs_parity
def test_batch_of_different_sizes_equals_single_predictions(checkpoints, kitti_predictions):
    model = load_model("metric3d-convnext-tiny", weights=checkpoints["convnext_tiny"])
    kitti, kitti_camera = fixture_image("kitti")
    nyu, nyu_camera = fixture_image("nyu")
    batch = predict_batch(model, [kitti, nyu], [kitti_camera, nyu_camera], focal_mode="fx")
    single_nyu = predict(model, nyu, nyu_camera, focal_mode="fx")
    assert batch[1].depth_m.shape == (480, 640)
    np.testing.assert_allclose(
        batch[0].depth_m, kitti_predictions["convnext_tiny"].depth_m, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(batch[1].depth_m, single_nyu.depth_m, rtol=1e-5, atol=1e-4)


@needs_parity
def test_no_camera_is_recorded_as_default(checkpoints):
    model = load_model("metric3d-convnext-tiny", weights=checkpoints["convnext_tiny"])
    rgb = np.full((64, 96, 3), 128, np.uint8)
    prediction = predict(model, rgb)
    assert prediction.camera_source == "default"
    assert prediction.camera.fov_x_deg == pytest.approx(60.0)


@needs_parity
def test_convert_then_load_gives_the_same_weights(tmp_path, checkpoints, vit_small_weights):
    out = convert_official(checkpoints["vit_small"], tmp_path / "vit_small.safetensors")
    assert out.exists() and out.with_suffix(".json").exists()
    spec = read_spec(out)
    assert spec.name == "metric3d-vit-small" and spec.space.input_hw == (616, 1064)
    model = load_model(out)
    state = model.net.state_dict()
    official = load_model("metric3d-vit-small", weights=checkpoints["vit_small"]).net.state_dict()
    assert state.keys() == official.keys() == vit_small_weights.keys()
    assert all(torch.equal(state[k], official[k]) for k in state)
    # (a module the official decoder registers twice holds the values loaded last, as upstream)
    same = [k for k in state if torch.equal(state[k], vit_small_weights[k])]
    assert len(same) >= len(state) - 12
    # the registered name with a converted file works too, and a detected .pth as a path
    assert load_model("metric3d-vit-small", weights=out).spec == spec
    assert load_model(checkpoints["vit_small"]).spec.name == "metric3d-vit-small"


@needs_parity
def test_wrong_architecture_is_refused_with_one_line(checkpoints):
    with pytest.raises(ValueError) as error:
        load_model("metric3d-vit-small", weights=checkpoints["convnext_tiny"])
    message = str(error.value)
    assert "official Metric3D" in message and "ViT" in message and "missing" in message
    assert "looks like" not in message or "ConvNeXt" not in message
    assert "\n" not in message


@needs_parity
def test_missing_and_unexpected_keys_are_named(tmp_path, convnext_tiny_weights):
    broken = dict(convnext_tiny_weights)
    dropped = "depth_model.decoder.depth_regressor_2.3.weight"
    assert dropped in broken
    del broken[dropped]
    broken["depth_model.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model_state_dict": broken}, path)
    with pytest.raises(
        ValueError, match=r"1 missing \[depth_model.decoder.depth_regressor_2.3.weight\]"
    ):
        load_model("metric3d-convnext-tiny", weights=path)
    with pytest.raises(ValueError, match=r"1 unexpected \[depth_model.extra\]"):
        load_model("metric3d-convnext-tiny", weights=path)


def test_truncated_and_malicious_files_are_refused(tmp_path):
    truncated = tmp_path / "cut.pth"
    torch.save({"model_state_dict": {"a": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot load as a weights-only"):
        load_model("metric3d-vit-small", weights=truncated)

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model_state_dict": Boom()}, protocol=2))
    with pytest.raises(ValueError, match="weights-only"):
        load_model("metric3d-vit-small", weights=evil)


def test_unknown_names_and_missing_files():
    with pytest.raises(
        ValueError, match="registered models: metricdepth-small, metric3d-vit-small"
    ):
        load_model("metric3d-vit-tiny")
    with pytest.raises(ValueError, match="weights file not found"):
        load_model("metric3d-vit-small", weights="/nonexistent/w.pth")
    with pytest.raises(ValueError, match="needs its checkpoint"):
        load_model("metric3d-vit-large")  # no weights, and no hub client installed here
    assert list_models()[0] == "metricdepth-small"


@needs_parity
def test_official_file_without_the_unused_mask_token_loads(tmp_path, vit_small_weights):
    """Upstream training deletes the DINOv2 mask_token before saving; released files may lack it."""
    state = {k: v for k, v in vit_small_weights.items() if not k.endswith("encoder.mask_token")}
    assert len(state) == len(vit_small_weights) - 1
    path = tmp_path / "no_mask_token.pth"
    torch.save({"model_state_dict": state}, path)
    model = load_model("metric3d-vit-small", weights=path)
    assert torch.count_nonzero(model.net.state_dict()["depth_model.encoder.mask_token"]) == 0
    del state["depth_model.encoder.cls_token"]  # any other missing key is still refused
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(ValueError, match=r"1 missing \[depth_model.encoder.cls_token\]"):
        load_model("metric3d-vit-small", weights=path)


def test_model_spec_resolves_files_as_load_model_and_maps_a_pth(tmp_path, monkeypatch):
    """model_spec and load_model resolve paths alike (a folder with one .safetensors, the
    same errors); the spec of an official .pth comes from its memory-mapped tensor shapes,
    without reading the checkpoint's weights."""
    from metricdepth.models import registry

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "m.safetensors").write_bytes((registry.ASSETS / "metricdepth-small.safetensors")
                                           .read_bytes())  # fmt: skip
    assert registry.model_spec(folder) == load_model(folder).spec
    (folder / "other.safetensors").write_bytes(b"")
    for read in (registry.model_spec, load_model):
        with pytest.raises(ValueError, match="expected exactly one .safetensors model file"):
            read(folder)
        with pytest.raises(ValueError, match="no model or file named 'nope'; registered models"):
            read("nope")
        (tmp_path / "m.txt").write_text("x")
        with pytest.raises(ValueError, match="unsupported model file type '.txt'"):
            read(tmp_path / "m.txt")
    checkpoint = tmp_path / "vit.pth"
    torch.save({"model_state_dict": {"depth_model.encoder.pos_embed": torch.zeros(1, 5, 384)}},
               checkpoint)  # fmt: skip

    def no_full_read(path):
        raise AssertionError("model_spec read the whole checkpoint")

    monkeypatch.setattr(registry, "read_torch_checkpoint", no_full_read)
    assert registry.model_spec(checkpoint) == registry.MODELS["metric3d-vit-small"][0]
