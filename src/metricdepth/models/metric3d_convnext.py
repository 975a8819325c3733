"""Metric3D v1: ConvNeXt backbone + Hourglass decoder, with strict official-checkpoint loading.

``build_metric3d_convnext("tiny" | "large")`` returns a :class:`Metric3DConvNeXt` whose
``state_dict()`` keys, shapes and dtypes equal those of the official ``model_state_dict``
(hub entries ``metric3d_convnext_tiny`` / ``metric3d_convnext_large``, configs
``convtiny.0.3_150.py`` / ``convlarge.0.3_150.py``), including the int64 BatchNorm
``num_batches_tracked`` buffers. The submodule path ``depth_model.encoder`` /
``depth_model.decoder`` exists only to reproduce those key names.

The network works in Metric3D's canonical camera space (focal length 1000 px): its input is
an RGB image resized, padded to 544x1216 and normalised by the ImageNet mean and std (see
``metricdepth.canonical``), and its depth output is canonical depth, to be un-padded, resized
and multiplied by ``f_eff / 1000`` to give metres.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

from torch import Tensor, nn

from metricdepth.models.convnext import CONVNEXT_SPECS, ConvNeXt
from metricdepth.models.hourglass_head import HourglassDecoder
from metricdepth.models.weights import load_strict, read_torch_checkpoint

__all__ = [
    "METRIC3D_CONVNEXT_CONFIGS",
    "Metric3DConvNeXt",
    "Metric3DConvNeXtConfig",
    "build_metric3d_convnext",
    "load_official_checkpoint",
    "load_official_state_dict",
]


@dataclass(frozen=True)
class Metric3DConvNeXtConfig:
    """Architecture and canonical-space constants of one Metric3D v1 model size."""

    size: str
    decoder_channels: tuple[int, int, int, int]
    depth_range: tuple[float, float] = (0.3, 150.0)
    num_bins: int = 512
    #: Network input (H, W) of the official configs (``crop_size``); multiples of 32.
    input_hw: tuple[int, int] = (544, 1216)
    canonical_focal_px: float = 1000.0


METRIC3D_CONVNEXT_CONFIGS: dict[str, Metric3DConvNeXtConfig] = {
    "tiny": Metric3DConvNeXtConfig(size="tiny", decoder_channels=(64, 64, 128, 256)),
    "large": Metric3DConvNeXtConfig(size="large", decoder_channels=(128, 128, 256, 512)),
}

#: The stride of the backbone's coarsest map; input sides must be multiples of it.
_STRIDE = 32


class _EncoderDecoder(nn.Module):
    """Holder giving the official ``encoder.*`` / ``decoder.*`` key names."""

    def __init__(self, encoder: ConvNeXt, decoder: HourglassDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decoder(self.encoder(x))


class Metric3DConvNeXt(nn.Module):
    """Metric3D v1 depth network (ConvNeXt + HourglassDecoder).

    ``forward(x)`` takes ``x`` (B, 3, H, W), float, normalised RGB (``(rgb - mean) / std``
    with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375)), H and W multiples
    of 32 (the official size is 544x1216; the decoder's pixel-index input makes results
    position-dependent, so other sizes are out of the training distribution). It returns:

    * ``depth_c``: (B, 1, H, W) canonical depth (focal 1000 px), unclamped;
    * ``confidence``: (B, 1, H, W) raw confidence, no activation;
    * ``depth_lowres``: (B, 1, H/4, W/4) the softmax-expectation depth before refinement;
    * ``confidence_lowres``: (B, 1, H/4, W/4) the confidence before nearest x4 upsampling;
    * in training mode also ``predictions_list`` = ``[depth_c]`` and ``confidence_list`` =
      ``[confidence]`` (one entry: the decoder has no iterations, and no normal branch).

    Call ``.eval()`` first: the decoder's BatchNorm layers must use their running statistics.
    """

    def __init__(self, config: Metric3DConvNeXtConfig) -> None:
        super().__init__()
        self.config = config
        encoder = ConvNeXt(CONVNEXT_SPECS[config.size])
        decoder = HourglassDecoder(
            encoder.out_channels, config.decoder_channels, config.depth_range, config.num_bins
        )
        self.depth_model = _EncoderDecoder(encoder, decoder)

    @property
    def size(self) -> str:
        """``"tiny"`` or ``"large"``."""
        return self.config.size

    @property
    def encoder(self) -> ConvNeXt:
        """The ConvNeXt backbone (``depth_model.encoder``)."""
        return self.depth_model.encoder

    @property
    def decoder(self) -> HourglassDecoder:
        """The Hourglass decoder (``depth_model.decoder``)."""
        return self.depth_model.decoder

    def forward(self, x: Tensor) -> dict[str, Any]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % _STRIDE or width % _STRIDE:
            raise ValueError(
                f"input height and width must be multiples of {_STRIDE}, got {height}x{width}"
                f" (Metric3D ConvNeXt uses {self.config.input_hw[0]}x{self.config.input_hw[1]})"
            )
        out = self.depth_model(x)
        result: dict[str, Any] = {
            "depth_c": out["depth"],
            "confidence": out["confidence"],
            "depth_lowres": out["depth_lowres"],
            "confidence_lowres": out["confidence_lowres"],
        }
        if self.training:  # one-entry lists, the key layout the losses read (no GRU here)
            result["predictions_list"] = [out["depth"]]
            result["confidence_list"] = [out["confidence"]]
        return result


def build_metric3d_convnext(size: str) -> Metric3DConvNeXt:
    """Build Metric3D v1 ``size`` = ``"tiny"`` or ``"large"``, with torch-default weights.

    Builds on the current default device; wrap in ``with torch.device("meta"):`` to get the
    structure without allocating (then ``to_empty`` and load weights).
    """
    try:
        config = METRIC3D_CONVNEXT_CONFIGS[size]
    except KeyError:
        raise ValueError(
            f"unknown Metric3D ConvNeXt size {size!r}; expected one of "
            f"{sorted(METRIC3D_CONVNEXT_CONFIGS)}"
        ) from None
    return Metric3DConvNeXt(config)


def _guess_size(state_dict: Mapping[str, Any]) -> str | None:
    """Which ConvNeXt size the stem width of ``state_dict`` suggests, if any."""
    stem = state_dict.get("depth_model.encoder.downsample_layers.0.0.weight")
    if not isinstance(stem, Tensor) or stem.dim() != 4:
        return None
    for name, spec in CONVNEXT_SPECS.items():
        if stem.shape[0] == spec.dims[0]:
            return name
    return None


def load_official_state_dict(model: Metric3DConvNeXt, state_dict: Mapping[str, Any]) -> None:
    """Load an official Metric3D v1 ``model_state_dict`` into ``model``, strictly.

    Every key of ``model.state_dict()`` must be present, no other key may be, and every
    tensor's shape and dtype must be equal (the BatchNorm ``num_batches_tracked`` buffers are
    int64 scalars). Values are copied into the model's existing tensors (on its device); a
    model built on the ``meta`` device takes the given tensors themselves instead
    (``load_state_dict(..., assign=True)``), so a large model needs no second copy.

    Raises:
        ValueError: on any mismatch, with one line naming the expected architecture and the
            first few missing, unexpected, mis-shaped and mis-typed keys.
    """
    guess = _guess_size(state_dict)
    hint = (
        f"the checkpoint looks like ConvNeXt-{guess}"
        if guess is not None and guess != model.size
        else ""
    )
    label = f"the official Metric3D ConvNeXt-{model.size} (metric3d_convnext_{model.size})"
    load_strict(model, state_dict, label, hint=hint)


def load_official_checkpoint(model: Metric3DConvNeXt, path: str | PathLike[str]) -> None:
    """Load an official checkpoint file (e.g. ``convtiny_hourglass_v1.pth``) strictly.

    The file is read with ``torch.load(..., weights_only=True)``. If it holds a dict with a
    ``"model_state_dict"`` entry (the official layout), that entry is loaded; otherwise the
    file itself must be the state dict. See :func:`load_official_state_dict`.
    """
    data = read_torch_checkpoint(path)
    load_official_state_dict(model, data)
