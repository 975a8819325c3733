"""The Ray Data executor: ``metricdepth predict --engine ray`` and ``predict_dataset``.

The pipeline of the local batch runner, spread over a Ray cluster with Ray Data:

1. **prepare** (CPU tasks, ``map_batches``): each row's image bytes (read from ``path`` when
   the row has none) are decoded with PIL from the bytes, so EXIF survives; the camera policy
   of every entry point (``cameras.camera_for_image``: given > annotation > EXIF > default)
   gives the camera; ``predictor.prepare`` (the model's space and focal mode, no network)
   gives the network input and its canonical record;
2. **forward** (an actor pool, ``map_batches`` with a callable class, ``concurrency`` actors of
   ``num_gpus`` GPUs each): each actor loads the model once (``load_model`` with the name,
   weights, device and precision the CLI takes, as a ``predictor.Predictor``) and runs
   ``Predictor.forward``, one forward per image (``batch_size`` > 1: images of one canvas size
   ``collate``d);
3. **finish** (CPU tasks): ``predictor.finish``: network outputs -> metric ``Prediction`` at
   the image's size, then
   either a row of arrays and the record (``predict_dataset(ds)``) or the files and the record
   of the local runner (``files.write_prediction``), written atomically per image
   (``predict_dataset(ds, out=...)``).

Rows in: ``key`` (the output stem, e.g. ``"sub/img01"``), ``image`` (the file's bytes; or
``path`` to read them from, a local path or an ``fsspec`` URL) and optionally ``intrinsics``
(``[fx, fy, cx, cy]`` of the image as displayed: an annotation's camera, source
``"annotation"``) and ``path`` (recorded as the record's ``input``; without it, the key).

Faults: Ray Data's defaults restart a dead actor (``max_restarts=-1``) and retry its tasks
(``max_task_retries=-1``), and retry a task whose worker died (``max_retries=-1``); an
exception raised by our code is not retried (a bad image is a row with ``error``). A retried
image is computed again and its files overwritten whole (each image's files appear together,
its record last), so a killed worker loses and duplicates nothing. ``run_ray`` (the CLI's
engine) skips images whose outputs are finished (``resume``: ``files.is_finished``, the local
runner's rule) before it builds the dataset.

Importing this module does not import ray; its functions do.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from metricdepth import ray_stages as stages
from metricdepth.cameras import CameraOptions
from metricdepth.distortion import Distortion

if TYPE_CHECKING:
    import ray.data

    from metricdepth.data.inputs import InputItem

__all__ = [
    "RAY_MISSING",
    "RayOptions",
    "predict_dataset",
    "command_options",
    "model_spec",
    "run_ray",
]

#: The error line when ray is not installed.
RAY_MISSING = "the ray engine needs Ray Data: pip install 'metricdepth[ray]'"


# ====================================================================== options
@dataclass(frozen=True)
class RayOptions:
    """How ``predict_dataset`` runs.

    Attributes:
        model, weights, device, precision: the model, as ``load_model`` (and the CLI) take
            it; each forward actor loads it once. ``device="cuda"`` needs ``gpus_per_worker``.
        camera: one camera for every image (``CameraOptions``); else each row's
            ``intrinsics`` (source ``annotation``), else its EXIF focal, else the default.
        focal_mode: ``"mean"`` or ``"fx"`` (default: the model's).
        distortion, alpha: one lens for every image (``metricdepth.distortion``).
        num_workers: forward actors (each holds the model once).
        gpus_per_worker: GPUs Ray reserves for each actor (0: CPU).
        batch_size: images per forward pass (stacked when their canvases match; 1 gives each
            image the local runner's numbers).
        fsync: fsync each data file before its record appears (local folders only).
    """

    model: str | None = None
    weights: str | None = None
    device: str = "cpu"
    precision: str | None = None
    camera: CameraOptions = field(default_factory=CameraOptions)
    focal_mode: str | None = None
    distortion: Distortion | None = None
    alpha: float | None = None
    num_workers: int = 1
    gpus_per_worker: float = 0
    batch_size: int = 1
    fsync: bool = False

    def __post_init__(self) -> None:
        for name in ("num_workers", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        gpus = self.gpus_per_worker
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not gpus >= 0:
            raise ValueError(f"gpus_per_worker must be a number >= 0, got {gpus!r}")
        on_gpu = str(self.device).startswith("cuda")
        if gpus > 0 and not on_gpu:
            raise ValueError(
                f"gpus_per_worker {gpus:g} reserves GPUs for the model: give device 'cuda'"
            )
        if on_gpu and gpus == 0:
            raise ValueError(
                "device 'cuda' with the ray engine needs gpus_per_worker > 0 (Ray assigns each "
                "worker its GPUs)"
            )
        if self.focal_mode is not None:
            from metricdepth.camera import check_focal_mode

            check_focal_mode(self.focal_mode)


# ====================================================================== public functions
def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    return ray


def predict_dataset(
    ds: ray.data.Dataset,
    options: RayOptions | None = None,
    *,
    out: str | Path | None = None,
    save: Sequence[str] = ("depth",),
) -> ray.data.Dataset:
    """Metric depth for every row of ``ds`` (rows as the module docstring says), lazily.

    Without ``out``: a Dataset with one row per input: ``key``, ``input``, ``camera_source``,
    ``camera_mismatch`` (one line when the image's camera does not fit a model trained on an
    assumed camera, else None), ``record`` (the JSON text of the record the local runner
    writes, less its ``files``, ``bytes``, ``save`` and ``depth_png_scale``), ``depth_m``
    ((H, W) float32 metres),
    ``confidence``/``normal`` when the model has them, and ``error`` (one line for an image
    that could not be read or predicted, else None). With ``out`` (a folder or an ``fsspec``
    URL): each image's files and record are written there as the local runner writes them
    (``save``: the kinds of ``--save``), and the rows carry ``record`` (the record's text)
    instead of arrays, ``write_error`` when an output could not be written. Nothing runs until
    the Dataset is consumed (``take_all``, ``iter_rows``, ``materialize``, ...).
    """
    ray = _ray()
    options = options or RayOptions()
    spec = stages.spec_of(options)
    from metricdepth.files import check_save

    kinds = check_save(save, "save: ")
    keep_image = out is not None and bool(kinds & {"ply", "vis"})
    # Arguments are bound into the functions and the actor class. On CPU-only workers Ray
    # Data fuses the prepare step into the model workers (same resources: no data moves
    # between them); with GPUs it stays in CPU tasks.
    prepare = partial(stages.prepare_batch, spec=spec, options=options, keep_image=keep_image)
    actor = type("ForwardActor", (stages.ForwardActor,), {"options": options})
    out_dir = None if out is None else str(out)
    finish = partial(
        stages.finish_batch, spec=spec, out_dir=out_dir, save=kinds, sync=options.fsync,
        focal_mode=options.focal_mode,
    )  # fmt: skip
    prepared = ds.map_batches(prepare, batch_format="numpy", batch_size=options.batch_size)
    forwarded = prepared.map_batches(
        actor, batch_format="numpy", batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=options.num_workers),
        num_gpus=options.gpus_per_worker or None,
    )  # fmt: skip
    return forwarded.map_batches(finish, batch_format="numpy", batch_size=options.batch_size)


def run_ray(
    items: Sequence[InputItem],
    out: str | Path,
    save: set[str],
    options: RayOptions | None = None,
    *,
    address: str | None = None,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    keep_going: bool = False,
):
    """``metricdepth predict --engine ray``: predict ``items`` on a Ray cluster and write their
    files under ``out`` (a folder or an fsspec URL) as the local runner does; returns its
    ``BatchSummary``.

    Connects with ``ray.init(address)`` unless Ray is already initialised (``address`` None:
    Ray's own choice: ``RAY_ADDRESS``, else a cluster started on this machine, else a new local
    one). ``resume`` drops finished items before the dataset is built; ``shard=(i, n)`` keeps
    items ``i, i + n, ...``. Without ``keep_going`` the first bad image raises ValueError (the
    images under way are still written); an output that cannot be written raises
    ``WriteError``.
    """
    from metricdepth.data.inputs import check_shard, shard_items

    started = time.perf_counter()
    ray = _ray()
    options = options or RayOptions()
    out = str(out)
    items = list(items)
    if shard is not None:
        shard = check_shard(shard)
        items = shard_items(items, *shard)
    summary = stages.summary_of(len(items), shard)
    if not stages.is_url(out):
        stages.remove_stale_temporaries(out, (item.stem for item in items))
    kinds = set(save) | {"depth"}
    finished = [resume and stages.is_finished_any(out, item.stem, kinds) for item in items]
    pending = [item for item, done in zip(items, finished, strict=True) if not done]
    summary.skipped = len(items) - len(pending)
    if pending:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        rows = [
            {"key": item.stem, "path": str(item.image),
             "intrinsics": [] if item.intrinsics is None else list(item.intrinsics)}
            for item in pending
        ]  # fmt: skip
        ds = ray.data.from_items(rows)
        results = predict_dataset(ds, options, out=out, save=sorted(kinds))
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.WARNING)  # no plans and statistics on stderr
        try:
            _settle(results.iter_rows(), summary, keep_going, len(items))
        except ray.exceptions.RayError as error:  # e.g. the model cannot load on a worker
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise ValueError(f"the ray engine failed: {lines[-1] if lines else error}") from None
        finally:
            data_log.setLevel(level)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _settle(rows, summary, keep_going: bool, total: int) -> None:
    """Count the result rows into ``summary``; the first bad image raises unless
    ``keep_going``, an output that cannot be written always."""
    for row in rows:
        if stages.text(row["write_error"]):
            raise stages.write_error()(row["write_error"])
        if stages.text(row["error"]):
            message = row["error"]
            if not keep_going:
                tail = "" if total < 2 else " (--keep-going skips it)"
                raise ValueError(message + tail)
            summary.failed.append(message)
            print(f"failed: {message}", file=sys.stderr, flush=True)
            continue
        summary.done += 1
        summary.default_camera += row["camera_source"] == "default"
        if message := stages.text(row["camera_mismatch"]):
            summary.camera_mismatch += 1
            summary.mismatch_example = summary.mismatch_example or message


def command_options(
    engine, *, model, weights, device, precision, backend, workers, intrinsics, focal,
    focal_mode, distortion, fsync,
) -> tuple[RayOptions, str | None]:  # fmt: skip
    """``(RayOptions, address)`` from ``metricdepth predict``'s options (``engine``:
    ``(name, address, num_workers, gpus_per_worker)`` of ``--engine`` and its flags); options
    that do not fit the engine are a ValueError line naming them."""
    name, address, num_workers, gpus = engine
    if name not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, got {name!r}")
    if name == "local":
        raise ValueError("--address, --num-workers and --gpus-per-worker need --engine ray")
    if backend not in (None, "torch"):
        raise ValueError("--engine ray runs the torch backend (no --backend onnxruntime)")
    if str(model or "").endswith(".onnx"):
        raise ValueError(f"{model} is an ONNX file: --engine ray runs torch models")
    if workers:
        raise ValueError(
            "--workers is for the local engine; --engine ray decodes in Ray tasks "
            "(--num-workers sets the model workers)"
        )
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"--num-workers must be 1 or more, got {num_workers}")
    if gpus is not None and not gpus >= 0:
        raise ValueError(f"--gpus-per-worker must be 0 or more, got {gpus:g}")
    gpus = gpus or 0
    if gpus > 0 and not str(device).startswith("cuda"):
        raise ValueError("--gpus-per-worker runs the model on GPUs: give --device cuda")
    if str(device).startswith("cuda") and gpus == 0:
        raise ValueError("--device cuda with --engine ray needs --gpus-per-worker (e.g. 1)")
    _ray()
    options = RayOptions(
        model=None if model is None else str(model),
        weights=None if weights is None else str(weights),
        device=device, precision=precision, camera=CameraOptions(intrinsics, focal),
        focal_mode=focal_mode, distortion=distortion, num_workers=num_workers or 1,
        gpus_per_worker=gpus, fsync=fsync,
    )  # fmt: skip
    return options, address


def model_spec(options: RayOptions):
    """The spec of ``options``' model, read without its weights (a ValueError line for an
    unknown model)."""
    return stages.spec_of(options)
