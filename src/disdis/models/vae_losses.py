"""The loss terms of the VAE family, each a small function of tensors (docs/baselines.md).

Every term is per sample, shape (B,); the methods average over the batch.

    bernoulli_nll(logits, x)     -sum_pixels log Bern(x | sigmoid(logits)),  x in [0, 1]
    gaussian_kl(mu, logvar)      KL(N(mu, exp(logvar)) || N(0, I)) = 1/2 sum(mu^2 + e^logvar - logvar - 1)
    total_correlation(z, ...)    beta-TCVAE's minibatch-weighted-sampling estimate of
                                 KL(q(z) || prod_j q(z_j)) (Chen et al. 2018, eq. S6):
                                 log q(z_i)  ~ logsumexp_k log q(z_i | x_k) - log(N M)
                                 log q(z_ij) ~ logsumexp_k log q(z_ij | x_k) - log(N M)
    density_ratio_tc(logits)     FactorVAE's estimate log D(z) / (1 - D(z)) = logit_joint - logit_product
    discriminator_loss(...)      its critic's cross-entropy: joint codes are class 0, permuted ones class 1
    permute_dims(z)              each latent dimension shuffled across the batch on its own: samples of
                                 prod_j q(z_j) (Kim & Mnih 2018, Algorithm 2)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return gaussian_kl_units(mu, logvar).sum(1)


def gaussian_kl_units(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B, N): KL(N(mu, exp(logvar)) || N(0, 1)) of each unit of each sample."""
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (the global generator, seeded per step by the loop)."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mu, exp(logvar)), element by element (broadcasting)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).square() * (-logvar).exp())


def total_correlation(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int) -> torch.Tensor:
    """The minibatch-weighted-sampling estimate of the total correlation at each sample z_i of the batch."""
    batch = len(z)
    log_q = gaussian_log_density(z[:, None], mu[None], logvar[None])  # (i, k, j): log q(z_ij | x_k)
    norm = math.log(batch * dataset_size)
    log_qz = torch.logsumexp(log_q.sum(2), dim=1) - norm
    log_prod_marginals = (torch.logsumexp(log_q, dim=1) - norm).sum(1)
    return log_qz - log_prod_marginals


def density_ratio_tc(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 0] - logits[:, 1]


def discriminator_loss(joint_logits: torch.Tensor, permuted_logits: torch.Tensor) -> torch.Tensor:
    """(B,) per pair: 1/2 (CE(joint, class 0) + CE(permuted, class 1))."""
    zeros = torch.zeros(len(joint_logits), dtype=torch.long, device=joint_logits.device)
    return 0.5 * (F.cross_entropy(joint_logits, zeros, reduction="none")
                  + F.cross_entropy(permuted_logits, zeros + 1, reduction="none"))


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    columns = [z[torch.randperm(len(z), device=z.device), j] for j in range(z.shape[1])]
    return torch.stack(columns, dim=1)
