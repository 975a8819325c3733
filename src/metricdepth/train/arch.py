"""What training needs to know about each architecture, and building it for a run.

Every architecture of ``metricdepth.models.registry.ARCHITECTURES`` trains: ``small_unet``
(ours), ``metric3d_vit`` (sizes small, large, giant2 and the test-only tiny) and
``metric3d_convnext`` (tiny, large). ``model_kwargs`` of the config are the registry builder's
keyword arguments (``{size: small}``) and become the saved spec's ``arch_kwargs``, so
``predict`` rebuilds exactly the trained network.

``init_from`` starts from weights instead of the initialiser: an official Metric3D ``.pth``
(read with ``weights_only=True``, loaded by the official strict loader) or a metricdepth
``.safetensors`` of the same architecture and kwargs (strict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ArchInfo:
    """Training facts of one architecture.

    Attributes:
        input_multiple: training and inference canvas sides must be multiples of this.
        encoder_prefixes: parameter-name prefixes of the encoder (``freeze: encoder`` and the
            encoder learning rate).
        outputs: keys ``forward`` returns in training mode (what the losses may read).
        spec_outputs: ``ModelSpec.outputs`` of a trained model.
        canvas_hw: the official inference canvas (default ``infer_hw``); None: ``input_hw``.
        canonical_focal_px: the architecture's f_c (default ``canonical_focal_px``); None: the
            config default.
        own_losses: trained with metricdepth's own losses (``objective.OWN_LOSSES``) instead
            of the official Metric3D v2 set (``metricdepth.train.loss_set``).
        one_prediction: ``predictions_list`` has a single entry (no GRU iterations).
    """

    input_multiple: int
    encoder_prefixes: tuple[str, ...]
    outputs: tuple[str, ...]
    spec_outputs: tuple[str, ...] = ()
    canvas_hw: tuple[int, int] | None = None
    canonical_focal_px: float | None = None
    own_losses: bool = False
    one_prediction: bool = False


ARCHS: dict[str, ArchInfo] = {
    "small_unet": ArchInfo(
        1, ("stem.", "down."), ("depth_c", "log_depth_c"), own_losses=True
    ),
    "metric3d_vit": ArchInfo(
        28,
        ("depth_model.encoder.",),
        ("depth_c", "confidence", "normal", "predictions_list", "confidence_list",
         "normal_out_list"),
        ("confidence", "normal"),
        (616, 1064),
        1000.0,
    ),
    "metric3d_convnext": ArchInfo(
        32,
        ("depth_model.encoder.",),
        ("depth_c", "confidence", "predictions_list", "confidence_list"),
        ("confidence",),
        (544, 1216),
        1000.0,
        one_prediction=True,
    ),
}  # fmt: skip

#: Parameters never trained: the DINOv2 ``mask_token`` (masked-image pre-training only; the
#: forward pass never reads it, so it would get no gradient and stall data-parallel training).
NEVER_TRAINED = ("depth_model.encoder.mask_token",)


def build_network(arch: str, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """The untrained network (initialised from the current torch RNG), in training mode."""
    from metricdepth.models.registry import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**model_kwargs).train()


def freeze_prefixes(arch: str, freeze: tuple[str, ...]) -> tuple[str, ...]:
    """``freeze`` with the word ``encoder`` replaced by the architecture's encoder prefixes."""
    out: list[str] = []
    for item in freeze:
        out.extend(ARCHS[arch].encoder_prefixes if item == "encoder" else (item,))
    return tuple(out)


def apply_freeze(net: nn.Module, arch: str, freeze: tuple[str, ...]) -> list[str]:
    """Set ``requires_grad=False`` on frozen and never-trained parameters; return their names.

    Every prefix must match at least one parameter (else ValueError naming it).
    """
    prefixes = freeze_prefixes(arch, freeze)
    names = [name for name, _ in net.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(
                f"freeze: {prefix!r} matches no parameter of {arch} (names start with "
                f"{', '.join(sorted({n.split('.')[0] + '.' for n in names}))})"
            )
    frozen = []
    for name, param in net.named_parameters():
        if name in NEVER_TRAINED or any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def set_clamp_gradient(net: nn.Module, mode: str) -> None:
    """The gradient of the RAFT decoder's depth clamp (``metric3d_vit``; ``raft_head``):
    ``official`` (none outside [0.1, 200]) or ``straight_through`` (as if unclamped; the
    values are the same). Other architectures have no clamp and ignore it."""
    from metricdepth.models.raft_head import RAFTDepthNormalDPT5

    for module in net.modules():
        if isinstance(module, RAFTDepthNormalDPT5):
            if mode not in module.CLAMP_GRADIENTS:
                raise ValueError(f"clamp_gradient must be one of {module.CLAMP_GRADIENTS}")
            module.clamp_gradient = mode


def set_activation_checkpointing(net: nn.Module, enabled: bool) -> None:
    """Recompute the ViT blocks' activations in the backward pass (``metric3d_vit`` only)."""
    encoder = getattr(getattr(net, "depth_model", None), "encoder", None)
    if enabled and not hasattr(encoder, "activation_checkpointing"):
        raise ValueError("activation_checkpointing applies to metric3d_vit only")
    if encoder is not None and hasattr(encoder, "activation_checkpointing"):
        encoder.activation_checkpointing = bool(enabled)


def load_initial_weights(net: nn.Module, arch: str, model_kwargs: Mapping[str, Any], path) -> None:
    """Load ``init_from`` into ``net`` strictly (module docstring); ValueError on a mismatch."""
    from metricdepth.models.registry import OFFICIAL_LOADERS, read_spec
    from metricdepth.models.weights import load_strict, read_torch_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"init_from: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        spec = read_spec(path)
        if spec.arch != arch or dict(spec.arch_kwargs) != dict(model_kwargs):
            raise ValueError(
                f"init_from: {path} holds {spec.arch} {spec.arch_kwargs}, the config trains "
                f"{arch} {dict(model_kwargs)}"
            )
        try:
            load_strict(net, load_file(str(path)), f"{arch} {dict(model_kwargs)}")
        except ValueError as error:
            raise ValueError(f"init_from: {path}: {error}") from None
        return
    if arch not in OFFICIAL_LOADERS:
        raise ValueError(f"init_from: {path}: {arch} has no official checkpoints (.safetensors)")
    try:
        OFFICIAL_LOADERS[arch](net, read_torch_checkpoint(path))
    except ValueError as error:
        message = str(error) if str(path) in str(error) else f"{path}: {error}"
        raise ValueError(f"init_from: {message}") from None


def check_architecture(
    arch: str, model_kwargs: Mapping[str, Any], freeze: tuple[str, ...] = ()
) -> nn.Module:
    """Build ``arch`` on the meta device (no memory) to check kwargs and ``freeze`` prefixes;
    return that network (for further checks, e.g. ``apply_freeze`` with another ``freeze``)."""
    with torch.device("meta"):
        net = build_network(arch, model_kwargs)
    apply_freeze(net, arch, freeze)
    return net
