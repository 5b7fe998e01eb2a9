"""Batched, weighted EM for full-covariance Gaussian mixtures, block-sparse over (component, point) pairs.

``G`` independent mixtures (one per latent unit, or one per component being
split) are fitted at once. Every tensor carries a leading group axis ``G`` and
a padded component axis ``K``; a component is present where its log weight is
finite. Points are ``(G, M, D)`` with per-point weights ``(G, M)`` (0 for
padding), so groups of different sizes share one tensor.

One EM iteration (Bishop, PRML section 9.2.2), for each group:

  E-step  r_nk = pi_k N(x_n | mu_k, S_k) / sum_j pi_j N(x_n | mu_j, S_j)
          with log N = -1/2 |y_nk|^2 - sum_i log L_k,ii - D/2 log 2 pi,
          y_nk = L_k^-1 (x_n - mu_k),  L_k L_k^T = S_k + reg I  (batched Cholesky),
          and r normalised with log-sum-exp.
  M-step  N_k = sum_n w_n r_nk,  mu_k' = sum_n w_n r_nk x_n / N_k,
          S_k' = sum_n w_n r_nk (x_n - mu_k')(x_n - mu_k')^T / N_k,  pi_k' = N_k / sum_j N_j.

The M-step sums are taken over the *whitened* residuals y (well conditioned
even when S_k is nearly singular, as for tokens that lie on a curve) and
mapped back exactly:  ybar = sum w r y / N_k,  mu' = mu + L ybar,
S' = L (sum w r y y^T / N_k - ybar ybar^T) L^T.

Where the time goes, and how it is kept down. The D x D products for every
(component, point) pair dominate, yet a token has a non-negligible
responsibility under one or two of a unit's components. So each pass first
bounds every pair's log density from above, cheaply (:class:`Bounds`: the
Mahalanobis distance is at least the squared projection on the component's
principal axis over its largest eigenvalue plus the rest of the squared
Euclidean distance over the second largest: one (m, D) x (D, 2K) product
instead of K (m, D) x (D, D) ones), computes the exact density of the
component with the highest bound, and then the exact densities of the pairs
whose bound comes within ``TRUNCATION`` = 30 nats of it. A pair left out has
a responsibility below e^-30 ~ 1e-13, so every sum is the exact one up to float
rounding, in every iteration. The chosen pairs are sorted by component into
blocks of ``BLOCK`` rows, so the products are one batched matrix product per
chunk (:class:`Pairs`), with no Python loop over components or points.

Points are processed in chunks of ``POINT_CHUNK``, groups packed into one
chunk up to ``DENSE_BUDGET`` (group, component, point) bounds, so memory stays
bounded and a group's sums never depend on which other groups share the batch.
Large products run in the points' dtype (float32 by default); the bounds,
parameters and accumulated sums are float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

POINT_CHUNK = 4096        # points per chunk; fixed so results never depend on the batch composition
DENSE_BUDGET = 1 << 20    # (group, component, point) bounds per chunk
BLOCK = 128               # rows per block of the block-sparse products
TRUNCATION = 30.0         # nats: pairs whose bound is further below the reference density are left out


@dataclass
class Mixture:
    """Parameters of ``G`` padded mixtures, float64; absent components have log weight -inf."""

    means: Tensor        # (G, K, D)
    covs: Tensor         # (G, K, D, D), without the regulariser
    log_weights: Tensor  # (G, K)

    @property
    def present(self) -> Tensor:
        return torch.isfinite(self.log_weights)

    def index(self, idx: Tensor) -> Mixture:
        return Mixture(self.means[idx], self.covs[idx], self.log_weights[idx])

    def put(self, idx: Tensor, other: Mixture) -> None:
        self.means[idx] = other.means
        self.covs[idx] = other.covs
        self.log_weights[idx] = other.log_weights


def cholesky(covs: Tensor, present: Tensor, reg: float) -> Tensor:
    """L with L L^T = S + reg I for present components (identity for absent ones).

    The regulariser is the one of the method (docs/method.md) (added before factorising). A
    factorisation that still fails (only possible for a covariance that lost
    positive-definiteness to rounding) is retried with a jitter 10x larger, up
    to 1e6 times ``reg``.
    """
    eye = torch.eye(covs.shape[-1], dtype=covs.dtype, device=covs.device)
    base = torch.where(present[..., None, None], covs, eye)
    jitter = torch.full(covs.shape[:-2], reg, dtype=covs.dtype, device=covs.device)
    for _ in range(7):
        chol, info = torch.linalg.cholesky_ex(base + jitter[..., None, None] * eye)
        failed = info > 0
        if not failed.any():
            return chol
        jitter = torch.where(failed, jitter * 10, jitter)
    raise FloatingPointError("covariance not positive definite even after a jitter of 1e6 x reg")


@dataclass
class Factorised:
    """What the E-step needs, in the points' dtype: whitening W = L^-1 and log(pi_k) - log|L_k| - D/2 log 2pi."""

    chol: Tensor       # (G, K, D, D) float64
    means: Tensor      # (G, K, D) in the points' dtype
    whitening: Tensor  # (G, K, D, D) in the points' dtype
    log_norm: Tensor   # (G, K) in the points' dtype, -inf for absent components

    @classmethod
    def of(cls, mix: Mixture, reg: float, dtype: torch.dtype) -> Factorised:
        chol = cholesky(mix.covs, mix.present, reg)
        eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device).expand_as(chol)
        whitening = torch.linalg.solve_triangular(chol, eye.contiguous(), upper=False)
        d = chol.shape[-1]
        log_det_half = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        log_norm = mix.log_weights - log_det_half - 0.5 * d * math.log(2 * math.pi)
        return cls(chol, mix.means.to(dtype), whitening.to(dtype), log_norm.to(dtype))

    def __getitem__(self, groups: slice) -> Factorised:
        return Factorised(self.chol[groups], self.means[groups], self.whitening[groups], self.log_norm[groups])


def component_log_probs(x: Tensor, f: Factorised) -> tuple[Tensor, Tensor]:
    """Dense log pi_k N(x_n | mu_k, S_k) as (G, K, m) and the whitened residuals y as (G, K, m, D), for x (G, m, D).

    For small batches (the per-step anchor assignment); the fit uses the block-sparse :func:`relevant_pairs`.
    """
    y = (x.unsqueeze(1) - f.means.unsqueeze(2)) @ f.whitening.transpose(-1, -2)
    return f.log_norm.unsqueeze(-1) - 0.5 * torch.linalg.vector_norm(y, dim=-1).square_(), y


@dataclass
class Rows:
    """Exact log densities of chosen (component, point) pairs of a chunk of g groups x m points.

    The pairs of a mask (g, K, m) are listed component by component and fill
    blocks of BLOCK rows, the last block of a component padded; block b belongs
    to the flat component ``component[b]`` = g K + k. ``point`` is each row's flat
    point index into (g, m), g m (a sentinel) on padding rows.
    """

    component: Tensor  # (blocks,)
    point: Tensor      # (rows,)
    y: Tensor          # (blocks, BLOCK, D) whitened residuals W_k (x_n - mu_k)
    logp: Tensor       # (rows,) log pi_k N(x_n | mu_k, S_k)

    @classmethod
    def of(cls, x: Tensor, f: Factorised, mask: Tensor) -> Rows:
        """The pairs of ``mask`` (g, K, m) for points x (g, m, D)."""
        g, k, m = mask.shape
        dev = x.device
        pair = mask.reshape(-1).nonzero().squeeze(1)
        flat = pair // m
        sizes = torch.bincount(flat, minlength=g * k)
        blocks = (sizes + BLOCK - 1) // BLOCK
        first_block = torch.cumsum(blocks, 0) - blocks
        shift = first_block * BLOCK - (torch.cumsum(sizes, 0) - sizes)  # slot of a pair = its rank + shift
        slot = torch.arange(pair.numel(), device=dev) + shift[flat]
        point = torch.full((int(blocks.sum()) * BLOCK,), g * m, dtype=torch.long, device=dev)
        point.index_copy_(0, slot, flat // k * m + pair % m)
        component = torch.repeat_interleave(torch.arange(g * k, device=dev), blocks)
        # padding rows read the chunk's last point (they never reach a real point's sums)
        xb = x.reshape(g * m, x.shape[-1]).index_select(0, point.clamp_max(g * m - 1))
        xb = xb.view(component.numel(), BLOCK, x.shape[-1])
        w = f.whitening.flatten(0, 1)[component]
        y = torch.baddbmm(-(w @ f.means.flatten(0, 1)[component].unsqueeze(-1)).transpose(1, 2), xb, w.transpose(1, 2))
        logp = f.log_norm.flatten()[component].unsqueeze(1) - 0.5 * torch.linalg.vector_norm(y, dim=-1).square_()
        return cls(component, point, y, logp.view(-1))

    def at_points(self, points: int) -> Tensor:
        """(points + 1,) the log density of each point's row, for rows with one row per point (-inf elsewhere)."""
        return self.logp.new_full((points + 1,), -math.inf).index_copy_(0, self.point, self.logp)


@dataclass
class Pairs:
    """Several :class:`Rows` of one chunk taken together: their rows' ``component`` (per
    block), ``point`` and ``logp`` concatenated, each point's log-sum-exp ``lse`` (g m + 1,)
    over its rows, the responsibilities ``r`` within them, and each row's point ``weight``
    (0 on padding rows). The whitened residuals stay in their ``parts`` (no copy)."""

    parts: list[Rows]
    component: Tensor
    point: Tensor
    logp: Tensor
    lse: Tensor
    r: Tensor
    weight: Tensor

    @classmethod
    def of(cls, parts: list[Rows], weights: Tensor) -> Pairs:
        """Responsibilities per point over the rows of ``parts``, for the chunk's point weights
        (g, m) (:func:`point_softmax`). The padding rows only touch the sentinel entry."""
        component, point, logp = (torch.cat([getattr(p, name) for p in parts]) for name in ("component", "point", "logp"))
        lse, r = point_softmax(logp, point, weights.numel() + 1)
        weight = _with_sentinel(weights.reshape(-1)).index_select(0, point)
        return cls(parts, component, point, logp, lse, r, weight)

    @property
    def rows_component(self) -> Tensor:
        return self.component.unsqueeze(1).expand(-1, BLOCK).reshape(-1)

    def per_component(self, values: Tensor, components: int) -> Tensor:
        """Sum of per-row ``values`` (rows, ...) over each component's rows: (components, ...)."""
        sums = values.view(self.component.numel(), BLOCK, *values.shape[1:]).sum(1, dtype=torch.float64)
        out = torch.zeros(components, *values.shape[1:], dtype=torch.float64, device=values.device)
        return out.index_add_(0, self.component, sums)

    def blocks(self, values: Tensor):
        """(part, per-row ``values`` of that part in block layout (blocks, BLOCK)) for each part."""
        start = 0
        for part in self.parts:
            rows = part.point.numel()
            yield part, values[start:start + rows].view(part.y.shape[:2])
            start += rows


def point_softmax(values: Tensor, point: Tensor, points: int) -> tuple[Tensor, Tensor]:
    """Per point index: log sum exp of its ``values`` (points,), -inf for a point without
    any finite value, and each value's share exp(v - lse) (as ``values``).

    The sum is taken around each point's largest term; terms below e^-80 of it count as 0
    (they add nothing, and float32 exp is slow on CPUs where it turns subnormal).
    """
    top = values.new_full((points,), -math.inf).scatter_reduce_(0, point, values, "amax")
    shift = torch.where(torch.isfinite(top), top, 0.0)
    d = values - shift[point]
    e = torch.exp(d.clamp_min(-80.0)).masked_fill_(d < -80.0, 0.0)
    total = torch.zeros_like(top).index_add_(0, point, e)
    return shift + total.log(), e / total[point].clamp_min(torch.finfo(total.dtype).tiny)


def _with_sentinel(values: Tensor) -> Tensor:
    """``values`` with one zero entry appended (what padding rows point to)."""
    return torch.cat([values, values.new_zeros(1, *values.shape[1:])])


@dataclass
class Bounds:
    """Per component, the terms of an upper bound on log pi_k N(x | mu_k, S_k) (float64).

    With d = x - mu, v the principal axis of S (+ reg I) and l1 >= l2 its two largest
    eigenvalues, the Mahalanobis distance d^T S^-1 d is at least
    (v.d)^2 / l1 + (|d|^2 - (v.d)^2) / l2 (every other eigenvalue is at most l2). Expanded,

        log N <= c + a.x - |x|^2 / (2 l2) + (1/l2 - 1/l1) (v.x - v.mu)^2 / 2,
        a = mu / l2,  c = log(pi / sqrt(|2 pi S|)) - |mu|^2 / (2 l2),

    so a chunk of points costs one (m, D) x (D, 2K) product and a few (m, K) passes.
    """

    linear: Tensor     # (G, D, 2K): [a_k | v_k] as columns
    offset: Tensor     # (G, K) c_k, -inf for absent components
    centre: Tensor     # (G, K) v.mu
    half_inv_second: Tensor  # (G, K) 1 / (2 l2)
    half_gap: Tensor   # (G, K) (1/l2 - 1/l1) / 2 >= 0

    @classmethod
    def of(cls, mix: Mixture, f: Factorised) -> Bounds:
        evals, evecs = torch.linalg.eigh(f.chol @ f.chol.transpose(-1, -2))  # ascending
        inv_first = 1 / evals[..., -1]
        inv_second = 1 / evals[..., -2] if evals.shape[-1] > 1 else inv_first
        axis, mu = evecs[..., -1], mix.means
        d = mu.shape[-1]
        log_norm = mix.log_weights - torch.diagonal(f.chol, dim1=-2, dim2=-1).log().sum(-1) - 0.5 * d * math.log(2 * math.pi)
        linear = torch.cat([mu * inv_second.unsqueeze(-1), axis], 1).transpose(1, 2)
        return cls(linear, log_norm - 0.5 * inv_second * mu.square().sum(-1), (axis * mu).sum(-1),
                   0.5 * inv_second, 0.5 * (inv_second - inv_first))

    def __getitem__(self, groups: slice) -> Bounds:
        return Bounds(self.linear[groups], self.offset[groups], self.centre[groups], self.half_inv_second[groups],
                      self.half_gap[groups])

    def upper(self, x: Tensor) -> Tensor:
        """Upper bounds (g, m, K) on log pi_k N(x_n | mu_k, S_k) for x (g, m, D)."""
        x = x.double()
        k = self.offset.shape[1]
        proj = x @ self.linear  # (g, m, 2K)
        along = proj[..., k:] - self.centre.unsqueeze(1)
        upper = proj[..., :k] + self.offset.unsqueeze(1)
        upper -= torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_() * self.half_inv_second.unsqueeze(1)
        return upper.addcmul_(along.square_(), self.half_gap.unsqueeze(1))


def relevant_pairs(x: Tensor, weights: Tensor, f: Factorised, bounds: Bounds, runner_up: bool = False) -> Pairs:
    """The exact densities of every pair of points x (g, m, D) and present components whose
    responsibility can exceed e^-TRUNCATION (module docstring).

    The reference is the exact density of each point's best-bounded component. With
    ``runner_up``, the reference is the lower of that and the density of the second
    best-bounded one, so the pairs also cover every component within TRUNCATION of the
    best one *other than* the point's most responsible component (what the removal costs
    of the fit need).
    """
    g, m = weights.shape
    x = x.contiguous()  # a chunk of a larger tensor: copied once here, not in every Rows.of
    upper = bounds.upper(x)  # (g, m, K), -inf for absent components
    live = (weights > 0).unsqueeze(-1) & torch.isfinite(bounds.offset).unsqueeze(1)
    if runner_up and upper.shape[-1] > 1:
        ranked = upper.topk(2, dim=-1).indices
    else:
        ranked = upper.argmax(-1, keepdim=True)
    chosen = torch.zeros_like(live.expand_as(upper))
    parts, reference = [], None
    for j in range(ranked.shape[-1]):
        pick = torch.zeros_like(chosen).scatter_(2, ranked[..., j:j + 1], True) & live
        parts.append(Rows.of(x, f, pick.transpose(1, 2)))
        density = parts[-1].at_points(g * m)[:-1].view(g, m, 1)
        reference = density if reference is None else torch.minimum(reference, density)
        chosen |= pick
    rest = (upper >= reference - TRUNCATION) & live & ~chosen
    parts.append(Rows.of(x, f, rest.transpose(1, 2)))
    return Pairs.of(parts, weights)


def tiles(groups: int, points: int, components: int) -> Iterator[tuple[slice, slice]]:
    """(group slice, point slice) chunks: fixed point slices, groups packed up to ``DENSE_BUDGET``
    (group, component, point) entries."""
    per_group = max(1, components * min(points, POINT_CHUNK))
    step = max(1, DENSE_BUDGET // per_group)
    for m0 in range(0, points, POINT_CHUNK):
        for g0 in range(0, groups, step):
            yield slice(g0, min(groups, g0 + step)), slice(m0, min(points, m0 + POINT_CHUNK))


def em_step(x: Tensor, weights: Tensor, mix: Mixture, reg: float) -> tuple[Mixture, Tensor]:
    """One EM iteration for every group; returns the new mixture and the mean log-likelihood
    per unit point weight under the *old* parameters (G,), as in the module docstring."""
    g, m, d = x.shape
    k = mix.means.shape[1]
    f = Factorised.of(mix, reg, x.dtype)
    bounds = Bounds.of(mix, f)
    f64 = dict(dtype=torch.float64, device=x.device)
    nk = torch.zeros(g * k, **f64)
    s1 = torch.zeros(g * k, d, **f64)
    s2 = torch.zeros(g * k, d, d, **f64)
    loglik = torch.zeros(g, **f64)
    for gs, ms in tiles(g, m, k):
        p = relevant_pairs(x[gs, ms], weights[gs, ms], f[gs], bounds[gs])
        for part, rb in p.blocks(p.r * p.weight):
            comp = part.component + gs.start * k
            nk.index_add_(0, comp, rb.sum(1, dtype=torch.float64))
            s1.index_add_(0, comp, (rb.unsqueeze(1) @ part.y).squeeze(1).double())
            y = part.y.mul_(rb.sqrt().unsqueeze(-1))  # y <- sqrt(r) y, so that y^T y = sum r y y^T
            s2.index_add_(0, comp, (y.transpose(-1, -2) @ y).double())
        w = weights[gs, ms]
        loglik[gs] += torch.where(w > 0, p.lse[:-1].view(w.shape) * w, 0.0).sum(-1, dtype=torch.float64)
    new = m_step(mix, f.chol, nk.view(g, k), s1.view(g, k, d), s2.view(g, k, d, d))
    return new, loglik / weights.sum(-1, dtype=torch.float64).clamp_min(1e-300)


def m_step(mix: Mixture, chol: Tensor, nk: Tensor, s1: Tensor, s2: Tensor) -> Mixture:
    """New parameters from the whitened sufficient statistics (module docstring).

    A component that received no responsibility at all (N_k = 0) is removed;
    one that received a little keeps a (regularised, possibly singular) estimate
    and is dropped later by the soft-count filter of the fit.
    """
    alive = mix.present & (nk > 0)
    safe = torch.where(alive, nk, 1.0)
    ybar = s1 / safe.unsqueeze(-1)
    cov_w = s2 / safe[..., None, None] - ybar.unsqueeze(-1) * ybar.unsqueeze(-2)
    means = mix.means + (chol @ ybar.unsqueeze(-1)).squeeze(-1)
    covs = chol @ cov_w @ chol.transpose(-1, -2)
    covs = 0.5 * (covs + covs.transpose(-1, -2))
    total = torch.where(alive, nk, 0.0).sum(-1, keepdim=True).clamp_min(1e-300)
    log_weights = torch.where(alive, torch.log(safe / total), -math.inf)
    keep = alive[..., None]
    return Mixture(torch.where(keep, means, mix.means),
                   torch.where(keep[..., None], covs, mix.covs),
                   log_weights)


def run_em(x: Tensor, weights: Tensor, mix: Mixture, iters: int, reg: float, tol: float = 0.0) -> Mixture:
    """Up to ``iters`` EM iterations per group; a group stops early once its mean
    log-likelihood per point changes by less than ``tol`` (``tol=0``: always ``iters``).
    Stopped groups are left out of later iterations, so they cost nothing."""
    mix = Mixture(mix.means.clone(), mix.covs.clone(), mix.log_weights.clone())
    running = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    previous = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    for _ in range(iters):
        idx = running.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        if idx.numel() == x.shape[0]:
            mix, loglik = em_step(x, weights, mix, reg)
        else:
            new, loglik = em_step(x[idx], weights[idx], mix.index(idx), reg)
            mix.put(idx, new)
        if tol > 0:
            running[idx] = (loglik - previous[idx]).abs() >= tol
            previous[idx] = loglik
    return mix


def memberships(x: Tensor, weights: Tensor, mix: Mixture, reg: float) -> tuple[Tensor, Tensor]:
    """Hard members and soft counts under ``mix``: labels (G, M) hold the component
    whose responsibility exceeds 0.5 (-1 for none, and for padding points);
    counts (G, K) are sum_n w_n r_nk."""
    g, m, _ = x.shape
    k = mix.means.shape[1]
    f = Factorised.of(mix, reg, x.dtype)
    bounds = Bounds.of(mix, f)
    labels = torch.full((g, m), -1, dtype=torch.long, device=x.device)
    counts = torch.zeros(g * k, dtype=torch.float64, device=x.device)
    for gs, ms in tiles(g, m, k):
        p = relevant_pairs(x[gs, ms], weights[gs, ms], f[gs], bounds[gs])
        hard = (p.r > 0.5) & (p.weight > 0)
        chunk = torch.full((p.lse.numel(),), -1, dtype=torch.long, device=x.device)
        chunk[p.point[hard]] = p.rows_component[hard] % k
        labels[gs, ms] = chunk[:-1].view(-1, ms.stop - ms.start)
        counts[gs.start * k:gs.stop * k] += p.per_component(p.r * p.weight, (gs.stop - gs.start) * k)
    return labels, counts.view(g, k)
