"""The loader of the batch path (``metricdepth.data.loader.load``: DataLoader workers)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from metricdepth.data.loader import CHUNK, WorkerDied, load, worker_deaths


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


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_items_come_in_order_from_the_workers(workers):
    items = list(load(Squares(11), workers))
    assert [(k, s) for k, s, _ in items] == [(k, k * k) for k in range(11)]
    pids = {pid for _, _, pid in items}
    if workers == 0:
        assert pids == {os.getpid()}  # computed here
    else:
        assert os.getpid() not in pids and len(pids) == workers


def test_an_exception_in_a_worker_is_raised_in_order_with_its_traceback():
    got = []
    with pytest.raises(ZeroDivisionError, match="no square for 5") as error:
        for item in load(Squares(8, trap=5), 2):
            got.append(item[0])
    assert got == list(range(5 // CHUNK * CHUNK))  # the chunks before item 5's, in order
    assert "in __getitem__" in str(error.value)  # the worker's traceback
    assert not multiprocessing.active_children()  # the workers ended with the error


def test_a_killed_worker_is_one_worker_died_line():
    got = []
    with pytest.raises(WorkerDied) as error, worker_deaths():
        for item in load(Squares(8, trap=3, how="kill"), 2):
            got.append(item[0])
            time.sleep(0.05)
    text = str(error.value)
    assert text.startswith("loader worker (pid") and "\n" not in text
    assert ("killed by signal" in text) or ("exited unexpectedly" in text)
    assert got == list(range(len(got))) and len(got) <= 3  # in order, none past it


def test_other_runtime_errors_pass_through_worker_deaths():
    with pytest.raises(RuntimeError, match="^something else$"), worker_deaths():
        raise RuntimeError("something else")


def test_closing_early_ends_the_workers_even_one_stuck_in_an_item():
    before = set(multiprocessing.active_children())
    stream = load(Squares(4000, trap=7, how="sleep"), 2)
    assert next(stream)[0] == 0
    workers = [p for p in multiprocessing.active_children() if p not in before]
    assert len(workers) == 2 and all(p.is_alive() for p in workers)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 30  # the sleeper (60 s) is not awaited
    assert not any(p.is_alive() for p in workers)


def test_workers_ignore_ctrl_c_and_leave_the_stopping_to_the_run():
    """SIGINT reaches a terminal's whole process group; the workers go on working."""
    stream = load(Squares(40), 2)
    first = next(stream)
    os.kill(first[2], signal.SIGINT)
    time.sleep(0.2)
    rest = list(stream)
    assert [item[0] for item in rest] == list(range(1, 40))
