"""A factor grid in canonical order: row-major over factors, last factor fastest.

Shared by the datasets (which store images in this order) and the metrics
(which index a code table by it). ``sample_factors`` draws exactly like
disentanglement_lib's ``SplitDiscreteStateSpace``: for each factor in order, one
``random_state.randint(size_k, size=n)``, so a seeded RandomState gives the same
samples in both projects.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def canonical_factors(factor_sizes: Sequence[int]) -> np.ndarray:
    """All factor-class rows (N, K) int64 of a grid in canonical order."""
    return np.stack([g.reshape(-1) for g in np.indices(tuple(factor_sizes))], axis=1).astype(np.int64)


def grid_strides(factor_sizes: Sequence[int]) -> np.ndarray:
    """Row stride of each factor in the canonical order."""
    return np.cumprod(np.r_[1, np.asarray(factor_sizes)[:0:-1]])[::-1].astype(np.int64)


def index_of(factors: np.ndarray, factor_sizes: Sequence[int]) -> np.ndarray:
    """Canonical row index of each factor combination (last axis holds the factors); unchecked."""
    return np.asarray(factors, dtype=np.int64) @ grid_strides(factor_sizes)


def sample_factors(factor_sizes: Sequence[int], num: int, random_state: np.random.RandomState) -> np.ndarray:
    """(num, K) factor classes, one ``randint`` call per factor (disentanglement_lib's order)."""
    factors = np.empty((num, len(factor_sizes)), dtype=np.int64)
    for k, size in enumerate(factor_sizes):
        factors[:, k] = random_state.randint(size, size=num)
    return factors


def factor_signal(values: np.ndarray, factor_sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """How much of the variance of a full grid's values each factor moves, two ways.

    ``values`` is (N, D), the rows in canonical order (images flattened, latents, ...). With
    V the total variance (summed over the D dimensions):

    * ``marginal[k]`` = sum_d Var_c(E[x_d | c_k = c]) / V, factor k's main effect: the part a
      per-class offset could express;
    * ``alone[k]`` = E[sum_d Var_{c_k}(x_d | every other factor fixed)] / V, the variance along
      the lines of the grid where factor k alone changes: what telling its values apart needs.

    The two agree when factors add; ``alone`` is the larger when a factor acts through the others
    (a silhouette whose pixels take the object's and background's colours has ``marginal`` near 0).
    """
    x = np.asarray(values, dtype=np.float64).reshape(*factor_sizes, -1)
    total = x.reshape(-1, x.shape[-1]).var(axis=0).sum()
    axes = tuple(range(len(factor_sizes)))
    marginal = np.array([x.mean(axis=tuple(a for a in axes if a != k)).var(axis=0).sum() for k in axes])
    alone = np.array([x.var(axis=k).mean(axis=axes[:-1]).sum() for k in axes])
    return marginal / total, alone / total
