"""The stages of the Ray executor (``metricdepth.ray_engine``) as they run on Ray's workers.

``prepare_batch`` (CPU tasks): image bytes -> decoded with PIL (EXIF kept) -> camera policy ->
a pickled ``predictor.Prepared`` (or an ``error`` line); ``ForwardActor`` (the actor pool): the
model's ``Predictor`` loaded once, network outputs; ``finish_batch`` (CPU tasks):
``predictor.finish`` -> a row of arrays and the record, or the files and record of the local
runner (``files``) in a folder or an ``fsspec`` URL. Batches are
Ray Data's numpy batches (dicts of columns). This module imports neither ray nor torch at
import time.

The adapter section at the top is the only place that calls the local pipeline's functions.
"""

from __future__ import annotations

import io
import json
import pickle
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: ``ray_engine.RayOptions`` (not imported: that module imports this one).
RayOptions = Any


# ====================================================================== adapter
# The only place that calls the local pipeline: ``predictor`` (prepare / forward / finish),
# ``files`` (names, atomic writing, the record, is_finished) and ``batch`` (the summary).
def _load(options: RayOptions):
    """The ``Predictor`` of the model, loaded once per actor (the CLI's ``load_model``
    arguments; the focal mode of ``options``, else the model's)."""
    from metricdepth.pipeline import load_model
    from metricdepth.predictor import Predictor

    model = load_model(
        options.model, weights=options.weights, device=options.device, precision=options.precision
    )
    return Predictor(model, options.focal_mode)


def spec_of(options: RayOptions):
    """The model's spec without its weights (the prepare tasks need only its space)."""
    from metricdepth.models.registry import model_spec

    return model_spec(options.model)


def _provenance(predictor) -> dict[str, Any]:
    from metricdepth.models.registry import provenance

    return provenance(predictor.backend)


def _prepare(spec, data: bytes, name: str, options: RayOptions, annotation):
    """Decode one image's bytes and move it into canonical space: ``(prepared, rgb)`` (a
    picklable ``predictor.Prepared`` and the decoded image), or a ValueError line naming
    ``name``."""
    from metricdepth.cameras import camera_for_image
    from metricdepth.predictor import prepare

    rgb, pil = _decode(data, name)
    height, width = rgb.shape[:2]
    camera, source = camera_for_image(
        pil, width, height, intrinsics=options.camera.intrinsics,
        focal=options.camera.focal_px, annotation=annotation,
    )  # fmt: skip
    prepared = prepare(
        spec.space, options.focal_mode or spec.focal_mode, rgb, camera, source,
        distortion=options.distortion, alpha=options.alpha,
    )  # fmt: skip
    return prepared, rgb


def problem_line(name, error) -> str:
    """``"NAME: problem"`` on one line (the local runner's wording)."""
    from metricdepth.data.loader import problem_line as line

    return line(name, error)


def _forward(predictor, prepared: Sequence) -> list[dict[str, np.ndarray]]:
    """The network's outputs of each prepared input (``Predictor.forward`` of a ``collate``d
    batch, ``split`` per image, as numpy arrays); inputs of one size run as one batch."""
    from metricdepth.predictor import collate, split

    outputs: list[dict[str, np.ndarray] | None] = [None] * len(prepared)
    groups: dict[tuple, list[int]] = {}
    for index, sample in enumerate(prepared):
        shapes = tuple(tuple(v.shape) for v in sample.inputs.values())
        groups.setdefault(shapes, []).append(index)
    for indices in groups.values():
        out = predictor.forward(collate([prepared[i] for i in indices]))
        for index, row in zip(indices, split(out), strict=True):
            outputs[index] = {k: _numpy(v) for k, v in row.items()}
    return outputs  # type: ignore[return-value]


def _numpy(tensor) -> np.ndarray:
    """A tensor as a numpy copy of its own (a view of a batch would pickle the whole batch);
    half precisions as float32 (``finish`` computes in float32 either way)."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy().copy()


def _finish(spec, out: dict[str, np.ndarray], prepared, forward_s: float):
    """Network outputs of one image -> its metric ``Prediction`` (``predictor.finish``)."""
    import torch

    from metricdepth.predictor import finish

    return finish(spec, {k: torch.from_numpy(v) for k, v in out.items()}, prepared, forward_s)


def record_of(prediction, about: dict[str, Any]) -> dict[str, Any]:
    """The record of one prediction as the local runner writes it, less the files."""
    from metricdepth.files import prediction_record

    return prediction_record(prediction, about)


def _write(prediction, image, out_dir: str, stem: str, save: set[str], about, sync: bool):
    """Write one image's files and record (atomically, record last) into a local folder."""
    from metricdepth.files import write_prediction

    write_prediction(prediction, image, Path(out_dir), stem, save, sync=sync, about=about)


def _output_names(stem: str, save: set[str]) -> dict[str, str]:
    """kind -> file name relative to the output root (``record``: the record)."""
    from metricdepth.files import output_paths

    return {kind: path.as_posix() for kind, path in output_paths(Path(""), stem, save).items()}


def remove_stale_temporaries(out_dir: str, stems) -> None:
    from metricdepth.files import remove_stale_temporaries

    remove_stale_temporaries(Path(out_dir), stems)


def summary_of(total: int, shard):
    from metricdepth.batch import BatchSummary

    return BatchSummary(total=total, shard=shard)


def write_error():
    from metricdepth.files import WriteError

    return WriteError


# ====================================================================== the stages
def _decode(data: bytes, name: str):
    """``(rgb, pil)``: the image as displayed (``io.read_image``'s decoding) and the opened
    PIL image (for its EXIF), or one ValueError line naming ``name``."""
    from PIL import Image, UnidentifiedImageError

    from metricdepth.io import rgb_from_pil

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pil = Image.open(io.BytesIO(data))
            pil.seek(0)
            pil.load()
            rgb, _ = rgb_from_pil(pil)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image Pillow can read (or an empty file)") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"{name}: cannot read image ({' '.join(str(exc).split())})") from None
    return rgb, pil


def _read_bytes(path: str) -> bytes:
    import fsspec

    with fsspec.open(path, "rb") as handle:
        return handle.read()


def _column(batch: dict, name: str, n: int) -> list:
    """A column of a numpy batch as a list (missing: Nones)."""
    values = batch.get(name)
    return [None] * n if values is None else list(values)


def text(value) -> str | None:
    """A text cell (None, or NaN where Arrow had a column of nulls: None)."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None
    return str(value)


def _annotation(value) -> tuple[float, ...] | None:
    """A row's ``intrinsics`` (None, empty or NaN: none) as a tuple of floats."""
    if value is None:
        return None
    values = np.asarray(value, dtype=np.float64).ravel()
    return None if values.size == 0 or np.isnan(values).all() else tuple(map(float, values))


def _pickled(value) -> bytes | None:
    return None if value is None else pickle.dumps(value)


def _unpickled(cell):
    """A pickled cell (None, or NaN where Arrow had a column of nulls: None)."""
    if cell is None or (isinstance(cell, (float, np.floating)) and np.isnan(cell)):
        return None
    return pickle.loads(bytes(cell))


def prepare_batch(batch: dict, spec, options: RayOptions, keep_image: bool) -> dict:
    """Rows ``key``, ``image`` or ``path``, ``intrinsics`` -> ``key``, ``input`` (the path or
    None), ``prepared`` (a pickled ``predictor.Prepared``), ``error`` (one line for a bad
    image, whose ``prepared`` is None) and with ``keep_image`` ``rgb`` (the pickled image,
    for ``ply``/``vis``)."""
    import cv2

    keys = [str(k) for k in batch["key"]]
    n = len(keys)
    paths = [text(p) for p in _column(batch, "path", n)]
    images = _column(batch, "image", n)
    cameras = _column(batch, "intrinsics", n)
    rows: dict[str, list] = {"key": keys, "input": paths, "prepared": [], "error": [], "rgb": []}
    for key, path, data, intrinsics in zip(keys, paths, images, cameras, strict=True):
        name = str(path) if path is not None else key
        prepared = rgb = error = None
        try:
            if data is None:
                data = _read_bytes(str(path))
            prepared, rgb = _prepare(spec, bytes(data), name, options, _annotation(intrinsics))
        except (OSError, ValueError, cv2.error) as problem:
            error = problem_line(name, problem)
        except MemoryError:
            error = problem_line(name, "too large for memory")
        rows["prepared"].append(_pickled(prepared))
        rows["error"].append(error)
        rows["rgb"].append(_pickled(rgb if keep_image else None))
    if not keep_image:
        del rows["rgb"]
    return rows


class ForwardActor:
    """One forward worker: the model's ``Predictor`` loaded once (``options``: set on a
    subclass by ``predict_dataset``), then batches of prepared inputs."""

    options: RayOptions

    def __init__(self) -> None:
        self.predictor = _load(self.options)
        self.about = json.dumps(_provenance(self.predictor))

    def __call__(self, batch: dict) -> dict:
        samples = [_unpickled(p) for p in batch["prepared"]]
        good = [k for k, s in enumerate(samples) if s is not None]
        started = time.perf_counter()
        results = _forward(self.predictor, [samples[k] for k in good]) if good else []
        forward_s = (time.perf_counter() - started) / max(len(good), 1)
        outputs: list[bytes | None] = [None] * len(samples)
        for k, out in zip(good, results, strict=True):
            outputs[k] = pickle.dumps(out)
        n = len(samples)
        return {
            **batch,
            "outputs": outputs,
            "forward_s": [forward_s] * n,
            "about": [self.about] * n,
        }


def finish_batch(
    batch: dict, spec, out_dir: str | None, save: set[str], sync: bool,
    focal_mode: str | None = None,
) -> dict:  # fmt: skip
    """Forward rows -> result rows (``predict_dataset``'s): with ``out_dir`` the files are
    written and the rows carry the record's text; without, also the arrays.
    ``camera_mismatch``: the line of ``cameras.image_camera_mismatch`` (a model trained on an
    assumed camera, ``focal_mode``: the run's) when the image's camera does not fit, else None."""
    from metricdepth.cameras import image_camera_mismatch

    rows: dict[str, list] = {name: [] for name in _RESULT_COLUMNS}
    arrays: dict[str, list] = {"depth_m": [], "confidence": [], "normal": []}
    n = len(batch["key"])
    for key, path, prepared, error, rgb, out, forward_s, about in zip(
        batch["key"], batch["input"], batch["prepared"], batch["error"], _column(batch, "rgb", n),
        batch["outputs"], batch["forward_s"], batch["about"], strict=True,
    ):  # fmt: skip
        path = text(path)
        result = {"key": str(key), "input": path, "error": text(error), "write_error": None}
        result.update(camera_source=None, record=None, camera_mismatch=None)
        prediction = None
        if result["error"] is None:
            made_by = {**json.loads(about), "input": path if path is not None else str(key)}
            try:
                sample = _unpickled(prepared)
                prediction = _finish(spec, pickle.loads(out), sample, float(forward_s))
                result["camera_source"] = prediction.camera_source
                result["camera_mismatch"] = image_camera_mismatch(
                    spec, prediction.camera, focal_mode
                )
                if out_dir is None:
                    result["record"] = json.dumps(record_of(prediction, made_by))
                else:
                    result["record"] = _write_any(
                        prediction, _unpickled(rgb), out_dir, str(key), save, made_by, sync
                    )
            except write_error() as problem:
                result["write_error"] = str(problem)
            except ValueError as problem:
                result["error"] = problem_line(result["input"] or key, problem)
        for name in _RESULT_COLUMNS:
            rows[name].append(result[name])
        if out_dir is None:
            arrays["depth_m"].append(None if prediction is None else prediction.depth_m)
            arrays["confidence"].append(None if prediction is None else prediction.confidence)
            arrays["normal"].append(None if prediction is None else prediction.normal)
    if out_dir is None:
        rows.update(
            {k: _object_array(v) for k, v in arrays.items() if any(a is not None for a in v)}
        )
    return rows


_RESULT_COLUMNS = (
    "key", "input", "camera_source", "camera_mismatch", "record", "error", "write_error",
)  # fmt: skip


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


# ====================================================================== output folders
def is_url(out: str) -> bool:
    """Whether ``out`` is an fsspec URL (``s3://...``, ``file://...``) rather than a folder."""
    return "://" in str(out)


def _write_any(prediction, image, out: str, stem: str, save, about, sync: bool) -> str:
    """Write one image's outputs under ``out`` (a folder, or an fsspec URL: written to a local
    temporary folder, then copied, record last); returns the record's text."""
    if not is_url(out):
        _write(prediction, image, out, stem, save, about, sync)
        return (Path(out) / _output_names(stem, save)["record"]).read_text(encoding="utf-8")
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    with tempfile.TemporaryDirectory(prefix="metricdepth-ray-") as local:
        _write(prediction, image, local, stem, save, about, False)
        names = _output_names(stem, save)
        record = (Path(local) / names["record"]).read_text(encoding="utf-8")
        listed = json.loads(record)["files"]
        old = f"{root.rstrip('/')}/{names['record']}"
        if fs.exists(old):  # first: an old record must not vouch for files being replaced
            fs.rm_file(old)
        for kind in [*sorted(listed), "record"]:  # the record last: it says "finished"
            name = names[kind]
            target = f"{root.rstrip('/')}/{name}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(Path(local) / name), target)
    return record


def is_finished_any(out: str, stem: str, save: set[str]) -> bool:
    """``files.is_finished`` (the local runner's resume rule) for a folder or an fsspec URL."""
    from metricdepth.files import is_finished

    if not is_url(out):
        return is_finished(Path(out), stem, save)
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    return is_finished(root, stem, save, fs=fs)
