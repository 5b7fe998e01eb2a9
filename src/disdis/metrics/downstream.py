"""Downstream sample efficiency: how well few labelled codes predict the factors.

For each training size (100, 1000, 10000) one gradient-boosted tree classifier
per factor is trained on that many random codes and tested on ``num_test``
fresh ones, with disentanglement_lib's ``downstream_task`` sampling order (per
size: the training codes, then the test codes, batches of 16). Reported: the
mean train/test accuracy over factors per size and the efficiency
``test accuracy(n) / test accuracy(largest size)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from disdis.metrics.dci import importance_matrix
from disdis.metrics.inputs import check_code_table, check_random_state
from disdis.metrics.sampling import sample_codes


def downstream_efficiency(code_table: np.ndarray, factor_sizes, random_state,
                          train_sizes: Sequence[int] = (100, 1000, 10000), num_test: int = 5000,
                          backend: str = "exact", n_jobs: int = 1, tree_seed: int | None = None) -> dict[str, float]:
    """Accuracies per training size and their ratio to the largest size's; ``tree_seed`` seeds the
    trees' tie-breaking (unseeded, as in disentanglement_lib, when None)."""
    table, sizes = check_code_table(code_table, factor_sizes)
    rng = check_random_state(random_state)
    scores: dict[str, float] = {}
    for size in train_sizes:
        codes_train, factors_train = sample_codes(table, sizes, size, rng)
        codes_test, factors_test = sample_codes(table, sizes, num_test, rng)
        _, train_acc, test_acc = importance_matrix(codes_train, factors_train, codes_test,
                                                   factors_test, tree_seed, backend, n_jobs)
        scores[f"{size}:mean_train_accuracy"] = train_acc
        scores[f"{size}:mean_test_accuracy"] = test_acc
    reference = scores[f"{max(train_sizes)}:mean_test_accuracy"]
    for size in train_sizes:
        if size != max(train_sizes):
            scores[f"efficiency_{size}"] = scores[f"{size}:mean_test_accuracy"] / reference
    return scores
