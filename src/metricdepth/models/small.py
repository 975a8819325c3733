"""``small_unet``: metricdepth's own compact depth network (plain PyTorch, 1.5 M parameters).

A residual U-Net built for CPU training on synthetic scenes:

- encoder: a stride-2 stem, then one stage per level (a stride-2 3x3 convolution and a residual
  block of two 3x3 convolutions), BatchNorm + ReLU, channels ``widths`` at strides 2 ... 2**L;
- context: a global-average-pooled vector of the bottleneck goes through a small MLP; it is
  added to the bottleneck features (image-level scale reasoning) and also gives a global
  log-depth offset added to the output (the network predicts "scene scale + local shape");
- decoder: bilinear x2 upsampling, concatenation with the encoder skip, one or two 3x3
  convolutions per level, up to stride 2; a 3x3 head predicts log-depth at 1/2 resolution,
  which is upsampled bilinearly to the input size.

The network is fully convolutional: any ``H x W`` works. Inputs are padded internally (with
zeros, which is the mean colour after normalisation, as the canonical padding) up to a multiple
of ``size_multiple = 2**len(widths)`` and the output is cut back to ``H x W``. Passing canvases
that already are multiples (``CanonicalSpace.size_multiple``) avoids that padding.

``forward(x)`` with ``x`` float32 (B, 3, H, W), normalised RGB (``canonical.normalize``),
returns ``{"depth_c": (B, 1, H, W) > 0, "log_depth_c": (B, 1, H, W)}``: depth in the canonical
camera space of the model's training variant (metres; metric depth for the ``none`` variant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Default channel widths per level (strides 2, 4, 8, 16, 32).
DEFAULT_WIDTHS: tuple[int, ...] = (12, 24, 48, 96, 192)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(self.conv1(x))))


class SmallUNet(nn.Module):
    """Compact residual U-Net with a global context vector; see the module docstring.

    Args:
        widths: channels of each encoder level (strides 2, 4, ...); ``size_multiple`` is
            ``2 ** len(widths)``.
        decoder_blocks: 3x3 convolutions per decoder level at strides >= 4 (stride 2 gets one).
        context: add the global-average-pool context vector and global log-depth offset.
        init_log_depth: initial output log-depth (the head bias), e.g. log of a typical depth.
        max_log_depth: log-depth outputs are clamped to [-max_log_depth, max_log_depth]
            before ``exp`` so that ``depth_c`` stays finite.
    """

    def __init__(
        self,
        widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS,
        decoder_blocks: int = 1,
        context: bool = True,
        init_log_depth: float = math.log(5.0),
        max_log_depth: float = 12.0,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"small_unet: widths must be >= 2 positive ints, got {widths}")
        if int(decoder_blocks) < 1:
            raise ValueError(f"small_unet: decoder_blocks must be >= 1, got {decoder_blocks}")
        self.widths = widths
        self.size_multiple = 2 ** len(widths)
        self.max_log_depth = float(max_log_depth)
        self.stem = nn.Sequential(_conv_bn(3, widths[0], stride=2), _conv_bn(widths[0], widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv_bn(widths[i - 1], widths[i], stride=2), _ResBlock(widths[i]))
            for i in range(1, len(widths))
        )
        top = widths[-1]
        self.context = (
            nn.Sequential(nn.Linear(top, top), nn.ReLU(inplace=True), nn.Linear(top, top + 1))
            if context
            else None
        )
        self.up = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            c_in, c_out = widths[i] + widths[i - 1], widths[i - 1]
            blocks = decoder_blocks if i > 1 else 1
            layers = [_conv_bn(c_in, c_out)] + [_conv_bn(c_out, c_out) for _ in range(blocks - 1)]
            self.up.append(nn.Sequential(*layers))
        self.head = nn.Conv2d(widths[0], 1, 3, padding=1)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.constant_(self.head.bias, float(init_log_depth))
        if self.context is not None:
            nn.init.zeros_(self.context[2].weight)
            nn.init.zeros_(self.context[2].bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalised RGB -> ``{"depth_c", "log_depth_c"}``, each (B, 1, H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"small_unet expects (B, 3, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-height) % m, (-width) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        offset = None
        if self.context is not None:
            ctx = self.context(y.mean(dim=(2, 3)))
            y = y + ctx[:, :-1, None, None]
            offset = ctx[:, -1, None, None, None]
        for stage in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = stage(torch.cat([y, skip], dim=1))
        log_depth = self.head(y)
        if offset is not None:
            log_depth = log_depth + offset
        log_depth = F.interpolate(
            log_depth, size=x.shape[-2:], mode="bilinear", align_corners=False
        )[..., :height, :width]
        log_depth = log_depth.clamp(-self.max_log_depth, self.max_log_depth)
        return {"depth_c": torch.exp(log_depth), "log_depth_c": log_depth}


def build_small_unet(**kwargs) -> SmallUNet:
    """Build ``SmallUNet(**kwargs)`` (the ``small_unet`` architecture of the registry)."""
    return SmallUNet(**kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
