"""RAFT-style depth + normal decoder of Metric3D v2 (official name ``RAFTDepthNormalDPT5``).

A plain-PyTorch re-implementation whose parameter names equal the official
``depth_model.decoder.*`` checkpoint keys. Stages, for a ``gh x gw`` ViT patch grid (616x1064
input: 44x76):

1. **Readout** per level: ``GELU(Linear(patch) + Linear_no_bias(cls || registers))``.
2. **Feature pyramid**: levels 3 and 2 stay at 1/14 (identity); level 1 goes through a 2x2
   stride-2 transposed conv (1/7); level 0 through legacy ``nearest`` x3.5 then a 1x1 conv (1/4).
3. **DPT fusion** (``decoder_mono``): residual ReLU-conv blocks, bilinear ``align_corners=True``
   x2 and x7/4, ending at 1/4 with ``feature + depth-confidence + normal-confidence`` channels.
4. **Initial depth**: 256 log-spaced bins in [0.1, 200] (torch float32 ``linspace`` then
   ``exp``), softmax expectation, clamped with two ReLUs, stored as ``(d - 200) / 100``.
   **Initial normal**: a small conv MLP, then ``norm_normalize`` (unit xyz, ``elu(k) + 1.01``).
5. **Context encoder** at 1/4, 1/7, 1/14 (residual blocks with channel LayerNorm, eps 1e-5)
   giving ``tanh`` hidden states and ``relu`` contexts; a 3x3 conv turns each context into the
   z/r/q biases of a ConvGRU.
6. **GRU loop**: each iteration updates the 1/14 GRU three times, the 1/7 GRU twice and the
   1/4 GRU once (slow-fast schedule), then adds a flow-head residual to the 6-channel state
   ``[u, confidence, nx, ny, nz, kappa]``.
7. **Convex x4 upsampling** of the state (softmax over a zero-padded 3x3 neighbourhood), then
   depth ``clamp(100 u + 200)``, raw confidence and normalised normals.

Official quirk kept on purpose: the fusion blocks apply their first ReLU *in place* upstream,
so the 1/7 and 1/14 inputs of the context encoder are ``relu`` of the readout features (the
1/4 input is not). Here that is written out explicitly instead of relying on mutation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RAFT_HEAD_CONFIGS",
    "RAFTDepthNormalDPT5",
    "RAFTHeadConfig",
    "depth_bins",
    "norm_normalize",
]


@dataclass(frozen=True)
class RAFTHeadConfig:
    """Widths and schedule of the decoder.

    Attributes:
        vit_channels: Token width of the backbone (C).
        feature_channels: Readout outputs at ``[1/4, 1/7, 1/14, 1/14]`` (the last is unused:
            level 3 is an identity and keeps ``vit_channels``).
        decoder_channels: ``[-, 1/4, 1/7, 1/14, 1/14]`` fusion widths; the 1/4 output has
            ``decoder_channels[1] + 2`` channels.
        hidden_channels: GRU hidden and context width (same at every level).
        iters: GRU iterations.
        num_register_tokens: Register tokens of the backbone.
        num_bins: Depth bins of the initial estimate.
        min_depth: Lower clamp / first bin (canonical metres).
        max_depth: Upper clamp / last bin (canonical metres).
        regress_scale: Scale between canonical depth and the GRU state ``u``.
        upsample_factor: Convex upsampling factor (``2 ** n_downsample``).
    """

    vit_channels: int
    feature_channels: tuple[int, int, int, int]
    decoder_channels: tuple[int, int, int, int, int]
    hidden_channels: int
    iters: int
    num_register_tokens: int = 4
    num_bins: int = 256
    min_depth: float = 0.1
    max_depth: float = 200.0
    regress_scale: float = 100.0
    upsample_factor: int = 4

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")


#: Decoder configurations of the official Metric3D v2 models.
RAFT_HEAD_CONFIGS: dict[str, RAFTHeadConfig] = {
    "small": RAFTHeadConfig(384, (96, 192, 384, 768), (48, 96, 192, 384, 384), 48, iters=4),
    "large": RAFTHeadConfig(1024, (256, 512, 1024, 1024), (128, 256, 512, 1024, 1024), 128, 8),
    "giant2": RAFTHeadConfig(1536, (384, 768, 1536, 1536), (192, 384, 768, 1536, 1536), 192, 8),
    # Test-only decoder of the toy ViT (``vit.VIT_CONFIGS["tiny"]``).
    "tiny": RAFTHeadConfig(32, (8, 16, 32, 64), (8, 8, 16, 32, 32), 8, iters=2),
}


def depth_bins(num_bins: int, min_depth: float, max_depth: float, device: torch.device) -> Tensor:
    """Log-uniform bin centres (num_bins,), computed like upstream: float32 linspace, then exp.

    Computed on the CPU and then moved, so every device sees the same float32 values.
    """
    log_bins = torch.linspace(
        math.log(min_depth), math.log(max_depth), num_bins, dtype=torch.float32
    )
    return torch.exp(log_bins).to(device)


def norm_normalize(normal: Tensor) -> Tensor:
    """(B, 4, H, W) raw ``[x, y, z, k]`` -> unit ``xyz / (|xyz| + 1e-10)`` and ``elu(k) + 1.01``."""
    nx, ny, nz, kappa = torch.split(normal, 1, dim=1)
    norm = torch.sqrt(nx**2.0 + ny**2.0 + nz**2.0) + 1e-10
    kappa = F.elu(kappa) + 1.0 + 0.01
    return torch.cat([nx / norm, ny / norm, nz / norm, kappa], dim=1)


def _interpolate_f32(x: Tensor, **kwargs: Any) -> Tensor:
    """``F.interpolate`` computed in float32 (as upstream), returned in ``x``'s dtype."""
    return F.interpolate(x.float(), **kwargs).to(x.dtype)


def _interp_like(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear ``align_corners=True`` resize of ``x`` to the spatial size of ``ref``."""
    return _interpolate_f32(x, size=ref.shape[2:], mode="bilinear", align_corners=True)


def _pool2x(x: Tensor) -> Tensor:
    """3x3 stride-2 average pool with zero padding counted (``count_include_pad=True``)."""
    return F.avg_pool2d(x, 3, stride=2, padding=1)


class Readout(nn.Module):
    """DPT readout: ``GELU(project_patch(patch) + project_learn(cls || registers))``."""

    def __init__(self, channels: int, num_register_tokens: int) -> None:
        super().__init__()
        self.project_patch = nn.Linear(channels, channels)
        self.project_learn = nn.Linear((1 + num_register_tokens) * channels, channels, bias=False)

    def forward(self, patches: Tensor, learned: Tensor) -> Tensor:
        """patches: (B, gh, gw, C); learned: (B, 1, 1, (1+R)*C) -> (B, gh, gw, C)."""
        x_patch = self.project_patch(patches)
        x_learn = self.project_learn(learned).expand_as(x_patch)
        return F.gelu(x_patch + x_learn)


class Token2Feature(nn.Module):
    """Readout, then resample to a pyramid level.

    ``mode`` is ``"identity"`` (1/14), ``"deconv"`` (2x2 stride-2 transposed conv, 1/7) or
    ``"nearest3.5"`` (legacy nearest x3.5, then 1x1 conv, 1/4).
    """

    def __init__(self, vit_channels: int, out_channels: int, mode: str, num_reg: int) -> None:
        super().__init__()
        self.mode = mode
        self.readoper = Readout(vit_channels, num_reg)
        if mode == "deconv":
            self.sample = nn.ConvTranspose2d(vit_channels, out_channels, kernel_size=2, stride=2)
        elif mode == "nearest3.5":
            self.sample = nn.Sequential(nn.Conv2d(vit_channels, out_channels, kernel_size=1))
        elif mode == "identity":
            self.sample = nn.Identity()
        else:
            raise ValueError(f"unknown Token2Feature mode {mode!r}")

    def forward(self, patches: Tensor, learned: Tensor) -> Tensor:
        """(B, gh, gw, C), (B, 1, 1, (1+R)*C) -> (B, C_out, H_level, W_level)."""
        x = self.readoper(patches, learned).permute(0, 3, 1, 2).contiguous()
        if self.mode == "nearest3.5":
            x = _interpolate_f32(x, scale_factor=3.5, mode="nearest")
        return self.sample(x)


class EncoderFeature(nn.Module):
    """Readout branches: ``read_3``, ``read_2`` at 1/14, ``read_1`` at 1/7, ``read_0`` at 1/4."""

    def __init__(self, cfg: RAFTHeadConfig) -> None:
        super().__init__()
        c, fc, r = cfg.vit_channels, cfg.feature_channels, cfg.num_register_tokens
        self.read_3 = Token2Feature(c, fc[3], "identity", r)
        self.read_2 = Token2Feature(c, fc[2], "identity", r)
        self.read_1 = Token2Feature(c, fc[1], "deconv", r)
        self.read_0 = Token2Feature(c, fc[0], "nearest3.5", r)


class ConvBlock(nn.Module):
    """DPT residual unit as computed upstream: ``r + conv2(relu(conv1(r)))``, ``r = relu(x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        r = F.relu(x)
        return r + self.conv2(F.relu(self.conv1(r)))


class FuseBlock(nn.Module):
    """DPT fusion: optional branch add, residual unit, optional bilinear upsample, 1x1 conv."""

    def __init__(
        self, in_channels: int, out_channels: int, fuse: bool, scale_factor: float | None
    ) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.way_trunk = ConvBlock(in_channels)
        self.way_branch = ConvBlock(in_channels) if fuse else None
        self.out_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, trunk: Tensor, branch: Tensor | None = None) -> Tensor:
        if branch is not None:
            if self.way_branch is None:
                raise RuntimeError("this FuseBlock has no branch input")
            trunk = trunk + self.way_branch(branch)
        out = self.way_trunk(trunk)
        if self.scale_factor is not None:
            out = _interpolate_f32(
                out, scale_factor=self.scale_factor, mode="bilinear", align_corners=True
            )
        return self.out_conv(out)


class DecoderFeature(nn.Module):
    """1/14 -> 1/7 -> 1/4 fusion ending with ``decoder_channels[1] + 2`` channels."""

    def __init__(self, cfg: RAFTHeadConfig) -> None:
        super().__init__()
        dc = cfg.decoder_channels
        self.upconv_3 = FuseBlock(dc[4], dc[3], fuse=False, scale_factor=None)
        self.upconv_2 = FuseBlock(dc[3], dc[2], fuse=True, scale_factor=2)
        self.upconv_1 = FuseBlock(dc[2], dc[1] + 2, fuse=True, scale_factor=7 / 4)

    def forward(self, x3: Tensor, x2: Tensor, x1: Tensor) -> Tensor:
        """Level 3 and 2 at 1/14, level 1 at 1/7 -> (B, dc[1] + 2, H/4, W/4)."""
        x = self.upconv_3(x3)
        x = self.upconv_2(x, x2)
        return self.upconv_1(x, x1)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, H, W) (torch default eps 1e-5)."""

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x.permute(0, 2, 3, 1).contiguous())
        return x.permute(0, 3, 1, 2).contiguous()


class ResidualBlock(nn.Module):
    """Two 3x3 conv + LayerNorm2d + ReLU, with a 1x1 conv + LayerNorm2d shortcut if widths differ.

    As upstream, ``norm3`` is the same module as ``downsample[1]``, so both key sets exist and
    (when loading a state dict) the ``downsample.1.*`` values, loaded last, are the ones used.
    """

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = LayerNorm2d(planes)
        self.norm2 = LayerNorm2d(planes)
        self.downsample: nn.Sequential | None
        if in_planes != planes:
            self.norm3 = LayerNorm2d(planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1), self.norm3)
        else:
            self.downsample = None

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


def _context_branch(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(in_channels, channels), nn.Conv2d(channels, channels, 3, padding=1)
    )


class ContextFeatureEncoder(nn.Module):
    """Hidden-state and context branches at 1/4 (``outputs04``), 1/7 (``08``) and 1/14 (``16``)."""

    def __init__(self, cfg: RAFTHeadConfig) -> None:
        super().__init__()
        fc, h = cfg.feature_channels, cfg.hidden_channels
        self.outputs04 = nn.ModuleList([_context_branch(fc[0], h) for _ in range(2)])
        self.outputs08 = nn.ModuleList([_context_branch(fc[1], h) for _ in range(2)])
        self.outputs16 = nn.ModuleList([_context_branch(fc[2], h) for _ in range(2)])

    def forward(self, x4: Tensor, x8: Tensor, x16: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Returns ``[(hidden, context)]`` (pre-activation) for 1/4, 1/7 and 1/14."""
        return [
            (branches[0](x), branches[1](x))
            for branches, x in (
                (self.outputs04, x4),
                (self.outputs08, x8),
                (self.outputs16, x16),
            )
        ]


class ConvGRU(nn.Module):
    """Convolutional GRU with precomputed context biases ``cz, cr, cq``."""

    def __init__(self, hidden: int, input_dim: int) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden + input_dim, hidden, 3, padding=1)
        self.convr = nn.Conv2d(hidden + input_dim, hidden, 3, padding=1)
        self.convq = nn.Conv2d(hidden + input_dim, hidden, 3, padding=1)

    def forward(self, h: Tensor, context: tuple[Tensor, Tensor, Tensor], *inputs: Tensor) -> Tensor:
        """h: (B, hidden, H, W); inputs concatenated on channels -> new h."""
        cz, cr, cq = context
        x = torch.cat(inputs, dim=1)
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx) + cz)
        r = torch.sigmoid(self.convr(hx) + cr)
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)) + cq)
        return (1 - z) * h + z * q


class FlowHead(nn.Module):
    """State residual: depth/confidence (2 ch) and normal/kappa (4 ch) conv heads."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.conv1d = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2d = nn.Conv2d(hidden, 2, 3, padding=1)
        self.conv1n = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2n = nn.Conv2d(hidden, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        depth = self.conv2d(F.relu(self.conv1d(x)))
        normal = self.conv2n(F.relu(self.conv1n(x)))
        return torch.cat((depth, normal), dim=1)


class BasicMultiUpdateBlock(nn.Module):
    """Three-level ConvGRU update (1/4 ``gru08``, 1/7 ``gru16``, 1/14 ``gru32``) and heads."""

    STATE_CHANNELS = 6

    def __init__(self, hidden: int, upsample_factor: int) -> None:
        super().__init__()
        self.gru08 = ConvGRU(hidden, self.STATE_CHANNELS + hidden)
        self.gru16 = ConvGRU(hidden, 2 * hidden)
        self.gru32 = ConvGRU(hidden, hidden)
        self.flow_head = FlowHead(hidden)
        self.mask = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, upsample_factor**2 * 9, 1),
        )

    def step32(self, net: list[Tensor], ctx: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        net[2] = self.gru32(net[2], ctx[2], _pool2x(net[1]))

    def step16(self, net: list[Tensor], ctx: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        net[1] = self.gru16(
            net[1], ctx[1], _interp_like(_pool2x(net[0]), net[1]), _interp_like(net[2], net[1])
        )

    def step08(
        self, net: list[Tensor], ctx: list[tuple[Tensor, Tensor, Tensor]], state: Tensor
    ) -> None:
        net[0] = self.gru08(net[0], ctx[0], state, _interp_like(net[1], net[0]))


class RAFTDepthNormalDPT5(nn.Module):
    """Metric3D v2 decoder: ViT tokens -> canonical depth, raw confidence and normals.

    ``forward(features, grid)`` takes the 4 backbone token tensors (B, 1 + R + gh*gw, C) and
    the patch grid ``(gh, gw)`` (both even) and returns a dict with, at ``(4 * 3.5 * gh) x
    (4 * 3.5 * gw)`` = input resolution:

    * ``depth_c``: (B, 1, H, W) canonical depth in [0.1, 200];
    * ``confidence``: (B, 1, H, W) raw depth confidence;
    * ``normal``: (B, 4, H, W) unit normal xyz and kappa.

    In training mode (``.train()``) the dict also holds, for the losses, the official
    per-iteration lists of ``iters + 1`` entries each (entry 0: the initial 1/4 estimate
    upsampled bilinearly x4 with ``align_corners=True``; entry ``i``: after GRU iteration ``i``;
    the last entry is the same tensor as ``depth_c`` / ``confidence`` / ``normal``):

    * ``predictions_list``: (B, 1, H, W) canonical depth, clamped to [0.1, 200];
    * ``confidence_list``: (B, 1, H, W) raw confidence;
    * ``normal_out_list``: (B, 4, H, W) unit normal and kappa.
    """

    #: Gradient of the depth clamp (``_clamp``): ``"official"`` or ``"straight_through"``.
    CLAMP_GRADIENTS = ("official", "straight_through")

    def __init__(self, cfg: RAFTHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.clamp_gradient = "official"
        used = cfg.decoder_channels[1]
        h = cfg.hidden_channels
        self.token2feature = EncoderFeature(cfg)
        self.decoder_mono = DecoderFeature(cfg)
        self.depth_regressor = nn.Sequential(
            nn.Conv2d(used, cfg.num_bins, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cfg.num_bins, cfg.num_bins, kernel_size=1),
        )
        self.normal_predictor = nn.Sequential(
            nn.Conv2d(used, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 128, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(128, 128, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(128, 3, kernel_size=1),
        )
        self.context_feature_encoder = ContextFeatureEncoder(cfg)
        self.context_zqr_convs = nn.ModuleList(
            [nn.Conv2d(h, 3 * h, 3, padding=1) for _ in range(3)]
        )
        self.update_block = BasicMultiUpdateBlock(h, cfg.upsample_factor)

    # ----------------------------------------------------------------------------- helpers
    def _clamp(self, x: Tensor) -> Tensor:
        """Clamp to [min_depth, max_depth] written with two ReLUs, as upstream.

        The value is always upstream's. Its gradient is upstream's (none outside the range)
        unless ``clamp_gradient`` is ``"straight_through"`` (set by training): then the
        gradient passes as if there were no clamp, so a prediction pushed past the floor is
        pulled back by the loss instead of staying there with no gradient.
        """
        y = F.relu(x - self.cfg.min_depth) + self.cfg.min_depth
        y = self.cfg.max_depth - F.relu(self.cfg.max_depth - y)
        if self.clamp_gradient == "straight_through" and x.requires_grad:
            return y.detach() + (x - x.detach())  # value y (x - x is 0), gradient 1
        return y

    def _regress_depth(self, feature: Tensor) -> Tensor:
        """(B, C, h, w) -> initial GRU depth state ``(clamp(E[d]) - max) / scale``, (B, 1, h, w)."""
        prob = self.depth_regressor(feature).softmax(dim=1)
        bins = depth_bins(self.cfg.num_bins, self.cfg.min_depth, self.cfg.max_depth, prob.device)
        depth = torch.sum(prob * bins.to(prob.dtype).view(1, -1, 1, 1), dim=1).unsqueeze(1)
        return (self._clamp(depth) - self.cfg.max_depth) / self.cfg.regress_scale

    def _upsample_convex(self, state: Tensor, mask: Tensor) -> Tensor:
        """Convex upsampling (B, D, h, w) -> (B, D, f*h, f*w); ``mask`` is (B, 9*f*f, h, w).

        Each output pixel is a softmax-weighted sum of the 3x3 neighbourhood of its source cell;
        ``F.unfold`` zero-pads, which pulls the outer ring towards state 0 (depth ``max_depth``).
        """
        b, d, h, w = state.shape
        f = self.cfg.upsample_factor
        weights = torch.softmax(mask.view(b, 1, 9, f, f, h, w), dim=2)
        patches = F.unfold(state, [3, 3], padding=1).view(b, d, 9, 1, 1, h, w)
        up = torch.sum(weights * patches, dim=2)  # (B, D, f, f, h, w)
        return up.permute(0, 1, 4, 2, 5, 3).reshape(b, d, f * h, f * w)

    def _upflow4(self, state: Tensor) -> Tensor:
        """Bilinear (``align_corners=True``) x``upsample_factor`` of the 1/4 state, in float32."""
        h, w = state.shape[-2:]
        f = self.cfg.upsample_factor
        return _interpolate_f32(state, size=(f * h, f * w), mode="bilinear", align_corners=True)

    def _outputs(self, state_up: Tensor) -> dict[str, Tensor]:
        depth = self._clamp(state_up[:, :1] * self.cfg.regress_scale + self.cfg.max_depth)
        return {
            "depth_c": depth,
            "confidence": state_up[:, 1:2],
            "normal": norm_normalize(state_up[:, 2:]),
        }

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        features: list[Tensor],
        grid: tuple[int, int],
        record: dict[str, object] | None = None,
    ) -> dict[str, Tensor]:
        """Decode backbone tokens.

        Args:
            features: 4 tensors (B, 1 + R + gh*gw, C) for levels 0..3 (level 3 is the deepest).
            grid: ``(gh, gw)`` patch grid; both must be even.
            record: If given, filled with intermediates for parity tests: ``features``
                (readout outputs, levels 3, 2, 1, 0), ``decoder_feature``, ``state_init``
                (6-ch initial state at 1/4), ``state_last`` (state entering the last
                upsampling) and ``depth_iters`` (full-resolution depth after every iteration).

        Returns:
            ``{"depth_c", "confidence", "normal"}`` at 4x the 1/4 grid (see class docstring).
        """
        cfg = self.cfg
        gh, gw = grid
        if gh % 2 or gw % 2:
            raise ValueError(f"patch grid {gh}x{gw} must be even in both directions")
        n_learn = 1 + cfg.num_register_tokens
        b = features[0].shape[0]
        split = [
            (
                ft[:, n_learn:, :].reshape(b, gh, gw, cfg.vit_channels),
                ft[:, :n_learn, :].reshape(b, 1, 1, n_learn * cfg.vit_channels),
            )
            for ft in features
        ]
        t2f = self.token2feature
        x3 = t2f.read_3(*split[3])  # 1/14
        x2 = t2f.read_2(*split[2])  # 1/14
        x1 = t2f.read_1(*split[1])  # 1/7
        x0 = t2f.read_0(*split[0])  # 1/4
        if record is not None:
            record["features"] = [x3, x2, x1, x0]

        fused = self.decoder_mono(x3, x2, x1)  # (B, dc[1] + 2, h4, w4)
        if record is not None:
            record["decoder_feature"] = fused
        shared = fused[:, :-2]
        depth_conf = fused[:, -2:-1]
        normal_conf = fused[:, -1:]
        depth_state = self._regress_depth(shared)
        normal_state = norm_normalize(
            torch.cat([self.normal_predictor(shared), normal_conf], dim=1)
        )
        state = torch.cat((depth_state, depth_conf, normal_state), dim=1)  # (B, 6, h4, w4)
        if record is not None:
            record["state_init"] = state

        # Upstream's in-place ReLU in the fusion blocks hands relu(x1), relu(x2) onwards.
        cnet = self.context_feature_encoder(x0, F.relu(x1), F.relu(x2))
        net = [torch.tanh(hidden) for hidden, _ in cnet]
        ctx: list[tuple[Tensor, Tensor, Tensor]] = []
        for (_, context), conv in zip(cnet, self.context_zqr_convs, strict=True):
            cz, cr, cq = conv(F.relu(context)).split(cfg.hidden_channels, dim=1)
            ctx.append((cz, cr, cq))

        update = self.update_block
        depth_iters: list[Tensor] = []
        # Training: every iteration's full-resolution outputs, led by the initial state
        # upsampled bilinearly x4 (align_corners=True), as the official decoder returns them.
        steps = [self._outputs(self._upflow4(state))] if self.training else []
        mask = state.new_empty(0)  # set by every iteration (cfg.iters >= 1)
        for itr in range(cfg.iters):
            update.step32(net, ctx)
            update.step32(net, ctx)
            update.step16(net, ctx)
            update.step32(net, ctx)
            update.step16(net, ctx)
            update.step08(net, ctx, state)
            delta = update.flow_head(net[0])
            mask = 0.25 * update.mask(net[0])
            state = state + delta
            if itr < cfg.iters - 1 and (self.training or record is not None):
                step = self._outputs(self._upsample_convex(state, mask))
                steps.append(step)
                depth_iters.append(step["depth_c"])

        outputs: dict[str, Any] = self._outputs(self._upsample_convex(state, mask))
        if record is not None:
            record["state_last"] = state
            record["depth_iters"] = [*depth_iters, outputs["depth_c"]]
        if self.training:
            steps.append(outputs)
            outputs["predictions_list"] = [s["depth_c"] for s in steps]
            outputs["confidence_list"] = [s["confidence"] for s in steps]
            outputs["normal_out_list"] = [s["normal"] for s in steps]
        return outputs
