"""Shapes3D in the published ``3dshapes.h5`` layout: reading it, and writing the procedural one.

Layout (DeepMind's 3dshapes.h5): ``images`` (480000, 64, 64, 3) uint8 and
``labels`` (480000, 6) float64, factors floor_hue, wall_hue, object_hue, scale,
shape, orientation (10, 10, 10, 8, 4, 15) in canonical order, last factor
fastest. The procedural file has the same layout at any square resolution.

Reading never loads the 5.9 GB image array: an uncompressed contiguous
dataset (the procedural file, and any plain HDF5 array) is memory-mapped
straight from the file; a chunked or compressed one is read through h5py with
sorted indices.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from disdis.data.base import GroundTruthDataset, canonical_factors, check_canonical_classes
from disdis.data.files import atomic_path, check_array
from disdis.data.render_shapes3d import (FACTOR_NAMES, FACTOR_SIZES, FACTOR_VALUES,
                                         Shapes3DRenderer)
from disdis.errors import DataError
from disdis.progress import progress

N_IMAGES = int(np.prod(FACTOR_SIZES))


def label_values(factors: np.ndarray) -> np.ndarray:
    """The published float64 ``labels`` of factor-class rows."""
    return np.stack([FACTOR_VALUES[k][factors[:, k]] for k in range(len(FACTOR_SIZES))], axis=1)


def _open_h5(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file, truncated or corrupt "
                        f"({str(err).splitlines()[0]})") from None


class Shapes3D(GroundTruthDataset):
    """A ``3dshapes.h5`` file (published or procedural), validated against the published grid."""

    kind = "shapes3d"
    _handle_attrs = ("_h5", "_images")

    def __init__(self, path: str):
        path = str(path)
        with _open_h5(path) as f:
            for key in ("images", "labels"):
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DataError(f"{path}: missing dataset {key!r} (a 3dshapes.h5 file has "
                                    f"'images' ({N_IMAGES}, 64, 64, 3) uint8 and 'labels' "
                                    f"({N_IMAGES}, 6) float64)")
            images, labels = f["images"], f["labels"]
            check_array(path, "images", images.shape, images.dtype, (N_IMAGES, None, None, 3),
                        np.uint8, "the published Shapes3D grid")
            check_array(path, "labels", labels.shape, labels.dtype, (N_IMAGES, 6), np.float64)
            self.factor_values = self._check_labels(path, self._read_all(path, labels))
            resolution = images.shape[1]
            offset = images.id.get_offset()
            contiguous = images.chunks is None and images.compression is None and offset is not None
            nbytes = images.size * images.dtype.itemsize
            if contiguous and offset + nbytes > os.path.getsize(path):
                raise DataError(f"{path}: dataset 'images' is truncated")
        super().__init__(path, FACTOR_NAMES, FACTOR_SIZES, resolution, 3)
        self._offset = offset if contiguous else None
        self._h5: h5py.File | None = None
        self._images = None
        self._pid = -1

    @staticmethod
    def _read_all(path: str, dataset: h5py.Dataset) -> np.ndarray:
        try:
            return dataset[()]
        except OSError as err:
            raise DataError(f"{path}: dataset {dataset.name!r} is unreadable, truncated or "
                            f"corrupt ({str(err).splitlines()[0]})") from None

    @staticmethod
    def _check_labels(path: str, labels: np.ndarray) -> list[np.ndarray]:
        """The sorted distinct values of each factor, after checking the labels form the grid."""
        values, classes = [], np.empty(labels.shape, dtype=np.int64)
        for k, (name, size) in enumerate(zip(FACTOR_NAMES, FACTOR_SIZES)):
            distinct, classes[:, k] = np.unique(labels[:, k], return_inverse=True)
            if len(distinct) != size:
                raise DataError(f"{path}: labels column {k} ({name}) has {len(distinct)} distinct "
                                f"values, expected {size}")
            values.append(distinct)
        check_canonical_classes(path, "labels", classes, FACTOR_SIZES, FACTOR_NAMES)
        return values

    def _open(self):
        # Open per process: an h5py handle or a mapping inherited across fork is not safe to use.
        if self._images is None or self._pid != os.getpid():
            shape = (len(self), self.resolution, self.resolution, 3)
            if self._offset is not None:
                self._images = np.memmap(self.path, np.uint8, "r", self._offset, shape)
            else:
                self._h5 = _open_h5(self.path)
                self._images = self._h5["images"]
            self._pid = os.getpid()
        return self._images

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        images = self._open()
        if self._offset is not None:
            return np.asarray(images[indices])
        # One slice read per run of consecutive indices: h5py's own fancy indexing is several
        # times slower on chunked datasets (benchmarks/data.py).
        unique, inverse = np.unique(indices, return_inverse=True)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        try:
            rows = np.concatenate([images[run[0]:run[-1] + 1] for run in np.split(unique, breaks)])
        except OSError as err:
            raise DataError(f"{self.path}: dataset 'images' is unreadable ({err})") from None
        return rows[inverse]

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._images = None


def write_shapes3d(out: str, resolution: int = 64, chunk: int = 2400) -> None:
    """Render the full grid into ``out`` in the 3dshapes.h5 layout, atomically and deterministically.

    ``images`` is written contiguous and uncompressed (so it can be memory-mapped when read).
    """
    renderer = Shapes3DRenderer(resolution)
    factors = canonical_factors(FACTOR_SIZES)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("labels", data=label_values(factors))
            images = f.create_dataset("images", shape=(N_IMAGES, resolution, resolution, 3),
                                      dtype=np.uint8)
            n_geometries = int(np.prod(FACTOR_SIZES[3:]))
            with progress(total=n_geometries, desc="ray casting views", unit="view") as bar:
                for start in range(0, n_geometries, 16):
                    renderer.prepare(np.arange(start, min(start + 16, n_geometries)))
                    bar.update(min(16, n_geometries - start))
            with progress(total=N_IMAGES, desc="shading images", unit="img") as bar:
                for start in range(0, N_IMAGES, chunk):
                    rows = factors[start:start + chunk]
                    images[start:start + len(rows)] = renderer.render(rows)
                    bar.update(len(rows))
