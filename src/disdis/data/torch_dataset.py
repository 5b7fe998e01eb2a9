"""A torch ``Dataset`` over any ground-truth dataset: float CHW images in [-1, 1] and labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from disdis.data.base import GroundTruthDataset


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, C) -> float32 (n, C, H, W) in [-1, 1] (x / 127.5 - 1)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return x.float().div_(127.5).sub_(1.0)


class TorchImageDataset(torch.utils.data.Dataset):
    """Items ``(image float32 (C, H, W) in [-1, 1], labels int64 (K,))`` of ``dataset`` rows
    ``indices`` (all by default). Labels are factor classes, or CelebA's 0/1 attributes.

    Safe with DataLoader workers: the underlying files are opened lazily in each
    worker process. ``__getitems__`` lets a DataLoader fetch a whole batch with
    one sorted read instead of one read per item.
    """

    def __init__(self, dataset: GroundTruthDataset, indices: Sequence[int] | np.ndarray | None = None):
        self.dataset = dataset
        self.indices = (np.arange(len(dataset), dtype=np.int64) if indices is None
                        else dataset._check_indices(indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.__getitems__([i])[0]
        return image, label

    def __getitems__(self, items: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        images = to_tensor(self.dataset.images(rows))
        labels = torch.from_numpy(self.dataset.labels(rows).astype(np.int64))
        return list(zip(images.unbind(0), labels.unbind(0)))
