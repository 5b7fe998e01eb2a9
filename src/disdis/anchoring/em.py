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

Points are processed in fixed-size chunks (a Python loop over chunks, never
over points), so memory stays bounded for any number of points and a group's
result does not depend on which other groups share the batch. Large products
run in the points' dtype (float32 by default); parameters and accumulated sums
are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

POINT_CHUNK = 512           # points per chunk; fixed so results never depend on the batch composition
WORKSPACE_BYTES = 4 << 20   # bound on the (groups, K, points, D) intermediates of one chunk


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


def component_log_probs(x: Tensor, f: Factorised) -> tuple[Tensor, Tensor]:
    """log pi_k N(x_n | mu_k, S_k) as (G, K, m) and the whitened residuals y as (G, K, m, D), for x (G, m, D)."""
    y = (x.unsqueeze(1) - f.means.unsqueeze(2)) @ f.whitening.transpose(-1, -2)
    return f.log_norm.unsqueeze(-1) - 0.5 * torch.linalg.vector_norm(y, dim=-1).square_(), y


def log_responsibilities(logp: Tensor) -> tuple[Tensor, Tensor]:
    """log sum_k exp(logp_k) (G, m) and the responsibilities (G, K, m), with one exp pass
    (log-sum-exp around the largest term)."""
    top = logp.amax(dim=1, keepdim=True)
    e = torch.exp(logp - top)
    total = e.sum(dim=1, keepdim=True)
    return (top + total.log()).squeeze(1), e / total


def chunks(x: Tensor, k: int):
    """(group slice, point slice) blocks whose (G, K, m, D) intermediates fit the workspace
    (small enough to stay in cache: the E- and M-step make several passes over them)."""
    g, m, d = x.shape
    per_group = max(1, k * min(m, POINT_CHUNK) * d * x.element_size() * 2)
    groups = max(1, WORKSPACE_BYTES // per_group)
    for g0 in range(0, g, groups):
        for m0 in range(0, m, POINT_CHUNK):
            yield slice(g0, min(g, g0 + groups)), slice(m0, min(m, m0 + POINT_CHUNK))


def em_step(x: Tensor, weights: Tensor, mix: Mixture, reg: float) -> tuple[Mixture, Tensor]:
    """One EM iteration for every group; returns the new mixture and the mean log-likelihood
    per unit point weight under the *old* parameters (G,), as in the module docstring."""
    g, _, d = x.shape
    k = mix.means.shape[1]
    f = Factorised.of(mix, reg, x.dtype)
    f64 = dict(dtype=torch.float64, device=x.device)
    nk = torch.zeros(g, k, **f64)
    s1 = torch.zeros(g, k, d, **f64)
    s2 = torch.zeros(g, k, d, d, **f64)
    loglik = torch.zeros(g, **f64)
    for gs, ms in chunks(x, k):
        part = Factorised(f.chol[gs], f.means[gs], f.whitening[gs], f.log_norm[gs])
        logp, y = component_log_probs(x[gs, ms], part)
        w = weights[gs, ms]
        lse, r = log_responsibilities(logp)
        r = r * w.unsqueeze(1)
        nk[gs] += r.sum(-1, dtype=torch.float64)
        s1[gs] += (r.unsqueeze(-2) @ y).squeeze(-2).double()
        y.mul_(r.sqrt().unsqueeze(-1))  # y <- sqrt(r) y, so that y^T y = sum r y y^T
        s2[gs] += (y.transpose(-1, -2) @ y).double()
        loglik[gs] += (lse * w).sum(-1, dtype=torch.float64)
    return m_step(mix, f.chol, nk, s1, s2), loglik / weights.sum(-1, dtype=torch.float64).clamp_min(1e-300)


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
        part = Factorised(f.chol[gs], f.means[gs], f.whitening[gs], f.log_norm[gs])
        logp, _ = component_log_probs(x[gs, ms], part)
        _, r = log_responsibilities(logp)
        best, arg = r.max(dim=1)
        w = weights[gs, ms]
        labels[gs, ms] = torch.where((best > 0.5) & (w > 0), arg, -1)
        counts[gs] += (r * w.unsqueeze(1)).sum(-1, dtype=torch.float64)
    return labels, counts
