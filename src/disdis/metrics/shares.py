"""Which factor each unit carries: the share of a unit's variance that each factor explains.

For a code table over the full factor grid (one row per image, canonical order)
the factors are independent and balanced, so the variance of unit j splits as

    Var(c_j) = sum_k Var_k(E[c_j | f_k]) + (interactions and noise),

and the share of factor k is the correlation ratio (eta squared)

    eta_jk^2 = Var(E[c_j | f_k]) / Var(c_j),

the variance of the unit's mean over each value of factor k, over its total
variance. A unit that is a function of factor k alone has share 1 for k and 0
for every other factor; the shares of a unit sum to at most 1. Unlike the
summary metrics this shows, unit by unit, what a representation encodes (and
what it leaves out).

A pair of factors (k, l) explains eta_j,kl^2 = Var(E[c_j | f_k, f_l]) / Var(c_j): its main effects
and their interaction. A unit whose pair share is far above its best single share carries the two
factors jointly (say, "the object's hue equals the floor's"), which no single factor's share shows.

A factor can also be in the code without being in any unit: spread over several, each holding a part.
The *direction share* of factor k is the largest share any linear combination w^T c of the units
reaches,

    max_w Var(E[w^T c | f_k]) / Var(w^T c) = the largest eigenvalue of S^-1 B_k,

S the units' covariance and B_k the covariance of their means over the values of factor k (Fisher's
first discriminant; Rao's first canonical correlation squared). It is at least each unit's share of
k, and 1 when the factor is a linear function of the units however it is spread. Against the best
unit's share it tells a factor the code holds but spreads (direction share high) from one the code
does not hold (both low). Fitted on the code table itself, it is meaningful where the images far
outnumber the units (729 against 10 in the demo).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from disdis.metrics.inputs import check_code_table


def unit_factor_shares(code_table: np.ndarray, factor_sizes: Sequence[int]) -> np.ndarray:
    """(units, factors) eta^2 of each unit for each factor (module docstring); 0 for a constant unit."""
    grid, total = _grid(code_table, factor_sizes)
    return np.stack([_cell_share(grid, total, {k}) for k in range(grid.ndim - 1)], axis=1)


def unit_pair_shares(code_table: np.ndarray, factor_sizes: Sequence[int]) -> np.ndarray:
    """(units, factors, factors) eta^2 of each unit for each pair of factors (module docstring);
    the diagonal holds the single factors' shares, 0 for a constant unit."""
    grid, total = _grid(code_table, factor_sizes)
    factors = grid.ndim - 1
    shares = np.zeros((grid.shape[-1], factors, factors))
    for k in range(factors):
        for m in range(k, factors):
            shares[:, k, m] = shares[:, m, k] = _cell_share(grid, total, {k, m})
    return shares


def direction_shares(code_table: np.ndarray, factor_sizes: Sequence[int]) -> np.ndarray:
    """(factors,) the largest share of each factor over every linear combination of the units (module
    docstring); 0 for a constant code. Directions of no variance (linearly dependent units) are left out."""
    grid, _ = _grid(code_table, factor_sizes)
    table = grid.reshape(-1, grid.shape[-1])
    centred = table - table.mean(axis=0)
    variance, axes = np.linalg.eigh(centred.T @ centred / len(centred))
    kept = variance > 1e-12 * variance.max(initial=0.0)
    if not kept.any():
        return np.zeros(grid.ndim - 1)
    # whitened, every direction has variance 1: the share of w is w^T B_k w for a unit vector w
    white = (centred @ (axes[:, kept] / np.sqrt(variance[kept]))).reshape(*grid.shape[:-1], int(kept.sum()))
    shares = []
    for k in range(grid.ndim - 1):
        means = white.mean(axis=tuple(a for a in range(grid.ndim - 1) if a != k))  # (values of k, directions)
        shares.append(np.linalg.eigvalsh(means.T @ means / len(means))[-1])
    return np.clip(shares, 0.0, 1.0)


def _grid(code_table: np.ndarray, factor_sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The code table as a grid (*factor_sizes, units) and each unit's total variance."""
    table, sizes = check_code_table(code_table, factor_sizes)
    return table.reshape(*sizes.tolist(), table.shape[1]), table.var(axis=0)


def _cell_share(grid: np.ndarray, total: np.ndarray, kept: set[int]) -> np.ndarray:
    """(units,) the variance of the unit's means over the cells of the ``kept`` factors (each cell
    holds as many images) over its total variance; 0 for a constant unit."""
    means = grid.mean(axis=tuple(a for a in range(grid.ndim - 1) if a not in kept))
    cells = means.reshape(-1, grid.shape[-1])
    return np.divide(cells.var(axis=0), total, out=np.zeros_like(total), where=total > 0)
