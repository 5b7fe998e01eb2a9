"""Encode chosen dataset images with a model, sharded over ranks and gathered in canonical order."""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch

from disdis.progress import progress
from disdis.train import distributed


@torch.no_grad()
def encode_images(fn: Callable[[torch.Tensor], torch.Tensor], dataset: torch.utils.data.Dataset,
                  indices: Sequence[int] | np.ndarray, batch_size: int, device: torch.device, *,
                  bf16: bool = False, num_workers: int = 0, desc: str = "encode") -> torch.Tensor:
    """``fn`` applied to ``dataset[i]`` images for ``i`` in ``indices``; float32 rows in that order, on the CPU.

    Each rank encodes its contiguous share of ``indices``; every rank gets the full result.
    """
    indices = np.asarray(indices)
    mine = indices[list(distributed.shard(len(indices)))]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine.tolist()), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()
    rows = []
    with progress(total=len(mine), desc=desc, unit="img", disable=None if distributed.is_main() else True) as bar:
        for batch in loader:
            images = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device, non_blocking=True)
            with autocast:
                out = fn(images)
            rows.append(out.float().cpu())
            bar.update(len(images))
    # a rank with an empty share still needs the row shape for the gather
    local = torch.cat(rows) if rows else _empty_output(fn, dataset, indices, device)
    return distributed.gather_shards(local, len(indices))


def _empty_output(fn, dataset, indices, device) -> torch.Tensor:
    item = dataset[int(indices[0])]
    image = (item[0] if isinstance(item, (list, tuple)) else item)[None].to(device)
    return fn(image).float().cpu()[:0]


def encode_training_subset(module: torch.nn.Module, ctx, max_images: int, stream: int, desc: str) -> torch.Tensor:
    """``module`` in eval mode (its mode restored after) on the training images of a hook's context: all
    of them, or a fixed random subset of ``max_images`` (from the run's seed and ``stream``, in index
    order); float32 rows on the CPU, every rank the same."""
    count = min(max_images, len(ctx.dataset))
    indices = np.sort(np.random.default_rng([ctx.cfg.seed, stream]).choice(len(ctx.dataset), count, replace=False))
    was_training = module.training
    module.eval()
    try:
        return encode_images(module, ctx.dataset, indices, ctx.cfg.batch_size, ctx.device,
                             num_workers=ctx.cfg.num_workers, desc=desc)
    finally:
        module.train(was_training)
