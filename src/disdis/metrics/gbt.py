"""Gradient-boosted trees with scikit-learn's default classifier protocol, vectorised.

DCI and the downstream task of disentanglement_lib fit
``sklearn.ensemble.GradientBoostingClassifier()`` with its defaults: log loss,
100 stages, learning rate 0.1, regression trees of depth 3 on the negative
gradient (squared-error splits, at least one sample per leaf, all features),
one Newton step per leaf, inputs cast to float32. scikit-learn grows one tree
at a time and sorts every node's samples for every feature. This module grows
the same trees, but

* sorts every feature once (the inputs never change between trees),
* grows all the trees of a stage (one per class) level by level at once, with
  prefix sums over the presorted order instead of per-node sorting.

Per node and feature, the best split maximises the proxy of the squared-error
decrease, ``S_l^2 / n_l + S_r^2 / n_r`` (S: sum of the target over a child), over
positions between consecutive sorted values that differ by more than 1e-7; the
threshold is the midpoint of the two values. A node is a leaf at depth 3, with
fewer than two samples, with impurity (variance) <= machine epsilon, or without
a valid split. The leaf value is the Newton step
``(K-1)/K * mean(y - p) / mean(p (1-p))`` (binary: without ``(K-1)/K``), the
feature importance the impurity decrease summed over splits and normalised.

The result equals scikit-learn's up to floating-point rounding, except where
candidate splits on different features tie (equal up to rounding, e.g. two codes
that both separate the classes perfectly): scikit-learn visits features in a
random order (unseeded in disentanglement_lib) and its winner among tied
features is effectively random; here the winner is drawn uniformly among the
features whose best score is within a relative 1e-9 of the node's best, from a
generator seeded by ``random_state``. Importances of redundant codes therefore
agree with scikit-learn's in distribution, not tree by tree. Within a feature the
first best position wins, as in scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DEPTH = 3
_STAGES = 100
_LEARNING_RATE = 0.1
_FEATURE_THRESHOLD = 1e-7  # scikit-learn's: closer sorted values are not separated
_EPSILON = np.finfo(np.float64).eps


@dataclass
class BoostedTrees:
    """A fitted ensemble: ``stages`` x ``trees`` complete trees of depth 3 in heap
    order. A node that does not split sends every sample left (threshold +inf)."""

    classes: np.ndarray        # (K,) the labels seen in training, sorted
    init_raw: np.ndarray       # (T,) raw prediction before the first stage
    features: np.ndarray       # (stages, T, 7) split feature of each inner node
    thresholds: np.ndarray     # (stages, T, 7) float64 split thresholds
    leaf_values: np.ndarray    # (stages, T, 8) Newton-step values of the leaves
    feature_importances: np.ndarray  # (D,) normalised impurity decrease

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class labels for the rows of ``x`` (argmax of the raw scores; binary: score >= 0)."""
        x32 = np.asarray(x, dtype=np.float32)
        raw = np.tile(self.init_raw, (x32.shape[0], 1))
        rows = np.arange(x32.shape[0])
        for features, thresholds, values in zip(self.features, self.thresholds, self.leaf_values):
            node = np.zeros((len(features), x32.shape[0]), dtype=np.int64)
            for _ in range(_DEPTH):
                tree = np.arange(len(features))[:, None]
                right = x32[rows, features[tree, node]] > thresholds[tree, node]
                node = 2 * node + 1 + right
            leaf = node - (2 ** _DEPTH - 1)
            raw += _LEARNING_RATE * np.take_along_axis(values, leaf, axis=1).T
        if raw.shape[1] == 1:
            return self.classes[(raw[:, 0] >= 0).astype(np.int64)]
        return self.classes[np.argmax(raw, axis=1)]


def fit_boosted_trees(x: np.ndarray, y: np.ndarray, random_state: int | None = None) -> BoostedTrees:
    """Fit the default gradient-boosting classifier on ``x`` (N, D) and labels ``y`` (N,).

    Needs at least two classes in ``y`` (the caller checks). ``random_state`` seeds
    the choice among tied features."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    classes, encoded = np.unique(y, return_inverse=True)
    num_classes = len(classes)
    num_trees = num_classes if num_classes > 2 else 1
    presorted = _Presorted(x32, np.random.default_rng(random_state))
    onehot = (encoded[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)
    raw = np.tile(_initial_raw(onehot), (len(y), 1))
    shape = (_STAGES, num_trees)
    features = np.zeros(shape + (2 ** _DEPTH - 1,), dtype=np.int64)
    thresholds = np.full(shape + (2 ** _DEPTH - 1,), np.inf)
    leaf_values = np.zeros(shape + (2 ** _DEPTH,))
    importance = np.zeros(x32.shape[1])
    init_raw = raw[0].copy()
    for stage in range(_STAGES):
        if num_trees == 1:
            prob = 1.0 / (1.0 + np.exp(-raw[:, :1]))
            target = onehot[:, 1:]
            factor = 1.0
        else:
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            prob = shifted / shifted.sum(axis=1, keepdims=True)
            target = onehot
            factor = (num_classes - 1) / num_classes
        neg_gradient = np.ascontiguousarray((target - prob).T)  # (T, N)
        grown = presorted.grow(neg_gradient)
        features[stage], thresholds[stage] = grown.features, grown.thresholds
        importance += grown.importance.sum(axis=0)
        leaf_values[stage] = _newton_leaf_values(grown.leaf, neg_gradient, target.T, factor)
        raw += _LEARNING_RATE * np.take_along_axis(leaf_values[stage], grown.leaf, axis=1).T
    total = importance.sum()
    return BoostedTrees(classes, init_raw, features, thresholds, leaf_values,
                        importance / total if total > 0 else importance)


def _initial_raw(onehot: np.ndarray) -> np.ndarray:
    """Raw score of the class-prior model: logit of the positive class (binary) or the
    log of the priors over their geometric mean (multiclass), priors clipped to (eps, 1-eps)."""
    prior = np.clip(onehot.mean(axis=0), _EPSILON, 1 - _EPSILON)
    if len(prior) == 2:
        return np.array([np.log(prior[1] / (1 - prior[1]))])
    log_prior = np.log(prior)
    return log_prior - log_prior.mean()


def _newton_leaf_values(leaf: np.ndarray, neg_gradient: np.ndarray, target: np.ndarray,
                        factor: float) -> np.ndarray:
    """One Newton step per leaf: ``factor * mean(g) / mean(p (1 - p))`` with p = target - g;
    0 where the curvature vanishes (below 1e-150)."""
    num_leaves = 2 ** _DEPTH
    values = np.zeros((len(leaf), num_leaves))
    prob = target - neg_gradient
    for tree in range(len(leaf)):
        count = np.bincount(leaf[tree], minlength=num_leaves)
        grad = np.bincount(leaf[tree], weights=neg_gradient[tree], minlength=num_leaves)
        hess = np.bincount(leaf[tree], weights=prob[tree] * (1 - prob[tree]), minlength=num_leaves)
        used = (count > 0) & (np.abs(hess) >= 1e-150 * np.maximum(count, 1))
        values[tree, used] = factor * grad[used] / hess[used]
    return values


@dataclass
class _Grown:
    features: np.ndarray     # (T, 7)
    thresholds: np.ndarray   # (T, 7)
    leaf: np.ndarray         # (T, N) leaf index 0..7 of every training sample
    importance: np.ndarray   # (T, D) impurity decrease / N


class _Presorted:
    """The training inputs with every feature sorted once; grows batches of trees.

    A node holds ``perm`` (D, n): its samples sorted by each feature. Its children's
    ``perm`` are order-preserving selections of the parent's, so nothing is sorted
    after the first time."""

    def __init__(self, x32: np.ndarray, rng: np.random.Generator):
        self.rng = rng
        self.x_t = np.ascontiguousarray(x32.T).astype(np.float64)  # (D, N)
        self.order = np.argsort(x32, axis=0, kind="stable").T.copy()  # (D, N)
        self.sorted_x = np.take_along_axis(self.x_t, self.order, axis=1)
        self.root_valid = _valid_positions(self.sorted_x)

    def grow(self, target: np.ndarray) -> _Grown:
        """Grow one depth-3 regression tree per row of ``target`` (T, N)."""
        num_trees, n = target.shape
        grown = _Grown(np.zeros((num_trees, 2 ** _DEPTH - 1), dtype=np.int64),
                       np.full((num_trees, 2 ** _DEPTH - 1), np.inf),
                       np.zeros((num_trees, n), dtype=np.int64),
                       np.zeros((num_trees, self.x_t.shape[0])))
        # The root's sorted order is shared by all trees: score their splits in one pass.
        root_scores = _split_scores(target[:, self.order], self.root_valid)
        for tree in range(num_trees):
            self._grow_node(grown, tree, target[tree], 0, self.order, self.sorted_x,
                            root_scores[tree])
        grown.importance /= n
        return grown

    def _grow_node(self, grown: _Grown, tree: int, target: np.ndarray, heap: int,
                   perm: np.ndarray, xs: np.ndarray, scores: np.ndarray | None = None) -> None:
        samples = perm[0]
        y = target[samples]
        depth = int(np.log2(heap + 1))
        if depth == _DEPTH:
            grown.leaf[tree, samples] = heap - (2 ** _DEPTH - 1)
            return
        if len(samples) >= 2 and _variance(y) > _EPSILON:
            if scores is None:
                scores = _split_scores(target[perm], _valid_positions(xs))
            feature, position = _pick_split(scores, self.rng)
            if position >= 0:
                threshold = _midpoint(xs[feature, position], xs[feature, position + 1])
                grown.features[tree, heap] = feature
                grown.thresholds[tree, heap] = threshold
                go_left = np.zeros(self.x_t.shape[1], dtype=bool)
                go_left[perm[feature, :position + 1]] = True
                left, right = go_left[perm], ~go_left[perm]
                n = len(samples)
                n_left = position + 1
                grown.importance[tree, feature] += (
                    n * _variance(y) - n_left * _variance(target[perm[feature, :n_left]])
                    - (n - n_left) * _variance(target[perm[feature, n_left:]]))
                shape = (perm.shape[0], -1)
                self._grow_node(grown, tree, target, 2 * heap + 1, perm[left].reshape(shape),
                                xs[left].reshape(shape))
                self._grow_node(grown, tree, target, 2 * heap + 2, perm[right].reshape(shape),
                                xs[right].reshape(shape))
                return
        # A leaf above the last level: its samples follow the left branches down.
        while heap < 2 ** _DEPTH - 1:
            heap = 2 * heap + 1
        grown.leaf[tree, samples] = heap - (2 ** _DEPTH - 1)


def _pick_split(scores: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(feature, position) of the best split, a random feature among near-ties;
    position -1 when no split is valid."""
    per_feature = scores.max(axis=1)
    best = per_feature.max()
    if not np.isfinite(best):
        return 0, -1
    tied = np.flatnonzero(per_feature >= best - 1e-9 * abs(best))
    feature = int(tied[rng.integers(len(tied))]) if len(tied) > 1 else int(tied[0])
    return feature, int(np.argmax(scores[feature]))


def _valid_positions(xs: np.ndarray) -> np.ndarray:
    """Split positions (last left index) between sorted values more than 1e-7 apart."""
    valid = np.zeros(xs.shape, dtype=bool)
    valid[..., :-1] = xs[..., 1:] > xs[..., :-1] + _FEATURE_THRESHOLD
    return valid


def _split_scores(ys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Squared-error proxy ``S_l^2/n_l + S_r^2/n_r`` for every split position of the
    sorted targets ``ys`` (..., D, n); -inf where the position is not a valid split.
    (In-place arithmetic: this is the hot loop of the fit.)"""
    n = ys.shape[-1]
    left = np.cumsum(ys, axis=-1)
    right = np.subtract(left[..., -1:], left)
    n_left = np.arange(1, n + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.square(left, out=left)
        left /= n_left
        np.square(right, out=right)
        right /= n - n_left
        left += right
    np.copyto(left, -np.inf, where=~valid)
    return left


def _midpoint(low: float, high: float) -> float:
    """scikit-learn's threshold: the midpoint, or the lower value where rounding lands it
    on the upper one."""
    threshold = low / 2.0 + high / 2.0
    return low if threshold == high or np.isinf(threshold) else threshold


def _variance(y: np.ndarray) -> float:
    """scikit-learn's MSE impurity, ``E[y^2] - E[y]^2``."""
    n = len(y)
    return float(np.dot(y, y) / n - (y.sum() / n) ** 2)
