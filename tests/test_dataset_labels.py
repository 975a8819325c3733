"""Training data labels: depth_scale, sparse LiDAR resampling, sky masks and normals, data
types, weighted mixing, and one camera of unknown intrinsics (``assumed_focal_px``)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metricdepth import frame as frames
from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalSpace
from metricdepth.data.annotations import read_annotations
from metricdepth.data.dataset import (
    AnnotationSource,
    Augmentation,
    CanonicalTrainingSet,
    assumed_focal,
    build_source,
)
from metricdepth.frame import SKY_ID, Frame
from metricdepth.models.spec import ModelSpec
from metricdepth.train.config import config_from_dict
from metricdepth.train.loop import model_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread

ASSET_SPEC = Path(__file__).parents[1] / "src/metricdepth/assets/metricdepth-small.json"


# ---------------------------------------------------------------------- helpers
def _write_png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


def _dataset_folder(tmp_path: Path, *, cam_in=True, labels=True, height=24, width=32) -> Path:
    """Two frames: 16-bit depth (x256), a sky mask in the top rows, normals, optional cam_in."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        (tmp_path / "rgb").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / f"rgb/{i}.png")
        stored = rng.integers(256, 256 * 40, (height, width))
        stored[:4] = 0  # no depth in the sky rows ...
        stored[4, :5] = 1000  # ... except a few pixels the mask also calls sky
        _write_png16(tmp_path / f"depth/{i}.png", stored)
        item = {"rgb": f"rgb/{i}.png", "depth": f"depth/{i}.png", "depth_scale": 256.0}
        if cam_in:
            item["cam_in"] = [40.0, 41.0, 15.5, 11.5]
        if labels:
            sky = np.zeros((height, width), np.uint8)
            sky[:5, :] = 255
            Image.fromarray(sky).save(tmp_path / f"sky{i}.png")
            normal = rng.normal(size=(height, width, 3)).astype(np.float32)
            normal[:, :3] = 0  # no normals in the left columns
            np.save(tmp_path / f"normal{i}.npy", normal * 3.0)  # not unit: normalised on read
            item.update(sky_mask=f"sky{i}.png", normal=f"normal{i}.npy")
        files.append(item)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"files": files}), encoding="utf-8")
    return path


class _MemorySource:
    def __init__(self, frame: Frame, sparse, data_type="lidar", name="mem"):
        self.frames, self.sparse, self.data_type, self.name = [frame], sparse, data_type, name

    def __len__(self) -> int:
        return 1

    def frame(self, index: int) -> Frame:
        return self.frames[index]


def _lidar_frame(height=60, width=90, seed=1) -> Frame:
    """Every third row, 60 % of the columns, depths 2-80 m; 20 % of the pixels valid."""
    rng = np.random.default_rng(seed)
    depth = np.zeros((height, width), np.float32)
    for row in range(0, height, 3):
        cols = rng.choice(width, int(0.6 * width), replace=False)
        depth[row, cols] = rng.uniform(2.0, 80.0, cols.size)
    camera = Camera(70.0, 70.0, (width - 1) / 2, (height - 1) / 2, width, height)
    return Frame(np.zeros((height, width, 3), np.uint8), camera, depth)


def _footprints(src: int, dst: int) -> list[np.ndarray]:
    """Source pixels whose centre lies inside each destination pixel (pixel-centre convention:
    destination pixel ``i`` covers ``[i, i + 1)`` in destination units)."""
    centres = (np.arange(src) + 0.5) * (dst / src)
    return [np.nonzero((centres >= i) & (centres < i + 1))[0] for i in range(dst)]


# ---------------------------------------------------------------------- (a) depth_scale
def test_depth_scale_from_the_json_and_overridden_per_dataset(tmp_path):
    json_path = _dataset_folder(tmp_path, labels=False)
    stored = np.asarray(Image.open(tmp_path / "depth/0.png")).astype(np.float64)
    source = AnnotationSource(json_path)
    np.testing.assert_array_equal(source.frame(0).depth, (stored / 256).astype(np.float32))
    config = config_from_dict(
        {"name": "x", "datasets": [{"kind": "annotations", "path": str(json_path),
                                    "depth_scale": 1000}]},
        base_dir=tmp_path,
    )  # fmt: skip
    overridden = build_source(config.datasets[0])
    np.testing.assert_array_equal(overridden.frame(0).depth, (stored / 1000).astype(np.float32))


# ---------------------------------------------------------------------- (b) sparse labels
@pytest.mark.parametrize("t", [0.5, 0.7, 1.3])
@pytest.mark.parametrize("sparse", [True, None])  # None: detected (20 % valid < 30 %)
def test_sparse_lidar_labels_are_min_pooled_never_blended(t, sparse):
    frame = _lidar_frame()
    space = CanonicalSpace(focal_px=100.0, input_hw=(96, 128), variant="label", resize="fit")
    dataset = CanonicalTrainingSet(
        [_MemorySource(frame, sparse)], [1.0], space, variant="label",
        augmentation=Augmentation(resize_range=(t, t)),
    )  # fmt: skip
    canvas, record, _ = dataset.sample(0)
    assert record.scale == t and not any(record.crop)
    (top, left), (h, w) = record.offset, record.resized_hw
    depth_c = canvas.depth[top : top + h, left : left + w]
    valid_c = canvas.mask[top : top + h, left : left + w]
    assert not canvas.mask.sum() - valid_c.sum()  # nothing valid in the padding
    rows, cols = _footprints(60, h), _footprints(90, w)
    scale = np.float32(record.label_scale)
    assert record.label_scale == pytest.approx(100.0 / (70.0 * t), rel=1e-12)
    for i in range(h):
        for j in range(w):
            window = frame.depth[np.ix_(rows[i], cols[j])]
            measured = window[window > 0]
            if measured.size == 0:  # no measurement in the footprint: stays invalid
                assert not valid_c[i, j] and depth_c[i, j] == 0
            else:  # the nearest measured surface, exactly, times f_c / f_eff
                assert valid_c[i, j]
                assert depth_c[i, j] == measured.min() * scale
    if t > 1:  # upscaled: every point kept once, none copied onto a neighbour
        assert valid_c.sum() == (frame.depth > 0).sum()


def test_dense_labels_keep_nearest_neighbour_and_auto_detect_leaves_them_dense():
    rng = np.random.default_rng(3)
    depth = rng.uniform(1, 9, (40, 50)).astype(np.float32)
    depth[rng.random((40, 50)) < 0.1] = 0  # 90 % valid: dense
    frame = Frame(np.zeros((40, 50, 3), np.uint8), Camera(50.0, 50.0, 24.5, 19.5, 50, 40), depth)
    space = CanonicalSpace(focal_px=100.0, input_hw=(64, 80), variant="label", resize="fit")
    dataset = CanonicalTrainingSet(
        [_MemorySource(frame, None)],
        [1.0],
        space,
        variant="label",
        augmentation=Augmentation(resize_range=(1.3, 1.3)),
    )
    canvas, record, _ = dataset.sample(0)
    assert not any(record.crop)
    expected = frames.resize(frame, *record.resized_hw[::-1])  # nearest, as before
    (top, left), (h, w) = record.offset, record.resized_hw
    np.testing.assert_array_equal(
        canvas.depth[top : top + h, left : left + w],
        expected.depth * np.float32(record.label_scale),
    )


# ---------------------------------------------------------------------- (c) sky and normals
def _indexed_frame(height=12, width=16) -> Frame:
    """Dense depth = 1 + source pixel index, so every operation's source pixel is readable."""
    rng = np.random.default_rng(4)
    depth = (1 + np.arange(height * width, dtype=np.float32)).reshape(height, width)
    sem = rng.choice([SKY_ID, 0, 7, -1], (height, width)).astype(np.int32)
    normal = rng.normal(size=(height, width, 3)).astype(np.float32)
    camera = Camera(20.0, 21.0, 7.0, 5.5, width, height)
    return Frame(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), camera, depth,
                 sem=sem, normal=normal)  # fmt: skip


@pytest.mark.parametrize(
    "op",
    ["resize_down", "resize_up", "crop", "pad", "place", "flip", "vflip", "rotate6", "rotate5"],
)
def test_sky_labels_and_normals_follow_every_operation_exactly(op):
    frame = _indexed_frame()
    unit = frame.normal
    assert np.allclose(np.linalg.norm(unit, axis=2), 1, atol=1e-6)  # normalised on entry
    moved = {
        "resize_down": lambda f: frames.resize(f, 9, 7),
        "resize_up": lambda f: frames.resize(f, 23, 17),
        "crop": lambda f: frames.crop(f, 3, 2, 9, 7),
        "pad": lambda f: frames.pad(f, 2, 1, 3, 4),
        "place": lambda f: frames.place(f, -2, 3, 10, 20),
        "flip": frames.flip,
        "vflip": lambda f: frames.flip(f, vertical=True),
        "rotate6": lambda f: frames.rotate(f, 6),
        "rotate5": lambda f: frames.rotate(f, 5),
    }[op](frame)
    flat = np.rint(moved.depth).astype(np.int64) - 1  # source index, -1 in padding
    padding = ~moved.mask
    assert (moved.sem[padding] == -1).all() and (moved.normal[padding] == 0).all()
    source = flat[~padding]
    np.testing.assert_array_equal(moved.sem[~padding], frame.sem.reshape(-1)[source])
    expected = unit.reshape(-1, 3)[source].copy()
    if op == "flip":
        expected[:, 0] *= -1  # x mirrored
    elif op == "vflip":
        expected[:, 1] *= -1
    elif op == "rotate5":  # transpose: x and y swap
        expected = expected[:, [1, 0, 2]]
    elif op == "rotate6":  # transpose, then a horizontal flip
        expected = expected[:, [1, 0, 2]] * np.float32([-1, 1, 1])
    np.testing.assert_array_equal(moved.normal[~padding], expected)
    # the normals stay consistent with the geometry: flipping twice is the identity
    if op in ("flip", "vflip"):
        again = frames.flip(moved, vertical=op == "vflip")
        np.testing.assert_array_equal(again.normal, unit)


def test_annotation_sky_masks_and_normals_reach_the_batch(tmp_path):
    json_path = _dataset_folder(tmp_path)
    config = config_from_dict(
        {"name": "x", "input_hw": [32, 40], "resize_range": [1.2, 1.2], "flip_prob": 1.0,
         "datasets": [{"kind": "annotations", "path": str(json_path), "name": "mine",
                       "data_type": "denselidar"}]},
        base_dir=tmp_path,
    )  # fmt: skip
    from metricdepth.train.loop import build_dataset

    dataset = build_dataset(config)
    source = dataset.sources[0]
    raw = source.frame(dataset.locate(0)[1])
    assert (raw.sem[:5] == SKY_ID).all() and (raw.sem[5:] == 0).all()
    assert (raw.normal[:, :3] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(raw.normal[:, 3:], axis=2), 1, atol=1e-6)
    items = [dataset[i] for i in range(2)]
    batch = torch.utils.data.default_collate(items)
    assert batch["sem_mask"].shape == (2, 1, 32, 40) and batch["sem_mask"].dtype == torch.int32
    assert batch["normal"].shape == (2, 3, 32, 40) and batch["normal"].dtype == torch.float32
    assert batch["dataset"] == ["mine", "mine"] and batch["data_type"] == ["denselidar"] * 2
    for k, item in enumerate(items):
        canvas, record, _ = dataset.sample(k)
        sem, normal, mask = item["sem_mask"][0], item["normal"], item["mask"][0]
        top, bottom, left, right = record.pad
        assert item["pad"].tolist() == [top, bottom, left, right]
        band = torch.zeros_like(mask)
        band[:top], band[32 - bottom :], band[:, :left], band[:, 40 - right :] = 1, 1, 1, 1
        assert (sem[band] == -1).all() and (normal[:, band] == 0).all()
        # denselidar: sky pixels with a depth lose the sky label; sky is never a depth label
        assert not (mask & (sem == SKY_ID)).any()
        assert (sem == SKY_ID).any() and (sem == -1)[~band].any()
        # flipped (flip_prob 1): the x component of every normal is mirrored, then nearest
        flipped = frames.flip(source.frame(dataset.locate(k)[1]))
        resized = frames.resize(flipped, *record.resized_hw[::-1])
        (h, w), inner = record.resized_hw, normal[:, top:, left:]
        assert (resized.normal[..., 0] != 0).any()
        np.testing.assert_array_equal(inner[:, :h, :w].numpy().transpose(1, 2, 0), resized.normal)


def test_batches_carry_the_canonical_intrinsic_and_pad_of_their_record(tmp_path):
    """``intrinsic`` is ``record.camera_c``'s K with its focals times the label scale (Metric3D's
    canonical K: fx = f_c fx / f_mean), ``pad`` is ``record.pad``; back-projecting a canvas
    label with K gives the metric X, Y of the original pixel's 3-D point and Z = depth_c."""
    from metricdepth.train.loop import build_dataset
    from metricdepth.train.step import official_batch

    json_path = _dataset_folder(tmp_path, labels=False)  # 24x32, cam_in [40, 41, 15.5, 11.5]
    base = {"name": "x", "canonical_focal_px": 250.0, "input_hw": [32, 40],
            "datasets": [{"kind": "annotations", "path": str(json_path)}]}  # fmt: skip
    # 1. no resize (pad only, no flip): canvas pixel (x + left, y + top) is original (x, y)
    dataset = build_dataset(config_from_dict(dict(base, flip_prob=0.0), base_dir=tmp_path))
    for k in range(2):
        item = dataset[k]
        _, record, _ = dataset.sample(k)
        assert item["pad"].dtype == torch.int64 and item["pad"].tolist() == list(record.pad)
        assert record.pad == (4, 4, 4, 4)
        K = item["intrinsic"]  # noqa: N806
        assert K.dtype == torch.float32 and K.shape == (3, 3)
        label_scale = 250.0 / 40.5  # f_c / f_mean
        np.testing.assert_allclose(
            K.numpy(),
            [[40 * label_scale, 0, 15.5 + 4], [0, 41 * label_scale, 11.5 + 4], [0, 0, 1]],
            rtol=1e-7,
        )
        assert K[0, 0].item() == pytest.approx(250.0 * 40 / 40.5, rel=1e-7)
        original = dataset.sources[0].frame(dataset.locate(k)[1])
        ys, xs = np.nonzero(original.depth > 0)
        z_m = original.depth[ys, xs].astype(np.float64)
        point = np.stack([(xs - 15.5) / 40 * z_m, (ys - 11.5) / 41 * z_m, z_m])  # metres
        depth_c = item["depth_c"][0].numpy().astype(np.float64)[ys + 4, xs + 4]
        np.testing.assert_allclose(depth_c, z_m * label_scale, rtol=1e-6)
        pixels = np.stack([xs + 4, ys + 4, np.ones_like(xs)]).astype(np.float64)
        back = np.linalg.inv(K.double().numpy()) @ pixels * depth_c
        np.testing.assert_allclose(back[:2], point[:2], rtol=1e-5, atol=1e-5)  # metric X, Y
        np.testing.assert_allclose(back[2], depth_c)  # Z: canonical depth
    # 2. random resize, crop or pad, flip: a 3-D point projects to the same canvas pixel with
    # camera_c and its metric depth as with K and its canonical depth
    config = config_from_dict(
        dict(base, resize_range=[0.6, 1.6], flip_prob=0.5, focal_mode="fx"), base_dir=tmp_path
    )
    dataset = build_dataset(config)
    items = [dataset[k] for k in range(6)]
    batch = official_batch(torch.utils.data.default_collate(items), torch.device("cpu"))
    assert batch["intrinsic"].shape == (6, 3, 3) and batch["pad"].shape == (6, 4)
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(-3, 3, 20), rng.uniform(-2, 2, 20), rng.uniform(1, 9, 20)])
    scales = set()
    for k in range(len(items)):
        _, record, _ = dataset.sample(k)
        assert batch["pad"][k].tolist() == list(record.pad)
        camera, K = record.camera_c, batch["intrinsic"][k].double().numpy()  # noqa: N806
        # focal_mode fx: fx = f_c times (realised / nominal resize), within 1/32 on 32 pixels
        realised = record.resized_hw[1] / 32
        assert K[0, 0] == pytest.approx(250.0 * realised / record.scale, rel=1e-6)
        assert abs(K[0, 0] / 250.0 - 1) < 1 / 32 / 0.6
        canonical = points * np.array([[1.0], [1.0], [record.label_scale]])
        via_k = K @ canonical
        via_camera = camera.K @ points
        np.testing.assert_allclose(via_k[:2] / via_k[2], via_camera[:2] / via_camera[2], rtol=1e-6)
        scales.add(round(record.scale, 6))
    assert len(scales) > 1  # the resize was random


def test_sem_file_and_label_errors(tmp_path):
    json_path = _dataset_folder(tmp_path, labels=False)
    data = json.loads(json_path.read_text())
    sem = np.full((24, 32), 3, np.uint8)
    sem[:2] = 142
    sem[2] = 255
    Image.fromarray(sem).save(tmp_path / "sem.png")
    data["files"][0]["sem"] = "sem.png"
    json_path.write_text(json.dumps(data))
    frame = AnnotationSource(json_path, data_type="stereo").frame(0)
    assert (frame.sem[:2] == SKY_ID).all() and (frame.sem[2] == -1).all()
    assert (frame.sem[3:] == 3).all()
    data["files"][0]["sky_mask"] = "sem.png"
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'sky_mask' or 'sem', not both"):
        read_annotations(json_path)
    del data["files"][0]["sky_mask"]
    data["files"][0]["normal"] = "normal.png"
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'normal' must be a \.npy"):
        read_annotations(json_path)
    data["files"][0]["normal"] = "n.npy"
    np.save(tmp_path / "n.npy", np.zeros((24, 31, 3), np.float32))
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="label is 31x24 but the image is 32x24"):
        AnnotationSource(json_path).frame(0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data_type": "kinect"}, "data_type: must be one of lidar"),
        ({"sparse": "yes"}, "sparse: must be true, false or null"),
        ({"name": ""}, "name: must be a non-empty string"),
        ({"assumed_focal_px": -3}, "assumed_focal_px: must be a finite number > 0"),
    ],
)
def test_dataset_label_fields_are_validated(tmp_path, change, message):
    raw = {"name": "x", "datasets": [{"kind": "annotations", "path": "a.json", **change}]}
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw, base_dir=tmp_path)


def test_synthetic_sources_keep_their_own_names_and_the_batch_says_synthetic(tmp_path):
    """Two synthetic datasets are told apart in messages (``name`` carries seed and size);
    the losses read ``dataset`` = ``synthetic``, or the name the config gives."""
    synth = {"height": 16, "width": 24, "sizes": [[16, 24]]}
    raw = {"name": "x", "input_hw": [16, 24], "datasets": [
        {"kind": "synthetic", "seed": 1, "num_scenes": 3, "synth": synth},
        {"kind": "synthetic", "seed": 2, "num_scenes": 5, "synth": synth},
        {"kind": "synthetic", "seed": 2, "num_scenes": 5, "synth": synth, "name": "Taskonomy"},
    ]}  # fmt: skip
    from metricdepth.train.loop import build_dataset

    dataset = build_dataset(config_from_dict(raw, base_dir=tmp_path))
    names = [s.name for s in dataset.sources]
    assert names == ["synthetic(seed=1, n=3)", "synthetic(seed=2, n=5)", "Taskonomy"]
    seen = {}
    for g in range(40):
        seen.setdefault(dataset.locate(g)[0], dataset[g]["dataset"])
    assert seen == {0: "synthetic", 1: "synthetic", 2: "Taskonomy"}


# ---------------------------------------------------------------------- (d) mixing
def test_mixing_frequencies_follow_the_weights_within_binomial_bounds():
    frame = _lidar_frame(12, 16)
    space = CanonicalSpace(focal_px=100.0, input_hw=(12, 16), variant="label", resize="fit")
    weights = [1.0, 2.0, 5.0]
    dataset = CanonicalTrainingSet(
        [_MemorySource(frame, False) for _ in weights], weights, space, variant="label", seed=9
    )
    n = 8000
    picks = np.bincount([dataset.locate(i)[0] for i in range(n)], minlength=3)
    for count, weight in zip(picks, weights, strict=True):
        p = weight / sum(weights)
        # a binomial count lies within 4 standard deviations of n p (fails with p ~ 6e-5)
        assert abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (picks, weights)


# ---------------------------------------------------------------------- (e) assumed focal
def test_entries_without_cam_in_need_an_assumed_focal(tmp_path):
    json_path = _dataset_folder(tmp_path, cam_in=False, labels=False)
    with pytest.raises(ValueError, match="no 'cam_in'.*assumed_focal_px"):
        AnnotationSource(json_path)
    raw = {"name": "x", "datasets": [{"kind": "annotations", "path": str(json_path)}]}
    config = config_from_dict(raw, base_dir=tmp_path)
    with pytest.raises(ValueError, match="assumed_focal_px"):
        build_source(config.datasets[0])
    assert assumed_focal(config) is None
    assert model_spec(config).assumed_focal_px is None
    raw["datasets"][0]["assumed_focal_px"] = 30
    config = config_from_dict(raw, base_dir=tmp_path)
    assert assumed_focal(config) == 30.0
    assert model_spec(config).assumed_focal_px == 30.0  # the trained model's spec records it
    camera = build_source(config.datasets[0]).frame(0).camera
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (30.0, 30.0, 15.5, 11.5)


def test_assumed_focal_config_rules(tmp_path):
    synth = {"kind": "synthetic", "assumed_focal_px": 500}
    with pytest.raises(ValueError, match="only applies to kind 'annotations'"):
        config_from_dict({"name": "x", "datasets": [synth]}, base_dir=tmp_path)
    two = [{"kind": "annotations", "path": "a.json", "assumed_focal_px": f} for f in (500, 600)]
    with pytest.raises(ValueError, match="assume different focal lengths"):
        config_from_dict({"name": "x", "datasets": two}, base_dir=tmp_path)


def test_spec_records_the_assumed_focal_only_when_set():
    text = ASSET_SPEC.read_text(encoding="utf-8")
    spec = ModelSpec.from_json(text)
    assert spec.assumed_focal_px is None
    assert spec.to_json().strip() == text.strip()  # existing specs: byte-identical
    assert "assumed_focal_px" not in spec.to_json()
    assumed = replace(spec, assumed_focal_px=512)
    assert ModelSpec.from_json(assumed.to_json()) == assumed
    assert json.loads(assumed.to_json())["assumed_focal_px"] == 512.0
    with pytest.raises(ValueError, match="assumed_focal_px must be > 0"):
        replace(spec, assumed_focal_px=0.0)


def test_predict_warns_for_another_camera_than_the_assumed_one(capsys):
    from metricdepth.cli import warn_assumed_camera
    from metricdepth.models.registry import build_model
    from metricdepth.pipeline import CameraMismatchWarning, predict

    spec = replace(ModelSpec.from_json(ASSET_SPEC.read_text()), assumed_focal_px=100.0)
    model = build_model(spec)
    image = np.zeros((48, 64, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same camera (within 5 %): no warning
        predict(model, image, Camera(104.0, 104.0, 31.5, 23.5, 64, 48))
    with pytest.warns(CameraMismatchWarning, match=r"assumed focal of 100 px.* 150 px \(\+50%\)"):
        predict(model, image, Camera(150.0, 150.0, 31.5, 23.5, 64, 48))
    other = replace(spec, assumed_focal_px=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model with real intrinsics never warns
        predict(build_model(other), image, Camera(150.0, 150.0, 31.5, 23.5, 64, 48))
    warn_assumed_camera(spec, None, 150.0, None)
    warn_assumed_camera(spec, (99.0, 101.0, 31.5, 23.5), None, None)  # mean 100: fine
    warn_assumed_camera(spec, None, None, None)  # per-image cameras: a reminder
    warn_assumed_camera(other, None, 150.0, None)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines)
    assert "150 px" in lines[0] and "give --focal 100" in lines[1]


def test_a_train_config_built_directly_refuses_two_assumed_focals(tmp_path):
    """The agreement is the config's rule (checked once, in ``TrainConfig``), so a config
    built without ``config_from_dict`` cannot record one of two assumed cameras either."""
    one = config_from_dict(
        {"name": "x", "datasets": [{"kind": "annotations", "path": "a.json",
                                    "assumed_focal_px": 500}]},
        base_dir=tmp_path,
    )  # fmt: skip
    other = replace(one.datasets[0], assumed_focal_px=600.0)
    with pytest.raises(ValueError, match=r"datasets: assume different focal lengths \[500.0, 600"):
        replace(one, datasets=(one.datasets[0], other))
    same = replace(one, datasets=(one.datasets[0], replace(other, assumed_focal_px=500.0)))
    assert assumed_focal(same) == 500.0
