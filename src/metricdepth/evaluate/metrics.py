"""Depth-evaluation metrics and explicit evaluation protocols.

Everything here follows the evaluation of Metric3D (``training/mono/utils/avg_meter.py`` and
``do_test.py``; reference notes §4):

* metrics are computed **per image** over its valid pixels, then **averaged over images**
  (:func:`evaluate_image` + :func:`average_metrics`); this is not the same number as pooling all
  pixels of a data set together;
* the set of evaluated pixels depends on a :class:`Protocol`: the ground-truth depth caps, the
  crop (Eigen for NYU; Eigen or Garg for KITTI) and whether the prediction is median-aligned
  first.

Papers rarely say which protocol a table uses, and people fail to reproduce Metric3D's numbers
because of that (issues #178, #217, #113). So every report this module formats starts with the
protocol it was computed under (:func:`format_metrics`), and the presets say how they differ from
the Metric3D code.

All depths are in metres. Arrays may be numpy arrays or torch tensors (any dtype, any device);
they are copied to float64 numpy arrays before anything is computed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "PRED_EPS_M",
    "PROTOCOLS",
    "Protocol",
    "CROPS",
    "average_metrics",
    "crop_fractions",
    "depth_metrics",
    "eval_mask",
    "evaluate_image",
    "format_metrics",
    "median_scale",
    "protocol",
]

METRIC_NAMES: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "silog",
    "delta1",
    "delta2",
    "delta3",
)

PRED_EPS_M: float = 1e-6
"""Predictions below this value (metres), zero and negative ones included, are raised to it."""

CropName = Literal["none", "nyu-eigen", "kitti-eigen", "kitti-garg"]
AlignName = Literal["none", "median"]
CROPS: tuple[str, ...] = ("none", "nyu-eigen", "kitti-eigen", "kitti-garg")
"""Crop names a :class:`Protocol` accepts (see :func:`eval_mask` for each window)."""
_ALIGNS: tuple[str, ...] = ("none", "median")
# Short names, as ``protocol(name, crop=...)`` and ``metricdepth eval --crop`` take them, qualified
# by the data set of the preset (``nyu`` or ``kitti``).
_SHORT_CROPS: dict[tuple[str, str], str] = {
    ("nyu", "eigen"): "nyu-eigen",
    ("kitti", "eigen"): "kitti-eigen",
    ("kitti", "garg"): "kitti-garg",
}

# Eigen crop (NYU Depth v2), defined on the 480x640 frame: rows 45:471, cols 41:601
# (Metric3D nyu_dataset.py L178-185, and the usual community protocol).
_EIGEN_FRAME_HW = (480, 640)
_EIGEN_ROWS = (45, 471)
_EIGEN_COLS = (41, 601)

# KITTI crops, as fractions of the full frame (375x1242 for most of the Eigen split), applied as
# int(fraction * size):
# * Eigen (Eigen et al., NIPS 2014, as BTS/AdaBins/monodepth2 code reproduce it): rows
#   0.3324324..0.91351351, cols 0.0359477..0.96405229 -> rows 124:342, cols 44:1197 on 375x1242.
#   Metric3D's KITTI code (kitti_dataset.py process_depth) applies exactly these fractions, without
#   naming them; earlier metricdepth versions printed them as "garg crop", wrongly.
# * Garg (Garg et al., ECCV 2016): rows 0.40810811..0.99189189, cols 0.03594771..0.96405229 ->
#   rows 153:371, cols 44:1197 on 375x1242.
_KITTI_EIGEN_ROW_FRACS = (0.3324324, 0.91351351)
_KITTI_EIGEN_COL_FRACS = (0.0359477, 0.96405229)
_KITTI_GARG_ROW_FRACS = (0.40810811, 0.99189189)
_KITTI_GARG_COL_FRACS = (0.03594771, 0.96405229)


# --------------------------------------------------------------------------------------------
# Array helpers
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Copy a numpy array or torch tensor (any device) to a numpy array, without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a numeric array or tensor, got {type(x).__name__}")
    return arr


def _to_float64(x: Any, name: str) -> np.ndarray:
    return _to_numpy(x, name).astype(np.float64, copy=False)


def _to_bool_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    m = _to_numpy(mask, name)
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, expected {shape}")
    if m.dtype != np.bool_:
        raise TypeError(f"{name} must be boolean, got dtype {m.dtype}")
    return m


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred has shape {pred.shape} but gt has shape {gt.shape}; resize the prediction to "
            "the ground-truth size before evaluating"
        )


# --------------------------------------------------------------------------------------------
# Metrics of one image
# --------------------------------------------------------------------------------------------


def depth_metrics(pred_m: Any, gt_m: Any, mask: Any | None = None) -> dict[str, float]:
    """Depth metrics of ONE image, over its valid pixels.

    Args:
        pred_m: predicted depth in metres, (H, W) (any shape works if it matches ``gt_m``).
            numpy array or torch tensor.
        gt_m: ground-truth depth in metres, same shape. Pixels that are not finite or ``<= 0``
            are invalid (no ground truth) and are always skipped.
        mask: optional boolean array of the same shape; only pixels where it is True (and the
            ground truth is valid) are evaluated. Use :func:`eval_mask` to build it from a
            :class:`Protocol`.

    Returns:
        ``{name: value}`` for every name in :data:`METRIC_NAMES`, as Python floats, computed in
        float64 over the N evaluated pixels, with d the ground truth, d̂ the prediction and
        g = ln d̂ − ln d:

        * ``abs_rel``  = mean(|d̂ − d| / d)
        * ``sq_rel``   = mean((d̂ − d)² / d)                      (metres)
        * ``rmse``     = √mean((d̂ − d)²)                          (metres)
        * ``rmse_log`` = √mean(g²)
        * ``log10``    = mean(|log10 d̂ − log10 d|)
        * ``silog``    = √(mean(g²) − mean(g)²), the standard deviation of g. This is the plain
          value, **not ×100**: many papers (and the KITTI benchmark) report 100·silog. It is
          evaluated as √mean((g − mean g)²), the same quantity without the cancellation error.
        * ``delta{k}`` = fraction of pixels with max(d̂/d, d/d̂) < 1.25**k, k = 1, 2, 3.

    Non-positive predictions: predictions are clamped from below to :data:`PRED_EPS_M`
    (1e-6 m) **for every metric**, so a zero or negative prediction counts as "predicted
    ~nothing": it is heavily penalised by the log metrics and the deltas, and contributes
    ≈ d to |d̂ − d|. (Metric3D takes ``|pred|`` before evaluating and adds 1e-10 inside its
    logs; networks with a positive output never hit either rule.)

    Raises:
        ValueError: if the shapes differ, if no pixel is valid (the caller decides whether to
            skip the image), or if a prediction on an evaluated pixel is NaN or infinite.
    """
    pred = _to_float64(pred_m, "pred_m")
    gt = _to_float64(gt_m, "gt_m")
    _check_same_shape(pred, gt)

    valid = np.isfinite(gt) & (gt > 0)
    if mask is not None:
        valid &= _to_bool_mask(mask, gt.shape)
    n = int(valid.sum())
    if n == 0:
        raise ValueError(
            "no valid pixel to evaluate: the ground truth has no finite depth > 0 inside the "
            "mask (crop and depth caps)"
        )

    d = gt[valid]
    p = pred[valid]
    if not np.all(np.isfinite(p)):
        bad = int((~np.isfinite(p)).sum())
        raise ValueError(f"prediction is NaN or infinite on {bad} of the {n} evaluated pixels")
    p = np.maximum(p, PRED_EPS_M)

    diff = p - d
    g = np.log(p) - np.log(d)
    ratio = np.maximum(p / d, d / p)

    return {
        "abs_rel": float(np.mean(np.abs(diff) / d)),
        "sq_rel": float(np.mean(diff**2 / d)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean(g**2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(d)))),
        "silog": float(np.sqrt(np.mean((g - g.mean()) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


# --------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """Which pixels are evaluated, and how the prediction is aligned first.

    Attributes:
        name: short name printed with every result ("plain", "nyu", "kitti", ...).
        min_depth_m: ground-truth pixels with depth < this (metres) are not evaluated.
        max_depth_m: ground-truth pixels with depth > this (metres) are not evaluated; may be
            ``inf``. Both caps are inclusive: the kept range is [min_depth_m, max_depth_m].
            Only the ground truth is capped; predictions are NOT clipped to the caps (Metric3D
            does not clip them either; BTS/AdaBins-style scripts do).
        crop: "none", "nyu-eigen" (rows 45:471, cols 41:601 of 480x640), "kitti-eigen" (the
            Metric3D/BTS fractions, rows 124:342 of 375x1242) or "kitti-garg" (rows 153:371);
            see :func:`eval_mask`. The old name "eigen" is read as "nyu-eigen" (same window);
            the old name "garg" is refused, because it stood for the KITTI *Eigen* window.
        align: "none" (metric depth, as in Metric3D's main tables) or "median" (scale the
            prediction by median(gt)/median(pred) over the evaluated pixels, per image).
    """

    name: str
    min_depth_m: float
    max_depth_m: float
    crop: CropName
    align: AlignName

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a protocol needs a non-empty name")
        lo, hi = float(self.min_depth_m), float(self.max_depth_m)
        if math.isnan(lo) or math.isnan(hi) or lo < 0 or not lo < hi:
            raise ValueError(
                f"protocol {self.name}: need 0 <= min_depth_m < max_depth_m, got "
                f"[{self.min_depth_m}, {self.max_depth_m}]"
            )
        if self.crop == "eigen":  # name used before KITTI had two crops; same window
            object.__setattr__(self, "crop", "nyu-eigen")
        if self.crop == "garg":
            raise ValueError(
                f"protocol {self.name}: crop 'garg' is ambiguous (earlier metricdepth versions "
                "used that name for the KITTI Eigen window, rows 0.3324-0.9135); say "
                "'kitti-eigen' for that window or 'kitti-garg' for Garg's (rows 0.4081-0.9919)"
            )
        if self.crop not in CROPS:
            raise ValueError(
                f"protocol {self.name}: crop must be one of {CROPS}, got {self.crop!r}"
            )
        if self.align not in _ALIGNS:
            raise ValueError(
                f"protocol {self.name}: align must be one of {_ALIGNS}, got {self.align!r}"
            )
        object.__setattr__(self, "min_depth_m", lo)
        object.__setattr__(self, "max_depth_m", hi)

    def describe(self) -> str:
        """One line, e.g. ``protocol nyu: nyu-eigen crop, depth in [0.001, 10] m, no alignment``."""
        crop = "no crop" if self.crop == "none" else f"{self.crop} crop"
        align = "no alignment" if self.align == "none" else "median scale alignment per image"
        return (
            f"protocol {self.name}: {crop}, depth in [{self.min_depth_m:g}, {self.max_depth_m:g}]"
            f" m, {align}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (``Protocol(**p.to_dict()) == p``).

        ``max_depth_m`` may be ``inf``; ``json.dumps`` writes it as ``Infinity``.
        """
        return dataclasses.asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    # No crop; only drops missing ground truth (<= 0, and below 1 mm). Give your own caps with
    # protocol("plain", min_depth_m=..., max_depth_m=...).
    "plain": Protocol("plain", 1e-3, math.inf, "none", "none"),
    # The usual community NYU protocol: Eigen crop, 1e-3..10 m. Metric3D's own test code uses the
    # Eigen crop but caps the ground truth at [0.1, 200] m instead (no 10 m cap); to reproduce its
    # code use protocol("nyu", min_depth_m=0.1, max_depth_m=200).
    "nyu": Protocol("nyu", 1e-3, 10.0, "nyu-eigen", "none"),
    # KITTI Eigen split, 1e-3..80 m, by default with the Eigen crop that Metric3D's code (and BTS)
    # applies; protocol("kitti", crop="garg") for the Garg crop. Metric3D's code caps at
    # [0.1, 200] m instead (no 80 m cap): protocol("kitti", min_depth_m=0.1, max_depth_m=200).
    "kitti": Protocol("kitti", 1e-3, 80.0, "kitti-eigen", "none"),
}
"""Preset protocols.

* ``plain``: no crop, ground truth in [1e-3, inf] m, no alignment.
* ``nyu``: Eigen crop, [1e-3, 10] m, no alignment (the usual community protocol). **Metric3D's
  code does not cap at 10 m**: it keeps ground truth in [0.1, 200] m (``clip_depth_range`` in all
  its test configs, reference §4).
* ``kitti``: KITTI Eigen crop (the fractions of Metric3D's and BTS's code), [1e-3, 80] m, no
  alignment; ``crop="garg"`` gives the Garg crop instead. **Metric3D's code does not cap at
  80 m** either ([0.1, 200] m).
"""


def protocol(
    name: str,
    min_depth_m: float | None = None,
    max_depth_m: float | None = None,
    align: AlignName = "none",
    crop: str | None = None,
) -> Protocol:
    """A preset from :data:`PROTOCOLS` with the given overrides.

    Example: ``protocol("nyu", 0.1, 200)`` is the NYU setting of Metric3D's own test code,
    ``protocol("kitti", align="median")`` the scale-aligned KITTI row and
    ``protocol("kitti", crop="garg")`` KITTI with the Garg crop.

    Args:
        name: key of :data:`PROTOCOLS`; kept as the protocol's name.
        min_depth_m / max_depth_m: replace the preset caps (metres) when not None.
        align: "none" or "median".
        crop: replaces the preset's crop when not None: a name of :data:`CROPS`, or the short
            names "eigen" (``nyu`` and ``kitti``) and "garg" (``kitti``), read for the preset's
            data set.

    Raises:
        ValueError: unknown name, invalid caps / align, or a crop the preset has no such
            window for.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    base = PROTOCOLS[name]
    if crop is None:
        crop = base.crop
    elif crop not in CROPS:
        full = _SHORT_CROPS.get((name, crop))
        if full is None:
            shorts = sorted(short for preset, short in _SHORT_CROPS if preset == name)
            raise ValueError(
                f"protocol {name} has no crop {crop!r}; choose one of "
                f"{', '.join(shorts + list(CROPS))}"
            )
        crop = full
    return dataclasses.replace(
        base,
        min_depth_m=base.min_depth_m if min_depth_m is None else min_depth_m,
        max_depth_m=base.max_depth_m if max_depth_m is None else max_depth_m,
        align=align,
        crop=crop,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# Masks, alignment, per-image evaluation and averaging
# --------------------------------------------------------------------------------------------


def crop_fractions(crop: str) -> tuple[float, float, float, float] | None:
    """(row0, row1, col0, col1) of a crop window as fractions of the image size; None for "none".

    ``"nyu-eigen"`` gives 45/480, 471/480, 41/640, 601/640 (its window is computed in integers,
    see :func:`eval_mask`); the KITTI crops give the fractions their code uses.
    """
    if crop == "none":
        return None
    if crop == "nyu-eigen":
        fh, fw = _EIGEN_FRAME_HW
        return (
            _EIGEN_ROWS[0] / fh,
            _EIGEN_ROWS[1] / fh,
            _EIGEN_COLS[0] / fw,
            _EIGEN_COLS[1] / fw,
        )
    if crop == "kitti-eigen":
        return (*_KITTI_EIGEN_ROW_FRACS, *_KITTI_EIGEN_COL_FRACS)
    if crop == "kitti-garg":
        return (*_KITTI_GARG_ROW_FRACS, *_KITTI_GARG_COL_FRACS)
    raise ValueError(f"no crop window for crop {crop!r}")


def _crop_window(crop: str, h: int, w: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the crop window for an h x w image (end exclusive)."""
    if crop == "nyu-eigen":
        fh, fw = _EIGEN_FRAME_HW
        # Integer arithmetic: exactly 45:471, 41:601 on 480x640; floor of the scaled bounds else.
        return (
            _EIGEN_ROWS[0] * h // fh,
            _EIGEN_ROWS[1] * h // fh,
            _EIGEN_COLS[0] * w // fw,
            _EIGEN_COLS[1] * w // fw,
        )
    fractions = crop_fractions(crop)
    if fractions is None:
        raise ValueError(f"no crop window for crop {crop!r}")
    r0, r1, c0, c1 = fractions
    return int(r0 * h), int(r1 * h), int(c0 * w), int(c1 * w)


def eval_mask(gt_m: Any, protocol: Protocol) -> np.ndarray:
    """Boolean mask of the pixels a protocol evaluates.

    A pixel is kept when its ground truth is finite, > 0, within
    [protocol.min_depth_m, protocol.max_depth_m] (inclusive), and inside the crop:

    * ``"nyu-eigen"``: rows 45:471, cols 41:601 of a 480x640 image. Another size H x W gets the
      same fractions, floored: rows 45·H//480 : 471·H//480, cols 41·W//640 : 601·W//640.
    * ``"kitti-eigen"``: the KITTI Eigen crop as Metric3D's and BTS's code apply it, rows
      int(0.3324324·H):int(0.91351351·H), cols int(0.0359477·W):int(0.96405229·W) — on
      375x1242, rows 124:342 and cols 44:1197.
    * ``"kitti-garg"``: the Garg crop, rows int(0.40810811·H):int(0.99189189·H), cols
      int(0.03594771·W):int(0.96405229·W) — on 375x1242, rows 153:371 and cols 44:1197.

    Apply the KITTI crops to the full-size ground truth: Metric3D crops the full frame, then
    cuts both image and ground truth to columns 43:1197 for inference, which leaves the crop
    unchanged; computing the fractions on the already cut 1154-wide frame would give a
    different window.

    Args:
        gt_m: ground-truth depth (H, W) in metres (any shape if ``protocol.crop == "none"``).
        protocol: the :class:`Protocol`.

    Returns:
        bool numpy array with the shape of ``gt_m``.
    """
    gt = _to_float64(gt_m, "gt_m")
    with np.errstate(invalid="ignore"):
        mask = (
            np.isfinite(gt) & (gt > 0) & (gt >= protocol.min_depth_m) & (gt <= protocol.max_depth_m)
        )
    if protocol.crop != "none":
        if gt.ndim != 2:
            raise ValueError(f"the {protocol.crop} crop needs a (H, W) depth map, got {gt.shape}")
        r0, r1, c0, c1 = _crop_window(protocol.crop, *gt.shape)
        crop = np.zeros_like(mask)
        crop[r0:r1, c0:c1] = True
        mask &= crop
    return mask


def median_scale(pred_m: Any, gt_m: Any, mask: Any) -> float:
    """Median scale factor median(gt) / median(pred) over the pixels of ``mask``.

    Multiply the prediction by it to median-align it to the ground truth (reference §1.4, §4;
    Metric3D's "w scale" rows use the pixels with gt > 0).

    Args:
        pred_m: predicted depth (H, W), metres.
        gt_m: ground-truth depth (H, W), metres.
        mask: boolean (H, W); should only contain valid ground truth (e.g. from :func:`eval_mask`).

    Raises:
        ValueError: empty mask, non-finite values under the mask, or median(pred) <= 0.
    """
    pred = _to_float64(pred_m, "pred_m")
    gt = _to_float64(gt_m, "gt_m")
    _check_same_shape(pred, gt)
    m = _to_bool_mask(mask, gt.shape)
    if not m.any():
        raise ValueError("median_scale: the mask selects no pixel")
    p, d = pred[m], gt[m]
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(d))):
        raise ValueError("median_scale: NaN or infinite depth under the mask")
    med_pred = float(np.median(p))
    if med_pred <= 0:
        raise ValueError(f"median_scale: median prediction is {med_pred:g} m, cannot scale")
    return float(np.median(d)) / med_pred


def evaluate_image(pred_m: Any, gt_m: Any, protocol: Protocol) -> dict[str, float]:
    """Metrics of one image under a protocol.

    Builds :func:`eval_mask`; if ``protocol.align == "median"``, multiplies the prediction by
    :func:`median_scale` over that mask first and adds the factor to the result as ``"scale"``.

    Args:
        pred_m: predicted depth (H, W), metres, already at the ground-truth resolution.
        gt_m: ground-truth depth (H, W), metres.
        protocol: the :class:`Protocol`.

    Returns:
        :func:`depth_metrics` values (plus ``"scale"`` when median-aligned).

    Raises:
        ValueError: no valid pixel under the protocol (the caller decides whether to skip).
    """
    pred = _to_float64(pred_m, "pred_m")
    gt = _to_float64(gt_m, "gt_m")
    _check_same_shape(pred, gt)
    mask = eval_mask(gt, protocol)
    if not mask.any():
        raise ValueError(
            f"no valid pixel to evaluate under {protocol.describe()} (image {gt.shape})"
        )
    if protocol.align == "median":
        scale = median_scale(pred, gt, mask)
        result = depth_metrics(pred * scale, gt, mask)
        result["scale"] = scale
        return result
    return depth_metrics(pred, gt, mask)


def average_metrics(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean over images of each metric (per image, then averaged, as Metric3D does).

    Every key is averaged (``"scale"`` included, giving the mean median-scale factor). All
    dicts must have the same keys.

    Raises:
        ValueError: no image, or the dicts have different keys.
    """
    rows = list(per_image)
    if not rows:
        raise ValueError("average_metrics: no image to average")
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if set(row) != set(keys):
            raise ValueError(
                f"average_metrics: image {i} has keys {sorted(row)}, image 0 has {sorted(keys)}"
            )
    return {k: float(np.mean([float(row[k]) for row in rows])) for k in keys}


def format_metrics(metrics: Mapping[str, float], protocol: Protocol, n_images: int) -> str:
    """Plain-text table of (averaged) metrics; its first line is ``protocol.describe()``.

    Example::

        protocol nyu: nyu-eigen crop, depth in [0.001, 10] m, no alignment
        654 images; per-image metrics averaged over images; silog not x100
           abs_rel    sq_rel      rmse  rmse_log     log10     silog    delta1    delta2    delta3
            0.0830    0.0410    0.3100    0.1070    0.0350    0.0900    0.9400    0.9900    0.9980

    Metrics appear in :data:`METRIC_NAMES` order, then any other key (e.g. ``scale``).
    """
    extra = [k for k in metrics if k not in METRIC_NAMES]
    names = [k for k in METRIC_NAMES if k in metrics] + extra
    plural = "image" if n_images == 1 else "images"
    width = max([10] + [len(k) + 2 for k in names])
    lines = [
        protocol.describe(),
        f"{n_images} {plural}; per-image metrics averaged over images; silog not x100",
        "".join(f"{k:>{width}}" for k in names),
        "".join(f"{float(metrics[k]):>{width}.4f}" for k in names),
    ]
    return "\n".join(lines)
