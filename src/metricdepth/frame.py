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
  stay invalid.

Depth here is whatever the caller stores (metres before the canonical transform, canonical
metres after it); these operations never change depth values.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from metricdepth.camera import Camera, exif_steps


@dataclass(frozen=True, eq=False)
class Frame:
    """An image, its camera and optional depth labels.

    Attributes:
        image: (H, W, C) array, usually RGB uint8.
        camera: the camera of ``image`` (its size must be W x H).
        depth: (H, W) float32 depth, 0 where invalid, or None.
        mask: (H, W) bool, True where ``depth`` is valid; derived from ``depth`` when omitted
            (finite and > 0). Invalid depth values are stored as 0.
    """

    image: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None

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
    if frame.depth is None:
        return Frame(image, camera)
    if sparse:
        depth = _scatter(frame.depth, frame.mask, camera.width, camera.height)
        return Frame(image, camera, depth)
    rows = _nearest_index(frame.camera.height, camera.height)
    cols = _nearest_index(frame.camera.width, camera.width)
    pick = np.ix_(rows, cols)
    return _trusted(image, camera, frame.depth[pick], frame.mask[pick])


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
    if frame.depth is None:
        return Frame(image, camera)
    depth = np.zeros((camera.height, camera.width), dtype=np.float32)
    depth[window] = frame.depth
    mask = np.zeros((camera.height, camera.width), dtype=bool)
    mask[window] = frame.mask
    return _trusted(image, camera, depth, mask)


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
    return _with(frame, frame.camera.flipped(vertical), window)


def rotate(frame: Frame, orientation: int) -> Frame:
    """Apply EXIF ``orientation`` (1-8): the same transform as ``Camera.rotated``."""
    transpose, flip_h, flip_v = exif_steps(orientation)
    if transpose:
        frame = Frame(
            np.ascontiguousarray(frame.image.transpose(1, 0, 2)),
            frame.camera.transposed(),
            None if frame.depth is None else frame.depth.T,
            None if frame.mask is None else frame.mask.T,
        )
    if flip_h:
        frame = flip(frame)
    if flip_v:
        frame = flip(frame, vertical=True)
    return frame


def _with(frame: Frame, camera: Camera, window: tuple[slice, slice]) -> Frame:
    image = np.ascontiguousarray(frame.image[window])
    if frame.depth is None:
        return Frame(image, camera)
    depth = np.ascontiguousarray(frame.depth[window])
    return _trusted(image, camera, depth, np.ascontiguousarray(frame.mask[window]))


def _trusted(image: np.ndarray, camera: Camera, depth: np.ndarray, mask: np.ndarray) -> Frame:
    """A ``Frame`` from parts of a valid one (its checks already hold: sizes match, depth is
    0 exactly where ``mask`` is False), without checking them again."""
    frame = object.__new__(Frame)
    for name, value in (("image", image), ("camera", camera), ("depth", depth), ("mask", mask)):
        object.__setattr__(frame, name, value)
    return frame


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
