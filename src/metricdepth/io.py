"""Image, depth-map and point-cloud files.

Images are read with Pillow and returned as RGB ``uint8`` arrays of shape ``(H, W, 3)`` with the
EXIF orientation applied, exactly as ``Camera.rotated`` describes it (``camera.exif_steps``:
transpose, then flip left-right, then flip top-bottom). Conversion rules, whatever the stored
mode:

* alpha (LA, RGBA, PA, palette transparency) is dropped: the stored colour is kept unchanged,
  no compositing (what ``cv2.imread`` does, and so what Metric3D sees);
* 16-bit samples are scaled to 8 bit by keeping the high byte (``v >> 8``), the rule Pillow
  itself applies to 16-bit RGB(A) PNGs, so grey and colour 16-bit files agree;
* grey and 1-bit images are replicated to three channels (1-bit: 0 or 255), CMYK uses Pillow's
  conversion, an animated image gives its first frame.

Depth maps are ``float32`` arrays of shape ``(H, W)`` in metres (``depth_m``), 0 where invalid.
On disk: 16-bit PNG (stored = round(depth_m * depth_scale)), ``.npy`` and float TIFF.

Every writer goes through ``atomic_write`` (or ``atomic_file``, for writers that take an open
file): a file appears under its final name complete or not at all; ``atomic_group`` extends
that to several files (all or none, the last one last).
Every problem with a file is a ``ValueError`` with one line naming the file.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from metricdepth.camera import EXIF_ORIENTATIONS, Camera, exif_steps

_EXIF_ORIENTATION_TAG = 0x0112
_DEPTH_FORMATS = (".png", ".npy", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: The renames an open ``atomic_group`` holds back (None: rename at once).
_GROUP: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("atomic_group", default=None)
#: False: no file of the open ``atomic_group`` is fsync'ed (else: as each writer asks).
_GROUP_SYNC: ContextVar[bool | None] = ContextVar("atomic_group_sync", default=None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------ atomic writes
def _temporary(path: Path) -> tuple[Path, int]:
    """A new empty temporary file next to ``path`` and its open descriptor (write only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:  # O_EXCL: never reuse a name; mode 0o666 so the umask applies as for open()
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def _syncs(sync: bool) -> bool:
    """Whether a writer that asks for ``sync`` fsyncs (an open group may say no for all)."""
    return sync and _GROUP_SYNC.get() is not False


@contextmanager
def _staged(path: str | os.PathLike) -> Iterator[tuple[Path, int]]:
    """``(temporary, its open descriptor)`` for ``path``: when the block ends well the
    temporary is moved onto ``path`` (in an ``atomic_group``: at the group's end), else
    removed. The block owns the descriptor."""
    path = Path(path)
    tmp, descriptor = _temporary(path)
    try:
        yield tmp, descriptor
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    group = _GROUP.get()
    if group is None:
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        group.append((tmp, path))


@contextmanager
def atomic_write(path: str | os.PathLike, *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    The temporary file is created empty in the same directory (so ``os.replace`` is atomic),
    its name starts with ``.`` and ends with ``path``'s suffix (writers that choose the format
    from the extension work). On any exception it is removed and ``path`` is left as it was.
    Missing parent directories are created. The file is fsync'ed before the rename (unless an
    enclosing ``atomic_group(sync=False)`` says no); with ``sync=False`` it is not (still
    atomic for a killed process, but after a power loss the file may be missing or empty:
    only for a file whose loss is detected and redone).
    """
    with _staged(path) as (tmp, descriptor):
        os.close(descriptor)
        yield tmp
        if _syncs(sync):
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())


@contextmanager
def atomic_file(path: str | os.PathLike, *, sync: bool = True) -> Iterator[BinaryIO]:
    """``atomic_write`` for writers that take an open binary file: yields the temporary's
    handle, so the file is opened once and fsync'ed through the same descriptor (the batch
    path writes thousands of files; two opens and closes fewer each)."""
    with _staged(path) as (_, descriptor), os.fdopen(descriptor, "wb") as handle:
        yield handle
        handle.flush()
        if _syncs(sync):
            os.fsync(handle.fileno())


@contextmanager
def atomic_group(*, sync: bool | None = None) -> Iterator[None]:
    """Files written with ``atomic_write``/``atomic_file`` inside the block appear together,
    or not at all.

    Each file is written under its temporary name (and fsync'ed if its writer asks, unless
    ``sync=False`` turns that off for the whole block); the renames wait for the end of
    the block. On success the *last* file's old version is deleted first, then every file
    is renamed in the order written, so the last one (a manifest, such as a prediction's
    record) appears after all the others. On any error every temporary is deleted and the
    files under their final names are left exactly as they were. (Per thread and task.)
    """
    pending: list[tuple[Path, Path]] = []
    token, sync_token = _GROUP.set(pending), _GROUP_SYNC.set(sync)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUP.reset(token)
        _GROUP_SYNC.reset(sync_token)
    try:
        if pending:
            pending[-1][1].unlink(missing_ok=True)
        for tmp, path in pending:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise


def pending_size(path: str | os.PathLike) -> int:
    """Bytes of the file written for ``path`` in the open ``atomic_group`` (not yet renamed)."""
    for tmp, final in _GROUP.get() or ():
        if final == Path(path):
            return tmp.stat().st_size
    raise KeyError(f"{path} was not written in the open atomic_group")


# ------------------------------------------------------------------ images
def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF ``orientation`` to an ``(H, W, ...)`` array, as ``Camera.rotated`` does."""
    transpose, flip_h, flip_v = exif_steps(orientation)
    if transpose:
        array = np.swapaxes(array, 0, 1)
    if flip_h:
        array = array[:, ::-1]
    if flip_v:
        array = array[::-1]
    return np.ascontiguousarray(array)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """The stored pixels of ``image`` as ``(H, W, 3)`` uint8 (see the module docstring)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image)
        if grey.min(initial=0) < 0 or grey.max(initial=0) > 65535:
            raise ValueError(f"{image.mode} values outside 0..65535 are not an image")
        grey8 = (grey.astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette transparency -> alpha, then dropped below
    try:
        rgb = image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"unsupported image mode {image.mode}") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def _stored(image: Image.Image) -> tuple[np.ndarray, int]:
    """The stored pixels of an opened image as RGB uint8 and its EXIF orientation (1 when
    absent or invalid)."""
    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    rgb = _to_rgb8(image)
    if isinstance(orientation, bool) or orientation not in EXIF_ORIENTATIONS:
        orientation = 1
    return rgb, int(orientation)


def rgb_from_pil(image: Image.Image) -> tuple[np.ndarray, int]:
    """A PIL image as ``read_image`` returns a file: ``(rgb, orientation)``, ``rgb`` (H, W, 3)
    uint8 as displayed (EXIF orientation applied), decoded exactly as a file is (palette,
    alpha and 16-bit modes included). ValueError for a mode that has no RGB reading."""
    rgb, orientation = _stored(image)
    if rgb.size == 0:
        raise ValueError("empty image")
    return _apply_orientation(rgb, orientation), orientation


def _read_stored(path: Path) -> tuple[np.ndarray, int]:
    """The stored pixels as RGB uint8 and the EXIF orientation (1 when absent or invalid)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)
                image.load()
                rgb, orientation = _stored(image)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{path}: refused as a decompression bomb ({_one_line(exc)})") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image Pillow can read (or an empty file)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read image ({_one_line(exc)})") from None
    if rgb.size == 0:
        raise ValueError(f"{path}: empty image")
    return rgb, orientation


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a photo for display: ``(rgb, orientation)``.

    ``rgb`` is ``(H, W, 3)`` uint8 with the EXIF orientation already applied; ``orientation`` is
    the EXIF orientation found (1-8; 1 when absent or out of range). Any problem with the file
    (missing, not an image, truncated, decompression bomb) raises ValueError.
    """
    rgb, orientation = _read_stored(Path(path))
    return _apply_orientation(rgb, orientation), orientation


def load_image(
    path: str | os.PathLike,
    camera: Camera | None = None,
    camera_grid: Literal["displayed", "stored"] = "displayed",
) -> tuple[np.ndarray, Camera | None, int]:
    """``read_image`` plus the camera of the returned pixels: ``(rgb, camera, orientation)``.

    ``camera``, if given, describes by default the image *as displayed* (EXIF orientation
    applied), which is how OpenCV's ``imread`` and Metric3D read images and so how most
    calibrations and annotation files are made; it must match the displayed size.
    With ``camera_grid="stored"`` it describes the stored pixel grid (a sensor calibration)
    and is returned rotated by the EXIF orientation.
    """
    path = Path(path)
    rgb, orientation = _read_stored(path)
    if camera_grid not in ("displayed", "stored"):
        raise ValueError(f"camera_grid must be 'displayed' or 'stored', got {camera_grid!r}")
    if camera_grid == "stored":
        oriented = _apply_orientation(rgb, orientation)
        grid, rgb = rgb, oriented
    else:
        rgb = _apply_orientation(rgb, orientation)
        grid = rgb
    if camera is not None:
        grid_w, grid_h = grid.shape[1], grid.shape[0]
        if camera.size != (grid_w, grid_h):
            raise ValueError(
                f"{path}: camera is for {camera.width}x{camera.height} pixels but the "
                f"{camera_grid} image is {grid_w}x{grid_h}"
            )
        if camera_grid == "stored":
            camera = camera.rotated(orientation)
    return rgb, camera, orientation


# ------------------------------------------------------------------ depth maps
def _depth_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _DEPTH_FORMATS:
        raise ValueError(
            f"{path}: unknown depth format {suffix!r}; use {', '.join(_DEPTH_FORMATS)}"
        )
    return ".tif" if suffix == ".tiff" else suffix


def _check_scale(path: Path, depth_scale: float | None) -> float | None:
    if depth_scale is None:
        return None
    is_number = isinstance(depth_scale, (int, float, np.number)) and not isinstance(
        depth_scale, (bool, np.bool_)
    )
    scale = float(depth_scale) if is_number else float("nan")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"{path}: depth_scale must be a finite number > 0, got {depth_scale!r}")
    return scale


def read_depth(path: str | os.PathLike, depth_scale: float | None = None) -> np.ndarray:
    """Read a depth map: ``(H, W)`` float32 metres, 0 where invalid.

    ``.png`` must be 16-bit grey; ``depth_m = stored / depth_scale`` and ``depth_scale`` is
    required (e.g. 256 for KITTI, 1000 for millimetres). ``.npy`` and ``.tif``/``.tiff`` must
    hold a 2-D float array; they are divided by ``depth_scale`` when it is given (default:
    stored in metres). NaN, inf and negative values become 0.
    """
    path = Path(path)
    kind = _depth_format(path)
    depth_scale = _check_scale(path, depth_scale)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if kind == ".png":
        if depth_scale is None:
            raise ValueError(f"{path}: a 16-bit PNG depth map needs depth_scale")
        try:
            with Image.open(path) as image:
                image.load()
                mode, stored = image.mode, np.asarray(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read PNG ({_one_line(exc)})") from None
        if mode not in _SIXTEEN_BIT_MODES or stored.ndim != 2:
            raise ValueError(f"{path}: depth PNG must be 16-bit grey, got mode {mode}")
        return (stored.astype(np.float64) / depth_scale).astype(np.float32)
    try:
        stored = np.load(path, allow_pickle=False) if kind == ".npy" else tifffile.imread(path)
    except Exception as exc:  # numpy and tifffile raise many types for bad files
        raise ValueError(f"{path}: cannot read depth ({_one_line(exc)})") from None
    if stored.ndim != 2 or stored.dtype.kind != "f":
        raise ValueError(
            f"{path}: depth must be a 2-D float array, got {stored.dtype} {stored.shape}"
        )
    depth = stored.astype(np.float64) / (depth_scale or 1.0)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth.astype(np.float32)


def write_depth(
    path: str | os.PathLike,
    depth_m: np.ndarray,
    depth_scale: float | None = None,
    *,
    compress_level: int = 6,
) -> None:
    """Write an ``(H, W)`` depth map in metres, atomically; ``read_depth`` inverts it.

    The format follows the suffix. ``.png``: 16-bit grey, ``round(depth_m * depth_scale)``
    clipped to 0..65535, invalid (NaN, inf, <= 0) stored as 0; ``depth_scale`` defaults to
    1000 (millimetres); ``compress_level`` is zlib's (0-9: size against writing time, the
    values are the same). ``.npy``/``.tif``: float32 ``depth_m * depth_scale`` (default 1, i.e.
    metres), invalid stored as 0. Read back with the same ``depth_scale``.
    """
    path = Path(path)
    kind = _depth_format(path)
    depth_scale = _check_scale(path, depth_scale)
    depth = np.asarray(depth_m)
    if depth.ndim != 2 or depth.dtype.kind not in "fiu" or depth.size == 0:
        raise ValueError(f"{path}: depth_m must be a non-empty 2-D real array, got {depth.shape}")
    depth = depth.astype(np.float64)
    invalid = ~np.isfinite(depth) | (depth <= 0)
    if kind == ".png":
        scaled = np.rint(np.where(invalid, 0.0, depth) * (depth_scale or 1000.0))
        stored = np.clip(scaled, 0, 65535).astype(np.uint16)
        with atomic_write(path) as tmp:
            Image.fromarray(stored).save(tmp, format="PNG", compress_level=compress_level)
        return
    stored = np.where(invalid, 0.0, depth * (depth_scale or 1.0)).astype(np.float32)
    with atomic_write(path) as tmp:
        if kind == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, stored, allow_pickle=False)
        else:
            tifffile.imwrite(tmp, stored, compression="zlib")


# ------------------------------------------------------------------ point clouds
def write_ply(
    path: str | os.PathLike,
    points: np.ndarray,
    colors: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> int:
    """Write a binary little-endian PLY point cloud atomically; return the number of points.

    ``points``: ``(H, W, 3)`` or ``(N, 3)`` in metres, stored as float32 ``x y z``.
    ``colors``: same leading shape, uint8, stored as ``red green blue``.
    ``normals``: same leading shape, stored as float32 ``nx ny nz``.
    ``mask``: bool with the leading shape; only ``True`` points are written. Every written
    point must be finite (mask out invalid depth).
    """
    path = Path(path)
    xyz = np.asarray(points)
    if xyz.ndim not in (2, 3) or xyz.shape[-1] != 3 or xyz.dtype.kind not in "fiu":
        raise ValueError(f"{path}: points must be (H, W, 3) or (N, 3) numbers, got {xyz.shape}")
    lead = xyz.shape[:-1]
    select = np.ones(lead, dtype=bool) if mask is None else np.asarray(mask)
    if select.shape != lead or select.dtype != bool:
        raise ValueError(
            f"{path}: mask must be bool of shape {lead}, got {select.dtype} {select.shape}"
        )
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    columns = {"xyz": xyz[select]}
    if colors is not None:
        rgb = np.asarray(colors)
        if rgb.shape != xyz.shape or rgb.dtype != np.uint8:
            raise ValueError(f"{path}: colors must be uint8 of shape {xyz.shape}, got {rgb.shape}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        columns["rgb"] = rgb[select]
    if normals is not None:
        nrm = np.asarray(normals)
        if nrm.shape != xyz.shape or nrm.dtype.kind not in "fiu":
            raise ValueError(
                f"{path}: normals must be numbers of shape {xyz.shape}, got {nrm.shape}"
            )
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
        columns["normals"] = nrm[select]
    if not np.all(np.isfinite(columns["xyz"])):
        raise ValueError(f"{path}: points contain NaN or inf; mask them out")
    body = np.empty(len(columns["xyz"]), dtype=np.dtype(fields))
    names = {"xyz": ("x", "y", "z"), "rgb": ("red", "green", "blue"), "normals": ("nx", "ny", "nz")}
    for key, values in columns.items():
        for axis, name in enumerate(names[key]):
            body[name] = values[:, axis]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(body)}"]
    header += [f"property {'uchar' if kind == 'u1' else 'float'} {name}" for name, kind in fields]
    header.append("end_header")
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        handle.write(body.tobytes())
    return len(body)
