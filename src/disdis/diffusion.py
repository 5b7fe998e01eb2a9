"""The diffusion process (docs/method.md, "Diffusion process"), separate from the networks.

Networks enter only as ``model_fn(x_t, t) -> eps``, a closure that predicts the
noise in ``x_t`` at integer steps ``t`` (B,) (conditioning on tokens lives in the
closure). Notation follows Ho et al. 2020 (DDPM): ``alpha_t = 1 - beta_t``,
``abar_t = prod_{s <= t} alpha_s`` with steps indexed 0..T-1.

- :func:`make_betas`: the "linear in sqrt" schedule of latent diffusion.
- :class:`NoiseSchedule`: forward noising ``q(x_t | x_0)`` (DDPM eq. 4) and its inverse.
- :class:`NoiseLoss`: the simplified noise-prediction objective (DDPM eq. 14), L1 by default.
- :func:`ddim_step`: one DDIM update (Song et al. 2021, eq. 12), returning the next sample and
  the x0 prediction (:class:`DDIMStepOutput`), stateless;
- :func:`ddim_sample` / :func:`ddim_invert`: loops of that step, down to x0 and (eta = 0)
  back up to the noise that regenerates an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from disdis import draws
from disdis.errors import ConfigError

ModelFn = Callable[..., torch.Tensor]


@dataclass
class DiffusionConfig:
    """Diffusion hyper-parameters; defaults are the paper's (released) configuration."""

    num_steps: int = 1000
    schedule: Literal["linear_sqrt", "linear"] = "linear_sqrt"
    beta_start: float = 0.0015
    beta_end: float = 0.0155
    loss: Literal["l1", "l2"] = "l1"
    ddim_steps: int = 100
    ddim_eta: float = 0.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"diffusion.num_steps: expected a positive integer, got {self.num_steps}")
        if self.ddim_steps < 1:
            raise ConfigError(f"diffusion.ddim_steps: expected a positive integer, got {self.ddim_steps}")
        if self.ddim_eta < 0:
            raise ConfigError(f"diffusion.ddim_eta: expected 0 or more, got {self.ddim_eta}")


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """The T noise variances as float64.

    ``linear_sqrt``: ``beta_t = (linspace(sqrt(beta_start), sqrt(beta_end), T)_t)^2``
    (latent diffusion's "linear" schedule); ``linear``: ``linspace(beta_start, beta_end, T)``
    (DDPM's).
    """
    if cfg.num_steps < 1:
        raise ConfigError(f"diffusion.num_steps: expected a positive integer, got {cfg.num_steps}")
    if not 0.0 < cfg.beta_start <= cfg.beta_end < 1.0:
        raise ConfigError(f"diffusion.beta_start/beta_end: expected 0 < beta_start <= beta_end < 1, "
                          f"got {cfg.beta_start}, {cfg.beta_end}")
    if cfg.schedule == "linear_sqrt":
        return torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, cfg.num_steps, dtype=torch.float64) ** 2
    if cfg.schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_steps, dtype=torch.float64)
    raise ConfigError(f"diffusion.schedule: expected 'linear_sqrt' or 'linear', got {cfg.schedule!r}")


class NoiseSchedule:
    """Quantities derived from the betas (kept in float64, cast on use) and the forward process."""

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self._cache: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "NoiseSchedule":
        return cls(make_betas(cfg))

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` for integer steps ``t`` (B,), shaped (B, 1, ..., 1) to broadcast against ``like``."""
        table = self._cache.get(like.device)
        if table is None:
            table = self._cache[like.device] = self.alphas_cumprod.to(like.device)
        a = table[t.to(like.device).long()]
        return a.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0)``: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4)."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`q_sample` for ``x_0``: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        a = self.abar(t, x_t)
        return (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()


class NoiseLoss:
    """The noise-prediction objective ``E_{t, x_0, eps} |eps - eps_theta(x_t, t)|`` (DDPM eq. 14 with
    L1 instead of the squared error, as released; ``kind="l2"`` gives DDPM's), t ~ U{0..T-1}.

    ``loss(model_fn, x0, cond)`` calls ``model_fn(x_t, t, cond)``, or ``model_fn(x_t, t)`` when
    ``cond`` is None, and returns the mean over all elements. ``t`` and ``noise`` may be given
    (tests, variance-reduced schedules); otherwise they are drawn with ``generator`` (by default the
    thread's training generator, :func:`disdis.draws.generator`).
    """

    def __init__(self, schedule: NoiseSchedule, kind: Literal["l1", "l2"] = "l1"):
        if kind not in ("l1", "l2"):
            raise ConfigError(f"diffusion.loss: expected 'l1' or 'l2', got {kind!r}")
        self.schedule = schedule
        self.kind = kind

    def __call__(self, model_fn: ModelFn, x0: torch.Tensor, cond: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        generator = generator if generator is not None else draws.generator()
        if t is None:
            t = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), device=x0.device, generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.schedule.q_sample(x0, t, noise)
        eps = model_fn(x_t, t) if cond is None else model_fn(x_t, t, cond)
        err = eps - noise
        return err.abs().mean() if self.kind == "l1" else err.square().mean()


def ddim_timesteps(num_steps: int, steps: int) -> list[int]:
    """The increasing sub-sequence tau of {0..T-1} that DDIM visits: ``steps`` evenly spaced steps
    from 0 to T-1 (rounded), so sampling always starts at the last, noisiest step."""
    if not 1 <= steps <= num_steps:
        raise ConfigError(f"diffusion.ddim_steps: expected 1..{num_steps}, got {steps}")
    if steps == 1:
        return [num_steps - 1]
    return [round(i * (num_steps - 1) / (steps - 1)) for i in range(steps)]


@dataclass
class DDIMStepOutput:
    prev_sample: torch.Tensor  # x at the next step of the loop
    pred_x0: torch.Tensor      # the model's estimate of x_0 from this step


def ddim_step(eps: torch.Tensor, x: torch.Tensor, abar: float, abar_next: float, eta: float = 0.0, *,
              generator: torch.Generator | None = None) -> DDIMStepOutput:
    """One DDIM update of ``x`` at cumulative signal ``abar`` to ``abar_next``, given the predicted
    noise ``eps`` (Song et al. 2021, eq. 12):

        x0_hat  = (x - sqrt(1 - abar) eps) / sqrt(abar)
        sigma   = eta * sqrt((1 - abar_next) / (1 - abar)) * sqrt(1 - abar / abar_next)
        x_next  = sqrt(abar_next) x0_hat + sqrt(1 - abar_next - sigma^2) eps + sigma z

    ``abar_next`` = 1 returns x0_hat. With eta = 0 and ``abar_next`` < ``abar`` the same formula
    steps toward the noise: the DDIM inversion.
    """
    x0_hat = (x - (1.0 - abar) ** 0.5 * eps) / abar ** 0.5
    sigma = eta * ((1.0 - abar_next) / (1.0 - abar)) ** 0.5 * (1.0 - abar / abar_next) ** 0.5 if eta else 0.0
    x_next = abar_next ** 0.5 * x0_hat + max(1.0 - abar_next - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x_next = x_next + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return DDIMStepOutput(x_next, x0_hat)


def ddim_sample(model_fn: ModelFn, noise_or_shape: torch.Tensor | Sequence[int], schedule: NoiseSchedule,
                steps: int = 100, eta: float = 0.0, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None,
                progress: Callable[[Sequence[int]], Sequence[int]] | None = None) -> torch.Tensor:
    """Run the DDIM sampler from ``x_{tau_S}`` (given noise, or drawn for a shape) down to ``x_0``.

    Each step from tau_i to tau_{i-1} is :func:`ddim_step` with eps = model_fn(x, tau_i) and
    abar_{-1} = 1, so the last step returns x0_hat. eta = 0 is deterministic, eta = 1 is
    DDPM's ancestral sampler on the sub-sequence. ``progress`` may wrap the step list (a bar).
    """
    if isinstance(noise_or_shape, torch.Tensor):
        x = noise_or_shape
    else:
        x = torch.randn(tuple(noise_or_shape), generator=generator, device=device)
    taus = ddim_timesteps(schedule.num_steps, steps)
    abars = [*schedule.alphas_cumprod[taus].tolist()]
    order = list(reversed(range(len(taus))))
    for i in (progress(order) if progress else order):
        a, a_prev = abars[i], (abars[i - 1] if i > 0 else 1.0)
        eps = model_fn(x, torch.full((x.shape[0],), taus[i], device=x.device, dtype=torch.long))
        x = ddim_step(eps, x, a, a_prev, eta, generator=generator).prev_sample
    return x


def ddim_invert(model_fn: ModelFn, x0: torch.Tensor, schedule: NoiseSchedule, steps: int = 100, *,
                progress: Callable[[Sequence[int]], Sequence[int]] | None = None) -> torch.Tensor:
    """Map ``x_0`` to the noise ``x_{tau_S}`` that :func:`ddim_sample` (eta = 0) maps back to it.

    Runs the eta = 0 update of eq. 12 backwards, :func:`ddim_step` from abar_{i-1} to abar_i
    (abar_{-1} = 1):
        x0_hat = (x - sqrt(1 - abar_{i-1}) eps) / sqrt(abar_{i-1}),
        x     <- sqrt(abar_i) x0_hat + sqrt(1 - abar_i) eps.
    The exact inverse would need eps at the unknown ``x_{tau_i}``; this uses the model at the
    known point with the target step, eps = model_fn(x_{tau_{i-1}}, tau_i), an error that
    vanishes as the steps get finer (the ODE view of DDIM, Song et al. 2021, section 4.3).
    """
    taus = ddim_timesteps(schedule.num_steps, steps)
    abars = [*schedule.alphas_cumprod[taus].tolist()]
    x = x0
    order = list(range(len(taus)))
    for i in (progress(order) if progress else order):
        a_prev, a = (abars[i - 1] if i > 0 else 1.0), abars[i]
        eps = model_fn(x, torch.full((x.shape[0],), taus[i], device=x.device, dtype=torch.long))
        x = ddim_step(eps, x, a_prev, a).prev_sample
    return x
