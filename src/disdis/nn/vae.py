"""The VAE family's networks: the convolutional encoder and decoder of the disentanglement
literature (disentanglement_lib's ``conv_encoder`` / ``deconv_decoder``) and FactorVAE's
discriminator (docs/baselines.md).

    encoder   x -> 4 x [conv 4x4 stride 2 (32, 32, 64, 64), ReLU] -> FC 256, ReLU -> (mean, log-variance)
    decoder   z -> FC 256, ReLU -> FC 64 (r/16)^2, ReLU -> 4 x [transposed conv 4x4 stride 2 (64, 32, 32, C)]
    critic    z -> 6 x [FC 1000, leaky ReLU 0.2] -> 2 logits (joint, product of marginals)

At 64x64 the feature map entering the FC layer is 64 x 4 x 4; other sizes divisible by 16
scale it (32x32: 64 x 2 x 2). The decoder gives Bernoulli logits per pixel.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (32, 32, 64, 64)


def _check_resolution(resolution: int) -> int:
    if resolution < 16 or resolution % 16:
        raise ValueError(f"the VAE networks need a resolution divisible by 16 (four stride-2 layers), got {resolution}")
    return resolution // 16


class ConvEncoder(nn.Module):
    def __init__(self, in_channels: int, resolution: int, latents: int):
        super().__init__()
        side = _check_resolution(resolution)
        layers, channels = [], in_channels
        for width in WIDTHS:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(WIDTHS[-1] * side * side, 256), nn.ReLU(),
                                nn.Linear(256, 2 * latents))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance), each (B, latents)."""
        return self.fc(self.convs(x)).chunk(2, dim=1)


class DeconvDecoder(nn.Module):
    def __init__(self, out_channels: int, resolution: int, latents: int):
        super().__init__()
        self.side = _check_resolution(resolution)
        self.fc = nn.Sequential(nn.Linear(latents, 256), nn.ReLU(), nn.Linear(256, WIDTHS[-1] * self.side ** 2), nn.ReLU())
        layers, channels = [], WIDTHS[-1]
        for width in (64, 32, 32):
            layers += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of every pixel, (B, C, H, W)."""
        return self.deconvs(self.fc(z).view(len(z), WIDTHS[-1], self.side, self.side))


class Discriminator(nn.Module):
    """FactorVAE's critic: is a code drawn from q(z) (logit 0) or from the product of its marginals (logit 1)?"""

    def __init__(self, latents: int, hidden: int = 1000, layers: int = 6):
        super().__init__()
        blocks, width = [], latents
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
