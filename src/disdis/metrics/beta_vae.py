"""beta-VAE score (Higgins et al. 2017), as computed by disentanglement_lib's
``compute_beta_vae_sklearn``.

A training point: pick a factor k at random, draw two batches of
``batch_size`` images that share factor k pairwise, and take the mean absolute
difference of their codes (one feature per code); the label is k. A
``LogisticRegression`` (scikit-learn defaults, lbfgs) is fitted on ``num_train``
points; the score is its accuracy there and on ``num_eval`` fresh points.
Random numbers follow disentanglement_lib's order: per point ``randint(K)``,
the first batch's factors, then the second's; the evaluation points are drawn
after the fit.
"""

from __future__ import annotations

import warnings

import numpy as np

from disdis.metrics.inputs import check_code_table, check_random_state
from disdis.metrics.parallel import single_threaded_blas
from disdis.metrics.sampling import index_of, sample_factors

_CHUNK = 512


def beta_vae(code_table: np.ndarray, factor_sizes, random_state, batch_size: int = 64,
             num_train: int = 10000, num_eval: int = 5000) -> dict[str, float]:
    """beta-VAE score of a code table over a factor grid (canonical order)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    table, sizes = check_code_table(code_table, factor_sizes)
    rng = check_random_state(random_state)
    train_x, train_y = _points(table, sizes, rng, batch_size, num_train)
    with warnings.catch_warnings(), single_threaded_blas():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # random_state is passed as disentanglement_lib does; lbfgs draws nothing from it.
        model = LogisticRegression(random_state=rng).fit(train_x, train_y)
    train_accuracy = float(np.mean(model.predict(train_x) == train_y))
    eval_x, eval_y = _points(table, sizes, rng, batch_size, num_eval)
    return {"train_accuracy": train_accuracy, "eval_accuracy": float(model.score(eval_x, eval_y))}


def _points(table, sizes, rng, batch_size, num) -> tuple[np.ndarray, np.ndarray]:
    labels = np.empty(num, dtype=np.int64)
    first = np.empty((num, batch_size, len(sizes)), dtype=np.int64)
    second = np.empty_like(first)
    for i in range(num):
        labels[i] = rng.randint(len(sizes))
        first[i] = sample_factors(sizes, batch_size, rng)
        second[i] = sample_factors(sizes, batch_size, rng)
    rows = np.arange(num)
    second[rows, :, labels] = first[rows, :, labels]
    features = np.empty((num, table.shape[1]))
    for start in range(0, num, _CHUNK):
        block = slice(start, start + _CHUNK)
        diff = table[index_of(first[block], sizes)] - table[index_of(second[block], sizes)]
        features[block] = np.mean(np.abs(diff), axis=1)
    return features, labels
