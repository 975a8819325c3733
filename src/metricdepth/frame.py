"""An image with its camera and optional depth labels, and the operations that move them together.

Every operation returns a new ``Frame`` whose camera is updated exactly (see
``metricdepth.camera`` for the pixel convention) and whose depth and validity mask are
resampled without ever turning an invalid pixel into a valid one:

- images are resized with OpenCV's bilinear filter (``INTER_LINEAR``; on uint8 this is the
  fixed-point resize Metric3D's preprocessing uses, which parity needs);
- dense depth is resized by nearest neighbour on pixel centres
  (source index ``floor((dst + 0.5) * src_size / dst_size)``);
- sparse depth (LiDAR) can instead be *scattered*: each valid pixel lands on the target pixel
  that contains its centre, the nearest depth wins a collision, and pixels nothing lands on
  stay invalid. Downscaled, a target pixel holds the minimum valid depth among the source
  pixels whose centres it contains (min-pooling over valid pixels only: the nearest surface
  wins, as a LiDAR return would, and nothing is blended); upscaled, every point keeps one
  pixel and the rest stay invalid (no point is copied onto its neighbours);
- optional semantic labels (``sem``) and ground-truth normals (``normal``) always follow by
  nearest neighbour (also when depth is scattered); padding gives them ``-1`` and ``0``, and
  a mirror negates the normal component of the mirrored axis (a transpose swaps x and y),
  exactly as the 3-D frame is mirrored.

Depth here is whatever the caller stores (metres before the canonical transform, canonical
metres after it); these operations never change depth values.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from metricdepth.camera import Camera, exif_steps

#: Metric3D's semantic id of sky (``sem == SKY_ID``); ``-1`` means "no label".
SKY_ID = 142


@dataclass(frozen=True, eq=False)
class Frame:
    """An image, its camera and optional depth labels.

    Attributes:
        image: (H, W, C) array, usually RGB uint8.
        camera: the camera of ``image`` (its size must be W x H).
        depth: (H, W) float32 depth, 0 where invalid, or None.
        mask: (H, W) bool, True where ``depth`` is valid; derived from ``depth`` when omitted
            (finite and > 0). Invalid depth values are stored as 0.
        sem: (H, W) int32 semantic labels or None: ``SKY_ID`` (142) is sky, ``-1`` no label.
        normal: (H, W, 3) float32 unit normals in the camera frame (x right, y down, z
            forward) or None; ``(0, 0, 0)`` where there is none. Given vectors are
            normalised; non-finite or zero ones become 0.
    """

    image: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    sem: np.ndarray | None = None
    normal: np.ndarray | None = None

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3:
            raise ValueError(f"Frame.image must be (H, W, C), got shape {image.shape}")
        height, width = image.shape[:2]
        if (width, height) != self.camera.size:
            raise ValueError(
                f"Frame.image is {width}x{height} but its camera is for "
                f"{self.camera.width}x{self.camera.height}"
            )
        object.__setattr__(self, "image", image)
        if self.sem is not None:
            sem = np.asarray(self.sem)
            if sem.shape != (height, width) or sem.dtype.kind not in "iub":
                raise ValueError(
                    f"Frame.sem must be {height}x{width} integers, got {sem.dtype} {sem.shape}"
                )
            object.__setattr__(self, "sem", sem.astype(np.int32))
        if self.normal is not None:
            object.__setattr__(self, "normal", _unit_normals(self.normal, height, width))
        if self.depth is None:
            if self.mask is not None:
                raise ValueError("Frame.mask needs a depth map")
            return
        depth = np.asarray(self.depth, dtype=np.float32)
        if depth.shape != (height, width):
            raise ValueError(f"Frame.depth must be {height}x{width}, got shape {depth.shape}")
        valid = np.isfinite(depth) & (depth > 0)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.shape != (height, width):
                raise ValueError(f"Frame.mask must be {height}x{width}, got shape {mask.shape}")
            valid &= mask.astype(bool)
        object.__setattr__(self, "depth", np.where(valid, depth, np.float32(0)))
        object.__setattr__(self, "mask", valid)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return self.camera.size


def resize(frame: Frame, width: int, height: int, *, sparse: bool = False) -> Frame:
    """Resize to ``width x height``: bilinear image, nearest (or scattered) depth, exact camera."""
    camera = frame.camera.resized(width, height)
    image = cv2.resize(frame.image, (camera.width, camera.height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:  # OpenCV drops a single channel axis
        image = image[:, :, None]
    rows = _nearest_index(frame.camera.height, camera.height)
    cols = _nearest_index(frame.camera.width, camera.width)
    pick = np.ix_(rows, cols)
    sem = None if frame.sem is None else frame.sem[pick]
    normal = None if frame.normal is None else frame.normal[pick]
    if frame.depth is None:
        return _trusted(image, camera, None, None, sem, normal)
    if sparse:
        depth = _scatter(frame.depth, frame.mask, camera.width, camera.height)
        return _trusted(image, camera, depth, depth > 0, sem, normal)
    return _trusted(image, camera, frame.depth[pick], frame.mask[pick], sem, normal)


def crop(frame: Frame, left: int, top: int, width: int, height: int) -> Frame:
    """The window ``[left, left+width) x [top, top+height)``, which must lie inside the image."""
    camera = frame.camera.cropped(left, top, width, height)
    window = (slice(top, top + height), slice(left, left + width))
    return _with(frame, camera, window)


def pad(
    frame: Frame,
    left: int = 0,
    top: int = 0,
    right: int = 0,
    bottom: int = 0,
    *,
    pad_value: tuple[float, ...] | float = 0,
) -> Frame:
    """Add borders; the image border gets ``pad_value``, depth there is invalid."""
    if not (left or top or right or bottom):
        return frame
    camera = frame.camera.padded(left, top, right, bottom)
    channels = frame.image.shape[2]
    image = np.empty((camera.height, camera.width, channels), dtype=frame.image.dtype)
    image[...] = np.asarray(pad_value, dtype=frame.image.dtype)
    window = (slice(top, top + frame.camera.height), slice(left, left + frame.camera.width))
    image[window] = frame.image
    sem = normal = depth = mask = None
    if frame.sem is not None:
        sem = np.full((camera.height, camera.width), -1, dtype=np.int32)
        sem[window] = frame.sem
    if frame.normal is not None:
        normal = np.zeros((camera.height, camera.width, 3), dtype=np.float32)
        normal[window] = frame.normal
    if frame.depth is not None:
        depth = np.zeros((camera.height, camera.width), dtype=np.float32)
        depth[window] = frame.depth
        mask = np.zeros((camera.height, camera.width), dtype=bool)
        mask[window] = frame.mask
    return _trusted(image, camera, depth, mask, sem, normal)


def place(
    frame: Frame,
    top: int,
    left: int,
    height: int,
    width: int,
    *,
    pad_value: tuple[float, ...] | float = 0,
) -> Frame:
    """Put the image on a ``height x width`` canvas with its pixel (0, 0) at canvas (top, left).

    Negative offsets or a canvas smaller than the image crop it; the rest is padding.
    """
    cut_top, cut_left = max(0, -top), max(0, -left)
    keep_h = min(frame.camera.height - cut_top, height - max(0, top))
    keep_w = min(frame.camera.width - cut_left, width - max(0, left))
    if keep_h <= 0 or keep_w <= 0:
        raise ValueError(
            f"placing a {frame.camera.width}x{frame.camera.height} image at ({left}, {top}) "
            f"on a {width}x{height} canvas leaves no image pixel"
        )
    inner = crop(frame, cut_left, cut_top, keep_w, keep_h)
    pad_top, pad_left = max(0, top), max(0, left)
    return pad(
        inner,
        pad_left,
        pad_top,
        width - pad_left - keep_w,
        height - pad_top - keep_h,
        pad_value=pad_value,
    )


def flip(frame: Frame, vertical: bool = False) -> Frame:
    """Mirror left-right (or top-bottom)."""
    window = (
        (slice(None, None, -1), slice(None)) if vertical else (slice(None), slice(None, None, -1))
    )
    flipped = _with(frame, frame.camera.flipped(vertical), window)
    if flipped.normal is not None:  # the mirrored axis of the 3-D frame changes sign
        flipped.normal[..., 1 if vertical else 0] *= -1
    return flipped


def rotate(frame: Frame, orientation: int) -> Frame:
    """Apply EXIF ``orientation`` (1-8): the same transform as ``Camera.rotated``."""
    transpose, flip_h, flip_v = exif_steps(orientation)
    if transpose:

        def swap(array: np.ndarray | None, axes: tuple[int, ...] = (1, 0)) -> np.ndarray | None:
            return None if array is None else np.ascontiguousarray(array.transpose(axes))

        normal = swap(frame.normal, (1, 0, 2))
        frame = _trusted(
            swap(frame.image, (1, 0, 2)), frame.camera.transposed(), swap(frame.depth),
            swap(frame.mask), swap(frame.sem), None if normal is None else normal[..., [1, 0, 2]],
        )  # fmt: skip
    if flip_h:
        frame = flip(frame)
    if flip_v:
        frame = flip(frame, vertical=True)
    return frame


def with_depth(frame: Frame, depth: np.ndarray, sem: np.ndarray | None = None) -> Frame:
    """``frame`` with ``depth`` (H, W) float32 (and ``sem``, if given) in place of its own.

    The mask becomes ``frame.mask & (depth > 0)``: a pixel can only lose validity, so
    ``depth`` may zero labels (or scale them by a positive factor) but never adds any.
    Image, camera and normals are kept as they are (not checked or normalised again).
    """
    if frame.depth is None or depth.shape != frame.depth.shape:
        raise ValueError("with_depth: the frame has no depth of that shape to replace")
    mask = frame.mask & (depth > 0)
    depth = np.where(mask, depth, np.float32(0)).astype(np.float32, copy=False)
    if sem is None:
        sem = frame.sem
    elif sem.shape != depth.shape:
        raise ValueError(f"with_depth: sem must be {depth.shape}, got {sem.shape}")
    else:
        sem = sem.astype(np.int32, copy=False)
    return _trusted(frame.image, frame.camera, depth, mask, sem, frame.normal)


def _with(frame: Frame, camera: Camera, window: tuple[slice, slice]) -> Frame:
    def cut(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else np.ascontiguousarray(array[window])

    return _trusted(
        cut(frame.image), camera, cut(frame.depth), cut(frame.mask), cut(frame.sem),
        cut(frame.normal),
    )  # fmt: skip


def _trusted(
    image: np.ndarray,
    camera: Camera,
    depth: np.ndarray | None,
    mask: np.ndarray | None,
    sem: np.ndarray | None = None,
    normal: np.ndarray | None = None,
) -> Frame:
    """A ``Frame`` from parts of a valid one (its checks already hold: sizes match, depth is
    0 exactly where ``mask`` is False, labels typed), without checking them again."""
    frame = object.__new__(Frame)
    for name, value in (
        ("image", image), ("camera", camera), ("depth", depth), ("mask", mask), ("sem", sem),
        ("normal", normal),
    ):  # fmt: skip
        object.__setattr__(frame, name, value)
    return frame


def _unit_normals(normal: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 unit vectors; zero, non-finite or missing ones become 0."""
    normal = np.asarray(normal)
    if normal.shape != (height, width, 3) or normal.dtype.kind not in "fiu":
        raise ValueError(
            f"Frame.normal must be {height}x{width}x3 numbers, got {normal.dtype} {normal.shape}"
        )
    normal = normal.astype(np.float32)
    length = np.sqrt(np.einsum("hwc,hwc->hw", normal, normal))
    good = np.isfinite(length) & (length > 1e-6)
    out = np.zeros_like(normal)
    np.divide(normal, length[..., None], out=out, where=good[..., None])
    return out


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel centre (pixel-centre nearest neighbour)."""
    index = np.floor((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.int64)
    return np.clip(index, 0, src - 1)


def _scatter(depth: np.ndarray, mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Move each valid depth pixel to the target pixel containing its centre; nearest wins."""
    rows, cols = np.nonzero(mask)
    src_h, src_w = depth.shape
    new_rows = np.floor((rows + 0.5) * (height / src_h)).astype(np.int64)
    new_cols = np.floor((cols + 0.5) * (width / src_w)).astype(np.int64)
    inside = (new_rows >= 0) & (new_rows < height) & (new_cols >= 0) & (new_cols < width)
    target = np.full(height * width, np.inf, dtype=np.float32)
    np.minimum.at(target, new_rows[inside] * width + new_cols[inside], depth[rows, cols][inside])
    target[~np.isfinite(target)] = 0
    return target.reshape(height, width)
