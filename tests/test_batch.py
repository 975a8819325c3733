"""Large batch runs (``batch.run_batch``): loader workers, resume after a kill, shards,
keep-going, Ctrl-C.

A tiny seeded convolutional network stands in for a depth model (no registry entry needed);
runs that must die or be interrupted happen in child processes that import it from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import assert_file_matches, assert_outputs_match, tiny_model, tree
from metricdepth.batch import MAX_WRITES_AHEAD, BatchOptions, predict_to_files, run_batch
from metricdepth.cameras import CameraOptions
from metricdepth.data.inputs import collect_inputs, parse_shard, shard_items
from metricdepth.files import output_paths
from metricdepth.predictor import PrepareOptions

TESTS = Path(__file__).resolve().parent
N_IMAGES = 10


def make_images(folder: Path, count: int = N_IMAGES) -> list[Path]:
    """``count`` random PNGs of a few sizes, half of them in a sub-folder."""
    rng = np.random.default_rng(1)
    paths = []
    for k in range(count):
        path = folder / ("sub" if k % 2 else "") / f"img{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (20 + 2 * k, 30 + k, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def records(folder: Path) -> set[str]:
    """The records under ``folder`` (not the temporaries of records still being written)."""
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*.json")
        if not p.name.startswith(".")
    }


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_batch import tiny_model
    from metricdepth.data.inputs import collect_inputs
    from metricdepth.batch import BatchOptions, run_batch
    from metricdepth.cameras import CameraOptions
    from metricdepth.predictor import PrepareOptions

    images, out, mode, workers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    on_done = None
    if mode.startswith("kill-at-replace-"):  # the run dies like `kill -9` in the Nth rename
        import time
        main = os.getpid()
        target, calls, real_replace = int(mode.rsplit("-", 1)[1]), [0], os.replace
        def replace(src, dst):  # slow writes: the loaders work ahead meanwhile
            time.sleep(0.1)
            calls[0] += 1
            if calls[0] == target:  # (the renames run on the writer threads)
                children = Path(f"/proc/{{main}}/task/{{main}}/children").read_text().split()
                Path(out.parent / "workers.txt").write_text(" ".join(children))
                os.kill(main, signal.SIGKILL)  # the run's main process, then this one
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        os.replace = replace
    elif mode.startswith("signal-") and "-after-" in mode:  # signal-SIGTERM-after-3:
        _, name, _, target = mode.split("-")  # once image 3 is settled (on_done)
        seen = []
        def on_done(item, prediction, written):
            seen.append(item.stem)
            if len(seen) == int(target):
                os.kill(os.getpid(), getattr(signal, name))
    elif mode.startswith("signal-"):  # signal-SIGTERM-record-3: sent by a writer thread
        import threading  # as it renames the 3rd record into place
        _, name, _, target = mode.split("-")
        main, records, real_replace = os.getpid(), [0], os.replace
        def replace(src, dst):
            real_replace(src, dst)
            writer = threading.current_thread().name.startswith("metricdepth-writer")
            if writer and str(dst).endswith(".json"):
                records[0] += 1
                if records[0] == int(target):
                    os.kill(main, getattr(signal, name))
        os.replace = replace
    summary = run_batch(
        tiny_model(), collect_inputs([images]), out, {{"depth", "png16"}},
        inputs=PrepareOptions(CameraOptions(focal_px=40.0)),
        options=BatchOptions(workers=workers, progress=False), on_done=on_done,
    )
    print(summary.line())
    """
).format(tests=str(TESTS))


@pytest.fixture
def run_child(tmp_path: Path):
    """Run ``CHILD`` in its own session: ``run_child(images, out, mode, workers)``.

    Output goes to files, so no stray process can hold a pipe open; whatever is left of the
    session is killed at teardown (after the test has looked at it).
    """
    sessions: list[int] = []

    def run(images: Path, out: Path, mode: str, workers: int) -> subprocess.CompletedProcess:
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        with (
            open(tmp_path / "child.out", "w") as out_file,
            open(tmp_path / "child.err", "w") as err,
        ):
            child = subprocess.Popen(
                [sys.executable, str(script), str(images), str(out), mode, str(workers)],
                stdout=out_file,
                stderr=err,
                start_new_session=True,
            )
            sessions.append(child.pid)
            returncode = child.wait(timeout=120)
        output = (tmp_path / "child.out").read_text(), (tmp_path / "child.err").read_text()
        return subprocess.CompletedProcess(child.args, returncode, *output)

    yield run
    for session in sessions:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    make_images(folder)
    return folder


def test_killed_run_then_resume_equals_an_uninterrupted_run(tmp_path, images, run_child):
    """The killed and the resumed run use 2 loader workers (the network on fewer torch threads),
    the reference none: the same outputs to ``PATH_RTOL``, not the same bytes (conftest)."""
    items = collect_inputs([images])
    reference = tmp_path / "reference"
    summary = run_batch(
        tiny_model(),
        items,
        reference,
        {"depth", "png16"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(progress=False),
    )
    assert (summary.done, summary.skipped, summary.failed) == (N_IMAGES, 0, [])

    # 3 renames per image (depth.npy, depth.png, json, in that order), several images written
    # at once by the writer threads: killed inside the 8th rename, some images are finished.
    out = tmp_path / "out"
    killed = run_child(images, out, "kill-at-replace-8", workers=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    expected, left = tree(reference), tree(out)
    final = {name: data for name, data in left.items() if not Path(name).name.startswith(".")}
    assert 0 < len(final) < len(expected)  # about 7: writer threads race the kill
    for name, data in final.items():  # never a half-written file under a final name
        assert_file_matches(name, data, expected[name])
    finished = {name for name in records(out) if not Path(name).name.startswith(".")}
    assert len(finished) < N_IMAGES
    for item in items:  # a record only beside every file it lists: S.json is written last
        paths = output_paths(out, item.stem, {"depth", "png16"})
        if paths["record"].exists():
            assert all(path.is_file() for path in paths.values())
    leftovers = [name for name in left if Path(name).name.startswith(".")]
    assert leftovers and all(".tmp" in name for name in leftovers)  # killed inside a write
    workers = [int(pid) for pid in (tmp_path / "workers.txt").read_text().split()]
    assert len(workers) == 2  # the 2 loader workers
    deadline = time.monotonic() + 30  # the loader workers end when their parent is gone
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)

    resumed = run_batch(
        tiny_model(),
        items,
        out,
        {"depth", "png16"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(workers=2, resume=True, progress=False),
    )
    done = len(finished)
    assert (resumed.done, resumed.skipped, resumed.failed) == (N_IMAGES - done, done, [])
    assert not resumed.interrupted
    assert_outputs_match(tree(out), tree(reference))  # every output once, no temporary left


def test_workers_write_the_outputs_of_an_in_process_run(tmp_path, images):
    """With 2 workers the network runs on fewer torch threads: the same outputs to
    ``PATH_RTOL`` (conftest), not the same bytes."""
    items = collect_inputs([images])
    for workers in (0, 2):
        run_batch(
            tiny_model(),
            items,
            tmp_path / f"w{workers}",
            {"depth", "vis", "ply"},
            options=BatchOptions(workers=workers, progress=False),
        )
    first, second = tree(tmp_path / "w0"), tree(tmp_path / "w2")
    assert len(first) == 4 * N_IMAGES
    assert_outputs_match(second, first)
    record = json.loads((tmp_path / "w2" / "img00.json").read_text())  # with its timings
    assert record["camera_source"] == "default" and "timings_s" not in record
    assert set(record["timings_ms"]) == {"pre", "forward", "post"}  # per image, in ms
    assert record["files"] == {
        "depth": "img00.depth.npy",
        "ply": "img00.ply",
        "vis": "img00.vis.png",
    }


@pytest.mark.parametrize(
    ("name", "workers", "when"),
    [("SIGINT", 0, "after"), ("SIGTERM", 2, "after"), ("SIGINT", 2, "record")],
)
def test_a_stop_signal_ends_the_run_cleanly_with_a_summary_line(
    tmp_path, images, run_child, name, workers, when
):
    """``after``: sent once the 3rd image is settled (``on_done``); ``record``: as a writer
    thread renames the 3rd record into place."""
    out = tmp_path / "out"
    child = run_child(images, out, f"signal-{name}-{when}-3", workers=workers)
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""  # no traceback, no KeyboardInterrupt
    line = child.stdout.strip()
    assert line.startswith("interrupted: ") and line.endswith("left (rerun with --resume)")
    done = int(line.split()[1])
    # the third image plus those whose writes were under way (and, sent from a writer
    # thread, the one the network was doing when the signal came)
    assert 3 <= done <= 3 + MAX_WRITES_AHEAD + (when == "record") < N_IMAGES
    assert len(records(out)) == done
    assert f"; {N_IMAGES - done} left" in line
    rest = run_batch(
        tiny_model(),
        collect_inputs([images]),
        out,
        {"depth", "png16"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(resume=True, progress=False),
    )
    assert (rest.skipped, rest.done) == (done, N_IMAGES - done)


def test_shards_of_three_cover_the_list_without_overlap(tmp_path, images):
    items = collect_inputs([images])
    out = tmp_path / "out"
    seen: list[list[str]] = []
    for index in range(3):
        stems: list[str] = []
        summary = run_batch(
            tiny_model(),
            items,
            out,
            {"depth"},
            on_done=lambda item, prediction, written, stems=stems: stems.append(item.stem),
            options=BatchOptions(shard=(index, 3), progress=False),
        )
        assert summary.total == len(stems) == summary.done
        assert f"in shard {index}/3" in summary.line()
        seen.append(stems)
    assert [len(s) for s in seen] == [4, 3, 3]
    assert sorted(sum(seen, [])) == sorted(item.stem for item in items)  # all, each once
    assert seen[1] == [items[k].stem for k in (1, 4, 7)]  # item k goes to shard k mod 3
    assert records(out) == {f"{item.stem}.json" for item in items}


def test_parse_shard_and_shard_items():
    assert parse_shard("2/3") == (2, 3) and parse_shard(" 0/1 ") == (0, 1)
    assert shard_items(list(range(10)), 1, 3) == [1, 4, 7]
    for text in ("3/3", "1/0", "a/b", "-1/3", "1", "1/2/3", ""):
        with pytest.raises(ValueError, match=r"--shard must be I/N with 0 <= I < N"):
            parse_shard(text)
    with pytest.raises(ValueError, match=r"shard must be \(i, n\)"):
        run_batch(
            tiny_model(),
            [],
            Path("unused"),
            {"depth"},
            options=BatchOptions(shard=(3, 3), progress=False),
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_keep_going_reports_a_corrupt_image_and_goes_on(tmp_path, images, capsys, workers):
    bad = images / "sub" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    items = collect_inputs([images])
    out = tmp_path / "out"
    summary = run_batch(
        tiny_model(),
        items,
        out,
        {"depth"},
        options=BatchOptions(workers=workers, keep_going=True, progress=True),
    )
    assert (summary.done, len(summary.failed), summary.total) == (N_IMAGES, 1, N_IMAGES + 1)
    assert summary.failed[0].startswith(f"{bad}: ") and "not an image" in summary.failed[0]
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "broken.png" in line] == [
        f"failed: {summary.failed[0]}"
    ]
    assert len(records(out)) == N_IMAGES and "1 failed" in summary.line()
    with pytest.raises(ValueError, match=r"broken\.png: not an image") as info:
        run_batch(
            tiny_model(),
            items,
            tmp_path / "strict",
            {"depth"},
            options=BatchOptions(workers=workers, progress=False),
        )
    assert str(info.value).endswith(" (--keep-going skips it)")  # how to go past it
    with pytest.raises(ValueError, match=r"broken\.png: not an image") as info:
        run_batch(
            tiny_model(),
            [item for item in items if item.image == bad],
            tmp_path / "one",
            {"depth"},
            options=BatchOptions(progress=False),
        )
    assert "--keep-going" not in str(info.value)  # a single image: nothing to go on to


def test_resume_skips_finished_items_and_redoes_incomplete_ones(tmp_path, images):
    items = collect_inputs([images])
    out = tmp_path / "out"
    first = run_batch(tiny_model(), items, out, {"depth"}, options=BatchOptions(progress=False))
    assert first.done == N_IMAGES
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = run_batch(
        tiny_model(), items, out, {"depth"}, options=BatchOptions(resume=True, progress=False)
    )
    assert (again.done, again.skipped, again.total) == (0, N_IMAGES, N_IMAGES)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps
    output_paths(out, items[3].stem, set())["record"].unlink()
    one = run_batch(
        tiny_model(), items, out, {"depth"}, options=BatchOptions(resume=True, progress=False)
    )
    assert (one.done, one.skipped) == (1, N_IMAGES - 1)
    more = run_batch(
        tiny_model(),
        items,
        out,
        {"depth", "png16"},
        options=BatchOptions(resume=True, progress=False),
    )
    assert (more.done, more.skipped) == (N_IMAGES, 0)  # png16 was not made before
    assert len(list(out.rglob("*.depth.png"))) == N_IMAGES


@pytest.mark.parametrize("fsync", [False, True])
def test_predict_to_files_still_returns_the_written_paths(tmp_path, images, monkeypatch, fsync):
    items = collect_inputs([images])[:3]
    seen, synced = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    written = predict_to_files(
        tiny_model(),
        items,
        tmp_path / "out",
        {"depth"},
        inputs=PrepareOptions(camera=CameraOptions(intrinsics=(40.0, 40.0, 15.0, 10.0))),
        on_done=lambda item, prediction: seen.append((item.stem, prediction.camera_source)),
        fsync=fsync,
    )
    assert len(synced) == (3 if fsync else 0)  # each depth file, never a record
    assert [sorted(w) for w in written] == [["depth", "record"]] * 3
    assert seen == [(item.stem, "given") for item in items]
    depth = np.load(written[0]["depth"])
    assert depth.shape == (20, 30) and depth.dtype == np.float32 and (depth > 0).all()


def test_sigint_handler_is_restored(tmp_path, images):
    before = signal.getsignal(signal.SIGINT)
    run_batch(
        tiny_model(),
        collect_inputs([images])[:2],
        tmp_path / "o",
        {"depth"},
        options=BatchOptions(progress=False),
    )
    assert signal.getsignal(signal.SIGINT) is before


def test_an_exif_focal_is_used_when_no_intrinsics_are_given(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26  # FocalLengthIn35mmFilm, mm
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(folder / "phone.jpg", exif=exif)
    Image.new("RGB", (64, 48), (90, 120, 150)).save(folder / "plain.jpg")
    out = tmp_path / "out"
    summary = run_batch(
        tiny_model(), collect_inputs([folder]), out, {"depth"}, options=BatchOptions(progress=False)
    )
    assert summary.default_camera == 1
    phone = json.loads((out / "phone.json").read_text())
    assert phone["camera_source"] == "exif"
    assert phone["camera"]["fx"] == pytest.approx(26 * np.hypot(64, 48) / np.hypot(36, 24))
    assert json.loads((out / "plain.json").read_text())["camera_source"] == "default"


@pytest.mark.parametrize("fsync", [True, False])
def test_with_fsync_data_files_are_fsynced_before_the_record_is_renamed(
    tmp_path, images, monkeypatch, fsync
):
    """``fsync=True``: the record (written last, never fsync'ed) is renamed only after every
    data file's fsync; by default nothing is fsync'ed. The renames follow the writes either
    way, the record last."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))

    def replace(src, dst):
        events.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    items = collect_inputs([images])[:1]
    run_batch(
        tiny_model(),
        items,
        tmp_path / "out",
        {"depth", "png16"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(progress=False, fsync=fsync),
    )
    stem = items[0].stem
    renames = [f"{stem}.depth.npy", f"{stem}.depth.png", f"{stem}.json"]
    assert events == (["fsync", "fsync"] if fsync else []) + renames


def test_resume_redoes_an_image_whose_file_a_power_loss_cut_short(tmp_path, images):
    """The record lists each file's size; a file left short or empty (what a power loss can
    do to files that were not fsync'ed) makes ``resume`` redo that image, byte for byte."""
    items = collect_inputs([images])
    out = tmp_path / "out"
    run_batch(
        tiny_model(),
        items,
        out,
        {"depth", "png16"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(progress=False),
    )
    before = tree(out)
    record = json.loads((out / f"{items[0].stem}.json").read_text())
    assert record["bytes"] == {
        kind: (out / name).stat().st_size for kind, name in record["files"].items()
    }
    short = out / f"{items[0].stem}.depth.npy"
    short.write_bytes(short.read_bytes()[:-7])
    (out / f"{items[1].stem}.depth.png").write_bytes(b"")
    summary = run_batch(
        tiny_model(),
        items,
        out,
        {"depth", "png16"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(progress=False, resume=True),
    )
    assert (summary.done, summary.skipped) == (2, N_IMAGES - 2)
    assert tree(out) == before  # the same code, process and thread count: byte for byte


def test_network_threads_leave_room_for_the_loader_workers(monkeypatch):
    import torch

    import metricdepth.batch as batch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    for cores, workers, expected in ((2, 2, 1), (2, 1, 1), (16, 2, 8), (10, 4, 6), (4, 0, 8)):
        monkeypatch.setattr(batch, "usable_cores", lambda cores=cores: cores)
        assert batch.network_threads(workers) == expected, (cores, workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_post_processing_error_is_one_failed_image_in_either_writer(
    tmp_path, images, monkeypatch, workers
):
    """A ValueError while mapping the outputs back (``finish``, on a writer thread) fails that
    image only, with ``keep_going``; else it stops the run."""
    from metricdepth.predictor import Predictor

    real = Predictor.finish
    items = collect_inputs([images])
    victim = items[4]
    width = cv2.imread(str(victim.image)).shape[1]  # no other image is as wide

    def finish(self, out, prepared, *args):
        if prepared.camera.width == width:
            raise ValueError(f"{victim.image}: cannot map the depth back")
        return real(self, out, prepared, *args)

    monkeypatch.setattr(Predictor, "finish", finish)
    out = tmp_path / "out"
    summary = run_batch(
        tiny_model(),
        items,
        out,
        {"depth"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(workers=workers, keep_going=True, progress=False),
    )
    assert summary.failed == [f"{victim.image}: cannot map the depth back"]
    assert summary.done == N_IMAGES - 1
    assert sorted(records(out)) == sorted(f"{i.stem}.json" for i in items if i is not victim)
    with pytest.raises(ValueError, match="cannot map the depth back"):
        run_batch(
            tiny_model(),
            items,
            tmp_path / "strict",
            {"depth"},
            inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
            options=BatchOptions(workers=workers, progress=False),
        )


KILLED_WORKER_MAIN = (  # the console script, whose loader worker SIGKILLs itself at item 3
    "import os, signal; import metricdepth.data.loader as o; "
    "real = o.PredictionInputs.__getitem__; "
    "o.PredictionInputs.__getitem__ = lambda self, k: "
    "os.kill(os.getpid(), signal.SIGKILL) if k == 3 else real(self, k); "
    "from metricdepth.cli import main; main()"
)


def test_a_killed_loader_worker_ends_the_command_with_one_line(tmp_path, images):
    """A loader worker killed (e.g. by the kernel's OOM killer) mid-run: one ``error:`` line
    naming it and how it ended, exit 1, no traceback; every image written is complete (which
    ones depends on when DataLoader notices the death: at most those before it)."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER_MAIN, "predict", str(images), "--focal", "40",
         "--workers", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert re.match(
        r"error: loader worker \(pid(\(s\))? \d+\) (is killed by signal|exited)", lines[0]
    )
    assert lines[0].endswith("rerun with --resume"), lines[0]
    written = records(out)
    assert written <= {f"{item.stem}.json" for item in collect_inputs([images])[:3]}
    for name in written:  # each record beside every file it lists
        record = json.loads((out / name).read_text())
        assert all((out / name).with_name(file).is_file() for file in record["files"].values())
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("filesystem", ["local", "fsspec"])
def test_is_finished_reads_records_strictly(tmp_path, filesystem):
    """A record counts only when it lists a depth file, its sizes match every file it lists
    (older records without sizes: files that exist), and its names are plain file names; the
    same rule read through an fsspec filesystem (the Ray executor's URLs)."""
    from metricdepth import files as outputs

    if filesystem == "fsspec":
        fsspec = pytest.importorskip("fsspec")
        fs, root = fsspec.core.url_to_fs(f"file://{tmp_path}")

        def is_finished(folder, stem, save):
            assert folder == tmp_path
            return outputs.is_finished(root, stem, save, fs=fs)
    else:
        is_finished = outputs.is_finished

    (tmp_path / "a.depth.npy").write_bytes(b"12345")
    (tmp_path / "a.depth.png").write_bytes(b"123")

    def finished(**record) -> bool:
        (tmp_path / "a.json").write_text(json.dumps(record))
        return is_finished(tmp_path, "a", {"depth"})

    files = {"depth": "a.depth.npy", "png16": "a.depth.png"}
    assert finished(files=files, bytes={"depth": 5, "png16": 3})
    assert finished(files=files)  # an earlier version's record
    assert not finished(files=files, bytes={"depth": 5, "png16": 4})  # cut short
    assert not finished(files=files, bytes={"depth": 5})  # a size missing
    assert not finished(files=files, bytes=[5, 3])
    assert not finished(files={}, bytes={})  # no depth file
    assert not finished(files={"depth": str(tmp_path / "a.depth.npy")}, bytes={"depth": 5})
    assert finished(files={"depth": "a.depth.npy"}, bytes={"depth": 5}, save=["depth", "png16"])
    assert is_finished(tmp_path, "a", {"png16"})  # asked for, whether or not written
    assert not is_finished(tmp_path, "a", {"ply"})  # not asked for by that run
    (tmp_path / "a.depth.npy").unlink()
    (tmp_path / "a.depth.npy").mkdir()  # a folder where the file should be
    assert not finished(files={"depth": "a.depth.npy"})


def test_an_error_in_the_forward_stops_the_run_after_the_images_before_it(tmp_path, images):
    """A forward pass that raises (image 4) raises in the caller; the images before it are
    written, none after it, and no temporary is left."""
    model, calls = tiny_model(), []

    def fail_fourth(module, args):
        calls.append(threading.current_thread().name)
        if len(calls) == 4:
            raise RuntimeError("forward failed on purpose")

    model.register_forward_pre_hook(fail_fourth)
    with pytest.raises(RuntimeError, match="forward failed on purpose"):
        run_batch(
            model,
            collect_inputs([images]),
            tmp_path / "out",
            {"depth"},
            inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
            options=BatchOptions(workers=1, progress=False),
        )
    assert calls == ["MainThread"] * 4  # the forward runs in the calling thread
    assert len(records(tmp_path / "out")) == 3
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_runner_writes_what_predict_predicts(tmp_path, images, workers):
    """The batch runner's stages (DataLoader workers, forward here, finish on a writer thread)
    give each image the depth of ``pipeline.predict`` on it alone, to ``PATH_RTOL``."""
    from conftest import PATH_RTOL
    from metricdepth.pipeline import predict

    model, items, out = tiny_model(), collect_inputs([images]), tmp_path / "out"
    summary = run_batch(
        model,
        items,
        out,
        {"depth"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(workers=workers, progress=False),
    )
    assert summary.done == N_IMAGES
    for item in items:
        alone = predict(model, item.image, 40.0)
        written = np.load(output_paths(out, item.stem, {"depth"})["depth"])
        assert written.shape == alone.depth_m.shape and (written > 0).all()
        np.testing.assert_allclose(written, alone.depth_m, rtol=PATH_RTOL, atol=0)
        record = json.loads(output_paths(out, item.stem, set())["record"].read_text())
        assert record["camera"] == alone.summary()["camera"]


def test_a_rerun_with_fewer_kinds_deletes_the_earlier_extra_files(tmp_path, images):
    """An image's files from an earlier run with more ``--save`` kinds do not stay beside the
    new record as if current: the rerun deletes them (other images' files are left alone)."""
    items = collect_inputs([images])[:3]
    out = tmp_path / "out"
    run_batch(
        tiny_model(), items, out, {"depth", "png16", "vis"}, options=BatchOptions(progress=False)
    )
    assert len(list(out.glob("*.vis.png"))) == 3
    run_batch(
        tiny_model(),
        items[:2],
        out,
        {"depth"},
        inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
        options=BatchOptions(progress=False),
    )
    for item in items[:2]:
        record = json.loads((out / f"{item.stem}.json").read_text())
        assert record["files"] == {"depth": f"{item.stem}.depth.npy"}
        left = sorted(p.name for p in out.glob(f"{item.stem}.*"))
        assert left == [f"{item.stem}.depth.npy", f"{item.stem}.json"]
    assert (out / f"{items[2].stem}.vis.png").is_file()  # not part of the rerun


def test_a_crash_while_writing_an_image_leaves_none_of_its_files(tmp_path, images, monkeypatch):
    """A bug raised while an image's third file is written (after two were written under
    temporary names): none of that image's files appears, no temporary is left, and the
    images before it are complete."""
    import metricdepth.files as files

    items = collect_inputs([images])
    victim, real = items[5], files.write_ply

    def write_ply(path, *args, **kwargs):
        if Path(path).name == f"{Path(victim.stem).name}.ply":
            raise RuntimeError("a bug in the PLY writer")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "write_ply", write_ply)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bug in the PLY writer"):
        run_batch(
            tiny_model(),
            items,
            out,
            {"depth", "png16", "ply"},
            inputs=PrepareOptions(camera=CameraOptions(focal_px=40.0)),
            options=BatchOptions(keep_going=True, progress=False),
        )
    assert not list(out.rglob(f"{Path(victim.stem).name}.*"))
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    for item in items[:5]:
        paths = output_paths(out, item.stem, {"depth", "png16", "ply"})
        assert all(path.is_file() for path in paths.values()), item.stem
