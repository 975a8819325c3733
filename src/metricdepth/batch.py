"""The local batch runner of ``metricdepth predict``: many images in, files and records out.

Three stages on standard parts: ``prepare`` (decode, camera, canonical network input) in
``torch.utils.data.DataLoader`` workers (``data.loader``; ``workers=0``: in this process), the
forward pass here, one image per pass (an image's output never depends on which images ran with
it, so a resumed or sharded run writes what one uninterrupted run writes), and ``finish`` (the
metric post-processing) with the writes of each image on a small thread pool (futures), a few
images behind the network. The network's torch threads are lowered so that they and the
loader workers fit the cores (``network_threads``).

* ``resume`` skips images whose record lists every requested kind and whose files have the
  sizes it lists (``files.is_finished``); temporaries a killed run left are removed first;
* ``shard=(i, n)`` keeps items ``i, i + n, ...`` so that n processes or machines split one
  input list without overlap;
* ``keep_going`` reports a bad image in one ``failed: PATH: problem`` line and goes on;
* SIGINT (Ctrl-C) or SIGTERM (a job scheduler's stop) ends the run after the images under way
  and returns the summary (a second Ctrl-C interrupts at once); files appear per image as a
  group (``files.write_prediction``), so a killed run leaves no half-written image.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metricdepth.cameras import check_one_camera, image_camera_mismatch
from metricdepth.data.inputs import InputItem, check_shard, shard_items
from metricdepth.data.loader import (
    STOP_SIGNALS,
    PredictionInputs,
    load,
    problem_line,
    worker_deaths,
)
from metricdepth.distortion import Distortion
from metricdepth.files import (
    WriteError,
    check_save,
    is_finished,
    remove_stale_temporaries,
    write_prediction,
)
from metricdepth.prediction import Prediction
from metricdepth.predictor import Predictor, collate, prepare, split

#: Writer threads without and with fsync: without, the work only uses the CPU and a second
#: thread only adds GIL hand-offs with the network; with fsync each file waits on the disk and
#: concurrent fsyncs share a journal commit.
WRITER_THREADS = {False: 1, True: 2}
#: Images whose finish and writes may still be under way while the network runs (a stop
#: signal waits for them: they are already predicted).
MAX_WRITES_AHEAD = 4


@dataclass
class BatchSummary:
    """What a batch run did.

    Attributes:
        total: items in this run (this shard's share of the input list).
        done: images predicted and written in this run.
        skipped: images skipped as already finished (``resume``).
        failed: one line per bad image (``keep_going``): ``"PATH: problem"``.
        default_camera: images predicted with the default camera (no intrinsics anywhere).
        camera_mismatch: images whose camera does not fit a model trained on one assumed
            camera (``cameras.image_camera_mismatch``); ``mismatch_example``: the first's line.
        interrupted: stopped early by SIGINT or SIGTERM; ``resume`` finishes the rest.
        elapsed_s: wall time of the run in seconds (start-up of the workers included).
        shard: ``(i, n)`` when the run was one shard of n.
    """

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    default_camera: int = 0
    camera_mismatch: int = 0
    mismatch_example: str | None = None
    interrupted: bool = False
    elapsed_s: float = 0.0
    shard: tuple[int, int] | None = None

    @property
    def images_per_s(self) -> float:
        """Images predicted and written per second of ``elapsed_s``."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def remaining(self) -> int:
        """Items neither written, skipped nor failed (left by an interruption)."""
        return self.total - self.done - self.skipped - len(self.failed)

    def line(self) -> str:
        """One line, e.g. ``12 done, 3 skipped as finished, 1 failed of 16 image(s); ...``."""
        scope = f"of {self.total} image(s)"
        if self.shard is not None:
            scope += f" in shard {self.shard[0]}/{self.shard[1]}"
        text = (
            f"{self.done} done, {self.skipped} skipped as finished, {len(self.failed)} failed "
            f"{scope}; {self.elapsed_s:.1f} s, {self.images_per_s:.2f} images/s"
        )
        if self.interrupted:
            text = f"interrupted: {text}; {self.remaining} left (rerun with --resume)"
        return text


def run_batch(
    model,
    items: Sequence[InputItem],
    out_dir: Path,
    save: set[str],
    *,
    intrinsics: Sequence[float] | None = None,
    focal: float | None = None,
    focal_mode: str | None = None,
    workers: int = 0,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    keep_going: bool = False,
    progress: bool = True,
    on_done: Callable[[InputItem, Prediction, dict[str, Path]], None] | None = None,
    distortion: Distortion | None = None,
    alpha: float | None = None,
    fsync: bool = False,
) -> BatchSummary:
    """Predict every item and write its files (see the module docstring); returns a summary.

    Args:
        model: a loaded ``DepthModel`` (or ``runtime.OnnxModel``).
        items: from ``collect_inputs``; each is written under ``out_dir / item.stem``.
        save: kinds of ``files.SAVE_KINDS`` (``depth`` and the record are always written).
        intrinsics / focal: one camera for every image (else each item's annotation, else its
            EXIF focal, else the default camera); ``focal_mode``: ``mean`` or ``fx``.
        workers: DataLoader processes preparing images while the model runs (0: here).
        resume / shard / keep_going: see the module docstring. Without ``keep_going`` the
            first bad image raises ValueError; an output that cannot be written raises
            ``files.WriteError`` (a ValueError) either way.
        progress: a progress bar with images/s and ETA on stderr (terminals only).
        on_done: called as ``on_done(item, prediction, written_paths)`` after each image.
        distortion / alpha: one lens for every image, predicted on the undistorted image and
            written on the original pixel grid.
        fsync: fsync every data file before its image's record appears (survives power loss).
    """
    started = time.perf_counter()
    out_dir, save = Path(out_dir), check_save(save)
    mode = _check_arguments(model, workers, intrinsics, focal, focal_mode)
    items = list(items)
    if shard is not None:
        shard = check_shard(shard)
        items = shard_items(items, *shard)
    summary = BatchSummary(total=len(items), shard=shard)
    remove_stale_temporaries(out_dir, (item.stem for item in items))
    pending = [item for item in items if not (resume and is_finished(out_dir, item.stem, save))]
    summary.skipped = len(items) - len(pending)
    from metricdepth.models.registry import provenance

    made_by = provenance(model)  # hashes the weights file once, here
    predictor = Predictor(model, mode)
    dataset = PredictionInputs(
        pending, _stage_one(predictor, distortion, alpha), intrinsics=intrinsics, focal=focal,
        keep_image=bool(save & {"ply", "vis"}),
    )  # fmt: skip

    def finish(item: InputItem, sample, out: dict, forward_s: float):
        prediction = predictor.finish(out, sample.prepared, forward_s)
        about = {**made_by, "input": str(item.image)}
        written = write_prediction(
            prediction, sample.image, out_dir, item.stem, save, sync=fsync, about=about
        )
        return prediction, written

    def fail(message: str) -> None:
        if not keep_going:  # in a run of several images, say how to go past a bad one
            raise ValueError(message + ("" if len(items) < 2 else " (--keep-going skips it)"))
        summary.failed.append(message)
        report(f"failed: {message}")

    def settle(item: InputItem, future: Future) -> None:
        try:
            prediction, written = future.result()
        except WriteError:
            raise  # the output folder is the problem, not this image: stop the run
        except ValueError as error:
            fail(problem_line(item.image, error))
        else:
            summary.done += 1
            summary.default_camera += prediction.camera_source == "default"
            if message := image_camera_mismatch(model.spec, prediction.camera, mode):
                summary.camera_mismatch += 1
                summary.mismatch_example = summary.mismatch_example or message
            if on_done is not None:
                on_done(item, prediction, written)
        advance()

    with (
        _stop_on_signals() as stop,
        worker_deaths(),
        _torch_threads(network_threads(workers)),
        ThreadPoolExecutor(WRITER_THREADS[fsync], thread_name_prefix="metricdepth-writer") as pool,
        _progress(progress, len(pending)) as (advance, report),
        closing(load(dataset, workers)) as samples,
    ):
        writes: deque[tuple[InputItem, Future]] = deque()
        for sample in samples:
            item = pending[sample.index]
            if sample.error is not None:
                fail(sample.error)
                advance()
            else:
                begun = time.perf_counter()
                out = _forward_one(predictor, sample.prepared)
                forward_s = time.perf_counter() - begun
                writes.append((item, pool.submit(finish, item, sample, out, forward_s)))
            while writes and (len(writes) > MAX_WRITES_AHEAD or writes[0][1].done()):
                settle(*writes.popleft())
            if stop.is_set():
                break
        while writes:
            settle(*writes.popleft())
    summary.interrupted = stop.is_set() and summary.remaining > 0
    summary.elapsed_s = time.perf_counter() - started
    return summary


def iter_predictions(
    model,
    items: Sequence[InputItem],
    *,
    intrinsics: Sequence[float] | None = None,
    focal: float | None = None,
    focal_mode: str | None = None,
    workers: int = 0,
    keep_images: bool = False,
    distortion: Distortion | None = None,
    alpha: float | None = None,
) -> Iterator[tuple[InputItem, Prediction | str, np.ndarray | None]]:
    """Predict ``items`` in order, without writing: yields ``(item, prediction, image)``.

    The stages of ``run_batch`` (the same numbers), all but the preparation in this thread. A
    bad image yields its error line (``"PATH: problem"``) in place of the prediction;
    ``image`` is the RGB when ``keep_images``, else None.
    """
    mode = _check_arguments(model, workers, intrinsics, focal, focal_mode)
    predictor = Predictor(model, mode)
    dataset = PredictionInputs(
        items, _stage_one(predictor, distortion, alpha), intrinsics=intrinsics, focal=focal,
        keep_image=keep_images,
    )  # fmt: skip
    with worker_deaths(), closing(load(dataset, workers)) as samples:
        for sample in samples:
            item = dataset.items[sample.index]
            if sample.error is not None:
                yield item, sample.error, None
            else:
                begun = time.perf_counter()
                out = _forward_one(predictor, sample.prepared)
                forward_s = time.perf_counter() - begun
                yield item, predictor.finish(out, sample.prepared, forward_s), sample.image


def predict_to_files(
    model,
    items: Sequence[InputItem],
    out_dir: Path,
    save: set[str],
    *,
    intrinsics: Sequence[float] | None = None,
    focal: float | None = None,
    focal_mode: str | None = None,
    on_done: Callable[[InputItem, Prediction], None] | None = None,
    fsync: bool = False,
) -> list[dict[str, Path]]:
    """``run_batch`` in this process without a bar; returns kind -> path per image.

    ``on_done(item, prediction)`` is called after each image; ``fsync``: as ``run_batch``'s.
    """
    results: list[dict[str, Path]] = []

    def done(item: InputItem, prediction: Prediction, written: dict[str, Path]) -> None:
        results.append(written)
        if on_done is not None:
            on_done(item, prediction)

    run_batch(
        model, items, out_dir, save, intrinsics=intrinsics, focal=focal, focal_mode=focal_mode,
        progress=False, fsync=fsync, on_done=done,
    )  # fmt: skip
    return results


# ------------------------------------------------------------------ helpers
def _stage_one(predictor: Predictor, distortion, alpha) -> Callable:
    """``prepare(image, camera, source) -> Prepared`` of ``predictor`` without its model (the
    module-level ``predictor.prepare`` with the space and focal mode bound; cheap to pickle
    into loader workers)."""
    return partial(
        prepare, predictor.space, predictor.focal_mode,
        takes=predictor.backend.takes, distortion=distortion, alpha=alpha,
    )  # fmt: skip


def _forward_one(predictor: Predictor, prepared) -> dict:
    """``Predictor.forward`` of one image (a batch of one) -> its outputs (``split``)."""
    return split(predictor.forward(collate([prepared])))[0]


def _check_arguments(model, workers, intrinsics, focal, focal_mode) -> str:
    """The focal mode to use, or a ValueError for a bad argument of the batch functions."""
    from metricdepth.camera import check_focal_mode

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0, got {workers!r}")
    check_one_camera(intrinsics, focal)
    return check_focal_mode(focal_mode or model.spec.focal_mode)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def network_threads(workers: int) -> int:
    """Torch threads for the network while ``workers`` loader processes run: the current
    count, lowered so that threads and workers together fit ``usable_cores()`` (at least 1);
    more would oversubscribe the cores (torch's threads spin while they wait for each other)."""
    current = torch.get_num_threads()
    if workers <= 0:
        return current
    return max(1, min(current, usable_cores() - workers))


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGINT or SIGTERM; a second one acts as usual (Ctrl-C:
    KeyboardInterrupt). Handlers can only be set from the main thread; elsewhere the event is
    never set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        usual = previous[signum]
        if usual is None or usual == signal.SIG_IGN:
            usual = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        signal.signal(signum, usual)

    for number in STOP_SIGNALS:
        signal.signal(number, handler)
    try:
        yield stop
    finally:
        for number, old in previous.items():
            signal.signal(number, old if old is not None else signal.SIG_DFL)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[tuple[Callable, Callable]]:
    """``(advance, report)``: a rich bar on stderr (terminals only) and a one-line reporter."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-.-- images/s" if speed is None else f"{speed:.2f} images/s")

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )  # fmt: skip
    bar = Progress(*columns, console=console, disable=not (enabled and console.is_terminal))
    with bar:
        task = bar.add_task("predicting", total=total)

        def report(line: str) -> None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

        yield (lambda: bar.advance(task)), report
