"""Hourglass depth decoder of the Metric3D v1 (ConvNeXt) models, in plain PyTorch.

Given the four ConvNeXt stage outputs (strides 4, 8, 16, 32), the decoder

1. fuses them top-down (``decoder_mono``): 1x1 and reflection-padded 3x3 convs with ELU,
   nearest x2 upsampling and concatenated skips, down to ``decoder_channels[1]`` channels at
   stride 4;
2. refines that map with a small BatchNorm UNet (``conv_out_2``: three stride-2 levels, 128,
   64, 32, 16 channels, transposed-conv upsampling with additive skips) into 256 feature
   channels plus one raw confidence channel;
3. regresses depth at stride 4 as the softmax expectation over 512 log-spaced bins in
   [0.3, 150] canonical metres (``depth_regressor_2`` gives the logits);
4. upsamples that depth x4 (nearest) and adds ``0.1 * conv_up_2(...)``, a residual computed
   from the stride-4 depth, the *absolute pixel-index* grid (x, y) of the stride-4 map and
   the 256 features, with its own nearest x4 upsampling inside. The confidence is the UNet's
   last channel, nearest-upsampled x4, with no activation. Nothing is clamped.

Module and parameter names follow the official checkpoints (``depth_model.decoder.*`` with
that prefix removed). The operation order follows the official code, because the parity
fixtures are compared at float32 rounding level. BatchNorm layers are meant to run in eval
mode. Because of the pixel-index grid input, the output depends on absolute position: use
the input size the model was trained for (544x1216).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DepthExpectation", "HourglassDecoder", "depth_bins"]

#: Channels of the UNet's output feature map (plus one confidence channel).
_FEATURE_CHANNELS = 256
#: Channels inside the full-resolution residual branch ``conv_up_2``.
_RESIDUAL_CHANNELS = 16
#: Base width of the UNet (``num_depth`` upstream); its levels have 128, 64, 32, 16 channels.
_UNET_WIDTH = 128


def depth_bins(min_depth: float, max_depth: float, num_bins: int) -> Tensor:
    """Bin centres ``exp(linspace(ln min, ln max, n))`` as upstream computes them.

    Computed in float32 on the CPU (torch's ``linspace`` then ``exp``; numpy or float64 give
    values 1 ulp apart for a few hundred of the 512 bins). Returns shape (num_bins,).
    """
    grid = torch.linspace(math.log(min_depth), math.log(max_depth), num_bins, dtype=torch.float32)
    return torch.exp(grid)


class _ConvElu(nn.Module):
    """Conv (1x1, or 3x3 after ReflectionPad2d(1)) then ELU. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size == 3:
            self.conv: nn.Module = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3)
            )
        elif kernel_size == 1:
            self.conv = nn.Conv2d(in_channels, out_channels, 1)
        else:
            raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
        self.nonlin = nn.ELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlin(self.conv(x))


class _ConvEluDouble(_ConvElu):
    """``_ConvElu`` followed by a 1x1 conv and a second ELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 1)
        self.nonlin_2 = nn.ELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlin_2(self.conv_2(super().forward(x)))


def _upsample_nearest(x: Tensor, factor: int) -> Tensor:
    """Legacy nearest upsampling by an integer factor: (B, C, H, W) -> (B, C, fH, fW)."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


class _FeatureFusion(nn.Module):
    """Top-down fusion of the four backbone maps (``decoder_mono`` upstream).

    Input: list of 4 maps with ``feat_channels[i]`` channels at strides 4, 8, 16, 32.
    Output: (B, dec[1], H/4, W/4) with ``dec = decoder_channels``.
    """

    def __init__(self, feat_channels: Sequence[int], decoder_channels: Sequence[int]) -> None:
        super().__init__()
        f, d = feat_channels, decoder_channels
        self.upconv_3_0 = _ConvElu(f[3], d[3], kernel_size=1)
        self.upconv_3_1 = _ConvEluDouble(f[2] + d[3], d[3], kernel_size=1)
        self.upconv_2_0 = _ConvElu(d[3], d[2], kernel_size=3)
        self.upconv_2_1 = _ConvEluDouble(f[1] + d[2], d[2], kernel_size=3)
        self.upconv_1_0 = _ConvElu(d[2], d[1], kernel_size=3)
        self.upconv_1_1 = _ConvEluDouble(f[0] + d[1], d[1], kernel_size=3)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = self.upconv_3_0(features[3])
        x = self.upconv_3_1(torch.cat((_upsample_nearest(x, 2), features[2]), 1))
        x = self.upconv_2_0(x)
        x = self.upconv_2_1(torch.cat((_upsample_nearest(x, 2), features[1]), 1))
        x = self.upconv_1_0(x)
        return self.upconv_1_1(torch.cat((_upsample_nearest(x, 2), features[0]), 1))


class _ConvBnReLU(nn.Module):
    """3x3 conv (no bias, padding 1, given stride), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _deconv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """x2 transposed conv (3x3, stride 2, padding 1, output_padding 1, no bias), BN, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(
            in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class _HourglassUNet(nn.Module):
    """Three-level BatchNorm UNet with additive skips (``conv_out_2`` upstream).

    Input (B, C_in, h, w) with h and w multiples of 8; output (B, C_out, h, w).
    Level widths are 128, 64, 32, 16 channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        widths = (_UNET_WIDTH, _UNET_WIDTH // 2, _UNET_WIDTH // 4, _UNET_WIDTH // 8)
        self.conv0 = _ConvBnReLU(in_channels, widths[0])
        for i in range(3):
            down = nn.Sequential(
                _ConvBnReLU(widths[i], widths[i + 1], stride=2),
                _ConvBnReLU(widths[i + 1], widths[i + 1]),
            )
            self.add_module(f"conv_{i}", down)
        # Registration order reproduces the official state_dict order: deconv_2, prob,
        # deconv_1, deconv_0 (upstream creates ``prob`` inside its deconv loop).
        self.deconv_2 = _deconv_bn_relu(widths[3], widths[2])
        self.prob = nn.Conv2d(widths[0], out_channels, 1)
        self.deconv_1 = _deconv_bn_relu(widths[2], widths[1])
        self.deconv_0 = _deconv_bn_relu(widths[1], widths[0])

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.conv0(x)]
        for i in range(3):
            skips.append(getattr(self, f"conv_{i}")(skips[-1]))
        x = skips[3]
        for i in (2, 1, 0):
            x = skips[i] + getattr(self, f"deconv_{i}")(x)
        return self.prob(x)


class DepthExpectation(nn.Module):
    """Softmax over bin logits, then the expectation over log-spaced bin centres.

    Input: logits (B, n, h, w). Output: depth (B, 1, h, w) in canonical metres. Has no
    parameters and no state_dict entries; the bin centres are computed on the CPU once (see
    :func:`depth_bins`) and cached per device and dtype.
    """

    def __init__(self, min_depth: float, max_depth: float, num_bins: int) -> None:
        super().__init__()
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.num_bins = int(num_bins)
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def bins(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """Bin centres, shape (num_bins,), on ``device``."""
        key = (device, dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = depth_bins(self.min_depth, self.max_depth, self.num_bins)
            cached = cached.to(device=device, dtype=dtype)
            self._cache[key] = cached
        return cached

    def forward(self, logits: Tensor) -> Tensor:
        if logits.shape[1] != self.num_bins:
            raise ValueError(f"expected {self.num_bins} bin logits, got {logits.shape[1]}")
        prob = logits.softmax(dim=1)
        centres = self.bins(prob.device, prob.dtype).view(1, -1, 1, 1)
        return torch.sum(prob * centres, 1).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"bins={self.num_bins}, range=({self.min_depth}, {self.max_depth})"


def _pixel_index_grid(batch: int, height: int, width: int, like: Tensor) -> Tensor:
    """Unnormalised pixel indices: (B, 2, H, W) with channel 0 = x (column), 1 = y (row)."""
    ys = torch.arange(height, dtype=like.dtype, device=like.device)
    xs = torch.arange(width, dtype=like.dtype, device=like.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y)).unsqueeze(0).expand(batch, -1, -1, -1)


class HourglassDecoder(nn.Module):
    """Metric3D v1 depth decoder (``HourglassDecoder`` upstream).

    Args:
        feat_channels: channels of the four backbone maps (strides 4, 8, 16, 32).
        decoder_channels: ``decoder_channel`` of the official config: (64, 64, 128, 256)
            for ConvNeXt-Tiny, (128, 128, 256, 512) for ConvNeXt-Large.
        depth_range: (min, max) of the depth bins in canonical metres, (0.3, 150) upstream.
        num_bins: number of depth bins, 512 upstream.

    ``forward(features)`` with the four maps of an (H, W) input returns a dict:

    * ``depth``: (B, 1, H, W) canonical depth, unclamped;
    * ``confidence``: (B, 1, H, W) raw confidence (no activation);
    * ``depth_lowres``: (B, 1, H/4, W/4) the softmax-expectation depth;
    * ``confidence_lowres``: (B, 1, H/4, W/4) the UNet confidence channel.
    """

    def __init__(
        self,
        feat_channels: Sequence[int],
        decoder_channels: Sequence[int],
        depth_range: tuple[float, float] = (0.3, 150.0),
        num_bins: int = 512,
    ) -> None:
        super().__init__()
        if len(feat_channels) != 4 or len(decoder_channels) != 4:
            raise ValueError("feat_channels and decoder_channels need 4 entries each")
        self.decoder_mono = _FeatureFusion(feat_channels, decoder_channels)
        self.conv_out_2 = _HourglassUNet(decoder_channels[1], _FEATURE_CHANNELS + 1)
        self.depth_regressor_2 = nn.Sequential(
            nn.Conv2d(_FEATURE_CHANNELS, num_bins, 3, padding=1),
            nn.BatchNorm2d(num_bins),
            nn.ReLU(),
            nn.Conv2d(num_bins, num_bins, 1),
        )
        r = _RESIDUAL_CHANNELS
        self.conv_up_2 = nn.Sequential(
            nn.Conv2d(1 + 2 + _FEATURE_CHANNELS, r, 3, padding=1),
            nn.BatchNorm2d(r),
            nn.ReLU(),
            nn.Conv2d(r, r, 3, padding=1),
            nn.Upsample(scale_factor=4, mode="nearest"),
            nn.Conv2d(r, r, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(r, 1, 1),
        )
        self.depth_expectation = DepthExpectation(depth_range[0], depth_range[1], num_bins)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        fused = self.decoder_mono(features)  # (B, dec[1], h, w), h = H/4
        unet_out = self.conv_out_2(fused)  # (B, 257, h, w)
        feat = unet_out[:, :-1]
        confidence_lowres = unet_out[:, -1:]
        depth_lowres = self.depth_expectation(self.depth_regressor_2(feat))  # (B, 1, h, w)
        batch, _, height, width = depth_lowres.shape
        grid = _pixel_index_grid(batch, height, width, depth_lowres)
        residual = self.conv_up_2(torch.cat((depth_lowres, grid, feat), 1))  # (B, 1, H, W)
        depth = _upsample_nearest(depth_lowres, 4) + 0.1 * residual
        return {
            "depth": depth,
            "confidence": _upsample_nearest(confidence_lowres, 4),
            "depth_lowres": depth_lowres,
            "confidence_lowres": confidence_lowres,
        }
