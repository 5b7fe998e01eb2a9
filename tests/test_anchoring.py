"""Dynamic Gaussian Anchoring: the EM step against a float64 reference, the fit on separated
clusters at several scales, determinism, unit independence, the shift, and serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from disdis.anchoring import AnchoringConfig, GaussianAnchors, unit_seeds
from disdis.anchoring import em
from disdis.anchoring.em import Bounds, Factorised, Mixture, em_step, memberships
from disdis.anchoring.fit import _removal_costs, _replace
from disdis.errors import ConfigError, DataError, DisdisError


def separated_clusters(count: int, dim: int, per: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` anisotropic Gaussian clusters, far apart (> 7 sd between neighbours), times ``scale``."""
    g = torch.Generator().manual_seed(seed)
    if dim <= 3:  # on a grid, spacing 10
        side = math.ceil(count ** (1 / dim))
        grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * dim, indexing="ij"), -1).reshape(-1, dim)
        centres = 10.0 * grid[:count].double()
    else:  # random directions on a sphere: pairwise distances about 40
        centres = torch.randn(count, dim, generator=g, dtype=torch.float64)
        centres = 5.0 * math.sqrt(dim) * centres / centres.norm(dim=1, keepdim=True)
    points, labels = [], []
    for i in range(count):
        mix = torch.eye(dim, dtype=torch.float64) + 0.3 * torch.randn(dim, dim, generator=g, dtype=torch.float64)
        points.append(centres[i] + torch.randn(per, dim, generator=g, dtype=torch.float64) @ mix.T)
        labels.append(torch.full((per,), i))
    return (torch.cat(points) * scale).float(), torch.cat(labels)


def purities(assign: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per used component: the share of its hard members that come from its most common cluster."""
    table = torch.zeros(int(assign.max()) + 1, int(labels.max()) + 1)
    table.index_put_((assign, labels), torch.ones(len(assign)), accumulate=True)
    used = table.sum(1) > 0
    return table.max(1).values[used] / table.sum(1)[used]


# ------------------------------------------------------------------ EM step
def test_em_step_matches_float64_reference():
    rng = np.random.default_rng(0)
    groups, m, d, k, reg = 2, 40, 3, 3, 1e-6
    x = rng.normal(size=(groups, m, d)) * 2
    w = rng.uniform(0.2, 1.5, size=(groups, m))
    w[1, -7:] = 0  # padding points of group 1
    means = rng.normal(size=(groups, k, d))
    a = rng.normal(size=(groups, k, d, d))
    covs = a @ a.transpose(0, 1, 3, 2) / d + 0.3 * np.eye(d)
    pi = rng.dirichlet(np.ones(k), size=groups)

    new, loglik = em_step(torch.tensor(x), torch.tensor(w),
                          Mixture(torch.tensor(means), torch.tensor(covs), torch.tensor(np.log(pi))), reg)

    for g in range(groups):
        logp = np.stack([np.log(pi[g, j]) + multivariate_normal(means[g, j], covs[g, j] + reg * np.eye(d)).logpdf(x[g])
                         for j in range(k)], axis=1)
        lse = np.logaddexp.reduce(logp, axis=1)
        r = np.exp(logp - lse[:, None]) * w[g][:, None]
        nk = r.sum(0)
        mu = (r.T @ x[g]) / nk[:, None]
        cov = np.stack([((x[g] - mu[j]).T * r[:, j]) @ (x[g] - mu[j]) / nk[j] for j in range(k)])
        np.testing.assert_allclose(new.means[g].numpy(), mu, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(new.covs[g].numpy(), cov, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(new.log_weights[g].exp().numpy(), nk / nk.sum(), rtol=1e-10)
        np.testing.assert_allclose(loglik[g].item(), (w[g] * lse).sum() / w[g].sum(), rtol=1e-10)


def random_mixture(groups: int, k: int, d: int, seed: int, spread: float = 6.0) -> Mixture:
    """Far-apart, strongly anisotropic components (as tokens on curves make them), float64."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(groups, k, d, generator=g, dtype=torch.float64)
    a = torch.randn(groups, k, d, d, generator=g, dtype=torch.float64)
    scales = torch.logspace(-2, 0.5, d, dtype=torch.float64)  # eigenvalue spread of about 1e5
    covs = a @ torch.diag_embed(scales.expand(groups, k, d)) @ a.transpose(-1, -2) / d + 1e-4 * torch.eye(d, dtype=torch.float64)
    log_weights = torch.log_softmax(torch.randn(groups, k, generator=g, dtype=torch.float64), -1)
    log_weights[0, -1] = -math.inf  # an absent component
    return Mixture(means, covs, log_weights)


def sample(mix: Mixture, per: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(mix.covs)
    z = torch.randn(*mix.means.shape[:2], per, mix.means.shape[-1], generator=g, dtype=torch.float64)
    x = mix.means.unsqueeze(2) + z @ chol.transpose(-1, -2)  # (G, K, per, D)
    return x.flatten(1, 2)


def test_density_bound_is_an_upper_bound():
    mix = random_mixture(2, 5, 6, seed=3, spread=1.0)
    x = sample(mix, 50, seed=4) + 0.5 * torch.randn(2, 250, 6, dtype=torch.float64)
    f = Factorised.of(mix, 1e-6, torch.float64)
    exact, _ = em.component_log_probs(x, f)  # (G, K, m)
    upper = Bounds.of(mix, f).upper(x).transpose(1, 2)
    present = mix.present.unsqueeze(-1).expand_as(exact)
    assert torch.all(upper[present] >= exact[present] - 1e-9 * exact[present].abs().clamp_min(1))
    assert torch.all(torch.isneginf(upper[~present]))


def test_pruned_pairs_give_the_same_em_step_and_memberships_as_all_pairs(monkeypatch):
    mix = random_mixture(3, 6, 8, seed=5)
    x = sample(mix, 200, seed=6)  # float64, so that only the pruning could make a difference
    x[1, :100] = mix.means[1, 0]  # points exactly at a mean
    w = torch.ones(x.shape[:2], dtype=torch.float64)
    w[2, -50:] = 0
    pruned = em_step(x, w, mix, 1e-6), memberships(x, w, mix, 1e-6)
    f = Factorised.of(mix, 1e-6, x.dtype)
    pairs = em.relevant_pairs(x, w, f, Bounds.of(mix, f))
    evaluated = int((pairs.point < w.numel()).sum())  # real rows (padding rows point past the end)
    assert int((w > 0).sum()) <= evaluated < int((w > 0).sum()) * int(mix.present.sum(1).min()) // 2  # it prunes
    monkeypatch.setattr(em, "TRUNCATION", math.inf)  # every pair of a present component
    full = em_step(x, w, mix, 1e-6), memberships(x, w, mix, 1e-6)
    (new_p, ll_p), (lab_p, cnt_p) = pruned
    (new_f, ll_f), (lab_f, cnt_f) = full
    for a, b in [(new_p.means, new_f.means), (new_p.covs, new_f.covs), (new_p.log_weights, new_f.log_weights),
                 (ll_p, ll_f), (cnt_p, cnt_f)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.equal(lab_p, lab_f)


def test_removal_costs_match_direct_float64_computation():
    rng = np.random.default_rng(1)
    m, d, k = 60, 2, 3
    x = rng.normal(size=(1, m, d)) * 3
    means = rng.normal(size=(1, k, d)) * 3
    covs = np.stack([np.eye(d) * s for s in (0.5, 1.0, 2.0)])[None]
    pi = np.array([[0.2, 0.5, 0.3]])
    mix = Mixture(torch.tensor(means), torch.tensor(covs), torch.tensor(np.log(pi)))
    cost = _removal_costs(torch.tensor(x), torch.ones(1, m, dtype=torch.float64), mix, 1e-6)
    dens = np.stack([pi[0, j] * multivariate_normal(means[0, j], covs[0, j] + 1e-6 * np.eye(d)).pdf(x[0])
                     for j in range(k)], axis=1)
    for j in range(k):
        without = np.delete(dens, j, axis=1).sum(1) / (1 - pi[0, j])
        np.testing.assert_allclose(cost[0, j].item(), np.sum(np.log(dens.sum(1)) - np.log(without)), rtol=1e-9)


def test_split_children_take_the_parent_slot_and_the_next_free_slot():
    d = 2
    eye = torch.eye(d, dtype=torch.float64)
    parent = Mixture(torch.arange(3, dtype=torch.float64)[None, :, None].expand(1, 3, d).clone(),
                     eye.expand(1, 3, d, d).clone(), torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)))
    children = Mixture(torch.tensor([[[10.0, 10], [11, 11]], [[20, 20], [21, 21]]], dtype=torch.float64),
                       eye.expand(2, 2, d, d).clone(), torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)))
    settled = torch.ones(1, 3, dtype=torch.bool)
    mix, settled, n = _replace(parent, children, torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([True, True]), settled)
    assert n == 2
    assert mix.means[0, :, 0].tolist() == [10, 1, 20, 11, 21]
    torch.testing.assert_close(mix.log_weights[0].exp(), torch.tensor([0.125, 0.3, 0.1, 0.375, 0.1], dtype=torch.float64))
    assert settled[0].tolist() == [False, True, False, False, False]


# ------------------------------------------------------------------ fit
@pytest.mark.parametrize("count,dim", [(16, 32), (12, 3)])
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_fit_separates_more_clusters_than_initial_components(count, dim, scale):
    x, labels = separated_clusters(count, dim, 300, scale, seed=1)
    anchors = GaussianAnchors.fit(x, seed=0)
    (k,) = anchors.num_components
    assert count <= k <= 32
    assign = anchors.assign(x)
    assert assign.shape == (len(x),) and assign.dtype == torch.long
    assert purities(assign, labels).min() >= 0.99


def test_fit_in_two_dimensions_resolves_a_grid():
    x, labels = separated_clusters(16, 2, 300, 1.0, seed=2)
    anchors = GaussianAnchors.fit(x, seed=3)
    assert 16 <= anchors.num_components[0] <= 32
    assert purities(anchors.assign(x), labels).min() >= 0.99


def test_released_spread_rule_depends_on_scale_and_valley_rule_does_not():
    x, labels = separated_clusters(16, 3, 200, 1.0, seed=4)
    valley = [GaussianAnchors.fit(x * s, seed=0).num_components[0] for s in (0.01, 100.0)]
    spread = [GaussianAnchors.fit(x * s, seed=0, split_rule="spread").num_components[0] for s in (0.01, 100.0)]
    assert valley[0] == valley[1] >= 16
    assert spread[0] <= 8  # tiny tokens: no component is ever "spread" enough to split
    assert spread[1] > valley[1]  # large tokens: pure components are split too


def test_same_seed_same_fit_and_units_independent():
    clusters = [separated_clusters(c, 8, 1440 // c, s, seed=c)[0] for c, s in ((9, 1.0), (10, 0.1), (12, 30.0))]
    tokens = torch.stack(clusters)  # (U=3, N, D): same N for every unit
    first = GaussianAnchors.fit(tokens, seed=7)
    again = GaussianAnchors.fit(tokens, seed=7)
    for key, value in first.to_tensors().items():
        assert torch.equal(value, again.to_tensors()[key]), key
    assert first.assign(tokens).shape == tokens.shape[:2]
    seeds = unit_seeds(7, 3)
    for u in range(3):
        alone = GaussianAnchors.fit(tokens[u], seed=[seeds[u]])
        assert alone.num_components[0] == first.num_components[u]
        torch.testing.assert_close(alone.means[0], first.means[u], rtol=1e-5, atol=1e-5 * float(tokens[u].abs().max()))
        assert torch.equal(alone.assign(tokens[u]), first.assign(tokens)[u])


def test_fit_with_units_split_over_threads_equals_the_one_thread_fit():
    tokens = torch.stack([separated_clusters(c, 4, 720 // c, 1.0, seed=c)[0] for c in (9, 10, 12)])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = GaussianAnchors.fit(tokens, seed=2)
        torch.set_num_threads(3)  # one unit per thread
        split = GaussianAnchors.fit(tokens, seed=2)
        assert torch.get_num_threads() == 3  # restored after the fit
    finally:
        torch.set_num_threads(threads)
    assert split.num_components == one.num_components
    for a, b in zip(split.means, one.means):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(split.assign(tokens), one.assign(tokens))


# ------------------------------------------------------------------ shift
@pytest.fixture(scope="module")
def relu_anchors():
    """Anchors for 3 units of ReLU tokens with many exact zeros, and such tokens."""
    g = torch.Generator().manual_seed(0)
    units = []
    for u in range(3):
        s = torch.randint(4, (600,), generator=g).double() + 0.05 * torch.randn(600, generator=g, dtype=torch.float64)
        w = torch.randn(1, 16, generator=g, dtype=torch.float64)
        units.append(torch.relu(s[:, None] * w - 1.0))
    tokens = torch.stack(units)
    return GaussianAnchors.fit(tokens, seed=0), tokens


def test_shift_moves_each_token_toward_its_anchor_by_the_strength(relu_anchors):
    anchors, tokens = relu_anchors
    lam = 0.3
    shifted = anchors.shift(tokens, lam)
    mu = anchors.anchors_of(tokens)
    assert shifted.dtype == torch.float64
    torch.testing.assert_close(shifted - tokens, lam * (mu - tokens), rtol=0, atol=1e-12)
    k = anchors.assign(tokens)
    expected = torch.stack([anchors.means[u].double()[k[u]] for u in range(3)])
    torch.testing.assert_close(mu, expected, rtol=0, atol=0)
    # the model's (B, U, D) layout
    batch = tokens.transpose(0, 1)
    torch.testing.assert_close(anchors.shift_batch(batch, lam), shifted.transpose(0, 1), rtol=0, atol=0)
    assert torch.equal(anchors.assign(batch, unit_dim=1), k.T)
    # the anchor is a constant: d c~ / d c = 1 - lambda
    c = batch.clone().requires_grad_(True)
    anchors.shift_batch(c, lam).sum().backward()
    torch.testing.assert_close(c.grad, torch.full_like(c, 1 - lam))


def test_shift_under_bf16_autocast_picks_the_float32_anchors():
    # clusters 2 sd apart, so that many tokens lie near the border of two components
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 2000, 4, generator=g) + 2.0 * torch.randint(0, 3, (2, 2000, 1), generator=g) + 100.0
    anchors = GaussianAnchors.fit(tokens, seed=0)
    expected = anchors.shift(tokens, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the training step runs on a GPU
        shifted = anchors.shift(tokens, 0.5)
    assert torch.equal(shifted, expected)


def test_exact_float32_turns_tf32_off_on_a_gpu_and_restores_it():
    from disdis.anchoring.anchors import exact_float32
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the training loop sets it on a GPU
        with exact_float32(torch.device("cuda")):
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
        with exact_float32(torch.device("cpu")):  # nothing to change on the CPU
            assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_default_strength_and_modes(relu_anchors):
    anchors, tokens = relu_anchors
    mu = anchors.anchors_of(tokens)
    torch.testing.assert_close(anchors.shift(tokens) - tokens, 0.1 * (mu - tokens), rtol=0, atol=1e-12)
    # tokens with exact zeros (in every other dimension) where their anchors are not zero
    zeros = mu * (torch.arange(16) % 2)
    strength = {}
    for mode in ("safe", "released"):
        moved = GaussianAnchors.from_tensors(anchors.to_tensors(), AnchoringConfig(strength_mode=mode))
        out, target = moved.shift(zeros), moved.anchors_of(zeros)
        assert torch.isfinite(out).all()
        strength[mode] = ((out - zeros) * (target - zeros)).sum((1, 2)) / (target - zeros).square().sum((1, 2))
    # the released lambda divides by the zero tokens and vanishes (for units whose anchors are not
    # zero in those dimensions); the safe one stays in [0.1/e, 0.1]
    assert strength["released"].min() < 1e-30
    assert (strength["safe"] >= 0.1 / math.e - 1e-12).all() and (strength["safe"] <= 0.1 + 1e-12).all()


def test_released_space_fits_and_shifts(relu_anchors):
    _, tokens = relu_anchors
    anchors = GaussianAnchors.fit(tokens.float(), seed=0, space="released")
    out = anchors.shift(tokens.float())
    assert out.shape == tokens.shape and torch.isfinite(out).all()
    # the released shift mixes the normalised anchor (in [-1, 0]) with the raw token (>= 0),
    # so it pulls every token toward or below zero
    assert (anchors.fit_means <= 1e-6).all()
    assert (out <= tokens.float() + 1e-6).all() and (out < tokens.float() - 1e-3).any()


# ------------------------------------------------------------------ serialisation, config
def test_save_load_round_trip(relu_anchors, tmp_path):
    anchors, tokens = relu_anchors
    path = tmp_path / "fits" / "anchors.safetensors"
    anchors.save(path)
    loaded = GaussianAnchors.load(path)
    assert loaded.config == anchors.config and loaded.num_components == anchors.num_components
    for key, value in anchors.to_tensors().items():
        assert torch.equal(loaded.to_tensors()[key], value), key
    assert torch.equal(loaded.assign(tokens), anchors.assign(tokens))
    assert torch.equal(anchors.to("cpu").shift(tokens), anchors.shift(tokens))
    assert [p.name for p in path.parent.iterdir()] == ["anchors.safetensors"]  # no temp file left
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError):
        GaussianAnchors.load(bad)


def test_config_and_input_errors():
    with pytest.raises(ConfigError):
        AnchoringConfig(max_components=4)
    with pytest.raises(ConfigError):
        GaussianAnchors.fit(torch.zeros(10, 2), no_such_option=1)
    with pytest.raises(DisdisError):
        GaussianAnchors.fit(torch.full((10, 2), math.nan))
    anchors = GaussianAnchors.fit(torch.randn(2, 50, 4), seed=0)
    with pytest.raises(DisdisError):
        anchors.assign(torch.randn(3, 50, 4))
