"""Reducing a representation of vectors per unit to one number per unit (docs/method.md,
"Evaluation"): each unit's tokens are projected on their first principal
direction, fitted over the whole set."""

from __future__ import annotations

import numpy as np

from disdis.errors import DisdisError

_CHUNK = 65536


def reduce_units_by_pca(tokens: np.ndarray) -> np.ndarray:
    """(N, U, D) tokens -> (N, U) codes: per unit u, ``(t_u - mean_u) . v_u`` with v_u the
    leading eigenvector of the unit's covariance over all N samples.

    Sign convention (deterministic): the entry of v_u with the largest magnitude is
    positive (the first such entry on ties). D = 1 returns the centred values
    with that same convention (v = [1]). Computed in float64, in chunks of samples."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 3 or tokens.shape[0] < 2:
        raise DisdisError(f"tokens: expected (samples >= 2, units, dims), got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.number):
        raise DisdisError(f"tokens: expected numbers, got dtype {tokens.dtype}")
    n, units, dims = tokens.shape
    mean = np.zeros((units, dims))
    for start in range(0, n, _CHUNK):
        block = tokens[start:start + _CHUNK].astype(np.float64)
        if not np.all(np.isfinite(block)):
            raise DisdisError("tokens: contain NaN or infinite values")
        mean += block.sum(axis=0)
    mean /= n
    scatter = np.zeros((units, dims, dims))
    for start in range(0, n, _CHUNK):
        centred = tokens[start:start + _CHUNK].astype(np.float64) - mean
        scatter += np.einsum("nud,nue->ude", centred, centred)
    _, vectors = np.linalg.eigh(scatter)           # ascending eigenvalues
    direction = vectors[:, :, -1]                   # (U, D) leading eigenvector
    biggest = np.argmax(np.abs(direction), axis=1)
    direction *= np.sign(direction[np.arange(units), biggest])[:, None]
    codes = np.empty((n, units))
    for start in range(0, n, _CHUNK):
        centred = tokens[start:start + _CHUNK].astype(np.float64) - mean
        codes[start:start + _CHUNK] = np.einsum("nud,ud->nu", centred, direction)
    return codes
