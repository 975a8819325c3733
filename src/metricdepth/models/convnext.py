"""ConvNeXt backbone of the Metric3D v1 models, in plain PyTorch.

This is the four-stage ConvNeXt ("A ConvNet for the 2020s", Liu et al. 2022) as Metric3D v1
uses it: no classification head and no final norm; the forward pass returns the output of
every stage, at strides 4, 8, 16 and 32.

Module and parameter names follow the official Metric3D checkpoints, so that
``ConvNeXt.state_dict()`` keys equal the official ``depth_model.encoder.*`` keys with that
prefix removed:

* ``downsample_layers.0`` is the stem (4x4 stride-4 conv, then a channels-first LayerNorm);
  ``downsample_layers.{1,2,3}`` are (channels-first LayerNorm, 2x2 stride-2 conv).
* ``stages.{i}.{j}`` is block ``j`` of stage ``i``: ``gamma`` (layer scale), ``dwconv``
  (7x7 depthwise), ``norm`` (channels-last LayerNorm), ``pwconv1``/``pwconv2`` (Linear).

The arithmetic follows the official code operation by operation (the channels-first
LayerNorm is written out by hand with a biased variance and ``(x - mean) / sqrt(var + eps)``;
the block runs its LayerNorm and MLP channels-last), because the parity fixtures are compared
at float32 rounding level. Stochastic depth (``drop_path_rate`` in the official config) is
the identity at inference and is not implemented: these modules are for inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["CONVNEXT_SPECS", "ConvNeXt", "ConvNeXtBlock", "ConvNeXtSpec", "LayerNorm2d", "convnext"]


@dataclass(frozen=True)
class ConvNeXtSpec:
    """Depth (blocks per stage) and width (channels per stage) of a ConvNeXt."""

    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]


#: The two sizes Metric3D v1 ships (``convtiny.0.3_150.py`` and ``convlarge.0.3_150.py``).
CONVNEXT_SPECS: dict[str, ConvNeXtSpec] = {
    "tiny": ConvNeXtSpec(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "large": ConvNeXtSpec(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
}

_LN_EPS = 1e-6


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor, written out as upstream does.

    ``y = weight * (x - mean_c(x)) / sqrt(var_c(x) + eps) + bias`` with the biased variance,
    computed in the input dtype. Shapes: ``x`` (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, eps: float = _LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block: ``x + gamma * MLP(LN(dwconv7(x)))``, the MLP channels-last.

    The MLP is Linear(C, 4C) -> exact-erf GELU -> Linear(4C, C). ``gamma`` is the per-channel
    layer scale (always present: Metric3D configures ``layer_scale_init_value=1.0``).
    Shapes: ``x`` (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        # ``gamma`` is registered first only for readability; state_dict() lists a module's own
        # parameters before those of its children whatever the order here.
        self.gamma = nn.Parameter(torch.ones(dim))
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)  # back to (B, C, H, W)
        return x + y


class ConvNeXt(nn.Module):
    """Four-stage ConvNeXt feature extractor (no head).

    Input: ``x`` (B, 3, H, W) normalised RGB with H and W multiples of 32 (the stem has stride
    4 and each of the three downsamplings stride 2; other sizes are truncated by the strided
    convs and the Metric3D decoder then cannot align its skips).
    Output: list of 4 tensors, ``dims[i]`` channels at (H/4, W/4), (H/8, W/8), (H/16, W/16)
    and (H/32, W/32).
    """

    def __init__(self, spec: ConvNeXtSpec, in_channels: int = 3) -> None:
        super().__init__()
        self.spec = spec
        dims = spec.dims
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels, dims[0], 4, stride=4), LayerNorm2d(dims[0]))]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))
            for depth, dim in zip(spec.depths, dims, strict=True)
        )

    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        """Channels of the four returned feature maps."""
        return self.spec.dims

    def forward(self, x: Tensor) -> list[Tensor]:
        features: list[Tensor] = []
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
            features.append(x)
        return features


def convnext(size: str) -> ConvNeXt:
    """Build the ConvNeXt of Metric3D v1 size ``"tiny"`` or ``"large"`` (weights uninitialised
    beyond torch defaults)."""
    try:
        spec = CONVNEXT_SPECS[size]
    except KeyError:
        raise ValueError(
            f"unknown ConvNeXt size {size!r}; expected one of {sorted(CONVNEXT_SPECS)}"
        ) from None
    return ConvNeXt(spec)
