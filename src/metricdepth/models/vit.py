"""DINOv2 vision transformer with register tokens, as used by Metric3D v2.

This is a plain-PyTorch re-implementation of the backbone of the official Metric3D v2 ViT
models (sizes ``small``, ``large`` and ``giant2``). Parameter names follow the official
checkpoint layout (``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``patch_embed.proj``, ``blocks.0.<i>.*``, ``norm``), so an official ``depth_model.encoder.*``
state dict loads without renaming.

Numerics that matter for parity with the official code:

* the 37x37 position-embedding grid (made for 518 px) is resized with **bicubic**
  interpolation using *scale factors* ``(grid + 0.1) / 37`` (not a target size), in float32;
* the position embedding is added to the cls token and the patches *before* the register
  tokens are inserted, so registers carry none; token order is ``[cls, reg x R, patches]``;
* attention is ``softmax((q * d^-1/2) @ k^T) @ v``, by default through
  ``F.scaled_dot_product_attention`` (same maths, other float32 rounding; within the parity
  thresholds), or written out as the official code does without xFormers (``"explicit"``);
* LayerNorm eps is 1e-6 and GELU is the exact erf form.

Outputs: ``small`` and ``large`` return the final LayerNorm-ed tokens four times; ``giant2``
returns the **un-normalised** outputs of blocks 10, 20, 30 and 40 (1-based).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ATTENTION_IMPLS",
    "VIT_CONFIGS",
    "DinoVisionTransformer",
    "ViTConfig",
]

FFNKind = Literal["mlp", "swiglu"]
AttentionImpl = Literal["sdpa", "explicit"]
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "explicit")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of one DINOv2-with-registers backbone.

    Attributes:
        embed_dim: Token width C.
        depth: Number of transformer blocks.
        num_heads: Attention heads (head width ``embed_dim // num_heads``).
        ffn: ``"mlp"`` (fc1 -> GELU -> fc2) or ``"swiglu"`` (w12 -> SiLU-gate -> w3).
        multi_output: If True, return the un-normalised outputs of every ``depth // 4``-th
            block (giant2: blocks 10, 20, 30, 40); otherwise the final-norm output 4 times.
        patch_size: Patch side in pixels.
        num_register_tokens: Register tokens inserted after the cls token.
        pos_grid: Side of the square position-embedding grid (518 / 14 = 37).
        mlp_ratio: FFN hidden width relative to ``embed_dim`` (before the SwiGLU 2/3 rule).
        interpolate_offset: Offset added to the target grid before computing the bicubic
            scale factors of the position embedding.
    """

    embed_dim: int
    depth: int
    num_heads: int
    ffn: FFNKind = "mlp"
    multi_output: bool = False
    patch_size: int = 14
    num_register_tokens: int = 4
    pos_grid: int = 37
    mlp_ratio: float = 4.0
    interpolate_offset: float = 0.1

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
        if self.multi_output and (self.depth < 4 or self.depth % 4 != 0):
            raise ValueError(f"multi_output needs a depth divisible by 4, got {self.depth}")

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the FFN (SwiGLU: 2/3 of the MLP width, rounded up to 8)."""
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    @property
    def output_blocks(self) -> tuple[int, ...]:
        """0-based indices of the blocks whose outputs are returned in multi-output mode."""
        step = self.depth // 4
        return tuple(i for i in range(self.depth) if (i + 1) % step == 0)


#: Backbone configurations of the official Metric3D v2 models.
VIT_CONFIGS: dict[str, ViTConfig] = {
    "small": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "large": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "giant2": ViTConfig(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu", multi_output=True),
    # Test-only: the same architecture at toy width and depth (training and DDP tests).
    "tiny": ViTConfig(embed_dim=32, depth=2, num_heads=2),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, (H/p)*(W/p), C), row-major."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    ``impl="sdpa"`` uses ``F.scaled_dot_product_attention`` (fast, no (N, N) matrix kept);
    ``impl="explicit"`` computes ``softmax((q * d^-1/2) @ k^T) @ v`` like the official code
    without xFormers. Both are the same maths and meet the parity thresholds; they differ in
    float32 rounding only.
    """

    def __init__(self, dim: int, num_heads: int, impl: AttentionImpl = "sdpa") -> None:
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, d)
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
            out = weights @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Two-layer perceptron with exact GELU: C -> hidden -> C."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward: ``w3(silu(a) * b)`` where ``(a, b)`` are the halves of ``w12(x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Per-channel residual scaling ``x * gamma``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x += ls1(attn(norm1(x)))``; ``x += ls2(ffn(norm2(x)))``."""

    def __init__(self, cfg: ViTConfig, attention: AttentionImpl = "sdpa") -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, attention)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        ffn_cls = SwiGLUFFN if cfg.ffn == "swiglu" else Mlp
        self.mlp = ffn_cls(dim, cfg.ffn_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with register tokens (Metric3D v2 encoder).

    ``forward(x)`` takes a normalised image batch ``(B, 3, H, W)`` with ``H`` and ``W``
    multiples of the patch size and returns ``(features, (gh, gw))``: a list of 4 token tensors
    of shape ``(B, 1 + R + gh*gw, C)`` (token order ``[cls, reg x R, patches]``, patches
    row-major) and the patch-grid size. ``attention`` selects the attention kernel (see
    :class:`Attention`); it does not change the parameters.

    ``activation_checkpointing`` (attribute, default False): in training mode with gradients
    enabled, each block's activations are recomputed in the backward pass instead of stored
    (``torch.utils.checkpoint``, non-reentrant); outputs and gradients are the same.
    """

    def __init__(self, cfg: ViTConfig, attention: AttentionImpl = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        # Parameter registration order fixes the state-dict order of the official layout.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid * cfg.pos_grid + 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        # Used only for masked-image training upstream; kept so the official keys load.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        # Official checkpoints use one block chunk, hence the keys ``blocks.0.<i>.*``.
        self.blocks = nn.ModuleList(
            [nn.ModuleList([Block(cfg, attention) for _ in range(cfg.depth)])]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.activation_checkpointing = False
        self._fixed_position: tuple[int, int, Tensor] | None = None  # see ``fixed_grid``

    @contextmanager
    def fixed_grid(self, grid_h: int, grid_w: int) -> Iterator[None]:
        """Within the block, the position embedding of a ``grid_h x grid_w`` patch grid is a
        constant computed once on entry, not a resampling of ``pos_embed``.

        For a graph traced or exported for one canvas (``metricdepth.export``): the bicubic
        resampling of the stored grid depends only on the canvas size, so the graph carries
        its result instead of a Resize of a parameter. Other grids are computed as usual.
        """
        with torch.no_grad():
            fixed = self.interpolate_pos_encoding(grid_h, grid_w).detach().clone()
        previous, self._fixed_position = self._fixed_position, (grid_h, grid_w, fixed)
        try:
            yield
        finally:
            self._fixed_position = previous

    def _run_block(self, block: nn.Module, tokens: Tensor) -> Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, tokens, use_reentrant=False)
        return block(tokens)

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embedding for a ``grid_h x grid_w`` patch grid: (1, 1 + gh*gw, C).

        The cls entry is kept; the square grid is resized bicubically with scale factors
        ``(g + offset) / pos_grid`` in float32, exactly like the official code. A square
        input whose grid already equals ``pos_grid`` uses the stored embedding unchanged.
        """
        fixed = self._fixed_position
        if fixed is not None and fixed[:2] == (grid_h, grid_w):
            return fixed[2]
        cfg = self.cfg
        n_stored = cfg.pos_grid * cfg.pos_grid
        if grid_h * grid_w == n_stored and grid_h == grid_w:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        pos = self.pos_embed.float()
        cls_pos = pos[:, :1]
        grid = pos[:, 1:].reshape(1, cfg.pos_grid, cfg.pos_grid, dim).permute(0, 3, 1, 2)
        target_h = grid_h + cfg.interpolate_offset
        target_w = grid_w + cfg.interpolate_offset
        side = math.sqrt(n_stored)
        grid = F.interpolate(
            grid,
            scale_factor=(float(target_h) / side, float(target_w) / side),
            mode="bicubic",
            antialias=False,
        )
        if grid.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(
                f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, "
                f"expected {(grid_h, grid_w)}"
            )
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((cls_pos, grid), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, 1 + R + gh*gw, C) entering block 0, and (gh, gw)."""
        b, _, h, w = x.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {p}")
        grid_h, grid_w = h // p, w // p
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid_h, grid_w).to(tokens.dtype)
        tokens = torch.cat(
            (tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]), dim=1
        )
        return tokens, (grid_h, grid_w)

    def forward(
        self, x: Tensor, record: dict[str, object] | None = None
    ) -> tuple[list[Tensor], tuple[int, int]]:
        """Run the backbone.

        Args:
            x: Normalised RGB, (B, 3, H, W), H and W multiples of the patch size.
            record: If given, ``record["tokens_in"]`` receives the tokens entering block 0 and
                ``record["tokens_out"]`` the returned feature list (for parity tests).

        Returns:
            ``(features, (gh, gw))``: 4 tensors (B, 1 + R + gh*gw, C) and the patch grid.
        """
        tokens, grid = self.prepare_tokens(x)
        if record is not None:
            record["tokens_in"] = tokens
        blocks = self.blocks[0]
        if self.cfg.multi_output:
            wanted = set(self.cfg.output_blocks)
            features = []
            for i, block in enumerate(blocks):
                tokens = self._run_block(block, tokens)
                if i in wanted:
                    features.append(tokens)
        else:
            for block in blocks:
                tokens = self._run_block(block, tokens)
            tokens = self.norm(tokens)
            features = [tokens, tokens, tokens, tokens]
        if record is not None:
            record["tokens_out"] = features
        return features, grid
