"""The DyGA fit (docs/method.md) for U units at once: initialise, EM, split, filter, EM.

Stages (:func:`fit_mixture`): K0 components at random tokens; EM; up to
``split_rounds`` split rounds; drop components with soft count below
``min_soft_count``; prune components that the likelihood does not pay for
(:func:`prune`); EM; drop components that are the most responsible one for
fewer than max(min_soft_count, D + 1) tokens.

All units advance together through every stage; inside a stage the work is
batched over units and components (see :mod:`disdis.anchoring.em`). The
per-unit random draws (initial tokens, the members a split is fitted on, the
released random split) come from one seeded ``torch.Generator`` per unit, so a
unit's fit never depends on the other units.

Splitting, round by round (at most ``split_rounds``, never beyond
``max_components`` per unit):

1. Hard members of each component (responsibility > 0.5) under the current mixture.
2. The components to test (below) each get a two-component mixture fitted by
   EM to (at most ``split_fit_limit`` random) members, started from the
   members' mean moved +-1 standard deviation along their principal axis.
3. A component is split when its rule says so, and replaced by the two
   children with weights pi_k * c_1 and pi_k * c_2 (renormalised). Children are
   written into the parent's slot and the next free slot, so no index shifts
   (the released code's bookkeeping defect cannot occur).

The "valley" rule (default, scale-free): project the members on the children's
discriminant direction w = (S_1 + S_2)^-1 (mu_2 - mu_1), histogram the
projections (32 bins over the central 99 %, smoothed 1-2-1) and find the
deepest valley: a bin whose height is at most ``split_threshold`` times the
lower of the highest bins on its left and on its right, with at least
``min_size`` members (the soft-count floor, and D + 1) on each side and a drop from that peak of at least
three standard deviations of the (Poisson) bin counts. The statistic is
invariant to any affine map of the tokens, so it cannot depend on their scale;
it splits a component exactly when its members form two groups with a gap
between them, and leaves a single cluster alone whatever its size or shape. A
component that passed the test without splitting is not tested again (its
members only change when a neighbour splits); children are tested in the next
round, so a component covering up to 2^rounds clusters is resolved.

The "spread" rule (released): split when the mean distance of the hard members
to their mean exceeds ``spread_threshold``, an absolute length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from disdis.anchoring.config import AnchoringConfig
from disdis.anchoring.em import (Bounds, Factorised, Mixture, memberships, point_softmax, relevant_pairs, run_em,
                                 tiles)

HIST_BINS = 32
VALLEY_SIGMAS = 3.0
SMOOTH_VARIANCE = (1 + 4 + 1) / 16  # variance factor of the 1-2-1 smoothing of independent counts


def fit_mixture(x: Tensor, generators: Sequence[torch.Generator], cfg: AnchoringConfig,
                spread_scale: Tensor) -> Mixture:
    """Fit one mixture per unit to x (U, N, D), in the fit space; components compacted to the front.

    ``spread_scale`` (U,) converts fit-space lengths to the units of ``spread_threshold``.
    """
    weights = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    reg = cfg.covariance_reg
    mix = _initial(x, generators, cfg.initial_components)
    mix = compact(run_em(x, weights, mix, cfg.em_iters, reg, cfg.em_tol))
    settled = torch.zeros_like(mix.present)
    for _ in range(cfg.split_rounds):
        mix, settled, splits = _split_round(x, weights, mix, settled, generators, cfg, spread_scale)
        if splits == 0 and not cfg.random_split:
            break  # nothing changed, so a deterministic rule would decide the same again
    _, counts = memberships(x, weights, mix, reg)
    mix = prune(x, weights, drop(mix, counts < cfg.min_soft_count), reg)
    mix = run_em(x, weights, mix, cfg.em_iters, reg, cfg.em_tol)
    # EM can leave a component on a few stray tokens (a broad "outlier" component, or one with too
    # few tokens for a full covariance that owns a far token): in the end every anchor must be the
    # most responsible one (r > 0.5) for at least min_size(D) tokens.
    labels, _ = memberships(x, weights, mix, reg)
    return compact(drop(mix, _member_counts(labels, mix.log_weights.shape[1]) < min_size(cfg, x.shape[-1])))


def prune(x: Tensor, weights: Tensor, mix: Mixture, reg: float) -> Mixture:
    """Remove, one per unit at a time, the component whose removal costs the least log-likelihood,
    while that cost is below the BIC price of its parameters, 1/2 (1 + D + D(D+1)/2) log N.

    The cost of removing k is  sum_n w_n [log p(x_n) - log p_-k(x_n)],  with p_-k the mixture
    without k (weights renormalised). This removes the near-singular components that EM in high
    dimension can leave on a few dozen tokens of two groups, which no split test can resolve, and
    keeps any component that explains its tokens much better than its neighbours could. The
    cost is a likelihood ratio, so the rule does not depend on the scale of the tokens.
    """
    d = x.shape[-1]
    price = 0.5 * (1 + d + d * (d + 1) / 2) * torch.log(weights.sum(1, dtype=torch.float64).clamp_min(2))
    mix = Mixture(mix.means, mix.covs, mix.log_weights.clone())
    active = torch.arange(x.shape[0], device=x.device)  # units whose mixture changed since their last costs
    while active.numel():
        sel = active if active.numel() < x.shape[0] else slice(None)  # no copy of the tokens while all are active
        part = mix.index(sel)
        cost = _removal_costs(x[sel], weights[sel], part, reg) - price[sel].unsqueeze(1)
        removable = part.present & (part.present.sum(1, keepdim=True) > 1) & (cost < 0)
        worst = torch.where(removable, cost, math.inf).argmin(1, keepdim=True)
        chosen = torch.zeros_like(removable).scatter_(1, worst, True) & removable
        mix.log_weights[sel] = drop(part, chosen).log_weights
        active = active[removable.any(1)]
    return mix


def _removal_costs(x: Tensor, weights: Tensor, mix: Mixture, reg: float) -> Tensor:
    """(G, K) log-likelihood lost by removing each component on its own (see :func:`prune`).

    Per token, log p - log p_-k = log(1 - pi_k) - log(1 - r_k) for every k but the most
    responsible one, and log p - log sum_{j != top} pi_j N_j + log(1 - pi_top) for that one;
    both forms are exact and stable (r_k <= 1/2, resp. no cancellation). The sums run over
    the relevant pairs of each token (:func:`~disdis.anchoring.em.relevant_pairs` with
    ``runner_up``, which keeps every component that matters for the sum over j != top).
    """
    g, _, _ = x.shape
    k = mix.means.shape[1]
    f = Factorised.of(mix, reg, x.dtype)
    # every token pays log(1 - pi_k) (weights renormalised); the rest only where r_k is not negligible
    cost = torch.log1p(-mix.log_weights.exp().clamp_max(1 - 1e-12)) * weights.sum(1, dtype=torch.float64).unsqueeze(1)
    bounds = Bounds.of(mix, f)
    for gs, ms in tiles(g, x.shape[1], k):
        p = relevant_pairs(x[gs, ms], weights[gs, ms], f[gs], bounds[gs], runner_up=True)
        top = p.lse.new_full(p.lse.shape, -math.inf).scatter_reduce_(0, p.point, p.logp, "amax")
        is_top = p.logp == top[p.point]
        others = point_softmax(p.logp.masked_fill(is_top, -math.inf), p.point, p.lse.numel())[0]  # j != top
        loss = torch.where(is_top, p.lse[p.point] - others[p.point], -torch.log1p(-p.r.clamp_max(0.5)))
        cost.view(-1)[gs.start * k:gs.stop * k] += p.per_component(torch.where(p.weight > 0, loss * p.weight, 0.0),
                                                                      (gs.stop - gs.start) * k)
    return cost


def min_size(cfg: AnchoringConfig, dim: int) -> float:
    """Fewest tokens a final component or a split child may hold: min_soft_count, and D + 1 so
    that its full covariance is not singular."""
    return max(cfg.min_soft_count, dim + 1.0)


def _initial(x: Tensor, generators: Sequence[torch.Generator], k0: int) -> Mixture:
    """K0 components at distinct random tokens, identity covariances, equal weights (step 1 of the fit)."""
    u, n, d = x.shape
    k = min(k0, n)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for g in generators]).to(x.device)
    means = torch.gather(x, 1, idx.unsqueeze(-1).expand(u, k, d)).double()
    covs = torch.eye(d, dtype=torch.float64, device=x.device).expand(u, k, d, d).clone()
    log_weights = torch.full((u, k), -math.log(k), dtype=torch.float64, device=x.device)
    return Mixture(means, covs, log_weights)


def _split_round(x: Tensor, weights: Tensor, mix: Mixture, settled: Tensor, generators: Sequence[torch.Generator],
                 cfg: AnchoringConfig, spread_scale: Tensor) -> tuple[Mixture, Tensor, int]:
    u, k = mix.log_weights.shape
    present = mix.present
    labels, _ = memberships(x, weights, mix, cfg.covariance_reg)
    members = _member_counts(labels, k)
    eligible = present & (members >= 2 * min_size(cfg, x.shape[-1]))
    lucky = torch.zeros_like(present)
    if cfg.random_split:
        lucky = torch.stack([torch.rand(k, generator=g) < 0.5 for g in generators]).to(x.device) & eligible
    if cfg.split_rule == "spread":
        spread = _spread(x, labels, k) * spread_scale.unsqueeze(1)
        candidates = eligible & ((spread > cfg.spread_threshold) | lucky)
        priority = spread
    else:
        candidates = eligible & (~settled | lucky)
    cand_u, cand_k = candidates.nonzero(as_tuple=True)
    if cand_u.numel() == 0:
        return mix, settled | present, 0
    points, point_weights = _gather_members(x, labels, candidates, generators, cfg.split_fit_limit)
    children = _fit_children(points, point_weights, cfg)
    split = children.present.all(1)
    if cfg.split_rule == "valley":
        valley = _valley_ratio(points, point_weights, children, cfg)
        split &= (valley <= cfg.split_threshold) | lucky[cand_u, cand_k]
        priority = torch.zeros(u, k, dtype=torch.float64, device=x.device)
        priority[cand_u, cand_k] = -valley.clamp_max(1e300)  # deepest valley first
    split &= _within_capacity(cand_u, priority[cand_u, cand_k], split, cfg.max_components - present.sum(1))
    new_settled = settled | ~eligible | candidates
    return _replace(mix, children, cand_u, cand_k, split, new_settled)


def _member_counts(labels: Tensor, k: int) -> Tensor:
    """Number of hard members of each component (U, K) from labels (U, N) (-1: none)."""
    counts = torch.zeros(labels.shape[0], k + 1, dtype=torch.float64, device=labels.device)
    return counts.scatter_add_(1, labels + 1, torch.ones_like(labels, dtype=torch.float64))[:, 1:]


def _spread(x: Tensor, labels: Tensor, k: int) -> Tensor:
    """Mean Euclidean distance of each component's hard members to their mean (U, K), fit space."""
    u, n, d = x.shape
    slot = (labels + 1).unsqueeze(-1)
    sums = torch.zeros(u, k + 1, d, dtype=torch.float64, device=x.device).scatter_add_(1, slot.expand(u, n, d), x.double())
    counts = torch.zeros(u, k + 1, dtype=torch.float64, device=x.device).scatter_add_(1, labels + 1, torch.ones_like(x[..., 0], dtype=torch.float64))
    centres = sums / counts.clamp_min(1).unsqueeze(-1)
    dist = (x.double() - torch.gather(centres, 1, slot.expand(u, n, d))).norm(dim=-1)
    total = torch.zeros_like(counts).scatter_add_(1, labels + 1, dist)
    return (total / counts.clamp_min(1))[:, 1:]


def _gather_members(x: Tensor, labels: Tensor, candidates: Tensor, generators: Sequence[torch.Generator],
                    limit: int) -> tuple[Tensor, Tensor]:
    """Hard members of each candidate component (in ``candidates.nonzero()`` order), padded:
    points (C, M, D) and weights (C, M); a component with more than ``limit`` members
    contributes a uniformly random subset of ``limit``."""
    u, n, d = x.shape
    count = int(candidates.sum())
    lookup = torch.full(candidates.shape, -1, dtype=torch.long, device=x.device)
    lookup[candidates] = torch.arange(count, device=x.device)
    group = torch.where(labels >= 0, torch.gather(lookup, 1, labels.clamp_min(0)), -1)
    keys = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in generators]).to(x.device)
    pu, pn = (group >= 0).nonzero(as_tuple=True)
    gid = group[pu, pn]
    order = torch.argsort(gid.double() + keys[pu, pn], stable=True)  # by group, random within a group
    gid, pu, pn = gid[order], pu[order], pn[order]
    sizes = torch.bincount(gid, minlength=count)
    rank = torch.arange(gid.numel(), device=x.device) - (torch.cumsum(sizes, 0) - sizes)[gid]
    keep = rank < limit
    m = int(min(limit, int(sizes.max()))) if gid.numel() else 1
    points = torch.zeros(count, m, d, dtype=x.dtype, device=x.device)
    point_weights = torch.zeros(count, m, dtype=x.dtype, device=x.device)
    points[gid[keep], rank[keep]] = x[pu[keep], pn[keep]]
    point_weights[gid[keep], rank[keep]] = 1
    return points, point_weights


def _fit_children(points: Tensor, weights: Tensor, cfg: AnchoringConfig) -> Mixture:
    """A two-component EM fit per group, from the mean +- one standard deviation along the principal axis."""
    total = weights.sum(1, keepdim=True)
    mean = (weights.unsqueeze(-1) * points).sum(1) / total
    centred = (points - mean.unsqueeze(1)) * weights.sqrt().unsqueeze(-1)
    cov = (centred.transpose(1, 2) @ centred).double() / total.double().unsqueeze(-1)
    evals, evecs = torch.linalg.eigh(cov)
    step = evals[:, -1].clamp_min(0).sqrt().unsqueeze(-1) * evecs[:, :, -1]
    means = torch.stack([mean.double() - step, mean.double() + step], dim=1)
    start = Mixture(means, cov.unsqueeze(1).expand(-1, 2, -1, -1).clone(),
                    torch.full(means.shape[:2], -math.log(2), dtype=torch.float64, device=points.device))
    return run_em(points, weights, start, cfg.em_iters, cfg.covariance_reg, cfg.em_tol)


def _valley_ratio(points: Tensor, weights: Tensor, children: Mixture, cfg: AnchoringConfig) -> Tensor:
    """Depth of the deepest significant valley between the children, as height / lower peak (C,); inf if none."""
    d = points.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=points.device)
    pooled = children.covs.sum(1) + cfg.covariance_reg * eye
    direction = torch.linalg.solve(pooled, (children.means[:, 1] - children.means[:, 0]).unsqueeze(-1))
    t = (points @ direction.to(points.dtype)).squeeze(-1).double()
    valid = weights > 0
    ends = torch.nanquantile(torch.where(valid, t, math.nan), torch.tensor([0.005, 0.995], dtype=t.dtype, device=t.device), dim=1)
    lo, hi = ends[0].unsqueeze(1), ends[1].unsqueeze(1)
    bins = ((t - lo) / (hi - lo).clamp_min(1e-300) * HIST_BINS).floor().clamp(0, HIST_BINS - 1).long()
    hist = torch.zeros(t.shape[0], HIST_BINS, dtype=torch.float64, device=t.device)
    hist.scatter_add_(1, bins, weights.double())
    smooth = torch.nn.functional.conv1d(hist.unsqueeze(1), hist.new_tensor([[[0.25, 0.5, 0.25]]]), padding=1).squeeze(1)
    zero = smooth.new_zeros(smooth.shape[0], 1)
    left_peak = torch.cat([zero, torch.cummax(smooth, 1).values[:, :-1]], 1)
    right_peak = torch.cat([torch.cummax(smooth.flip(1), 1).values.flip(1)[:, 1:], zero], 1)
    peak = torch.minimum(left_peak, right_peak)
    left_mass = torch.cumsum(hist, 1) - hist
    right_mass = hist.sum(1, keepdim=True) - torch.cumsum(hist, 1)
    side = min_size(cfg, d)
    significant = (peak - smooth) >= VALLEY_SIGMAS * torch.sqrt(SMOOTH_VARIANCE * (peak + smooth))
    ok = (left_mass >= side) & (right_mass >= side) & significant & (peak > 0)
    ratio = torch.where(ok, smooth / peak.clamp_min(1e-300), math.inf)
    return ratio.min(1).values


def _within_capacity(cand_u: Tensor, priority: Tensor, split: Tensor, room: Tensor) -> Tensor:
    """Keep, per unit, only the ``room[u]`` splits of highest priority."""
    order = torch.argsort(-priority, stable=True)
    order = order[torch.argsort(cand_u[order], stable=True)]  # by unit, then priority
    counted = split[order].long()
    unit = cand_u[order]
    before = torch.cumsum(counted, 0) - counted
    first = torch.zeros_like(room).scatter_reduce(0, unit, before, reduce="amin", include_self=False)
    rank = before - first[unit]
    allowed = torch.empty_like(split)
    allowed[order] = rank < room[unit]
    return allowed


def _replace(mix: Mixture, children: Mixture, cand_u: Tensor, cand_k: Tensor, split: Tensor,
             settled: Tensor) -> tuple[Mixture, Tensor, int]:
    """Replace each split parent by its children: first child in the parent's slot, second in the
    unit's next free slot; log weights log pi_k + log c_j, renormalised."""
    u, k = mix.log_weights.shape
    su, sk = cand_u[split], cand_k[split]
    if su.numel() == 0:
        return mix, settled, 0
    first_free = mix.present.sum(1)
    per_unit = torch.bincount(su, minlength=u)
    rank = torch.arange(su.numel(), device=su.device) - (torch.cumsum(per_unit, 0) - per_unit)[su]
    slot = first_free[su] + rank
    k_new = max(k, int((first_free + per_unit).max()))
    pad = k_new - k
    d = mix.means.shape[-1]
    means = torch.cat([mix.means, mix.means.new_zeros(u, pad, d)], 1)
    eye = torch.eye(d, dtype=mix.covs.dtype, device=mix.covs.device)
    covs = torch.cat([mix.covs, eye.expand(u, pad, d, d)], 1)
    log_weights = torch.cat([mix.log_weights, mix.log_weights.new_full((u, pad), -math.inf)], 1)
    new_settled = torch.cat([settled, settled.new_zeros(u, pad)], 1)
    parent = log_weights[su, sk].unsqueeze(1)
    ch = children.index(split.nonzero().squeeze(1))
    for child, (uu, kk) in enumerate([(su, sk), (su, slot)]):
        means[uu, kk] = ch.means[:, child]
        covs[uu, kk] = ch.covs[:, child]
        log_weights[uu, kk] = parent[:, 0] + ch.log_weights[:, child]
        new_settled[uu, kk] = False
    log_weights = log_weights - torch.logsumexp(log_weights, 1, keepdim=True)
    return Mixture(means, covs, log_weights), new_settled, int(su.numel())


def drop(mix: Mixture, remove: Tensor) -> Mixture:
    """Remove components (log weight -inf) and renormalise; a unit always keeps its heaviest component."""
    heaviest = torch.zeros_like(remove).scatter_(1, mix.log_weights.argmax(1, keepdim=True), True)
    remove = remove & mix.present
    emptied = (remove | ~mix.present).all(1, keepdim=True)
    remove = remove & ~(emptied & heaviest)
    log_weights = torch.where(remove, -math.inf, mix.log_weights)
    log_weights = log_weights - torch.logsumexp(log_weights, 1, keepdim=True)
    return Mixture(mix.means, mix.covs, log_weights)


def compact(mix: Mixture) -> Mixture:
    """Move present components to the front (order kept) and trim the padding."""
    present = mix.present
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)
    k = max(1, int(present.sum(1).max()))
    order = order[:, :k]
    d = mix.means.shape[-1]
    return Mixture(torch.gather(mix.means, 1, order.unsqueeze(-1).expand(-1, -1, d)),
                   torch.gather(mix.covs, 1, order[..., None, None].expand(-1, -1, d, d)),
                   torch.gather(mix.log_weights, 1, order))


def concat_mixtures(parts: Sequence[Mixture]) -> Mixture:
    """The groups of several mixtures in one, components padded to the largest count."""
    k = max(p.log_weights.shape[1] for p in parts)

    def pad(p: Mixture) -> Mixture:
        g, kp, d = p.means.shape
        eye = torch.eye(d, dtype=p.covs.dtype, device=p.covs.device).expand(g, k - kp, d, d)
        return Mixture(torch.cat([p.means, p.means.new_zeros(g, k - kp, d)], 1), torch.cat([p.covs, eye], 1),
                       torch.cat([p.log_weights, p.log_weights.new_full((g, k - kp), -math.inf)], 1))

    padded = [pad(p) for p in parts]
    return Mixture(*(torch.cat([getattr(p, name) for p in padded]) for name in ("means", "covs", "log_weights")))
