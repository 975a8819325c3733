"""The loader worker processes (``metricdepth.data.loader.prefetched``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from metricdepth.data.loader import WorkerDied, prefetched, split_cores


class Squares:
    """Item k is ``(k, k * k, pid of the process that computed it)``; ``trap`` misbehaves."""

    def __init__(self, count: int, trap: int | None = None, how: str = "raise") -> None:
        self.count, self.trap, self.how = count, trap, how

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index == self.trap:
            if self.how == "raise":
                raise ZeroDivisionError(f"no square for {index}")
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "sleep":
                time.sleep(60)
        return index, index * index, os.getpid()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (without reaping it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("workers", [1, 3, 50])
def test_items_come_in_order_from_every_worker(workers):
    items = list(prefetched(Squares(11), workers))
    assert [(k, s) for k, s, _ in items] == [(k, k * k) for k in range(11)]
    pids = {pid for _, _, pid in items}
    assert os.getpid() not in pids  # computed in the workers
    assert len(pids) == min(workers, 11)
    for k, (_, _, pid) in enumerate(items):  # round robin: item k from worker k mod n
        assert pid == items[k % min(workers, 11)][2]


def test_spawned_workers_give_the_same_items():
    """Where fork is not the default (macOS, Windows) the dataset is pickled to spawned
    interpreters; the items and their order are the same."""
    items = list(prefetched(Squares(7), 2, start_method="spawn"))
    assert [(k, s) for k, s, _ in items] == [(k, k * k) for k in range(7)]
    assert len({pid for _, _, pid in items} - {os.getpid()}) == 2


def test_an_exception_in_a_worker_is_raised_with_its_traceback():
    stream = prefetched(Squares(8, trap=5), 2)
    got = []
    with pytest.raises(RuntimeError, match="failed on item 5") as error:
        for item in stream:
            got.append(item[0])
    assert got == [0, 1, 2, 3, 4]
    assert "ZeroDivisionError: no square for 5" in str(error.value)
    assert "in __getitem__" in str(error.value)  # the worker's traceback


def test_a_killed_worker_is_named_with_its_exit_code():
    stream = prefetched(Squares(8, trap=3, how="kill"), 2)
    got = []
    with pytest.raises(WorkerDied, match=r"worker 1 \(pid \d+\) ended before item 3") as error:
        for item in stream:
            got.append(item[0])
    assert got == [0, 1, 2]
    assert f"exit code {-signal.SIGKILL}" in str(error.value)


def test_closing_early_ends_the_workers_even_one_stuck_in_an_item():
    stream = prefetched(Squares(4000, trap=7, how="sleep"), 2, ahead_bytes=4096)
    assert next(stream)[0] == 0
    pids = stream.pids
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 10  # the sleeper (60 s) is killed, not awaited
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(StopIteration):
        next(stream)


def test_no_workers_is_refused():
    with pytest.raises(ValueError, match="at least one worker"):
        prefetched(Squares(3), 0)


def test_closing_early_lets_a_waiting_worker_end_on_its_own():
    """Worker 0, blocked on its full pipe, sees the pipe closed and exits 0 although worker
    1 (stuck in an item, killed) was forked after it: no worker holds another's pipe."""
    stream = prefetched(Squares(400, trap=1, how="sleep"), 2, ahead_bytes=4096)
    assert next(stream)[0] == 0
    time.sleep(0.5)  # worker 0 fills its pipe and waits
    processes = list(stream._processes)
    stream.close()
    assert [process.exitcode for process in processes] == [0, -signal.SIGKILL]


class Affinity:
    """Item k is the set of CPUs the process computing it may run on."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        return sorted(os.sched_getaffinity(0))


def test_split_cores_gives_a_one_thread_network_a_core_of_its_own():
    cores = sorted(os.sched_getaffinity(0))
    assert split_cores(2) is None and split_cores(4) is None  # several network threads
    split = split_cores(1)
    if len(cores) < 2:
        assert split is None
        return
    network, workers = split
    assert network == frozenset(cores[:1]) and workers == frozenset(cores[1:])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_workers_run_on_the_cores_they_are_given():
    cores = sorted(os.sched_getaffinity(0))
    assert list(prefetched(Affinity(), 2, cores=frozenset(cores[1:]))) == [cores[1:]] * 4
    assert list(prefetched(Affinity(), 2)) == [cores] * 4
