"""MPI3D (toy, realistic, real) in the published npz layout.

``mpi3d_toy.npz`` / ``mpi3d_realistic.npz`` / ``mpi3d_real.npz``: one array
``images`` (1036800, 64, 64, 3) uint8 in canonical order over object_color 6,
object_shape 6, object_size 2, camera_height 3, background_color 3,
horizontal_axis 40, vertical_axis 40 (last fastest). An npz stored without
compression is memory-mapped; a compressed one is decompressed into memory once.
"""

from __future__ import annotations

import numpy as np

from disdis.data.base import GroundTruthDataset
from disdis.data.files import NpzImages, npz_members, require_member

FACTOR_NAMES = ("object_color", "object_shape", "object_size", "camera_height",
                "background_color", "horizontal_axis", "vertical_axis")
FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)
N_IMAGES = int(np.prod(FACTOR_SIZES))


class MPI3D(GroundTruthDataset):
    """An MPI3D npz (any of the three variants), validated against the published grid."""

    kind = "mpi3d"

    def __init__(self, path: str):
        path = str(path)
        images = require_member(path, npz_members(path), "images", (N_IMAGES, None, None, 3),
                                np.uint8, "the published MPI3D grid")
        super().__init__(path, FACTOR_NAMES, FACTOR_SIZES, images.shape[1], 3)
        self._images = NpzImages(images)

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        return self._images.take(indices)
