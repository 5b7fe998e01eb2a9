"""Training: the one loop (:mod:`.loop`), its hooks and optimizer, checkpoints, EMA, DDP helpers and logs."""

from disdis.train.config import TrainConfig
from disdis.train.loop import NonFiniteLossError, TrainingInterrupted, TrainResult, TrainStep, train

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainStep", "TrainingInterrupted", "TrainResult", "train"]
