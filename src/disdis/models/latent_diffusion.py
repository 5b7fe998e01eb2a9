"""An unconditional latent-diffusion model (``method: {name: latent_diffusion}``): the frozen,
pretrained model DisDiff builds on (docs/baselines.md).

    z0   = scale * E(x)                                      frozen first stage
    loss = | eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t) |_1

The U-Net is the paper method's; with no condition, its cross-attention reads one zero token
(each such layer adds a constant), so the network is the unconditional latent-diffusion U-Net.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from disdis.diffusion import DiffusionConfig, NoiseLoss, NoiseSchedule
from disdis.errors import ConfigError
from disdis.models import MethodConfig, register
from disdis.models.first_stage import FirstStageTrainConfig
from disdis.models.latent import LatentSpace, OnFirstStage
from disdis.models.method import Method
from disdis.nn.first_stage import FirstStage, FirstStageConfig, LatentScaler, build_first_stage
from disdis.nn.unet import UNet, UNetConfig
from disdis.train.hooks import Hook


@register
@dataclass
class LatentDiffusionConfig(OnFirstStage, MethodConfig):
    """A first stage (``requires.first_stage``, or trained by the run itself) and an unconditional U-Net."""
    name: str = "latent_diffusion"
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(skip_dropout=0.0))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    first_stage_train: FirstStageTrainConfig = field(default_factory=FirstStageTrainConfig)

    @classmethod
    def derive(cls, section: dict, data) -> dict:
        section = cls.derive_unet(section, data.resolution)
        section["unet"].setdefault("skip_dropout", 0.0)  # no Skip Dropout in an unconditional model
        return section

    def check(self, data) -> None:
        self.check_unet(self.unet, data.resolution)
        if self.diffusion.ddim_steps > self.diffusion.num_steps:
            raise ConfigError(f"method.diffusion.ddim_steps: {self.diffusion.ddim_steps} is more than the "
                              f"{self.diffusion.num_steps} diffusion steps")

    def export(self, model: LatentDiffusion, name: str) -> LatentDiffusion:
        """What a run that requires this one receives: the whole model (first stage, scale, U-Net)."""
        return model

    def build(self, dependencies: dict) -> LatentDiffusion:
        return LatentDiffusion(dependencies.get("first_stage") or build_first_stage(self.first_stage), self.unet,
                               self.diffusion)


class LatentDiffusion(LatentSpace, Method):
    def __init__(self, first_stage: FirstStage, unet: UNetConfig, diffusion: DiffusionConfig):
        super().__init__()
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.scaler = LatentScaler()
        self.unet = UNet(unet)
        self.diffusion_cfg = diffusion
        self.schedule = NoiseSchedule.from_config(diffusion)
        self.noise_loss = NoiseLoss(self.schedule, diffusion.loss)

    def hooks(self) -> list[Hook]:
        return self.latent_hooks()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The unconditional noise prediction."""
        null = torch.zeros(len(x_t), 1, self.unet.cfg.context_dim, device=x_t.device, dtype=x_t.dtype)
        return self.unet(x_t, t, null)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.noise_loss(self.eps, self.latents(images).float())}
