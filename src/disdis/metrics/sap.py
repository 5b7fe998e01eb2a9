"""SAP score (Kumar et al. 2018, "Variational Inference of Disentangled Latent
Concepts from Unlabeled Observations", section 3), as in disentanglement_lib.

Score matrix S (D, K): for discrete factors, the test accuracy of a linear SVM
(``LinearSVC(C=0.01, class_weight="balanced")``) that predicts factor k from
code d alone; for continuous factors, the squared correlation
cov(c_d, y_k)^2 / (var c_d var y_k) (0 where var c_d <= 1e-12). SAP is the mean
over factors of the gap between the two largest entries of the factor's column.
"""

from __future__ import annotations

import numpy as np

from disdis.metrics.inputs import check_codes, check_factors, check_train_test
from disdis.metrics.parallel import parallel_map, single_threaded_blas


def sap(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
        factors_test: np.ndarray, continuous: bool = False, n_jobs: int = 1) -> float:
    """SAP score; the D x K classifiers are fitted on ``n_jobs`` threads."""
    score = sap_score_matrix(codes_train, factors_train, codes_test, factors_test, continuous, n_jobs)
    top_two = np.sort(score, axis=0)[-2:]
    return float(np.mean(top_two[1] - top_two[0]))


def sap_score_matrix(codes_train, factors_train, codes_test, factors_test,
                     continuous: bool = False, n_jobs: int = 1) -> np.ndarray:
    """(D, K) predictability of each factor from each single code."""
    if continuous:
        codes_train = check_codes(codes_train, "codes_train", min_dims=2)
        factors_train = check_factors(factors_train, len(codes_train), "factors_train")
        return _correlation_scores(codes_train, factors_train.astype(np.float64))
    codes_train, factors_train, codes_test, factors_test = check_train_test(
        codes_train, factors_train, codes_test, factors_test, min_dims=2)
    pairs = [(d, k) for d in range(codes_train.shape[1]) for k in range(factors_train.shape[1])]
    with single_threaded_blas():
        accuracies = parallel_map(
            lambda pair: _svm_accuracy(codes_train[:, pair[0]], factors_train[:, pair[1]],
                                       codes_test[:, pair[0]], factors_test[:, pair[1]]),
            pairs, n_jobs)
    return np.array(accuracies).reshape(codes_train.shape[1], factors_train.shape[1])


def _svm_accuracy(code_train, factor_train, code_test, factor_test) -> float:
    from sklearn.svm import LinearSVC
    classifier = LinearSVC(C=0.01, class_weight="balanced")
    classifier.fit(code_train[:, None], factor_train)
    return float(np.mean(classifier.predict(code_test[:, None]) == factor_test))


def _correlation_scores(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    score = np.zeros((codes.shape[1], factors.shape[1]))
    for d in range(codes.shape[1]):
        for k in range(factors.shape[1]):
            cov = np.cov(codes[:, d], factors[:, k], ddof=1)
            if cov[0, 0] > 1e-12:
                score[d, k] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
    return score
