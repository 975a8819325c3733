"""Metric3D v2 ViT models (small, large, giant2) in plain PyTorch, with strict official loading.

``build_metric3d_vit(size)`` builds the DINOv2-with-registers backbone
(:mod:`metricdepth.models.vit`) and the RAFT depth/normal decoder
(:mod:`metricdepth.models.raft_head`) under one ``depth_model`` module, so the model's own
``state_dict()`` keys are exactly the official checkpoint keys (``depth_model.encoder.*``,
``depth_model.decoder.*``) and loading is an identity mapping.

``forward(x)`` takes normalised RGB in the canonical camera space, ``(B, 3, H, W)`` with
``H`` and ``W`` multiples of 28 (the official input is 616x1064), and returns a dict with

* ``depth_c``: (B, 1, H, W) canonical depth (focal length 1000 px), clamped to [0.1, 200];
* ``confidence``: (B, 1, H, W) raw depth confidence (no activation);
* ``normal``: (B, 4, H, W) unit normal ``(nx, ny, nz)`` in the camera frame and ``kappa``.

Padding removal, resizing and de-canonicalisation are the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
from torch import Tensor, nn

from metricdepth.models.raft_head import RAFT_HEAD_CONFIGS, RAFTDepthNormalDPT5, RAFTHeadConfig
from metricdepth.models.vit import VIT_CONFIGS, AttentionImpl, DinoVisionTransformer, ViTConfig
from metricdepth.models.weights import load_strict, read_torch_checkpoint

__all__ = [
    "INPUT_MULTIPLE",
    "METRIC3D_VIT_CONFIGS",
    "Metric3DViT",
    "Metric3DViTConfig",
    "build_metric3d_vit",
    "load_official_checkpoint",
    "load_official_state_dict",
]

#: Keys an official checkpoint may lack: the DINOv2 ``mask_token`` is unused at inference and
#: upstream's training code deletes it before saving, so released files may not carry it.
OPTIONAL_KEYS = frozenset({"depth_model.encoder.mask_token"})

#: Network input sides must be multiples of this (patch 14, and an even patch grid so that the
#: x3.5 / x4 decoder path lands back on the input size).
INPUT_MULTIPLE = 28


@dataclass(frozen=True)
class Metric3DViTConfig:
    """A complete Metric3D v2 ViT architecture.

    Attributes:
        name: Size name (``small``, ``large``, ``giant2``), used in messages.
        backbone: Encoder architecture.
        head: Decoder architecture.
    """

    name: str
    backbone: ViTConfig
    head: RAFTHeadConfig

    def __post_init__(self) -> None:
        if self.backbone.embed_dim != self.head.vit_channels:
            raise ValueError(
                f"backbone width {self.backbone.embed_dim} != decoder input width "
                f"{self.head.vit_channels}"
            )
        if self.backbone.num_register_tokens != self.head.num_register_tokens:
            raise ValueError("backbone and decoder disagree on the number of register tokens")

    @property
    def description(self) -> str:
        b = self.backbone
        return (
            f"Metric3D v2 ViT-{self.name} (DINOv2 reg{b.num_register_tokens}, dim {b.embed_dim}, "
            f"{b.depth} blocks, {b.ffn} FFN; RAFTDepthNormalDPT5, {self.head.iters} iterations)"
        )


#: The three official Metric3D v2 ViT architectures (hub ``metric3d_vit_{small,large,giant2}``),
#: and ``tiny``: the same architecture at toy size, for tests only (no official weights).
METRIC3D_VIT_CONFIGS: dict[str, Metric3DViTConfig] = {
    name: Metric3DViTConfig(name, VIT_CONFIGS[name], RAFT_HEAD_CONFIGS[name])
    for name in ("small", "large", "giant2", "tiny")
}


class _DepthModel(nn.Module):
    """Container named like the official ``depth_model`` (``encoder`` + ``decoder``)."""

    def __init__(self, cfg: Metric3DViTConfig, attention: AttentionImpl) -> None:
        super().__init__()
        self.encoder = DinoVisionTransformer(cfg.backbone, attention)
        self.decoder = RAFTDepthNormalDPT5(cfg.head)


class Metric3DViT(nn.Module):
    """Metric3D v2 ViT: normalised RGB (B, 3, H, W) -> canonical depth, confidence, normals.

    ``attention`` picks the backbone's attention kernel: ``"sdpa"`` (default, fast) or
    ``"explicit"`` (the official code's written-out softmax); parameters are identical.
    """

    def __init__(self, cfg: Metric3DViTConfig, attention: AttentionImpl = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        self.depth_model = _DepthModel(cfg, attention)

    def forward(self, x: Tensor, return_intermediates: bool = False) -> dict[str, Any]:
        """Run the network.

        Args:
            x: Normalised RGB, (B, 3, H, W), ``H`` and ``W`` multiples of :data:`INPUT_MULTIPLE`.
            return_intermediates: Also return ``out["intermediates"]``, a dict with the
                backbone tokens (``tokens_in``, ``tokens_out``), readout features
                (``features``: levels 3, 2, 1, 0), ``decoder_feature``, the 6-channel GRU
                state at 1/4 before and after the loop (``state_init``, ``state_last``) and the
                depth after every iteration (``depth_iters``). For tests and debugging.

        Returns:
            ``{"depth_c": (B,1,H,W), "confidence": (B,1,H,W), "normal": (B,4,H,W)}``; in
            training mode also the per-iteration ``predictions_list``, ``confidence_list`` and
            ``normal_out_list`` (``iters + 1`` entries each; see ``RAFTDepthNormalDPT5``).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(
                f"input size {h}x{w} must be a multiple of {INPUT_MULTIPLE} in both directions "
                "(the official input is 616x1064)"
            )
        record: dict[str, Any] | None = {} if return_intermediates else None
        features, grid = self.depth_model.encoder(x, record)
        out: dict[str, Any] = self.depth_model.decoder(features, grid, record)
        if record is not None:
            out["intermediates"] = record
        return out


def build_metric3d_vit(
    size: str,
    *,
    device: torch.device | str | None = None,
    attention: AttentionImpl = "sdpa",
) -> Metric3DViT:
    """Build an (uninitialised-weights) Metric3D v2 ViT in eval mode.

    Args:
        size: ``"small"``, ``"large"`` or ``"giant2"`` (or the test-only ``"tiny"``).
        device: Where to allocate parameters; ``"meta"`` builds a weightless skeleton (e.g. for
            key-layout checks, or to load a state dict with assignment and no extra copy).
        attention: ``"sdpa"`` or ``"explicit"`` (see :class:`Metric3DViT`).

    Returns:
        The model; load weights with :func:`load_official_state_dict`.
    """
    try:
        cfg = METRIC3D_VIT_CONFIGS[size]
    except KeyError:
        known = ", ".join(METRIC3D_VIT_CONFIGS)
        raise ValueError(f"unknown Metric3D ViT size {size!r}; expected one of: {known}") from None
    if device is None:
        model = Metric3DViT(cfg, attention)
    else:
        with torch.device(device):
            model = Metric3DViT(cfg, attention)
    return model.eval()


def _guess_size(state_dict: Mapping[str, Any]) -> str | None:
    """Which official size a state dict looks like, from the backbone width."""
    pos = state_dict.get("depth_model.encoder.pos_embed")
    width = getattr(pos, "shape", (None,))[-1]
    for name, cfg in METRIC3D_VIT_CONFIGS.items():
        if cfg.backbone.embed_dim == width:
            return name
    return None


def load_official_state_dict(model: Metric3DViT, state_dict: Mapping[str, Any]) -> None:
    """Load an official Metric3D v2 ViT ``model_state_dict`` into ``model``, strictly.

    Every key of ``model.state_dict()`` must be present (``mask_token`` may be missing: see
    ``OPTIONAL_KEYS``), no other
    key may be (the decoder's lazily registered ``depth_expectation_anchor`` is not a key), and
    every tensor's shape and dtype must be equal. Values are copied into the model's tensors
    (on its device); a model built on the ``meta`` device gets the given tensors assigned.

    As upstream, ``norm3`` and ``downsample.1`` of each context residual block are one module:
    both keys are required and the ``downsample.1.*`` values, loaded last, are the ones in
    effect (with real checkpoints the two are equal).

    Raises:
        ValueError: on any mismatch, with one line naming the expected architecture and the
            first few missing, unexpected, mis-shaped and mis-typed keys.
    """
    guess = _guess_size(state_dict)
    hint = (
        f"the checkpoint looks like ViT-{guess}"
        if guess is not None and guess != model.cfg.name
        else ""
    )
    label = f"the official {model.cfg.description} (metric3d_vit_{model.cfg.name})"
    load_strict(model, state_dict, label, optional=OPTIONAL_KEYS, hint=hint)


def load_official_checkpoint(model: Metric3DViT, path: str | PathLike[str]) -> None:
    """Load an official checkpoint file (e.g. ``metric_depth_vit_small_800k.pth``) strictly.

    The file is read with ``torch.load(..., weights_only=True)``. If it holds a dict with a
    ``"model_state_dict"`` entry (the official layout), that entry is loaded; otherwise the
    file itself must be the state dict. See :func:`load_official_state_dict`.
    """
    data = read_torch_checkpoint(path)
    load_official_state_dict(model, data)
