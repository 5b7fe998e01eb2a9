"""Sampling from a factor grid in disentanglement_lib's random-number order.

A representation here is a *code table*: one row per image of a factor grid in
canonical order (row-major, last factor fastest), so "encode the observation
with factors f" is ``code_table[index_of(f)]``. disentanglement_lib samples a
batch of factors by drawing each factor in turn,
``random_state.randint(size_k, size=n)`` for k = 0..K-1; its Shapes3D and
dSprites ground-truth data draw nothing more when mapping factors to
observations (all their factors are latent). Every function here makes exactly
those calls in exactly that order, so the same RandomState yields the same
samples as disentanglement_lib.
"""

from __future__ import annotations

import numpy as np

from disdis.factor_grid import grid_strides, index_of, sample_factors  # noqa: F401 (re-exported)


def sample_factor_batches(factor_sizes: np.ndarray, num: int, random_state: np.random.RandomState,
                          batch_size: int) -> np.ndarray:
    """(num, K) factors drawn in batches of ``batch_size`` (the last one shorter), as
    disentanglement_lib's ``generate_batch_factor_code`` draws them."""
    batches = [sample_factors(factor_sizes, min(batch_size, num - start), random_state)
               for start in range(0, num, batch_size)]
    return np.concatenate(batches) if batches else np.empty((0, len(factor_sizes)), dtype=np.int64)


def sample_codes(code_table: np.ndarray, factor_sizes, num: int, random_state,
                 batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``num`` random (codes (num, D), factors (num, K)) pairs from a code table, with
    disentanglement_lib's batch boundaries (batch 16 for DCI, MIG, SAP, modularity)."""
    from disdis.metrics.inputs import check_code_table, check_random_state
    table, sizes = check_code_table(code_table, factor_sizes)
    factors = sample_factor_batches(sizes, num, check_random_state(random_state), batch_size)
    return table[index_of(factors, sizes)], factors
