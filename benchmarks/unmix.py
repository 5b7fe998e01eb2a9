"""Time the units' unmixing by kurtosis (disdis.ica.kurtosis_rotation) and check what it recovers.

Synthetic units: independent uniform factors of 3 to 8 levels (one per unit), mixed by a random
orthogonal matrix, plus Gaussian noise at 5 % of a factor's spread. For each size and order the
table gives the turns, the time, the summed |excess kurtosis| after, and the recovery (the smallest,
over the factors, of the largest |correlation| of a factor with an unmixed unit; 1 = each factor
found). With --direct it also times the kurtosis computed on the turned samples at every angle (how
it was computed before the pair's moments were used), as a ratio to the default in the same run.

    .venv/bin/python benchmarks/unmix.py                       # 729 x 10 (the demo) and 10,000 x 20
    .venv/bin/python benchmarks/unmix.py --direct --sizes 729x10
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import numpy as np

from disdis import ica


def mixed_units(samples: int, units: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(units, factors): factors (samples x N) of 3..8 levels each, mixed by a random rotation, noisy."""
    rng = np.random.default_rng(seed)
    factors = np.column_stack([rng.integers(0, 3 + k % 6, samples) for k in range(units)]).astype(float)
    factors = (factors - factors.mean(0)) / factors.std(0)
    rotation = np.linalg.qr(rng.standard_normal((units, units)))[0]
    return factors @ rotation.T + 0.05 * rng.standard_normal((samples, units)), factors


def direct_best_turn(x, i, j, angles):
    """The turn's K from the turned samples at every angle (the computation before the moments)."""
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    first, second = cos * x[:, i] + sin * x[:, j], -sin * x[:, i] + cos * x[:, j]
    gain = np.abs(ica.excess_kurtosis(first.T)) + np.abs(ica.excess_kurtosis(second.T))
    best = int(np.argmax(gain))
    return ica._Turn(float(gain[best] - gain[0]), float(angles[best]), first[best], second[best])


def recovery(units: np.ndarray, factors: np.ndarray, fit: ica.Unmixing) -> float:
    y = units @ fit.matrix.T + fit.offset
    n = factors.shape[1]
    return float(np.abs(np.corrcoef(factors.T, y.T)[:n, n:]).max(1).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="729x10,10000x20", help="SAMPLESxUNITS, comma-separated")
    parser.add_argument("--direct", action="store_true", help="also time K computed at every angle from the samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'size':>10} {'order':>13} {'K from':>8} {'turns':>6} {'seconds':>8} {'ratio':>6} {'K after':>8} {'recovery':>9}")
    for size in args.sizes.split(","):
        samples, n = (int(v) for v in size.split("x"))
        units, factors = mixed_units(samples, n, args.seed)
        for order in ("cyclic", "largest_gain"):
            variants = [("moments", None)] + ([("samples", direct_best_turn)] if args.direct else [])
            base = None
            for name, patch in variants:
                with mock.patch.object(ica, "_best_turn", patch) if patch else contextlib.nullcontext():
                    start = time.perf_counter()
                    fit = ica.kurtosis_rotation(units, order=order)
                    seconds = time.perf_counter() - start
                base = base or seconds
                print(f"{size:>10} {order:>13} {name:>8} {fit.rotations:>6} {seconds:>8.2f} {seconds / base:>6.1f} "
                      f"{fit.kurtosis_after:>8.2f} {recovery(units, factors, fit):>9.3f}")


if __name__ == "__main__":
    main()
