"""Worker processes that prepare dataset items ahead of the consumer, handed over in order.

``prefetched(dataset, workers)`` yields ``dataset[0], dataset[1], ...`` while ``workers``
processes compute them: worker ``w`` computes items ``w, w + n, w + 2n, ...`` and sends each
one (pickled) down its own pipe; the consumer reads the pipes in turn, so the items come in
index order. A worker works ahead until its pipe holds about ``ahead_bytes`` (the pipe's
buffer is enlarged to that where the system allows), then waits for the consumer.

Why not ``torch.utils.data.DataLoader``: for one small item at a time its machinery (result
queue with a feeder thread, index queues, status polling) cost the consumer 0.45-0.8 ms of CPU
per item on the batch path, about a tenth of the default model's forward pass; a bare pipe per
worker costs it under 0.1 ms (``benchmarks/results/batch_throughput.md``).

Workers ignore SIGINT and SIGTERM (the consumer decides when to stop), run torch with one
thread, and on Linux die with the consumer's process even under SIGKILL. An exception raised
by ``dataset[k]`` (a bug: datasets report bad inputs in their items) stops the iteration with a
``RuntimeError`` holding the worker's traceback; a worker that dies (killed, out of memory)
stops it with a ``WorkerDied`` error naming its exit code.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: Signals that stop a batch run cleanly after the current image (``outputs.run_batch``);
#: workers ignore them and leave the stopping to the consumer.
STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
#: Bytes each worker may have in its pipe before it waits for the consumer.
AHEAD_BYTES = 1 << 18
_F_SETPIPE_SZ = 1031  # fcntl command (Linux)


class WorkerDied(RuntimeError):
    """A worker process ended before handing over its work (killed, out of memory, ...)."""


class _Crash:
    """What a worker sends instead of an item when computing it raised."""

    def __init__(self, index: int, text: str) -> None:
        self.index, self.text = index, text


def run_on(cores: frozenset[int] | None) -> None:
    """Run the calling thread (on Linux: only it) on ``cores``; None or empty: as it is."""
    if cores:
        try:
            os.sched_setaffinity(0, cores)
        except (OSError, AttributeError):
            pass  # cores no longer allowed, or no affinity here: run anywhere


def quiet_worker(cores: frozenset[int] | None = None) -> None:
    """In a worker: SIGINT/SIGTERM left to the consumer, one torch thread, die with the parent,
    and run on ``cores`` when given (``split_cores``)."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    run_on(cores)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    try:
        import torch

        torch.set_num_threads(1)  # no OpenMP pool in a forked child
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _work(
    dataset: Sequence[Any],
    first: int,
    step: int,
    connection: Any,
    parent_ends: tuple = (),
    cores: frozenset[int] | None = None,
) -> None:
    quiet_worker(cores)
    for end in parent_ends:  # inherited by fork: the consumer's ends, this one's included
        end.close()
    try:
        for index in range(first, len(dataset), step):
            try:
                item = dataset[index]
            except Exception:  # noqa: BLE001 - handed to the consumer, which raises it
                connection.send(_Crash(index, traceback.format_exc()))
                return
            connection.send(item)
    except (BrokenPipeError, EOFError, OSError):
        pass  # the consumer stopped reading: nothing left to do
    finally:
        connection.close()


def enlarge_pipe(connection: Any, size: int) -> None:
    """Let a pipe hold ``size`` bytes where the system allows (Linux), else leave it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import fcntl

        fcntl.fcntl(connection.fileno(), _F_SETPIPE_SZ, size)
    except (OSError, ImportError, ValueError):
        pass  # the system's maximum is lower: the default buffer still works


def split_cores(network_threads: int) -> tuple[frozenset[int], frozenset[int]] | None:
    """``(network core, worker cores)``: where a one-thread network and its worker processes
    run, apart; None where that does not apply (several network threads, one usable core, no
    CPU affinity on this system).

    Measured on 2 cores (``benchmarks/results/batch_throughput.md``): the batch path at
    0.85-0.88 of the forward-only throughput with the network thread on one core and the
    loader and writer processes on the other, 0.79-0.85 unpinned, interleaved.
    """
    if network_threads != 1 or not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    return frozenset(cores[:1]), frozenset(cores[1:])


def forked(context: Any) -> bool:
    """Whether ``context`` starts processes by fork (they inherit the parent's open pipes)."""
    return context.get_start_method() == "fork"


def start_context(method: str | None = None) -> Any:
    """The multiprocessing context for workers: ``method``, else fork where available, else
    spawn."""
    if method is not None:
        return multiprocessing.get_context(method)
    methods = multiprocessing.get_all_start_methods()
    # fork: no interpreter start-up and no pickling of the dataset; elsewhere the dataset is
    # pickled into freshly started interpreters
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def prefetched(
    dataset: Sequence[T],
    workers: int,
    ahead_bytes: int = AHEAD_BYTES,
    start_method: str | None = None,
    cores: frozenset[int] | None = None,
) -> Prefetched[T]:
    """``dataset[0], dataset[1], ...`` computed by ``workers`` processes (started at this call).

    Close the iterator (or exhaust it) to stop the workers; those still running are killed.
    ``start_method``: ``"fork"``, ``"spawn"``, ... (default: ``start_context``'s choice; with
    spawn the dataset is pickled to the workers). ``cores``: the CPUs the workers run on.
    """
    return Prefetched(dataset, workers, ahead_bytes, start_method, cores)


class Prefetched(Iterator[T]):
    """The iterator of ``prefetched``: items in index order; ``close()`` stops the workers."""

    def __init__(
        self,
        dataset: Sequence[T],
        workers: int,
        ahead_bytes: int = AHEAD_BYTES,
        start_method: str | None = None,
        cores: frozenset[int] | None = None,
    ) -> None:
        count = min(int(workers), len(dataset))
        if count < 1:
            raise ValueError(f"prefetched needs at least one worker and one item, got {workers}")
        self._total, self._next = len(dataset), 0
        self._readers: list[Any] = []
        self._processes: list[Any] = []
        context = start_context(start_method)
        try:
            for first in range(count):
                reader, writer = context.Pipe(duplex=False)
                enlarge_pipe(writer, ahead_bytes)
                self._readers.append(reader)
                inherited = tuple(self._readers) if forked(context) else ()
                process = context.Process(
                    target=_work,
                    args=(dataset, first, count, writer, inherited, cores),
                    name=f"metricdepth-loader-{first}",
                    daemon=True,
                )
                process.start()
                writer.close()  # the worker holds the only writing end: EOF when it dies
                self._processes.append(process)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [process.pid for process in self._processes]

    def __next__(self) -> T:
        if self._next >= self._total or not self._readers:
            self.close()
            raise StopIteration
        index = self._next
        worker = index % len(self._readers)
        try:
            item = self._readers[worker].recv()
        except EOFError:
            process = self._processes[worker]
            process.join(timeout=5)
            code = process.exitcode
            self.close()
            raise WorkerDied(
                f"loader worker {worker} (pid {process.pid}) ended before item {index} "
                f"(exit code {code}; killed, or out of memory?)"
            ) from None
        except BaseException:
            self.close()
            raise
        if isinstance(item, _Crash):
            self.close()
            raise RuntimeError(f"loader worker failed on item {item.index}:\n{item.text}")
        self._next += 1
        return item

    def close(self) -> None:
        """Stop the workers (idempotent): close the pipes, kill those still computing."""
        readers, processes = self._readers, self._processes
        self._readers, self._processes = [], []
        for reader in readers:
            reader.close()  # a worker blocked on its full pipe gets BrokenPipeError and ends
        for process in processes:
            process.join(timeout=0.2)
            if process.is_alive():  # still computing an item nobody will read
                process.kill()
                process.join()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to clean
            pass
