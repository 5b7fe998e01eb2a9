"""DisDiff (Yang et al. 2023) as a method (``method: {name: disdiff}``; docs/baselines.md).

A frozen, pretrained unconditional latent-diffusion model (``requires.ldm``, or trained by the run
itself) is disentangled from outside: an encoder gives N units of d dims, z = E(x); a decoder,
shared by the units, predicts one gradient field per unit, g_k = G(x_t, t, z_k, k); together

    eps_hat = eps_frozen(x_t, t) - c_t sum_k g_k,     c_t = sqrt(alpha_t) (1 - abar_{t-1}) / sqrt(1 - abar_t)
    L_r     = | eps - eps_hat |_1

and the disentangling loss asks, for one random unit k per sample, which unit changed when x0 is
predicted from that unit's field alone:

    x0_hat = x0 predicted from eps_frozen                              (no gradient)
    x0_k   = x0_hat + (1 - abar_t) / sqrt(abar_t) g_k
    z_hat, z_k_hat = E'(D(x0_hat)), E'(D(x0_k))     E': the encoder with its weights and BatchNorm
                                                    statistics frozen; D: the first-stage decoder,
                                                    without quantisation
    L_d     = w (CE(|z_hat - z| - |z_k_hat - z|, k) + CE(|z_hat - z_k_hat|, k)),   w = mean (x0_hat - x0_k)^2

(per-unit L2 norms; z and the first norm without gradient; w a constant per sample), and the
loss is L_r + lambda mean(L_d) with lambda = ``disentangle_weight``. The decoder is the paper
method's U-Net reading one context token per call, the unit's vector beside a learned embedding
of its index (the released decoder reuses the frozen U-Net's encoder features and takes the
index through the time embedding; docs/baselines.md). Evaluation reads the N unit vectors
(``tokens``), reduced per unit by PCA as the released evaluation does. Images are generated,
inverted and interchanged by DDIM with eps_hat, the prediction L_r fits, as the noise prediction
(the units' vectors z as the condition; :mod:`disdis.models.token_sampling`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from disdis.anchoring import AnchorState, AnchoringConfig
from disdis.errors import ConfigError
from disdis.models import MethodConfig, register
from disdis.models.anchor_refit import Anchored
from disdis.models.latent import OnFirstStage
from disdis.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from disdis.models.method import Method
from disdis.models.token_sampling import TokenConditioned
from disdis.nn.unet import UNet, UNetConfig
from disdis.train.config import TrainConfig


@register
@dataclass
class DisDiffConfig(MethodConfig):
    name: str = "disdiff"
    num_units: int = 6
    unit_dim: int = 32
    encoder_width: int = 128
    in_channels: int = 3
    resolution: int = 64                  # follows data.resolution unless written
    decoder: UNetConfig = field(default_factory=lambda: UNetConfig(skip_dropout=0.0))  # sizes follow the LDM
    disentangle_weight: float = 0.05
    anchoring: AnchoringConfig = field(default_factory=lambda: AnchoringConfig(enabled=False))  # DisDiff + DyGA
    ldm: LatentDiffusionConfig = field(default_factory=LatentDiffusionConfig)  # when the run trains its own
    ldm_train: TrainConfig = field(default_factory=TrainConfig)                # ... with these settings

    dependency_kinds = {"ldm": "latent_diffusion"}

    @classmethod
    def derive(cls, section: dict, data) -> dict:
        if data.resolution is not None:
            section.setdefault("resolution", data.resolution)
        section["ldm"] = LatentDiffusionConfig.derive(dict(section.get("ldm") or {}), data)
        shapes = OnFirstStage.derive_unet({"first_stage": section["ldm"].get("first_stage") or {},
                                           "decoder": section.get("decoder") or {}},
                                          data.resolution if data.resolution is not None else section.get("resolution"),
                                          key="decoder")
        section["decoder"] = shapes["decoder"]
        section["decoder"].setdefault("context_dim", 2 * int(section.get("unit_dim", cls.unit_dim)))
        section["decoder"].setdefault("skip_dropout", 0.0)  # DisDiff has none; + Skip Dropout sets it
        return section

    def __post_init__(self) -> None:
        for key in ("num_units", "unit_dim", "encoder_width", "in_channels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}: expected a positive integer, got {getattr(self, key)!r}")
        if self.resolution < 16 or self.resolution % 16:
            raise ConfigError(f"method.resolution: the encoder needs a multiple of 16, got {self.resolution}")
        if self.disentangle_weight < 0:
            raise ConfigError(f"method.disentangle_weight: expected 0 or more, got {self.disentangle_weight}")

    def check(self, data) -> None:
        if data.resolution is not None and data.resolution != self.resolution:
            raise ConfigError(f"method.resolution: {self.resolution} differs from data.resolution {data.resolution}")
        self.ldm.check(data)
        for key in ("in_channels", "out_channels", "resolution"):
            if getattr(self.decoder, key) != getattr(self.ldm.unet, key):
                raise ConfigError(f"method.decoder.{key}: {getattr(self.decoder, key)} differs from the LDM's "
                                  f"{getattr(self.ldm.unet, key)}")
        if self.decoder.context_dim != 2 * self.unit_dim:
            raise ConfigError(f"method.decoder.context_dim: expected 2 x method.unit_dim = {2 * self.unit_dim}")

    def needs(self) -> tuple[str, ...]:
        return ("ldm",)

    def own_dependency(self, name: str, run):
        return dataclasses.replace(run, method=self.ldm, train=self.ldm_train, requires={})

    def adopt(self, name: str, source) -> DisDiffConfig:
        return dataclasses.replace(self, ldm=source.method)

    def build(self, dependencies: dict) -> DisDiff:
        return DisDiff(self, dependencies.get("ldm") or self.ldm.build({}))


class DisDiffEncoder(nn.Module):
    """Four 4x4 stride-2 convolutions of ``width`` with BatchNorm (ReLU after all but the third), two
    residual blocks, one linear layer to the N x d units."""

    def __init__(self, in_channels: int, resolution: int, width: int, outputs: int):
        super().__init__()
        layers, channels = [], in_channels
        for i in range(4):
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.BatchNorm2d(width)]
            if i != 2:
                layers.append(nn.ReLU())
            channels = width
        self.convs = nn.Sequential(*layers)
        self.res = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                               nn.Conv2d(width, width, 1)) for _ in range(2))
        self.fc = nn.Linear(width * (resolution // 16) ** 2, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x)
        for block in self.res:
            h = h + block(h)
        return self.fc(F.relu(h).flatten(1))


def field_weights(schedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_t, b_t) per sample: the weight of the summed fields in the noise prediction,
    sqrt(alpha_t) (1 - abar_{t-1}) / sqrt(1 - abar_t), and of one field in the x0 prediction,
    (1 - abar_t) / sqrt(abar_t)."""
    abar = schedule.alphas_cumprod.to(t.device)[t]
    abar_prev = torch.where(t > 0, schedule.alphas_cumprod.to(t.device)[(t - 1).clamp_min(0)], torch.ones_like(abar))
    alpha = 1 - schedule.betas.to(t.device)[t]
    return alpha.sqrt() * (1 - abar_prev) / (1 - abar).sqrt(), (1 - abar) / abar.sqrt()


def disentangling_logits(z: torch.Tensor, z_hat: torch.Tensor, z_k_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two (B, N) logits of the disentangling loss: |z_hat - z| - |z_k_hat - z| (the unit that
    moved toward its own value most) and |z_hat - z_k_hat| (the unit that changed most)."""
    z = z.detach()
    return (z_hat - z).norm(dim=-1).detach() - (z_k_hat - z).norm(dim=-1), (z_hat - z_k_hat).norm(dim=-1)


class DisDiff(TokenConditioned, Anchored, Method):
    capabilities = frozenset({"represent", "generate"})

    def __init__(self, cfg: DisDiffConfig, ldm: LatentDiffusion):
        super().__init__()
        self.cfg = cfg
        self.ldm = ldm.eval().requires_grad_(False)
        self.encoder = DisDiffEncoder(cfg.in_channels, cfg.resolution, cfg.encoder_width, cfg.num_units * cfg.unit_dim)
        self.unit_embedding = nn.Parameter(torch.randn(cfg.num_units, cfg.unit_dim) / cfg.unit_dim ** 0.5)
        self.decoder = UNet(cfg.decoder)
        self.anchoring = cfg.anchoring
        self.anchor_state = AnchorState(cfg.num_units, cfg.unit_dim, cfg.anchoring)  # DisDiff + DyGA: refitted

    def hooks(self):
        return [*self.ldm.latent_hooks(), *self.anchor_hooks()]

    def train(self, mode: bool = True) -> DisDiff:
        super().train(mode)
        self.ldm.eval()
        return self

    def unit_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, d) unit vectors, before any anchoring."""
        return self.encoder(images).view(len(images), self.cfg.num_units, self.cfg.unit_dim)

    def frozen_units(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's units with its current weights held fixed and BatchNorm in eval mode:
        gradients reach ``images``, never the encoder."""
        was = self.encoder.training
        self.encoder.eval()
        try:
            params = {k: v.detach() for k, v in self.encoder.named_parameters()}
            out = functional_call(self.encoder, {**params, **dict(self.encoder.named_buffers())}, (images,))
        finally:
            self.encoder.train(was)
        return out.view(len(images), self.cfg.num_units, self.cfg.unit_dim)

    def fields(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B, N, C, H, W): one gradient field per unit, the decoder run on every (image, unit) pair."""
        b, n, d = z.shape
        context = torch.cat([z, self.unit_embedding.expand(b, n, d)], dim=-1).reshape(b * n, 1, 2 * d)
        out = self.decoder(x_t.repeat_interleave(n, dim=0), t.repeat_interleave(n), context)
        return out.view(b, n, *x_t.shape[1:])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        ldm, schedule = self.ldm, self.ldm.schedule
        z0 = ldm.latents(images).float()
        t = torch.randint(0, schedule.num_steps, (len(z0),), device=z0.device)
        noise = torch.randn_like(z0)
        x_t = schedule.q_sample(z0, t, noise)
        with torch.no_grad():
            eps_frozen = ldm.eps(x_t, t)
        raw = self.unit_tokens(images)
        z = self.anchor(raw)  # DisDiff + DyGA: each unit pulled toward its anchor (off by default)
        g = self.fields(x_t, t, z)
        c_t, b_t = (w.to(z0.dtype).view(-1, *[1] * (z0.dim() - 1)) for w in field_weights(schedule, t))
        recon = (noise - (eps_frozen - c_t * g.sum(1))).abs().mean()
        k = torch.randint(0, self.cfg.num_units, (len(z0),), device=z0.device)
        with torch.no_grad():
            x0_hat = schedule.predict_x0(x_t, t, eps_frozen)
            z_hat = self.frozen_units(self._decode(x0_hat))
        x0_k = x0_hat + b_t * g[torch.arange(len(k), device=k.device), k]
        z_k_hat = self.frozen_units(self._decode(x0_k))
        changed, moved = disentangling_logits(z, z_hat, z_k_hat)
        weight = (x0_hat - x0_k.detach()).square().flatten(1).mean(1)
        dis = weight * (F.cross_entropy(changed, k, reduction="none") + F.cross_entropy(moved, k, reduction="none"))
        loss = recon + self.cfg.disentangle_weight * dis.mean()
        return {"loss": loss, "recon": recon.detach(), "disentangle": dis.mean().detach(), "tokens": raw.detach()}

    def _decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Images from scaled latents, without quantisation (gradients pass)."""
        return self.ldm.first_stage.decode(self.ldm.scaler.inverse(z0), quantize=False).clamp(-1, 1)

    @torch.no_grad()
    def encode_units(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the unit vectors' means (B, N), the unit vectors (B, N, d), anchored)."""
        z = self.anchor(self.unit_tokens(images))
        return z.mean(-1), z

    def representation(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"tokens": (B, N, d) unit vectors (anchored), "units": their means (B, N)}``; evaluate with
        tokens_pca."""
        units, tokens = self.encode_units(images)
        return {"units": units, "tokens": tokens}

    # ------------------------------------------------------------------ sampling (TokenConditioned)
    def denoiser(self, context: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """eps(x_t, t | z) = eps_LDM(x_t, t) - c_t sum_k G_k(x_t, z_k, t): the frozen model's noise
        prediction moved by the units' gradient fields, as the training loss fits it (:meth:`forward`)."""
        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            c_t = field_weights(self.schedule, t)[0].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
            return self.ldm.eps(x, t) - c_t * self.fields(x, t, context).sum(1)
        return eps

    @property
    def schedule(self):
        return self.ldm.schedule

    @property
    def diffusion_cfg(self):
        return self.ldm.diffusion_cfg

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        cfg = self.decoder.cfg  # the LDM's latent shape (checked in DisDiffConfig.check)
        return (batch, cfg.in_channels, cfg.resolution, cfg.resolution)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.ldm.latents(images)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.ldm.decode_latents(z)

