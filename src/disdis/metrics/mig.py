"""Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement
in VAEs"), as computed by disentanglement_lib:

    MIG = 1/K sum_k (I(c_(1); y_k) - I(c_(2); y_k)) / H(y_k)

with c_(1), c_(2) the codes of highest and second-highest mutual information with
factor k, each code discretised into ``num_bins`` histogram bins over its range.
"""

from __future__ import annotations

import numpy as np

from disdis.metrics.information import entropy, histogram_discretize, mutual_information
from disdis.metrics.inputs import check_codes, check_factors


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """MIG of codes (N, D >= 2) for integer factors (N, K)."""
    codes = check_codes(codes, min_dims=2)
    factors = check_factors(factors, len(codes))
    info = mutual_information(histogram_discretize(codes, num_bins), factors)
    top_two = -np.sort(-info, axis=0)[:2]
    return float(np.mean((top_two[0] - top_two[1]) / entropy(factors)))
