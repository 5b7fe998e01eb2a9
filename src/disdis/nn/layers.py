"""Building blocks shared by the first-stage autoencoder and the diffusion U-Net.

- :func:`group_norm`: GroupNorm with 32 groups (fewer when the width is small).
- :func:`timestep_embedding`: sinusoidal embedding of diffusion steps
  (Vaswani et al. 2017, as used by Ho et al. 2020).
- :class:`ResBlock`: pre-activation residual block (GroupNorm, SiLU, 3x3 conv) with
  an optional step embedding injected by scale-shift ("FiLM"; Dhariwal & Nichol
  2021, section 3) and optional resampling inside the residual path (BigGAN style,
  Brock et al. 2019).
- :class:`SpatialTransformer`: a transformer block on the pixels of a feature map
  (self-attention, cross-attention to a context, GEGLU feed-forward; Rombach et al.
  2022, appendix), all attention through ``F.scaled_dot_product_attention``.

Feature maps may be in either memory format; channels-last is the fast one on CPU
(oneDNN convolutions, and the transformer's pixel-major view of the map is free).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or the largest divisor of ``channels`` below it."""
    groups = math.gcd(channels, groups)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) steps ``t`` (B,) -> (B, dim).

    Frequencies ``max_period ** (-k / (dim/2))`` for k = 0..dim/2-1; the first half of
    the output holds the cosines, the second half the sines.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Downsample(nn.Module):
    """Halve the resolution: a 3x3 stride-2 convolution, or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("pooling cannot change the number of channels")
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then an optional 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None
        if self.conv is None and out_channels != channels:
            raise ValueError("upsampling without a convolution cannot change the number of channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block ``x + f(x)`` (a 1x1 convolution on the skip when the width changes).

    ``f``: GroupNorm, SiLU, [resample], 3x3 conv, then the step embedding, then
    GroupNorm, SiLU, dropout, 3x3 conv (zero-initialised). With ``scale_shift`` the
    embedding gives (scale, shift) and the second norm's output becomes
    ``norm(h) * (1 + scale) + shift``; otherwise it is added before the norm.
    ``up`` / ``down`` resample both the branch and the skip (nearest / average pool).
    ``emb_channels=None`` makes a plain residual block (used by the autoencoder).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, emb_channels: int | None = None,
                 dropout: float = 0.0, scale_shift: bool = True, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        if up and down:
            raise ValueError("a ResBlock resamples up or down, not both")
        self.scale_shift = scale_shift and emb_channels is not None
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if up:
            self.resample: nn.Module = Upsample(in_channels, use_conv=False)
        elif down:
            self.resample = Downsample(in_channels, use_conv=False)
        else:
            self.resample = nn.Identity()
        self.emb_proj = None
        if emb_channels is not None:
            self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if self.scale_shift else out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        h = self.conv1(self.resample(h))
        x = self.resample(x)
        if self.emb_proj is None:
            h = self.norm2(h)
        else:
            e = self.emb_proj(F.silu(emb))[:, :, None, None]
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = torch.addcmul(shift, self.norm2(h), 1 + scale)
            else:
                h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B, L, dim) over ``context`` (B, M, context_dim), or over
    itself when no context is given; bias-free projections, fused SDPA kernel."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (self._heads(p(s)) for p, s in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))

    def weights(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights (B, heads, L, M) the forward pass applies, in float32 (for diagnostics
        and attention maps; the forward pass itself never forms them)."""
        context = x if context is None else context
        q, k = self._heads(self.to_q(x)).float(), self._heads(self.to_k(context)).float()
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)


class GEGLU(nn.Module):
    """Feed-forward ``W2 (a * GELU(g))`` with ``[a, g] = W1 x`` (Shazeer 2020), width ``mult * dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(a * F.gelu(gate)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: self-attention, cross-attention to the context, GEGLU."""

    def __init__(self, dim: int, num_heads: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, context_dim=context_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer on the H*W pixels of a feature map, conditioned on ``context`` (B, M, context_dim).

    GroupNorm, a linear projection in (equivalent to a 1x1 convolution), ``depth``
    transformer layers, a zero-initialised projection out, added to the input.
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int, depth: int = 1, dropout: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, num_heads, context_dim, dropout) for _ in range(depth))
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        # (B, C, H, W) -> (B, H*W, C); a view without copying when x is channels-last
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)
        h = self.proj_in(h)
        for block in self.blocks:
            h = block(h, context)
        h = self.proj_out(h).reshape(b, hgt, wid, c).permute(0, 3, 1, 2)
        return x + h
