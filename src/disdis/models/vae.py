"""The VAE family as methods: beta-VAE, beta-TCVAE and FactorVAE (docs/baselines.md).

    beta-VAE     loss = E[-log p(x|z)] + beta KL(q(z|x) || p(z))                      (Higgins et al. 2017)
    beta-TCVAE   loss = E[-log p(x|z)] + KL(q(z|x) || p(z)) + (beta - 1) TC            (Chen et al. 2018)
    FactorVAE    loss = E[-log p(x|z)] + KL(q(z|x) || p(z)) + gamma TC_D  + critic CE   (Kim & Mnih 2018)

beta-TCVAE's TC is the minibatch-weighted-sampling estimate (as disentanglement_lib trains it:
the KL stays analytic and (beta - 1) TC is added); FactorVAE's TC_D is the critic's density
ratio on the codes of the first half of the batch, the critic learning to tell them from codes
of the second half with every dimension permuted across that half. The VAE's terms reach the
critic's weights only through its input (its parameters enter them detached) and the critic's
term sees detached codes, so one backward trains each part on its own objective; the critic has
its own Adam group (lr 1e-4, betas (0.5, 0.9)). The representation is the posterior mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from disdis.errors import ConfigError
from disdis.models import MethodConfig, register
from disdis.models.method import Method
from disdis.models.vae_losses import (bernoulli_nll, density_ratio_tc, discriminator_loss, gaussian_kl,
                                      permute_dims, reparameterize, total_correlation)
from disdis.nn.vae import ConvEncoder, DeconvDecoder, Discriminator
from disdis.train.config import TrainConfig
from disdis.train.hooks import Hook, HookContext


@dataclass
class VAEConfig(MethodConfig):
    """The networks every VAE of the family shares (disentanglement_lib's conv architecture)."""
    latents: int = 10
    in_channels: int = 3
    resolution: int = 64                    # follows data.resolution unless written

    @classmethod
    def derive(cls, section: dict, data) -> dict:
        if data.resolution is not None:
            section.setdefault("resolution", data.resolution)
        return section

    def __post_init__(self) -> None:
        for key in ("latents", "in_channels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}: expected a positive integer, got {getattr(self, key)!r}")
        if self.resolution < 16 or self.resolution % 16:
            raise ConfigError(f"method.resolution: the VAE networks need a multiple of 16, got {self.resolution}")

    def check(self, data) -> None:
        if data.resolution is not None and data.resolution != self.resolution:
            raise ConfigError(f"method.resolution: {self.resolution} differs from data.resolution {data.resolution}")


@register
@dataclass
class BetaVAEConfig(VAEConfig):
    name: str = "beta_vae"
    beta: float = 4.0                       # study grid 1, 2, 4, 6, 8, 16

    def build(self, dependencies: dict) -> BetaVAE:
        return BetaVAE(self)


@register
@dataclass
class BetaTCVAEConfig(VAEConfig):
    name: str = "beta_tcvae"
    beta: float = 6.0                       # study grid 1, 2, 4, 6, 8, 10

    def build(self, dependencies: dict) -> BetaTCVAE:
        return BetaTCVAE(self)


@register
@dataclass
class FactorVAEConfig(VAEConfig):
    name: str = "factor_vae"
    gamma: float = 10.0                     # study grid 10, 20, 30, 40, 50, 100
    critic_hidden: int = 1000
    critic_layers: int = 6
    critic_lr: float = 1e-4
    critic_betas: tuple[float, float] = (0.5, 0.9)

    def build(self, dependencies: dict) -> FactorVAE:
        return FactorVAE(self)


class BetaVAE(Method):
    """beta-VAE, and the networks and ELBO terms the other two build on."""
    capabilities = frozenset({"represent", "decode"})
    networks = ("encoder", "decoder")

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.in_channels, cfg.resolution, cfg.latents)
        self.decoder = DeconvDecoder(cfg.in_channels, cfg.resolution, cfg.latents)

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """One Adam group (AdamW without weight decay) of the encoder and decoder."""
        return [{"params": [*self.encoder.parameters(), *self.decoder.parameters()], "weight_decay": 0.0}]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z|x) for images in [-1, 1] (the networks see [0, 1])."""
        return self.encoder((images + 1) / 2)

    def elbo_terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """A code z ~ q(z|x) of each image, its posterior, and the per-sample reconstruction
        (Bernoulli NLL) and analytic KL terms."""
        mu, logvar = self.encode(images)
        z = reparameterize(mu, logvar)
        recon = bernoulli_nll(self.decoder(z), (images + 1) / 2)
        return {"z": z, "mu": mu, "logvar": logvar, "recon": recon, "kl": gaussian_kl(mu, logvar)}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.elbo_terms(images)
        return _output((t["recon"] + self.cfg.beta * t["kl"]).mean(), t)

    @torch.no_grad()
    def representation(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"units": (B, latents) posterior means}``."""
        return {"units": self.encode(images)[0]}

    @torch.no_grad()
    def decode_units(self, units: torch.Tensor, seed: int = 0, steps: int | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] (the Bernoulli means) of codes ``units`` (B, latents); deterministic (the
        seed, steps and noise of generative decoders do not apply)."""
        return torch.sigmoid(self.decoder(units)) * 2 - 1


class BetaTCVAE(BetaVAE):
    def __init__(self, cfg: BetaTCVAEConfig):
        super().__init__(cfg)
        # the training set's size N (set when training opens the data; checkpointed)
        self.register_buffer("dataset_size", torch.ones((), dtype=torch.int64))

    def hooks(self) -> list[Hook]:
        return [DatasetSize(self)]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.elbo_terms(images)
        tc = total_correlation(t["z"], t["mu"], t["logvar"], int(self.dataset_size)).mean()
        return _output((t["recon"] + t["kl"]).mean() + (self.cfg.beta - 1) * tc, t, tc=tc)


class FactorVAE(BetaVAE):
    def __init__(self, cfg: FactorVAEConfig):
        super().__init__(cfg)
        self.critic = Discriminator(cfg.latents, cfg.critic_hidden, cfg.critic_layers)

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return [*super().param_groups(cfg), {"params": list(self.critic.parameters()), "lr": self.cfg.critic_lr,
                                              "betas": tuple(self.cfg.critic_betas), "weight_decay": 0.0}]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(images) < 4 or len(images) % 2:
            raise ValueError(f"FactorVAE splits each batch in two halves; got a batch of {len(images)}")
        first, second = images.chunk(2)
        t = self.elbo_terms(first)
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}  # the VAE's term moves z only
        tc = density_ratio_tc(functional_call(self.critic, frozen, (t["z"],))).mean()
        with torch.no_grad():
            permuted = permute_dims(reparameterize(*self.encode(second)))
        critic = discriminator_loss(self.critic(t["z"].detach()), self.critic(permuted)).mean()
        return _output((t["recon"] + t["kl"]).mean() + self.cfg.gamma * tc + critic, t, tc=tc, critic_loss=critic)


def _output(loss: torch.Tensor, terms: dict, **more: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loop's output: the loss, and the batch means of the terms to log."""
    logs = {"recon": terms["recon"].mean(), "kl": terms["kl"].mean(), **more}
    return {"loss": loss, **{k: v.detach() for k, v in logs.items()}}


class DatasetSize(Hook):
    """Sets a model's ``dataset_size`` buffer (beta-TCVAE's N) to the size of the data it trains on."""
    name = "dataset_size"

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def open(self, ctx: HookContext) -> None:
        self.model.dataset_size.fill_(len(ctx.dataset))
