"""Disentanglement, completeness and informativeness (Eastwood & Williams 2018,
"A Framework for the Quantitative Evaluation of Disentangled Representations"),
as computed by disentanglement_lib.

One gradient-boosted tree classifier per factor (scikit-learn's defaults) gives
an importance matrix R (D codes x K factors), ``R[d, k]`` = importance of code d
for predicting factor k. With P_d the distribution of code d's importance over
factors and H_K the entropy in base K,

    D = sum_d rho_d (1 - H_K(P_d)),        rho_d = sum_k R[d, k] / sum R
    C = sum_k rho_k (1 - H_D(Q_k)),        rho_k = sum_d R[d, k] / sum R

(Q_k: factor k's importance over codes; 1e-11 is added to R inside the entropy,
and an all-zero R uses uniform weights, as in disentanglement_lib).
Informativeness is the mean classification accuracy over factors (train and
test), not an error.

Backends for the classifiers:
  "exact"   (default) disdis.metrics.gbt: scikit-learn's GradientBoostingClassifier
            protocol re-implemented with presorting; same trees up to exact ties.
  "sklearn" scikit-learn's GradientBoostingClassifier itself (the reference, slow).
"""

from __future__ import annotations

import numpy as np

from disdis.errors import DisdisError
from disdis.metrics.inputs import check_train_test
from disdis.metrics.parallel import parallel_map, single_threaded_blas

BACKENDS = ("exact", "sklearn")


def dci(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
        factors_test: np.ndarray, random_state=None, backend: str = "exact",
        n_jobs: int = 1) -> dict[str, float]:
    """DCI scores; one classifier per factor, fitted on ``n_jobs`` threads.

    ``random_state`` seeds the trees' tie-breaking between features
    (disentanglement_lib leaves it unseeded)."""
    return dci_scores(*importance_matrix(codes_train, factors_train, codes_test, factors_test, random_state,
                                         backend, n_jobs))


def dci_scores(importance: np.ndarray, train_acc: float, test_acc: float) -> dict[str, float]:
    """The three DCI scores of an importance matrix R (D, K) and the classifiers' accuracies."""
    return {"disentanglement": dci_disentanglement(importance),
            "completeness": dci_completeness(importance),
            "informativeness_train": train_acc,
            "informativeness_test": test_acc}


def importance_matrix(codes_train, factors_train, codes_test, factors_test, random_state=None,
                      backend: str = "exact", n_jobs: int = 1) -> tuple[np.ndarray, float, float]:
    """(R (D, K), mean train accuracy, mean test accuracy)."""
    if backend not in BACKENDS:
        raise DisdisError(f"dci backend: expected one of {BACKENDS}, got {backend!r}")
    codes_train, factors_train, codes_test, factors_test = check_train_test(
        codes_train, factors_train, codes_test, factors_test)
    fit = {"exact": _fit_exact, "sklearn": _fit_sklearn}[backend]
    seeds = _factor_seeds(random_state, factors_train.shape[1])
    with single_threaded_blas():
        results = parallel_map(
            lambda k: fit(codes_train, factors_train[:, k], codes_test, factors_test[:, k], seeds[k]),
            list(range(factors_train.shape[1])), n_jobs)
    importance = np.stack([r[0] for r in results], axis=1)
    return importance, float(np.mean([r[1] for r in results])), float(np.mean([r[2] for r in results]))


def _fit_exact(x_train, y_train, x_test, y_test, random_state):
    from disdis.metrics.gbt import fit_boosted_trees
    model = fit_boosted_trees(x_train, y_train, random_state)
    return (np.abs(model.feature_importances), np.mean(model.predict(x_train) == y_train),
            np.mean(model.predict(x_test) == y_test))


def _fit_sklearn(x_train, y_train, x_test, y_test, random_state):
    from sklearn.ensemble import GradientBoostingClassifier
    model = GradientBoostingClassifier(random_state=random_state).fit(x_train, y_train)
    return (np.abs(model.feature_importances_), np.mean(model.predict(x_train) == y_train),
            np.mean(model.predict(x_test) == y_test))


def _factor_seeds(random_state, num_factors: int) -> list[int | None]:
    """One seed per factor's classifier, drawn before the parallel fits; all None
    (unseeded, like disentanglement_lib) when ``random_state`` is None."""
    if random_state is None:
        return [None] * num_factors
    if not isinstance(random_state, np.random.RandomState):
        random_state = np.random.RandomState(random_state)
    return [int(s) for s in random_state.randint(2 ** 31 - 1, size=num_factors)]


def _normalized_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of the distributions along ``axis`` (rows normalised), in base = their length."""
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / np.log(p.shape[axis])


def dci_disentanglement(importance: np.ndarray) -> float:
    """D from an importance matrix (D codes, K >= 2 factors)."""
    importance = _check_importance(importance, axis=1, what="factors")
    per_code = 1.0 - _normalized_entropy(importance + 1e-11, axis=1)
    weights = importance if importance.sum() != 0 else np.ones_like(importance)
    return float(np.sum(per_code * weights.sum(axis=1) / weights.sum()))


def dci_completeness(importance: np.ndarray) -> float:
    """C from an importance matrix (D >= 2 codes, K factors)."""
    importance = _check_importance(importance, axis=0, what="codes")
    per_factor = 1.0 - _normalized_entropy(importance + 1e-11, axis=0)
    weights = importance if importance.sum() != 0 else np.ones_like(importance)
    return float(np.sum(per_factor * weights.sum(axis=0) / weights.sum()))


def _check_importance(importance, axis: int, what: str) -> np.ndarray:
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 2 or importance.shape[axis] < 2:
        raise DisdisError(f"importance matrix: expected (codes, factors) with at least 2 {what}, "
                          f"got shape {importance.shape}")
    if not np.all(np.isfinite(importance)) or np.any(importance < 0):
        raise DisdisError("importance matrix: entries must be finite and non-negative")
    return importance
