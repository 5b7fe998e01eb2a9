"""Batched, weighted EM for full-covariance Gaussian mixtures.

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

Cost. The whitened residuals of all K components come from one matrix product
per group, [x_n, 1] @ [W_1^T ... W_K^T; -W_1 mu_1 ... -W_K mu_K]  (W_k = L_k^-1),
so the E-step is a single GEMM plus one pass for |y|^2. The M-step sums only
run over the (point, component) pairs with a non-zero responsibility: with
separated clusters a point has one or two such components, not K, so the
sums cost about N D^2 instead of K N D^2 (:func:`segment_gram`). Pairs whose
responsibility underflowed to exactly 0 contribute exactly 0, so this is the
dense M-step, not an approximation.

Points are processed in fixed-size chunks (a Python loop over chunks, never
over points), so memory stays bounded for any number of points and a group's
result does not depend on which other groups share the batch. Large products
run in the points' dtype (float32 by default); parameters and accumulated sums
are float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

POINT_CHUNK = 1024          # points per chunk; fixed so results never depend on the batch composition
WORKSPACE_BYTES = 8 << 20   # bound on the (groups, points, K, D) residuals of one chunk
GRAM_BLOCK = 256            # rows per block of the segmented M-step products
DENSE_FRACTION = 8          # M-step sums over all pairs when more than 1 in this many are non-zero
UNDERFLOW = 80.0            # nats below the largest term at which a responsibility is taken as 0


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

    The regulariser is the one of DESIGN 2.3 (added before factorising). A
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
    """What the E-step needs, in the points' dtype.

    ``affine`` (G, D + 1, K D) maps a point [x, 1] to the whitened residuals of all
    components at once (module docstring); ``log_norm`` (G, K) is
    log(pi_k) - log|L_k| - D/2 log 2pi, -inf for absent components.
    """

    chol: Tensor      # (G, K, D, D) float64
    affine: Tensor    # (G, D + 1, K D) in the points' dtype
    log_norm: Tensor  # (G, K) in the points' dtype

    @classmethod
    def of(cls, mix: Mixture, reg: float, dtype: torch.dtype) -> Factorised:
        return cls.from_cholesky(cholesky(mix.covs, mix.present, reg), mix.means, mix.log_weights, dtype)

    @classmethod
    def from_cholesky(cls, chol: Tensor, means: Tensor, log_weights: Tensor, dtype: torch.dtype) -> Factorised:
        chol = chol.double()
        g, k, d, _ = chol.shape
        eye = torch.eye(d, dtype=chol.dtype, device=chol.device).expand_as(chol)
        whitening = torch.linalg.solve_triangular(chol, eye.contiguous(), upper=False)  # W_k = L_k^-1
        shift = -(whitening @ means.double().unsqueeze(-1)).squeeze(-1)                   # -W_k mu_k
        affine = torch.cat([whitening, shift.unsqueeze(-1)], -1)                           # (G, K, D, D + 1)
        affine = affine.permute(0, 3, 1, 2).reshape(g, d + 1, k * d)                       # [W^T; -W mu]
        log_det_half = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        log_norm = log_weights.double() - log_det_half - 0.5 * d * math.log(2 * math.pi)
        return cls(chol, affine.to(dtype).contiguous(), log_norm.to(dtype))

    def __getitem__(self, groups: slice) -> Factorised:
        return Factorised(self.chol[groups], self.affine[groups], self.log_norm[groups])


def component_log_probs(x: Tensor, f: Factorised) -> tuple[Tensor, Tensor]:
    """log pi_k N(x_n | mu_k, S_k) as (G, m, K) and the whitened residuals y as (G, m, K, D), for x (G, m, D)."""
    g, m, _ = x.shape
    k = f.log_norm.shape[-1]
    y = torch.bmm(torch.cat([x, x.new_ones(g, m, 1)], -1), f.affine).view(g, m, k, -1)
    return f.log_norm.unsqueeze(1) - 0.5 * (y * y).sum(-1), y


def log_responsibilities(logp: Tensor) -> tuple[Tensor, Tensor]:
    """log sum_k exp(logp_k) (G, m) and the responsibilities (G, m, K), with one exp pass
    (log-sum-exp around the largest term).

    Terms more than ``UNDERFLOW`` nats below the largest are set to exactly 0 rather
    than left to underflow through the (slow) subnormal range: they are below
    1e-34 of the largest term, far under the precision of the sums they enter."""
    top = logp.amax(dim=-1, keepdim=True)
    shifted = logp - top
    e = torch.exp(shifted.masked_fill_(shifted < -UNDERFLOW, -math.inf))
    total = e.sum(dim=-1, keepdim=True)
    return (top + total.log()).squeeze(-1), e.div_(total)


def chunks(x: Tensor, k: int) -> Iterator[tuple[slice, slice]]:
    """(group slice, point slice) blocks whose (G, m, K, D) residuals fit the workspace."""
    g, m, d = x.shape
    per_group = max(1, k * min(m, POINT_CHUNK) * d * x.element_size())
    groups = max(1, WORKSPACE_BYTES // per_group)
    for g0 in range(0, g, groups):
        for m0 in range(0, m, POINT_CHUNK):
            yield slice(g0, min(g, g0 + groups)), slice(m0, min(m, m0 + POINT_CHUNK))


def segment_gram(rows: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """sum_{i: segment_i = s} rows_i rows_i^T for every s, (S, D, D) float64.

    Vectorised over segments of any sizes: the rows are sorted by segment (stably),
    laid out in zero-padded blocks of ``GRAM_BLOCK`` rows that each hold one
    segment's rows, multiplied block by block (one batched product, in the rows'
    dtype) and the block products added up per segment in float64.
    """
    d = rows.shape[-1]
    out = torch.zeros(num_segments, d, d, dtype=torch.float64, device=rows.device)
    if rows.shape[0] == 0:
        return out
    order = torch.argsort(segment, stable=True)
    segment, rows = segment.index_select(0, order), rows.index_select(0, order)
    sizes = torch.bincount(segment, minlength=num_segments)
    rank = torch.arange(rows.shape[0], device=rows.device) - (torch.cumsum(sizes, 0) - sizes).index_select(0, segment)
    blocks = (sizes + GRAM_BLOCK - 1) // GRAM_BLOCK
    first_row = (torch.cumsum(blocks, 0) - blocks) * GRAM_BLOCK
    padded = rows.new_zeros(int(blocks.sum()) * GRAM_BLOCK, d)
    padded.index_copy_(0, first_row.index_select(0, segment) + rank, rows)
    padded = padded.view(-1, GRAM_BLOCK, d)
    owner = torch.repeat_interleave(torch.arange(num_segments, device=rows.device), blocks)
    return out.index_add_(0, owner, (padded.transpose(1, 2) @ padded).double())


def em_step(x: Tensor, weights: Tensor, mix: Mixture, reg: float) -> tuple[Mixture, Tensor]:
    """One EM iteration for every group; returns the new mixture and the mean log-likelihood
    per unit point weight under the *old* parameters (G,), as in the module docstring.

    The M-step sums are Gram matrices of the rows z = sqrt(w r) [y, 1]: the (D, D)
    block is sum w r y y^T and the last column sum w r y. Per group and chunk they
    are taken densely (one batched product over components) where most pairs
    (point, component) have w r > 0, as in the first iterations, and otherwise over
    those pairs only (:func:`segment_gram`)."""
    g, _, d = x.shape
    k = mix.means.shape[1]
    f = Factorised.of(mix, reg, x.dtype)
    nk = torch.zeros(g, k, dtype=torch.float64, device=x.device)
    gram = torch.zeros(g, k, d + 1, d + 1, dtype=torch.float64, device=x.device)
    loglik = torch.zeros(g, dtype=torch.float64, device=x.device)
    rows, segments = [], []
    for gs, ms in chunks(x, k):
        logp, y = component_log_probs(x[gs, ms], f[gs])
        lse, r = log_responsibilities(logp)
        w = weights[gs, ms]
        r.mul_(w.unsqueeze(-1))
        nk[gs] += r.sum(1, dtype=torch.float64)
        loglik[gs] += (lse * w).sum(-1, dtype=torch.float64)
        dense = (r > 0).sum((1, 2)) * DENSE_FRACTION > r[0].numel()
        if dense.any():
            idx = dense.nonzero().squeeze(1)
            s1, s2 = _dense_sums(y.index_select(0, idx), r.index_select(0, idx))
            gram[gs.start + idx, :, :d, :d] += s2
            gram[gs.start + idx, :, :d, d] += s1
            r.index_fill_(0, idx, 0)  # their pairs are done
        pair = r.view(-1).nonzero().squeeze(1)  # flat (group, point, component) index of the other pairs
        rows.append(_weighted_rows(y.view(-1, d).index_select(0, pair), r.view(-1).index_select(0, pair)))
        segments.append(pair // (r.shape[1] * k) * k + pair % k + gs.start * k)
    gram += segment_gram(torch.cat(rows), torch.cat(segments), g * k).view(g, k, d + 1, d + 1)
    new = m_step(mix, f.chol, nk, gram[..., :d, d], gram[..., :d, :d])
    return new, loglik / weights.sum(-1, dtype=torch.float64).clamp_min(1e-300)


def _weighted_rows(y: Tensor, r: Tensor) -> Tensor:
    """sqrt(r) [y, 1] for residuals y (P, D) and weighted responsibilities r (P,)."""
    root = r.sqrt().unsqueeze(-1)
    return torch.cat([y * root, root], -1)


def _dense_sums(y: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """sum_n r y and sum_n r y y^T per group and component, (G, K, D) and (G, K, D, D) float64,
    from y (G, m, K, D) and r (G, m, K): sqrt(r) y is written once, component-major, and
    both sums are batched products over it."""
    g, m, k, d = y.shape
    root = r.sqrt()
    z = y.new_empty(g, k, m, d)
    torch.mul(y, root.unsqueeze(-1), out=z.transpose(1, 2))
    z = z.view(g * k, m, d)
    s1 = torch.bmm(root.transpose(1, 2).reshape(g * k, 1, m), z).view(g, k, d)
    s2 = torch.bmm(z.transpose(1, 2), z).view(g, k, d, d)
    return s1.double(), s2.double()


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
            new, loglik = em_step(x, weights, mix, reg)
            mix = new
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
    labels = torch.full((g, m), -1, dtype=torch.long, device=x.device)
    counts = torch.zeros(g, k, dtype=torch.float64, device=x.device)
    for gs, ms in chunks(x, k):
        logp, _ = component_log_probs(x[gs, ms], f[gs])
        _, r = log_responsibilities(logp)
        best, arg = r.max(dim=-1)
        w = weights[gs, ms]
        labels[gs, ms] = torch.where((best > 0.5) & (w > 0), arg, -1)
        counts[gs] += (r * w.unsqueeze(-1)).sum(1, dtype=torch.float64)
    return labels, counts
