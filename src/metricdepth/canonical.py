"""The canonical camera space transform: the one place where a depth scale is computed.

A network sees pixels, not cameras. Metric3D's fix: the network predicts the depth a canonical
camera of focal ``f_c`` (1000 px) would measure for the pixel grid *as fed to the network*.
If the image was resized by ``s``, that grid has the effective focal ``f_eff = focal * s``
(cropping and padding do not change it), and::

    depth_c = depth_m * f_c / f_eff        (labels, ``CanonicalRecord.label_scale``)
    depth_m = depth_c * f_eff / f_c        (predictions, ``CanonicalRecord.metric_scale``)

Inference, training and evaluation all go through the same two steps:

1. a *record* (``inference_record`` or ``training_record``) fixes the resize factor ``s``,
   the resized size, where the resized image sits on the network canvas (padding or crop),
   ``f_eff`` and the label scale;
2. ``to_canonical(frame, record)`` applies it to an image, its camera and optional depth
   labels; ``from_canonical(depth_c, record)`` undoes it on a prediction.

Metric3D's vocabulary maps onto the record: ``to_canonical_ratio = f_c / focal``,
``to_scale_ratio`` = any resize at fixed focal, and ``label_scale_factor`` = their quotient
``= f_c / f_eff = label_scale``. The training variants differ only in how ``s`` is chosen:

- ``"label"`` (CSTM_label, Metric3D v2): ``s = t`` (a random resize); labels x ``f_c/(focal t)``;
- ``"image"`` (CSTM_image): ``s = (f_c / focal) * t``, so ``f_eff = f_c * t``; labels / ``t``;
- ``"none"``: ``s = t``, metric labels (the baseline without the transform).

``f_eff`` uses the nominal factor ``s`` (a float), as Metric3D does; the camera of the
network canvas (``CanonicalRecord.camera_c``) is the exact camera of the realised integer
grid. The two focal lengths differ by less than one pixel in the resized size (< 1/h').

The arithmetic of an inference record (``fit_geometry``: fit scale, resized size, offsets;
``metric_scale``: ``f_eff / f_c``) is written once, for Python numbers or for torch tensors:
``inference_record`` runs it on floats, and the exported graph (``metricdepth.export``) on the
dynamic image size inside a traced graph, the same operations in the same order (float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from metricdepth import frame as frames
from metricdepth.camera import Camera, FocalMode, check_focal_mode
from metricdepth.frame import Frame

Variant = Literal["label", "image", "none"]
VARIANTS: tuple[str, ...] = ("label", "image", "none")
PAD_PLACEMENTS: tuple[str, ...] = ("center", "bottom_right")
RESIZE_MODES: tuple[str, ...] = ("fit", "focal", "none")

#: ImageNet mean and std in 0-255 RGB, Metric3D's normalisation.
METRIC3D_MEAN_RGB = (123.675, 116.28, 103.53)
METRIC3D_STD_RGB = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class CanonicalSpace:
    """What a model expects: canonical focal, input size, normalisation and padding.

    Attributes:
        focal_px: canonical focal length f_c in pixels.
        input_hw: network input (height, width) in pixels.
        mean_rgb, std_rgb: normalisation ``(x - mean) / std`` in 0-255 RGB.
        pad_rgb: uint8 colour of the padding. Metric3D pads with the mean colour on a uint8
            image, which OpenCV stores as (124, 116, 104), not exactly the mean.
        pad_placement: ``"center"`` (Metric3D: the floor half of the padding on top/left,
            the rest bottom/right) or ``"bottom_right"`` (all padding after the image).
        variant: how the model was trained (module docstring): ``"label"``, ``"image"`` or
            ``"none"``. It decides what ``from_canonical`` multiplies by.
        resize: how inference sizes the image: ``"fit"`` (Metric3D: keep-ratio resize to fit
            ``input_hw``, then pad), ``"focal"`` (``s = f_c / focal``, so ``f_eff = f_c``:
            CSTM_image) or ``"none"`` (``s = 1``). With ``"focal"`` and ``"none"`` the canvas
            is the resized image padded up to a multiple of ``size_multiple``.
        size_multiple: canvas sides are multiples of this (``"focal"``/``"none"`` only).
    """

    focal_px: float = 1000.0
    input_hw: tuple[int, int] = (616, 1064)
    mean_rgb: tuple[float, float, float] = METRIC3D_MEAN_RGB
    std_rgb: tuple[float, float, float] = METRIC3D_STD_RGB
    pad_rgb: tuple[int, int, int] = (124, 116, 104)
    pad_placement: str = "center"
    variant: str = "label"
    resize: str = "fit"
    size_multiple: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.focal_px) and self.focal_px > 0):
            raise ValueError(f"CanonicalSpace.focal_px must be > 0, got {self.focal_px!r}")
        hw = tuple(int(v) for v in self.input_hw)
        if len(hw) != 2 or min(hw) <= 0:
            raise ValueError(f"CanonicalSpace.input_hw must be (H, W) > 0, got {self.input_hw!r}")
        object.__setattr__(self, "input_hw", hw)
        if len(self.std_rgb) != 3 or min(self.std_rgb) <= 0 or len(self.mean_rgb) != 3:
            raise ValueError("CanonicalSpace.mean_rgb/std_rgb must be 3 values, std > 0")
        if len(self.pad_rgb) != 3 or not all(0 <= int(v) <= 255 for v in self.pad_rgb):
            raise ValueError(
                f"CanonicalSpace.pad_rgb must be 3 values in 0-255, got {self.pad_rgb}"
            )
        if self.pad_placement not in PAD_PLACEMENTS:
            raise ValueError(
                f"CanonicalSpace.pad_placement must be one of {', '.join(PAD_PLACEMENTS)}, "
                f"got {self.pad_placement!r}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"CanonicalSpace.resize must be one of {', '.join(RESIZE_MODES)}, "
                f"got {self.resize!r}"
            )
        if (self.variant == "image") != (self.resize == "focal"):
            raise ValueError(
                "CanonicalSpace: variant 'image' and resize 'focal' go together "
                f"(got variant {self.variant!r}, resize {self.resize!r})"
            )
        if isinstance(self.size_multiple, bool) or int(self.size_multiple) < 1:
            raise ValueError(
                f"CanonicalSpace.size_multiple must be >= 1, got {self.size_multiple!r}"
            )


@dataclass(frozen=True)
class CanonicalRecord:
    """How one image was moved into canonical space, and how to move a prediction back.

    Attributes:
        camera: camera of the original image.
        input_hw: (H_in, W_in) of the network canvas.
        scale: nominal resize factor s applied to the original image.
        resized_hw: (h', w') of the resized image.
        offset: (top, left) canvas position of the resized image's pixel (0, 0); negative
            values mean the resized image was cropped.
        focal_px: focal length of ``camera`` under ``focal_mode``.
        focal_mode: ``"mean"`` or ``"fx"`` (see ``Camera.focal``).
        canonical_focal_px: f_c.
        variant: ``"label"``, ``"image"`` or ``"none"`` (module docstring).
        space: the ``CanonicalSpace`` the record was made for (None for a hand-made record);
            a model refuses a record of another space (``check_space``).
    """

    camera: Camera
    input_hw: tuple[int, int]
    scale: float
    resized_hw: tuple[int, int]
    offset: tuple[int, int]
    focal_px: float
    focal_mode: str
    canonical_focal_px: float
    variant: str = "label"
    space: CanonicalSpace | None = field(default=None, compare=False, repr=False)

    @property
    def f_eff_px(self) -> float:
        """Effective focal of the network input grid: ``focal * s``."""
        return self.focal_px * self.scale

    @property
    def label_scale(self) -> float:
        """``depth_c = depth_m * label_scale`` (= f_c / f_eff; 1 for the ``none`` variant)."""
        return 1.0 if self.variant == "none" else self.canonical_focal_px / self.f_eff_px

    @property
    def metric_scale(self) -> float:
        """``depth_m = depth_c * metric_scale`` (= f_eff / f_c; 1 for the ``none`` variant)."""
        return metric_scale(self.focal_px, self.scale, self.canonical_focal_px, self.variant)

    @property
    def to_canonical_ratio(self) -> float:
        """Metric3D's ``to_canonical_ratio`` = f_c / focal."""
        return self.canonical_focal_px / self.focal_px

    @property
    def to_scale_ratio(self) -> float:
        """Metric3D's ``to_scale_ratio``: the resize at fixed focal (``t``)."""
        return self.scale / self.to_canonical_ratio if self.variant == "image" else self.scale

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """Padding ``(top, bottom, left, right)`` on the canvas, Metric3D's ``pad_info``."""
        (top, left), (h, w), (H, W) = self.offset, self.resized_hw, self.input_hw  # noqa: N806
        return (max(0, top), max(0, H - top - h), max(0, left), max(0, W - left - w))

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """Rows/columns of the resized image cut away ``(top, bottom, left, right)``."""
        (top, left), (h, w), (H, W) = self.offset, self.resized_hw, self.input_hw  # noqa: N806
        return (max(0, -top), max(0, top + h - H), max(0, -left), max(0, left + w - W))

    @property
    def camera_c(self) -> Camera:
        """Exact camera of the network canvas."""
        h, w = self.resized_hw
        resized = self.camera.resized(w, h)
        top, bottom, left, right = self.crop
        inner = resized.cropped(left, top, w - left - right, h - top - bottom)
        return inner.padded(*_ltrb(self.pad))

    def to_dict(self) -> dict:
        """A JSON-ready summary (what every output records)."""
        return {
            "camera": self.camera.to_dict(),
            "focal_mode": self.focal_mode,
            "focal_px": self.focal_px,
            "canonical_focal_px": self.canonical_focal_px,
            "input_hw": list(self.input_hw),
            "scale": self.scale,
            "resized_hw": list(self.resized_hw),
            "pad_tblr": list(self.pad),
            "crop_tblr": list(self.crop),
            "f_eff_px": self.f_eff_px,
            "label_scale": self.label_scale,
            "metric_scale": self.metric_scale,
            "variant": self.variant,
        }


def _minimum(a, b):
    """``min`` of two Python numbers, ``torch.minimum`` when either is a tensor."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def _ratio(a: float, b):
    """``a / b`` for a number ``a`` and a number or tensor ``b``. (``a / tensor`` in torch is
    ``a * (1 / tensor)``, rounded twice: 1064 / 3.0 gives 354.66666666666663, not Python's
    354.6666666666667; a tensor ``a`` makes it one correctly rounded division.)"""
    return torch.full_like(b, a) / b if isinstance(b, torch.Tensor) else a / b


def _truncate(x):
    """``int(x)`` of a number >= 0, or the same on a float tensor (int64)."""
    return torch.floor(x).long() if isinstance(x, torch.Tensor) else int(x)


def fit_geometry(hw, space: CanonicalSpace):
    """Where a ``"fit"`` space puts an (H, W) image: ``(scale, (h', w'), (top, left))``.

    ``s = min(H_in / H, W_in / W)``, ``(h', w') = (int(H s), int(W s))`` (truncation, as
    Metric3D), offsets by ``pad_offset``. ``hw`` holds Python numbers, or float64 0-dim tensors
    (the dynamic size inside an exported graph): the results are then tensors (int64 sizes).
    """
    H_in, W_in = space.input_hw  # noqa: N806
    scale = _minimum(_ratio(H_in, hw[0]), _ratio(W_in, hw[1]))
    size = (_truncate(hw[0] * scale), _truncate(hw[1] * scale))
    return scale, size, pad_offset(size, space.input_hw, space.pad_placement)


def pad_offset(size_hw, canvas_hw, placement: str):
    """``(top, left)`` of a resized image of ``size_hw`` on a canvas of ``canvas_hw``.

    ``"center"``: the floor half of the padding before (Metric3D), ``"bottom_right"``: none.
    Python ints or int64 tensors (``fit_geometry``).
    """
    (h, w), (H, W) = size_hw, canvas_hw  # noqa: N806
    if placement == "center":
        return ((H - h) // 2, (W - w) // 2)
    return (h * 0, w * 0)


def metric_scale(focal_px, scale, canonical_focal_px: float, variant: str):
    """``depth_m = depth_c * metric_scale``: ``f_eff / f_c = focal * s / f_c`` (1 for the
    ``none`` variant), on Python floats or float64 tensors (the exported graph)."""
    if variant == "none":
        return scale * 0 + 1 if isinstance(scale, torch.Tensor) else 1.0
    return focal_px * scale / canonical_focal_px


def inference_record(
    camera: Camera, space: CanonicalSpace, focal_mode: FocalMode = "mean"
) -> CanonicalRecord:
    """The record that moves one image into ``space`` at inference.

    ``space.resize == "fit"`` is Metric3D's: ``s = min(H_in / H, W_in / W)``, resized size
    ``(int(H s), int(W s))`` (truncation), padding placed by ``space.pad_placement``.
    ``"focal"`` resizes by ``s = f_c / focal`` (so ``f_eff = f_c``) and ``"none"`` keeps
    ``s = 1``; both pad the resized image up to a multiple of ``space.size_multiple``.
    """
    check_focal_mode(focal_mode)
    focal = camera.focal(focal_mode)
    if space.resize == "fit":
        H_in, W_in = space.input_hw  # noqa: N806
        scale, (h, w), offset = fit_geometry((camera.height, camera.width), space)
    else:
        scale = space.focal_px / focal if space.resize == "focal" else 1.0
        h, w = int(camera.height * scale + 0.5), int(camera.width * scale + 0.5)
        m = int(space.size_multiple)
        H_in, W_in = -(-h // m) * m, -(-w // m) * m  # noqa: N806
        offset = pad_offset((h, w), (H_in, W_in), space.pad_placement)
    if min(h, w) < 1:
        raise ValueError(f"resize by {scale:.4g} leaves no pixel of a {camera.size} image")
    return CanonicalRecord(
        camera, (H_in, W_in), scale, (h, w), offset, focal, focal_mode, space.focal_px,
        space.variant, space,
    )  # fmt: skip


def training_record(
    camera: Camera,
    space: CanonicalSpace,
    rng: np.random.Generator,
    *,
    variant: Variant | None = None,
    resize_range: tuple[float, float] = (1.0, 1.0),
    resize_prob: float = 1.0,
    crop: Literal["rand", "center"] = "rand",
    focal_mode: FocalMode = "mean",
    resize_base: Literal["none", "fit"] = "none",
) -> CanonicalRecord:
    """A training sample's record: random resize ``t``, then a crop or pad to ``input_hw``.

    With probability ``resize_prob`` ``t ~ U(resize_range)``, else ``t = 1`` (Metric3D:
    ``RandomResize``); ``s`` follows ``variant`` (default ``space.variant``; module docstring);
    ``resize_base="fit"`` multiplies ``t`` (``label``/``none``) by inference's ``fit`` factor
    ``min(H_in / H, W_in / W)``, so that training sees images resampled to the canvas exactly
    as ``inference_record`` with ``resize="fit"`` will give them, its truncated size included
    (``image`` keeps its focal resize). Otherwise the resized size is
    ``(int(H s + 0.5), int(W s + 0.5))``. A side longer than the canvas is cropped at a random
    (``"rand"``) or central offset; a shorter side is padded, floor half before (Metric3D's
    ``RandomCrop``).
    """
    check_focal_mode(focal_mode)
    variant = space.variant if variant is None else variant
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    low, high = float(resize_range[0]), float(resize_range[1])
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"resize_range must be 0 < low <= high, got {resize_range!r}")
    if crop not in ("rand", "center"):
        raise ValueError(f"crop must be 'rand' or 'center', got {crop!r}")
    if resize_base not in ("none", "fit"):
        raise ValueError(f"resize_base must be 'none' or 'fit', got {resize_base!r}")
    (H_in, W_in) = space.input_hw  # noqa: N806
    t = float(rng.uniform(low, high)) if rng.random() < resize_prob else 1.0
    focal = camera.focal(focal_mode)
    fit = resize_base == "fit" and variant != "image"
    if variant == "image":
        scale = t * space.focal_px / focal
    else:
        scale = t * min(H_in / camera.height, W_in / camera.width) if fit else t
    if fit:  # inference's fit truncates the size
        h, w = int(camera.height * scale), int(camera.width * scale)
    else:
        h, w = int(camera.height * scale + 0.5), int(camera.width * scale + 0.5)
    if min(h, w) < 1:
        raise ValueError(f"resize by {scale:.4g} leaves no pixel of a {camera.size} image")
    offset = (_axis_offset(h, H_in, rng, crop), _axis_offset(w, W_in, rng, crop))
    return CanonicalRecord(
        camera, space.input_hw, scale, (h, w), offset, focal, focal_mode, space.focal_px, variant,
        space,
    )  # fmt: skip


def to_canonical(
    frame: Frame,
    record: CanonicalRecord,
    *,
    pad_rgb: tuple[int, int, int] = (0, 0, 0),
    sparse: bool = False,
) -> Frame:
    """Apply ``record`` to an image, its camera and optional metric depth.

    Returns a frame on the network canvas: the image resized (bilinear) and placed with
    ``pad_rgb`` around it, its exact camera (``record.camera_c``), and, when ``frame`` has
    depth, canonical labels ``depth_c = depth_m * record.label_scale`` with a mask that
    excludes padding and invalid pixels. Depth is never interpolated: nearest neighbour, or
    with ``sparse`` (LiDAR) scattered, a valid-only min-pooling (``metricdepth.frame``).
    Semantic labels and normals follow by nearest neighbour (padding: -1 and 0).
    """
    if frame.camera != record.camera:
        raise ValueError("to_canonical: the frame's camera is not the record's camera")
    h, w = record.resized_hw
    moved = frames.resize(frame, w, h, sparse=sparse)
    top, left = record.offset
    canvas = frames.place(moved, top, left, *record.input_hw, pad_value=pad_rgb)
    if canvas.depth is None:
        return canvas
    return frames.with_depth(canvas, canvas.depth * np.float32(record.label_scale))


def normalize(image: np.ndarray, space: CanonicalSpace) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 (1, 3, H, W), ``(x - mean) / std`` in float32.

    Computed per channel in numpy (one pass each, no torch thread pool for a small canvas);
    float32 subtraction and division are correctly rounded, so the values are those of the
    same expression in torch, to the bit.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    out = np.empty((1, 3, height, width), np.float32)
    for c in range(3):
        channel = out[0, c]
        np.subtract(image[:, :, c], np.float32(space.mean_rgb[c]), out=channel, dtype=np.float32)
        np.divide(channel, np.float32(space.std_rgb[c]), out=channel)
    return torch.from_numpy(out)


def canonical_canvas(
    image: np.ndarray, camera: Camera, space: CanonicalSpace, focal_mode: FocalMode = "mean"
) -> tuple[np.ndarray, CanonicalRecord]:
    """``(canvas, record)``: the (H_in, W_in, 3) uint8 network canvas of an (H, W, 3) uint8
    image of ``camera`` (``inference_record``, then ``to_canonical`` padded with
    ``space.pad_rgb``); ``normalize`` makes the network input of it."""
    record = inference_record(camera, space, focal_mode)
    return to_canonical(Frame(image, camera), record, pad_rgb=space.pad_rgb).image, record


def prepare_input(
    image: np.ndarray,
    camera: Camera,
    space: CanonicalSpace | Any,
    focal_mode: FocalMode | None = None,
) -> tuple[torch.Tensor, CanonicalRecord]:
    """Inference pre-processing: keep-ratio resize, pad with ``space.pad_rgb``, normalise.

    The steps of ``metricdepth.predictor.Predictor.prepare`` (``canonical_canvas``, then
    ``normalize``) for a pinhole image, as a (1, 3, H_in, W_in) batch of one.

    Args:
        image: (H, W, 3) RGB uint8.
        camera: camera of ``image``.
        space: a loaded model (anything with ``spec.space``: its own canonical space, the way
            to call this), a ``ModelSpec`` or a ``CanonicalSpace``.
        focal_mode: ``"mean"`` or ``"fx"``; default: the model's (``"mean"`` for a space).
    Returns:
        ``(x, record)``: x is float32 (1, 3, H_in, W_in); ``record.space`` is the space used,
        which the model checks when given the record (``model(x, record)``).
    """
    space, mode = space_of(space)
    canvas, record = canonical_canvas(image, camera, space, focal_mode or mode)
    return normalize(canvas, space), record


#: What an exported graph reports of the record it used (its ``canonical`` output), in order.
GRAPH_RECORD = ("scale", "resized_h", "resized_w", "top", "left", "metric_scale")


def record_from_graph(numbers, record: CanonicalRecord) -> CanonicalRecord:
    """``record`` with the geometry an exported graph reports (``GRAPH_RECORD`` numbers).

    The camera, focal, focal mode and space are the caller's (what the graph was given); the
    resize factor, resized size and offsets are the graph's. ValueError when the graph's
    metric scale is not the record's (float32 rounding of the focal input aside): a graph
    exported for another canonical space or with other arithmetic.
    """
    values = [float(v) for v in np.asarray(numbers, dtype=np.float64).reshape(-1)]
    if len(values) != len(GRAPH_RECORD):
        raise ValueError(f"expected the {len(GRAPH_RECORD)} record numbers of an exported graph")
    scale, h, w, top, left, graph_metric = values
    made = replace(record, scale=scale, resized_hw=(int(h), int(w)), offset=(int(top), int(left)))
    if not math.isclose(graph_metric, made.metric_scale, rel_tol=1e-6):
        raise ValueError(
            f"the graph's metric scale {graph_metric:.7g} is not its record's "
            f"{made.metric_scale:.7g}: an exported graph of another canonical space"
        )
    return made


def space_of(target: CanonicalSpace | Any) -> tuple[CanonicalSpace, str]:
    """``(space, focal_mode)`` of a ``CanonicalSpace``, a ``ModelSpec`` or a loaded model."""
    if isinstance(target, CanonicalSpace):
        return target, "mean"
    spec = getattr(target, "spec", target)
    space = getattr(spec, "space", None)
    if not isinstance(space, CanonicalSpace):
        raise TypeError(
            f"expected a model, a ModelSpec or a CanonicalSpace, got {type(target).__name__}"
        )
    return space, getattr(spec, "focal_mode", "mean")


def _describe(space: CanonicalSpace) -> str:
    h, w = space.input_hw
    return f"f_c {space.focal_px:g} px on {h}x{w} ({space.variant}, resize {space.resize})"


def check_space(record: CanonicalRecord, space: CanonicalSpace, model: str = "the model") -> None:
    """ValueError unless ``record`` was made for ``space`` (the model's own canonical space).

    A record of another space gives a canvas the network was not trained on and a metric
    scale ``f_eff / f_c`` with the wrong ``f_c``: a wrong answer, never a warning. A record
    without its space (made by hand) is checked on what it holds: f_c, the variant and, for a
    ``"fit"`` space, the canvas size.
    """
    if record.space is not None:
        same = record.space == space
    else:
        same = record.canonical_focal_px == space.focal_px and record.variant == space.variant
        if space.resize == "fit":
            same = same and tuple(record.input_hw) == space.input_hw
    if not same:
        made = (
            _describe(record.space)
            if record.space is not None
            else (
                f"f_c {record.canonical_focal_px:g} px on "
                f"{record.input_hw[0]}x{record.input_hw[1]} ({record.variant})"
            )
        )
        raise ValueError(
            f"this input was prepared for another canonical space ({made}) than {model}'s "
            f"({_describe(space)}); prepare it with prepare_input(rgb, camera, model)"
        )


def fits_space(hw: tuple[int, int], space: CanonicalSpace) -> bool:
    """Whether an (H, W) canvas is one ``space`` makes (``input_hw`` for ``"fit"``, else a
    multiple of ``size_multiple``)."""
    hw = (int(hw[0]), int(hw[1]))
    if space.resize == "fit":
        return hw == space.input_hw
    return hw[0] % space.size_multiple == 0 and hw[1] % space.size_multiple == 0


def unpad(x, record: CanonicalRecord):
    """Cut the padding off a canvas-sized map (..., H_in, W_in) -> (..., h', w')."""
    if any(record.crop):
        raise ValueError("the record crops the image; only a padded canvas can be un-padded")
    if tuple(x.shape[-2:]) != record.input_hw:
        raise ValueError(
            f"expected (..., {record.input_hw[0]}, {record.input_hw[1]}), got {tuple(x.shape)}"
        )
    (top, left), (h, w) = record.offset, record.resized_hw
    return x[..., top : top + h, left : left + w]


def from_canonical(depth_c, record: CanonicalRecord):
    """Canonical network depth on the canvas -> metric depth at the original image size.

    Un-pads, resizes bilinearly (``align_corners=False``, float32, as Metric3D) to the
    original (H, W) and multiplies by ``record.metric_scale`` (= f_eff / f_c).

    Args:
        depth_c: (H_in, W_in), (B, H_in, W_in) or (B, 1, H_in, W_in); numpy or torch; or a
            model's output dict (its ``"depth_c"`` is taken).
    Returns:
        depth in metres, (..., H, W), same kind and leading shape as the input.
    """
    if isinstance(depth_c, Mapping):
        if "depth_c" not in depth_c:
            raise ValueError("from_canonical: the output dict has no 'depth_c'")
        depth_c = depth_c["depth_c"]
    is_numpy = isinstance(depth_c, np.ndarray)
    x = torch.from_numpy(depth_c) if is_numpy else depth_c
    lead = x.shape[:-2]
    x = unpad(x, record).reshape(-1, 1, *record.resized_hw).float()
    size = (record.camera.height, record.camera.width)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    depth_m = x.mul_(record.metric_scale).reshape(*lead, *size)
    return depth_m.numpy() if is_numpy else depth_m


def _axis_offset(size: int, target: int, rng: np.random.Generator, crop: str) -> int:
    if size <= target:
        return (target - size) // 2
    if crop == "center":
        return -((size - target) // 2)
    return -int(rng.integers(0, size - target + 1))


def _ltrb(pad_tblr: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    top, bottom, left, right = pad_tblr
    return (left, top, right, bottom)
