"""Per-pixel depth losses of the official Metric3D v2 training set, as plain functions.

- ``gru_sequence_loss``: L1 on canonical depth over every output of the RAFT decoder, plus the
  L1 between the predicted confidence and a confidence target, weighted by ``gamma``;
- ``metric3d_silog_loss``: the official ``SilogLoss`` (mean of squared log error minus
  ``variance_focus`` times the squared mean; no square root), an option no v2 config uses;
- ``sky_regularization_loss`` / ``sky_regularization_gru_loss``: pull sky pixels to a far depth
  and their predicted normals towards a fixed direction, on the final output and on the
  intermediate GRU outputs.

Conventions (shared by every loss module of ``metricdepth.train``): depths are canonical metres
(B, 1, H, W); ``target`` is <= 0 where there is no label; ``mask`` is a (B, 1, H, W) bool of the
pixels a loss may use (the caller has already removed samples whose data type the loss does not
take). Each function returns a scalar already multiplied by ``weight``; with nothing to do it
returns ``prediction.sum() * 0`` so that ``backward`` still reaches the prediction.

Where the official code has a documented quirk (``../shared/lossfix/README.md``; see
``docs/losses.md``), ``mode="official"`` reproduces it and ``mode="corrected"`` (default) fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from metricdepth.train.loss_guard import MODES, check_mode  # noqa: F401 (MODES re-exported)

EPS = 1e-6

#: Datasets whose samples get the (off by default) stereo-consistency term of the GRU loss.
STEREO_DATASETS = ("KITTI", "NYU")


#: The six data types of the official datasets, in the constructors' order.
_EVERY_TYPE = ("sfm", "stereo", "lidar", "denselidar", "denselidar_nometric", "denselidar_syn")

#: Data types each official loss accepts (its constructor default; no v2 config changes them).
OFFICIAL_DATA_TYPES: dict[str, tuple[str, ...]] = {
    "GRUSequenceLoss": ("lidar", "denselidar", "stereo", "denselidar_syn"),
    "SilogLoss": ("stereo", "lidar"),
    "SkyRegularizationLoss": _EVERY_TYPE,
    "HDNRandomLoss": _EVERY_TYPE,
    "HDSNRandomLoss": _EVERY_TYPE,
    "VNLoss": _EVERY_TYPE,
    # PWN reads neither the mask nor the data type (quirk 5); its default list, for the record.
    "PWNPlanesLoss": ("lidar", "denselidar"),
    "NormalBranchLoss": ("sfm", "stereo", "denselidar", "denselidar_syn"),
    # DeNo's official forward ignores the mask (quirk 8); corrected mode honours it.
    "DeNoConsistencyLoss": (
        "stereo",
        "lidar",
        "denselidar",
        "denselidar_nometric",
        "denselidar_syn",
    ),
}


def data_type_mask(
    target: torch.Tensor, data_type: Sequence[str], accepted: Sequence[str]
) -> torch.Tensor:
    """The official per-loss ``mask``: ``target > 1e-8`` in the samples of an accepted type.

    Args:
        target: (B, 1, H, W) canonical metres. data_type: B names (``lidar``, ``denselidar`` ...).
        accepted: the loss's data types (``OFFICIAL_DATA_TYPES[name]``).
    Returns: (B, 1, H, W) bool.
    """
    if len(data_type) != target.shape[0]:
        raise ValueError(f"data_type has {len(data_type)} names for a batch of {target.shape[0]}")
    flags = torch.tensor([t in accepted for t in data_type], device=target.device)
    return (target > 1e-8) & flags[:, None, None, None]


def masked_count(mask: torch.Tensor, eps: float, dim=None, keepdim: bool = False) -> torch.Tensor:
    """``mask.sum() + eps`` with torch's promotion (an integer count plus a float is float32).

    The official losses divide by this float32 value; it equals the count exactly for
    counts of a few tens or more and is ``eps`` for an empty mask.
    """
    count = mask.sum() if dim is None else mask.sum(dim=dim, keepdim=keepdim)
    return count + eps


def gru_step_weights(n_outputs: int, gamma: float = 0.9, mode: str = "corrected") -> list[float]:
    """Weights ``w_i = gamma'^(N-1-i)`` with ``gamma' = gamma^(15/(N-1))`` for N outputs.

    The exponent makes the first output weigh ``gamma^15`` whatever the number of GRU
    iterations. With a single output the official formula divides by zero: ``official`` mode
    raises ``ValueError``, ``corrected`` gives that output weight 1.
    """
    check_mode(mode)
    if n_outputs < 1:
        raise ValueError("need at least one prediction")
    if n_outputs == 1:
        if mode == "official":
            raise ValueError("the official GRU weighting needs at least 2 outputs (15/(N-1))")
        return [1.0]
    adjusted = gamma ** (15 / (n_outputs - 1))
    return [adjusted ** (n_outputs - i - 1) for i in range(n_outputs)]


def _stereo_term(
    prediction: torch.Tensor,
    stereo_depth: torch.Tensor,
    mask: torch.Tensor,
    stereo_enabled: torch.Tensor,
) -> torch.Tensor:
    # Pixels outside the closing (3x3 dilation, then erosion) of the label mask.
    dilated = F.max_pool2d(mask.to(prediction.dtype), 3, stride=1, padding=1)
    outside = 1 + F.max_pool2d(-dilated, 3, stride=1, padding=1)
    diff = (prediction - stereo_depth).abs() * outside
    flag = stereo_enabled.to(prediction.dtype)[:, None, None, None]
    return (flag * diff * outside).sum() / (outside.sum() + EPS)


def gru_sequence_loss(
    predictions: Sequence[torch.Tensor],
    target: torch.Tensor,
    mask: torch.Tensor,
    confidences: Sequence[torch.Tensor] | None = None,
    *,
    weight: float = 1.0,
    gamma: float = 0.9,
    stereo_depth: torch.Tensor | None = None,
    stereo_sup: float = 0.0,
    dataset: Sequence[str] | None = None,
    stereo_datasets: Sequence[str] = STEREO_DATASETS,
    mode: str = "corrected",
) -> torch.Tensor:
    """Official ``GRUSequenceLoss``: weighted L1 over all decoder outputs, plus confidence.

    ``weight * sum_i w_i [ sum|p_i - t| m / (sum m + 1e-6)
    + sum|c_i - c*_i| m_c / (sum m_c + 1e-6) + stereo_sup * stereo_i ]`` with
    ``w_i`` from ``gru_step_weights``, ``m_c = m & (|t - p_i| < t)`` and the confidence target
    ``c*_i = (1 - |p_i - t| / t) m_c``.

    Args:
        predictions: N tensors (B, 1, H, W), canonical metres; entry 0 is the initial
            prediction and the last one the final output.
        target: (B, 1, H, W) canonical metres, <= 0 where unlabelled.
        mask: (B, 1, H, W) bool, pixels to use.
        confidences: N tensors (B, 1, H, W), the raw confidence channel, or None (no term).
        stereo_depth: (B, 1, H, W) pseudo label for the pixels far from any label; used only
            when ``stereo_sup`` is not 0 (it is 0 in every official config), for the samples
            whose ``dataset`` is in ``stereo_datasets``.
        mode: ``official`` lets the confidence target carry gradient into the depth (quirk 3);
            ``corrected`` detaches it, so the confidence term trains only the confidence.
    """
    check_mode(mode)
    if confidences is not None and len(confidences) != len(predictions):
        raise ValueError("predictions and confidences must have the same length")
    step_weights = gru_step_weights(len(predictions), gamma, mode)
    mask = mask.bool()
    stereo_enabled = None
    if stereo_sup:
        if stereo_depth is None or dataset is None:
            raise ValueError("stereo_sup needs stereo_depth and dataset")
        stereo_enabled = torch.tensor(
            [name in stereo_datasets for name in dataset], device=target.device
        )
    total = predictions[-1].sum() * 0
    for i, (prediction, w_i) in enumerate(zip(predictions, step_weights, strict=True)):
        depth_term = ((prediction - target).abs() * mask).sum() / masked_count(mask, EPS)
        step = depth_term
        if confidences is not None:
            reference = prediction.detach() if mode == "corrected" else prediction
            conf_mask = ((target - reference).abs() < target) & mask
            conf_target = (1 - ((reference - target) / target).abs()) * conf_mask
            conf_term = ((confidences[i] - conf_target).abs() * conf_mask).sum()
            step = conf_term / masked_count(conf_mask, EPS) + step
        if stereo_enabled is not None:
            stereo = _stereo_term(prediction, stereo_depth, mask, stereo_enabled)
            step = step + stereo_sup * stereo
        total = total + step * w_i
    return total * weight


def metric3d_silog_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    weight: float = 1.0,
    variance_focus: float = 0.5,
) -> torch.Tensor:
    """Official ``SilogLoss``: ``mean(d^2) - variance_focus * mean(d)^2``, ``d = log p - log t``.

    Means over the masked pixels of the whole batch, each divided by ``n + 1e-6``; no square
    root (unlike ``metricdepth.train.losses.silog_loss``). Shapes: (B, 1, H, W), canonical
    metres, ``mask`` bool; the masked target must be > 0.
    """
    mask = mask.bool()
    count = int(mask.sum())
    if count == 0:
        return prediction.sum() * 0
    d = torch.log(prediction[mask]) - torch.log(target[mask])
    n = count + EPS
    return ((d * d).sum() / n - variance_focus * (d.sum() / n) ** 2) * weight


def sky_regularization_loss(
    prediction: torch.Tensor,
    sem_mask: torch.Tensor,
    prediction_normal: torch.Tensor | None = None,
    *,
    weight: float = 1.0,
    regress_value: float = 200.0,
    normal_regress: Sequence[float] | None = (0.0, 0.0, -1.0),
    normal_weight: float = 1.0,
    sky_id: int = 142,
) -> torch.Tensor:
    """Official ``SkyRegularizationLoss``: sky to ``regress_value`` metres, normals to a direction.

    With ``sky = sem_mask == sky_id`` over the whole batch and ``n`` its pixel count:
    ``weight * [ sum_sky |p - regress_value| / (n + 1e-6)
    + normal_weight * sum_sky (1 - cos(n_hat, normal_regress)) [|cos| < 0.999] / (n + 1e-6) ]``.
    The normal term is skipped when ``prediction_normal`` or ``normal_regress`` is None.

    Args:
        prediction: (B, 1, H, W) canonical metres.
        sem_mask: (B, 1, H, W) integer semantic labels; ``sky_id`` marks sky. It must be a
            semantic map: a plane-id map (Taskonomy) whose ids reach ``sky_id`` would be taken
            for sky (quirk 7; the official loss does not look at the data type or depth mask).
        prediction_normal: (B, C >= 3, H, W); channels 0-2 are the predicted normal.
    """
    sky = sem_mask == sky_id
    n_sky = int(sky.sum())
    if n_sky == 0:
        return prediction.sum() * 0
    loss = (prediction[sky] - regress_value).abs().sum() / (n_sky + EPS)
    if prediction_normal is not None and normal_regress is not None:
        direction = torch.tensor(
            list(normal_regress), dtype=torch.float32, device=prediction_normal.device
        )
        cos = F.cosine_similarity(prediction_normal[:, :3], direction[None, :, None, None], dim=1)
        sky_px = sky[:, 0]
        keep = sky_px & (cos.detach() < 0.999) & (cos.detach() > -0.999)
        normal_term = ((1 - cos) * keep).sum() / masked_count(sky_px.float(), EPS)
        loss = loss + normal_term * normal_weight
    return loss * weight


def sky_regularization_gru_loss(
    predictions: Sequence[torch.Tensor],
    sem_mask: torch.Tensor,
    normals: Sequence[torch.Tensor] | None = None,
    *,
    weight: float = 1.0,
    gamma: float = 0.9,
    mode: str = "corrected",
    **sky_kwargs,
) -> torch.Tensor:
    """The official ``gru_losses`` branch: ``sky_regularization_loss`` on outputs 0..N-2.

    ``sum_{i<N-1} w_i * sky_regularization_loss(predictions[i], sem_mask, normals[i])`` with
    ``w_i`` from ``gru_step_weights(N, gamma)`` (the last output is left to the decoder branch).
    Shapes as ``sky_regularization_loss``; ``normals`` has N entries (B, 4, H, W) or is None.
    ``mode`` only matters for N = 1 (see ``gru_step_weights``).
    """
    if normals is not None and len(normals) != len(predictions):
        raise ValueError("predictions and normals must have the same length")
    step_weights = gru_step_weights(len(predictions), gamma, mode)
    total = predictions[-1].sum() * 0
    for i in range(len(predictions) - 1):
        normal = normals[i] if normals is not None else None
        term = sky_regularization_loss(
            predictions[i], sem_mask, normal, weight=weight, **sky_kwargs
        )
        total = total + term * step_weights[i]
    return total
