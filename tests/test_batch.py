"""Large batch runs: loader workers, resume after a kill, shards, keep-going, Ctrl-C.

A tiny seeded convolutional network stands in for a depth model (no registry entry needed);
runs that must die or be interrupted happen in child processes that import it from here.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from metricdepth.data.inputs import collect_inputs, parse_shard, shard_items
from metricdepth.outputs import _MAX_WRITES_AHEAD, output_paths, predict_to_files, run_batch

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
    from metricdepth.outputs import run_batch

    images, out, mode, workers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    on_done = None
    if mode.startswith("kill-at-replace-"):  # the run dies like `kill -9` in the Nth rename
        import time
        main = os.getpid()
        target, calls, real_replace = int(mode.rsplit("-", 1)[1]), [0], os.replace
        def replace(src, dst):  # slow writes: the loaders fill their result pipe meanwhile
            time.sleep(0.1)
            calls[0] += 1
            if calls[0] == target:  # (the renames run in the writer process, a child)
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
    elif mode.startswith("signal-"):  # signal-SIGTERM-record-3: sent by the writer process
        _, name, _, target = mode.split("-")  # as it renames the 3rd record into place
        main, records, real_replace = os.getpid(), [0], os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if os.getpid() != main and str(dst).endswith(".json"):
                records[0] += 1
                if records[0] == int(target):
                    os.kill(main, getattr(signal, name))
        os.replace = replace
    summary = run_batch(
        tiny_model(), collect_inputs([images]), out, {{"depth", "png16"}}, focal=40.0,
        workers=workers, progress=False, on_done=on_done,
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
    """The killed and the resumed run use 2 loader workers and the writer process (fewer torch
    threads, post-processing on one thread), the reference none: the same outputs to
    ``PATH_RTOL``, not the same bytes (conftest)."""
    items = collect_inputs([images])
    reference = tmp_path / "reference"
    summary = run_batch(
        tiny_model(), items, reference, {"depth", "png16"}, focal=40.0, progress=False
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
    assert len(workers) == 3  # 2 loader workers and the writer process
    deadline = time.monotonic() + 30  # the loader workers die with their parent
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)

    resumed = run_batch(
        tiny_model(),
        items,
        out,
        {"depth", "png16"},
        focal=40.0,
        workers=2,
        resume=True,
        progress=False,
    )
    done = len(finished)
    assert (resumed.done, resumed.skipped, resumed.failed) == (N_IMAGES - done, done, [])
    assert not resumed.interrupted
    assert_outputs_match(tree(out), tree(reference))  # every output once, no temporary left


def test_workers_write_the_outputs_of_an_in_process_run(tmp_path, images):
    """With 2 workers the network runs on fewer torch threads and the writer process on one:
    the same outputs to ``PATH_RTOL`` (conftest), not the same bytes."""
    items = collect_inputs([images])
    for workers in (0, 2):
        run_batch(
            tiny_model(),
            items,
            tmp_path / f"w{workers}",
            {"depth", "vis", "ply"},
            workers=workers,
            progress=False,
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
    """``after``: sent once the 3rd image is settled (``on_done``: writer threads);
    ``record``: as the writer process renames the 3rd record (no ``on_done``)."""
    out = tmp_path / "out"
    child = run_child(images, out, f"signal-{name}-{when}-3", workers=workers)
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""  # no traceback, no KeyboardInterrupt
    line = child.stdout.strip()
    assert line.startswith("interrupted: ") and line.endswith("left (rerun with --resume)")
    done = int(line.split()[1])
    # the third image plus those whose writes were under way (and, from the writer
    # process, the one the network was doing when the signal came)
    assert 3 <= done <= 3 + _MAX_WRITES_AHEAD + (when == "record") < N_IMAGES
    assert len(records(out)) == done
    assert f"; {N_IMAGES - done} left" in line
    rest = run_batch(
        tiny_model(),
        collect_inputs([images]),
        out,
        {"depth", "png16"},
        focal=40.0,
        resume=True,
        progress=False,
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
            shard=(index, 3),
            progress=False,
            on_done=lambda item, prediction, written, stems=stems: stems.append(item.stem),
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
        run_batch(tiny_model(), [], Path("unused"), {"depth"}, shard=(3, 3), progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_keep_going_reports_a_corrupt_image_and_goes_on(tmp_path, images, capsys, workers):
    bad = images / "sub" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    items = collect_inputs([images])
    out = tmp_path / "out"
    summary = run_batch(
        tiny_model(), items, out, {"depth"}, workers=workers, keep_going=True, progress=True
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
            tiny_model(), items, tmp_path / "strict", {"depth"}, workers=workers, progress=False
        )
    assert str(info.value).endswith(" (--keep-going skips it)")  # how to go past it
    with pytest.raises(ValueError, match=r"broken\.png: not an image") as info:
        run_batch(tiny_model(), [item for item in items if item.image == bad], tmp_path / "one",
                  {"depth"}, progress=False)  # fmt: skip
    assert "--keep-going" not in str(info.value)  # a single image: nothing to go on to


def test_resume_skips_finished_items_and_redoes_incomplete_ones(tmp_path, images):
    items = collect_inputs([images])
    out = tmp_path / "out"
    first = run_batch(tiny_model(), items, out, {"depth"}, progress=False)
    assert first.done == N_IMAGES
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = run_batch(tiny_model(), items, out, {"depth"}, resume=True, progress=False)
    assert (again.done, again.skipped, again.total) == (0, N_IMAGES, N_IMAGES)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps
    output_paths(out, items[3].stem, set())["record"].unlink()
    one = run_batch(tiny_model(), items, out, {"depth"}, resume=True, progress=False)
    assert (one.done, one.skipped) == (1, N_IMAGES - 1)
    more = run_batch(tiny_model(), items, out, {"depth", "png16"}, resume=True, progress=False)
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
        intrinsics=(40.0, 40.0, 15.0, 10.0),
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
    run_batch(tiny_model(), collect_inputs([images])[:2], tmp_path / "o", {"depth"}, progress=False)
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
    summary = run_batch(tiny_model(), collect_inputs([folder]), out, {"depth"}, progress=False)
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
        tiny_model(), items, tmp_path / "out", {"depth", "png16"}, focal=40.0, progress=False,
        fsync=fsync,
    )  # fmt: skip
    stem = items[0].stem
    renames = [f"{stem}.depth.npy", f"{stem}.depth.png", f"{stem}.json"]
    assert events == (["fsync", "fsync"] if fsync else []) + renames


def test_resume_redoes_an_image_whose_file_a_power_loss_cut_short(tmp_path, images):
    """The record lists each file's size; a file left short or empty (what a power loss can
    do to files that were not fsync'ed) makes ``resume`` redo that image, byte for byte."""
    items = collect_inputs([images])
    out = tmp_path / "out"
    run_batch(tiny_model(), items, out, {"depth", "png16"}, focal=40.0, progress=False)
    before = tree(out)
    record = json.loads((out / f"{items[0].stem}.json").read_text())
    assert record["bytes"] == {
        kind: (out / name).stat().st_size for kind, name in record["files"].items()
    }
    short = out / f"{items[0].stem}.depth.npy"
    short.write_bytes(short.read_bytes()[:-7])
    (out / f"{items[1].stem}.depth.png").write_bytes(b"")
    summary = run_batch(
        tiny_model(), items, out, {"depth", "png16"}, focal=40.0, progress=False, resume=True
    )
    assert (summary.done, summary.skipped) == (2, N_IMAGES - 2)
    assert tree(out) == before  # the same code, process and thread count: byte for byte


def test_network_threads_leave_room_for_the_loader_workers(monkeypatch):
    import torch

    import metricdepth.outputs as outputs

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    for cores, workers, expected in ((2, 2, 1), (2, 1, 1), (16, 2, 8), (10, 4, 6), (4, 0, 8)):
        monkeypatch.setattr(outputs, "usable_cores", lambda cores=cores: cores)
        assert outputs.network_threads(workers) == expected, (cores, workers)


def test_a_short_forward_is_traced_and_writes_the_same_outputs(tmp_path, monkeypatch):
    """Past ``TRACE_MIN_IMAGES`` images a quick network is traced after the first image; the
    files hold the outputs of a run that never traces (with 2 workers: another thread count,
    so to ``PATH_RTOL``), and a trace that does not reproduce the first image's outputs is
    dropped (the model runs on)."""
    import torch

    import metricdepth.outputs as outputs

    folder = tmp_path / "in"
    make_images(folder, outputs.TRACE_MIN_IMAGES + 4)
    items = collect_inputs([folder])
    made = []
    real = outputs.traced_network

    def spy(model, sample, expected):
        made.append(real(model, sample, expected))
        return made[-1]

    monkeypatch.setattr(outputs, "traced_network", spy)
    run_batch(tiny_model(), items, tmp_path / "traced", {"depth"}, workers=0, progress=False)
    assert len(made) == 1 and isinstance(made[0], torch.jit.ScriptModule)
    monkeypatch.setattr(outputs, "TRACE_BELOW_S", 0.0)  # every forward is "slow": no trace
    run_batch(tiny_model(), items, tmp_path / "eager", {"depth"}, workers=2, progress=False)
    assert len(made) == 1
    traced, eager = tree(tmp_path / "traced"), tree(tmp_path / "eager")
    assert len(traced) == 2 * len(items)
    assert_outputs_match(traced, eager)

    class Noisy(torch.nn.Module):  # a forward that never repeats itself: its trace is refused
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return {"depth_c": (x[:, :1].abs() + torch.rand_like(x[:, :1]) + 1) * self.scale}

    from metricdepth.models.registry import DepthModel

    monkeypatch.setattr(outputs, "TRACE_BELOW_S", 0.1)
    noisy = DepthModel(tiny_model().spec, Noisy()).eval()
    summary = run_batch(noisy, items, tmp_path / "noisy", {"depth"}, progress=False)
    assert made[-1] is None and len(made) == 2 and summary.done == len(items)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_post_processing_error_is_one_failed_image_in_either_writer(
    tmp_path, images, monkeypatch, workers
):
    """A ValueError while mapping the outputs back (writer threads, or the writer process
    with loader workers) fails that image only, with ``keep_going``; else it stops the run."""
    import metricdepth.outputs as outputs

    real = outputs.to_prediction
    items = collect_inputs([images])
    victim = items[4]

    def to_prediction(model, sample, out):
        if sample.index == 4:
            raise ValueError(f"{victim.image}: cannot map the depth back")
        return real(model, sample, out)

    monkeypatch.setattr(outputs, "to_prediction", to_prediction)
    out = tmp_path / "out"
    summary = run_batch(
        tiny_model(), items, out, {"depth"}, focal=40.0, workers=workers, keep_going=True,
        progress=False,
    )  # fmt: skip
    assert summary.failed == [f"{victim.image}: cannot map the depth back"]
    assert summary.done == N_IMAGES - 1
    assert sorted(records(out)) == sorted(f"{i.stem}.json" for i in items if i is not victim)
    with pytest.raises(ValueError, match="cannot map the depth back"):
        run_batch(
            tiny_model(), items, tmp_path / "strict", {"depth"}, focal=40.0, workers=workers,
            progress=False,
        )  # fmt: skip


def test_the_writer_process_writes_what_the_writer_threads_write(tmp_path, images):
    """Loader workers without ``on_done`` use the writer process; with it, writer threads.
    The writer process post-processes on one torch thread, the threads with the network's
    count: the same outputs to ``PATH_RTOL`` (conftest)."""
    items = collect_inputs([images])
    seen = []
    threads = run_batch(
        tiny_model(), items, tmp_path / "threads", {"depth", "png16", "ply", "vis"},
        focal=40.0, workers=2, progress=False, on_done=lambda *args: seen.append(args[0]),
    )  # fmt: skip
    process = run_batch(
        tiny_model(), items, tmp_path / "process", {"depth", "png16", "ply", "vis"},
        focal=40.0, workers=2, progress=False,
    )  # fmt: skip
    assert seen == items
    assert (threads.done, process.done) == (N_IMAGES, N_IMAGES)
    assert_outputs_match(tree(tmp_path / "process"), tree(tmp_path / "threads"))


KILLED_WORKER_MAIN = (  # the console script, whose loader worker SIGKILLs itself at item 3
    "import os, signal; import metricdepth.outputs as o; real = o.PredictionInputs.__getitem__; "
    "o.PredictionInputs.__getitem__ = lambda self, k: "
    "os.kill(os.getpid(), signal.SIGKILL) if k == 3 else real(self, k); "
    "from metricdepth.cli import main; main()"
)


def test_a_killed_loader_worker_ends_the_command_with_one_line(tmp_path, images):
    """A loader worker killed (e.g. by the kernel's OOM killer) mid-run: one ``error:`` line
    naming it and its exit code, exit 1, no traceback; the images before it are written."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER_MAIN, "predict", str(images), "--focal", "40",
         "--workers", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("error: loader worker 1 (pid ")
    assert f"ended before item 3 (exit code {-signal.SIGKILL};" in lines[0]
    assert len(records(out)) == 3  # items 0-2, predicted before it, are complete
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_writer_process_writes_what_an_in_process_write_writes(tmp_path, images, start_method):
    """``WriterProcess`` (forked, or spawned as on macOS/Windows) writes what ``_finish``
    writes here (on one torch thread, this process on its own count: to ``PATH_RTOL``), and
    reports each image back with its camera source."""
    from metricdepth.outputs import PredictionInputs, _finish, run_network
    from metricdepth.writer import WriterProcess

    model = tiny_model()
    items = collect_inputs([images])[:3]
    dataset = PredictionInputs(items, model.spec.space, model.spec.focal_mode, focal=40.0)
    writer = WriterProcess(model, tmp_path / "process", {"depth", "png16"}, 2, start_method)
    for k, item in enumerate(items):
        sample = dataset[k]
        out = run_network(model, sample)
        _finish(model, sample, out, tmp_path / "here", item.stem, {"depth", "png16"})
        writer.submit(k, sample, out, item.stem)
    reports = writer.close()
    assert sorted((r.position, r.outcome, r.text) for r in reports) == [
        (k, "done", "given") for k in range(3)
    ]
    assert_outputs_match(tree(tmp_path / "process"), tree(tmp_path / "here"))


def test_is_finished_reads_records_strictly(tmp_path):
    """A record counts only when it lists a depth file, its sizes match every file it lists
    (older records without sizes: files that exist), and its names are plain file names."""
    from metricdepth.outputs import is_finished

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


def slow_forward(calls: list, seconds: float):
    def forward(x):
        calls.append(x)
        time.sleep(seconds)
        return {"depth_c": x}

    return forward


def test_the_network_thread_drops_queued_forwards_and_ctrl_c_does_not_wait_for_it():
    """Leaving the block: the forward not begun is dropped; after an error the one under way
    is waited for, after Ctrl-C it is not (it ends on its own)."""
    from metricdepth.outputs import _network_thread

    cores = frozenset(os.sched_getaffinity(0))
    for error, waits in ((ValueError, True), (KeyboardInterrupt, False)):
        calls: list = []
        forward = slow_forward(calls, 1.0)
        started = time.perf_counter()
        with pytest.raises(error):
            with _network_thread(cores) as forwards:
                forwards.start(forward, 1)
                forwards.start(forward, 2)
                time.sleep(0.2)  # the first forward is under way, the second queued
                raise error
        elapsed = time.perf_counter() - started
        assert (elapsed >= 1.0) if waits else (elapsed < 0.8), (error, elapsed)
        time.sleep(1.2)  # long enough for a second forward to have begun, were it run
        assert calls == [1], error
        assert "metricdepth-network" not in {t.name for t in threading.enumerate()}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_the_traced_network_on_the_network_thread_writes_the_outputs_of_an_in_process_run(
    tmp_path, monkeypatch
):
    """The default model's real path (a trace after the first image, run on the network
    thread on one torch thread, the writer process, fsync on) writes what an in-process run of
    the model writes (to ``PATH_RTOL``: another thread count and process); the writer process
    fsyncs each data file."""
    import metricdepth.outputs as outputs

    folder = tmp_path / "images"
    make_images(folder, 20)
    items = collect_inputs([folder])
    run_batch(tiny_model(), items, tmp_path / "here", {"depth", "png16"}, focal=40.0,
              progress=False)  # fmt: skip
    traces, log = [], tmp_path / "fsync.log"
    real_trace, real_fsync = outputs.traced_network, os.fsync

    def traced_network(*args):
        traces.append(real_trace(*args))
        return traces[-1]

    def fsync(fd):  # runs in the forked writer process too: count through a file
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return real_fsync(fd)

    monkeypatch.setattr(outputs, "traced_network", traced_network)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(outputs, "usable_cores", lambda: 2)
    summary = run_batch(
        tiny_model(), items, tmp_path / "thread", {"depth", "png16"}, focal=40.0,
        workers=1, progress=False, fsync=True,
    )  # fmt: skip
    assert summary.done == 20 and len(traces) == 1 and traces[0] is not None
    assert_outputs_match(tree(tmp_path / "thread"), tree(tmp_path / "here"))
    writers = log.read_text().split()
    assert len(writers) == 2 * 20 and str(os.getpid()) not in writers  # all in the writer


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_an_error_in_the_network_thread_stops_the_run_after_the_images_before_it(
    tmp_path, images, monkeypatch
):
    """A forward pass that raises on the network thread (image 4) raises in the caller; the
    images started before it are written, none after it."""
    import metricdepth.outputs as outputs

    model, calls = tiny_model(), []

    def fail_fourth(module, args):
        calls.append(threading.current_thread().name)
        if len(calls) == 4:
            raise RuntimeError("forward failed on purpose")

    model.register_forward_pre_hook(fail_fourth)
    monkeypatch.setattr(outputs, "usable_cores", lambda: 2)
    with pytest.raises(RuntimeError, match="forward failed on purpose"):
        run_batch(
            model, collect_inputs([images]), tmp_path / "out", {"depth"}, focal=40.0,
            workers=1, progress=False,
        )  # fmt: skip
    assert set(calls) == {"metricdepth-network"} and len(calls) in (4, 5)  # one ahead
    assert len(records(tmp_path / "out")) == 3
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]
    assert "metricdepth-network" not in {t.name for t in threading.enumerate()}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_with_loader_workers_a_one_thread_network_runs_on_its_own_core(
    tmp_path, images, monkeypatch
):
    """Every forward pass runs on the network thread, on the first usable core (the calling
    thread and the loader and writer processes on the others), in input order, and the
    caller's affinity is as before afterwards."""

    import metricdepth.outputs as outputs

    cores = sorted(os.sched_getaffinity(0))
    seen, caller = [], []
    model = tiny_model()
    model.register_forward_hook(
        lambda module, args, out: seen.append(
            (threading.current_thread().name, sorted(os.sched_getaffinity(0)))
        )
    )
    real = outputs.network_input

    def network_input(*args):  # the calling thread normalises each canvas
        caller.append(sorted(os.sched_getaffinity(0)))
        return real(*args)

    monkeypatch.setattr(outputs, "network_input", network_input)
    monkeypatch.setattr(outputs, "usable_cores", lambda: 2)  # 2 workers + 1 thread on 2 cores
    summary = run_batch(
        model, collect_inputs([images]), tmp_path / "out", {"depth"}, focal=40.0,
        workers=1, progress=False,
    )  # fmt: skip
    assert summary.done == N_IMAGES
    assert seen == [("metricdepth-network", cores[:1])] * N_IMAGES
    assert caller == [cores[1:]] * N_IMAGES
    assert sorted(os.sched_getaffinity(0)) == cores
