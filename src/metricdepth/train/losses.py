"""Masked depth losses in log space.

With ``g = log_pred - log(depth_gt)`` on the valid pixels (``mask`` True and ``depth_gt > 0``):

- ``l1_log_loss``: ``mean |g|`` over all valid pixels of the batch (pixel-weighted);
- ``silog_loss``: per image ``sqrt(mean(g^2) - lambda * mean(g)^2)`` (Eigen et al.; the
  ``lambda`` "variance focus" of BTS/Metric3D, 0.85 by default; 1 is fully scale invariant),
  averaged over the images that have at least one valid pixel. Not multiplied by 10. This
  is ``small_unet``'s ``silog``; for the official architectures the config key ``silog`` is
  Metric3D's ``SilogLoss`` (``loss_depth.metric3d_silog_loss``: batch means, no square root).

Both take the network's log-depth (no ``exp`` then ``log``), return a scalar that is 0 with a
gradient path when nothing is valid (so every process of a data-parallel run can always call
``backward``), and never see invalid pixels: ``depth_gt`` may hold 0, inf or NaN there.

Shapes: ``log_pred``, ``depth_gt`` and ``mask`` are (B, 1, H, W) or (B, H, W), same shape.
"""

from __future__ import annotations

import torch


def _valid_log_gt(
    log_pred: torch.Tensor, depth_gt: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if log_pred.shape != depth_gt.shape or mask.shape != depth_gt.shape:
        raise ValueError(
            f"loss inputs must share a shape: log_pred {tuple(log_pred.shape)}, depth_gt "
            f"{tuple(depth_gt.shape)}, mask {tuple(mask.shape)}"
        )
    valid = mask.bool() & torch.isfinite(depth_gt) & (depth_gt > 0)
    safe = torch.where(valid, depth_gt, torch.ones_like(depth_gt))
    return valid, torch.log(safe)


def l1_log_loss(log_pred: torch.Tensor, depth_gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|log_pred - log depth_gt|`` over the valid pixels of the whole batch."""
    valid, log_gt = _valid_log_gt(log_pred, depth_gt, mask)
    diff = torch.where(valid, (log_pred - log_gt).abs(), torch.zeros_like(log_pred))
    return diff.sum() / valid.sum().clamp_min(1)


def silog_loss(
    log_pred: torch.Tensor,
    depth_gt: torch.Tensor,
    mask: torch.Tensor,
    variance_focus: float = 0.85,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Scale-invariant log loss, per image, averaged over images with valid pixels.

    ``sqrt(mean(g^2) - variance_focus * mean(g)^2 + eps)`` per image; ``eps`` keeps the square
    root differentiable when the error is 0.
    """
    valid, log_gt = _valid_log_gt(log_pred, depth_gt, mask)
    g = torch.where(valid, log_pred - log_gt, torch.zeros_like(log_pred)).flatten(1)
    count = valid.flatten(1).sum(1)
    n = count.clamp_min(1).to(g.dtype)
    mean = g.sum(1) / n
    mean_sq = (g * g).sum(1) / n
    per_image = torch.sqrt((mean_sq - variance_focus * mean * mean).clamp_min(0) + eps)
    has = count > 0
    if not bool(has.any()):
        return log_pred.sum() * 0.0
    return per_image[has].mean()
