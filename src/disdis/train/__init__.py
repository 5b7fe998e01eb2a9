"""Training: the one loop (:mod:`.loop`), checkpoints, EMA, DDP helpers and logs."""

from disdis.train.loop import NonFiniteLossError, TrainConfig, TrainingInterrupted, TrainResult, train

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainingInterrupted", "TrainResult", "train"]
