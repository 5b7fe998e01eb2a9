"""TAD, the total AUROC difference (Yeats et al. 2022, NashAE), for binary attributes
such as CelebA's.

For attribute a and code d, ``auroc[a, d] = max(AUC, 1 - AUC)`` of the code as a
score for the attribute (either sign). Per attribute the gap between the best
and second-best code counts when (i) the best AUROC is >= 0.75 and (ii) the
attribute is not largely explained by another attribute: the largest mutual
information with another attribute, divided by the attribute's entropy (the
proportional entropy reduction), is <= 0.2.

    TAD = sum over counted attributes of (best - second best AUROC)

``num_attributes_captured`` is the number of counted attributes. A constant
attribute (no AUROC defined, zero entropy) is never counted.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from disdis.errors import DisdisError
from disdis.metrics.inputs import check_codes

AUROC_THRESHOLD = 0.75
ENTROPY_REDUCTION_THRESHOLD = 0.2


def tad(codes: np.ndarray, attributes: np.ndarray) -> dict[str, float]:
    """TAD of codes (N, D >= 2) for binary attributes (N, A) with values in {0, 1}
    (CelebA's -1/1 labels are accepted and mapped to 0/1)."""
    codes = check_codes(codes, min_dims=2)
    attrs = _binary_attributes(attributes, len(codes))
    auroc = aurocs(codes, attrs)
    ordered = -np.sort(-auroc, axis=1)
    gap = ordered[:, 0] - ordered[:, 1]
    counted = (ordered[:, 0] >= AUROC_THRESHOLD) & (entropy_reduction(attrs) <= ENTROPY_REDUCTION_THRESHOLD)
    return {"tad": float(gap[counted].sum()), "num_attributes_captured": int(counted.sum())}


def aurocs(codes: np.ndarray, attrs: np.ndarray) -> np.ndarray:
    """(A, D) sign-free AUROC: the Mann-Whitney statistic with tied ranks averaged,
    ``AUC = (sum of positive ranks - P (P + 1) / 2) / (P N)``; NaN for constant attributes."""
    ranks = np.apply_along_axis(rankdata, 0, codes)  # (N, D), average ranks for ties
    positives = attrs.sum(axis=0).astype(np.float64)
    negatives = len(attrs) - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (attrs.T.astype(np.float64) @ ranks - (positives * (positives + 1) / 2)[:, None]) \
            / (positives * negatives)[:, None]
    return np.maximum(auc, 1.0 - auc)


def entropy_reduction(attrs: np.ndarray) -> np.ndarray:
    """(A,) max over other attributes b of I(a; b) / H(a); NaN when H(a) = 0."""
    n = len(attrs)
    a = attrs.astype(np.float64)
    joint11 = a.T @ a / n
    p = a.mean(axis=0)
    joint = {(1, 1): joint11, (1, 0): p[:, None] - joint11, (0, 1): p[None, :] - joint11}
    joint[(0, 0)] = 1.0 - joint[(1, 1)] - joint[(1, 0)] - joint[(0, 1)]
    marginal = {1: p, 0: 1.0 - p}
    info = np.zeros((attrs.shape[1],) * 2)
    for (i, j), pij in joint.items():
        outer = marginal[i][:, None] * marginal[j][None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            term = pij * np.log(pij / outer)
        info += np.where((pij > 0) & (outer > 0), term, 0.0)
    own = np.diag(info).copy()
    np.fill_diagonal(info, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        return info.max(axis=1) / own if attrs.shape[1] > 1 else np.zeros(1)


def _binary_attributes(attributes: np.ndarray, num_samples: int) -> np.ndarray:
    attrs = np.asarray(attributes)
    if attrs.ndim == 1:
        attrs = attrs[:, None]
    if attrs.ndim != 2 or attrs.shape[0] != num_samples:
        raise DisdisError(f"attributes: expected ({num_samples}, A), got shape {attrs.shape}")
    values = set(np.unique(attrs).tolist())
    if values <= {0, 1}:
        return attrs.astype(np.int64)
    if values <= {-1, 1}:
        return (attrs > 0).astype(np.int64)
    raise DisdisError(f"attributes: expected binary values 0/1 or -1/1, got {sorted(values)[:5]}")
