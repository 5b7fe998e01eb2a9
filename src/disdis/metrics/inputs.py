"""Checks that turn bad metric inputs into one-line :class:`DisdisError` messages
instead of failures deep inside numpy or scikit-learn."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from disdis.errors import DisdisError


def check_codes(codes: np.ndarray, name: str = "codes", min_dims: int = 1) -> np.ndarray:
    """A finite float64 (N, D) array with N >= 2 and D >= ``min_dims``."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DisdisError(f"{name}: expected a 2-D array (samples, dims), got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.number):
        raise DisdisError(f"{name}: expected numbers, got dtype {codes.dtype}")
    codes = codes.astype(np.float64, copy=False)
    if codes.shape[0] < 2 or codes.shape[1] < min_dims:
        raise DisdisError(f"{name}: expected at least 2 samples and {min_dims} dims, "
                          f"got shape {codes.shape}")
    if not np.all(np.isfinite(codes)):
        bad = int(np.count_nonzero(~np.isfinite(codes)))
        raise DisdisError(f"{name}: {bad} values are NaN or infinite; codes must be finite")
    return codes


def check_factors(factors: np.ndarray, num_samples: int, name: str = "factors",
                  allow_constant: bool = False) -> np.ndarray:
    """An integer (N, K) array matching ``num_samples`` rows; by default every factor
    must take at least two values (a constant factor has no information to measure)."""
    factors = np.asarray(factors)
    if factors.ndim == 1:
        factors = factors[:, None]
    if factors.ndim != 2:
        raise DisdisError(f"{name}: expected a 2-D array (samples, factors), got shape {factors.shape}")
    if factors.shape[0] != num_samples:
        raise DisdisError(f"{name}: has {factors.shape[0]} rows but the codes have {num_samples}")
    if factors.shape[1] == 0:
        raise DisdisError(f"{name}: no factors")
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.issubdtype(factors.dtype, np.number) or not np.all(np.isfinite(factors)) \
                or np.any(factors != np.round(factors)):
            raise DisdisError(f"{name}: expected integer factor classes, got dtype {factors.dtype}")
        factors = factors.astype(np.int64)
    if not allow_constant:
        for k in range(factors.shape[1]):
            if np.all(factors[:, k] == factors[0, k]):
                raise DisdisError(f"{name}: factor {k} takes a single value in these "
                                  f"{num_samples} samples; it carries no information to score")
    return factors


def check_factor_sizes(factor_sizes: Sequence[int]) -> np.ndarray:
    """Positive factor grid sizes, each at least 2."""
    sizes = np.asarray(factor_sizes)
    if sizes.ndim != 1 or len(sizes) == 0 or not np.issubdtype(sizes.dtype, np.integer):
        raise DisdisError(f"factor_sizes: expected a list of integers, got {factor_sizes!r}")
    if np.any(sizes < 2):
        raise DisdisError(f"factor_sizes: every factor needs at least 2 values, got {sizes.tolist()}; "
                          "drop constant factors first")
    return sizes.astype(np.int64)


def check_code_table(code_table: np.ndarray, factor_sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A finite float64 code table with one row per point of the factor grid."""
    sizes = check_factor_sizes(factor_sizes)
    table = check_codes(code_table, "code table")
    if table.shape[0] != int(np.prod(sizes)):
        raise DisdisError(f"code table: has {table.shape[0]} rows but the factor grid "
                          f"{sizes.tolist()} has {int(np.prod(sizes))} points (one row per image, "
                          "canonical order)")
    return table, sizes


def check_random_state(random_state: np.random.RandomState | int | None) -> np.random.RandomState:
    """disentanglement_lib's metrics draw from a legacy ``numpy.random.RandomState``."""
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.RandomState(random_state)
    raise DisdisError(f"random_state: expected a numpy RandomState or an int, got {type(random_state).__name__}")


def check_train_test(codes_train, factors_train, codes_test, factors_test, min_dims: int = 1):
    """Train and test codes/factors with matching columns; test factors may be constant."""
    codes_train = check_codes(codes_train, "codes_train", min_dims)
    factors_train = check_factors(factors_train, len(codes_train), "factors_train")
    codes_test = check_codes(codes_test, "codes_test", min_dims)
    factors_test = check_factors(factors_test, len(codes_test), "factors_test", allow_constant=True)
    if codes_test.shape[1] != codes_train.shape[1] or factors_test.shape[1] != factors_train.shape[1]:
        raise DisdisError(f"train and test columns differ: codes {codes_train.shape} vs "
                          f"{codes_test.shape}, factors {factors_train.shape} vs {factors_test.shape}")
    return codes_train, factors_train, codes_test, factors_test
