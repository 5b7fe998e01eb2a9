"""The ground-truth dataset interface shared by every dataset kind, and its views.

A ground-truth dataset is a full factor grid stored in canonical order: image
``i`` shows the factor classes ``np.unravel_index(i, factor_sizes)`` (row-major,
last factor fastest), exactly as Shapes3D, dSprites, MPI3D and Cars3D are
published and as disentanglement_lib indexes them.

Subclasses implement :meth:`GroundTruthDataset._read_images` only; indexing,
range checks, factor sampling, sub-grids and resolution changes are shared.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from disdis.errors import ConfigError, DataError, DisdisError
from disdis.factor_grid import canonical_factors, sample_factors  # noqa: F401 (canonical_factors re-exported)


class GroundTruthDataset:
    """Images on a factor grid: ``images(i)`` is uint8 ``(n, H, W, C)``, ``factors(i)`` int64 ``(n, K)``."""

    kind: str = ""
    has_factor_grid: bool = True

    def __init__(self, path: str, factor_names: Sequence[str], factor_sizes: Sequence[int],
                 resolution: int, channels: int):
        self.path = str(path)
        self.factor_names = list(factor_names)
        self.factor_sizes = tuple(int(s) for s in factor_sizes)
        self.resolution = int(resolution)
        self.channels = int(channels)

    # ----------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return int(np.prod(self.factor_sizes, dtype=np.int64))

    def __repr__(self) -> str:
        grid = ", ".join(f"{n}={s}" for n, s in zip(self.factor_names, self.factor_sizes))
        return (f"{type(self).__name__}({self.path!r}, {len(self)} images "
                f"{self.resolution}x{self.resolution}x{self.channels}, {grid})")

    # ---------------------------------------------------------------- images
    def images(self, indices) -> np.ndarray:
        """uint8 images ``(n, H, W, C)`` for the given flat indices (any order, repeats allowed)."""
        idx = self._check_indices(indices)
        if idx.size == 0:
            return np.empty((0, self.resolution, self.resolution, self.channels), dtype=np.uint8)
        return self._read_images(idx)

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim == 0:
            idx = idx[None]
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise DisdisError(f"{self.path}: image indices must be a 1-D integer array, got "
                              f"shape {idx.shape} dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))][0]
            raise DisdisError(f"{self.path}: image index {bad} out of range 0..{len(self) - 1}")
        return idx

    # --------------------------------------------------------------- factors
    def factors(self, indices) -> np.ndarray:
        """Factor classes ``(n, K)`` int64 of the given flat indices (canonical order)."""
        self._require_grid("factors")
        idx = self._check_indices(indices)
        return np.stack(np.unravel_index(idx, self.factor_sizes), axis=1).astype(np.int64)

    def index_of(self, factors) -> np.ndarray:
        """Flat indices ``(n,)`` of factor-class rows ``(n, K)``; the inverse of :meth:`factors`."""
        self._require_grid("index_of")
        f = self._check_factors(factors)
        return np.ravel_multi_index(tuple(f.T), self.factor_sizes).astype(np.int64)

    def sample_factors(self, n: int, random_state: np.random.RandomState) -> np.ndarray:
        """``n`` factor rows drawn like disentanglement_lib's ``SplitDiscreteStateSpace``:
        for each factor in order, one ``random_state.randint(size_k, size=n)``."""
        self._require_grid("sample_factors")
        return sample_factors(self.factor_sizes, n, random_state)

    def sample_observations_from_factors(self, factors, random_state=None) -> np.ndarray:
        """Images of the given factor rows (``random_state`` is unused: every factor is observed)."""
        return self.images(self.index_of(factors))

    def labels(self, indices) -> np.ndarray:
        """What a training pipeline pairs with each image: factor classes here, attributes for CelebA."""
        return self.factors(indices)

    def _check_factors(self, factors) -> np.ndarray:
        f = np.asarray(factors)
        k = len(self.factor_sizes)
        if f.ndim != 2 or f.shape[1] != k or (f.size and not np.issubdtype(f.dtype, np.integer)):
            raise DisdisError(f"{self.path}: factors must be an integer array (n, {k}), got "
                              f"shape {f.shape} dtype {f.dtype}")
        f = f.astype(np.int64, copy=False)
        sizes = np.asarray(self.factor_sizes)
        bad = (f < 0) | (f >= sizes)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DisdisError(f"{self.path}: factor '{self.factor_names[col]}' class {f[row, col]} "
                              f"out of range 0..{sizes[col] - 1}")
        return f

    def _require_grid(self, what: str) -> None:
        if not self.has_factor_grid:
            raise DisdisError(f"{self.path}: {self.kind} has no factor grid, so {what}() is not "
                              f"available (use attributes() instead)")

    # ----------------------------------------------------------------- views
    def subgrid(self, keep: Mapping[str, Sequence[int]]) -> "GroundTruthDataset":
        """The dataset restricted to some values of some factors, in canonical order.

        ``keep`` maps factor names to the class indices kept (in the order given);
        other factors keep all values. Classes are renumbered ``0..len-1``.
        """
        return SubgridView(self, keep)

    def at_resolution(self, resolution: int | None, key: str = "resolution") -> "GroundTruthDataset":
        """The dataset with images area-averaged down to ``resolution`` (a divisor of the native one;
        ``key``: the setting's name in the message when it is not)."""
        if resolution is None or int(resolution) == self.resolution:
            return self
        return ResizedView(self, int(resolution), key)

    # ---------------------------------------------------- worker-safe handles
    def close(self) -> None:
        """Release open file handles (they are reopened lazily on the next read)."""

    def __getstate__(self):
        # File handles do not survive pickling (DataLoader workers with spawn); reopen lazily.
        state = self.__dict__.copy()
        for key in getattr(self, "_handle_attrs", ()):
            state[key] = None
        return state


class SubgridView(GroundTruthDataset):
    """A factor sub-grid of another dataset; see :meth:`GroundTruthDataset.subgrid`."""

    def __init__(self, parent: GroundTruthDataset, keep: Mapping[str, Sequence[int]]):
        parent._require_grid("subgrid")
        unknown = sorted(set(keep) - set(parent.factor_names))
        if unknown:
            raise DisdisError(f"{parent.path}: unknown factor {unknown[0]!r} in subgrid; factors are "
                              f"{', '.join(parent.factor_names)}")
        self.kept: list[np.ndarray] = []
        for name, size in zip(parent.factor_names, parent.factor_sizes):
            values = np.asarray(keep.get(name, range(size)), dtype=np.int64).reshape(-1)
            if values.size == 0 or values.min() < 0 or values.max() >= size:
                raise DisdisError(f"{parent.path}: subgrid of factor {name!r} must keep classes in "
                                  f"0..{size - 1}, got {values.tolist()}")
            if len(np.unique(values)) != len(values):
                raise DisdisError(f"{parent.path}: subgrid of factor {name!r} repeats a class: "
                                  f"{values.tolist()}")
            self.kept.append(values)
        super().__init__(parent.path, parent.factor_names, [len(v) for v in self.kept],
                         parent.resolution, parent.channels)
        self.kind = parent.kind
        self.parent = parent

    def parent_factors(self, factors) -> np.ndarray:
        """The parent's factor classes of sub-grid factor rows."""
        f = self._check_factors(factors)
        return np.stack([kept[f[:, k]] for k, kept in enumerate(self.kept)], axis=1)

    def parent_indices(self, indices) -> np.ndarray:
        return self.parent.index_of(self.parent_factors(self.factors(indices)))

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        return self.parent.images(self.parent_indices(indices))

    def close(self) -> None:
        self.parent.close()


class ResizedView(GroundTruthDataset):
    """Another dataset's images area-averaged to a lower resolution (anti-aliased, exact for
    integer ratios); see :meth:`GroundTruthDataset.at_resolution`."""

    def __init__(self, parent: GroundTruthDataset, resolution: int, key: str = "resolution"):
        check_resolution(parent.path, parent.resolution, resolution, key)
        super().__init__(parent.path, parent.factor_names, parent.factor_sizes, resolution,
                         parent.channels)
        self.kind, self.has_factor_grid, self.parent = parent.kind, parent.has_factor_grid, parent

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        return area_downscale(self.parent.images(indices), self.resolution)

    def labels(self, indices) -> np.ndarray:
        return self.parent.labels(indices)

    def __len__(self) -> int:
        return len(self.parent)

    def __getattr__(self, name):
        # Pass through kind-specific extras (CelebA's attributes()/attribute_names).
        if name == "parent":
            raise AttributeError(name)
        return getattr(self.parent, name)

    def close(self) -> None:
        self.parent.close()


def check_resolution(path: str, native: int, resolution: int, key: str = "resolution") -> None:
    """Raise a ConfigError naming ``key`` unless ``resolution`` divides ``native`` (the sizes that
    area averaging reaches)."""
    if resolution >= 1 and native % resolution == 0:
        return
    divisors = ", ".join(str(d) for d in range(native, 0, -1) if native % d == 0)
    if resolution > native:
        problem = f"{resolution} is larger than the native {native} px of {path}"
    elif resolution < 1:
        problem = f"{resolution} is not a positive size ({path} is {native} px)"
    else:
        problem = f"{resolution} does not divide the native {native} px of {path}"
    raise ConfigError(f"{key}: {problem} (it must divide it: {divisors})")


def area_downscale(images: np.ndarray, resolution: int) -> np.ndarray:
    """Mean over ``f x f`` pixel blocks, ``f = H // resolution``, rounded back to uint8."""
    n, h, w, c = images.shape
    f = h // resolution
    if f == 1:
        return images
    blocks = images.reshape(n, resolution, f, w // f, f, c).astype(np.float32)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


def check_canonical_classes(path: str, what: str, classes: np.ndarray, sizes: Sequence[int],
                            names: Sequence[str]) -> None:
    """Raise unless ``classes`` (N, K) is the canonical grid enumeration for ``sizes``."""
    for k, (size, name) in enumerate(zip(sizes, names)):
        # Column k of the canonical grid repeats each class `inner` times, cycling `outer` times.
        inner = int(np.prod(sizes[k + 1:], dtype=np.int64))
        outer = int(np.prod(sizes[:k], dtype=np.int64))
        expected = np.tile(np.repeat(np.arange(size), inner), outer)
        if not np.array_equal(classes[:, k], expected):
            row = int(np.argmax(classes[:, k] != expected))
            raise DataError(f"{path}: {what} are not in canonical order (factor {name!r} at row "
                            f"{row} is class {classes[row, k]}, expected {expected[row]}; last "
                            f"factor varies fastest)")
