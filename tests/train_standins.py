"""Tiny stand-in models and data for the training-loop tests (no dependency on the real networks)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from torch import nn


class TinyImages(torch.utils.data.Dataset):
    """n random 3x8x8 images in [-1, 1] with a fake factor column, fixed by ``seed``."""

    def __init__(self, n: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
        self.images = base[torch.arange(n) % 4] + 0.05 * torch.randn(n, 3, 8, 8, generator=g)
        self.factors = torch.arange(n) % 4

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.factors[i]


class MeanAnchors:
    """A one-component-per-unit stand-in for GaussianAnchors: the anchor is the unit's mean token."""

    def __init__(self, means: torch.Tensor):
        self.means = means  # (U, D)

    def shift(self, tokens: torch.Tensor, strength: float) -> torch.Tensor:
        return tokens + strength * (self.means.to(tokens) - tokens).detach()

    def to_tensors(self):
        return {"means": self.means}

    def save(self, path):
        save_file(self.to_tensors(), str(path))


class TinyDenoiser(nn.Module):
    """Predicts the noise added to an image from the noisy image and 2 'unit tokens' (with dropout)."""

    anchoring_enabled = True

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2 * 4))
        self.net = nn.Sequential(nn.Linear(192 + 8, 64), nn.SiLU(), nn.Dropout(0.1), nn.Linear(64, 192))
        self.register_buffer("scale", torch.ones(()))
        self.anchors = None

    def setup(self, images):
        self.scale.fill_(1.0 / float(images.std()))

    def unit_tokens(self, images):
        return self.encoder(images * self.scale).view(-1, 2, 4)

    def fit_anchors(self, tokens, seed):
        return {"means": tokens.mean(dim=1)}

    def load_anchors(self, tensors):
        self.anchors = None if tensors is None else MeanAnchors(tensors["means"])

    def forward(self, images):
        tokens = self.unit_tokens(images)
        context = tokens if self.anchors is None else self.anchors.shift(tokens, 0.1)
        noise = torch.randn_like(images)
        noisy = images * self.scale + noise
        pred = self.net(torch.cat([noisy.flatten(1), context.flatten(1)], 1)).view_as(images)
        loss = (pred - noise).abs().mean()
        return {"loss": loss, "token_norm": context.norm(dim=-1).mean(), "tokens": tokens.detach()}
