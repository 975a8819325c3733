"""The inputs of a batch run, decoded and prepared in ``torch.utils.data.DataLoader`` workers.

``PredictionInputs`` is a map-style dataset: item k is a ``Sample`` (image read with its EXIF
orientation, its camera, and ``prepare``'s network input), or the one-line problem of a file
that cannot be read, so one bad file never stops a worker. ``load`` yields the samples in
order from ``workers`` DataLoader processes (0: here). Workers run torch on one thread (as
DataLoader sets), ignore SIGINT and SIGTERM (the run decides when to stop), and end when the
process that started them is gone; a worker that dies (killed, out of memory) ends the run with
a ``WorkerDied`` error of one line.
"""

from __future__ import annotations

import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metricdepth.data.inputs import InputItem

#: Samples a loader worker hands over at once (each message costs the receiver ~0.5 ms of CPU).
CHUNK = 4
#: Signals that stop a batch run after the images under way; loader workers ignore them.
STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


class WorkerDied(RuntimeError):
    """A loader worker ended before handing over its work (killed, out of memory, ...)."""


def problem_line(path: Path | str, error: BaseException | str) -> str:
    """``"PATH: problem"`` on one line (the path is not repeated if the message names it)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if str(path) in text else f"{path}: {text}"


@dataclass(frozen=True)
class Sample:
    """One input as a loader worker hands it over.

    Attributes:
        index: position of the item in the dataset.
        prepared: the ``predictor.Prepared`` of ``prepare(image, camera, source)``; None when
            ``error``.
        image: the (H, W, 3) uint8 RGB when kept (``ply``/``vis`` outputs), else None.
        error: one line naming the file and the problem when it could not be prepared.
        pre_s: seconds spent reading and preparing it.
    """

    index: int
    prepared: Any = None
    image: Any = None
    error: str | None = None
    pre_s: float = 0.0


class PredictionInputs:
    """Map-style dataset: item k -> ``Sample`` of ``items[k]``.

    The pre-processing of ``predict``: the image read with its EXIF orientation; the camera
    from ``intrinsics``/``focal``, else the item's annotation, else the file's EXIF focal, else
    the default camera (``cameras.camera_for_image``); then ``prepare(image, camera, source)``
    (``predictor.prepare`` with the model's space and focal mode bound: no model here).
    """

    def __init__(
        self,
        items: Sequence[InputItem],
        prepare: Callable[[Any, Any, str], Any],
        *,
        intrinsics: Sequence[float] | None = None,
        focal: float | None = None,
        keep_image: bool = False,
    ) -> None:
        self.items, self.prepare = list(items), prepare
        self.intrinsics = None if intrinsics is None else tuple(float(v) for v in intrinsics)
        self.focal, self.keep_image = focal, keep_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        import cv2

        from metricdepth.cameras import camera_for_image
        from metricdepth.io import read_image

        item, started = self.items[index], time.perf_counter()
        try:
            rgb, _ = read_image(item.image)
            height, width = rgb.shape[:2]
            camera, source = camera_for_image(
                item.image, width, height, intrinsics=self.intrinsics, focal=self.focal,
                annotation=item.intrinsics,
            )  # fmt: skip
            prepared = self.prepare(rgb, camera, source)
        except (ValueError, cv2.error) as error:
            return Sample(index, error=problem_line(item.image, error))
        except MemoryError:
            return Sample(index, error=problem_line(item.image, "too large for memory"))
        kept = rgb if self.keep_image else None
        return Sample(index, prepared, kept, pre_s=time.perf_counter() - started)


def _as_list(samples: list[Sample]) -> list[Sample]:
    return samples


def _quiet_worker(worker_id: int) -> None:
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def load(dataset: PredictionInputs, workers: int) -> Iterator[Sample]:
    """``dataset[0], dataset[1], ...`` prepared by ``workers`` DataLoader processes (0: here),
    a few images ahead of the caller. Close the generator (or exhaust it) to stop them."""
    if workers == 0 or len(dataset) < 2:
        yield from (dataset[k] for k in range(len(dataset)))
        return
    from torch.utils.data import DataLoader

    with warnings.catch_warnings():  # more workers than cores is the user's call
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
        loader = DataLoader(  # a few samples per message: less of DataLoader's cost per image
            dataset, batch_size=CHUNK, num_workers=workers, collate_fn=_as_list,
            worker_init_fn=_quiet_worker, prefetch_factor=2,
        )  # fmt: skip
        iterator = iter(loader)
    try:
        for chunk in iterator:
            yield from chunk
    finally:  # DataLoader has no public close, and an error's traceback would keep the
        iterator._shutdown_workers()  # iterator and its workers alive


@contextmanager
def worker_deaths() -> Iterator[None]:
    """DataLoader's error for a worker that died (killed, out of memory) -> ``WorkerDied``."""
    try:
        yield
    except RuntimeError as error:
        text = " ".join(str(error).split())
        if not text.startswith("DataLoader worker"):
            raise
        raise WorkerDied(
            f"loader {text[len('DataLoader ') :].rstrip('.')} (killed, or out of memory?); "
            "the images written before it are complete: rerun with --resume"
        ) from None
