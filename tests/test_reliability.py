"""The reliability catalogue (issue 8): bad inputs and faults, each driven through the CLI and
the Python API. docs/reliability.md is the same catalogue as a table.

For every refused case the command must exit non-zero (2; with ``--keep-going`` the bad item
is reported in one ``failed:`` line and skipped, the rest finish, exit 1), print exactly one
``error: ...`` line naming the file or field and the problem, print no traceback, leave no
output file (or temporary) for the failed item and leave every existing output byte-identical.
Accepted odd inputs are checked for the values they give.

Most CLI rows run ``metricdepth.cli.main`` (the console-script entry point) in this process, so
that an exception escaping it fails the test as the traceback a user would see; a few rows run
the real ``python -m metricdepth`` to prove the same in a fresh interpreter.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import (
    assert_file_matches,
    assert_outputs_match,
    tiny_model,
    torch_threads,
    tree,
)
from metricdepth import cli
from metricdepth.batch import run_batch
from metricdepth.camera import Camera
from metricdepth.cameras import camera_for_size, parse_intrinsics, resolve_camera
from metricdepth.canonical import (
    CanonicalSpace,
    from_canonical,
    inference_record,
    normalize,
    prepare_input,
    to_canonical,
    training_record,
)
from metricdepth.data.annotations import read_annotations
from metricdepth.data.inputs import collect_inputs
from metricdepth.files import WriteError
from metricdepth.frame import Frame
from metricdepth.io import read_depth, read_image
from metricdepth.models.registry import ASSETS, SPEC_METADATA_KEY, load_model, read_spec
from metricdepth.models.weights import read_torch_checkpoint

RNG = np.random.default_rng(8)
SMALL = ASSETS / "metricdepth-small.safetensors"
#: Child interpreters use one thread too (OpenMP threads spin badly on a busy 2-core machine).
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


# ================================================================== running the command line
@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def cli_run(capsys, monkeypatch):
    """``cli_run(*args)``: ``metricdepth ARGS`` through ``cli.main`` in this process."""

    def run(*args) -> Run:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["metricdepth", *map(str, args)])
        try:
            cli.main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException as error:  # what a user would see as a traceback
            pytest.fail(f"uncaught {type(error).__name__} (a traceback in a real run): {error}")
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def real_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m metricdepth ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "metricdepth", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ONE_THREAD_ENV,
        **kwargs,
    )


def error_line(run, *parts: str, code: int = 2) -> str:
    """The one ``error:`` line of a refused run, which must contain every one of ``parts``."""
    returncode = run.code if isinstance(run, Run) else run.returncode
    stderr = run.err if isinstance(run, Run) else run.stderr
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), stderr
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def skipped_line(run: Run, *parts: str, done: int = 2) -> str:
    """The one ``failed:`` line of a ``--keep-going`` run: exit 1, the rest finished."""
    assert run.code == 1, run.err
    assert "Traceback" not in run.err and "error: " not in run.err
    failed = [line for line in run.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1, run.err
    for part in parts:
        assert part in failed[0], failed[0]
    summary = f"{done} done, 0 skipped as finished, 1 failed of {done + 1} image(s)"
    assert run.out.strip().splitlines()[-1].startswith(summary), run.out
    return failed[0]


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def random_rgb(height: int = 30, width: int = 40) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def work(tmp_path: Path):
    """``in/good1.png``, ``in/good2.png`` and an ``out`` folder holding a previous run's files."""
    inputs = tmp_path / "in"
    write_png(inputs / "good1.png", random_rgb())
    write_png(inputs / "good2.png", random_rgb())
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "previous.depth.npy", np.ones((3, 4), np.float32))
    (out / "previous.json").write_text('{"files": {"depth": "previous.depth.npy"}}\n')
    return tmp_path


def assert_out(out: Path, before: dict[str, bytes], bad: str | None, good: tuple = ()) -> None:
    """Existing outputs intact, no temporary, nothing for ``bad``, both files of each ``good``."""
    after = tree(out)
    for name, data in before.items():
        assert after.get(name) == data, f"existing output {name} damaged"
    assert not [n for n in after if Path(n).name.startswith(".")], sorted(after)
    if bad is not None:
        assert not [n for n in after if n.startswith(f"{bad}.")], sorted(after)
    for stem in good:
        assert {f"{stem}.json", f"{stem}.depth.npy"} <= set(after), sorted(after)


# ================================================================== 1. images
def png_file(width: int, height: int, bit_depth: int, colour: int, idat: bytes) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def bomb_png(path: Path) -> Path:
    """A real decompression bomb: a ~20 kB 1-bit PNG of 12000 x 12000 = 144 M pixels.

    Over Pillow's limit (89.5 M) but under twice it, where Pillow itself only warns.
    """
    side = 12000
    row = b"\x00" * (1 + side // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(png_file(side, side, 1, 0, data))
    return path


def huge_header_png(path: Path) -> Path:
    """A PNG whose header says 20000 x 20000 RGB (1.2 GB decoded) with almost no data."""
    path.write_bytes(png_file(20000, 20000, 8, 2, zlib.compress(b"\x00" * 64)))
    return path


def truncated(path: Path, fmt: str) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


#: name -> (file name, builder, the problem the error line must state)
BAD_IMAGES = {
    "empty file": ("empty.jpg", lambda p: p.write_bytes(b""), "not an image Pillow can read"),
    "truncated JPEG": ("cut.jpg", lambda p: truncated(p, "JPEG"), "cannot read image"),
    "truncated PNG": ("cut.png", lambda p: truncated(p, "PNG"), "cannot read image"),
    "not an image": (
        "notes.png",
        lambda p: p.write_text("these are notes, not pixels"),
        "not an image Pillow can read",
    ),
    "decompression bomb": ("bomb.png", bomb_png, "refused as a decompression bomb"),
    "20000x20000 header": ("huge.png", huge_header_png, "refused as a decompression bomb"),
    "5000x1 strip": (
        "strip.png",
        lambda p: write_png(p, random_rgb(1, 5000)),
        "leaves no pixel",
    ),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_is_refused_alone_and_skipped_in_a_batch(work, cli_run, case):
    name, build, problem = BAD_IMAGES[case]
    bad = work / "in" / name
    build(bad)
    stem, out = bad.stem, work / "out"
    before = tree(out)

    started = time.perf_counter()
    alone = cli_run("predict", bad, "--focal", 40, "--out", out)
    assert time.perf_counter() - started < 30  # refused before decoding anything huge
    error_line(alone, name, problem)
    assert_out(out, before, stem)

    batch = cli_run("predict", work / "in", "--focal", 40, "--out", out, "--keep-going")
    skipped_line(batch, name, problem)
    assert_out(out, before, stem, good=("good1", "good2"))

    with pytest.raises(ValueError, match=problem) as info:
        read_image(bad) if case != "5000x1 strip" else run_batch(
            load_model(), collect_inputs([bad]), work / "api", {"depth"}, progress=False
        )
    assert name in str(info.value) and "\n" not in str(info.value)
    assert not tree(work / "api")


def exif_png(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif.tobytes())
    return path


def animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def palette_png(path: Path) -> Path:
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(path)
    return path


def cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, quality=100)
    return path


#: name -> (file name, builder, expected (H, W, 3) RGB as read, tolerance)
ODD_IMAGES = {
    "1x1 px": ("dot.png", lambda p: write_png(p, np.full((1, 1, 3), 9, np.uint8)), [[[9] * 3]], 0),
    "16-bit grey": (
        "deep.png",
        lambda p: Image.fromarray(np.full((4, 6), 0x1234, np.uint16)).save(p),
        np.full((4, 6, 3), 0x12),
        0,
    ),
    "grey": (
        "grey.png",
        lambda p: Image.fromarray(np.full((4, 6), 77, np.uint8)).save(p),
        np.full((4, 6, 3), 77),
        0,
    ),
    "RGBA (alpha dropped)": (
        "alpha.png",
        lambda p: Image.new("RGBA", (6, 4), (10, 20, 30, 0)).save(p),
        np.broadcast_to([10, 20, 30], (4, 6, 3)),
        0,
    ),
    "CMYK": ("cmyk.jpg", cmyk_jpeg, np.broadcast_to([255, 0, 0], (8, 16, 3)), 8),
    "palette": ("palette.png", palette_png, np.broadcast_to([10, 200, 30], (4, 6, 3)), 0),
    "animated GIF (first frame)": (
        "anim.gif",
        animated_gif,
        np.broadcast_to([200, 0, 0], (4, 6, 3)),
        0,
    ),
}


@pytest.mark.parametrize("case", list(ODD_IMAGES))
def test_odd_images_are_converted_and_predicted(work, cli_run, case):
    name, build, expected, tolerance = ODD_IMAGES[case]
    path = work / "odd" / name
    path.parent.mkdir()
    build(path)
    expected = np.asarray(expected)
    rgb, _ = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    assert np.abs(rgb.astype(int) - expected).max() <= tolerance

    out = work / "out"
    run = cli_run("predict", path, "--focal", 40, "--out", out)
    assert run.code == 0 and "Traceback" not in run.err and "error" not in run.err, run.err
    depth = np.load(out / f"{path.stem}.depth.npy")
    assert depth.shape == expected.shape[:2] and np.all(depth > 0)
    record = json.loads((out / f"{path.stem}.json").read_text())
    assert (record["camera"]["width"], record["camera"]["height"]) == expected.shape[1::-1]


#: EXIF orientation -> where the stored pixel (x, y) of a W x H image is displayed, from the
#: EXIF 2.3 definitions of where the stored row 0 and column 0 go (written out, not computed).
ORIENTATION_MOVES = {
    1: lambda x, y, w, h: (x, y),  # row 0 top, column 0 left
    2: lambda x, y, w, h: (w - 1 - x, y),  # row 0 top, column 0 right
    3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),  # row 0 bottom, column 0 right
    4: lambda x, y, w, h: (x, h - 1 - y),  # row 0 bottom, column 0 left
    5: lambda x, y, w, h: (y, x),  # row 0 left, column 0 top
    6: lambda x, y, w, h: (h - 1 - y, x),  # row 0 right, column 0 top (90 degrees clockwise)
    7: lambda x, y, w, h: (h - 1 - y, w - 1 - x),  # row 0 right, column 0 bottom
    8: lambda x, y, w, h: (y, w - 1 - x),  # row 0 left, column 0 bottom
}


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_moves_a_marked_pixel_where_exif_says(work, cli_run, orientation):
    width, height, (x, y) = 5, 3, (1, 0)
    stored = np.zeros((height, width, 3), np.uint8)
    stored[y, x] = (255, 0, 0)
    path = exif_png(work / f"o{orientation}.png", stored, orientation)
    rgb, found = read_image(path)
    assert found == orientation
    shown_w, shown_h = (height, width) if orientation >= 5 else (width, height)
    assert rgb.shape == (shown_h, shown_w, 3)
    u, v = ORIENTATION_MOVES[orientation](x, y, width, height)
    assert np.argwhere(rgb[:, :, 0] == 255).tolist() == [[v, u]]

    out = work / "out"
    run = cli_run("predict", path, "--intrinsics", f"9,8,{(shown_w - 1) / 2},1", "--out", out)
    assert run.code == 0, run.err
    assert np.load(out / f"o{orientation}.depth.npy").shape == (shown_h, shown_w)
    camera = json.loads((out / f"o{orientation}.json").read_text())["camera"]
    assert (camera["width"], camera["height"], camera["fx"]) == (shown_w, shown_h, 9.0)


# ================================================================== 2. cameras
#: options -> the field and problem the error line must state (image: 40 x 30)
BAD_CAMERAS = {
    "focal zero": (["--focal", "0"], "--focal must be a finite number of pixels > 0, got 0.0"),
    "focal negative": (["--focal", "-5"], "--focal must be a finite number of pixels > 0"),
    "focal NaN": (["--focal", "nan"], "--focal must be a finite number of pixels > 0, got nan"),
    "focal inf": (["--focal", "inf"], "--focal must be a finite number of pixels > 0, got inf"),
    "fx zero": (["--intrinsics", "0,50,20,15"], "fx must be a finite number > 0, got 0.0"),
    "fy negative": (["--intrinsics", "50,-50,20,15"], "fy must be a finite number > 0, got -50.0"),
    "fx NaN": (["--intrinsics", "nan,50,20,15"], "fx must be a finite number > 0, got nan"),
    "fy inf": (["--intrinsics", "50,inf,20,15"], "fy must be a finite number > 0, got inf"),
    "cx NaN": (["--intrinsics", "50,50,nan,15"], "cx must be finite, got nan"),
    "principal point far outside": (
        ["--intrinsics", "50,50,2000,15"],
        "principal point (2000, 15) lies outside the 40x30 image",
    ),
    "three numbers": (["--intrinsics", "50,50,20"], "must be 4 comma-separated numbers"),
    "not numbers": (["--intrinsics", "a,b,c,d"], "must be 4 comma-separated numbers"),
    "semicolons": (["--intrinsics", "50;50;20;15"], "must be 4 comma-separated numbers"),
    "bad size suffix": (["--intrinsics", "50,50,20,15@40"], "the size after '@' must be"),
    "size of another aspect": (
        ["--intrinsics", "50,50,20,15@100x100"],
        "are for 100x100 pixels but the image is 40x30, another aspect ratio",
    ),
    "size of the stored, unturned photo": (
        ["--intrinsics", "50,50,14,19@30x40"],
        "are for 30x40 pixels but the image as displayed is 40x30 (turned by its EXIF",
    ),
    "both intrinsics and focal": (
        ["--intrinsics", "50,50,20,15", "--focal", "50"],
        "give either --intrinsics or --focal",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CAMERAS))
def test_bad_camera_is_one_line_naming_the_field(work, cli_run, case):
    options, problem = BAD_CAMERAS[case]
    out, before = work / "out", tree(work / "out")
    run = cli_run("predict", work / "in" / "good1.png", *options, "--out", out)
    error_line(run, problem)
    assert_out(out, before, "good1")


def test_bad_cameras_in_the_python_api():
    for kwargs, field in [
        ({"fx": 0.0}, "fx"),
        ({"fy": float("nan")}, "fy"),
        ({"cx": np.inf}, "cx"),
    ]:
        values = {"fx": 50.0, "fy": 50.0, "cx": 20.0, "cy": 15.0, "width": 40, "height": 30}
        with pytest.raises(ValueError, match=f"Camera.{field} must be"):
            Camera(**{**values, **kwargs})
    with pytest.raises(ValueError, match=r"principal point \(2000, 15\) lies outside"):
        resolve_camera((40, 30), intrinsics=[50, 50, 2000, 15])
    with pytest.raises(ValueError, match="another aspect ratio"):
        camera_for_size([50, 50, 20, 15, 100, 100], 40, 30)
    with pytest.raises(ValueError, match="fx must be a finite number > 0"):
        parse_intrinsics("-1,50,20,15")
    # Camera itself accepts a principal point outside (a crop makes one); the policy refuses it
    assert Camera(50, 50, 2000, 15, 40, 30).cx == 2000


def test_intrinsics_for_another_size_are_rescaled_exactly(work, cli_run):
    """Chosen behaviour: ``fx,fy,cx,cy@WxH`` is rescaled to the file (same aspect ratio)."""
    image = work / "in" / "good1.png"  # 40 x 30
    assert parse_intrinsics("100,90,79.5,59.5@80x60") == (100, 90, 79.5, 59.5, 80, 60)
    camera = camera_for_size([100, 90, 79.5, 59.5, 80, 60], 40, 30)
    assert camera.intrinsics == [50.0, 45.0, 39.5, 29.5]  # (c + 0.5) / 2 - 0.5
    rescaled = cli_run(
        "predict", image, "--intrinsics", "100,90,79.5,59.5@80x60", "--out", work / "a"
    )
    direct = cli_run("predict", image, "--intrinsics", "50,45,39.5,29.5", "--out", work / "b")
    assert rescaled.code == direct.code == 0, rescaled.err + direct.err
    assert tree(work / "a") == tree(work / "b")  # the same camera, code and threads: bytes
    record = json.loads((work / "a" / "good1.json").read_text())
    assert record["camera_source"] == "given" and record["camera"]["fx"] == 50.0
    same_size = camera_for_size([50, 45, 39.5, 29.5, 40, 30], 40, 30)
    assert same_size.intrinsics == [50.0, 45.0, 39.5, 29.5]


def test_annotation_camera_outside_the_image_skips_only_that_item(work, cli_run):
    files = [{"rgb": "in/good1.png", "cam_in": [50, 50, 20, 15]}]
    files += [{"rgb": "in/good2.png", "cam_in": [50, 50, 20, 15]}]
    files += [{"rgb": "in/wrong.png", "cam_in": [50, 50, 400, 300]}]
    write_png(work / "in" / "wrong.png", random_rgb())
    annotations = work / "annotations.json"
    annotations.write_text(json.dumps({"files": files}))
    out, before = work / "out", tree(work / "out")
    run = cli_run("predict", annotations, "--out", out, "--keep-going")
    skipped_line(run, "wrong.png", "annotation cam_in: principal point (400, 300) lies outside")
    assert_out(out, before, "in/wrong", good=("in/good1", "in/good2"))


# ================================================================== 3. depth / ground truth
@pytest.fixture
def gt_set(tmp_path: Path):
    """rgb/a.png (20 x 16), its 16-bit depth (mm) and a prediction folder; returns a writer."""
    write_png(tmp_path / "rgb" / "a.png", random_rgb(16, 20))
    gt_m = RNG.uniform(1.0, 5.0, (16, 20)).astype(np.float32)
    (tmp_path / "depth").mkdir()
    Image.fromarray(np.rint(gt_m * 1000).astype(np.uint16)).save(tmp_path / "depth" / "a.png")
    (tmp_path / "pred" / "rgb").mkdir(parents=True)
    np.save(tmp_path / "pred" / "rgb" / "a.depth.npy", (gt_m * 1.1).astype(np.float32))
    (tmp_path / "metrics.json").write_text('{"previous": true}\n')

    def annotations(**entry) -> Path:
        item = {"rgb": "rgb/a.png", "depth": "depth/a.png", "depth_scale": 1000.0, **entry}
        path = tmp_path / "annotations.json"
        path.write_text(json.dumps({"files": [item]}))
        return path

    return tmp_path, annotations


def gt_8bit(folder: Path) -> dict:
    Image.fromarray(np.full((16, 20), 3, np.uint8)).save(folder / "depth" / "eight.png")
    return {"depth": "depth/eight.png"}


def gt_small(folder: Path) -> dict:
    Image.fromarray(np.full((8, 10), 2000, np.uint16)).save(folder / "depth" / "small.png")
    return {"depth": "depth/small.png"}


def gt_zero(folder: Path) -> dict:
    Image.fromarray(np.zeros((16, 20), np.uint16)).save(folder / "depth" / "zero.png")
    return {"depth": "depth/zero.png"}


BAD_DEPTHS = {
    "size differs from the image": (
        gt_small,
        "prediction is 20x16 pixels but the ground truth",
        "small.png",
    ),
    "all invalid": (gt_zero, "no valid ground-truth pixel", "zero.png"),
    "depth_scale 0": (
        lambda f: {"depth_scale": 0},
        "'depth_scale' must be a number > 0",
        "entry 0",
    ),
    "depth_scale text": (
        lambda f: {"depth_scale": "1000"},
        "'depth_scale' must be a number > 0",
        "entry 0",
    ),
    "8-bit PNG as depth": (gt_8bit, "depth PNG must be 16-bit grey, got mode L", "eight.png"),
    "depth file missing": (
        lambda f: {"depth": "depth/none.png"},
        "ground-truth depth file not found",
        "none.png",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DEPTHS))
def test_bad_ground_truth_is_one_line_and_writes_no_metrics(gt_set, cli_run, case):
    folder, annotations = gt_set
    build, problem, name = BAD_DEPTHS[case]
    path = annotations(**build(folder))
    before = (folder / "metrics.json").read_bytes()
    run = cli_run(
        "eval", path, "--predictions", folder / "pred", "--json", folder / "metrics.json",
        "--csv", folder / "rows.csv",
    )  # fmt: skip
    error_line(run, problem, name)
    assert (folder / "metrics.json").read_bytes() == before
    assert not (folder / "rows.csv").exists()


def test_8bit_png_depth_in_the_python_api(gt_set):
    folder, _ = gt_set
    gt_8bit(folder)
    with pytest.raises(ValueError, match="eight.png: depth PNG must be 16-bit grey"):
        read_depth(folder / "depth" / "eight.png", 1000.0)
    with pytest.raises(ValueError, match="depth_scale must be a finite number > 0, got 0"):
        read_depth(folder / "depth" / "a.png", 0)


def test_nan_and_inf_ground_truth_pixels_are_invalid_not_errors(gt_set, cli_run):
    """Chosen behaviour: NaN, inf and negative depths are 'no measurement' (0), like missing."""
    folder, annotations = gt_set
    gt_m = RNG.uniform(1.0, 5.0, (16, 20)).astype(np.float32)
    gt_m[0, :5], gt_m[1, :3], gt_m[2, :2] = np.nan, np.inf, -1.0
    np.save(folder / "depth" / "a.npy", gt_m)
    path = annotations(depth="depth/a.npy", depth_scale=1.0)
    read = read_depth(folder / "depth" / "a.npy")
    assert np.count_nonzero(read == 0) == 10 and np.all(np.isfinite(read))
    run = cli_run("eval", path, "--predictions", folder / "pred", "--json", folder / "m.json")
    assert run.code == 0, run.err
    result = json.loads((folder / "m.json").read_text())
    pred = np.load(folder / "pred" / "rgb" / "a.depth.npy")
    valid = read > 0
    abs_rel = np.mean(np.abs(pred[valid] - read[valid]) / read[valid])
    assert result["n_images"] == 1 and result["abs_rel"] == pytest.approx(abs_rel, rel=1e-5)


# ================================================================== 4. annotation files
BAD_ANNOTATIONS = {
    "invalid JSON": ('{"files": [', "invalid JSON"),
    "not an object": ("[1, 2]", "expected an object with a 'files' list"),
    "missing files": ('{"images": []}', "expected an object with a 'files' list"),
    "missing rgb": ('{"files": [{"depth": "d.png", "depth_scale": 1}]}', "entry 0: missing 'rgb'"),
    "rgb not a string": ('{"files": [{"rgb": 5}]}', "'rgb' must be a non-empty path string"),
    "cam_in a string": (
        '{"files": [{"rgb": "in/good1.png", "cam_in": "50,50,20,15"}]}',
        "'cam_in' must be [fx, fy, cx, cy]",
    ),
    "cam_in NaN": (
        '{"files": [{"rgb": "in/good1.png", "cam_in": [50, 50, NaN, 15]}]}',
        "'cam_in' must be [fx, fy, cx, cy], 4 finite numbers",
    ),
    "path escaping its root": (
        '{"files": [{"rgb": "../../etc/passwd"}]}',
        "'rgb' '../../etc/passwd' is not a file inside the root",
    ),
    "absolute path": ('{"files": [{"rgb": "/etc/passwd"}]}', "'/etc/passwd' is absolute"),
    "duplicate entries": (
        '{"files": [{"rgb": "in/good1.png"}, {"rgb": "in/good1.png"}]}',
        "entry 1: 'rgb' 'in/good1.png' duplicates entry 0",
    ),
    "not UTF-8": (b"\xff\xfe{", "cannot read"),
}


@pytest.mark.parametrize("case", list(BAD_ANNOTATIONS))
def test_bad_annotation_file_is_one_line_naming_it(work, cli_run, case):
    text, problem = BAD_ANNOTATIONS[case]
    path = work / "annotations.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out, before = work / "out", tree(work / "out")
    run = cli_run("predict", path, "--out", out, "--keep-going")
    error_line(run, "annotations.json", problem)
    assert tree(out) == before
    with pytest.raises(ValueError, match="annotations.json") as info:
        read_annotations(path)
    assert problem in str(info.value)


def test_annotation_item_whose_image_is_missing_is_skipped(work, cli_run):
    files = [{"rgb": "in/good1.png"}, {"rgb": "in/gone.png"}, {"rgb": "in/good2.png"}]
    (work / "annotations.json").write_text(json.dumps({"files": files}))
    out, before = work / "out", tree(work / "out")
    run = cli_run("predict", work / "annotations.json", "--out", out, "--keep-going", "--focal", 40)
    skipped_line(run, "gone.png", "no such file")
    assert_out(out, before, "in/gone", good=("in/good1", "in/good2"))


# ================================================================== 5. checkpoints
class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle is obeyed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def small_state() -> tuple[dict[str, torch.Tensor], str]:
    from safetensors.torch import load_file

    return load_file(str(SMALL)), read_spec(SMALL).to_json()


def save_small(path: Path, state: dict[str, torch.Tensor], spec_json: str) -> Path:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={SPEC_METADATA_KEY: spec_json})
    return path


def ckpt_missing_key(path: Path) -> Path:
    state, spec = small_state()
    state.pop(sorted(state)[0])
    return save_small(path, state, spec)


def ckpt_unexpected_key(path: Path) -> Path:
    state, spec = small_state()
    state["extra.weight"] = torch.zeros(3)
    return save_small(path, state, spec)


def ckpt_wrong_dtype(path: Path) -> Path:
    state, spec = small_state()
    return save_small(path, {k: v.half() for k, v in state.items()}, spec)


def ckpt_truncated_safetensors(path: Path) -> Path:
    path.write_bytes(SMALL.read_bytes()[:5000])
    return path


def ckpt_truncated_pth(path: Path) -> Path:
    state, _ = small_state()
    torch.save({"model_state_dict": state}, path)
    path.write_bytes(path.read_bytes()[:3000])
    return path


def ckpt_small_as_pth(path: Path) -> Path:
    state, _ = small_state()
    torch.save({"model_state_dict": state}, path)
    return path


def ckpt_list(path: Path) -> Path:
    torch.save([torch.zeros(2)], path)
    return path


#: name -> (file name, builder, model options given the file, problem)
BAD_CHECKPOINTS = {
    "missing file": ("gone.pth", None, ["--model", "metric3d-vit-small", "--weights"],
                     "weights file not found"),
    "missing model file": ("gone.safetensors", None, ["--model"], "no model or file named"),
    "truncated .pth": ("cut.pth", ckpt_truncated_pth, ["--model", "metric3d-vit-small",
                       "--weights"], "cannot load as a weights-only torch checkpoint"),
    "truncated .safetensors": ("cut.safetensors", ckpt_truncated_safetensors, ["--model"],
                               "not a readable safetensors file"),
    "wrong architecture (.pth)": ("small.pth", ckpt_small_as_pth, ["--model",
                                  "metric3d-vit-small", "--weights"], "does not match"),
    "wrong architecture (.safetensors)": ("metricdepth-small.safetensors", lambda p: p.write_bytes(
        SMALL.read_bytes()), ["--model", "metric3d-vit-small", "--weights"],
        "holds metricdepth-small, not metric3d-vit-small"),
    "unknown architecture (.pth)": ("small.pth", ckpt_small_as_pth, ["--model"],
                                    "cannot tell which Metric3D model"),
    "missing key": ("missing.safetensors", ckpt_missing_key, ["--model"], "1 missing ["),
    "unexpected key": ("extra.safetensors", ckpt_unexpected_key, ["--model"],
                       "1 unexpected [extra.weight]"),
    "wrong dtypes": ("half.safetensors", ckpt_wrong_dtype, ["--model"],
                     "with wrong dtype ["),
    "not a state dict": ("list.pth", ckpt_list, ["--model", "metric3d-vit-small", "--weights"],
                         "expected a state dict, got list"),
    "a photo as weights": ("photo.jpg", lambda p: write_png(p, np.zeros((4, 4, 3), np.uint8)),
                           ["--model", "metric3d-vit-small", "--weights"],
                           "not a PyTorch checkpoint"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line_and_writes_nothing(work, cli_run, case):
    name, build, options, problem = BAD_CHECKPOINTS[case]
    path = work / name
    if build is not None:
        build(path)
    out, before = work / "out", tree(work / "out")
    run = cli_run("predict", work / "in", *options, path, "--out", out)
    error_line(run, name, problem)
    assert tree(out) == before
    model, weights = (options[1], path) if len(options) == 3 else (path, None)
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")):
        load_model(model, weights=weights)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(work, cli_run, kind):
    marker = work / "pwned"
    evil = work / f"evil-{kind}.pth"
    payload = {"model_state_dict": {"weight": Payload(marker)}}
    if kind == "zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    out, before = work / "out", tree(work / "out")
    for args in (
        ["predict", work / "in", "--model", evil, "--out", out],
        ["predict", work / "in", "--model", "metric3d-vit-small", "--weights", evil, "--out", out],
        ["convert", evil, "--out", work / "converted.safetensors"],
    ):
        error_line(cli_run(*args), evil.name, "refused: not plain weights", "could run code")
    with pytest.raises(ValueError, match="refused: not plain weights"):
        read_torch_checkpoint(evil)
    assert not marker.exists()
    assert tree(out) == before and not (work / "converted.safetensors").exists()
    # the file really is an attack: an unsafe load obeys it (this is what must never happen)
    if kind == "zip":
        torch.load(evil, weights_only=False)
    else:
        pickle.loads(evil.read_bytes())
    assert marker.exists()


# ================================================================== 6. outputs
def test_output_path_is_an_existing_file(work, cli_run):
    blocker = work / "blocker"
    blocker.write_text("keep me")
    run = cli_run("predict", work / "in", "--out", blocker, "--keep-going")
    error_line(run, "--out", "blocker", "exists and is not a folder")
    assert blocker.read_text() == "keep me"


def test_output_folder_under_a_file_real_os(work, cli_run):
    """A real OS refusal that holds even for root: a folder cannot be made inside a file."""
    blocker = work / "blocker"
    blocker.write_text("keep me")
    run = cli_run("predict", work / "in", "--out", blocker / "sub", "--keep-going")
    error_line(run, "blocker/sub/good1", "cannot write the outputs", "Not a directory")
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in work.iterdir()) == ["blocker", "in", "out"]


def test_output_folder_not_writable(work, cli_run, monkeypatch):
    out = work / "out"
    before = tree(out)
    if os.geteuid() != 0:
        out.chmod(0o555)
    else:  # root writes anywhere: deny as the kernel would for a non-root user
        real_open = os.open

        def denied(path, flags, *args, **kwargs):
            if Path(path).parent == out and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    try:
        run = cli_run("predict", work / "in", "--out", out, "--keep-going")
    finally:
        out.chmod(0o755)
    error_line(run, "out/good1: cannot write the outputs: Permission denied")
    assert tree(out) == before


def disk_full_after(monkeypatch, calls: int) -> None:
    """From the ``calls``-th ``numpy.save`` on, write half the bytes, then fail with ENOSPC."""
    real_save, seen = np.save, [0]

    def save(file, array, *args, **kwargs):
        seen[0] += 1
        if seen[0] < calls:
            return real_save(file, array, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(buffer, array, *args, **kwargs)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", save)


@pytest.mark.parametrize("keep_going", [False, True])
def test_disk_full_stops_the_run_and_leaves_no_partial_file(work, cli_run, monkeypatch, keep_going):
    out = work / "out"
    first = cli_run("predict", work / "in", "--focal", 40, "--out", out)
    assert first.code == 0
    before = tree(out)  # previous run: good1 and good2 complete
    (work / "in" / "good3.png").write_bytes((work / "in" / "good1.png").read_bytes())
    disk_full_after(monkeypatch, calls=2)  # good1 rewritten, then the disk fills on good2
    flags = ["--keep-going"] if keep_going else []
    run = cli_run("predict", work / "in", "--focal", 40, "--out", out, *flags)
    error_line(run, "out/good2: cannot write the outputs: No space left on device")
    after = tree(out)
    assert after == before  # good1 rewritten with the same bytes; good2's old files untouched
    assert not (out / "good3.json").exists()  # a full disk stops the run even with keep-going


@pytest.mark.parametrize("workers", [0, 2])  # images prepared here, or in loader workers
def test_disk_full_on_an_items_second_file_changes_none_of_its_files(work, monkeypatch, workers):
    import metricdepth.files as files
    from metricdepth.io import atomic_write

    model, items, out = tiny_model(), collect_inputs([work / "in"]), work / "out"
    run_batch(model, items, out, {"depth", "png16"}, focal=40.0, progress=False)
    before = tree(out)

    def full_disk(path, depth_m, depth_scale=None):
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_depth", full_disk)
    with pytest.raises(WriteError, match="good1: cannot write the outputs: No space left"):
        run_batch(
            model, items, out, {"depth", "png16"}, focal=41.0, workers=workers, progress=False
        )
    assert tree(out) == before  # good1's new depth.npy was written but never replaced the old


def test_an_items_output_name_taken_by_a_folder(work, cli_run):
    out = work / "out"
    (out / "good1.json").mkdir()
    before = tree(out)
    run = cli_run("predict", work / "in", "--focal", 40, "--out", out, "--keep-going")
    error_line(run, "out/good1: cannot write the outputs", "Is a directory")
    assert_out(out, before, "good1")  # good2, written meanwhile, may be complete
    assert (out / "good1.json").is_dir()


def test_real_entry_point_prints_one_line_and_no_traceback(work):
    """The same contract in a fresh interpreter (warnings, logging and all)."""
    cut = truncated(work / "in" / "cut.jpg", "JPEG")
    marker = work / "pwned"
    torch.save({"model_state_dict": {"w": Payload(marker)}}, work / "evil.pth")
    out, before = work / "out", tree(work / "out")
    error_line(real_cli("predict", cut, "--out", out), "cut.jpg", "cannot read image")
    error_line(real_cli("predict", work / "in", "--model", work / "evil.pth", "--out", out),
               "evil.pth", "refused: not plain weights")  # fmt: skip
    error_line(real_cli("predict", work / "in", "--intrinsics", "nan,1,2,3", "--out", out),
               "fx must be a finite number > 0, got nan")  # fmt: skip
    assert not marker.exists() and tree(out) == before


# ================================================================== 7. faults
FAULT_IMAGES = 4
FAULT_SAVE = {"depth", "png16"}
#: os functions whose calls are the kill points of the hooked trials (every step of a write).
HOOKED = ("open", "replace", "unlink")
HOOK_TRIALS = 12
TIMER_TRIALS = 12


@pytest.fixture(scope="module")
def fault_set(tmp_path_factory):
    """Four tiny images, their items and the files of an uninterrupted run (``tree``), on one
    torch thread as the forked runs (a CLI run before it leaves this process on more)."""
    folder = tmp_path_factory.mktemp("faults")
    for k in range(FAULT_IMAGES):
        write_png(folder / "in" / f"f{k}.png", random_rgb(12 + 2 * k, 16 + k))
    items = collect_inputs([folder / "in"])
    reference = folder / "reference"
    with torch_threads(1):
        run_batch(tiny_model(), items, reference, FAULT_SAVE, focal=20.0, progress=False)
    return folder, items, tree(reference)


def forked_batch(
    items, out: Path, *, kill_at: int | None = None, resume: bool = False,
    count_to: Path | None = None, workers: int = 0,
) -> int:  # fmt: skip
    """Start ``run_batch`` in a forked child (no interpreter start-up); returns its pid.

    With ``kill_at`` the child SIGKILLs itself inside its ``kill_at``-th call of a ``HOOKED``
    function (temporary created, rename, deletion), i.e. between any two steps of a write.
    ``count_to``: the child writes how many such calls it made there (when it finishes).
    """
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        torch.set_num_threads(1)  # as in DataLoader workers: no OpenMP pool after fork
        if kill_at is not None:
            count = [0]

            def hooked(real):
                def call(*args, **kwargs):
                    count[0] += 1
                    if count[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)

                return call

            for name in HOOKED:
                setattr(os, name, hooked(getattr(os, name)))
        run_batch(
            tiny_model(), items, out, FAULT_SAVE, focal=20.0, resume=resume, progress=False,
            workers=workers,
        )  # fmt: skip
        if count_to is not None:
            count_to.write_text(str(count[0]))
        code = 0
    finally:
        os._exit(code)


def reap(pid: int, timeout: float = 60.0) -> int:
    """Wait for child ``pid``; its wait status (a hung child is killed and fails the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} hung")


def assert_consistent_after_kill(out: Path, reference: dict[str, bytes], exact: bool) -> None:
    """No final name holds a partial or foreign file; a record means all its files are there.

    ``exact``: the run is the reference's code on its thread count in the same kind of
    process, so its files are the reference's bytes; else (loader workers) its outputs to
    ``PATH_RTOL`` (conftest).
    """
    files = tree(out)
    finals = {n: d for n, d in files.items() if not Path(n).name.startswith(".")}
    for name, data in finals.items():
        if exact:
            assert data == reference[name], f"{name} differs from the uninterrupted run"
        else:
            assert_file_matches(name, data, reference[name])
    for name, data in finals.items():
        if name.endswith(".json"):
            for file in json.loads(data)["files"].values():
                assert file in finals, f"{name} lists {file}, which is missing"


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_files(fault_set):
    """≥ 20 SIGKILL trials (seeded): each killed run, resumed, equals the uninterrupted run.

    Hooked trials die between two steps of a write (every temporary, rename and deletion is a
    candidate); timer trials are killed from outside after a random delay (half of them
    running with loader workers). Odd trials are killed a second time
    while resuming. Then a resume must finish the rest: every output
    present exactly once, no temporary left, byte-identical where every run was the
    reference's code on one torch thread in one process (with loader workers: the same
    outputs to ``PATH_RTOL``).
    """
    folder, items, reference = fault_set
    rng = np.random.default_rng(2026)
    probe = folder / "probe"
    events = folder / "probe_events.txt"
    counted = forked_batch(items, probe, kill_at=10**9, count_to=events)  # time and count a run
    started = time.monotonic()
    assert os.WEXITSTATUS(reap(counted)) == 0
    duration = time.monotonic() - started
    assert tree(probe) == reference
    # per image: 3 temporaries, 3 renames, the old record's deletion (no fsync by default)
    events_per_image = int(events.read_text()) / FAULT_IMAGES
    assert events_per_image == 7

    outcomes = []
    for trial in range(HOOK_TRIALS + TIMER_TRIALS):
        out = folder / f"trial{trial}"
        kills = 2 if trial % 2 else 1
        workers = 0
        for _ in range(kills):
            resume = out.exists()
            if trial < HOOK_TRIALS:  # a step of a write the run will really make
                finished = [p for p in out.glob("*.json") if not p.name.startswith(".")]
                unfinished = FAULT_IMAGES - len(finished) if out.exists() else FAULT_IMAGES
                last = max(1, int(unfinished * events_per_image))
                pid = forked_batch(items, out, kill_at=int(rng.integers(1, last + 1)),
                                   resume=resume)  # fmt: skip
            else:  # every other pair of trials with loader workers
                workers = 2 if (trial - HOOK_TRIALS) // 2 % 2 else 0
                pid = forked_batch(items, out, resume=resume, workers=workers)
                time.sleep(float(rng.uniform(0.0, duration)))
                os.kill(pid, signal.SIGKILL)
            status = reap(pid)
            time.sleep(0.2)  # its loader workers write nothing: they only prepare inputs
            outcomes.append(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
            assert_consistent_after_kill(out, reference, exact=workers == 0)
        with torch_threads(1):  # as the forked runs and the reference
            summary = run_batch(
                tiny_model(), items, out, FAULT_SAVE, focal=20.0, resume=True, progress=False
            )
        assert summary.done + summary.skipped == FAULT_IMAGES and not summary.failed
        if workers == 0:
            assert tree(out) == reference, f"trial {trial}"
        else:
            assert_outputs_match(tree(out), reference)
    assert sum(outcomes) >= 20  # at least 20 runs really died by SIGKILL


@pytest.mark.parametrize("flag", [[], ["--fsync"]])
def test_predict_fsyncs_the_data_files_only_with_the_fsync_option(
    tmp_path, cli_run, monkeypatch, flag
):
    """``--fsync``: each data file is fsync'ed (S.depth.npy, S.depth.png; never the record);
    without it none is."""
    write_png(tmp_path / "in" / "a.png", random_rgb(24, 32))
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    out = tmp_path / "out"
    run = cli_run("predict", tmp_path / "in", "--focal", 30, "--save", "png16", "--out", out, *flag)
    assert run.code == 0, run.err
    assert len(calls) == (2 if flag else 0)
    assert sorted(p.name for p in out.iterdir()) == ["a.depth.npy", "a.depth.png", "a.json"]


SLOW_MAIN = (  # the console script, with each rename slowed so a signal lands mid-run
    "import os, sys, time; replace = os.replace; "
    "os.replace = lambda a, b: (time.sleep(0.1), replace(a, b))[1]; "
    "from metricdepth.cli import main; main()"
)


def start_slow_cli(*args, folder: Path) -> subprocess.Popen:
    out, err = open(folder / "cli.out", "w"), open(folder / "cli.err", "w")  # noqa: SIM115
    with out, err:
        return subprocess.Popen(
            [sys.executable, "-c", SLOW_MAIN, *map(str, args)],
            stdout=out,
            stderr=err,
            env=ONE_THREAD_ENV,
        )


def wait_for_record(out: Path, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if any(not p.name.startswith(".") for p in out.glob("*.json")):
            return
        time.sleep(0.01)
    pytest.fail("the run ended or hung before its first record")


def test_a_second_ctrl_c_is_one_line_and_exit_130(tmp_path, cli_run, monkeypatch):
    """The first Ctrl-C ends a batch cleanly (below); a second one during the images under
    way stops at once, through the real typer app: one ``error: interrupted`` line, exit 130
    (not typer's "Aborted!" and exit 1), no temporary left, SIGINT's handler restored."""
    from metricdepth.predictor import Predictor

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(6):
        Image.new("RGB", (32, 24), (40 * k, 20, 200 - 30 * k)).save(folder / f"im{k}.png")
    real = Predictor.forward
    calls = []

    def twice_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the clean stop: the run finishes this image
            os.kill(os.getpid(), signal.SIGINT)  # ... and this one interrupts it there
            time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(Predictor, "forward", twice_interrupted)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "out"
    error_line(cli_run("predict", folder, "--out", out), "error: interrupted", code=130)
    assert len(calls) == 2 and signal.getsignal(signal.SIGINT) is before
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    records = sorted(p.name for p in out.glob("*.json"))
    assert records in ([], ["im0.json"])  # the first image's files, if written, are whole


@pytest.mark.parametrize("stop", ["SIGINT", "SIGKILL"])
def test_the_real_command_stopped_mid_run_then_resumed(tmp_path, cli_run, stop):
    """SIGINT: a clean stop with a summary line and exit 130. SIGKILL: nothing to say, but
    ``--resume`` finishes to the same bytes as an uninterrupted run: every run is ``predict``
    without workers on one torch thread per usable CPU (``set_threads``), in this process or
    the child, so the same code on the same thread count."""
    for k in range(8):
        write_png(tmp_path / "in" / f"s{k}.png", random_rgb(20, 24))
    options = ["--focal", 30, "--save", "depth,png16"]
    reference = cli_run("predict", tmp_path / "in", *options, "--out", tmp_path / "ref")
    assert reference.code == 0
    out = tmp_path / "out"
    child = start_slow_cli("predict", tmp_path / "in", *options, "--out", out, folder=tmp_path)
    try:
        wait_for_record(out, child)
        child.send_signal(getattr(signal, stop))
        returncode = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    stdout, stderr = (tmp_path / "cli.out").read_text(), (tmp_path / "cli.err").read_text()
    finished = {p.stem for p in out.glob("*.json") if not p.name.startswith(".")}
    if stop == "SIGINT":
        assert returncode == 130 and "Traceback" not in stderr and "error" not in stderr, stderr
        line = stdout.strip().splitlines()[-1]
        assert line.startswith(f"interrupted: {len(finished)} done, ") and "of 8 image(s)" in line
        assert line.endswith(f"{8 - len(finished)} left (rerun with --resume)")
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    else:
        assert returncode == -signal.SIGKILL
    assert 1 <= len(finished) < 8
    assert_consistent_after_kill(out, tree(tmp_path / "ref"), exact=True)
    resumed = cli_run("predict", tmp_path / "in", *options, "--out", out, "--resume")
    assert resumed.code == 0, resumed.err
    assert resumed.out.startswith(f"{8 - len(finished)} done, {len(finished)} skipped")
    assert tree(out) == tree(tmp_path / "ref")


# ================================================================== fuzzing the core
#: Every fuzz test: reproducible (derandomized), no deadline; FUZZ_EXAMPLES is the number of
#: cases asked of each, and ``test_fuzz_case_count`` checks that they were all drawn and run.
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: The cases each fuzz test was really given in this session (its body counts them).
FUZZ_RUN: Counter[str] = Counter()
FUZZ_EXAMPLES = {
    "camera construction": 2000,
    "camera operations": 3000,
    "inference record": 2500,
    "training record": 2000,
    "canonical round trip": 1500,
}

anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e-300, 1e-300),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.sampled_from([np.float32(2.5), np.int64(7), np.float64("nan"), np.uint8(3), [1.0]]),
)
extreme_sizes = st.integers(1, 100_000)
extreme_focals = st.floats(1e-3, 1e7)
extreme_cameras = st.builds(
    Camera,
    extreme_focals,
    extreme_focals,
    st.floats(-1e6, 1e6),
    st.floats(-1e6, 1e6),
    extreme_sizes,
    extreme_sizes,
)


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["camera construction"])
@given(fx=anything, fy=anything, cx=anything, cy=anything, width=anything, height=anything)
def test_fuzz_camera_construction_is_valid_or_a_value_error(fx, fy, cx, cy, width, height):
    FUZZ_RUN["camera construction"] += 1
    try:
        camera = Camera(fx, fy, cx, cy, width, height)
    except ValueError as error:
        assert "\n" not in str(error) and str(error).startswith("Camera.")
        return
    assert all(math.isfinite(v) for v in camera.intrinsics)
    assert camera.fx > 0 and camera.fy > 0 and camera.width >= 1 and camera.height >= 1
    assert type(camera.width) is int and type(camera.height) is int
    assert Camera(**camera.to_dict()) == camera
    assert Camera.from_K(camera.K, *camera.size) == camera
    assert Camera.from_intrinsics(camera.intrinsics, *camera.size) == camera


def project(camera: Camera, point: np.ndarray) -> np.ndarray:
    x, y, z = point
    return np.array([camera.fx * x / z + camera.cx, camera.fy * y / z + camera.cy])


operations = st.sampled_from(["resized", "cropped", "padded", "flipped", "transposed", "rotated"])
offsets = st.integers(-3, 200_000)


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["camera operations"])
@given(
    camera=extreme_cameras,
    operation=operations,
    args=st.tuples(offsets, offsets, offsets, offsets),
    u=st.floats(-2.0, 3.0),
    v=st.floats(-2.0, 3.0),
)
def test_fuzz_camera_operations_keep_every_ray(camera, operation, args, u, v):
    """Any operation with any arguments: a ValueError, or a camera that sees each 3-D point
    exactly where the operation moved its pixel (mirrored for flips and transposes)."""
    FUZZ_RUN["camera operations"] += 1
    a, b, c, d = args
    W, H = camera.size  # noqa: N806
    pixel = np.array([u * W, v * H])
    point = np.array([(pixel[0] - camera.cx) / camera.fx, (pixel[1] - camera.cy) / camera.fy, 1.0])
    try:
        if operation == "resized":
            new = camera.resized(a, b)
            moved = (pixel + 0.5) * np.array([a / W, b / H]) - 0.5
            assert new.size == (a, b)
        elif operation == "cropped":
            new = camera.cropped(a, b, c, d)
            moved = pixel - [a, b]
            assert new.size == (c, d) and a + c <= W and b + d <= H
        elif operation == "padded":
            new = camera.padded(a, b, c, d)
            moved = pixel + [a, b]
            assert new.size == (W + a + c, H + b + d)
        elif operation == "flipped":
            new = camera.flipped(vertical=a % 2 == 1)
            axis = 1 if a % 2 else 0
            moved = pixel.copy()
            moved[axis] = (H if axis else W) - 1 - pixel[axis]
            point[axis] = -point[axis]
        elif operation == "transposed":
            new = camera.transposed()
            moved, point = pixel[::-1], point[[1, 0, 2]]
            assert new.size == (H, W)
        else:
            orientation = a % 10  # 0 and 9 are not EXIF orientations
            new = camera.rotated(orientation)
            back = {5: 5, 6: 8, 7: 7, 8: 6}.get(orientation, orientation)  # the inverse
            again = new.rotated(back)
            assert again.size == camera.size
            assert np.allclose(again.intrinsics, camera.intrinsics, rtol=1e-12, atol=1e-9)
            return
    except ValueError as error:
        assert "\n" not in str(error)
        return
    scale = abs(moved).max() + abs(new.cx) + abs(new.cy) + new.fx + new.fy + 1.0
    assert np.allclose(project(new, point), moved, rtol=0, atol=1e-9 * scale)
    if operation != "resized":
        assert (new.fx, new.fy) in ((camera.fx, camera.fy), (camera.fy, camera.fx))


def spaces(input_hw, focal_px) -> st.SearchStrategy[CanonicalSpace]:
    """Canonical spaces of every kind: fit / focal (CSTM_image) / none, any multiple and pad."""
    return st.builds(
        lambda hw, f, kind, multiple, placement: CanonicalSpace(
            focal_px=f,
            input_hw=hw,
            variant={"fit": "label", "focal": "image", "none": "none"}[kind],
            resize=kind,
            size_multiple=multiple,
            pad_placement=placement,
        ),
        input_hw,
        focal_px,
        st.sampled_from(["fit", "focal", "none"]),
        st.integers(1, 64),
        st.sampled_from(["center", "bottom_right"]),
    )


def check_record(record, camera: Camera, space: CanonicalSpace, mode: str) -> None:
    """The invariants of every record (inference or training)."""
    h, w = record.resized_hw
    H_in, W_in = record.input_hw  # noqa: N806
    assert min(h, w) >= 1
    f_eff = record.f_eff_px
    assert f_eff == pytest.approx(camera.focal(mode) * record.scale, rel=1e-12)
    if record.variant != "none":
        assert record.label_scale * record.metric_scale == pytest.approx(1.0, rel=1e-12)
        assert record.metric_scale == pytest.approx(f_eff / space.focal_px, rel=1e-12)
    top, bottom, left, right = record.pad
    ctop, cbottom, cleft, cright = record.crop
    assert min(record.pad) >= 0 and min(record.crop) >= 0
    assert h - ctop - cbottom + top + bottom == H_in and w - cleft - cright + left + right == W_in
    canvas = record.camera_c
    assert canvas.size == (W_in, H_in)
    # the bookkeeping focal f_eff and the realised canvas camera differ by < 1 resized pixel
    assert abs(canvas.focal(mode) - f_eff) <= f_eff * (1 / min(h, w) + 1e-12)


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["inference record"])
@given(
    camera=extreme_cameras,
    space=spaces(st.tuples(st.integers(1, 4096), st.integers(1, 4096)), extreme_focals),
    mode=st.sampled_from(["mean", "fx"]),
)
def test_fuzz_inference_record_invariants(camera, space, mode):
    FUZZ_RUN["inference record"] += 1
    try:
        record = inference_record(camera, space, mode)
    except ValueError as error:
        assert "leaves no pixel" in str(error)
        return
    check_record(record, camera, space, mode)
    h, w = record.resized_hw
    H_in, W_in = record.input_hw  # noqa: N806
    assert record.crop == (0, 0, 0, 0)  # inference pads, never crops
    if space.resize == "fit":
        # one side fits, up to the pixel that Metric3D's int(size * s) can lose to rounding
        # (int(969 * (4 / 969)) == 3): kept for parity, the canvas gets one more pad column
        assert (H_in, W_in) == space.input_hw and min(H_in - h, W_in - w) <= 1
    else:
        m = space.size_multiple
        assert H_in % m == 0 and W_in % m == 0 and 0 <= H_in - h < m and 0 <= W_in - w < m
    if space.resize == "focal":
        assert record.f_eff_px == pytest.approx(space.focal_px, rel=1e-12)
    if space.pad_placement == "center":
        assert record.pad[0] == (H_in - h) // 2 and record.pad[2] == (W_in - w) // 2
    else:
        assert record.pad[0] == record.pad[2] == 0


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["training record"])
@given(
    camera=extreme_cameras,
    space=spaces(st.tuples(st.integers(1, 2048), st.integers(1, 2048)), extreme_focals),
    seed=st.integers(0, 2**32 - 1),
    resize_range=st.tuples(anything, anything),
    resize_prob=st.floats(0, 1),
    crop=st.sampled_from(["rand", "center", "middle"]),
    variant=st.sampled_from([None, "label", "image", "none", "both"]),
    mode=st.sampled_from(["mean", "fx"]),
)
def test_fuzz_training_record_invariants(
    camera, space, seed, resize_range, resize_prob, crop, variant, mode
):
    FUZZ_RUN["training record"] += 1
    try:
        record = training_record(
            camera, space, np.random.default_rng(seed), variant=variant,
            resize_range=resize_range, resize_prob=resize_prob, crop=crop, focal_mode=mode,
        )  # fmt: skip
    except (ValueError, TypeError) as error:
        # TypeError only for a resize_range of non-numbers (float(None), float([1.0]))
        assert isinstance(error, ValueError) or not all(
            isinstance(v, (int, float, np.number, str)) for v in resize_range
        )
        return
    check_record(record, camera, space, mode)
    low, high = (float(v) for v in resize_range)
    t = record.to_scale_ratio
    assert t == 1.0 or low * (1 - 1e-12) <= t <= high * (1 + 1e-12)
    if record.variant == "image":
        assert record.f_eff_px == pytest.approx(space.focal_px * t, rel=1e-9)
    else:
        assert record.scale == t


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["canonical round trip"])
@given(
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    focal=st.floats(1e-2, 1e5),
    aspect=st.floats(0.5, 2.0),
    centre=st.tuples(st.floats(-0.5, 1.5), st.floats(-0.5, 1.5)),
    input_hw=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    ratio=st.floats(0.1, 4.0),
    kind=st.sampled_from(["fit", "focal", "none"]),
    multiple=st.integers(1, 8),
    depth_m=st.floats(1e-3, 1e4),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["mean", "fx"]),
)
def test_fuzz_tiny_images_round_trip_through_canonical_space(
    size, focal, aspect, centre, input_hw, ratio, kind, multiple, depth_m, seed, mode
):
    """prepare_input / to_canonical / from_canonical on 1-12 px images: the canvas, labels,
    mask and padding are right, and a constant canonical prediction comes back as the depth."""
    FUZZ_RUN["canonical round trip"] += 1
    W, H = size  # noqa: N806
    camera = Camera(focal, focal * aspect, centre[0] * W, centre[1] * H, W, H)
    space = CanonicalSpace(
        focal_px=camera.focal(mode) * ratio,  # a focal resize stays within 0.1-4x
        input_hw=input_hw,
        variant={"fit": "label", "focal": "image", "none": "none"}[kind],
        resize=kind,
        size_multiple=multiple,
    )
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = np.full((H, W), depth_m, np.float32)
    try:
        x, record = prepare_input(rgb, camera, space, mode)
    except ValueError as error:
        assert "leaves no pixel" in str(error)
        return
    check_record(record, camera, space, mode)
    canvas = to_canonical(Frame(rgb, camera, depth), record, pad_rgb=space.pad_rgb)
    H_in, W_in = record.input_hw  # noqa: N806
    assert canvas.image.shape == (H_in, W_in, 3) and tuple(x.shape) == (1, 3, H_in, W_in)
    assert torch.equal(x, normalize(canvas.image, space)) and bool(torch.isfinite(x).all())
    assert np.allclose(canvas.camera.intrinsics, record.camera_c.intrinsics, rtol=1e-12)
    h, w = record.resized_hw
    top, left = record.offset
    inside = np.zeros((H_in, W_in), bool)
    inside[top : top + h, left : left + w] = True
    assert np.array_equal(canvas.mask, inside)  # every image pixel valid, padding not
    assert np.all(canvas.image[~inside] == space.pad_rgb)
    label = np.float32(depth_m) * np.float32(record.label_scale)
    assert np.allclose(canvas.depth[inside], label, rtol=1e-6)
    back = from_canonical(np.full((H_in, W_in), label, np.float32), record)
    assert back.shape == (H, W) and np.allclose(back, depth_m, rtol=1e-5)


def test_fuzz_case_count():
    """Every fuzz test ran at least the cases asked of it (Hypothesis stops early, without
    failing, when its strategies give too few valid cases), and together >= 10,000. A fuzz
    test this session did not run (deselected with ``-k``) is run here, to be counted."""
    fuzz_tests = {
        "camera construction": test_fuzz_camera_construction_is_valid_or_a_value_error,
        "camera operations": test_fuzz_camera_operations_keep_every_ray,
        "inference record": test_fuzz_inference_record_invariants,
        "training record": test_fuzz_training_record_invariants,
        "canonical round trip": test_fuzz_tiny_images_round_trip_through_canonical_space,
    }
    assert sorted(fuzz_tests) == sorted(FUZZ_EXAMPLES)
    for name, test in fuzz_tests.items():
        if name not in FUZZ_RUN:
            test()
        assert FUZZ_RUN[name] >= FUZZ_EXAMPLES[name], (name, FUZZ_RUN[name])
    assert sum(FUZZ_RUN[name] for name in FUZZ_EXAMPLES) >= 10_000
