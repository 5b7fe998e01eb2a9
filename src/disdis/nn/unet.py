"""The diffusion U-Net conditioned on unit tokens, with Skip Dropout (docs/method.md, "U-Net").

The layout follows the latent-diffusion U-Net (Rombach et al. 2022) in the
released configuration: per level ``num_res_blocks`` residual blocks (scale-shift
norm), each followed by a :class:`~disdis.nn.layers.SpatialTransformer` when the
level's downsampling factor is in ``attention_resolutions``; residual blocks that
down/up-sample between levels; a middle of ResBlock, transformer, ResBlock; a
decoder that concatenates the encoder's skip tensors (one per encoder block) and
has ``num_res_blocks + 1`` blocks per level.

Skip Dropout (the paper's section 3.3): while training, every skip tensor popped
on the decoder path at a configured spatial size is multiplied by a per-sample,
per-channel Bernoulli(1 - p) mask and rescaled by 1 / (1 - p), so the decoder
cannot rely on copying detail through the skips and must use the tokens. The
released code drops a skip when its spatial *width* is not among the
attention *downsampling factors* (a comparison of two different quantities);
at the paper's 16x16 latent with factors (1, 2, 4) that is the 16x16 and 8x8
skips, 6 of 12. ``skip_dropout_resolutions: released`` reproduces that rule
(docs/released-code.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from disdis import draws
from disdis.errors import ConfigError
from disdis.nn.layers import (Downsample, ResBlock, SpatialTransformer, Upsample, group_norm,
                              timestep_embedding, zero_init)


@dataclass
class UNetConfig:
    """U-Net hyper-parameters; the defaults are the paper's (released) configuration."""

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 16
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (1, 2, 4)  # downsampling factors with transformer blocks
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 32
    dropout: float = 0.1
    skip_dropout: float = 0.2
    # the skip tensors Skip Dropout acts on: "released" (those whose spatial width is not in
    # attention_resolutions, the released code's rule), "all", or a list of spatial sizes
    skip_dropout_resolutions: Union[Literal["released", "all"], list[int]] = "released"
    use_checkpoint: bool = False
    # a diagnostic (not in the released code): append two fixed channels holding each pixel's x and
    # y in [-1, 1] to the input, so that features, and the cross-attention queries, know where they are
    coord_channels: bool = False
    # a diagnostic (not in the released code): with N > 0, the N context tokens, flattened, are also
    # projected into the time embedding, so that they scale and shift every ResBlock's features
    # (the class-conditioning path of ADM) besides entering the cross-attention
    context_tokens: int = 0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True

    def __post_init__(self) -> None:
        checks = [
            (min(self.in_channels, self.out_channels, self.base_channels, self.num_heads, self.context_dim,
                 self.num_res_blocks, self.transformer_depth) >= 1,
             "in_channels/out_channels/base_channels/num_heads/context_dim/num_res_blocks/transformer_depth",
             "positive integers"),
            (len(self.channel_mult) >= 1 and min(self.channel_mult) >= 1, "channel_mult", "positive multipliers"),
            (0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)"),
            (0.0 <= self.skip_dropout < 1.0, "skip_dropout", "in [0, 1)"),
            (self.context_tokens >= 0, "context_tokens", "0 or more"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"unet.{key}: expected {expected}")
        factors = [2 ** level for level in range(len(self.channel_mult))]
        unknown = sorted(set(self.attention_resolutions) - set(factors))
        if unknown:
            raise ConfigError(f"unet.attention_resolutions: {unknown} is not a downsampling factor of this U-Net "
                              f"(its levels have factors {factors})")


class SkipDropout(nn.Module):
    """Drop whole channels of a skip tensor, per sample, while training.

    ``h * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` of shape (B, C, 1, 1), so the
    expectation of the output equals ``h``; the identity in eval mode or when p = 0.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"skip dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return h
        keep = 1.0 - self.p
        mask = torch.empty(h.shape[0], h.shape[1], 1, 1, device=h.device, dtype=h.dtype).bernoulli_(
            keep, generator=draws.generator())
        return h * (mask / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TimestepBlock(nn.Sequential):
    """A sequence of ResBlocks and SpatialTransformers that routes the step embedding and the
    context to the layers that take them."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """``forward(x, t, context) -> eps``: x (B, C, H, W), t (B,) steps, context (B, U, context_dim)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.context_tokens:
            self.context_embed = nn.Linear(cfg.context_tokens * cfg.context_dim, emb_dim)

        def res(cin: int, cout: int, **kw) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, cfg.dropout, cfg.use_scale_shift_norm, **kw)

        def attn(c: int) -> SpatialTransformer:
            return SpatialTransformer(c, cfg.num_heads, cfg.context_dim, cfg.transformer_depth)

        def resample(c: int, direction: str) -> nn.Module:
            if cfg.resblock_updown:
                return res(c, c, **{direction: True})
            return Downsample(c, use_conv=True) if direction == "down" else Upsample(c, use_conv=True)

        # encoder; skip_channels / skip_sizes record what each block leaves for the decoder
        self.input_blocks = nn.ModuleList([TimestepBlock(nn.Conv2d(cfg.in_channels + 2 * cfg.coord_channels, ch, 3,
                                                                   padding=1))])
        skip_channels, skip_sizes = [ch], [cfg.resolution]
        ds, size = 1, cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * cfg.base_channels)]
                ch = mult * cfg.base_channels
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepBlock(*layers))
                skip_channels.append(ch)
                skip_sizes.append(size)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepBlock(resample(ch, "down")))
                ds, size = 2 * ds, size // 2
                skip_channels.append(ch)
                skip_sizes.append(size)

        self.middle_block = TimestepBlock(res(ch, ch), attn(ch), res(ch, ch))

        drop_sizes = _skip_dropout_sizes(cfg, set(skip_sizes))
        self.output_blocks = nn.ModuleList()
        self.skip_dropouts = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                skip_ch, skip_size = skip_channels.pop(), skip_sizes.pop()
                self.skip_dropouts.append(SkipDropout(cfg.skip_dropout if skip_size in drop_sizes else 0.0))
                layers = [res(ch + skip_ch, mult * cfg.base_channels)]
                ch = mult * cfg.base_channels
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(resample(ch, "up"))
                    ds //= 2
                self.output_blocks.append(TimestepBlock(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels))
        context = context.to(x.dtype)
        if self.cfg.context_tokens:
            emb = emb + self.context_embed(context.flatten(1))
        skips = []
        h = torch.cat([x, _coordinates(x)], dim=1) if self.cfg.coord_channels else x
        for block in self.input_blocks:
            h = self._run(block, h, emb, context)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context)
        for block, skip_dropout in zip(self.output_blocks, self.skip_dropouts):
            h = torch.cat([h, skip_dropout(skips.pop())], dim=1)
            h = self._run(block, h, emb, context)
        return self.out(h)

    def _run(self, block: TimestepBlock, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.cfg.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): each pixel's column and row position, from -1 to 1."""
    b, _, h, w = x.shape
    rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([cols, rows], dim=1)


def _check(cfg: UNetConfig) -> None:
    levels = len(cfg.channel_mult)
    if cfg.resolution % 2 ** (levels - 1):
        raise ConfigError(f"unet.resolution: {cfg.resolution} must be divisible by {2 ** (levels - 1)} "
                          f"for {levels} levels of channel_mult")
    for mult in cfg.channel_mult:
        if (mult * cfg.base_channels) % cfg.num_heads:
            raise ConfigError(f"unet.num_heads: width {mult * cfg.base_channels} is not divisible by {cfg.num_heads} heads")


def _skip_dropout_sizes(cfg: UNetConfig, available: set[int]) -> set[int]:
    """The spatial sizes whose skip tensors get Skip Dropout; checks a given list against the net."""
    if cfg.skip_dropout_resolutions == "all":
        return available
    if cfg.skip_dropout_resolutions == "released":
        return {size for size in available if size not in cfg.attention_resolutions}
    sizes = set(cfg.skip_dropout_resolutions)
    unknown = sorted(sizes - available)
    if unknown:
        raise ConfigError(f"unet.skip_dropout_resolutions: {unknown} is not a skip size of this U-Net "
                          f"(expected \"all\" or a list from {sorted(available, reverse=True)})")
    return sizes
