"""The first stage as a method of the training loop (``method: {name: first_stage}``).

One loss for one optimizer: the autoencoder's loss plus, when a patch
discriminator is configured, the discriminator's hinge loss. The two never
share a gradient (the generator term runs with the discriminator frozen, the
discriminator term on detached reconstructions), so summing them trains each
part on its own objective, with the same AdamW settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from disdis.errors import ConfigError
from disdis.models import MethodConfig, register
from disdis.models.method import Method
from disdis.nn.first_stage import FirstStageConfig, build_first_stage
from disdis.train.config import TrainConfig


@register
@dataclass
class FirstStageMethod(MethodConfig):
    """Trains an autoencoder (``first_stage``) that latent-diffusion methods build on."""
    name: str = "first_stage"
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)

    channels_key = "first_stage.in_channels"

    def check(self, data) -> None:
        if self.first_stage.kind == "identity":
            raise ConfigError("method.first_stage.kind: 'identity' has nothing to train")

    def build(self, dependencies: dict) -> FirstStageTraining:
        return FirstStageTraining(self.first_stage)


@dataclass
class FirstStageTrainConfig(TrainConfig):
    """How a latent-diffusion run trains its own first stage when ``requires.first_stage`` is not given.

    Project choices (the released autoencoder came pretrained): ~4 epochs of Shapes3D at batch
    64 with the autoencoder betas of latent diffusion and a short EMA.
    """
    batch_size: int = 64
    total_kimg: float = 2048.0
    adam_betas: tuple[float, float] = (0.5, 0.9)
    ema_halflife_kimg: float = 10.0
    checkpoint_every_kimg: float = 64.0
    log_every_kimg: float = 3.2


class FirstStageTraining(Method):
    def __init__(self, cfg: FirstStageConfig):
        super().__init__()
        if cfg.kind == "identity":
            raise ConfigError("method.first_stage.kind: 'identity' has nothing to train")
        self.first_stage = build_first_stage(cfg)
        # training steps seen, for the discriminator's start; a buffer so that it is checkpointed
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def forward(self, images: torch.Tensor) -> dict:
        loss, logs = self.first_stage.training_loss(images, step=int(self.step))
        logs.pop("loss", None)
        if self.first_stage.discriminator is not None:
            disc_loss, disc_logs = self.first_stage.discriminator_loss(images)
            loss = loss + disc_loss
            logs.update(disc_logs)
        if self.training:
            self.step += 1
        return {"loss": loss, **logs}
