"""Files written for a prediction, and the batch runner that writes them for many images.

Per image ``S`` (its output stem): ``S.depth.npy`` and the record ``S.json`` always, and on
request PNG16, normals, confidence, PLY and a picture (``SAVE_KINDS``).

Every file is written atomically (temporary name, then rename), so an interrupted run never
leaves a half-written file under a final name. An image's files are renamed together once all
are written (``io.atomic_group``), its old record deleted first and the new record ``S.json``
renamed last: its presence means every requested file of that image is complete, and it is what
``resume`` checks. A file that cannot be written (``WriteError``) changes none of its image's
files and stops the run, ``keep_going`` or not.

``run_batch`` is the engine of ``metricdepth predict``:

* ``workers`` loader processes (``data.loader.prefetched``) decode images and build the
  canonical network input while the model runs (``workers=0``: in the calling process), the
  network's torch threads lowered so that threads and workers fit the cores
  (``network_threads``); the metric post-processing and the writes (with ``fsync``, each
  file waits on the disk) run while the network does the next images: in a writer process
  (``writer.WriterProcess``) when there are loader workers and no ``on_done`` (which needs
  each ``Prediction`` here), else on writer threads of this process; a one-thread network
  then runs on a thread and a core of its own, one image ahead of the thread that feeds it,
  the loader and writer processes on the other cores (``data.loader.split_cores``);
* one image per forward pass, so an image's output never depends on which other images ran
  with it: a resumed or sharded run writes the same bytes as one uninterrupted run, but for the
  wall-clock timings in each record (``timings_ms``: pre-processing, forward pass and
  post-processing of that image); a network
  whose forward is short is traced after the first image (``traced_network``), kept only if
  it gives that image's outputs to the bit;
* ``resume`` skips images whose record exists, lists every requested kind and whose files
  have the sizes it lists (``is_finished``); temporary files left by a killed run of the same
  images are removed;
* ``shard=(i, n)`` keeps items ``i, i + n, i + 2n, ...`` (0-based, round robin over the input
  order) so that n processes or machines split one input list without overlap;
* ``keep_going`` reports a bad image in one line and goes on; SIGINT (Ctrl-C) or SIGTERM (a
  job scheduler's stop) ends the run after the images under way and returns the summary (a
  second Ctrl-C interrupts at once; a forward under way on the network thread ends on its
  own); loader workers and the writer process die with the run
  even under SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from metricdepth.camera import Camera
from metricdepth.canonical import CanonicalRecord, CanonicalSpace
from metricdepth.data.inputs import InputItem, check_shard, shard_items
from metricdepth.data.loader import STOP_SIGNALS, prefetched, split_cores
from metricdepth.distortion import Distortion
from metricdepth.io import (
    atomic_file,
    atomic_group,
    atomic_write,
    pending_size,
    write_depth,
    write_ply,
)
from metricdepth.prediction import Prediction, timings_ms
from metricdepth.predictor import Prepared
from metricdepth.vis import visualization

#: What ``--save`` accepts; ``depth`` (S.depth.npy) and the record (S.json) are always written.
SAVE_KINDS = ("depth", "png16", "normal", "confidence", "ply", "vis")


def parse_save(text: str) -> set[str]:
    """``"depth,ply,vis"`` -> a set of kinds, or a ValueError naming the unknown ones."""
    kinds = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(kinds - set(SAVE_KINDS))
    if unknown:
        raise ValueError(
            f"--save: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(SAVE_KINDS)}"
        )
    return kinds | {"depth"}


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", rgb[:, :, ::-1])
    if not ok:
        raise ValueError(f"could not encode {path}")
    with atomic_write(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.save(handle, array)


def output_paths(out_dir: Path, stem: str, save: set[str]) -> dict[str, Path]:
    """Where each requested file of image ``stem`` goes (``record`` is ``S.json``)."""
    base = Path(out_dir) / stem
    names = {
        "depth": ".depth.npy",
        "png16": ".depth.png",
        "normal": ".normal.npy",
        "confidence": ".confidence.npy",
        "ply": ".ply",
        "vis": ".vis.png",
    }
    paths = {kind: base.with_name(base.name + names[kind]) for kind in save}
    paths["record"] = base.with_name(base.name + ".json")
    return paths


class WriteError(ValueError):
    """An output could not be written (folder not writable, disk full, ...): one line naming it.

    Unlike a bad input, it stops a batch run even with ``keep_going``: the next image would
    fail the same way.
    """


def write_prediction(
    prediction: Prediction,
    image: np.ndarray | None,
    out_dir: Path,
    stem: str,
    save: set[str],
    *,
    sync: bool = False,
    about: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the requested files of one prediction, the record last; returns kind -> path.

    ``image`` (the RGB the prediction was made from) is needed only for ``ply`` and ``vis``.
    The record holds ``files`` (what was written), ``bytes`` (their sizes, which
    ``is_finished`` checks) and ``save`` (what was requested; a model without normals or
    confidence writes no such file) and, from ``about`` (``models.registry.provenance`` plus
    ``input``, the input path as given), what made it: the metricdepth version, the model, the
    SHA-256 of its weights, its intended use and ``warnings`` (also drawn on ``vis``; plus the
    prediction's ``camera_warning`` when its camera was assumed); the
    prediction's ``timings_ms`` (``pre``, ``forward``, ``post``; left out when it has none).
    The files appear
    together (``io.atomic_group``): if any cannot be written, none of this image's files
    changes and a ``WriteError`` names the image and the problem. ``sync``: fsync each data
    file before the renames (it then survives a power loss; without it a power loss can leave
    a file short or empty, which ``is_finished`` tells from its size).
    """
    paths = output_paths(out_dir, stem, save)
    if image is None and save & {"ply", "vis"}:
        raise ValueError(f"{stem}: saving ply or vis needs the image")
    try:
        with atomic_group(sync=sync):
            return _write_files(prediction, image, paths, save, about or {})
    except OSError as error:
        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        where = f" ({error.filename})" if error.filename else ""
        raise WriteError(
            f"{Path(out_dir) / stem}: cannot write the outputs: {reason}{where}"
        ) from None


def _write_files(
    prediction: Prediction,
    image: np.ndarray | None,
    paths: dict[str, Path],
    save: set[str],
    about: dict[str, Any],
) -> dict[str, Path]:
    _write_npy(paths["depth"], prediction.depth_m.astype(np.float32))
    written = {"depth": paths["depth"]}
    if "png16" in save:
        write_depth(paths["png16"], prediction.depth_m, depth_scale=1000.0)
        written["png16"] = paths["png16"]
    if "normal" in save and prediction.normal is not None:
        _write_npy(paths["normal"], prediction.normal.astype(np.float32))
        written["normal"] = paths["normal"]
    if "confidence" in save and prediction.confidence is not None:
        _write_npy(paths["confidence"], prediction.confidence.astype(np.float32))
        written["confidence"] = paths["confidence"]
    if "ply" in save:
        valid = prediction.depth_m > 0
        write_ply(paths["ply"], prediction.points(), image, prediction.normal, mask=valid)
        written["ply"] = paths["ply"]
    warnings = list(about.get("warnings", ()))
    if prediction.camera_warning is not None:
        warnings.append(prediction.camera_warning)
    if "vis" in save:
        picture = visualization(image, prediction.depth_m, warnings)
        _write_png(paths["vis"], picture)
        written["vis"] = paths["vis"]
    from metricdepth import __version__

    record = {"metricdepth_version": __version__, **about, **prediction.summary()}
    record["warnings"] = warnings
    if not record["timings_ms"]:
        del record["timings_ms"]
    record["files"] = {kind: path.name for kind, path in written.items()}
    record["bytes"] = {kind: pending_size(path) for kind, path in written.items()}
    record["save"] = sorted(save | {"depth"})
    record["depth_png_scale"] = 1000.0 if "png16" in written else None
    # Never fsync'ed: after a power loss the record is missing or unreadable, or it lists
    # files whose sizes do not match, and resume redoes the image.
    with atomic_file(paths["record"], sync=False) as handle:
        handle.write((json.dumps(record, indent=2) + "\n").encode("utf-8"))
    written["record"] = paths["record"]
    return written


def camera_for_item(
    item: InputItem,
    width: int,
    height: int,
    intrinsics: Sequence[float] | None = None,
    focal: float | None = None,
) -> tuple[Camera, str]:
    """The camera of one decoded input and its source: ``cameras.camera_for_image`` (the run's
    camera, else the item's annotation, else the file's EXIF focal, else the default)."""
    from metricdepth.cameras import camera_for_image

    return camera_for_image(
        item.image, width, height, intrinsics=intrinsics, focal=focal, annotation=item.intrinsics
    )


# ------------------------------------------------------------------ loading in worker processes
def problem_line(path: Path | str, error: BaseException | str) -> str:
    """``"PATH: problem"`` on one line (the path is not repeated if the message names it)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if str(path) in text else f"{path}: {text}"


@dataclass(frozen=True)
class PreparedInput:
    """One decoded image on the network canvas: what a loader worker hands to the model.

    Attributes:
        index: position of the item in the list given to ``PredictionInputs``.
        canvas: (H_in, W_in, 3) uint8 RGB network canvas (resized and padded, not yet
            normalised: it crosses from a worker process as plain bytes, a quarter of the
            float32 input; ``run_network`` normalises it); None when ``error``.
        camera: camera of the image as displayed.
        source: where the camera came from (``given``, ``annotation``, ``exif``, ``default``).
        record: the canonical record (resize, padding, f_eff).
        image: the (H, W, 3) uint8 RGB when kept (``ply``/``vis`` outputs), else None.
        error: one line naming the file and the problem when the image could not be prepared.
        distortion, alpha: the lens of ``camera`` (the network input is the undistorted
            pinhole image; ``to_prediction`` maps the outputs back), or None.
        pre_s: seconds spent preparing it (decoding, camera, canonical canvas).
    """

    index: int
    canvas: np.ndarray | None = None
    camera: Camera | None = None
    source: str | None = None
    record: CanonicalRecord | None = None
    image: np.ndarray | None = None
    error: str | None = None
    distortion: Distortion | None = None
    alpha: float | None = None
    pre_s: float = 0.0


class PredictionInputs:
    """Map-style dataset: item k -> ``PreparedInput`` (decode, camera, canonical input).

    Exactly the pre-processing of ``predict``: the image read with its EXIF orientation, the
    camera from ``intrinsics``/``focal``, else the item's annotation, else the file's EXIF focal,
    else the default camera (``cameras.camera_for_image``), then the model's
    ``inference_record``, ``to_canonical`` and ``normalize``. A bad image gives
    a ``PreparedInput`` with ``error`` set instead of raising, so one file cannot stop a worker.
    """

    def __init__(
        self,
        items: Sequence[InputItem],
        space: CanonicalSpace,
        focal_mode: str,
        *,
        intrinsics: Sequence[float] | None = None,
        focal: float | None = None,
        keep_image: bool = False,
        distortion: Distortion | None = None,
        alpha: float | None = None,
    ) -> None:
        self.items = list(items)
        self.distortion, self.alpha = distortion, alpha
        self.space = space
        self.focal_mode = focal_mode
        self.intrinsics = None if intrinsics is None else tuple(float(v) for v in intrinsics)
        self.focal = focal
        self.keep_image = keep_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PreparedInput:
        from metricdepth.io import read_image
        from metricdepth.predictor import prepare_canvas

        item = self.items[index]
        started = time.perf_counter()
        try:
            rgb, _ = read_image(item.image)
            height, width = rgb.shape[:2]
            camera, source = camera_for_item(item, width, height, self.intrinsics, self.focal)
            canvas, record, _ = prepare_canvas(
                self.space, self.focal_mode, rgb, camera, self.distortion, self.alpha
            )
        except (ValueError, cv2.error) as error:
            return PreparedInput(index, error=problem_line(item.image, error))
        except MemoryError:
            return PreparedInput(index, error=problem_line(item.image, "too large for memory"))
        kept = rgb if self.keep_image else None
        return PreparedInput(
            index,
            canvas,
            camera,
            source,
            record,
            kept,
            distortion=self.distortion,
            alpha=self.alpha,
            pre_s=time.perf_counter() - started,
        )


def network_input(model, sample: PreparedInput) -> torch.Tensor:
    """The normalised canvas (1, 3, H_in, W_in) on the model's device (a bad one: ValueError)."""
    from metricdepth.canonical import normalize

    if sample.error is not None or sample.canvas is None:
        raise ValueError(sample.error or "no input")
    return normalize(sample.canvas, model.spec.space).to(model.device)


def run_network(model, sample: PreparedInput, network=None) -> dict[str, torch.Tensor]:
    """The network's raw outputs for one ``PreparedInput`` (a bad one is a ValueError).

    ``network`` (default ``model``) is what runs on the normalised canvas, e.g. the trace of
    ``traced_network``.
    """
    x = network_input(model, sample)
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        return (model if network is None else network)(x)


#: A forward pass shorter than this is traced for the rest of a batch run (``traced_network``).
TRACE_BELOW_S = 0.1
#: ... when at least this many images are left.
TRACE_MIN_IMAGES = 16


def traced_network(model, sample: PreparedInput, expected: dict[str, torch.Tensor]):
    """A TorchScript trace of ``model`` for ``sample``'s canvas size, or None.

    For a small network the Python side of a forward pass (module calls, and on a busy
    machine waiting for the GIL after each of its ~100 operators) is a large part of it; the
    trace runs the same operators from C++ (graph optimisations off), which made the default
    model's forward 10-20 % faster and halved the batch run's context switches. It is used only
    if its outputs on ``sample`` equal ``expected`` (the model's own) to the bit, so the
    written files do not change; any failure to trace returns None (the model is used).
    """
    import warnings

    x = network_input(model, sample)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, x, strict=False, check_trace=False)
        got = run_network(model, sample, traced)
    except Exception:  # noqa: BLE001 - anything a trace can raise: keep the model
        return None
    if not isinstance(got, dict) or set(got) != set(expected):
        return None
    if not all(torch.equal(got[key], expected[key]) for key in expected):
        return None
    return traced


def can_trace(model, remaining: int) -> bool:
    """Trace only a plain float32 torch model on a fixed canvas (``fit``) with images to go."""
    from metricdepth.models.registry import DepthModel

    if not isinstance(model, DepthModel) or getattr(model, "precision", "fp32") != "fp32":
        return False
    return model.spec.space.resize == "fit" and remaining >= TRACE_MIN_IMAGES


def as_prepared(model, sample: PreparedInput) -> Prepared:
    """A ``predictor.Prepared`` of one ``PreparedInput`` for ``model``'s inputs (a bad one is a
    ValueError): the normalised canvas, or the image and camera for a whole-prediction graph
    (``sample.image`` must then be kept)."""
    from metricdepth.canonical import normalize
    from metricdepth.distortion import pinhole_view
    from metricdepth.predictor import prepare

    if sample.error is not None or sample.canvas is None:
        raise ValueError(sample.error or "no input")
    if "image" in model.takes:
        if sample.image is None:
            raise ValueError("this backend needs the decoded image")
        prepared = prepare(
            model.spec.space, sample.record.focal_mode, sample.image, sample.camera,
            sample.source, takes=model.takes,
        )  # fmt: skip
        return replace(prepared, pre_s=prepared.pre_s + sample.pre_s)
    lens = None
    if sample.distortion is not None:  # cached: computed once per camera and lens
        lens = pinhole_view(sample.camera, sample.distortion, sample.alpha)
    x = normalize(sample.canvas, model.spec.space)[0]
    return Prepared({"x": x}, sample.record, sample.camera, sample.source, lens, sample.pre_s)


def to_prediction(model, sample: PreparedInput, out: dict[str, torch.Tensor]) -> Prediction:
    """Network outputs (a batch of one) -> metric ``Prediction`` at the image's size
    (``predictor.finish``, ``predict``'s own step)."""
    from metricdepth.distortion import pinhole_view
    from metricdepth.predictor import finish

    lens = None
    if sample.distortion is not None:  # cached: computed once per camera and lens
        lens = pinhole_view(sample.camera, sample.distortion, sample.alpha)
    prepared = Prepared({}, sample.record, sample.camera, sample.source, lens, sample.pre_s)
    return finish(model.spec, {key: value[0] for key, value in out.items()}, prepared)


def predict_prepared(model, sample: PreparedInput) -> Prediction:
    """Run the network on one ``PreparedInput`` and return the metric ``Prediction``
    (the ``Predictor``'s forward and finish)."""
    from metricdepth.predictor import Predictor

    predictor = Predictor(model, sample.record.focal_mode if sample.record else None)
    return predictor.predict_prepared([as_prepared(model, sample)])[0]


def _check_arguments(model, workers, intrinsics, focal, focal_mode) -> str:
    """The focal mode to use, or a ValueError for a bad argument of the batch functions."""
    from metricdepth.camera import check_focal_mode
    from metricdepth.cameras import check_one_camera

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0, got {workers!r}")
    check_one_camera(intrinsics, focal)
    return check_focal_mode(focal_mode or model.spec.focal_mode)


def prepared_inputs(
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
    cores: frozenset[int] | None = None,
) -> Iterator[tuple[InputItem, PreparedInput]]:
    """``(item, PreparedInput)`` in input order, decoded by ``workers`` loader processes.

    With ``workers > 0`` the processes (``data.loader.prefetched``) start at this call and
    work ahead (a few images each, so a worker delayed by a busy machine does not stall the
    network at once) while the caller runs the model; with 0 each image is prepared here when
    asked for. Close the generator (or exhaust it) to stop the workers. ``cores``: the CPUs
    the workers run on (default: those of this process).
    """
    mode = _check_arguments(model, workers, intrinsics, focal, focal_mode)
    dataset = PredictionInputs(
        items, model.spec.space, mode, intrinsics=intrinsics, focal=focal,
        keep_image=keep_images, distortion=distortion, alpha=alpha,
    )  # fmt: skip
    if workers == 0 or len(dataset) < 2:
        stream: Iterator[PreparedInput] = (dataset[k] for k in range(len(dataset)))
    else:  # the workers start here, not at the first next()
        stream = prefetched(dataset, workers, cores=cores)
    return _in_order(dataset, stream)


def _in_order(
    dataset: PredictionInputs, stream: Iterator[PreparedInput]
) -> Iterator[tuple[InputItem, PreparedInput]]:
    try:
        for sample in stream:
            yield dataset.items[sample.index], sample
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


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
    """Predict ``items`` in order: yields ``(item, prediction, image)``.

    The same steps as ``run_batch`` (and so the same numbers, to the bit), without writing:
    images are decoded and moved into canonical space by ``workers`` loader processes (0: here)
    while the model runs, one image per forward pass. A bad image yields its error line
    (``"PATH: problem"``) in place of the prediction. ``image`` is the RGB when
    ``keep_images``, else None.
    """
    samples = prepared_inputs(
        model,
        items,
        intrinsics=intrinsics,
        focal=focal,
        focal_mode=focal_mode,
        workers=workers,
        keep_images=keep_images or "image" in model.takes,
        distortion=distortion,
        alpha=alpha,
    )
    return _predict_all(model, samples)


def _predict_all(
    model, samples: Iterator[tuple[InputItem, PreparedInput]]
) -> Iterator[tuple[InputItem, Prediction | str, np.ndarray | None]]:
    with closing(samples):
        for item, sample in samples:
            if sample.error is not None:
                yield item, sample.error, None
            else:
                yield item, predict_prepared(model, sample), sample.image


# ------------------------------------------------------------------ resume
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[0-9a-f]{8}\.tmp(?P<suffix>(\.[^.]*)?)")


def is_finished(out_dir: Path, stem: str, save: set[str]) -> bool:
    """True when ``S.json`` exists, reads, asks for every kind of ``save``, lists a depth file,
    and its files (plain names beside it) exist with the sizes it lists (``bytes``; a record
    of an earlier version, without sizes: files that exist)."""
    paths = output_paths(out_dir, stem, set())
    try:
        record = json.loads(paths["record"].read_text(encoding="utf-8"))
        files = record["files"]
        sizes = record.get("bytes", dict.fromkeys(files))
        requested = set(record.get("save") or files)
        if not isinstance(files, dict) or "depth" not in files or not isinstance(sizes, dict):
            return False
        if set(sizes) != set(files) or not (save | {"depth"}) <= requested:
            return False
        for kind, name in files.items():
            if not isinstance(name, str) or Path(name).name != name:
                return False
            found = (paths["record"].parent / name).stat()
            if not stat.S_ISREG(found.st_mode) or sizes[kind] not in (None, found.st_size):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def remove_stale_temporaries(out_dir: Path, stems: Iterable[str]) -> int:
    """Delete temporary files that a killed run left for the outputs of ``stems``; the count.

    Only names ``atomic_write`` gives to the outputs of these stems are touched, so runs of
    other shards writing into the same folder are left alone.
    """
    wanted: dict[Path, set[tuple[str, str]]] = {}
    for stem in stems:
        for path in output_paths(out_dir, stem, set(SAVE_KINDS)).values():
            wanted.setdefault(path.parent, set()).add((path.stem, path.suffix))
    removed = 0
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match and (match["stem"], match["suffix"]) in names and entry.is_file():
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


# ------------------------------------------------------------------ the batch runner
@dataclass
class BatchSummary:
    """What a batch run did.

    Attributes:
        total: items in this run (this shard's share of the input list).
        done: images predicted and written in this run.
        skipped: images skipped as already finished (``resume``).
        failed: one line per bad image (``keep_going``): ``"PATH: problem"``.
        default_camera: images predicted with the default camera (no intrinsics anywhere).
        interrupted: stopped early by SIGINT or SIGTERM; ``resume`` finishes the rest.
        elapsed_s: wall time of the run in seconds (start-up of the workers included).
        shard: ``(i, n)`` when the run was one shard of n.
    """

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    default_camera: int = 0
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


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGINT or SIGTERM; a second one acts as usual.

    (A second SIGINT raises KeyboardInterrupt, a second SIGTERM terminates.) Handlers can only
    be set from the main thread; elsewhere the event is never set.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        stop.set()  # the next one is handled as before the run (Ctrl-C: KeyboardInterrupt)
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


def _rate_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Images per second."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-.-- images/s" if speed is None else f"{speed:.2f} images/s")

    return RateColumn()


@contextmanager
def _progress(
    enabled: bool, total: int
) -> Iterator[tuple[Callable[[], None], Callable[[str], None]]]:
    """``(advance, report)``: a rich bar on stderr (terminals only) and a one-line reporter."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _rate_column(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, disable=not (enabled and console.is_terminal))
    with bar:
        task = bar.add_task("predicting", total=total)

        def report(line: str) -> None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

        yield (lambda: bar.advance(task)), report


#: Writer threads: with ``fsync`` each file waits on the disk (milliseconds) without using the
#: CPU, and concurrent fsyncs share one journal commit, so several images are written at once.
_WRITER_THREADS = 4
#: Threads of the writer process. Without fsync its work only uses the CPU: 1 thread (2 cost
#: more CPU in GIL hand-offs: the batch benchmark at 0.94/0.96 of forward-only with 1 against
#: 0.94/0.92 with 2, interleaved, 175 against 165 images/s). With fsync 2 threads overlap one
#: file's disk wait with the next file's work: alone, 2 threads wrote 560-670 images/s with
#: 1.9-2.2 ms of CPU per image, 4 threads 550 images/s with 2.6-2.8 ms, 1 thread 520-550
#: images/s, and in the batch benchmark 2 against 1 gave 0.90-0.91 against 0.81-0.85.
_PROCESS_WRITER_THREADS = {False: 1, True: 2}
#: Images whose writes may still be under way while the network runs (a stop signal waits for
#: them: they are already predicted).
_MAX_WRITES_AHEAD = 4


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def network_threads(workers: int) -> int:
    """Torch threads for the network while ``workers`` loader processes run.

    The current ``torch.get_num_threads()``, lowered so that threads and workers together do not
    exceed ``usable_cores()`` (at least 1). More would oversubscribe the cores: torch's threads
    spin while they wait for each other, and a run on 2 cores with 2 workers and 2 threads was
    measured 10x slower than with 1 thread.
    """
    current = torch.get_num_threads()
    if workers <= 0:
        return current
    return max(1, min(current, usable_cores() - workers))


@contextmanager
def _on_cores(cores: frozenset[int] | None) -> Iterator[None]:
    """Run the calling thread on ``cores`` (None: as it is), as before afterwards."""
    if not cores:
        yield
        return
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cores)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


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


def _write(
    prediction: Prediction, image: np.ndarray | None, out_dir: Path, stem: str, save: set[str],
    sync: bool = False, about: dict[str, Any] | None = None,
) -> tuple[Prediction, dict[str, Path]]:  # fmt: skip
    written = write_prediction(prediction, image, out_dir, stem, save, sync=sync, about=about)
    return prediction, written


def _finish(
    model, sample: PreparedInput, out: dict[str, torch.Tensor], out_dir: Path, stem: str,
    save: set[str], sync: bool = False, about: dict[str, Any] | None = None,
    forward_s: float = 0.0,
) -> tuple[Prediction, dict[str, Path]]:  # fmt: skip
    """Post-process one image's network outputs and write its files (timed: ``timings_ms``)."""
    started = time.perf_counter()
    prediction = to_prediction(model, sample, out)
    post_s = time.perf_counter() - started
    prediction = replace(prediction, timings_ms=timings_ms(sample.pre_s, forward_s, post_s))
    return _write(prediction, sample.image, out_dir, stem, save, sync, about)


class _ThreadSink:
    """Post-processing and writes on writer threads of this process (futures of
    ``(prediction, written)``)."""

    def __init__(self, model, out_dir: Path, save: set[str], sync: bool) -> None:
        self.model, self.out_dir, self.save, self.sync = model, out_dir, save, sync
        self.pool = ThreadPoolExecutor(_WRITER_THREADS, thread_name_prefix="metricdepth-writer")

    def finish(
        self, position: int, sample: PreparedInput, out: dict, stem: str, about: dict,
        forward_s: float,
    ) -> Future:  # fmt: skip
        return self.pool.submit(
            _finish, self.model, sample, out, self.out_dir, stem, self.save, self.sync, about,
            forward_s,
        )  # fmt: skip

    def write(
        self, prediction: Prediction, image: np.ndarray | None, stem: str, about: dict
    ) -> Future:
        return self.pool.submit(
            _write, prediction, image, self.out_dir, stem, self.save, self.sync, about
        )

    def collect(self, wait_for: Future | None) -> None:
        """Nothing to move: the threads complete their futures themselves."""

    def __enter__(self) -> _ThreadSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)


@dataclass(frozen=True)
class _Written:
    """What settling needs of an image written by the writer process."""

    camera_source: str


class _ProcessSink:
    """Post-processing and writes in a ``writer.WriterProcess``; its reports complete futures
    (of ``(_Written, {})``) here when ``collect`` reads them."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self.futures: dict[int, Future] = {}

    def finish(
        self, position: int, sample: PreparedInput, out: dict, stem: str, about: dict,
        forward_s: float,
    ) -> Future:  # fmt: skip
        future: Future = Future()
        self.futures[position] = future
        self.writer.submit(position, sample, out, stem, about, forward_s)
        return future

    def collect(self, wait_for: Future | None) -> None:
        """Complete the futures of the reports that arrived; first wait for ``wait_for``'s."""
        while wait_for is not None and not wait_for.done():
            self._complete(self.writer.receive(block=True))
        while (result := self.writer.receive(block=False)) is not None:
            self._complete(result)

    def _complete(self, result) -> None:
        future = self.futures.pop(result.position)
        if result.outcome == "done":
            future.set_result((_Written(result.text), {}))
        elif result.outcome == "write":
            future.set_exception(WriteError(result.text))
        elif result.outcome == "bad":
            future.set_exception(ValueError(result.text))
        else:
            future.set_exception(RuntimeError(f"writer process failed:\n{result.text}"))

    def __enter__(self) -> _ProcessSink:
        return self

    def __exit__(self, *exc: object) -> None:
        for result in self.writer.close():  # waits for the writes under way
            self._complete(result)


class _NetworkThread:
    """Forward passes on a thread of their own, one image ahead of the calling thread.

    ``start(network, x)`` hands over a normalised input, ``result()`` returns the outputs of
    the oldest one started (or raises what its forward raised). With two started, the next
    forward begins the moment the previous one ends, while the calling thread, on the other
    cores, reads the next image, hands outputs to the writer and keeps the books. On the
    network's own thread that work added 0.4-1.0 ms to each 5.8-6.3 ms forward of the default
    model (taking the next image 0.08 ms, handing over the outputs 0.33-0.37 ms, waiting for
    the writer 0.08-0.78 ms; ``benchmarks/results/batch_throughput.md``). The thread runs on
    ``cores``, in inference mode with TorchScript's optimiser off (as ``run_network``); the
    outputs are the same bytes. Thread-local torch state of the caller (autocast, streams)
    does not reach it.
    """

    def __init__(self, cores: frozenset[int] | None) -> None:
        from queue import SimpleQueue

        self.inbox: SimpleQueue = SimpleQueue()
        self.outbox: SimpleQueue = SimpleQueue()
        self.cancelled = threading.Event()
        self.thread = threading.Thread(
            target=self._serve, args=(cores,), name="metricdepth-network", daemon=True
        )
        self.thread.start()

    def _serve(self, cores: frozenset[int] | None) -> None:
        try:
            from metricdepth.data.loader import run_on

            run_on(cores)
            with torch.inference_mode(), torch.jit.optimized_execution(False):
                while (job := self.inbox.get()) is not None:
                    if self.cancelled.is_set():
                        continue  # closing early: the forwards still queued are not wanted
                    network, x = job
                    try:
                        started = time.perf_counter()
                        out = network(x)
                        self.outbox.put((out, time.perf_counter() - started))
                    except BaseException as error:  # noqa: BLE001 - raised in the caller
                        self.outbox.put(error)
        except BaseException as error:  # noqa: BLE001 - the thread itself failed: tell result()
            self.outbox.put(error)

    def start(self, network, x: torch.Tensor) -> None:
        self.inbox.put((network, x))

    def result(self) -> tuple[dict[str, torch.Tensor], float]:
        """The outputs of the oldest forward started and its duration in seconds."""
        out = self.outbox.get()
        if isinstance(out, BaseException):
            raise out
        return out

    def close(self, wait: bool = True) -> None:
        """Stop the thread: forwards not begun are dropped, the one under way ends on its own
        (``wait``: and is waited for)."""
        self.cancelled.set()
        self.inbox.put(None)
        if wait:
            self.thread.join()


@contextmanager
def _network_thread(cores: frozenset[int] | None) -> Iterator[_NetworkThread | None]:
    """A ``_NetworkThread`` on ``cores`` for the block (None without cores). After Ctrl-C the
    block ends at once, without waiting for the forward under way."""
    if not cores:
        yield None
        return
    forwards = _NetworkThread(cores)
    try:
        yield forwards
    except KeyboardInterrupt:
        forwards.close(wait=False)
        raise
    except BaseException:
        forwards.close()
        raise
    forwards.close()


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
        model: a loaded ``DepthModel``.
        items: from ``collect_inputs``; each is written under ``out_dir / item.stem``.
        save: kinds of ``SAVE_KINDS`` (``depth`` and the record are always written).
        intrinsics / focal: one camera for every image (else each item's annotation, else the
            default camera); ``focal_mode``: ``mean`` or ``fx`` (default: the model's).
        workers: loader processes decoding images while the model runs (0: in this process);
            the network's torch threads are lowered meanwhile to ``network_threads(workers)``.
        resume: skip items whose record exists, lists every kind of ``save`` and whose files
            have the sizes it lists (``is_finished``).
        shard: ``(i, n)``: process only items ``i, i + n, ...`` (0-based) of ``items``.
        keep_going: a bad image is reported (``"failed: PATH: problem"`` on stderr), counted
            in ``failed``, and the run goes on; without it, the first one raises ValueError.
            An output that cannot be written raises ``WriteError`` (a ValueError) either way.
        progress: show a progress bar with images/s and ETA on stderr (terminals only).
        on_done: called as ``on_done(item, prediction, written_paths)`` after each image.
        distortion / alpha: one lens for every image (``metricdepth.distortion``): predicted
            on the undistorted pinhole image, written on the original pixel grid.
        fsync: fsync every data file before its image's record appears (``write_prediction``'s
            ``sync``): the outputs then survive a power loss, at a cost per file. Without it
            they survive a killed process all the same (atomic renames), and ``resume`` redoes
            an image whose files a power loss left short.

    Raises:
        ValueError: a bad argument, or (without ``keep_going``) the first bad image, naming it.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    unknown = sorted(set(save) - set(SAVE_KINDS))
    if unknown:
        raise ValueError(f"unknown save kind(s) {', '.join(unknown)}; choose from {SAVE_KINDS}")
    save = set(save) | {"depth"}
    _check_arguments(model, workers, intrinsics, focal, focal_mode)
    items = list(items)
    if shard is not None:
        shard = check_shard(shard)
        items = shard_items(items, *shard)
    summary = BatchSummary(total=len(items), shard=shard)
    remove_stale_temporaries(out_dir, (item.stem for item in items))
    pending = [item for item in items if not (resume and is_finished(out_dir, item.stem, save))]
    summary.skipped = len(items) - len(pending)
    keep_images = bool(save & {"ply", "vis"}) or "image" in model.takes
    from metricdepth.models.registry import provenance

    made_by = provenance(model)  # hashes the weights file once, here

    def about(item: InputItem) -> dict[str, Any]:
        return {**made_by, "input": str(item.image)}

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
            if on_done is not None:
                on_done(item, prediction, written)
        advance()

    # The metric post-processing and the writes of each image run on writer
    # threads (with loader workers and no on_done: in a writer process) while the network
    # does the next ones; results are settled (on_done, counts) in input order. A one-thread
    # network then has a core of its own (split_cores) and a thread of its own there
    # (_NetworkThread); this thread and the loader and writer processes use the other cores.
    own_pipeline = "image" in model.takes  # a whole-prediction graph (predictor.Backend)
    process = workers > 0 and on_done is None and not own_pipeline and len(pending) > 1
    apart = split_cores(network_threads(workers)) if process else None
    network_core, side_cores = apart or (None, None)
    with _stop_on_signals() as stop:
        samples = prepared_inputs(
            model,
            pending,
            intrinsics=intrinsics,
            focal=focal,
            focal_mode=focal_mode,
            workers=workers,
            keep_images=keep_images,
            distortion=distortion,
            alpha=alpha,
            cores=side_cores,
        )
        if process:
            from metricdepth.writer import WriterProcess

            writer = WriterProcess(
                model, out_dir, save, _PROCESS_WRITER_THREADS[fsync], cores=side_cores, sync=fsync
            )
            sink: _ThreadSink | _ProcessSink = _ProcessSink(writer)
        else:
            sink = _ThreadSink(model, out_dir, save, fsync)
        threads = _torch_threads(network_threads(workers))
        with (
            closing(samples),
            sink,
            threads,
            _network_thread(network_core) as forwards,
            _on_cores(side_cores),
            _progress(progress, len(pending)) as (
                advance,
                report,
            ),
        ):
            queue: deque[tuple[InputItem, Future]] = deque()
            running: deque[tuple[int, InputItem, PreparedInput]] = deque()
            network, tried_trace = None, False

            def finish_oldest() -> dict[str, torch.Tensor]:
                position, item, sample = running.popleft()
                try:
                    out, seconds = forwards.result()
                except BaseException:
                    running.clear()  # those started after it are not written either
                    raise
                written = sink.finish(position, sample, out, item.stem, about(item), seconds)
                queue.append((item, written))
                return out

            try:
                for position, (item, sample) in enumerate(samples):
                    if sample.error is not None:
                        fail(sample.error)
                        advance()
                    elif own_pipeline:
                        prediction = predict_prepared(model, sample)
                        written = sink.write(prediction, sample.image, item.stem, about(item))
                        queue.append((item, written))
                    else:  # the post-processing and writes overlap the next forward
                        started_forward = time.perf_counter()
                        if forwards is None:
                            out = run_network(model, sample, network)
                            seconds = time.perf_counter() - started_forward
                            finished = sink.finish(
                                position, sample, out, item.stem, about(item), seconds
                            )
                            queue.append((item, finished))
                        else:  # one image ahead on the network thread
                            forwards.start(network or model, network_input(model, sample))
                            running.append((position, item, sample))
                            if len(running) > 1 or not tried_trace:
                                out = finish_oldest()
                        if not tried_trace:  # after the first good image: trace a fast network
                            tried_trace = True
                            quick = time.perf_counter() - started_forward < TRACE_BELOW_S
                            left = len(pending) - position - 1
                            if quick and can_trace(model, left):
                                network = traced_network(model, sample, out)
                    sink.collect(queue[0][1] if len(queue) > _MAX_WRITES_AHEAD else None)
                    while queue and (len(queue) > _MAX_WRITES_AHEAD or queue[0][1].done()):
                        settle(*queue.popleft())
                    if stop.is_set():
                        break
            except Exception:  # the images started before it are still written
                with suppress(Exception):
                    while running:
                        finish_oldest()
                raise
            while running:
                finish_oldest()
            while queue:
                sink.collect(queue[0][1])
                settle(*queue.popleft())
        summary.interrupted = stop.is_set() and summary.remaining > 0
    summary.elapsed_s = time.perf_counter() - started
    return summary


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
    """Predict every item and write its files (``run_batch`` in this process, no bar).

    ``on_done(item, prediction)`` is called after each image; returns kind -> path per image.
    ``fsync``: as ``run_batch``'s.
    """
    results: list[dict[str, Path]] = []

    def done(item: InputItem, prediction: Prediction, written: dict[str, Path]) -> None:
        results.append(written)
        if on_done is not None:
            on_done(item, prediction)

    run_batch(
        model,
        items,
        out_dir,
        save,
        intrinsics=intrinsics,
        focal=focal,
        focal_mode=focal_mode,
        progress=False,
        fsync=fsync,
        on_done=done,
    )
    return results
