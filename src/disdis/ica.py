"""Unmixing scalar units by independent component analysis: Givens rotations that maximise kurtosis.

Two independent non-Gaussian factors carried by two units mixed by a rotation keep a correlation of
0, so decorrelation cannot tell the mix from the unmixed pair; their fourth moments can. A sum of
independent variables is closer to Gaussian than either (the central limit theorem), so over
rotations of a pair the summed absolute excess kurtosis

    K(y) = |E y_1^4 - 3| + |E y_2^4 - 3|,   y standardised,

is largest where each rotated unit is one factor (Comon 1994, section 3; a factor grid's uniform
factors have excess kurtosis -1.5 at 3 values and -1.2 in the limit). :func:`kurtosis_rotation`
turns pairs of active units, each to the angle, on a grid over [0, 90) degrees (K is unchanged by a
quarter turn, which only swaps the pair), that maximises K, when that raises K by more than ``tol``,
in one of two orders:

- ``cyclic``: Jacobi sweeps over the pairs in a fixed order, until a sweep turns none;
- ``largest_gain``: always the pair whose turn raises K the most, until none raises it by ``tol``.

A cyclic sweep can lock in small early turns: in a demo seed's units it first turned two units of
orientation into one holding two hues mixed at 45 degrees (by 10 and 48 degrees, gains of 0.035 and
0.043), after which the hues' own turn (a gain of 1.33) was gone: K 9.97 -> 10.10 with the hues still
mixed, against 11.35 and each hue in a unit of its own by the largest gain first (docs/demo-study.md,
session of 2026-12-07, seventh). The units are standardised first and each turned pair again (the units need
not be uncorrelated), so the map it returns is a general linear one, ``y = A u + c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Unmixing:
    """``y = matrix @ u + offset``: the unmixed units; what the turns did."""

    matrix: np.ndarray      # (N, N)
    offset: np.ndarray      # (N,)
    active: np.ndarray      # (N,) bool: the units standardised and turned; the others pass through unchanged
    rotations: int          # pairs turned
    kurtosis_before: float  # sum over the active units of |excess kurtosis|
    kurtosis_after: float


def excess_kurtosis(x: np.ndarray) -> np.ndarray:
    """E z^4 - 3 of each column of ``x`` standardised (0 for a Gaussian), along axis 0."""
    z = (x - x.mean(0)) / x.std(0)
    return (z ** 4).mean(0) - 3.0


def kurtosis_rotation(units: np.ndarray, min_spread: float = 0.1, tol: float = 0.02, order: str = "cyclic",
                      max_sweeps: int = 10, step_degrees: float = 1.0) -> Unmixing:
    """The linear map that standardises the active units (samples x N: those whose standard deviation
    is at least ``min_spread`` times the largest) and turns them, pair by pair in the ``order`` given
    (module docstring), to maximise their summed absolute excess kurtosis; the others pass through
    unchanged. At most ``max_sweeps`` sweeps, or as many turns as that many sweeps hold.

    Units that do not vary at all are a ValueError."""
    if order not in ("cyclic", "largest_gain"):
        raise ValueError(f"order: expected cyclic or largest_gain, got {order!r}")
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
    x = (u - u.mean(0)) @ a.T
    angles = np.deg2rad(np.arange(0.0, 90.0, step_degrees))
    before = float(np.abs(excess_kurtosis(x)).sum())  # the widest unit is always active
    pairs = [(i, j) for i in range(len(index)) for j in range(i + 1, len(index))]
    rotations = sweeps = 0
    if order == "cyclic":
        turned = True
        while turned and sweeps < max_sweeps:
            sweeps += 1
            turned = False
            for i, j in pairs:
                turn = _best_turn(x, i, j, angles)
                if turn.gain > tol:
                    _apply(turn, x, a, i, j)
                    rotations += 1
                    turned = True
    else:
        turns = {pair: _best_turn(x, *pair, angles) for pair in pairs}
        while turns and rotations < max_sweeps * len(pairs):
            (i, j), turn = max(turns.items(), key=lambda item: item[1].gain)
            if turn.gain <= tol:
                break
            _apply(turn, x, a, i, j)
            rotations += 1
            for pair in turns:  # only the pairs with a turned unit change
                if i in pair or j in pair:
                    turns[pair] = _best_turn(x, *pair, angles)
    matrix = np.eye(n)
    matrix[index] = a
    offset = np.zeros(n)
    offset[index] = -a @ u.mean(0)
    after = float(np.abs(excess_kurtosis(x)).sum())
    return Unmixing(matrix, offset, active, rotations, before, after)


@dataclass
class _Turn:
    gain: float             # how much the turn raises the pair's K
    angle: float            # radians
    first: np.ndarray       # the pair's units after the turn
    second: np.ndarray


def _best_turn(x: np.ndarray, i: int, j: int, angles: np.ndarray) -> _Turn:
    """The turn of units i and j of ``x`` (centred) by the one of ``angles`` that maximises their K.

    K at every angle from the pair's moments, one pass over the samples: for y = c p + s q,
    E y^2 = c^2 E p^2 + 2 c s E pq + s^2 E q^2 and E y^4 = sum_k C(4, k) c^(4-k) s^k E p^(4-k) q^k
    (and the second unit, -s p + c q, alike)."""
    p, q = x[:, i], x[:, j]
    pp, pq, qq = p * p, p * q, q * q
    second = np.array([pp.mean(), pq.mean(), qq.mean()])
    fourth = np.array([(pp * pp).mean(), (pp * pq).mean(), (pp * qq).mean(), (pq * qq).mean(), (qq * qq).mean()])
    cos, sin = np.cos(angles), np.sin(angles)
    gain = _kurtosis_turned(cos, sin, second, fourth) + _kurtosis_turned(-sin, cos, second, fourth)
    best = int(np.argmax(gain))
    # the turned units computed as before the moments were used, so that runs repeat bit for bit
    return _Turn(float(gain[best] - gain[0]), float(angles[best]), cos[best] * p + sin[best] * q,
                 -sin[best] * p + cos[best] * q)


def _kurtosis_turned(c: np.ndarray, s: np.ndarray, second: np.ndarray, fourth: np.ndarray) -> np.ndarray:
    """|excess kurtosis| of c p + s q at each (c, s), from E p^2, E pq, E q^2 and E p^(4-k) q^k, k = 0..4."""
    m2 = c * c * second[0] + 2 * c * s * second[1] + s * s * second[2]
    m4 = (c ** 4 * fourth[0] + 4 * c ** 3 * s * fourth[1] + 6 * c * c * s * s * fourth[2]
          + 4 * c * s ** 3 * fourth[3] + s ** 4 * fourth[4])
    return np.abs(m4 / (m2 * m2) - 3.0)


def _apply(turn: _Turn, x: np.ndarray, a: np.ndarray, i: int, j: int) -> None:
    """Turns rows i and j of the map ``a`` and units i and j of ``x`` in place, each standardised again."""
    c, s = np.cos(turn.angle), np.sin(turn.angle)
    a[i], a[j] = c * a[i] + s * a[j], -s * a[i] + c * a[j]
    for k, turned_unit in ((i, turn.first), (j, turn.second)):
        spread_k = turned_unit.std()  # turned correlated units change their spread: standardise again
        a[k] /= spread_k
        x[:, k] = turned_unit / spread_k


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
    # cyclic: on four demo seeds' codes at the autoencoder's hold the largest gain first left one
    # seed's scale spread over components (its best share 0.38 against 0.67; docs/demo-study.md,
    # session of 2026-12-07, seventh)
    unmixing = kurtosis_rotation((u - mean) @ axes.T, min_spread, order="cyclic")
    matrix = unmixing.matrix @ axes
    return matrix, unmixing.offset - matrix @ mean
