"""Modularity and explicitness (Ridgeway & Mozer 2018, "Learning Deep Disentangled
Embeddings With the F-Statistic Loss"), as computed by disentanglement_lib.

Modularity from the mutual-information matrix m (D codes x K factors) of the
histogram-discretised codes: per code, with theta = max_k m[d, k]^2,

    delta_d = (sum_k m[d, k]^2 - theta) / (theta (K - 1)),   modularity_d = 1 - delta_d

(0 for a code with no information), averaged over codes.
Explicitness: per factor, a ``LogisticRegression()`` (scikit-learn defaults) on
all codes standardised with the training mean and std; the score is the
macro-averaged one-vs-rest ROC-AUC of its predicted probabilities, averaged
over factors (train and test).
"""

from __future__ import annotations

import warnings

import numpy as np

from disdis.errors import DisdisError
from disdis.metrics.information import histogram_discretize, mutual_information
from disdis.metrics.inputs import check_train_test
from disdis.metrics.parallel import parallel_map, single_threaded_blas


def modularity(mutual_info: np.ndarray) -> float:
    """Modularity from a (D, K) mutual-information matrix."""
    m = np.asarray(mutual_info, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise DisdisError(f"mutual information: expected (codes, factors >= 2), got shape {m.shape}")
    squared = np.square(m)
    theta = squared.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 1.0 - (squared.sum(axis=1) - theta) / (theta * (m.shape[1] - 1.0))
    score[theta == 0.0] = 0.0
    return float(np.mean(score))


def modularity_explicitness(codes_train: np.ndarray, factors_train: np.ndarray,
                            codes_test: np.ndarray, factors_test: np.ndarray,
                            num_bins: int = 20, n_jobs: int = 1) -> dict[str, float]:
    """Modularity (on the training codes) and explicitness (train and test)."""
    codes_train, factors_train, codes_test, factors_test = check_train_test(
        codes_train, factors_train, codes_test, factors_test)
    info = mutual_information(histogram_discretize(codes_train, num_bins), factors_train)
    mean, std = codes_train.mean(axis=0), codes_train.std(axis=0)
    # A constant code has std 0; disentanglement_lib divides anyway (NaN, then a crash
    # in LogisticRegression). Here it is centred but left unscaled: it carries no
    # information either way.
    std = np.where(std > 0, std, 1.0)
    train, test = (codes_train - mean) / std, (codes_test - mean) / std
    with single_threaded_blas():
        scores = parallel_map(lambda k: _explicitness(train, factors_train[:, k], test, factors_test[:, k]),
                              list(range(factors_train.shape[1])), n_jobs)
    return {"modularity_score": modularity(info),
            "explicitness_score_train": float(np.mean([s[0] for s in scores])),
            "explicitness_score_test": float(np.mean([s[1] for s in scores]))}


def _explicitness(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    with warnings.catch_warnings():
        # disentanglement_lib runs lbfgs with its default 100 iterations; keep that
        # protocol and its (frequent) convergence warning quiet.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier = LogisticRegression().fit(x_train, y_train)
    return (_macro_auc(y_train, classifier.predict_proba(x_train), classifier.classes_),
            _macro_auc(y_test, classifier.predict_proba(x_test), classifier.classes_))


def _macro_auc(labels: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes, as ``roc_auc_score`` on the binarised
    labels (disentanglement_lib's MultiLabelBinarizer construction; two classes give
    two columns there as well)."""
    from sklearn.metrics import roc_auc_score
    present = np.unique(labels)
    if not np.array_equal(present, classes):
        raise DisdisError(f"explicitness: the test factor values {present.tolist()} differ from the "
                          f"training values {classes.tolist()}; use more samples")
    indicator = (labels[:, None] == classes[None, :]).astype(np.int64)
    return float(roc_auc_score(indicator, proba))
