"""disentanglement_lib's own metric tests, ported (the oracle for the metric code),
plus sampling-order, PCA, TAD and bad-input checks."""

from __future__ import annotations

import numpy as np
import pytest

import disdis.metrics as M
from disdis.errors import DisdisError
from disdis.metrics.sampling import sample_factor_batches

DIAG = np.diag(5.0 * np.ones(5))
IDENTITY_GRID = (10,) * 10  # disentanglement_lib's IdentityObservationsData: 10 factors, 10 values


# --- analytic importance matrices (dci_test.py) --------------------------------------------

@pytest.mark.parametrize("matrix, disentanglement, completeness", [
    (DIAG, 1.0, 1.0),
    (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 1.0, 1.0),           # empty code
    (np.zeros((10, 10)), 0.0, 0.0),
    (np.vstack([DIAG, DIAG]), 1.0, 1.0 - np.log(2) / np.log(10)),         # redundant codes
    (DIAG[:2, :], 1.0, 1.0),                                              # missed factors
    (np.hstack([DIAG, DIAG]), 1.0 - np.log(2) / np.log(10), 1.0),         # one code, two factors
])
def test_dci_from_importance(matrix, disentanglement, completeness):
    assert M.dci_disentanglement(matrix) == pytest.approx(disentanglement, abs=1e-7)
    assert M.dci_completeness(matrix) == pytest.approx(completeness, abs=1e-7)


# --- analytic mutual-information matrices (modularity_explicitness_test.py) ---------------

@pytest.mark.parametrize("matrix, expected", [
    (DIAG, 1.0),
    (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 2.0 / 3.0),
    (np.zeros((10, 10)), 0.0),
    (np.vstack([DIAG, DIAG]), 1.0),
    (DIAG[:2, :], 1.0),
    (np.hstack([DIAG, DIAG]), 1.0 - 1.0 / 9.0),
])
def test_modularity_from_mutual_information(matrix, expected):
    assert M.modularity(matrix) == pytest.approx(expected)


# --- utils_test.py -------------------------------------------------------------------------

def test_histogram_discretizer():
    target = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]]).T
    assert M.histogram_discretize(target, 3).T.tolist() == [[1, 1, 2, 2, 3, 3], [3, 3, 2, 2, 1, 1]]


def test_entropy_and_mutual_information():
    target = np.array([[1, 1, 2, 2, 3, 3], [3, 3, 2, 2, 1, 1]]).T
    np.testing.assert_allclose(M.entropy(target), [np.log(3)] * 2)
    xs = np.array([[1, 2, 1, 2], [1, 1, 2, 2]]).T
    ys = np.array([[1, 2, 1, 2], [2, 2, 1, 1]]).T
    np.testing.assert_allclose(M.mutual_information(xs, ys), [[np.log(2), 0.0], [0.0, np.log(2)]],
                               atol=1e-12)


def test_mutual_information_equals_sklearn():
    from sklearn.metrics import mutual_info_score
    rs = np.random.RandomState(0)
    codes, factors = rs.randint(20, size=(500, 3)), rs.randint(7, size=(500, 2))
    expected = [[mutual_info_score(factors[:, k], codes[:, d]) for k in range(2)] for d in range(3)]
    np.testing.assert_allclose(M.mutual_information(codes, factors), expected, rtol=1e-12, atol=1e-15)


# --- sampled identity / zero / permuted / duplicated representations -----------------------

def _identity_samples(n, seed=0, transform=lambda f: f.astype(np.float64)):
    factors = np.random.RandomState(seed).randint(10, size=(n, 10))
    return transform(factors), factors


def test_mig_identity_zero_duplicated():
    codes, factors = _identity_samples(3000)
    assert 0.9 <= M.mig(codes, factors, num_bins=10) <= 1.0
    assert 0.0 <= M.mig(np.zeros_like(codes), factors) <= 0.2
    assert 0.0 <= M.mig(np.hstack([codes, codes]), factors, num_bins=10) <= 0.1


def test_sap_identity_zero_duplicated():
    (codes, factors), (test_codes, test_factors) = _identity_samples(3000, 0), _identity_samples(3000, 1)
    assert 0.9 <= M.sap(codes, factors, test_codes, test_factors, continuous=True) <= 1.0
    assert 0.0 <= M.sap(np.zeros_like(codes), factors, test_codes, test_factors, continuous=True) <= 0.2
    dup = np.hstack([codes, codes])
    assert 0.0 <= M.sap(dup, factors, np.hstack([test_codes, test_codes]), test_factors,
                        continuous=True) <= 0.2


def _permuted(factors, seed=0):
    rs = np.random.RandomState(seed)
    return np.stack([rs.permutation(row) for row in factors.astype(np.float64)])


def test_modularity_identity_permuted_duplicated():
    (codes, factors), (test_codes, test_factors) = _identity_samples(3000, 0), _identity_samples(3000, 1)
    assert 0.9 <= M.modularity_explicitness(codes, factors, test_codes, test_factors,
                                            num_bins=10)["modularity_score"] <= 1.0
    dup = M.modularity_explicitness(np.hstack([codes, codes]), factors,
                                    np.hstack([test_codes, test_codes]), test_factors, num_bins=10)
    assert 0.9 <= dup["modularity_score"] <= 1.0
    (p_codes, p_factors), (pt_codes, pt_factors) = _identity_samples(20000, 2), _identity_samples(2000, 3)
    bad = M.modularity_explicitness(_permuted(p_factors), p_factors, _permuted(pt_factors, 1), pt_factors,
                                    num_bins=10)
    assert 0.0 <= bad["modularity_score"] <= 0.2


def test_dci_identity_and_permuted():
    (codes, factors), (test_codes, test_factors) = _identity_samples(400, 0), _identity_samples(200, 1)
    small = slice(0, 4)  # 4 of the 10 factors keep the boosted trees quick
    good = M.dci(codes[:, small], factors[:, small], test_codes[:, small], test_factors[:, small],
                 random_state=0, n_jobs=2)
    assert 0.9 <= good["disentanglement"] <= 1.0 and 0.9 <= good["completeness"] <= 1.0
    bad = M.dci(_permuted(factors[:, small]), factors[:, small], _permuted(test_factors[:, small], 1),
                test_factors[:, small], random_state=0, n_jobs=2)
    assert 0.0 <= bad["disentanglement"] <= 0.2 and 0.0 <= bad["completeness"] <= 0.2


def test_factor_vae_and_beta_vae_identity_and_zero():
    grid = (10, 10, 10, 10)
    table = np.stack(np.unravel_index(np.arange(10 ** 4), grid), 1).astype(np.float64)
    good = M.factor_vae(table, grid, 0, 5, 3000, 2000, 2500)
    assert 0.9 <= good["train_accuracy"] <= 1.0 and 0.9 <= good["eval_accuracy"] <= 1.0
    zero = M.factor_vae(np.zeros_like(table), grid, 0, 5, 3000, 2000, 2500)
    assert zero == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    beta = M.beta_vae(table, grid, 0, 5, 2000, 2000)
    assert 0.9 <= beta["train_accuracy"] <= 1.0 and 0.9 <= beta["eval_accuracy"] <= 1.0


# --- sampling order -----------------------------------------------------------------------

def test_sampling_matches_per_factor_randint_order():
    sizes = np.array([3, 4, 5])
    ours = sample_factor_batches(sizes, 37, np.random.RandomState(7), batch_size=16)
    rs = np.random.RandomState(7)
    expected = np.vstack([np.stack([rs.randint(s, size=b) for s in sizes], 1) for b in (16, 16, 5)])
    np.testing.assert_array_equal(ours, expected)
    assert np.array_equal(M.index_of(expected, sizes),
                          np.ravel_multi_index(tuple(expected.T), tuple(sizes)))


# --- gradient-boosted trees vs scikit-learn -------------------------------------------------

def test_boosted_trees_match_sklearn():
    from sklearn.ensemble import GradientBoostingClassifier
    from disdis.metrics.gbt import fit_boosted_trees
    rs = np.random.RandomState(0)
    x = rs.randn(300, 4)
    y = np.digitize(x[:, 0] + 0.5 * rs.randn(300), [-0.5, 0.5])
    x_test = rs.randn(200, 4)
    ours, theirs = fit_boosted_trees(x, y, 0), GradientBoostingClassifier(random_state=0).fit(x, y)
    assert np.array_equal(ours.predict(x), theirs.predict(x))
    assert np.mean(ours.predict(x_test) == theirs.predict(x_test)) >= 0.97  # ties: other thresholds
    np.testing.assert_allclose(ours.feature_importances, theirs.feature_importances_, atol=0.02)
    binary = (y > 0).astype(int)
    ours, theirs = fit_boosted_trees(x, binary, 0), GradientBoostingClassifier(random_state=0).fit(x, binary)
    assert np.array_equal(ours.predict(x), theirs.predict(x))


# --- PCA reduction, TAD ---------------------------------------------------------------------

def test_reduce_units_by_pca():
    rs = np.random.RandomState(0)
    signal = rs.randn(500, 3)
    direction = rs.randn(3, 8)
    tokens = signal[:, :, None] * direction[None, :, :] + 0.01 * rs.randn(500, 3, 8) + 4.0
    codes = M.reduce_units_by_pca(tokens)
    assert codes.shape == (500, 3)
    for u in range(3):
        assert abs(np.corrcoef(codes[:, u], signal[:, u])[0, 1]) > 0.999
    np.testing.assert_allclose(codes.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_array_equal(M.reduce_units_by_pca(-tokens), M.reduce_units_by_pca(-tokens))
    flipped = M.reduce_units_by_pca(2 * 4.0 - tokens)  # sign-flipped tokens: same codes up to sign
    np.testing.assert_allclose(np.abs(flipped), np.abs(codes), atol=1e-9)


def test_tad_perfect_and_random():
    from sklearn.metrics import roc_auc_score
    rs = np.random.RandomState(0)
    attrs = rs.randint(2, size=(2000, 3))
    codes = np.hstack([attrs + 0.1 * rs.randn(2000, 3), rs.randn(2000, 2)])
    # best AUROC ~1, second ~0.5 per attribute (exact); the published sweep scores independent codes
    # ~0.6 (its coarse steps and the larger of two directions), so its gaps are smaller
    for auroc, least in (("threshold", 1.1), ("exact", 1.4)):
        result = M.tad(codes, attrs, auroc=auroc)
        assert result["num_attributes_captured"] == 3 and result["tad"] > least
    from disdis.metrics.tad import aurocs
    expected = [[max(a, 1 - a) for a in (roc_auc_score(attrs[:, i], codes[:, j]) for j in range(5))]
                for i in range(3)]
    np.testing.assert_allclose(aurocs(codes, attrs), expected, atol=1e-12)
    assert M.tad(rs.randn(2000, 4), attrs)["num_attributes_captured"] == 0
    # an attribute that duplicates another is explained by it: not counted
    assert M.tad(codes, np.hstack([attrs, attrs[:, :1]]))["num_attributes_captured"] == 2


def _published_auroc(z, a, step):
    """The published threshold AUROC written as plain loops over thresholds and samples."""
    lo, hi = min(z), max(z)
    if hi - lo <= 0.2:
        return 0.5
    positives = sum(a)
    negatives = len(a) - positives
    best = 0.0
    for sign in (True, False):
        points = []
        t = 0.0
        while t <= 1.0001:
            th = t * (hi - lo) + lo
            predicted = [(v >= th) if sign else (v < th) for v in z]
            tp = sum(1 for p, y in zip(predicted, a) if p and y)
            fp = sum(1 for p, y in zip(predicted, a) if p and not y)
            points.append((fp / negatives, tp / positives))
            t = round(t + step, 10)
        fpr = sorted(p[0] for p in points)
        tpr = sorted(p[1] for p in points)
        best = max(best, sum(tpr[k] * (fpr[k] - fpr[k - 1]) for k in range(1, len(points))))
    return best


@pytest.mark.parametrize("step", [0.1, 0.05])
def test_tad_threshold_auroc_matches_a_loop_over_thresholds(step):
    """The published sweep (11 thresholds at step 0.1), each column sorted on its own, right Riemann
    sum, the better direction; a code of range <= 0.2 is chance."""
    from disdis.metrics.tad import threshold_aurocs
    rs = np.random.RandomState(1)
    attrs = rs.randint(2, size=(300, 3))
    codes = np.hstack([attrs[:, :1] + 0.7 * rs.randn(300, 1), -attrs[:, 1:2] + 0.4 * rs.randn(300, 1),
                       rs.randn(300, 1), 0.05 * rs.rand(300, 1)])  # the last: range < 0.2
    got = threshold_aurocs(codes, attrs, step)
    expected = [[_published_auroc(codes[:, d].tolist(), attrs[:, i].tolist(), step) for d in range(4)]
                for i in range(3)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[0, 0] > 0.7 and got[1, 1] > 0.8 and (got[:, 3] == 0.5).all()
    # a 2-valued code: the published sum needs the FPR to move within the sweep, so a code equal to the
    # attribute scores 1 and its negation 0 (the negative direction never predicts everything positive)
    binary = attrs[:, :1].astype(float)
    np.testing.assert_allclose(threshold_aurocs(np.hstack([binary, -binary]), attrs[:, :1]), [[1.0, 0.0]])
    with pytest.raises(DisdisError, match="auroc must be"):
        M.tad(codes, attrs, auroc="roc")


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_codes_are_rejected(bad):
    codes, factors = _identity_samples(100)
    codes[3, 2] = bad
    for call in (lambda: M.mig(codes, factors), lambda: M.sap(codes, factors, codes, factors),
                 lambda: M.dci(codes, factors, codes, factors),
                 lambda: M.modularity_explicitness(codes, factors, codes, factors)):
        with pytest.raises(DisdisError, match="NaN or infinite"):
            call()


def test_shape_and_factor_errors():
    codes, factors = _identity_samples(100)
    with pytest.raises(DisdisError, match="rows but the codes have"):
        M.mig(codes, factors[:50])
    constant = factors.copy()
    constant[:, 4] = 3
    with pytest.raises(DisdisError, match="factor 4 takes a single value"):
        M.mig(codes, constant)
    with pytest.raises(DisdisError, match="grid"):
        M.factor_vae(np.zeros((99, 3)), (10, 10), 0)
    with pytest.raises(DisdisError, match="at least 2 values"):
        M.factor_vae(np.zeros((10, 3)), (10, 1), 0)
    with pytest.raises(DisdisError, match="train and test columns differ"):
        M.sap(codes, factors, codes[:, :5], factors)
    with pytest.raises(DisdisError, match="at least 2 factors"):
        M.dci_disentanglement(np.ones((3, 1)))
    with pytest.raises(DisdisError, match="binary"):
        M.tad(codes, factors)


# ------------------------------------------------------------------ unit_factor_shares
def test_unit_factor_shares_analytic_cases():
    from disdis.factor_grid import canonical_factors
    from disdis.metrics import unit_factor_shares

    sizes = [3, 4, 2]
    f = canonical_factors(sizes).astype(float)
    codes = np.stack([
        f[:, 1],                    # factor 1 alone
        np.sin(f[:, 0]) * 5,        # any function of factor 0 alone
        f[:, 0] + 2 * f[:, 2],      # additive: shares var(f0) : 4 var(f2)
        (f[:, 1] - 1.5) * (f[:, 2] - 0.5),  # pure interaction: no main effect of factor 1 or 2
        np.zeros(len(f)),           # constant
    ], axis=1)
    shares = unit_factor_shares(codes, sizes)
    assert shares.shape == (5, 3)
    np.testing.assert_allclose(shares[0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(shares[1], [1, 0, 0], atol=1e-12)
    v0, v2 = np.var([0, 1, 2]), 4 * np.var([0, 1])
    np.testing.assert_allclose(shares[2], [v0 / (v0 + v2), 0, v2 / (v0 + v2)], atol=1e-12)
    np.testing.assert_allclose(shares[3, 1:], [0, 0], atol=1e-12)
    np.testing.assert_array_equal(shares[4], [0, 0, 0])


def test_unit_pair_shares_analytic_cases():
    """A pure interaction of two factors has no single share and pair share 1; a unit of one factor
    has share 1 for every pair that holds it; the diagonal equals the single shares; the pair
    share against a float64 loop over the grid's cells."""
    from disdis.factor_grid import canonical_factors
    from disdis.metrics import unit_factor_shares, unit_pair_shares

    sizes = [3, 4, 2]
    f = canonical_factors(sizes).astype(float)
    rng = np.random.default_rng(0)
    codes = np.stack([
        (f[:, 1] - 1.5) * (f[:, 2] - 0.5),  # pure interaction of factors 1 and 2
        (f[:, 0] == f[:, 1]).astype(float),  # "factor 0 equals factor 1": mostly their interaction
        f[:, 2],
        rng.normal(size=len(f)),
    ], axis=1)
    pairs = unit_pair_shares(codes, sizes)
    assert pairs.shape == (4, 3, 3)
    np.testing.assert_allclose(pairs[0, 1, 2], 1.0, atol=1e-12)
    np.testing.assert_allclose(pairs[0, [0, 1, 2], [0, 1, 2]], [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(pairs[1, 0, 1], 1.0, atol=1e-12)
    np.testing.assert_allclose(pairs[2, [0, 1, 2], [2, 2, 2]], [1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(pairs[:, [0, 1, 2], [0, 1, 2]], unit_factor_shares(codes, sizes), atol=1e-12)
    np.testing.assert_allclose(pairs, pairs.transpose(0, 2, 1), atol=1e-12)
    cells = {}
    for row, (a, b) in zip(codes[:, 3], f[:, [0, 2]].astype(int)):
        cells.setdefault((a, b), []).append(row)
    means = np.array([np.mean(v) for v in cells.values()])
    assert np.isclose(pairs[3, 0, 2], means.var() / codes[:, 3].var(), atol=1e-12)


def test_direction_shares_finds_a_factor_spread_over_units():
    """Two factors mixed over two units (each unit half of each) have unit shares 0.5 and direction
    shares 1; against a float64 search over the directions of a random two-unit code; never below the
    best unit's share, and unchanged by an invertible linear map of the units."""
    from disdis.factor_grid import canonical_factors
    from disdis.metrics import direction_shares, unit_factor_shares

    sizes = [3, 4, 2]
    f = canonical_factors(sizes).astype(float)
    a, b = (f[:, 0] - 1) / np.std(f[:, 0]), (f[:, 1] - 1.5) / np.std(f[:, 1])
    mixed = np.stack([a + b, a - b], axis=1)
    np.testing.assert_allclose(unit_factor_shares(mixed, sizes)[:, :2], 0.5, atol=1e-12)
    np.testing.assert_allclose(direction_shares(mixed, sizes), [1, 1, 0], atol=1e-12)

    rng = np.random.default_rng(0)
    noisy = np.stack([np.sin(f[:, 0]) + f[:, 2] + rng.normal(size=len(f)), f[:, 1] ** 2 - f[:, 0] + rng.normal(size=len(f))], 1)
    angles = np.linspace(0, np.pi, 20001)
    projected = noisy @ np.stack([np.cos(angles), np.sin(angles)])  # (images, angles)
    searched = unit_factor_shares(projected, sizes).max(axis=0)
    shares = direction_shares(noisy, sizes)
    np.testing.assert_allclose(shares, searched, atol=1e-6)
    assert np.all(shares >= unit_factor_shares(noisy, sizes).max(axis=0) - 1e-12)
    np.testing.assert_allclose(direction_shares(noisy @ [[2.0, 1.0], [-0.5, 3.0]] + 7, sizes), shares, atol=1e-10)
    # a repeated unit and a constant one add no direction; a constant code holds nothing
    np.testing.assert_allclose(direction_shares(np.c_[noisy, noisy[:, :1], np.ones(len(f))], sizes), shares, atol=1e-10)
    np.testing.assert_array_equal(direction_shares(np.zeros((len(f), 3)), sizes), [0, 0, 0])


def test_suite_scores_are_the_same_on_every_run_even_with_tied_codes():
    """Two codes that copy one factor tie at every split; the trees pick one at random. The suite
    seeds that choice (apart from the sampling stream), so DCI and downstream repeat exactly."""
    from disdis.data.base import canonical_factors
    from disdis.metrics import evaluate_representation
    sizes = [3, 4]
    classes = canonical_factors(sizes).astype(float)
    codes = np.stack([classes[:, 0], classes[:, 0], classes[:, 1]], axis=1)
    run = lambda: evaluate_representation(codes, sizes, num_train=300, num_test=200, metrics=("dci", "downstream"),
                                          downstream_sizes=(50, 300))["metrics"]
    first, second = run(), run()
    assert first == second
    assert first["dci"]["informativeness_test"] == 1.0


def test_a_runs_eval_section_is_the_protocols_sampling():
    """EvalConfig and Protocol share one definition of the sample sizes and settings (Sampling):
    a run's eval section becomes the suite's protocol field for field, and bad values name the key."""
    from dataclasses import fields

    from disdis.errors import ConfigError
    from disdis.metrics.suite import Sampling
    from disdis.run_config import EvalConfig
    shared = {f.name for f in fields(Sampling)}
    assert shared <= {f.name for f in fields(EvalConfig)} and shared <= {f.name for f in fields(M.Protocol)}
    e = EvalConfig(num_train=123, dci_backend="sklearn", metrics=("dci",))
    p = M.Protocol.of(e, n_jobs=1)
    assert (p.num_train, p.dci_backend, p.metrics, p.n_jobs, p.vote_batch_size) == (123, "sklearn", ("dci",), 1, 64)
    assert M.Protocol.of(EvalConfig()).is_reference()
    assert M.Protocol.of(EvalConfig(vote_batch_size=32)).vote_batch_size == 32  # the vote batch, from eval
    assert not M.Protocol.of(EvalConfig(vote_batch_size=32)).is_reference()
    with pytest.raises(ConfigError, match="eval.num_test: expected a positive integer"):
        EvalConfig(num_test=0)
    with pytest.raises(ConfigError, match="eval.metrics: unknown metric 'dcii'"):
        EvalConfig(metrics=("dcii",))


def test_factor_signal_of_a_silhouette_is_alone_not_marginal():
    from disdis.factor_grid import factor_signal
    # x = s * m, s in {-1, 1}, m in {1, 2} (canonical order: s slow, m fast): values -1, -2, 1, 2,
    # total variance 2.5. E[x | m] = 0, so m has no main effect; along m at fixed s the
    # variance is 0.25 (share 0.1); along s at fixed m it is m^2, mean 2.5 (share 1.0); E[x | s]
    # = 1.5 s has variance 2.25 (share 0.9).
    marginal, alone = factor_signal(np.array([[-1.0], [-2.0], [1.0], [2.0]]), [2, 2])
    np.testing.assert_allclose(marginal, [0.9, 0.0], atol=1e-12)
    np.testing.assert_allclose(alone, [1.0, 0.1], atol=1e-12)


def test_factor_signal_of_additive_factors_agrees_both_ways():
    from disdis.factor_grid import canonical_factors, factor_signal
    rng = np.random.RandomState(0)
    sizes = [3, 4, 2]
    tables = [rng.randn(n, 5) for n in sizes]
    classes = canonical_factors(sizes)
    x = sum(t[classes[:, k]] for k, t in enumerate(tables))
    marginal, alone = factor_signal(x, sizes)
    expected = np.array([t.var(axis=0).sum() for t in tables])
    np.testing.assert_allclose(marginal, expected / expected.sum(), atol=1e-12)
    np.testing.assert_allclose(alone, marginal, atol=1e-12)
