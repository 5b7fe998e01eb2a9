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

    @property
    def num_components(self) -> list[int]:
        return [1] * len(self.means)

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


def tiny_run_config(data_path, run_dir, **sections) -> dict:
    """A diffusion run config small enough for CPU tests (16x16 images, pixel space); ``sections``
    update the config's sections (e.g. train={"total_kimg": 0.32})."""
    cfg = {
        "name": "tiny", "run_dir": str(run_dir),
        "data": {"path": str(data_path), "resolution": 16},
        "first_stage": {"kind": "identity"},
        "units": {"num_units": 4, "token_dim": 8, "extractor_width": 4, "fc_hidden": [16], "mlp_hidden": [8, 8],
                  "resolution": 16},
        "unet": {"resolution": 16, "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                 "attention_resolutions": [2], "num_heads": 2, "context_dim": 8},
        "diffusion": {"ddim_steps": 4},
        "anchoring": {"initial_components": 2, "max_components": 4, "em_iters": 5, "split_rounds": 1,
                      "min_soft_count": 2},
        "train": {"batch_size": 16, "total_kimg": 0.32, "lr": 2e-3, "ema_halflife_kimg": 0.05,
                  "refit_every": 0.08, "refit_unit": "kimg", "refit_images": 64, "checkpoint_every_kimg": 0.08,
                  "keep_checkpoints": 3, "log_every_kimg": 0.08, "num_workers": 0, "device": "cpu", "seed": 3},
        "eval": {"batch_size": 64, "ddim_steps": 4},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_yaml(path, data) -> str:
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)
