"""dSprites in the published npz layout: reading it, and writing the procedural one.

Published file ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``: ``imgs``
(737280, 64, 64) uint8 in {0, 1}, ``latents_classes`` (737280, 6) int64 and
``latents_values`` (737280, 6) float64 over (color, shape, scale, orientation,
posX, posY), plus a pickled ``metadata`` dict that disdis never loads (and does
not write). ``color`` has one value, so the dataset has the 5 other factors.

The images are kept in memory bit-packed (377 MB for the full set instead of
3 GB), decompressed once in a streaming pass; ``images()`` returns them as
uint8 {0, 255} with one channel.
"""

from __future__ import annotations

import numpy as np

from disdis.data.base import GroundTruthDataset, canonical_factors, check_canonical_classes
from disdis.data.files import NpzWriter, atomic_path, npz_members, require_member
from disdis.data.render_dsprites import (FACTOR_NAMES, FACTOR_SIZES, FACTOR_VALUES,
                                         render_dsprites)
from disdis.errors import DataError
from disdis.progress import progress

N_IMAGES = int(np.prod(FACTOR_SIZES))
LATENT_SIZES = (1,) + FACTOR_SIZES  # the published latents include 'color' (one value)


class DSprites(GroundTruthDataset):
    """A dSprites npz (published or procedural), validated against the published grid."""

    kind = "dsprites"

    def __init__(self, path: str):
        path = str(path)
        members = npz_members(path)
        imgs = require_member(path, members, "imgs", (N_IMAGES, None, None), np.uint8,
                              "the published dSprites grid")
        if "latents_classes" in members:
            classes = require_member(path, members, "latents_classes", (N_IMAGES, 6), np.int64).read()
            if np.any(classes[:, 0] != 0):
                raise DataError(f"{path}: latents_classes column 0 (color) must be 0 everywhere")
            check_canonical_classes(path, "latents_classes", classes[:, 1:], FACTOR_SIZES,
                                    FACTOR_NAMES)
        resolution = imgs.shape[1]
        super().__init__(path, FACTOR_NAMES, FACTOR_SIZES, resolution, 1)
        self._bits = np.empty((N_IMAGES, -(-resolution * resolution // 8)), dtype=np.uint8)
        start = 0
        for rows in imgs.iter_rows(16384):
            self._bits[start:start + len(rows)] = np.packbits(rows.reshape(len(rows), -1) != 0, axis=1)
            start += len(rows)

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        r = self.resolution
        on = np.unpackbits(self._bits[indices], axis=1, count=r * r)
        return (on * np.uint8(255)).reshape(len(indices), r, r, 1)


def latents(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published (latents_classes, latents_values) of factor-class rows (n, 5)."""
    n = len(factors)
    classes = np.concatenate([np.zeros((n, 1), np.int64), factors], axis=1)
    values = np.concatenate([np.ones((n, 1))] + [FACTOR_VALUES[k][factors[:, k]][:, None]
                                                 for k in range(len(FACTOR_SIZES))], axis=1)
    return classes, values


def write_dsprites(out: str, chunk: int = 8192) -> None:
    """Render the full grid into ``out`` with the published npz keys (compressed, no pickles),
    streaming the images so the 3 GB array is never in memory; atomic and deterministic."""
    factors = canonical_factors(FACTOR_SIZES)
    classes, values = latents(factors)
    with atomic_path(out) as tmp, NpzWriter(tmp, compress=True) as npz:
        with npz.stream("imgs", (N_IMAGES, 64, 64), np.uint8) as write, \
                progress(total=N_IMAGES, desc="rasterising sprites", unit="img") as bar:
            for start in range(0, N_IMAGES, chunk):
                rows = factors[start:start + chunk]
                write(render_dsprites(rows))
                bar.update(len(rows))
        npz.add("latents_classes", classes)
        npz.add("latents_values", values)
