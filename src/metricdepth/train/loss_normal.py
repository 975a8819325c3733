"""Normal-branch losses of Metric3D v2: the normal NLL with kappa, and depth-normal consistency.

The normal head outputs (B,4,H,W): channels 0-2 a unit normal, channel 3 the concentration
kappa > 0 (``elu + 1.01``). Depth is in canonical metres. Both losses run under
``full_precision`` (float32 even inside bf16 autocast). See ``docs/losses.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from metricdepth.train.loss_geometry import depth_to_normal
from metricdepth.train.loss_guard import check_mode, full_precision, zero_loss

#: Datasets with normal labels: DeNo weighs the others ``nonorm_scale`` times more.
NORMAL_DATASETS = ("Taskonomy", "Matterport3D", "Replica", "Hypersim", "NYU")


def sequence_weights(n: int, gamma: float = 0.9) -> list[float]:
    """Per-output weights ``g**(n-1-i)`` with ``g = gamma**(15/(n-1))`` (1.0 for n = 1)."""
    if n == 1:
        return [1.0]
    adjusted = gamma ** (15 / (n - 1))
    return [adjusted ** (n - i - 1) for i in range(n)]


def _nll_angular(
    normal_out: torch.Tensor, normal_gt: torch.Tensor, valid: torch.Tensor, cos_max: float
) -> torch.Tensor:
    """Mean angular-vMF NLL over ``valid`` pixels whose |cos| < cos_max (NaN when none)."""
    cos = F.cosine_similarity(normal_out[:, 0:3], normal_gt, dim=1)  # (B,H,W)
    c = cos.detach()
    keep = valid[:, 0] & (c < cos_max) & (c > -cos_max)
    cos = cos[keep]
    kappa = normal_out[:, 3][keep]
    nll = (
        -torch.log(kappa**2 + 1)
        + kappa * torch.acos(cos)
        + torch.log(1 + torch.exp(-kappa * math.pi))
    )
    return nll.mean()


@full_precision
def normal_branch_loss(
    normal_out_list: Sequence[torch.Tensor],
    normal: torch.Tensor,
    mask: torch.Tensor,
    *,
    weight: float = 1.0,
    gamma: float = 0.9,
    cos_max: float = 0.999,
    min_pixels: int = 10,
) -> torch.Tensor:
    """Angular von Mises-Fisher NLL of every normal-head output (``NLL_ours_GRU``).

    Args:
        normal_out_list: N tensors (B,4,H,W), normal + kappa of each iteration (last = final).
        normal: (B,3,H,W) normal labels, all zero where there is none.
        mask: (B,1,H,W) bool, pixels allowed (depth-valid and of a data type with normals).

    Per output i: ``mean(-log(k^2+1) + k*acos(cos) + log(1+exp(-k*pi)))`` over labelled pixels
    with |cos| < cos_max (quirk 6), weighted by ``sequence_weights``. Fewer than min_pixels
    labelled pixels: 0 (with a gradient path). Returns a scalar x weight.
    """
    labelled = ~torch.all(normal == 0, dim=1, keepdim=True) & mask.bool()
    if int(labelled.sum()) < min_pixels:
        return zero_loss(*normal_out_list) * weight
    loss: torch.Tensor | float = 0.0
    for out, w_i in zip(
        normal_out_list, sequence_weights(len(normal_out_list), gamma), strict=True
    ):
        term = _nll_angular(out, normal, labelled, cos_max)
        if not torch.isfinite(term):
            term = out.sum() * 0.0
        loss = loss + term * w_i
    return loss * weight


def _top_fraction(score: torch.Tensor, valid: torch.Tensor, count: int) -> torch.Tensor:
    """(B,1,H,W) bool: the ``count`` highest ``score`` pixels of each sample, invalid ones last."""
    b = score.shape[0]
    ranked = torch.where(valid, score, torch.full_like(score, -math.inf)).reshape(b, -1)
    chosen = torch.zeros_like(ranked, dtype=torch.bool)
    chosen.scatter_(1, torch.topk(ranked, count, dim=1).indices, True)
    return chosen.reshape(score.shape)


def pad_mask(pad: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(B,1,H,W) bool, True inside the [top, bottom, left, right] padding of each sample."""
    b, _, h, w = shape
    out = torch.zeros((b, 1, h, w), dtype=torch.bool, device=pad.device)
    for i in range(b):
        top, bottom, left, right = (int(v) for v in pad[i].reshape(-1)[:4])
        out[i, :, top : h - bottom, left : w - right] = True
    return out


@full_precision
def deno_consistency_loss(
    prediction: torch.Tensor,
    confidence: torch.Tensor,
    normal_pred: torch.Tensor,
    intrinsic: torch.Tensor,
    pad: torch.Tensor,
    scale: torch.Tensor,
    dataset: Sequence[str],
    *,
    mask: torch.Tensor | None = None,
    weight: float = 1.0,
    depth_detach: bool = False,
    sample_ratio: float = 0.7,
    confidence_min: float = 0.5,
    nonorm_scale: float = 2.0,
    norm_datasets: Sequence[str] = NORMAL_DATASETS,
    disable_datasets: Sequence[str] = (),
    cos_max: float = 0.999,
    mode: str = "corrected",
) -> torch.Tensor:
    """Depth-normal consistency (``DeNoConsistencyLoss``, ``CEL``): 1 - cos(normal head,
    normal of the predicted depth).

    Args:
        prediction: (B,1,H,W) depth (canonical metres); confidence (B,1,H,W) its raw confidence.
        normal_pred: (B,4,H,W) final normal-head output (normal + kappa).
        intrinsic: (B,3,3) canonical K; pad (B,4) [top, bottom, left, right];
        scale: (B,) label scale factor, divides Z before the normals (as the official code).
        dataset: B dataset names: outside ``norm_datasets`` a sample weighs ``nonorm_scale``,
            in ``disable_datasets`` 0.
        mask: (B,1,H,W) bool pixels allowed; honoured in ``"corrected"`` mode, ignored in
            ``"official"`` mode (quirk 8). None = every pixel.
        depth_detach: stop the gradient into ``prediction``.

    Pixels: inside the padding with 4 valid neighbours at distance 2, among the top
    int(sample_ratio*H*W) of each sample by kappa and (separately) by confidence, confidence
    > confidence_min, and |cos| < cos_max. Loss = mean over all B*H*W pixels of
    (1 - cos*selected) * sample weight, x weight. Inputs are never modified.
    """
    check_mode(mode)
    b, _, h, w = prediction.shape
    valid = pad_mask(pad, prediction.shape)
    official = mode == "official"
    if mask is not None and not official:
        valid = valid & mask.bool()
    z_scale = scale.float() if official else scale.to(prediction.dtype)
    depth = prediction.detach() if depth_detach else prediction
    normal_d, valid = depth_to_normal(
        depth, intrinsic, valid, z_scale=z_scale, ray_dtype=torch.float32 if official else None
    )
    with torch.no_grad():
        count = int(sample_ratio * h * w)
        chosen = (
            _top_fraction(normal_pred[:, 3:4], valid, count)
            & _top_fraction(confidence, valid, count)
            & (confidence > confidence_min)
        )
        selected = ~torch.all(normal_d == 0, dim=1, keepdim=True) & valid & chosen
    if int(selected.sum()) < 10:
        return zero_loss(normal_pred, prediction) * weight
    sample_w = torch.tensor(
        [
            0.0 if d in disable_datasets else (1.0 if d in norm_datasets else nonorm_scale)
            for d in dataset
        ],
        dtype=normal_pred.dtype,
        device=normal_pred.device,
    )
    cos = F.cosine_similarity(normal_pred[:, 0:3], normal_d, dim=1)  # (B,H,W)
    c = cos.detach()
    keep = selected[:, 0] & (c < cos_max) & (c > -cos_max)
    loss = ((1 - cos * keep) * sample_w[:, None, None]).mean()
    if not torch.isfinite(loss):
        loss = normal_pred.sum() * 0.0
    return loss * weight
