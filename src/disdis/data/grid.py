"""The generic "grid npz": a user's own labelled images on a full factor grid.

Keys: ``images`` (N, H, H, C) uint8 with C 1 or 3, ``factor_sizes`` (K,)
integers with N = prod(factor_sizes), optional ``factor_names`` (K,) strings.
Images are in canonical order, last factor fastest. Written uncompressed so
that reading memory-maps it; ``disdis data subset`` writes one from any
ground-truth dataset.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from disdis.data.base import GroundTruthDataset
from disdis.data.files import NpzImages, NpzWriter, atomic_path, npz_members, require_member
from disdis.errors import DataError

_LAYOUT = "a grid npz has 'images' (N, H, H, C) uint8, 'factor_sizes' (K,) and optional 'factor_names'"


class GridNpz(GroundTruthDataset):
    """A grid npz file; see the module docstring for the layout."""

    kind = "grid"

    def __init__(self, path: str):
        path = str(path)
        members = npz_members(path)
        for key in ("images", "factor_sizes"):
            if key not in members:
                raise DataError(f"{path}: missing array {key!r} ({_LAYOUT})")
        sizes_member = members["factor_sizes"]
        sizes = sizes_member.read() if not sizes_member.dtype.hasobject else None
        if sizes is None or sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer) \
                or sizes.size == 0 or sizes.min() < 1:
            raise DataError(f"{path}: 'factor_sizes' must be a 1-D array of positive integers")
        sizes = tuple(int(s) for s in sizes)
        n = int(np.prod(sizes, dtype=np.int64))
        shape = members["images"].shape
        channels = shape[3] if len(shape) == 4 and shape[3] in (1, 3) else 3
        images = require_member(path, members, "images", (n, None, None, channels), np.uint8,
                                f"N = prod(factor_sizes {list(sizes)})")
        names = [f"factor_{k}" for k in range(len(sizes))]
        if "factor_names" in members:
            raw = members["factor_names"]
            if raw.dtype.kind != "U" or raw.shape != (len(sizes),):
                raise DataError(f"{path}: 'factor_names' must be {len(sizes)} strings, got "
                                f"{raw.shape} {raw.dtype}")
            names = [str(s) for s in raw.read()]
        super().__init__(path, names, sizes, images.shape[1], channels)
        self._images = NpzImages(images)

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        return self._images.take(indices)


def write_grid_npz(out: str, dataset: GroundTruthDataset | None = None, *,
                   images: np.ndarray | None = None, factor_sizes: Sequence[int] | None = None,
                   factor_names: Sequence[str] | None = None, chunk: int = 4096) -> None:
    """Write a grid npz atomically, either from a ground-truth ``dataset`` (streamed in chunks)
    or from ``images`` in canonical order with ``factor_sizes`` and optional ``factor_names``."""
    if dataset is not None:
        factor_sizes, factor_names = dataset.factor_sizes, dataset.factor_names
        shape = (len(dataset), dataset.resolution, dataset.resolution, dataset.channels)
    else:
        assert images is not None and factor_sizes is not None
        shape = images.shape
        if shape[0] != int(np.prod(factor_sizes)):
            raise DataError(f"{out}: {shape[0]} images do not fill the factor grid {list(factor_sizes)}")
    names = list(factor_names) if factor_names is not None else [f"factor_{k}" for k in
                                                                 range(len(factor_sizes))]
    with atomic_path(out) as tmp, NpzWriter(tmp, compress=False) as npz:
        with npz.stream("images", shape, np.uint8) as write:
            for start in range(0, shape[0], chunk):
                stop = min(start + chunk, shape[0])
                write(dataset.images(np.arange(start, stop)) if dataset is not None
                      else images[start:stop])
        npz.add("factor_sizes", np.asarray(factor_sizes, dtype=np.int64))
        npz.add("factor_names", np.asarray(names, dtype=np.str_))
