"""Unmixing scalar units by independent component analysis: Givens rotations that maximise kurtosis.

Two independent non-Gaussian factors carried by two units mixed by a rotation keep a correlation of
0, so decorrelation cannot tell the mix from the unmixed pair; their fourth moments can. A sum of
independent variables is closer to Gaussian than either (the central limit theorem), so over
rotations of a pair the summed absolute excess kurtosis

    K(y) = |E y_1^4 - 3| + |E y_2^4 - 3|,   y standardised,

is largest where each rotated unit is one factor (Comon 1994, section 3; a factor grid's uniform
factors have excess kurtosis -1.5 at 3 values and -1.2 in the limit). :func:`kurtosis_rotation`
runs Jacobi sweeps over the pairs of active units: each pair is turned to the angle, on a grid over
[0, 90) degrees (K is unchanged by a quarter turn, which only swaps the pair), that maximises K,
when that raises K by more than ``tol``; the sweeps stop when one turns no pair. The units are
standardised first and each turned pair again (the units need not be uncorrelated), so the map it
returns is a general linear one, ``y = A u + c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Unmixing:
    """``y = matrix @ u + offset``: the unmixed units; what the sweeps did."""

    matrix: np.ndarray      # (N, N)
    offset: np.ndarray      # (N,)
    active: np.ndarray      # (N,) bool: the units standardised and swept; the others pass through unchanged
    sweeps: int             # Jacobi sweeps run (the last one turned no pair unless max_sweeps was reached)
    rotations: int          # pairs turned, over all sweeps
    kurtosis_before: float  # sum over the active units of |excess kurtosis|
    kurtosis_after: float


def excess_kurtosis(x: np.ndarray) -> np.ndarray:
    """E z^4 - 3 of each column of ``x`` standardised (0 for a Gaussian), along axis 0."""
    z = (x - x.mean(0)) / x.std(0)
    return (z ** 4).mean(0) - 3.0


def kurtosis_rotation(units: np.ndarray, min_spread: float = 0.1, tol: float = 0.02,
                      max_sweeps: int = 10, step_degrees: float = 1.0) -> Unmixing:
    """The linear map that standardises the active units (samples x N: those whose standard deviation
    is at least ``min_spread`` times the largest) and turns them, pair by pair, to maximise their
    summed absolute excess kurtosis (module docstring); the others pass through unchanged.

    Units that do not vary at all are a ValueError."""
    u = np.asarray(units, dtype=np.float64)
    n = u.shape[1]
    spread = u.std(0)
    if not spread.max(initial=0.0) > 0:
        raise ValueError("the units do not vary: nothing to unmix")
    active = spread >= min_spread * spread.max()
    index = np.flatnonzero(active)
    # rows of ``a``: the active units as combinations of the centred units, each of unit variance
    a = np.zeros((len(index), n))
    a[np.arange(len(index)), index] = 1.0 / spread[index]
    centred = u - u.mean(0)
    x = centred @ a.T
    angles = np.deg2rad(np.arange(0.0, 90.0, step_degrees))
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    before = float(np.abs(excess_kurtosis(x)).sum())  # the widest unit is always active
    sweeps = rotations = 0
    turned = True
    while turned and sweeps < max_sweeps:
        sweeps += 1
        turned = False
        for i in range(len(index)):
            for j in range(i + 1, len(index)):
                first, second = cos * x[:, i] + sin * x[:, j], -sin * x[:, i] + cos * x[:, j]  # (angles, samples)
                gain = np.abs(excess_kurtosis(first.T)) + np.abs(excess_kurtosis(second.T))
                best = int(np.argmax(gain))
                if gain[best] - gain[0] <= tol:
                    continue
                c, s = np.cos(angles[best]), np.sin(angles[best])
                a[i], a[j] = c * a[i] + s * a[j], -s * a[i] + c * a[j]
                for k, turned_unit in ((i, first[best]), (j, second[best])):
                    spread_k = turned_unit.std()  # turned correlated units change their spread: standardise again
                    a[k] /= spread_k
                    x[:, k] = turned_unit / spread_k
                rotations += 1
                turned = True
    matrix = np.eye(n)
    matrix[index] = a
    offset = np.zeros(n)
    offset[index] = -a @ u.mean(0)
    after = float(np.abs(excess_kurtosis(x)).sum())
    return Unmixing(matrix, offset, active, sweeps, rotations, before, after)


def gathered_components(units: np.ndarray, count: int, min_spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)``, (count, N) and (count,): ``y = matrix @ u + offset`` are the ``count``
    leading principal components of the units (samples x N), standardised and turned to the largest
    kurtosis (:func:`kurtosis_rotation`; a component whose spread is under ``min_spread`` of the
    first's stays as it is).

    A code that carries a few factors redundantly, each spread over several units, lies in a subspace
    of few dimensions: its leading components span the factors, and the rotation turns each of them
    to one factor where the factors are independent and non-Gaussian."""
    u = np.asarray(units, dtype=np.float64)
    if not 1 <= count <= u.shape[1]:
        raise ValueError(f"count: expected 1 to {u.shape[1]} components, got {count}")
    mean = u.mean(0)
    axes = np.linalg.svd(u - mean, full_matrices=False)[2][:count]  # (count, N), orthonormal rows
    unmixing = kurtosis_rotation((u - mean) @ axes.T, min_spread)
    matrix = unmixing.matrix @ axes
    return matrix, unmixing.offset - matrix @ mean
