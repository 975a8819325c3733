"""Tests for metricdepth.data.annotations (Metric3D's annotation JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, require_shared
from metricdepth.camera import Camera
from metricdepth.data.annotations import (
    AnnotationEntry,
    camera_for,
    read_annotations,
    write_annotations,
)
from metricdepth.io import load_image, read_depth

SAMPLES = SHARED / "samples" / "metric3d_demo"
CAM = [707.0493, 707.0493, 604.0814, 180.5066]


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_read_paths_keys_and_values(tmp_path):
    data = {
        "files": [
            {"rgb": "rgb/0001.png", "depth": "depth/0001.png", "depth_scale": 256, "cam_in": CAM},
            {"rgb": "./scene x/a.b.jpg", "extra": {"sem": "ignored"}},
            {"rgb": "rgb/sub/../0002.jpeg", "depth": None, "cam_in": None, "depth_scale": 1000.0},
        ]
    }
    path = _write(tmp_path / "set" / "ann.json", data)
    entries = read_annotations(path)
    root = tmp_path / "set"
    assert entries[0] == AnnotationEntry(
        root / "rgb/0001.png", root / "depth/0001.png", 256.0, tuple(CAM), "rgb/0001"
    )
    assert isinstance(entries[0].depth_scale, float) and entries[0].rgb.is_absolute()
    assert entries[1].key == "scene x/a.b" and entries[1].depth is None
    assert entries[1].intrinsics is None and entries[1].depth_scale is None
    assert entries[2].rgb == root / "rgb/0002.jpeg" and entries[2].key == "rgb/0002"
    assert entries[2].depth is None and entries[2].depth_scale == 1000.0


def test_explicit_root(tmp_path):
    path = _write(
        tmp_path / "repo" / "data" / "kitti" / "ann.json",
        {
            "files": [
                {
                    "rgb": "data/kitti/rgb/5.png",
                    "depth": "data/kitti/depth/5.png",
                    "depth_scale": 256,
                }
            ]
        },
    )
    (entry,) = read_annotations(path, root=tmp_path / "repo")
    assert entry.rgb == tmp_path / "repo/data/kitti/rgb/5.png"
    assert entry.depth == tmp_path / "repo/data/kitti/depth/5.png"
    assert entry.key == "data/kitti/rgb/5"
    # Relative to the JSON's own folder the same strings point elsewhere, but stay inside.
    (default,) = read_annotations(path)
    assert default.rgb == tmp_path / "repo/data/kitti/data/kitti/rgb/5.png"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rgb", "/etc/passwd"),
        ("rgb", "../outside.png"),
        ("rgb", "a/../../outside.png"),
        ("rgb", "a/.."),
        ("depth", "../../d.png"),
        ("depth", "/abs/d.png"),
    ],
)
def test_paths_escaping_the_root_are_refused(tmp_path, field, value):
    entry = {"rgb": "ok.png", "depth": "ok_d.png", "depth_scale": 1.0, field: value}
    path = _write(tmp_path / "ann.json", {"files": [{"rgb": "first.png"}, entry]})
    with pytest.raises(ValueError, match=rf"entry 1: '{field}' '{value}'") as info:
        read_annotations(path)
    assert "\n" not in str(info.value)


def test_symlink_inside_root_is_allowed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "root").mkdir()
    os.symlink(elsewhere, tmp_path / "root" / "linked")
    path = _write(tmp_path / "root" / "ann.json", {"files": [{"rgb": "linked/a.png"}]})
    (entry,) = read_annotations(path)
    assert entry.rgb == tmp_path / "root/linked/a.png" and entry.key == "linked/a"


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ([{"depth": "d.png"}], "entry 0: missing 'rgb'"),
        ([{"rgb": "a.png"}, {"rgb": 5}], "entry 1: 'rgb' must be a non-empty path"),
        ([{"rgb": ""}], "entry 0: 'rgb' must be a non-empty path"),
        (["a.png"], "entry 0 must be an object"),
        ([{"rgb": "a.png", "cam_in": [1, 2, 3]}], "entry 0: 'cam_in'"),
        ([{"rgb": "a.png", "cam_in": [1, 2, 3, "4"]}], "entry 0: 'cam_in'"),
        ([{"rgb": "a.png", "cam_in": [1, 2, 3, float("nan")]}], "entry 0: 'cam_in'"),
        ([{"rgb": "a.png", "cam_in": [0, 2, 3, 4]}], "entry 0: 'cam_in'"),
        ([{"rgb": "a.png", "cam_in": [True, 2, 3, 4]}], "entry 0: 'cam_in'"),
        ([{"rgb": "a.png", "cam_in": "1 2 3 4"}], "entry 0: 'cam_in'"),
        ([{"rgb": "a.png", "depth": "d.png"}], "entry 0: 'depth' is given without 'depth_scale'"),
        ([{"rgb": "a.png", "depth": "d.png", "depth_scale": 0}], "entry 0: 'depth_scale'"),
        ([{"rgb": "a.png", "depth": "d.png", "depth_scale": -256}], "entry 0: 'depth_scale'"),
        ([{"rgb": "a.png", "depth": "d.png", "depth_scale": "256"}], "entry 0: 'depth_scale'"),
        ([{"rgb": "a.png", "depth": 3, "depth_scale": 256}], "entry 0: 'depth' must be"),
        ([{"rgb": "a.png"}, {"rgb": "b.png"}, {"rgb": "./a.png"}], "entry 2: .*duplicates entry 0"),
        ([{"rgb": "x/a.png"}, {"rgb": "x/a.jpg"}], "entry 1: .*same key 'x/a'"),
    ],
)
def test_invalid_entries(tmp_path, files, match):
    path = _write(tmp_path / "ann.json", {"files": files})
    with pytest.raises(ValueError, match=match) as info:
        read_annotations(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "'files' list"),
        ('{"images": []}', "'files' list"),
        ('{"files": {"rgb": "a.png"}}', "'files' list"),
    ],
)
def test_invalid_files(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_annotations(_write(tmp_path / "ann.json", text))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json: cannot read"):
        read_annotations(tmp_path / "nope.json")


def test_empty_files_list(tmp_path):
    assert read_annotations(_write(tmp_path / "ann.json", {"files": []})) == []


def test_camera_for(tmp_path):
    path = _write(
        tmp_path / "ann.json",
        {"files": [{"rgb": "a.png", "cam_in": [500, 510.5, 320.25, 239.5]}, {"rgb": "b.png"}]},
    )
    with_cam, without = read_annotations(path)
    assert camera_for(with_cam, 640, 480) == Camera(500.0, 510.5, 320.25, 239.5, 640, 480)
    with pytest.raises(ValueError, match="'b' has no 'cam_in'"):
        camera_for(without, 640, 480)


def test_write_then_read_round_trip(tmp_path):
    root = tmp_path / "root"
    entries = [
        AnnotationEntry(root / "rgb/1.png", root / "depth/1.png", 256.0, tuple(CAM), "rgb/1"),
        AnnotationEntry(root / "deep/er/2.jpg", None, None, None, "deep/er/2"),
    ]
    out = tmp_path / "meta" / "ann.json"  # the JSON need not live in the root
    write_annotations(out, entries, root)
    stored = json.loads(out.read_text())
    assert stored == {
        "files": [
            {"cam_in": CAM, "rgb": "rgb/1.png", "depth": "depth/1.png", "depth_scale": 256.0},
            {"rgb": "deep/er/2.jpg"},
        ]
    }
    assert read_annotations(out, root=root) == entries
    assert [p.name for p in out.parent.iterdir()] == ["ann.json"]


def test_write_refuses_bad_entries_and_keeps_old_file(tmp_path):
    root = tmp_path / "root"
    out = tmp_path / "ann.json"
    write_annotations(out, [AnnotationEntry(root / "a.png", None, None, None, "a")], root)
    before = out.read_bytes()
    outside = AnnotationEntry(tmp_path / "b.png", None, None, None, "b")
    with pytest.raises(ValueError, match=r"entry 0: 'rgb' .*b\.png is not inside"):
        write_annotations(out, [outside], root)
    no_scale = AnnotationEntry(root / "a.png", root / "d.png", None, None, "a")
    with pytest.raises(ValueError, match="entry 0: 'depth' is given without 'depth_scale'"):
        write_annotations(out, [no_scale], root)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]


def test_metric3d_demo_samples():
    require_shared(SAMPLES, "Metric3D demo samples")
    kitti = read_annotations(SAMPLES / "kitti" / "test_annotations.json")
    nyu = read_annotations(SAMPLES / "nyu" / "test_annotations.json")
    assert [e.key for e in kitti] == [f"rgb/{n:010d}" for n in (5, 50, 100)]
    assert [e.key for e in nyu] == [f"rgb/rgb_{n:05d}" for n in (0, 50, 100)]
    for entries, size, scale, cam, far in (
        (kitti, (1242, 375), 256.0, CAM, 90.0),
        (nyu, (640, 480), 1000.0, [518.8579, 519.46961, 325.58245, 253.73617], 10.0),
    ):
        entry = entries[1]
        assert entry.depth_scale == scale and entry.intrinsics == tuple(cam)
        camera = camera_for(entry, *size)
        rgb, rotated, orientation = load_image(entry.rgb, camera)
        assert orientation == 1 and rotated == camera and rgb.shape == (size[1], size[0], 3)
        depth = read_depth(entry.depth, entry.depth_scale)
        assert depth.shape == rgb.shape[:2]
        valid = depth[depth > 0]
        assert 0.05 < valid.size / depth.size < 1.0
        assert 0.5 < valid.min() and valid.max() < far
        # Stored values are exact multiples of 1 / depth_scale.
        np.testing.assert_allclose(valid * scale, np.round(valid * scale), atol=1e-3)
