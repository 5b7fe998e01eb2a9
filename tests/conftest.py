"""Shared test fixtures: small datasets in the published layouts, made in well under a second.

- ``shapes3d_grid_npz``: a grid npz of the procedural Shapes3D renderer at 16x16,
  the sub-grid ``SHAPES3D_SMALL_KEEP`` (floor 2, wall 2, object 3, scale 2,
  shape 4, orientation 3 = 288 images). Open with ``disdis.data.open_dataset``.
- ``shapes3d_h5_small``: a full-grid ``3dshapes.h5`` (480000 rows, exact
  published layout and labels) at 4x4 whose every pixel encodes the image's own
  index as RGB = index in base 256 (see ``decode_index``), so reads can be checked
  exactly.
- ``one_torch_thread``: runs a test with torch on one thread (tiny networks: OpenMP
  synchronisation dominates on a busy machine, and one thread gives the same
  arithmetic as a subprocess started with OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from disdis.data import render_shapes3d, write_grid_npz
from disdis.data.base import canonical_factors
from disdis.data.render_shapes3d import FACTOR_NAMES, FACTOR_SIZES
from disdis.data.shapes3d import label_values

SHAPES3D_SMALL_KEEP = {"floor_hue": [0, 5], "wall_hue": [2, 7], "object_hue": [0, 4, 8],
                       "scale": [0, 7], "shape": [0, 1, 2, 3], "orientation": [0, 7, 14]}
SHAPES3D_SMALL_RESOLUTION = 16


def encode_index(indices: np.ndarray, resolution: int, channels: int = 3) -> np.ndarray:
    """Images (n, R, R, C) whose pixels all hold ``index`` in base 256 (low byte last)."""
    idx = np.asarray(indices, dtype=np.int64)
    digits = np.stack([(idx >> (8 * (channels - 1 - c))) & 255 for c in range(channels)], -1)
    return np.broadcast_to(digits[:, None, None, :].astype(np.uint8),
                           (len(idx), resolution, resolution, channels))


def decode_index(images: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_index`, read from pixel (0, 0)."""
    px = images[:, 0, 0, :].astype(np.int64)
    return sum(px[:, c] << (8 * (px.shape[1] - 1 - c)) for c in range(px.shape[1]))


def write_shapes3d_h5(path, resolution: int = 4, chunks: bool = False) -> None:
    """A 3dshapes.h5 with the published layout and labels, index-encoded images."""
    n = int(np.prod(FACTOR_SIZES))
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=encode_index(np.arange(n), resolution),
                         chunks=(1000, resolution, resolution, 3) if chunks else None)
        f.create_dataset("labels", data=label_values(canonical_factors(FACTOR_SIZES)))


@pytest.fixture(scope="session")
def shapes3d_grid_npz(tmp_path_factory):
    """Path of a 288-image 16x16 grid npz of the procedural Shapes3D scene (``SHAPES3D_SMALL_KEEP``)."""
    kept = [np.asarray(SHAPES3D_SMALL_KEEP[name]) for name in FACTOR_NAMES]
    classes = canonical_factors([len(k) for k in kept])
    parent = np.stack([kept[k][classes[:, k]] for k in range(len(kept))], axis=1)
    path = tmp_path_factory.mktemp("data") / "shapes3d_small.npz"
    write_grid_npz(str(path), images=render_shapes3d(parent, SHAPES3D_SMALL_RESOLUTION),
                   factor_sizes=[len(k) for k in kept], factor_names=FACTOR_NAMES)
    return path


@pytest.fixture(scope="session")
def shapes3d_h5_small(tmp_path_factory):
    """Path of a full-grid (480000) 4x4 3dshapes.h5, contiguous, with index-encoded images."""
    path = tmp_path_factory.mktemp("data") / "3dshapes_4x4.h5"
    write_shapes3d_h5(path)
    return path


@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
