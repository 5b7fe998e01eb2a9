"""Latent units and their tokens (docs/method.md, "Units and tokens").

:class:`FeatureExtractor` maps an image to N scalar *latent units*;
:class:`UnitTokenizer` lifts each unit to a D-dimensional *token* with its own
small MLP. The tokens (B, N, D) condition the U-Net through cross-attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import nn

from disdis.errors import ConfigError


@dataclass
class UnitsConfig:
    """Feature extractor and token MLP sizes; defaults are the paper's (released) configuration."""

    num_units: int = 20
    token_dim: int = 32
    extractor_width: int = 64  # d: the 7x7 convolution's width; the strided ones use 2d, 4d, 4d, 4d
    # hidden widths of the head after the convolutions (released: 4096, 256); one integer: one layer
    fc_hidden: Union[int, tuple[int, ...]] = (4096, 256)
    conv_bias: bool = False    # the released convolutions have biases; BatchNorm's shift right after makes
                               # them redundant (same function, 960 more parameters at the paper's size)
    mlp_hidden: tuple[int, ...] = (256, 512)
    token_activation: Literal["relu", "elu"] = "relu"  # released ReLU; EncDiff's token MLP uses ELU
    token_final_activation: bool = True  # released: ReLU after the last layer too; EncDiff: none
    in_channels: int = 3
    resolution: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.fc_hidden, int):
            self.fc_hidden = (self.fc_hidden,)
        for key in ("num_units", "token_dim", "extractor_width", "in_channels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"units.{key}: expected a positive integer, got {getattr(self, key)!r}")
        for key in ("fc_hidden", "mlp_hidden"):
            if any(w < 1 for w in getattr(self, key)):
                raise ConfigError(f"units.{key}: widths must be positive, got {list(getattr(self, key))}")


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, padding: int, bias: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FeatureExtractor(nn.Module):
    """Image (B, C, r, r) -> latent units (B, N).

    7x7 conv (width d, stride 1), then four 4x4 stride-2 convs (2d, 4d, 4d, 4d), each
    conv followed by BatchNorm and ReLU; flatten (4d * (r/16)^2 values, 4096 at r=64);
    a fully connected layer to each width of ``fc_hidden`` with a ReLU after it (released:
    4096, 256), then one to N with no activation.
    """

    def __init__(self, cfg: UnitsConfig):
        super().__init__()
        if cfg.resolution % 16:
            raise ConfigError(f"units.resolution: {cfg.resolution} must be a multiple of 16 (four stride-2 convolutions)")
        d = cfg.extractor_width
        widths = [d, 2 * d, 4 * d, 4 * d, 4 * d]
        layers = _conv_bn_relu(cfg.in_channels, d, 7, 1, 3, cfg.conv_bias)
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += _conv_bn_relu(cin, cout, 4, 2, 1, cfg.conv_bias)
        self.convs = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        fan_in = widths[-1] * (cfg.resolution // 16) ** 2
        for width in cfg.fc_hidden:
            head += [nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
            fan_in = width
        self.fc = nn.Sequential(*head, nn.Linear(fan_in, cfg.num_units))
        self.feature_width = fan_in  # of :meth:`features`, the input of the last layer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, feature_width): the activations the last layer maps to the units."""
        # flatten in (C, H, W) order whatever the memory format, so weights mean the same
        return self.fc[:-1](self.convs(x).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc[-1](self.features(x))


class UnitTokenizer(nn.Module):
    """Units (B, N) -> tokens (B, N, D): an independent MLP 1 -> 256 -> 512 -> D per unit.

    The activation (ReLU, or EncDiff's ELU) follows every hidden layer, and the last one
    too when ``token_final_activation`` is set (released: ReLU everywhere; EncDiff:
    1 -> 64 -> ELU -> 128 -> ELU -> 16 with a linear last layer). The N MLPs run at once as
    batched matrix products over stacked weights ``W_k`` of shape (N, fan_in, fan_out);
    each is initialised like ``nn.Linear``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    def __init__(self, cfg: UnitsConfig):
        super().__init__()
        sizes = [1, *cfg.mlp_hidden, cfg.token_dim]
        self.num_units = cfg.num_units
        self.activation = torch.relu if cfg.token_activation == "relu" else nn.functional.elu
        self.final_activation = cfg.token_final_activation
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(cfg.num_units, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(cfg.num_units, fan_out).uniform_(-bound, bound)))

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        if units.ndim != 2 or units.shape[1] != self.num_units:
            raise ValueError(f"expected units of shape (B, {self.num_units}), got {tuple(units.shape)}")
        # (B, N) -> (N, B, 1): one batch of B rows per unit for torch.baddbmm
        h = units.t().unsqueeze(-1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < last or self.final_activation:
                h = self.activation(h)
        return h.transpose(0, 1).contiguous()  # (B, N, D)
