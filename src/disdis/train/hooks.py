"""Hooks: the periodic work a method hands to the training loop (docs/architecture.md).

The loop knows no method. A method's ``hooks()`` returns :class:`Hook` objects and the
loop calls them at fixed points of every run:

    open(ctx)            before the first step of this process (fresh or resumed run)
    start(ctx, images)   fresh runs only, once, on the whole first global batch, before any step
    after_step(out)      after every optimizer step, with the model's output dict
    __call__(ctx, step)  after step ``step`` whenever ``step % interval(ctx) == 0``
    close()              when the loop ends, normally or not

Every rank calls every hook at the same points, so a hook may use collectives. A hook's
``state_dict()`` (tensors) is saved in each checkpoint and handed back through
``load_state_dict`` on resume, which keeps a resumed run exact. Hooks run after the
optimizer step and before the EMA update, so buffers a hook changes (a refitted anchor
state) reach the EMA copy in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from disdis.rundir import RunDir
from disdis.train.config import TrainConfig


@dataclass
class HookContext:
    """What a hook may use: the run's model, data, settings and folder."""
    model: nn.Module                  # the trained module itself (not a DDP wrapper)
    dataset: torch.utils.data.Dataset
    cfg: TrainConfig
    device: torch.device
    bf16: bool                        # autocast in use (GPUs)
    run_dir: RunDir
    resume_step: int | None           # the step a resumed run continues from; None for a fresh run
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer | None = None  # once the training step is built

    def steps(self, kimg: float) -> int:
        """Whole steps of the global batch in ``kimg`` thousand images (at least 1)."""
        return self.cfg.steps(kimg)


class Hook:
    """Base class: every method is optional (see the module docstring)."""

    name = "hook"  # the key of its state in checkpoints; unique among a method's hooks

    def interval(self, ctx: HookContext) -> int:
        """Steps between calls of ``__call__``; 0: never."""
        return 0

    def open(self, ctx: HookContext) -> None:
        pass

    def start(self, ctx: HookContext, images: torch.Tensor) -> None:
        pass

    def after_step(self, out: dict) -> None:
        pass

    def __call__(self, ctx: HookContext, step: int) -> None:
        pass

    def close(self) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class OnFirstBatch(Hook):
    """``fn(images)`` once, without gradients, on a fresh run's first global batch: a data-dependent
    initialisation (e.g. the latent scale 1/std). Every rank sees the whole batch and gets the
    same result, so no message is needed."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], None]):
        self.name = name
        self.fn = fn

    def start(self, ctx: HookContext, images: torch.Tensor) -> None:
        with torch.no_grad():
            self.fn(images)
