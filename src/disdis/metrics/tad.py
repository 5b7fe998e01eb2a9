"""TAD, the total AUROC difference (Yeats et al. 2022, NashAE), for binary attributes
such as CelebA's, computed as the published code computes it (the NashAE-derived code that
EncDiff and dis-dis ship, which produced the seed paper's Table 2).

AUROC of code d for attribute a (``auroc="threshold"``, the default): when the code's range
(max - min over the samples) is <= 0.2 it is 0.5. Otherwise the code is thresholded at
lo + t (hi - lo) for t = 0, step, 2 step, ..., 1 (11 thresholds at the published step 0.1);
for each direction (positive when z >= threshold, and when z < threshold) the false- and
true-positive rates at the thresholds are sorted, each column on its own, as the published
code does, and the area is the right Riemann sum sum_{k >= 1} TPR_k (FPR_k - FPR_{k-1}); the
AUROC is the larger of the two directions' areas. ``auroc="exact"`` is the exact rank AUROC
instead, max(AUC, 1 - AUC) with the Mann-Whitney statistic (ties averaged): it never rounds a
code to 11 levels, so its numbers are not comparable with published TADs (docs/method.md).

Per attribute the gap between the best and second-best code counts when (i) the best AUROC is
>= 0.75 and (ii) the attribute is not largely explained by another attribute: the largest
mutual information with another attribute, divided by the attribute's entropy (the
proportional entropy reduction), is <= 0.2.

    TAD = sum over counted attributes of (best - second best AUROC)

``num_attributes_captured`` is the number of counted attributes. A constant attribute (no
AUROC defined, zero entropy) is never counted.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from disdis.errors import DisdisError
from disdis.metrics.inputs import check_codes

AUROC_THRESHOLD = 0.75
ENTROPY_REDUCTION_THRESHOLD = 0.2
MIN_RANGE = 0.2  # the published code scores codes of a smaller range as chance (0.5)


def tad(codes: np.ndarray, attributes: np.ndarray, *, auroc: str = "threshold", step: float = 0.1) -> dict[str, float]:
    """TAD of codes (N, D >= 2) for binary attributes (N, A) with values in {0, 1}
    (CelebA's -1/1 labels are accepted and mapped to 0/1); ``auroc``: "threshold" (published,
    with thresholds every ``step`` of each code's range) or "exact" (rank AUROC)."""
    codes = check_codes(codes, min_dims=2)
    attrs = _binary_attributes(attributes, len(codes))
    if auroc == "threshold":
        if not 0 < step <= 1:
            raise DisdisError(f"tad: step must be in (0, 1], got {step}")
        auroc = threshold_aurocs(codes, attrs, step)
    elif auroc == "exact":
        auroc = aurocs(codes, attrs)
    else:
        raise DisdisError(f"tad: auroc must be 'threshold' or 'exact', got {auroc!r}")
    ordered = -np.sort(-auroc, axis=1)
    gap = ordered[:, 0] - ordered[:, 1]
    counted = (ordered[:, 0] >= AUROC_THRESHOLD) & (entropy_reduction(attrs) <= ENTROPY_REDUCTION_THRESHOLD)
    return {"tad": float(gap[counted].sum()), "num_attributes_captured": int(counted.sum())}


def threshold_aurocs(codes: np.ndarray, attrs: np.ndarray, step: float = 0.1) -> np.ndarray:
    """(A, D) AUROC of each code for each attribute by the published threshold sweep (module
    docstring); NaN for constant attributes."""
    fractions = np.arange(0.0, 1.0 + 1e-4, step)  # as the published torch.arange(0, 1.0001, step)
    positives = attrs.T.astype(np.float64)            # (A, N)
    n_pos = positives.sum(axis=1, keepdims=True)
    n_neg = len(attrs) - n_pos
    out = np.full((attrs.shape[1], codes.shape[1]), 0.5)
    for d, z in enumerate(codes.T.astype(np.float64)):
        lo, hi = z.min(), z.max()
        if hi - lo <= MIN_RANGE:
            continue
        above = (z[:, None] >= lo + fractions * (hi - lo)).astype(np.float64)  # (N, T)
        areas = []
        for predicted in (above, 1.0 - above):
            with np.errstate(divide="ignore", invalid="ignore"):
                fpr = np.sort(((1.0 - positives) @ predicted) / n_neg, axis=1)   # (A, T)
                tpr = np.sort((positives @ predicted) / n_pos, axis=1)
            areas.append((tpr[:, 1:] * np.diff(fpr, axis=1)).sum(axis=1))
        out[:, d] = np.maximum(*areas)
    out[(n_pos[:, 0] == 0) | (n_neg[:, 0] == 0)] = np.nan
    return out


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
