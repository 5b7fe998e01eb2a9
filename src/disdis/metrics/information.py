"""Discretisation and discrete mutual information (MIG, modularity).

disentanglement_lib discretises each code with a ``num_bins``-bin histogram over
the code's own range (``np.digitize`` on the histogram's left edges, so classes
1..num_bins) and computes ``sklearn.metrics.mutual_info_score`` for every (code,
factor) pair. Here the joint counts of all pairs come from one ``bincount``
per code; the mutual information in nats is

    I(c; y) = sum_ab p(a, b) log(p(a, b) / (p(a) p(b)))

clipped at 0 like scikit-learn's, so the values equal disentanglement_lib's to
rounding.
"""

from __future__ import annotations

import numpy as np


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """(N, D) integer classes 1..num_bins: each column binned over its own range."""
    binned = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], num_bins)
        binned[:, d] = np.digitize(codes[:, d], edges[:-1])
    return binned


def _dense_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    values, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(-1), len(values)


def mutual_information(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(D, K) mutual information in nats between discrete codes (N, D) and factors (N, K)."""
    n = discrete_codes.shape[0]
    factor_labels = [_dense_labels(factors[:, k]) for k in range(factors.shape[1])]
    info = np.zeros((discrete_codes.shape[1], factors.shape[1]))
    for d in range(discrete_codes.shape[1]):
        code, num_code = _dense_labels(discrete_codes[:, d])
        for k, (factor, num_factor) in enumerate(factor_labels):
            info[d, k] = _mutual_info_from_counts(
                np.bincount(code * num_factor + factor, minlength=num_code * num_factor)
                .reshape(num_code, num_factor), n)
    return info


def _mutual_info_from_counts(joint: np.ndarray, n: int) -> float:
    if joint.shape[0] == 1 or joint.shape[1] == 1:
        return 0.0
    row = joint.sum(axis=1, keepdims=True)
    col = joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    counts = joint[nonzero]
    outer = (row * col)[nonzero].astype(np.float64)
    terms = counts / n * (np.log(counts) + np.log(n) - np.log(outer))
    return max(float(terms.sum()), 0.0)


def entropy(factors: np.ndarray) -> np.ndarray:
    """(K,) entropy in nats of each factor column (= I(y; y))."""
    h = np.zeros(factors.shape[1])
    for k in range(factors.shape[1]):
        counts = np.bincount(_dense_labels(factors[:, k])[0])
        p = counts / counts.sum()
        h[k] = max(float(-(p * np.log(p)).sum()), 0.0) if len(counts) > 1 else 0.0
    return h
