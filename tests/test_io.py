"""Tests for metricdepth.io: images (modes, EXIF orientation, errors), depth files, PLY."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from metricdepth.camera import Camera
from metricdepth.io import (
    atomic_write,
    load_image,
    read_depth,
    read_image,
    write_depth,
    write_ply,
)

RNG = np.random.default_rng(0)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _stored(path: Path, attribute: str):
    """An attribute of the image file as Pillow opens it (to check the fixture is what we mean)."""
    with Image.open(path) as image:
        return getattr(image, attribute)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ atomic_write
def test_atomic_write_temp_name_and_rename(tmp_path):
    target = tmp_path / "new" / "sub" / "out.png"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".")
        assert tmp.suffix == ".png" and tmp != target and not target.exists()
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert _leftovers(target.parent) == []


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_existing_file(tmp_path):
    target = tmp_path / "depth.png"
    write_depth(target, np.full((4, 5), 2.0), depth_scale=1000)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"garbage")
            raise KeyboardInterrupt
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    # A writer that fails half-way through (Pillow cannot save this) also leaves no trace.
    with pytest.raises(OSError):
        with atomic_write(target) as tmp:
            Image.new("CMYK", (2, 2)).save(tmp, format="PNG")
    assert target.read_bytes() == before and _leftovers(tmp_path) == []


def test_atomic_file_writes_through_one_handle_and_fsyncs_it(tmp_path, monkeypatch):
    """``atomic_file``: the temporary opened once, fsync'ed through that descriptor before
    the rename (not with ``sync=False``); the umask applies as for ``open``."""
    import metricdepth.io as io_module

    synced, opened = [], []
    real_fsync, real_open = os.fsync, os.open
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(
        io_module.os, "open", lambda *a, **k: (opened.append(a[0]), real_open(*a, **k))[1]
    )
    target = tmp_path / "sub" / "out.npy"
    with io_module.atomic_file(target) as handle:
        assert not target.exists() and len(_leftovers(target.parent)) == 1  # .out.*.tmp.npy
        np.save(handle, np.arange(5, dtype=np.float32))
        descriptor = handle.fileno()
    np.testing.assert_array_equal(np.load(target), np.arange(5, dtype=np.float32))
    assert synced == [descriptor] and len(opened) == 1
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with io_module.atomic_file(tmp_path / "record.json", sync=False) as handle:
        handle.write(b"{}\n")
    assert (tmp_path / "record.json").read_bytes() == b"{}\n" and synced == [descriptor]
    assert _leftovers(tmp_path) == [] and _leftovers(target.parent) == []


def test_atomic_file_failure_keeps_the_old_file_and_joins_a_group(tmp_path):
    from metricdepth.io import atomic_file, atomic_group

    target = tmp_path / "a.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(target) as handle:
            handle.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with atomic_group():
        with atomic_file(target) as handle:
            handle.write(b"new")
        assert target.read_bytes() == b"old"  # renamed at the end of the group
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == []


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# ------------------------------------------------------------------ image modes
def test_read_rgb_png_exact(tmp_path):
    rgb = RNG.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out, orientation = read_image(tmp_path / "a.png")
    assert orientation == 1 and out.dtype == np.uint8 and out.shape == (7, 11, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_grey_and_one_bit(tmp_path):
    grey = RNG.integers(0, 256, (3, 4), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(tmp_path / "l.png")[0], np.dstack([grey] * 3))
    bits = np.array([[True, False, True], [False, False, True]])
    Image.fromarray(bits).save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")[0]
    np.testing.assert_array_equal(out, np.dstack([bits.astype(np.uint8) * 255] * 3))


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)  # fully transparent: colour kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png")[0], rgba[..., :3])
    la = np.dstack([np.array([[10, 200, 77]], np.uint8), np.array([[0, 128, 255]], np.uint8)])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "la.png")[0], [[[10] * 3, [200] * 3, [77] * 3]]
    )


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    image.putpixel((1, 0), 1)
    image.putpixel((2, 0), 2)
    image.info["transparency"] = b"\x00\x80"  # tRNS bytes: entry 0 clear, entry 1 half
    image.save(tmp_path / "p.png")
    assert _stored(tmp_path / "p.png", "info")["transparency"] == b"\x00\x80"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_image(tmp_path / "p.png")[0]
    np.testing.assert_array_equal(out, [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])


def test_sixteen_bit_grey_and_rgb_keep_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 257, 32767, 32768, 40000, 65535]], np.uint16)
    high = np.array([[0, 0, 1, 1, 127, 128, 156, 255]], np.uint8)  # v // 256
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert _stored(tmp_path / "g16.png", "mode").startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[0], np.dstack([high] * 3))
    rgb16 = np.dstack([values, values[:, ::-1], np.full_like(values, 514)])
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    expected = np.dstack([high, high[:, ::-1], np.full_like(high, 2)])
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png")[0], expected)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert _stored(tmp_path / "c.jpg", "mode") == "CMYK"
    out = read_image(tmp_path / "c.jpg")[0]
    assert out.shape == (8, 16, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 3  # pure red, up to JPEG rounding


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 3), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert _stored(tmp_path / "a.gif", "n_frames") == 3
    out = read_image(tmp_path / "a.gif")[0]
    assert out.shape == (3, 5, 3)
    np.testing.assert_array_equal(out, np.broadcast_to([255, 0, 0], (3, 5, 3)))


# ------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_and_camera(tmp_path, orientation):
    stored = RNG.integers(0, 200, (3, 5, 3), dtype=np.uint8)  # H=3, W=5: non-square
    u, v = 3, 0  # marked pixel, column 3 of row 0
    stored[v, u] = (255, 255, 255)
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(stored).save(path, exif=_exif(orientation))

    out, found = read_image(path)
    assert found == orientation
    # Independent oracle: Pillow's own EXIF transpose.
    with Image.open(path) as image:
        oracle = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(out, oracle)
    # A camera whose principal point sits on the marked pixel keeps it there after rotation.
    rgb, camera, found = load_image(path, Camera(100.0, 120.0, u, v, 5, 3), camera_grid="stored")
    np.testing.assert_array_equal(rgb, out)
    assert found == orientation and camera == Camera(100.0, 120.0, u, v, 5, 3).rotated(orientation)
    assert camera.size == (out.shape[1], out.shape[0])
    marked = np.argwhere(out.min(axis=2) == 255)
    assert marked.tolist() == [[camera.cy, camera.cx]]
    assert {camera.fx, camera.fy} == {100.0, 120.0}
    assert camera.fx == (120.0 if orientation >= 5 else 100.0)


def test_orientation_in_jpeg_and_invalid_value(tmp_path):
    Image.new("RGB", (40, 16), (0, 128, 255)).save(tmp_path / "p.jpg", exif=_exif(6))
    out, orientation = read_image(tmp_path / "p.jpg")
    assert orientation == 6 and out.shape == (40, 16, 3)
    Image.new("RGB", (4, 2)).save(tmp_path / "bad.png", exif=_exif(9))
    out, orientation = read_image(tmp_path / "bad.png")
    assert orientation == 1 and out.shape == (2, 4, 3)


def test_load_image_camera_size_mismatch(tmp_path):
    Image.new("RGB", (5, 3)).save(tmp_path / "a.png", exif=_exif(6))
    rgb, camera, orientation = load_image(tmp_path / "a.png")
    assert camera is None and orientation == 6 and rgb.shape == (5, 3, 3)
    # With camera_grid="stored" the camera must describe the stored 5x3 grid ...
    with pytest.raises(ValueError, match=r"a\.png.*3x5.*stored image is 5x3"):
        load_image(tmp_path / "a.png", Camera(10, 10, 1, 2, 3, 5), camera_grid="stored")
    # ... and by default the displayed 3x5 one, returned as given.
    with pytest.raises(ValueError, match=r"a\.png.*5x3.*displayed image is 3x5"):
        load_image(tmp_path / "a.png", Camera(10, 10, 1, 2, 5, 3))
    displayed = Camera(10, 11, 1, 2, 3, 5)
    assert load_image(tmp_path / "a.png", displayed)[1] == displayed


# ------------------------------------------------------------------ image errors
def _image_error(path, match: str) -> str:
    with pytest.raises(ValueError, match=match) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and Path(path).name in message
    return message


def test_image_errors(tmp_path):
    _image_error(tmp_path / "missing.png", "no such file")
    (tmp_path / "text.png").write_text("not an image at all")
    _image_error(tmp_path / "text.png", "not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _image_error(tmp_path / "empty.jpg", "not an image")
    _image_error(tmp_path, "cannot read image")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(tmp_path, suffix):
    rgb = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    _image_error(tmp_path / f"cut{suffix}", "cannot read image")


def test_decompression_bomb(tmp_path, monkeypatch):
    Image.new("RGB", (40, 30)).save(tmp_path / "bomb.png")  # 1200 pixels
    assert read_image(tmp_path / "bomb.png")[0].shape == (30, 40, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 > limit: Pillow only warns
    _image_error(tmp_path / "bomb.png", "decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1200 > 2 * limit: Pillow raises
    _image_error(tmp_path / "bomb.png", "decompression bomb")


# ------------------------------------------------------------------ depth
def test_depth_png_round_trip_and_stored_values(tmp_path):
    depth = np.array([[0.0, 1.0, 2.5, np.nan], [-1.0, np.inf, 300.0, 0.0004]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_depth(tmp_path / "d.png", depth, depth_scale=256)
    stored = cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED)  # independent reader
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, [[0, 256, 640, 0], [0, 0, 65535, 0]])
    back = read_depth(tmp_path / "d.png", depth_scale=256)
    assert back.dtype == np.float32 and back.shape == (2, 4)
    np.testing.assert_array_equal(back, np.array([[0, 1, 2.5, 0], [0, 0, 65535 / 256, 0]]))
    write_depth(tmp_path / "mm.png", np.array([[1.2344, 0.5]]))  # default: millimetres
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "mm.png"), -1), [[1234, 500]])
    np.testing.assert_allclose(read_depth(tmp_path / "mm.png", 1000), [[1.234, 0.5]], rtol=1e-7)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".tiff"])
def test_depth_float_formats(tmp_path, suffix):
    depth = RNG.uniform(0.1, 80.0, (6, 9)).astype(np.float32)
    write_depth(tmp_path / f"d{suffix}", depth)
    back = read_depth(tmp_path / f"d{suffix}")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, depth)
    # Files from elsewhere: invalid values are cleaned, depth_scale divides.
    dirty = np.array([[np.nan, -2.0, np.inf], [1.5, 0.0, 3000.0]], np.float64)
    other = tmp_path / f"other{suffix}"
    np.save(other, dirty) if suffix == ".npy" else tifffile.imwrite(other, dirty)
    np.testing.assert_array_equal(read_depth(other), [[0, 0, 0], [1.5, 0, 3000]])
    np.testing.assert_array_equal(
        read_depth(other, depth_scale=1000), np.float32([[0, 0, 0], [0.0015, 0, 3]])
    )
    write_depth(tmp_path / f"s{suffix}", np.array([[2.0, np.nan]]), depth_scale=1000)
    np.testing.assert_array_equal(read_depth(tmp_path / f"s{suffix}", 1000), [[2.0, 0.0]])


def test_depth_errors(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(ValueError, match="eight.png.*16-bit grey.*mode L"):
        read_depth(tmp_path / "eight.png", 1000)
    write_depth(tmp_path / "ok.png", np.ones((2, 2)))
    with pytest.raises(ValueError, match="needs depth_scale"):
        read_depth(tmp_path / "ok.png")
    for bad in (0, -5, float("nan"), "1000", True):
        with pytest.raises(ValueError, match="depth_scale"):
            read_depth(tmp_path / "ok.png", bad)
    with pytest.raises(ValueError, match="no such file"):
        read_depth(tmp_path / "nope.npy")
    with pytest.raises(ValueError, match="unknown depth format '.exr'"):
        read_depth(tmp_path / "d.exr")
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 3)))
    np.save(tmp_path / "int.npy", np.zeros((2, 2), np.uint16))
    for name in ("three.npy", "int.npy"):
        with pytest.raises(ValueError, match="2-D float array"):
            read_depth(tmp_path / name)
    (tmp_path / "junk.tif").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.tif: cannot read depth"):
        read_depth(tmp_path / "junk.tif")
    with pytest.raises(ValueError, match="2-D"):
        write_depth(tmp_path / "x.npy", np.zeros((2, 2, 1)))
    assert not (tmp_path / "x.npy").exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------ PLY
def _read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    types = {"float": "<f4", "uchar": "u1"}
    fields = [
        (line.split()[2], types[line.split()[1]]) for line in header if line.startswith("property")
    ]
    count = int(next(line for line in header if line.startswith("element vertex")).split()[2])
    body = np.frombuffer(data[end:], dtype=np.dtype(fields))
    assert len(body) == count
    return header, body


def test_ply_grid_with_colors_normals_and_mask(tmp_path):
    points = RNG.normal(size=(3, 4, 3)).astype(np.float32)
    colors = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    normals = RNG.normal(size=(3, 4, 3))
    mask = np.zeros((3, 4), bool)
    mask[0, 1] = mask[2, 3] = mask[1, 0] = True
    points[0, 0] = np.nan  # masked out, so allowed
    count = write_ply(tmp_path / "c.ply", points, colors=colors, normals=normals, mask=mask)
    header, body = _read_ply(tmp_path / "c.ply")
    assert count == 3
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 3"]
    names = [line.split()[2] for line in header if line.startswith("property")]
    assert names == "x y z red green blue nx ny nz".split()
    order = [(0, 1), (1, 0), (2, 3)]  # row-major order of the mask
    for i, (r, c) in enumerate(order):
        assert [body[n][i] for n in ("x", "y", "z")] == points[r, c].tolist()
        assert [body[n][i] for n in ("red", "green", "blue")] == colors[r, c].tolist()
        expected = normals[r, c].astype(np.float32).tolist()
        assert [body[n][i] for n in ("nx", "ny", "nz")] == expected


def test_ply_flat_points_only_and_errors(tmp_path):
    points = np.array([[1.0, -2.0, 3.5], [0.25, 0.0, 1e3]])
    assert write_ply(tmp_path / "p.ply", points) == 2
    header, body = _read_ply(tmp_path / "p.ply")
    expected = "ply|format binary_little_endian 1.0|element vertex 2|property float x|"
    assert header == (expected + "property float y|property float z|end_header").split("|")
    np.testing.assert_array_equal(np.stack([body["x"], body["y"], body["z"]], 1), points)
    assert (tmp_path / "p.ply").stat().st_size == len("\n".join(header)) + 1 + 2 * 12
    with pytest.raises(ValueError, match="points"):
        write_ply(tmp_path / "bad.ply", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="mask"):
        write_ply(tmp_path / "bad.ply", points, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="colors"):
        write_ply(tmp_path / "bad.ply", points, colors=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        write_ply(tmp_path / "bad.ply", np.array([[0.0, np.inf, 1.0]]))
    assert not (tmp_path / "bad.ply").exists() and _leftovers(tmp_path) == []
