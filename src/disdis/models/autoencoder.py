"""An autoencoder on the paper's feature extractor (``method: {name: autoencoder}``): the unsupervised
warm start of a diffusion run's extractor (docs/method.md, "Extractor warm start").

    u    = f(x)           (B, N)   the paper's feature extractor (method.units)
    x^   = D(u)                    a deconvolutional decoder (the VAE family's)
    loss = mean (x^ - x)^2

Deterministic: the units hold whatever the reconstruction needs, entangled or not. It is also a
run of its own (its units can be evaluated like any method's); a diffusion run with
``method.extractor_init: autoencoder`` trains one inside its folder and starts from its extractor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from disdis.errors import ConfigError
from disdis.models import MethodConfig, register
from disdis.models.method import Method
from disdis.nn.units import FeatureExtractor, UnitsConfig
from disdis.nn.vae import DeconvDecoder
from disdis.train.config import TrainConfig


def derive_units(section: dict, data) -> dict:
    """A method section's ``units`` (a copy, stored back) with the extractor's input size from the data
    where not written; shared by every method built on the extractor."""
    units = section["units"] = dict(section.get("units") or {})
    if data.resolution is not None:
        units.setdefault("resolution", data.resolution)
    return units


def check_units(units: UnitsConfig, data) -> None:
    if data.resolution is not None and units.resolution != data.resolution:
        raise ConfigError(f"method.units.resolution: {units.resolution} differs from data.resolution {data.resolution}")


@register
@dataclass
class AutoencoderConfig(MethodConfig):
    """The extractor (``units``; its input size follows the data) and a decoder of its N units."""
    name: str = "autoencoder"
    units: UnitsConfig = field(default_factory=UnitsConfig)

    @classmethod
    def derive(cls, section: dict, data) -> dict:
        derive_units(section, data)
        return section

    def check(self, data) -> None:
        check_units(self.units, data)

    def export(self, model: Autoencoder, name: str) -> FeatureExtractor:
        """A run that requires this one (as ``extractor``) receives its trained extractor."""
        return model.extractor

    def build(self, dependencies: dict) -> Autoencoder:
        return Autoencoder(self.units)


@dataclass
class ExtractorInitTrainConfig(TrainConfig):
    """How a diffusion run trains its extractor's autoencoder warm start itself (when
    ``requires.extractor`` names none). Project choices, measured on the demo grid (README, Demo):
    6000 steps at batch 64, lr 1e-3 (at 3e-3 its units took in the geometry more slowly), no weight
    decay, no EMA (the extractor is taken from the trained weights). The seed is the run's
    ``train.seed`` unless set, and the run's ``train.probe_images`` applies."""
    seed: Optional[int] = None
    batch_size: int = 64
    total_kimg: float = 384.0
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    ema_halflife_kimg: float = 0.0
    checkpoint_every_kimg: float = 128.0
    log_every_kimg: float = 16.0


class Autoencoder(Method):
    capabilities = frozenset({"represent", "decode"})

    def __init__(self, units: UnitsConfig):
        super().__init__()
        self.extractor = FeatureExtractor(units)
        self.decoder = DeconvDecoder(units.in_channels, units.resolution, units.num_units)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reconstruction's mean squared error on images in [-1, 1]."""
        return {"loss": (self.decoder(self.extractor(images)) - images).square().mean()}

    @torch.no_grad()
    def representation(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"units": self.extractor(images)}

    @torch.no_grad()
    def decode_units(self, units: torch.Tensor, seed: int = 0, steps: int | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images from scalar units (B, N) (deterministic: ``seed``, ``steps`` and ``noise`` are unused)."""
        return self.decoder(units).clamp(-1, 1)
