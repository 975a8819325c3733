"""The official Metric3D v2 normalised-depth losses over random regions (HDN and HDSN).

Both compare target and prediction after a per-region shift-and-scale normalisation
``x~ = (x - median_m(x)) / (s(x) + 1e-6)`` (lower median over the region's valid pixels, the
prediction's median detached) and sum ``|t~ - p~|`` over the region:

- ``hdn_random_loss``: regions are random depth ranges of the target (``draw_hdn_masks``);
- ``hdsn_random_loss``: regions are random windows shared by the batch (``draw_hdsn_windows``),
  the semantic segments of each sample (``hdsn_semantic_masks``) and the whole image.

Every random draw can be injected (the format the official fixtures record) or drawn from a
``numpy.random.Generator`` (with neither, a fresh unseeded one). Shapes:
``prediction``/``target`` (B, 1, H, W) canonical metres, ``mask`` (B, 1, H, W) bool,
``sem_mask`` (B, 1, H, W) int. Disabled samples (``dataset`` in ``disable_datasets``) take no
part. Both return a scalar already multiplied by ``weight``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from metricdepth.train.loss_depth import EPS, masked_count
from metricdepth.train.loss_guard import check_mode

DISABLE_DATASETS = ("MapillaryPSD",)


def _enabled(batch: int, dataset: Sequence[str] | None, disable: Sequence[str]) -> list[bool]:
    if dataset is None:
        return [True] * batch
    if len(dataset) != batch:
        raise ValueError(f"dataset has {len(dataset)} names for a batch of {batch}")
    return [name not in disable for name in dataset]


def _generator(generator: np.random.Generator | None) -> np.random.Generator:
    return generator if generator is not None else np.random.default_rng()


def _lower_median(x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Lower median of ``x`` over each region (N, 1, H, W) -> (N, 1, 1, 1); 0 if empty."""
    filled = torch.where(region, x, torch.full_like(x, float("nan")))
    med = filled.flatten(1).nanmedian(dim=1).values
    return torch.nan_to_num(med, nan=0.0)[:, None, None, None]


def _normalised_l1_sum(
    prediction: torch.Tensor,
    target: torch.Tensor,
    region: torch.Tensor,
    *,
    whole_image_scale: bool,
) -> torch.Tensor:
    """``sum |t~ - p~|`` over the regions; prediction/target (N or 1, 1, H, W), region (N, 1, H, W).

    The scale ``s`` is the mean absolute deviation from the median over the region, or, with
    ``whole_image_scale`` (official HDSN, quirk 2), the sum over all H x W pixels divided by the
    region's pixel count.
    """
    if whole_image_scale:
        count = masked_count(region.flatten(1), 1e-10, dim=1).to(prediction.dtype)
    else:
        count = masked_count(region.flatten(1), EPS, dim=1).to(prediction.dtype)
    count = count[:, None, None, None]

    def normalise(x: torch.Tensor, median: torch.Tensor) -> torch.Tensor:
        dev = (x - median).abs()
        if not whole_image_scale:
            dev = dev * region
        scale = dev.flatten(1).sum(dim=1)[:, None, None, None] / count
        return (x - median) / (scale + EPS)

    t_norm = normalise(target, _lower_median(target, region))
    p_norm = normalise(prediction, _lower_median(prediction.detach(), region))
    return ((t_norm - p_norm).abs() * region).sum()


# ----------------------------------------------------------------------------------- HDN


def draw_hdn_masks(
    target: torch.Tensor,
    mask: torch.Tensor,
    random_num: int,
    generator: np.random.Generator | None = None,
    mode: str = "corrected",
) -> torch.Tensor:
    """Random depth-range masks of one sample, (random_num, H, W) bool.

    With ``[lo_d, hi_d]`` the valid target range, ``u_lo ~ U(0, 0.75)`` and
    ``lo = u_lo (hi_d - lo_d) + lo_d``. The mask is ``(t >= lo) & (t < hi + 1e-30) & mask``.
    ``corrected``: ``hi`` maps ``u_hi ~ U(u_lo + 0.1, 1 - 1e-6)`` the same way, so every range
    spans at least 10% of the depth range. ``official`` (quirk 1) draws
    ``u_hi ~ U(lo + 0.1, 1 - 1e-6)`` with ``lo`` in metres, which puts ``hi`` at or above the
    maximum depth: every range is ``[lo, max]``.

    Args:
        target: (1, H, W) or (H, W) canonical metres. mask: the same shape, bool.
    """
    check_mode(mode)
    rng = _generator(generator)
    target = target.reshape(target.shape[-2:])
    mask = mask.reshape(target.shape).bool()
    values = target[mask]
    lo_d = float(values.min()) if values.numel() else 0.0
    hi_d = float(values.max()) if values.numel() else 0.0
    u_lo = rng.uniform(0.0, 0.75, random_num)
    lo = u_lo * (hi_d - lo_d) + lo_d
    start = u_lo + 0.1 if mode == "corrected" else lo + 0.1
    # low + (high - low) U, as numpy's legacy uniform does even when low > high.
    u_hi = start + ((1 - EPS) - start) * rng.random(random_num)
    hi = u_hi * (hi_d - lo_d) + lo_d
    out = [
        (target >= float(a)) & (target < float(b) + 1e-30) & mask
        for a, b in zip(lo, hi, strict=True)
    ]
    return torch.stack(out) if out else torch.zeros((0, *target.shape), dtype=torch.bool)


def hdn_random_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    weight: float = 1.0,
    random_num: int = 10,
    dataset: Sequence[str] | None = None,
    disable_datasets: Sequence[str] = DISABLE_DATASETS,
    masks: Mapping[int, torch.Tensor] | None = None,
    generator: np.random.Generator | None = None,
    chunk: int = 4,
    mode: str = "corrected",
) -> torch.Tensor:
    """Official ``HDNRandomLoss``: normalised L1 over random depth ranges of each sample.

    ``weight * sum_b sum_k sum |t~ - p~| m_bk / (sum_b sum_k sum m_bk + 1e-6)``, with the
    normalisation of the module docstring (``s`` = mean absolute deviation over ``m_bk``).

    Args:
        masks: injected ranges: sample index -> (K, H, W) or (K, 1, H, W) bool, for every enabled
            sample (they are intersected with ``mask``). Without it each enabled sample draws
            ``random_num`` ranges with ``draw_hdn_masks(..., generator, mode)``.
        chunk: ranges evaluated at once (memory only; the official ``batch_limit`` of 4).
        mode: only used when drawing (quirk 1).
    """
    check_mode(mode)
    batch = prediction.shape[0]
    mask = mask.bool()
    total = prediction.sum() * 0
    n_pixels = torch.zeros((), dtype=prediction.dtype, device=prediction.device)
    for b, on in enumerate(_enabled(batch, dataset, disable_datasets)):
        if not on:
            continue
        if masks is not None:
            if b not in masks:
                raise ValueError(f"masks has no entry for enabled sample {b}")
            ranges = masks[b].to(mask.device).bool().reshape(-1, 1, *mask.shape[-2:])
        else:
            ranges = draw_hdn_masks(target[b], mask[b], random_num, generator, mode)[:, None]
        ranges = ranges & mask[b : b + 1]
        for j in range(0, ranges.shape[0], chunk):
            region = ranges[j : j + chunk]
            total = total + _normalised_l1_sum(
                prediction[b : b + 1], target[b : b + 1], region, whole_image_scale=False
            )
            n_pixels = n_pixels + region.sum()
    return total / (n_pixels + EPS) * weight


# ----------------------------------------------------------------------------------- HDSN


def draw_hdsn_windows(
    height: int, width: int, random_num: int = 20, generator: np.random.Generator | None = None
) -> torch.Tensor:
    """Random windows ``[y0, y1, x0, x1]`` (half-open, clipped to the image), (random_num, 4).

    Window heights are distinct draws from ``[int(H/8), int(H/2))``, top rows distinct draws
    from ``[0, H - int(H/8))``; the same for widths and columns. Needs ``int(H/2) - int(H/8)``
    and ``int(W/2) - int(W/8)`` >= ``random_num`` (H, W >= 52 for 20 windows).
    """
    rng = _generator(generator)
    h_lo, h_hi, w_lo, w_hi = (
        int(0.125 * height),
        int(0.5 * height),
        int(0.125 * width),
        int(0.5 * width),
    )
    if h_hi - h_lo < random_num or w_hi - w_lo < random_num:
        raise ValueError(
            f"an image of {height}x{width} px is too small for {random_num} distinct windows"
        )
    crop_h = rng.choice(np.arange(h_lo, h_hi), random_num, replace=False)
    crop_w = rng.choice(np.arange(w_lo, w_hi), random_num, replace=False)
    y0 = rng.choice(height - h_lo, random_num, replace=False)
    x0 = rng.choice(width - w_lo, random_num, replace=False)
    y1 = np.minimum(y0 + crop_h, height)
    x1 = np.minimum(x0 + crop_w, width)
    return torch.from_numpy(np.stack([y0, y1, x0, x1], axis=1).astype(np.int64))


def windows_to_masks(windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(R, 4) ``[y0, y1, x0, x1]`` windows -> (R, H, W) bool masks."""
    rows = torch.arange(height)[None, :, None]
    cols = torch.arange(width)[None, None, :]
    w = windows.long().cpu()
    inside_y = (rows >= w[:, 0, None, None]) & (rows < w[:, 1, None, None])
    inside_x = (cols >= w[:, 2, None, None]) & (cols < w[:, 3, None, None])
    return inside_y & inside_x


def hdsn_semantic_masks(
    sem_label: torch.Tensor,
    random_num: int = 20,
    sky_id: int = 142,
    min_pixels: int = 500,
    generator: np.random.Generator | None = None,
) -> torch.Tensor:
    """The semantic regions of one sample, (M, H, W) bool, as the official ``reorder_sem_masks``.

    One mask per label id > 0 other than ``sky_id`` (ascending) that covers more than
    ``min_pixels`` pixels; when more than ``random_num`` remain, ``random_num`` of them drawn
    without replacement. With no such id the single mask ``sem_label > 0`` (sky included).

    Args:
        sem_label: (1, H, W) or (H, W) integer labels (plane ids for Taskonomy).
    """
    label = sem_label.reshape(sem_label.shape[-2:])
    ids = torch.unique(label[(label > 0) & (label != sky_id)])
    masks = torch.stack([label == i for i in ids]) if ids.numel() else None
    if masks is not None:
        masks = masks[masks.flatten(1).sum(dim=1) > min_pixels]
        if masks.shape[0] > random_num:
            pick = _generator(generator).choice(masks.shape[0], random_num, replace=False)
            masks = masks[torch.from_numpy(pick)]
    if masks is None or masks.shape[0] == 0:
        return (label > 0)[None]
    return masks


def hdsn_random_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    sem_mask: torch.Tensor | None = None,
    *,
    weight: float = 1.0,
    random_num: int = 20,
    sky_id: int = 142,
    dataset: Sequence[str] | None = None,
    disable_datasets: Sequence[str] = DISABLE_DATASETS,
    windows: torch.Tensor | None = None,
    sem_masks: Mapping[int, torch.Tensor] | None = None,
    generator: np.random.Generator | None = None,
    chunk: int = 4,
    mode: str = "corrected",
) -> torch.Tensor:
    """Official ``HDSNRandomLoss``: normalised L1 over windows, segments and the whole image.

    Regions of an enabled sample b: the random windows (shared by the batch), its semantic
    masks, each intersected with ``mask[b]``; plus one whole-image region ``mask[b]``. The
    loss is ``weight * sum_regions sum |t~ - p~| m / (sum_regions sum m + 1e-6)``.

    Args:
        windows: (R, 4) ``[y0, y1, x0, x1]`` injected windows, or None to draw ``random_num``
            with ``draw_hdsn_windows(H, W, random_num, generator)``.
        sem_masks: sample index -> (M, H, W) bool injected semantic masks for every enabled
            sample, or None to build them with ``hdsn_semantic_masks`` from ``sem_mask``
            (no semantic regions when ``sem_mask`` is None too).
        chunk: regions evaluated at once (memory only; the official ``batch_limit``).
        mode: ``official`` divides the sum of ``|x - median|`` over the **whole image** by the
            region's pixel count (quirk 2: the scale depends on pixels outside the region,
            padding predictions get gradient); ``corrected`` uses the region's mean absolute
            deviation, as HDN does.
    """
    check_mode(mode)
    batch, _, height, width = prediction.shape
    mask = mask.bool()
    whole = mode == "official"
    if windows is None:
        windows = draw_hdsn_windows(height, width, random_num, generator)
    window_masks = windows_to_masks(windows, height, width).to(mask.device)
    enabled = _enabled(batch, dataset, disable_datasets)
    total = prediction.sum() * 0
    n_pixels = torch.zeros((), dtype=prediction.dtype, device=prediction.device)
    for b, on in enumerate(enabled):
        if not on:
            continue
        if sem_masks is not None:
            if b not in sem_masks:
                raise ValueError(f"sem_masks has no entry for enabled sample {b}")
            segments = sem_masks[b].to(mask.device).bool().reshape(-1, height, width)
        elif sem_mask is not None:
            segments = hdsn_semantic_masks(sem_mask[b], random_num, sky_id, generator=generator)
        else:
            segments = window_masks[:0]
        regions = torch.cat([window_masks, segments.to(mask.device)])[:, None] & mask[b : b + 1]
        for j in range(0, regions.shape[0], chunk):
            region = regions[j : j + chunk]
            total = total + _normalised_l1_sum(
                prediction[b : b + 1], target[b : b + 1], region, whole_image_scale=whole
            )
            n_pixels = n_pixels + region.sum()
    flags = torch.tensor(enabled, device=mask.device)[:, None, None, None]
    image_regions = mask & flags
    total = total + _normalised_l1_sum(prediction, target, image_regions, whole_image_scale=whole)
    n_pixels = n_pixels + image_regions.sum()
    return total / (n_pixels + EPS) * weight
