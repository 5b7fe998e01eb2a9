"""The order in which training images are seen, as a pure function of (seed, step).

Each epoch is a fresh permutation of the dataset drawn from a generator seeded
with (seed, epoch); step s takes the s-th slice of ``batch_size`` indices
(incomplete slices at the end of an epoch are skipped), and each of the W ranks
takes its contiguous 1/W of that global batch. So a run sees the same global
batches on 1 or 8 devices, and a resumed run continues with exactly the batches
an uninterrupted run would have seen: the data position is just the step.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from disdis.errors import ConfigError


def check_batch_fits(batch_size: int, num_items: int) -> None:
    if num_items < batch_size:
        raise ConfigError(f"train.batch_size: {batch_size} is larger than the dataset ({num_items} images)")


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's index list for steps ``start_step, start_step + 1, ...`` (endless)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ConfigError(f"train.batch_size: {batch_size} must be divisible by the number of processes ({world_size})")
        check_batch_fits(batch_size, num_items)
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.steps_per_epoch = num_items // batch_size

    def epoch_and_offset(self, step: int) -> tuple[int, int]:
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def global_batch(self, step: int) -> np.ndarray:
        epoch, offset = self.epoch_and_offset(step)
        return self.permutation(epoch)[offset * self.batch_size:(offset + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world_size
        step = self.start_step
        epoch, perm = -1, None
        while True:
            step_epoch, offset = self.epoch_and_offset(step)
            if step_epoch != epoch:
                epoch, perm = step_epoch, self.permutation(step_epoch)
            start = offset * self.batch_size + self.rank * per_rank
            yield perm[start:start + per_rank].tolist()
            step += 1


def step_seed(seed: int, step: int, stream: int) -> int:
    """The seed of the random draws made at ``step`` in ``stream`` (a rank, or a hook's own stream)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)
