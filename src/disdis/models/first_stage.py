"""The first stage as a model of the training loop (``stage: first_stage``).

One loss for one optimizer: the autoencoder's loss plus, when a patch
discriminator is configured, the discriminator's hinge loss. The two never
share a gradient (the generator term runs with the discriminator frozen, the
discriminator term on detached reconstructions), so summing them trains each
part on its own objective, with the same AdamW settings.
"""

from __future__ import annotations

import torch

from disdis.errors import ConfigError
from disdis.models.method import Method
from disdis.nn.first_stage import FirstStageConfig, build_first_stage


class FirstStageTraining(Method):
    def __init__(self, cfg: FirstStageConfig):
        super().__init__()
        if cfg.kind == "identity":
            raise ConfigError("first_stage.kind: 'identity' has nothing to train; use stage=diffusion directly")
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
