"""The VAE family: each loss term against an independent computation, the networks' sizes from the
layer arithmetic, and each method trained, resumed bit-exactly and evaluated through the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from disdis.cli import main
from disdis.models import build_model
from disdis.models.vae_losses import (bernoulli_nll, density_ratio_tc, discriminator_loss, gaussian_kl,
                                      permute_dims, total_correlation)
from disdis.run_config import load_run_config
from disdis.train.checkpoint import list_checkpoints, load_checkpoint


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))
    assert gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0  # q = p


def test_bernoulli_nll_is_the_pixel_sum_of_the_log_likelihood():
    g = torch.Generator().manual_seed(1)
    logits, x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits)
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(bernoulli_nll(logits, x), expected)


def test_total_correlation_matches_a_brute_force_sum():
    """Minibatch-weighted sampling, written out with loops over samples, codes and dimensions."""
    rng = np.random.default_rng(2)
    batch, dims, size = 4, 3, 100
    mu, logvar, z = rng.normal(size=(batch, dims)), rng.normal(size=(batch, dims)) * 0.5, rng.normal(size=(batch, dims))
    sd = np.exp(0.5 * logvar)
    expected = []
    for i in range(batch):
        joint = sum(np.prod([norm.pdf(z[i, j], mu[k, j], sd[k, j]) for j in range(dims)]) for k in range(batch))
        marginals = [sum(norm.pdf(z[i, j], mu[k, j], sd[k, j]) for k in range(batch)) for j in range(dims)]
        expected.append(math.log(joint / (batch * size)) - sum(math.log(m / (batch * size)) for m in marginals))
    got = total_correlation(*(torch.tensor(a) for a in (z, mu, logvar)), dataset_size=size)
    assert np.allclose(got.numpy(), expected, rtol=1e-10)


def test_density_ratio_and_critic_signs():
    """A critic sure that codes are joint samples (logit 0 high) estimates a positive TC; its loss is
    low when it tells joint (class 0) from permuted (class 1) codes, high when it has them swapped."""
    joint = torch.tensor([[3.0, -1.0], [2.0, 0.0]])
    assert (density_ratio_tc(joint) == torch.tensor([4.0, 2.0])).all()
    right = discriminator_loss(joint, joint.flip(1)).mean()
    wrong = discriminator_loss(joint.flip(1), joint).mean()
    assert right < 0.2 < math.log(2) < wrong
    even = torch.zeros(2, 2)
    assert torch.allclose(discriminator_loss(even, even), torch.full((2,), math.log(2)))


def test_permute_dims_keeps_each_marginal_and_breaks_the_joint():
    torch.manual_seed(0)
    base = torch.randn(512, 1)
    z = torch.cat([base, base, -base], dim=1)  # perfectly dependent dimensions
    shuffled = permute_dims(z)
    for j in range(3):
        assert torch.equal(shuffled[:, j].sort().values, z[:, j].sort().values)
    corr = torch.corrcoef(shuffled.T)
    assert corr[0, 1].abs() < 0.15 and corr[0, 2].abs() < 0.15


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_networks_have_the_sizes_of_the_standard_architecture():
    """disentanglement_lib's conv encoder / deconv decoder at 64x64x3 with 10 latents, and FactorVAE's
    critic, counted from the layer sizes."""
    cfg = load_run_config("factor_vae", ["data.path=x"])
    model = build_model(cfg)
    convs = (3 * 32 + 32 * 32 + 32 * 64 + 64 * 64) * 16 + (32 + 32 + 64 + 64)
    assert count(model.encoder) == convs + (64 * 4 * 4 * 256 + 256) + (256 * 20 + 20)
    deconvs = (64 * 64 + 64 * 32 + 32 * 32 + 32 * 3) * 16 + (64 + 32 + 32 + 3)
    assert count(model.decoder) == (10 * 256 + 256) + (256 * 1024 + 1024) + deconvs
    assert count(model.critic) == (10 * 1000 + 1000) + 5 * (1000 * 1000 + 1000) + (1000 * 2 + 2)
    groups = model.param_groups(cfg.train)
    assert groups[1]["betas"] == (0.5, 0.9) and groups[1]["lr"] == 1e-4 and all(g["weight_decay"] == 0 for g in groups)
    assert load_run_config("beta_vae", ["data.path=x", "data.resolution=32"]).method.resolution == 32


def test_factor_vae_terms_train_each_part_on_its_own_objective():
    """The VAE's TC term moves the codes, never the critic: the critic's gradient is the same for any
    gamma, the encoder's is not."""
    grads = {}
    for gamma in (0.0, 100.0):
        cfg = load_run_config("factor_vae", ["data.path=x", "data.resolution=16", f"method.gamma={gamma}"])
        torch.manual_seed(0)
        model = build_model(cfg)
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        torch.manual_seed(2)
        model(x)["loss"].backward()
        grads[gamma] = ([p.grad.clone() for p in model.critic.parameters()],
                        [p.grad.clone() for p in model.encoder.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(grads[0.0][0], grads[100.0][0]))
    assert not all(torch.allclose(a, b) for a, b in zip(grads[0.0][1], grads[100.0][1]))


def tiny_vae(name, data, run, kimg):
    return ["train", name, f"data.path={data}", "data.kind=null", f"run_dir={run}", "data.resolution=16", "train.batch_size=16",
            f"train.total_kimg={kimg}", "train.checkpoint_every_kimg=0.064", "train.log_every_kimg=0.064",
            "train.device=cpu", "train.num_workers=0", "train.probe_images=64", "eval.batch_size=64"]


@pytest.mark.parametrize("name", ["beta_vae", "beta_tcvae", "factor_vae"])
def test_each_vae_trains_resumes_exactly_and_evaluates(tmp_path, shapes3d_grid_npz, name):
    assert main(tiny_vae(name, shapes3d_grid_npz, tmp_path / "a", 0.128)) == 0
    assert main(tiny_vae(name, shapes3d_grid_npz, tmp_path / "b", 0.064)) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "train.total_kimg=0.128"]) == 0
    a, meta_a = load_checkpoint(list_checkpoints(tmp_path / "a/checkpoints")[-1])
    b, meta_b = load_checkpoint(list_checkpoints(tmp_path / "b/checkpoints")[-1])
    assert meta_a["step"] == meta_b["step"] == 8 and sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if name == "beta_tcvae":  # N is the training set's size
        assert int(a["model/dataset_size"]) == 288
    assert main(["evaluate", str(tmp_path / "a"), "eval.num_train=200", "eval.num_test=100", "eval.num_eval=100",
                 "eval.num_variance_estimate=200", "eval.metrics=[factor_vae, dci, mig]"]) == 0
    result = json.loads((tmp_path / "a/metrics.json").read_text())
    assert set(result["metrics"]) == {"factor_vae", "dci", "mig"} and result["run"]["representation"] == "scalar"
    assert main(["evaluate", str(tmp_path / "a"), "eval.representation=tokens_pca"]) == 2
