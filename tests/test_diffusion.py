"""The diffusion process (DESIGN 2.5) against float64 references and analytic cases."""

import numpy as np
import pytest
import torch

from disdis.diffusion import (DiffusionConfig, NoiseLoss, NoiseSchedule, ddim_invert, ddim_sample,
                              ddim_timesteps, make_betas)
from disdis.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def schedule(**kw) -> NoiseSchedule:
    return NoiseSchedule(make_betas(DiffusionConfig(**kw)))


def test_betas_match_float64_reference():
    betas = make_betas(DiffusionConfig())
    ref = np.linspace(np.sqrt(0.0015), np.sqrt(0.0155), 1000, dtype=np.float64) ** 2
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    np.testing.assert_allclose(betas.numpy(), ref, rtol=1e-14, atol=0)
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-12) and betas[-1].item() == pytest.approx(0.0155, rel=1e-12)
    abar = NoiseSchedule(betas).alphas_cumprod.numpy()
    np.testing.assert_allclose(abar, np.cumprod(1.0 - ref), rtol=1e-12)
    linear = make_betas(DiffusionConfig(schedule="linear", num_steps=10))
    np.testing.assert_allclose(linear.numpy(), np.linspace(0.0015, 0.0155, 10), rtol=1e-14)


def test_bad_schedule_settings_are_config_errors():
    with pytest.raises(ConfigError, match="beta_start"):
        make_betas(DiffusionConfig(beta_start=0.1, beta_end=0.01))
    with pytest.raises(ConfigError, match="ddim_steps"):
        ddim_timesteps(1000, 1001)
    with pytest.raises(ConfigError, match="diffusion.loss"):
        NoiseLoss(schedule(), kind="huber")


def test_q_sample_matches_its_definition_and_statistics():
    s = schedule()
    t = torch.tensor([0, 499, 999])
    x0, noise = torch.full((3, 1, 2, 2), 0.7), torch.full((3, 1, 2, 2), -1.3)
    abar = s.alphas_cumprod[t].numpy()
    expected = np.sqrt(abar) * 0.7 + np.sqrt(1 - abar) * -1.3
    np.testing.assert_allclose(s.q_sample(x0, t, noise)[:, 0, 0, 0].numpy(), expected, rtol=1e-6)
    # x_t | x0 ~ N(sqrt(abar) x0, (1 - abar) I): check mean and variance on many draws
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for step in (10, 500, 990):
        xt = s.q_sample(torch.full((n,), 2.0), torch.full((n,), step), torch.randn(n, generator=g))
        a = s.alphas_cumprod[step].item()
        assert xt.mean().item() == pytest.approx(2.0 * a ** 0.5, abs=5 * ((1 - a) / n) ** 0.5)
        assert xt.var().item() == pytest.approx(1 - a, rel=5 * (2 / n) ** 0.5)


def test_predict_x0_inverts_q_sample():
    s = schedule()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (16,), generator=g)
    torch.testing.assert_close(s.predict_x0(s.q_sample(x0, t, noise), t, noise), x0, rtol=1e-10, atol=1e-10)


def test_noise_loss_is_l1_of_the_noise_error_and_calls_the_model_right():
    s = schedule()
    g = torch.Generator().manual_seed(2)
    x0, noise, t = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g), torch.tensor([1, 2, 3, 4])
    cond = torch.randn(4, 5, 8)
    seen = {}

    def model(x_t, steps, c):
        seen.update(x_t=x_t, steps=steps, c=c)
        return torch.zeros_like(x_t)

    loss = NoiseLoss(s)(model, x0, cond, t=t, noise=noise)
    assert loss.item() == pytest.approx(noise.abs().mean().item())
    torch.testing.assert_close(seen["x_t"], s.q_sample(x0, t, noise))
    assert torch.equal(seen["steps"], t) and seen["c"] is cond
    l2 = NoiseLoss(s, "l2")(lambda x_t, steps: torch.zeros_like(x_t), x0, t=t, noise=noise)
    assert l2.item() == pytest.approx(noise.square().mean().item())
    # a perfect model has zero loss; drawn steps are seeded
    oracle = NoiseLoss(s)(lambda x_t, steps: (x_t - s.abar(steps, x_t).sqrt() * x0) / (1 - s.abar(steps, x_t)).sqrt(),
                          x0, generator=torch.Generator().manual_seed(3))
    assert oracle.item() < 1e-5


def test_ddim_timesteps():
    taus = ddim_timesteps(1000, 100)
    assert len(taus) == 100 and taus[0] == 0 and taus[-1] == 999 and taus == sorted(set(taus))
    assert ddim_timesteps(1000, 1000) == list(range(1000))
    assert ddim_timesteps(1000, 1) == [999]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_an_oracle_recovers_the_image(eta):
    """With eps computed from x_t and the true x0, every step's x0 estimate is x0 exactly."""
    s = schedule()
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)

    def oracle(x_t, t):
        a = s.abar(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    noise = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    out = ddim_sample(oracle, noise, s, steps=50, eta=eta, generator=g)
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9)


def gaussian_eps(s: NoiseSchedule, std: float):
    """The exact noise predictor E[eps | x_t] for data x0 ~ N(0, std^2 I):
    sqrt(1 - abar) x_t / (abar std^2 + 1 - abar)."""
    def eps(x_t, t):
        a = s.abar(t, x_t)
        return (1 - a).sqrt() * x_t / (a * std ** 2 + 1 - a)
    return eps


def test_ddim_sampling_of_gaussian_data_reaches_the_data_scale():
    """The probability-flow ODE maps x_T to x_0 = std x_T / sqrt(abar_T std^2 + 1 - abar_T) for
    Gaussian data; DDIM with the exact eps converges to it (first order) as the steps get finer."""
    s, std = schedule(), 0.5
    a_T = s.alphas_cumprod[-1].item()
    x_T = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    exact = std / (a_T * std ** 2 + 1 - a_T) ** 0.5
    err = [abs(ddim_sample(gaussian_eps(s, std), x_T, s, steps=n).item() - exact) / exact for n in (10, 100, 1000)]
    assert err[2] < 1e-2 and err[2] < err[1] / 5 < err[0] / 25


def test_ddim_invert_then_sample_round_trip():
    """Inversion then sampling with the same fixed model is the identity up to a first-order
    discretisation error: near-identity for many steps."""
    s = schedule()
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(6)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()
    exact = gaussian_eps(s, 0.5)
    nonlinear = lambda x_t, t: exact(x_t, t) + 0.1 * torch.tanh(conv(x_t))  # noqa: E731
    x0 = 0.5 * torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for model in (exact, nonlinear):
            noise = ddim_invert(model, x0, s, steps=1000)
            assert noise.std().item() == pytest.approx(1.0, abs=0.2)  # inversion reaches the noise scale
            errors = [(ddim_sample(model, ddim_invert(model, x0, s, steps=n), s, steps=n) - x0).abs().max().item()
                      / x0.abs().max().item() for n in (100, 1000)]
            assert errors[1] < 5e-3 and errors[1] < errors[0] / 5


def test_ddim_step_returns_the_next_sample_and_the_x0_prediction():
    """With the true noise, x0_hat is x0 exactly (float64), a step to abar_next = 1 returns x0, and
    the step to any abar_next lands on q_sample(x0, eps) at abar_next; golden numbers for eta = 1."""
    from disdis.diffusion import ddim_step
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, dtype=torch.float64, generator=g), torch.randn(4, 3, dtype=torch.float64, generator=g)
    abar, abar_next = 0.3, 0.7
    x = abar ** 0.5 * x0 + (1 - abar) ** 0.5 * eps
    out = ddim_step(eps, x, abar, abar_next)
    assert torch.allclose(out.pred_x0, x0, atol=1e-12)
    assert torch.allclose(out.prev_sample, abar_next ** 0.5 * x0 + (1 - abar_next) ** 0.5 * eps, atol=1e-12)
    assert torch.allclose(ddim_step(eps, x, abar, 1.0).prev_sample, x0, atol=1e-12)
    back = ddim_step(eps, out.prev_sample, abar_next, abar)  # eta 0 toward the noise: the inversion step
    assert torch.allclose(back.prev_sample, x, atol=1e-12)
    # eta = 1: sigma = sqrt((1 - 0.7) / 0.7) * sqrt(1 - 0.3 / 0.7) = 0.4949..., noise from the generator
    one = ddim_step(torch.ones(1), torch.ones(1), abar, abar_next, eta=1.0, generator=torch.Generator().manual_seed(3))
    sigma = ((1 - abar_next) / (1 - abar)) ** 0.5 * (1 - abar / abar_next) ** 0.5
    z = torch.randn(1, generator=torch.Generator().manual_seed(3))
    expected = abar_next ** 0.5 * (1 - (1 - abar) ** 0.5) / abar ** 0.5 + (1 - abar_next - sigma ** 2) ** 0.5 + sigma * z
    assert sigma == pytest.approx(0.4948717, abs=1e-6) and torch.allclose(one.prev_sample, expected)
