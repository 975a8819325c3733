"""``metricdepth eval``: score a model, or a folder of predictions, against an annotation file.

The ground truth comes from a Metric3D annotation JSON (``data.annotations``): each entry's
``depth`` file read with its ``depth_scale`` (``io.read_depth``, metres, 0 = no measurement).
The predictions come from either

* a model (``model=`` a registered name, a model file, or a loaded ``DepthModel``), run on each
  entry's ``rgb`` with its ``cam_in`` (else the default camera) through exactly the code of
  ``metricdepth predict`` (``batch.iter_predictions``), or
* a folder (``predictions=``) in the layout ``metricdepth predict ANNOTATIONS.json --out DIR``
  writes: ``DIR/<key>.depth.npy``, where ``key`` is the rgb path relative to the JSON's folder
  with its extension dropped, a 2-D float array of metres at the image's resolution.

Both give the same numbers to the last bit for the same model. Every image is scored under a
``Protocol`` (crop and depth caps, ``evaluate.metrics``) and the per-image metrics are averaged
over images. With ``align="median"`` each image is also scored after median scaling, and that
row is reported separately and labelled; the metric row is always there.

A missing prediction, image or ground-truth file (or an image whose ground truth has no valid
pixel under the protocol) is a ValueError naming the file, unless ``skip_missing``: then the
image is left out, counted in ``skipped`` and listed with its reason.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from metricdepth.evaluate.metrics import (
    METRIC_NAMES,
    Protocol,
    average_metrics,
    crop_fractions,
    eval_mask,
    evaluate_image,
    format_metrics,
)
from metricdepth.evaluate.metrics import protocol as make_protocol
from metricdepth.io import atomic_write, read_depth

__all__ = ["ALIGNS", "eval_report", "run_eval"]

#: What ``align`` accepts.
ALIGNS: tuple[str, ...] = ("none", "median")
_SKIP_HINT = " (--skip-missing leaves such images out)"


def _protocol_json(protocol: Protocol) -> dict[str, Any]:
    """JSON-ready protocol: an infinite cap is written as null, plus the crop window as fractions
    of the image size (``crop_fractions``: rows and cols, or null) and its one-line description."""
    data = protocol.to_dict()
    for key in ("min_depth_m", "max_depth_m"):
        if math.isinf(data[key]):
            data[key] = None
    fractions = crop_fractions(protocol.crop)
    data["crop_fractions"] = (
        None if fractions is None else {"rows": list(fractions[:2]), "cols": list(fractions[2:])}
    )
    data["description"] = protocol.describe()
    return data


def _protocol_from_json(data: dict[str, Any]) -> Protocol:
    fields = {f.name for f in dataclasses.fields(Protocol)}
    values = {k: v for k, v in data.items() if k in fields}
    if values.get("max_depth_m") is None:
        values["max_depth_m"] = math.inf
    if values.get("min_depth_m") is None:
        values["min_depth_m"] = 0.0
    return Protocol(**values)


def _read_prediction(path: Path) -> np.ndarray:
    """A ``S.depth.npy`` prediction: (H, W) float metres, or a ValueError naming the file."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises many types for bad files
        text = " ".join(str(error).split())
        raise ValueError(
            f"{path}: cannot read prediction ({type(error).__name__}: {text})"
        ) from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind != "f":
        raise ValueError(
            f"{path}: a prediction must be a 2-D float array of metres, got "
            f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}"
        )
    return array


def _load_model(model: Any, weights: str | Path | None, device: str):
    from metricdepth.models.registry import DepthModel, load_model

    if isinstance(model, DepthModel):
        if weights is not None:
            raise ValueError("weights go with a model name, not with a loaded model")
        return model
    return load_model(model, weights=weights, device=device)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_write(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def run_eval(
    annotations: str | Path,
    *,
    model: Any = None,
    weights: str | Path | None = None,
    predictions: str | Path | None = None,
    protocol: str = "plain",
    min_depth: float | None = None,
    max_depth: float | None = None,
    align: str = "none",
    crop: str | None = None,
    skip_missing: bool = False,
    csv_path: str | Path | None = None,
    json_path: str | Path | None = None,
    device: str = "cpu",
    workers: int = 0,
) -> dict[str, Any]:
    """Score a model or a prediction folder against an annotation file (module docstring).

    Args:
        annotations: Metric3D annotation JSON with ``rgb``, ``depth``, ``depth_scale`` and
            optionally ``cam_in`` per image.
        model: registered name, model file, or loaded ``DepthModel`` (with ``weights`` for an
            official name); exactly one of ``model`` and ``predictions``.
        predictions: folder holding ``<key>.depth.npy`` (the ``metricdepth predict`` layout).
        protocol: ``plain``, ``nyu`` or ``kitti`` (``evaluate.metrics.PROTOCOLS``);
            ``min_depth``/``max_depth`` (metres) replace its ground-truth caps.
        crop: replaces the protocol's crop: ``eigen`` or ``garg`` for ``kitti`` (default
            ``eigen``, the Metric3D/BTS window), ``eigen`` for ``nyu``, or a full name of
            ``evaluate.metrics.CROPS`` (``none``, ``nyu-eigen``, ``kitti-eigen``,
            ``kitti-garg``). The result's ``protocol.crop`` names the crop used.
        align: ``none``, or ``median`` to add the median-scaled row (``"aligned"``).
        skip_missing: leave out images whose files are missing instead of failing.
        csv_path: write one row per image (``status`` says why a row was skipped).
        json_path: write the returned dict as JSON (an infinite cap is ``null``).
        device: where a model named by ``model`` runs; ``workers``: its loader processes.

    Returns:
        ``{"protocol": {...}, "n_images": N, "abs_rel", ..., "delta3", "skipped": count,
        "skipped_files": ["PATH: reason", ...], "source": {...}, "annotations": path}``, plus
        ``"aligned": {"protocol": {...}, <metrics>, "scale": mean factor}`` with
        ``align="median"``. Metrics are per-image values averaged over the N images.

    Raises:
        ValueError: bad arguments, unreadable files, a missing file (without ``skip_missing``),
            or a prediction whose size is not the ground truth's; one line naming the file.
    """
    from metricdepth.data.annotations import read_annotations

    if (model is None) == (predictions is None):
        raise ValueError("give either a model (--model) or a prediction folder (--predictions)")
    if align not in ALIGNS:
        raise ValueError(f"--align must be one of {', '.join(ALIGNS)}, got {align!r}")
    raw = make_protocol(protocol, min_depth, max_depth, crop=crop)
    aligned = dataclasses.replace(raw, align="median") if align == "median" else None
    annotations = Path(annotations)
    entries = read_annotations(annotations)
    if not entries:
        raise ValueError(f"{annotations}: no images listed")
    if predictions is not None:
        predictions = Path(predictions)
        if not predictions.is_dir():
            raise ValueError(f"--predictions {predictions}: no such folder")

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []

    def skip(row: dict[str, Any], reason: str) -> None:
        if not skip_missing:
            raise ValueError(reason + _SKIP_HINT)
        row["status"] = f"skipped: {reason}"
        skipped.append(reason)

    ready = []  # (row, entry) of the images whose files are all there
    for entry in entries:
        row: dict[str, Any] = {"key": entry.key, "rgb": str(entry.rgb), "status": "ok"}
        rows.append(row)
        if entry.depth is None:
            skip(row, f"{annotations}: entry {entry.key!r} has no ground-truth 'depth'")
        elif not entry.depth.is_file():
            skip(row, f"{entry.depth}: ground-truth depth file not found")
        elif predictions is not None and not (predictions / f"{entry.key}.depth.npy").is_file():
            skip(row, f"{predictions / f'{entry.key}.depth.npy'}: prediction file not found")
        elif predictions is None and not entry.rgb.is_file():
            skip(row, f"{entry.rgb}: image file not found")
        else:
            ready.append((row, entry))

    def score(row: dict[str, Any], entry, pred: np.ndarray, source: str) -> None:
        gt = read_depth(entry.depth, entry.depth_scale)
        if pred.shape != gt.shape:
            raise ValueError(
                f"{source}: prediction is {pred.shape[1]}x{pred.shape[0]} pixels but the ground "
                f"truth {entry.depth} is {gt.shape[1]}x{gt.shape[0]} (width x height)"
            )
        n_pixels = int(eval_mask(gt, raw).sum())
        if n_pixels == 0:
            skip(row, f"{entry.depth}: no valid ground-truth pixel under {raw.describe()}")
            return
        try:
            row.update(evaluate_image(pred, gt, raw))
            if aligned is not None:
                row.update(
                    {f"aligned_{k}": v for k, v in evaluate_image(pred, gt, aligned).items()}
                )
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        row["n_pixels"] = n_pixels

    if predictions is not None:
        for row, entry in ready:
            path = predictions / f"{entry.key}.depth.npy"
            score(row, entry, _read_prediction(path), str(path))
        source: dict[str, Any] = {"predictions": str(predictions)}
    else:
        from metricdepth.batch import iter_predictions
        from metricdepth.data.inputs import InputItem

        net = _load_model(model, weights, device)
        items = [
            InputItem(entry.rgb, entry.key, entry.intrinsics, entry.depth, entry.depth_scale)
            for _, entry in ready
        ]
        by_key = {entry.key: (row, entry) for row, entry in ready}
        with closing(iter_predictions(net, items, workers=workers)) as predicted:
            for item, prediction, _ in predicted:
                if isinstance(prediction, str):
                    raise ValueError(prediction)
                row, entry = by_key[item.stem]
                score(row, entry, prediction.depth_m, str(item.image))
        source = {"model": net.spec.name}
        if isinstance(model, (str, Path)):
            source["model_argument"] = str(model)

    scored = [row for row in rows if row["status"] == "ok"]
    if not scored:
        raise ValueError(
            f"no image could be evaluated: all {len(rows)} skipped (first: {skipped[0]})"
        )
    result: dict[str, Any] = {
        "protocol": _protocol_json(raw),
        "n_images": len(scored),
        **average_metrics([{k: row[k] for k in METRIC_NAMES} for row in scored]),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "source": source,
        "annotations": str(annotations),
    }
    aligned_names = [f"aligned_{k}" for k in (*METRIC_NAMES, "scale")]
    if aligned is not None:
        means = average_metrics(
            [{k: row[f"aligned_{k}"] for k in (*METRIC_NAMES, "scale")} for row in scored]
        )
        result["aligned"] = {"protocol": _protocol_json(aligned), **means}
    if csv_path is not None:
        columns = ["key", "rgb", "status", "n_pixels", *METRIC_NAMES]
        _write_csv(Path(csv_path), rows, columns + (aligned_names if aligned is not None else []))
    if json_path is not None:
        with atomic_write(Path(json_path)) as tmp:
            tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return result


def eval_report(result: dict[str, Any]) -> str:
    """The result of ``run_eval`` as text: each table starts with its protocol, rows labelled."""
    n_images = int(result["n_images"])
    source = result.get("source", {})
    what = source.get("model") or source.get("predictions") or "predictions"
    lines = [f"evaluated {what} on {result.get('annotations', 'the annotations')}", ""]
    lines.append("[metric] predictions as they are (no scaling):")
    metrics = {k: result[k] for k in METRIC_NAMES}
    lines.append(format_metrics(metrics, _protocol_from_json(result["protocol"]), n_images))
    if "aligned" in result:
        block = result["aligned"]
        lines += [
            "",
            "[median-aligned] each prediction x median(gt)/median(pred) first (scale: mean "
            "factor):",
        ]
        values = {k: block[k] for k in (*METRIC_NAMES, "scale") if k in block}
        lines.append(format_metrics(values, _protocol_from_json(block["protocol"]), n_images))
    if result.get("skipped"):
        lines += ["", f"skipped {result['skipped']} image(s) (--skip-missing):"]
        lines += [f"  {reason}" for reason in result.get("skipped_files", [])]
    return "\n".join(lines)
