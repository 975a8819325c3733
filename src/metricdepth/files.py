"""The files of a prediction: their names, atomic writing, and what ``--resume`` counts as done.

Per image ``S`` (its output stem): ``S.depth.npy`` and the record ``S.json`` always, and on
request PNG16, normals, confidence, PLY and a picture (``SAVE_KINDS``). An image's files are
written under temporary names and renamed together (``io.atomic_group``), its old record
deleted first and the new record renamed last: a record means every file it lists is complete.
Files of kinds an earlier run wrote and this one did not (``S.ply`` after a rerun without
``--save ply``) are then deleted, so nothing of an older prediction looks current.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from metricdepth.io import atomic_file, atomic_group, pending_size, write_depth, write_ply
from metricdepth.prediction import Prediction

#: What ``--save`` accepts; ``depth`` (S.depth.npy) and the record (S.json) are always written.
SAVE_KINDS = ("depth", "png16", "normal", "confidence", "ply", "vis")
_SUFFIXES = {
    "depth": ".depth.npy",
    "png16": ".depth.png",
    "normal": ".normal.npy",
    "confidence": ".confidence.npy",
    "ply": ".ply",
    "vis": ".vis.png",
    "record": ".json",
}
#: The temporary names ``io.atomic_write`` gives (``.NAME.<8 hex>.tmp.SUFFIX``).
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[0-9a-f]{8}\.tmp(?P<suffix>(\.[^.]*)?)")


class WriteError(ValueError):
    """An output could not be written (folder not writable, disk full, ...): one line naming it.

    Unlike a bad input it stops a batch run even with ``keep_going``: the next image would fail
    the same way.
    """


def parse_save(text: str) -> set[str]:
    """``"depth,ply,vis"`` -> a set of kinds (``depth`` always), or a ValueError naming the
    unknown ones."""
    return check_save({part.strip() for part in text.split(",") if part.strip()}, "--save: ")


def check_save(kinds: Iterable[str], prefix: str = "") -> set[str]:
    """``kinds`` plus ``depth``, or a ValueError naming those not in ``SAVE_KINDS``."""
    unknown = sorted(set(kinds) - set(SAVE_KINDS))
    if unknown:
        raise ValueError(
            f"{prefix}unknown kind(s) {', '.join(unknown)}; choose from {', '.join(SAVE_KINDS)}"
        )
    return set(kinds) | {"depth"}


def output_paths(out_dir: Path, stem: str, save: Iterable[str]) -> dict[str, Path]:
    """Where each requested file of image ``stem`` goes (``record`` is ``S.json``)."""
    base = Path(out_dir) / stem
    return {kind: base.with_name(base.name + _SUFFIXES[kind]) for kind in [*save, "record"]}


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

    ``image`` (the RGB it was made from) is needed only for ``ply`` and ``vis``. The record
    holds the prediction's ``summary()``, ``files`` (what was written), ``bytes`` (their sizes,
    which ``is_finished`` checks), ``save`` (what was requested; a model without normals writes
    no normal file), ``warnings`` (also drawn on ``vis``) and whatever ``about`` says made it
    (``models.registry.provenance`` plus ``input``). The files appear together: if one cannot
    be written none of the image's files changes and a ``WriteError`` names the image and the
    problem. ``sync``: fsync each data file before the renames (survives a power loss).
    """
    paths = output_paths(out_dir, stem, save)
    if image is None and save & {"ply", "vis"}:
        raise ValueError(f"{stem}: saving ply or vis needs the image")
    try:
        with atomic_group(sync=sync):
            written = _write_files(prediction, image, paths, save, about or {})
        for kind, path in output_paths(out_dir, stem, SAVE_KINDS).items():
            if kind not in written and os.path.lexists(path):  # an earlier run's extra kinds
                path.unlink()
        return written
    except OSError as error:
        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        where = f" ({error.filename})" if error.filename else ""
        raise WriteError(
            f"{Path(out_dir) / stem}: cannot write the outputs: {reason}{where}"
        ) from None


def prediction_record(prediction: Prediction, about: dict[str, Any]) -> dict[str, Any]:
    """The record of one prediction less what its files add (``files``, ``bytes``, ``save``,
    ``depth_png_scale``): the version, ``about`` (what made it), the prediction's
    ``summary()`` and ``warnings`` (``about``'s and the camera's; ``vis`` draws them)."""
    from metricdepth import __version__

    record = {"metricdepth_version": __version__, **about, **prediction.summary()}
    record["warnings"] = list(about.get("warnings", ()))
    if prediction.camera_warning is not None:
        record["warnings"].append(prediction.camera_warning)
    if not record["timings_ms"]:
        del record["timings_ms"]
    return record


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.save(handle, array.astype(np.float32))


def _write_files(prediction, image, paths, save, about) -> dict[str, Path]:
    import cv2

    from metricdepth.vis import visualization

    _write_npy(paths["depth"], prediction.depth_m)
    written = ["depth"]
    if "png16" in save:
        write_depth(paths["png16"], prediction.depth_m, depth_scale=1000.0)
        written.append("png16")
    for kind in ("normal", "confidence"):
        if kind in save and getattr(prediction, kind) is not None:
            _write_npy(paths[kind], getattr(prediction, kind))
            written.append(kind)
    if "ply" in save:
        valid = prediction.depth_m > 0
        write_ply(paths["ply"], prediction.points(), image, prediction.normal, mask=valid)
        written.append("ply")
    record = prediction_record(prediction, about)
    if "vis" in save:
        picture = visualization(image, prediction.depth_m, record["warnings"])
        ok, encoded = cv2.imencode(".png", picture[:, :, ::-1])
        if not ok:
            raise ValueError(f"could not encode {paths['vis']}")
        with atomic_file(paths["vis"]) as handle:
            handle.write(encoded.tobytes())
        written.append("vis")
    record["files"] = {kind: paths[kind].name for kind in written}
    record["bytes"] = {kind: pending_size(paths[kind]) for kind in written}
    record["save"] = sorted(save | {"depth"})
    record["depth_png_scale"] = 1000.0 if "png16" in written else None
    # Never fsync'ed: after a power loss the record is missing or unreadable, or it lists
    # files whose sizes do not match, and resume redoes the image.
    with atomic_file(paths["record"], sync=False) as handle:
        handle.write((json.dumps(record, indent=2) + "\n").encode("utf-8"))
    return {kind: paths[kind] for kind in [*written, "record"]}


def is_finished(out_dir: Path | str, stem: str, save: set[str], *, fs: Any = None) -> bool:
    """True when ``S.json`` exists, reads, asks for every kind of ``save``, lists a depth file,
    and its files (plain names beside it) exist with the sizes it lists (``bytes``; a record
    of an earlier version, without sizes: files that exist).

    ``fs``: an ``fsspec`` filesystem that ``out_dir`` is a path of (``fsspec.core.url_to_fs``);
    None: the local one."""
    record_path = output_paths(Path(out_dir), stem, ())["record"]
    try:
        text = record_path.read_bytes() if fs is None else fs.cat_file(record_path.as_posix())
        record = json.loads(text)
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
            found = _file_size(record_path.parent / name, fs)
            if found is None or sizes[kind] not in (None, found):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _file_size(path: Path, fs: Any) -> int | None:
    """The size of a regular file (None: not one); OSError when ``path`` does not exist."""
    if fs is None:
        found = path.stat()
        return found.st_size if stat.S_ISREG(found.st_mode) else None
    info = fs.info(path.as_posix())
    return int(info["size"]) if info.get("type") == "file" else None


def remove_stale_temporaries(out_dir: Path, stems: Iterable[str]) -> int:
    """Delete temporary files that a killed run left for the outputs of ``stems``; the count.

    Only names ``atomic_write`` gives to the outputs of these stems are touched, so runs of
    other shards writing into the same folder are left alone.
    """
    wanted: dict[Path, set[tuple[str, str]]] = {}
    for stem in stems:
        for path in output_paths(out_dir, stem, SAVE_KINDS).values():
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
