"""An autoencoder on the paper's feature extractor (``method: {name: autoencoder}``): the unsupervised
warm start of a diffusion run's extractor (docs/method.md, "Extractor warm start").

    u    = f(x)           (B, N)   the paper's feature extractor (method.units)
    x^   = D(u)                    a deconvolutional decoder (the VAE family's)
    loss = mean (x^ - x)^2

``loss`` (:class:`AutoencoderLoss`) adds two terms, each off by default:

- ``beta > 0`` makes it variational, a beta-VAE whose posterior mean is the extractor's output (a
  second last layer on the extractor's features gives log sigma^2): the decoder reads
  z = u + sigma * eps, eps ~ N(0, I), and beta KL(N(u, sigma^2) || N(0, I)) is added per image.
  Its diagonal posterior prefers units aligned with independent factors; a deterministic code
  has no reason to be.
- ``gradient_weight = w > 0`` adds w times the squared error of the image's finite differences
  along x and y (``gradient: signed``, a gradient-difference loss), or of each pixel's edge
  strength, the root of its channels' summed squared differences (``gradient: magnitude``, the
  same whatever the colours on either side). On the demo grid the pixels give scale, shape and
  orientation 0.3-0.6 % of their variance, the finite differences 1.4-1.8 % (main effect) and
  32-44 % along the lines where each alone changes (``benchmarks/factor_signal.py --gradients``):
  silhouettes are edges, and the hues' large areas have few.

All per image, summed over its values and divided by their number:

    loss = mean_batch [ sum (D(z) - x)^2 + w sum (dD(z) - dx)^2 + beta KL ] / pixels

(with both off, exactly the mean squared error above). It is also a run of its own (its units,
the posterior means, can be evaluated like any method's); a diffusion run with
``method.extractor_init: autoencoder`` trains one inside its folder (``extractor_init_loss``) and
starts from its extractor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from disdis.errors import ConfigError
from disdis.models import MethodConfig, register
from disdis.models.method import Method
from disdis.models.vae_losses import gaussian_kl, reparameterize
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


@dataclass
class AutoencoderLoss:
    """The terms the autoencoder adds to its squared error (module docstring); both off by default."""
    beta: float = 0.0             # > 0: variational, the weight of the KL per image
    gradient_weight: float = 0.0  # the weight of the finite differences' squared error
    gradient: Literal["signed", "magnitude"] = "signed"  # of each difference, or of each pixel's edge strength

    def __post_init__(self) -> None:
        for key in ("beta", "gradient_weight"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"loss.{key}: expected a number >= 0, got {getattr(self, key)!r}")


@register
@dataclass
class AutoencoderConfig(MethodConfig):
    """The extractor (``units``; its input size follows the data), a decoder of its N units, the loss."""
    name: str = "autoencoder"
    units: UnitsConfig = field(default_factory=UnitsConfig)
    loss: AutoencoderLoss = field(default_factory=AutoencoderLoss)

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
        return Autoencoder(self.units, self.loss)


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

    def __init__(self, units: UnitsConfig, loss: AutoencoderLoss = AutoencoderLoss()):
        super().__init__()
        self.loss = loss
        self.extractor = FeatureExtractor(units)
        self.decoder = DeconvDecoder(units.in_channels, units.resolution, units.num_units)
        if loss.beta > 0:
            self.log_variance = nn.Linear(self.extractor.feature_width, units.num_units)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of the module docstring on images in [-1, 1], and its terms to log."""
        pixels = images[0].numel()
        if self.loss.beta == 0:
            z, kl = self.extractor(images), images.new_zeros(len(images))
        else:
            h = self.extractor.features(images)
            mu, logvar = self.extractor.fc[-1](h), self.log_variance(h)
            z, kl = reparameterize(mu, logvar), gaussian_kl(mu, logvar)
        recon = self.decoder(z)
        sse = _sum_of_squares(recon - images)
        gradient = _gradient_error(recon, images, self.loss.gradient) if self.loss.gradient_weight else 0 * sse
        loss = (sse + self.loss.gradient_weight * gradient + self.loss.beta * kl).mean() / pixels
        return {"loss": loss, "recon": sse.mean().detach() / pixels, "gradient": gradient.mean().detach() / pixels,
                "kl": kl.mean().detach()}  # the KL in nats per image

    @torch.no_grad()
    def representation(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"units": self.extractor(images)}

    @torch.no_grad()
    def decode_units(self, units: torch.Tensor, seed: int = 0, steps: int | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images from scalar units (B, N) (deterministic: ``seed``, ``steps`` and ``noise`` are unused)."""
        return self.decoder(units).clamp(-1, 1)


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """(B,): each sample's sum of squares."""
    return x.square().flatten(1).sum(1)


def _gradient_error(recon: torch.Tensor, images: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,): the squared error of the finite differences along x and y (``signed``), or of each
    pixel's edge strength sqrt(sum over channels and both directions of the differences^2)
    (``magnitude``: how strong an edge is there, whatever its colours)."""
    if kind == "signed":
        return (_sum_of_squares(recon.diff(dim=-1) - images.diff(dim=-1))
                + _sum_of_squares(recon.diff(dim=-2) - images.diff(dim=-2)))
    return _sum_of_squares(edge_strength(recon) - edge_strength(images))


def edge_strength(x: torch.Tensor) -> torch.Tensor:
    """(B, H - 1, W - 1) from images (B, C, H, W): sqrt(sum_c dx^2 + dy^2 + 1e-6) at each pixel but the
    last row and column (the 1e-6 keeps the gradient finite where the image is flat)."""
    dx, dy = x.diff(dim=-1)[..., :-1, :], x.diff(dim=-2)[..., :-1]
    return (dx.square() + dy.square()).sum(1).add(1e-6).sqrt()
