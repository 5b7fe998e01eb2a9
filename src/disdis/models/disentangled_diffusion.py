"""The paper's model: latent units and tokens condition a latent-diffusion U-Net (docs/method.md).

    z0      = scale * E(x)                       frozen first stage, 1/std scaling
    u       = f(x)              (B, N)           feature extractor: the latent units
    c       = g(u)              (B, N, D)        one token MLP per unit
    c~      = c + lambda (mu_k*(c) - c)          Dynamic Gaussian Anchoring (after the first fit)
    loss    = | eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, c~) |_1
              + w_decor * mean_{i != j} corr_batch(u_i, u_j)^2      (off unless unit_decorrelation > 0)
              + w_indep * mean_{i != j} corr_batch(z_i^2, z_j^2)^2  (off unless unit_independence > 0;
                                                         z: the units standardised over the batch)

with Skip Dropout inside the U-Net during training. EncDiff and the ablations are
configurations of this one model: ``method.anchoring.enabled: false`` drops DyGA,
``method.unet.skip_dropout: 0`` drops Skip Dropout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from disdis.anchoring import AnchorState, AnchoringConfig, GaussianAnchors
from disdis.config import config_from_dict
from disdis.diffusion import DiffusionConfig, NoiseLoss, NoiseSchedule
from disdis.errors import ConfigError
from disdis.models import MethodConfig, register
from disdis.models.anchor_refit import Anchored
from disdis.models.autoencoder import AutoencoderConfig, AutoencoderLoss, ExtractorInitTrainConfig, check_units, derive_units
from disdis.models.first_stage import FirstStageTrainConfig
from disdis.models.latent import LatentSpace, OnFirstStage
from disdis.models.method import Method
from disdis.models.token_sampling import TokenConditioned
from disdis.models.unit_unmixing import UnitUnmixing
from disdis.nn.first_stage import FirstStage, FirstStageConfig, LatentScaler, build_first_stage
from disdis.nn.unet import UNet, UNetConfig
from disdis.nn.units import FeatureExtractor, UnitsConfig, UnitTokenizer
from disdis.train.hooks import Hook


EXTRACTOR_FIELDS = ("num_units", "extractor_width", "fc_hidden", "conv_bias", "in_channels")  # of UnitsConfig


@register
@dataclass
class DisentangledDiffusionConfig(OnFirstStage, MethodConfig):
    """The paper's method: a first stage (``requires.first_stage``, or trained by the run itself with
    ``first_stage_train``), the latent units and tokens, the U-Net, the diffusion and DyGA.

    The U-Net's channels and size follow from the first stage, its context from the tokens, and the
    extractor's input from the data (:meth:`derive`); written by hand they must agree.

    ``extractor_init: autoencoder`` starts the extractor from an autoencoder's (docs/method.md,
    "Extractor warm start"): the run named by ``requires.extractor``, or one the run trains itself
    with ``extractor_init_train`` and ``extractor_init_loss``.
    """
    name: str = "disentangled_diffusion"
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    units: UnitsConfig = field(default_factory=UnitsConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    anchoring: AnchoringConfig = field(default_factory=AnchoringConfig)
    first_stage_train: FirstStageTrainConfig = field(default_factory=FirstStageTrainConfig)
    extractor_init: Literal["random", "autoencoder"] = "random"
    extractor_init_train: ExtractorInitTrainConfig = field(default_factory=ExtractorInitTrainConfig)
    extractor_init_loss: AutoencoderLoss = field(default_factory=AutoencoderLoss)  # that autoencoder's loss
    cache_latents: bool = False  # the frozen first stage encodes each training image once (models/latent.py)
    unit_decorrelation: float = 0.0  # > 0: the weight of the units' mean squared correlation over the batch
    unit_independence: float = 0.0  # > 0: the same of their standardised squares (sees rotated factors)
    unmix_units: bool = False  # a fresh run first turns the extractor's units to maximise kurtosis (ICA)
    unmix_order: Literal["largest_gain", "cyclic"] = "largest_gain"  # the pairs' order (disdis.ica): cyclic
    # sweeps left two hues mixed in a demo seed (docs/demo-study.md, session of 2026-12-07, seventh)

    dependency_kinds = {**OnFirstStage.dependency_kinds, "extractor": "autoencoder"}
    initialises = frozenset({"extractor"})

    @classmethod
    def derive(cls, section: dict, data) -> dict:
        first = config_from_dict(FirstStageConfig, section.get("first_stage") or {}, "method.first_stage")
        units = derive_units(section, data)
        units.setdefault("in_channels", first.in_channels)
        cls.derive_unet(section, data.resolution if data.resolution is not None else units.get("resolution"))
        if "token_dim" in units:
            section["unet"].setdefault("context_dim", units["token_dim"])
        return section

    def check(self, data) -> None:
        res = data.resolution
        check_units(self.units, data)
        if self.units.in_channels != self.first_stage.in_channels:
            raise ConfigError(f"method.units.in_channels: {self.units.in_channels} differs from "
                              f"method.first_stage.in_channels {self.first_stage.in_channels}")
        self.check_unet(self.unet, res)
        if self.diffusion.ddim_steps > self.diffusion.num_steps:
            raise ConfigError(f"method.diffusion.ddim_steps: {self.diffusion.ddim_steps} is more than the "
                              f"{self.diffusion.num_steps} diffusion steps")
        if self.unet.context_tokens not in (0, self.units.num_units):
            raise ConfigError(f"method.unet.context_tokens: expected 0 or method.units.num_units "
                              f"({self.units.num_units}), got {self.unet.context_tokens}")
        if self.unet.context_dim != self.units.token_dim:
            raise ConfigError(f"method.unet.context_dim: {self.unet.context_dim} differs from "
                              f"method.units.token_dim {self.units.token_dim}")
        for name in ("unit_decorrelation", "unit_independence"):
            if getattr(self, name) < 0:
                raise ConfigError(f"method.{name}: expected >= 0, got {getattr(self, name)}")

    def needs(self) -> tuple[str, ...]:
        return (*super().needs(), *(("extractor",) if self.extractor_init == "autoencoder" else ()))

    def own_dependency(self, name: str, run):
        if name != "extractor":
            return super().own_dependency(name, run)
        train = self.extractor_init_train  # seeded, and probed, as the run itself unless set
        train = dataclasses.replace(train, seed=run.train.seed if train.seed is None else train.seed,
                                    probe_images=run.train.probe_images)
        return dataclasses.replace(run, method=AutoencoderConfig(units=self.units, loss=self.extractor_init_loss), train=train, requires={},
                                   eval=dataclasses.replace(run.eval, representation="scalar"))

    def adopt(self, name: str, source):
        if name != "extractor":
            return super().adopt(name, source)
        theirs = source.method.units
        if theirs.resolution != self.units.resolution:
            raise ConfigError(f"requires.extractor: its extractor reads {theirs.resolution}x{theirs.resolution} "
                              f"images, this run's data {self.units.resolution}x{self.units.resolution}")
        # the extractor's own sizes only: the token MLPs are this run's
        return dataclasses.replace(self, units=dataclasses.replace(
            self.units, **{key: getattr(theirs, key) for key in EXTRACTOR_FIELDS}))

    def build(self, dependencies: dict) -> DisentangledDiffusion:
        first_stage = dependencies.get("first_stage") or build_first_stage(self.first_stage)
        model = DisentangledDiffusion(first_stage, self.units, self.unet, self.diffusion, self.anchoring,
                                      cache_latents=self.cache_latents, unit_decorrelation=self.unit_decorrelation,
                                      unit_independence=self.unit_independence, unmix_units=self.unmix_units,
                                      unmix_order=self.unmix_order)
        if "extractor" in dependencies:  # the warm start: its weights, trained on from here
            model.extractor.load_state_dict(dependencies["extractor"].state_dict())
        return model


def standardised(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    centred = x - x.mean(0)
    return centred / (centred.square().mean(0).sqrt() + eps)


def unit_correlation(units: torch.Tensor, power: int = 1) -> torch.Tensor:
    """The mean over pairs i != j of the squared Pearson correlation over the batch of units i and j
    (``power`` 1), or of their standardised squares (``power`` 2).

    Both pull towards units that vary independently, for data whose factors do (a full factor grid).
    The first is DIP-VAE-like; it cannot see two independent factors mixed by a rotation, whose
    correlation stays 0. The second can, when the factors are not Gaussian (a grid's are uniform):
    rotated, their squares correlate (ICA's principle; docs/demo-study.md)."""
    scaled = standardised(units)
    if power != 1:
        scaled = standardised(scaled ** power)
    corr = scaled.T @ scaled / len(units)
    n = corr.shape[0]
    off_diagonal = corr.square().sum() - corr.diagonal().square().sum()
    return off_diagonal / (n * (n - 1))


class DisentangledDiffusion(TokenConditioned, LatentSpace, Anchored, Method):
    # "shards": the training forward writes no state but BatchNorm's running statistics, and draws (the
    # diffusion time and noise, Skip Dropout's masks) through disdis.draws
    capabilities = frozenset({"represent", "decode", "generate", "attention", "shards"})
    networks = ("extractor", "unet")

    def __init__(self, first_stage: FirstStage, units: UnitsConfig, unet: UNetConfig,
                 diffusion: DiffusionConfig, anchoring: AnchoringConfig, cache_latents: bool = False,
                 unit_decorrelation: float = 0.0, unit_independence: float = 0.0, unmix_units: bool = False,
                 unmix_order: str = "largest_gain"):
        super().__init__()
        self.unmix_units = unmix_units
        self.unmix_order = unmix_order
        self.cache_latents = cache_latents
        self.unit_decorrelation = unit_decorrelation
        self.unit_independence = unit_independence
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.scaler = LatentScaler()
        self.extractor = FeatureExtractor(units)
        self.tokenizer = UnitTokenizer(units)
        self.unet = UNet(unet)
        self.diffusion_cfg = diffusion
        self.schedule = NoiseSchedule.from_config(diffusion)
        self.noise_loss = NoiseLoss(self.schedule, diffusion.loss)
        self.anchoring = anchoring
        self.anchor_state = AnchorState(units.num_units, units.token_dim, anchoring)  # refitted by AnchorRefit

    # ------------------------------------------------------------------ the method protocol
    def hooks(self) -> list[Hook]:
        """The units unmixed first when asked for; the latent scale fixed on the first batch (and the
        latent cache when asked for); the DyGA refits when anchoring is on."""
        unmixing = [UnitUnmixing(self.extractor, order=self.unmix_order)] if self.unmix_units else []
        return [*unmixing, *self.latent_hooks(self.cache_latents), *self.anchor_hooks()]

    def forward(self, images: torch.Tensor, condition_images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training loss on images in [-1, 1]; also returns the un-anchored tokens (detached).

        With ``condition_images`` the tokens come from those images instead (a diagnostic: how
        much the loss rises when the units describe another image)."""
        z0 = self.latents(images).float()  # the noise and the loss stay in float32 under autocast
        units = self.extractor(images if condition_images is None else condition_images)
        tokens = self.tokenizer(units)
        loss = self.noise_loss(self.unet, z0, self.anchor(tokens))
        terms = {name: (weight, unit_correlation(units.float(), power)) for name, weight, power in
                 (("unit_correlation", self.unit_decorrelation, 1), ("unit_dependence", self.unit_independence, 2))
                 if weight}
        if not terms:
            return {"loss": loss, "tokens": tokens.detach()}
        total = loss + sum(weight * value for weight, value in terms.values())
        return {"loss": total, "tokens": tokens.detach(), "noise_loss": loss.detach(),
                **{name: value.detach() for name, (_, value) in terms.items()}}

    def upgrade_checkpoint(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints written before the anchors were module state kept the fit as ``anchors/*``
        (and the recent-token buffer as ``recent_tokens``): load them into ``anchor_state``."""
        old = {k.removeprefix("anchors/"): v for k, v in tensors.items() if k.startswith("anchors/")}
        if not old and "recent_tokens" not in tensors:
            return tensors
        recent = tensors.get("recent_tokens")
        tensors = {k: v for k, v in tensors.items() if not k.startswith("anchors/") and k != "recent_tokens"}
        state = AnchorState(*self.anchor_state.offset.shape, self.anchoring)  # (units, token dim)
        if old:
            state.load(GaussianAnchors.from_tensors(old, self.anchoring))
        for prefix in ("model", "ema"):
            tensors.update({f"{prefix}/anchor_state.{k}": v for k, v in state.state_dict().items()})
        if recent is not None:
            tensors["hook/anchor_refit/recent_tokens"] = recent
        return tensors

    # ------------------------------------------------------------------ representation
    def unit_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Un-anchored tokens (B, N, D)."""
        return self.tokenizer(self.extractor(images))

    @torch.no_grad()
    def encode_units(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar units (B, N), anchored tokens (B, N, D)) of images, as used for evaluation."""
        units = self.extractor(images)
        return units, self.anchor(self.tokenizer(units))

    def representation(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"units": (B, N) scalar units, "tokens": (B, N, D) anchored tokens}`` of images."""
        units, tokens = self.encode_units(images)
        return {"units": units, "tokens": tokens}

    # ------------------------------------------------------------------ sampling
    def denoiser(self, context: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``model_fn(x_t, t) -> eps`` conditioned on the (anchored) tokens ``context``."""
        return lambda x, t: self.unet(x, t, context)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        cfg = self.unet.cfg
        return (batch, cfg.in_channels, cfg.resolution, cfg.resolution)

    @torch.no_grad()
    def decode_units(self, units: torch.Tensor, seed: int = 0, steps: int | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images generated by DDIM given scalar units (B, N) (their tokens, anchored as in training),
        every image from the same noise: ``noise`` (1, ...) when given (e.g. an image's inverted
        noise), else one drawn from ``seed``."""
        context = self.anchor(self.tokenizer(units))
        return self.sample(context, noise=self.shared_noise(len(units), seed, noise), steps=steps)

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Where each unit's token is attended: the cross-attention weight of every pixel on each
        token, averaged over heads and over every cross-attention layer (each upsampled to the image),
        for the images noised to timestep ``t``; (B, N, H, W), each map summing to the pixel share
        that unit receives."""
        from disdis.nn.layers import TransformerBlock
        z0 = self.latents(images).float()
        noise = torch.randn(z0.shape, generator=generator, device=z0.device)
        steps = torch.full((len(z0),), t, device=z0.device, dtype=torch.long)
        x_t = self.schedule.q_sample(z0, steps, noise)
        maps: list[torch.Tensor] = []

        def record(module, inputs, output):
            w = module.weights(inputs[0], inputs[1]).mean(1)  # (B, L, N)
            side = int(round(w.shape[1] ** 0.5))
            maps.append(torch.nn.functional.interpolate(w.transpose(1, 2).reshape(len(w), -1, side, side),
                                                        size=images.shape[-2:], mode="bilinear", align_corners=False))
        handles = [m.cross_attn.register_forward_hook(record) for m in self.unet.modules() if isinstance(m, TransformerBlock)]
        try:
            self.unet(x_t, steps, self.encode_units(images)[1])
        finally:
            for handle in handles:
                handle.remove()
        if not maps:
            raise ValueError("the U-Net has no cross-attention layer")
        return torch.stack(maps).mean(0)
