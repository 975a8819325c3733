"""A process that turns network outputs into metric predictions and writes their files.

``run_batch`` hands it, per image, the network's raw outputs and the image's ``PreparedInput``
(``WriterProcess.submit``); the process runs ``outputs.to_prediction`` and
``outputs.write_prediction`` on a few threads of its own (with ``sync`` an fsync waits on the
disk, and concurrent fsyncs share a journal commit) and reports each image back
(``results``): its camera source, or the error that stopped it.

Why a process: on the threads of the network's own process, this work took the GIL from the
network between its operators and slowed a small model's forward pass by 15-25 % on 2 cores;
in a process of its own the network thread only pickles the outputs (``benchmarks/results/
batch_throughput.md``). The results are the same bytes: the same functions on the same inputs.

The process ignores SIGINT and SIGTERM (``run_batch`` stops after the images under way and
waits for their writes), and on Linux dies with its parent even under SIGKILL; a killed run
leaves temporary files at worst, which the next run removes.
"""

from __future__ import annotations

import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metricdepth.data.loader import (
    AHEAD_BYTES,
    WorkerDied,
    enlarge_pipe,
    forked,
    quiet_worker,
    start_context,
)

#: The network outputs that post-processing reads (``predictor.finish``); only these cross.
POST_KEYS = ("depth_c", "confidence", "normal")


@dataclass(frozen=True)
class WriteResult:
    """What the writer process reports for one image.

    Attributes:
        position: the number ``submit`` was given.
        outcome: ``"done"``, ``"bad"`` (a ValueError: the image, e.g. a camera that cannot be
            mapped back), ``"write"`` (a ``WriteError``: the output folder) or ``"crash"``.
        text: the camera source for ``"done"``, else the error message (a traceback for
            ``"crash"``).
    """

    position: int
    outcome: str
    text: str


class _ModelSpec:
    """What post-processing needs of the model: its spec (pickles without the weights)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


def _serve(
    model: Any, out_dir: Path, save: set[str], jobs: Any, results: Any, threads: int,
    parent_ends: tuple = (), cores: frozenset[int] | None = None, sync: bool = False,
):  # fmt: skip
    quiet_worker(cores)
    for end in parent_ends:  # inherited by fork: the parent's ends are not this process's
        end.close()
    from metricdepth.outputs import WriteError, _finish

    lock = threading.Lock()

    def report(position: int, future: Future) -> None:
        try:
            prediction, _ = future.result()
            result = WriteResult(position, "done", str(prediction.camera_source))
        except WriteError as error:
            result = WriteResult(position, "write", str(error))
        except ValueError as error:
            result = WriteResult(position, "bad", str(error))
        except Exception:  # noqa: BLE001 - a bug: reported with its traceback
            result = WriteResult(position, "crash", traceback.format_exc())
        with lock:
            try:
                results.send(result)
            except OSError:
                pass  # the parent is gone

    import torch

    with ThreadPoolExecutor(threads, thread_name_prefix="metricdepth-writer") as pool:
        while True:
            try:
                job = jobs.recv()
            except (EOFError, OSError):
                break
            if job is None:
                break
            position, sample, arrays, stem, about, forward_s = job
            out = {key: torch.from_numpy(value) for key, value in arrays.items()}
            future = pool.submit(
                _finish, model, sample, out, out_dir, stem, save, sync, about, forward_s
            )
            future.add_done_callback(lambda done, position=position: report(position, done))
    results.close()


class WriterProcess:
    """The process, its job pipe and its result pipe (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        out_dir: Path,
        save: set[str],
        threads: int = 4,
        start_method: str | None = None,
        cores: frozenset[int] | None = None,
        sync: bool = False,
    ) -> None:
        context = start_context(start_method)
        self._jobs_in, jobs_out = context.Pipe(duplex=False)
        results_in, results_out = context.Pipe(duplex=False)
        enlarge_pipe(jobs_out, AHEAD_BYTES * 4)
        self._jobs = jobs_out
        self.results = results_in
        self._process = context.Process(
            target=_serve,
            args=(_ModelSpec(model.spec), Path(out_dir), set(save), self._jobs_in, results_out,
                  threads, (jobs_out, results_in) if forked(context) else (), cores, sync),
            name="metricdepth-writer",
            daemon=True,
        )  # fmt: skip
        self._process.start()
        self._jobs_in.close()
        results_out.close()

    def submit(
        self, position: int, sample: Any, out: dict, stem: str, about: dict | None = None,
        forward_s: float = 0.0,
    ) -> None:  # fmt: skip
        """Queue one image: its ``PreparedInput`` and the network's outputs (moved to the CPU),
        what the record says made it (``about``) and its forward pass's duration in seconds."""
        arrays = {
            key: value.detach().cpu().numpy() for key, value in out.items() if key in POST_KEYS
        }
        light = replace(sample, canvas=None)  # the canvas is not needed after the forward
        try:
            self._jobs.send((position, light, arrays, stem, about, forward_s))
        except OSError as error:
            raise WorkerDied(self._ended("while receiving work")) from error

    def receive(self, block: bool) -> WriteResult | None:
        """The next result, waiting for it when ``block``; None when there is none yet."""
        if not block and not self.results.poll():
            return None
        try:
            return self.results.recv()
        except (EOFError, OSError):
            raise WorkerDied(self._ended("before reporting every image")) from None

    def close(self) -> list[WriteResult]:
        """Let the process finish its queued writes and end; the results not yet received."""
        if self._process is None:
            return []
        try:
            self._jobs.send(None)
        except OSError:
            pass
        self._jobs.close()
        left = []
        while True:  # read to the end: a full result pipe would block the process
            try:
                left.append(self.results.recv())
            except (EOFError, OSError):
                break
        self._process.join()
        self.results.close()
        self._process = None
        return left

    def _ended(self, when: str) -> str:
        process = self._process
        process.join(timeout=5)
        return (
            f"the writer process (pid {process.pid}) ended {when} "
            f"(exit code {process.exitcode}; killed, or out of memory?)"
        )
