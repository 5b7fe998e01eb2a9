"""An autoencoder on the paper's feature extractor (``method: {name: autoencoder}``): the unsupervised
warm start of a diffusion run's extractor (docs/method.md, "Extractor warm start").

    u    = f(x)           (B, N)   the paper's feature extractor (method.units)
    x^   = D(u)                    a deconvolutional decoder (the VAE family's)
    loss = mean (x^ - x)^2

``loss`` (:class:`AutoencoderLoss`) adds two terms, each off by default:

- ``beta > 0`` makes it variational, a beta-VAE whose posterior mean is the extractor's output (a
  second last layer on the extractor's features gives log sigma^2): the decoder reads
  z = u + sigma * eps, eps ~ N(0, I), and beta KL(N(u, sigma^2) || N(0, I)) is added per image.
  Its diagonal posterior prefers units aligned with independent factors; a deterministic code
  has no reason to be.
- ``capacity = C > 0`` (with beta > 0) replaces beta KL by beta |KL - C_t|, C_t rising linearly
  from 0 nats to C over the first ``capacity_kimg`` (Burgess et al. 2018, "Understanding
  disentangling in beta-VAE"): a strong pressure that still lets the code grow, one factor at a
  time in the order of their effect on the error, so that factors with few pixels (scale, shape)
  are taken in late rather than dropped (beta 4 drops them; docs/demo-study.md).
- ``beta_warmup_kimg > 0`` raises the KL's weight linearly from 0 to beta over that many images
  (a KL warm-up): the code takes in the factors before the pressure to shed units begins.
- ``free_nats = f > 0`` (with beta > 0; "free bits", Kingma et al. 2016) counts each unit's KL,
  averaged over the batch, as at least f nats: a unit under f feels no pull towards the prior,
  so units are not shut off before the later, smaller factors could use them.
- ``tc_weight = t > 0`` (with beta > 0) adds t times the total correlation of the posterior
  samples, beta-TCVAE's minibatch-weighted-sampling estimate (docs/baselines.md): a penalty on
  units that depend on each other, aimed at the alignment rather than the amount of information.
- ``gradient_weight = w > 0`` adds w times the squared error of the image's finite differences
  along x and y (``gradient: signed``, a gradient-difference loss), or of each pixel's edge
  strength, the root of its channels' summed squared differences (``gradient: magnitude``, the
  same whatever the colours on either side), or of tanh(strength / ``gradient_scale``) (``gradient:
  saturated``: whether an edge is there, nearly whatever the two colours' contrast, which the
  magnitude still carries). On the demo grid the pixels give scale, shape and orientation 0.3-0.6 %
  of their variance, the finite differences 1.4-1.8 % (main effect) and 32-44 % along the lines
  where each alone changes (``benchmarks/factor_signal.py --gradients``): silhouettes are edges,
  and the hues' large areas have few.
- ``gradient_weight_end = w1`` with ``gradient_ramp_kimg = [a, b]`` moves that weight linearly from
  w to w1 between a and b kimg (held before and after): edges first, so the code takes in the
  geometry, then mostly pixels, so the hues of small areas (the object's) are not left out.
- ``beta_end = b1`` moves the KL's weight from beta to b1 across the same window: a strong pull to
  the prior while the edges weigh most gathers the geometry into few units (at beta 1 it spreads
  over all of them). The units it switches off do not switch on again for the hues; with
  ``free_nats`` they stay open (docs/method.md, docs/demo-study.md: measured).
- ``free_nats_end = f1`` moves the free bits from ``free_nats`` to f1 across the same window. Free
  bits per unit make it cheaper for a factor of little signal to spread over several units, each
  under f, than to take one: on the demo grid shape did so, and those units, under ``hold_nats``,
  were not held. With none while the geometry is gathered, shape took a held unit in the seeds
  where it had not; the hues, after the hold, still want free bits (docs/demo-study.md).
- ``free_nats_pooled: true`` pools the free bits over the code: the sum of the units' batch-mean
  KLs counts as at least N f. The code keeps the same free budget, but a factor pays the same
  whether it takes one unit or spreads over several, so the spreading above earns nothing.
- ``hold_weight = h > 0`` (with beta > 0 and a ramp) holds the units the code uses when the ramp
  begins: at ``gradient_ramp_kimg[0]`` the units whose KL (a running mean over steps) exceeds
  ``hold_nats`` are marked, a frozen copy of the extractor is kept, and from then on h times the
  squared distance of the marked units' means from the copy's is added per image. The hues,
  arriving with the pixels, must then take units of their own instead of taking over the
  geometry's (a diagnostic of why the factors spread; docs/demo-study.md).
- ``gather_units = k > 0`` (with a hold) holds, instead of the units over ``hold_nats``, the code
  gathered into k units: at the hold the extractor encodes the training images (all, or a fixed random
  subset of 10000), the k leading principal components of the posterior means, standardised and turned
  to the largest kurtosis (:func:`disdis.ica.gathered_components`), are folded into the frozen copy's
  last layer, and units 0 to k - 1 are held to them. Free bits let a factor of little signal spread
  over several units at the floor, each under ``hold_nats`` and each carrying it only in part; the
  code's variance still lies in a few directions (on the demo grid about six, two for each of three
  3-valued geometry factors), which the components take whole (docs/demo-study.md, session ninth).
- ``reopen`` (with a hold): when the hold is taken, the ``extractor`` (and the log variance's
  layer), the ``decoder`` or ``all`` of them start afresh, as at initialisation, with fresh
  optimizer moments; the held units are then taught back by the hold's term alone. A decoder
  trained on the colour-blind edges stalls the hues' arrival by 50-100 kimg after the edges stop;
  drawn anew, it lets them in within 16 (docs/demo-study.md). The demo preset draws ``all`` anew.
- ``hessian_weight = g > 0``: the Hessian penalty (Peebles et al., ECCV 2020) on the decoder. For
  Rademacher vectors v, Var_v(v^T H_i v) = 2 sum_{j != k} (d^2 D_i / dz_j dz_k)^2 for each output
  value i: the decoder's mixed second derivatives, which a code needs where a unit carries two
  factors jointly (a hue unit that reads "the object's hue equals the floor's", whose meaning
  depends on another unit) and a code of one factor per unit does not. Estimated on the first
  ``hessian_images`` images of the batch with two v's and central differences of step
  ``hessian_step`` at the code (held fixed: the decoder is what it shapes), summed over the values.
  ``hessian_weight_end = g1`` moves its weight across the ramp too; while the weight is 0 the
  penalty is not computed (nor drawn for: the run's random stream is that of a run without it),
  and it logs 0.

All per image, summed over its values and divided by their number:

    loss = mean_batch [ sum (D(z) - x)^2 + w sum (dD(z) - dx)^2 + beta_t |KL - C_t| + t TC
                        + h sum_held (u_j - u0_j)^2 + g sum Var_v(v^T H v) ] / pixels

(with free bits, KL is sum_j max(f, mean_batch KL_j) there; with every term off, exactly the mean
squared error above). It is also a run of its own (its units,
the posterior means, can be evaluated like any method's); a diffusion run with
``method.extractor_init: autoencoder`` trains one inside its folder (``extractor_init_loss``) and
starts from its extractor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from disdis.errors import ConfigError
from disdis.ica import gathered_components
from disdis.models import MethodConfig, register
from disdis.models.method import Method
from disdis.models.unit_unmixing import fold_linear
from disdis.models.vae import DatasetSize
from disdis.models.vae_losses import gaussian_kl_units, reparameterize, total_correlation
from disdis.nn.units import FeatureExtractor, UnitsConfig
from disdis.nn.vae import DeconvDecoder
from disdis.train import distributed
from disdis.train.config import TrainConfig
from disdis.train.encode import encode_training_subset
from disdis.train.hooks import Hook, HookContext


def derive_units(section: dict, data) -> dict:
    """A method section's ``units`` (a copy, stored back) with the extractor's input size from the data
    where not written; shared by every method built on the extractor."""
    units = section["units"] = dict(section.get("units") or {})
    if data.resolution is not None:
        units.setdefault("resolution", data.resolution)
    return units


def check_units(units: UnitsConfig, data) -> None:
    if data.resolution is not None and units.resolution != data.resolution:
        raise ConfigError(f"method.units.resolution: {units.resolution} differs from data.resolution {data.resolution}")


RAMPED = ("gradient_weight", "free_nats", "hessian_weight")  # the terms whose weight may move to a *_end


@dataclass
class AutoencoderLoss:
    """The terms the autoencoder adds to its squared error (module docstring); both off by default."""
    beta: float = 0.0             # > 0: variational, the weight of the KL per image
    gradient_weight: float = 0.0  # the weight of the finite differences' squared error
    gradient: Literal["signed", "magnitude", "saturated"] = "signed"  # each difference, each pixel's edge strength,
    gradient_scale: float = 0.1   # or that strength saturated, tanh(strength / gradient_scale): whether an edge is there
    capacity: float = 0.0         # > 0: the KL is held at C_t (nats), reaching this at capacity_kimg
    capacity_kimg: float = 0.0    # the length of C_t's linear rise
    beta_warmup_kimg: float = 0.0  # the length of the KL weight's linear rise from 0 to beta
    free_nats: float = 0.0        # each unit's batch-mean KL counts as at least this
    tc_weight: float = 0.0        # the weight of the total correlation
    gradient_weight_end: Optional[float] = None  # the edge weight reached at gradient_ramp_kimg[1]
    gradient_ramp_kimg: tuple[float, float] = (0.0, 0.0)  # where it moves linearly from gradient_weight
    beta_end: Optional[float] = None  # the KL weight reached at gradient_ramp_kimg[1], linearly from beta
    free_nats_end: Optional[float] = None  # the free bits reached at gradient_ramp_kimg[1], linearly from free_nats
    free_nats_pooled: bool = False  # the floor on the code's summed KL (N free_nats), not on each unit's
    hold_weight: float = 0.0      # > 0: from gradient_ramp_kimg[0] on, the used units are pulled to their values then
    hold_nats: float = 1.0        # a unit is used when its running mean KL exceeds this
    gather_units: int = 0         # > 0: hold the code's leading components, unmixed, in this many units instead
    reopen: Literal["", "extractor", "decoder", "all"] = ""  # at the hold, these modules start afresh
    hessian_weight: float = 0.0   # > 0: the weight of the decoder's Hessian penalty
    hessian_weight_end: Optional[float] = None  # the weight at gradient_ramp_kimg[1], linearly from hessian_weight
    hessian_images: int = 8       # of each batch, the images the penalty is estimated on
    hessian_step: float = 0.1     # the central differences' step in the units

    @property
    def beta_scheduled(self) -> bool:
        """Whether the KL's weight changes during training (a warm-up, or a move to beta_end)."""
        return bool(self.beta_warmup_kimg) or self.beta_end is not None

    def weighs(self, name: str) -> bool:
        """Whether a term of ``RAMPED`` is nonzero at some point of training (at its start or its ``*_end``)."""
        return bool(getattr(self, name)) or bool(getattr(self, f"{name}_end"))

    @property
    def ramped(self) -> list[str]:
        """The terms of ``RAMPED`` whose weight moves to its ``*_end`` across the ramp."""
        return [name for name in RAMPED if getattr(self, f"{name}_end") is not None]

    def __post_init__(self) -> None:
        terms = ("capacity", "beta_warmup_kimg", "free_nats", "tc_weight", "hold_weight")
        for key in ("beta", "gradient_weight", "capacity_kimg", "hold_nats", "hessian_weight", *terms):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"loss.{key}: expected a number >= 0, got {getattr(self, key)!r}")
        for key in terms:
            if getattr(self, key) and not self.beta:
                raise ConfigError(f"loss.{key}: needs a variational autoencoder (beta > 0)")
        if self.capacity and self.weighs("free_nats"):
            raise ConfigError("loss.free_nats: not with loss.capacity (each sets how much the code may hold)")
        if self.free_nats_pooled and not self.weighs("free_nats"):
            raise ConfigError("loss.free_nats_pooled: needs free bits (free_nats or free_nats_end > 0)")
        if self.free_nats_end is not None and not (self.free_nats_end >= 0 and self.beta > 0):
            raise ConfigError("loss.free_nats_end: expected a number >= 0, with a variational autoencoder (beta > 0)")
        if self.gradient_weight_end is not None and not (self.gradient_weight_end >= 0 and self.gradient_weight > 0):
            raise ConfigError("loss.gradient_weight_end: expected a number >= 0, with gradient_weight > 0")
        if self.beta_end is not None and not (self.beta_end >= 0 and self.beta > 0):
            raise ConfigError("loss.beta_end: expected a number >= 0, with a variational autoencoder (beta > 0)")
        if not (self.hessian_images >= 1 and self.hessian_step > 0):
            raise ConfigError(f"loss.hessian_images, loss.hessian_step: expected >= 1 and > 0, got "
                              f"{self.hessian_images!r}, {self.hessian_step!r}")
        if not self.gradient_scale > 0:
            raise ConfigError(f"loss.gradient_scale: expected a number > 0, got {self.gradient_scale!r}")
        if isinstance(self.gather_units, bool) or not (isinstance(self.gather_units, int) and self.gather_units >= 0):
            raise ConfigError(f"loss.gather_units: expected a whole number >= 0, got {self.gather_units!r}")
        if self.gather_units and not self.hold_weight:
            raise ConfigError("loss.gather_units: needs loss.hold_weight (it acts when the hold is taken)")
        if self.reopen and not self.hold_weight:
            raise ConfigError("loss.reopen: needs loss.hold_weight (it acts when the hold is taken)")
        if self.hold_weight and self.gradient_weight_end is None and self.beta_end is None:
            raise ConfigError("loss.hold_weight: needs a ramp (gradient_weight_end or beta_end), whose start it holds")
        if self.hessian_weight_end is not None and not self.hessian_weight_end >= 0:
            raise ConfigError(f"loss.hessian_weight_end: expected a number >= 0, got {self.hessian_weight_end!r}")
        for key in ("free_nats_end", "hessian_weight_end"):
            if getattr(self, key) is not None and self.gradient_weight_end is None and self.beta_end is None:
                raise ConfigError(f"loss.{key}: needs a ramp (gradient_weight_end or beta_end), whose window it uses")
        if self.gradient_weight_end is not None or self.beta_end is not None:
            start, end = self.gradient_ramp_kimg
            if not 0 <= start <= end:
                raise ConfigError(f"loss.gradient_ramp_kimg: expected [start, end] with 0 <= start <= end, "
                                  f"got {list(self.gradient_ramp_kimg)}")


@register
@dataclass
class AutoencoderConfig(MethodConfig):
    """The extractor (``units``; its input size follows the data), a decoder of its N units, the loss."""
    name: str = "autoencoder"
    units: UnitsConfig = field(default_factory=UnitsConfig)
    loss: AutoencoderLoss = field(default_factory=AutoencoderLoss)

    channels_key = "units.in_channels"

    @classmethod
    def derive(cls, section: dict, data) -> dict:
        derive_units(section, data)
        return section

    def check(self, data) -> None:
        check_units(self.units, data)

    def export(self, model: Autoencoder, name: str) -> FeatureExtractor:
        """A run that requires this one (as ``extractor``) receives its trained extractor."""
        return model.extractor

    def build(self, dependencies: dict) -> Autoencoder:
        return Autoencoder(self.units, self.loss)


@dataclass
class ExtractorInitTrainConfig(TrainConfig):
    """How a diffusion run trains its extractor's autoencoder warm start itself (when
    ``requires.extractor`` names none). Project choices, measured on the demo grid (docs/demo-study.md):
    6000 steps at batch 64, lr 1e-3 (at 3e-3 its units took in the geometry more slowly), no weight
    decay, no EMA (the extractor is taken from the trained weights). The seed is the run's
    ``train.seed`` unless set, and the run's ``train.probe_images`` applies."""
    seed: Optional[int] = None
    batch_size: int = 64
    total_kimg: float = 384.0
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    ema_halflife_kimg: float = 0.0
    checkpoint_every_kimg: float = 128.0
    log_every_kimg: float = 16.0


class Autoencoder(Method):
    capabilities = frozenset({"represent", "decode"})
    networks = ("extractor", "decoder")

    def __init__(self, units: UnitsConfig, loss: AutoencoderLoss = AutoencoderLoss()):
        super().__init__()
        self.loss = loss
        self.extractor = FeatureExtractor(units)
        self.decoder = DeconvDecoder(units.in_channels, units.resolution, units.num_units)
        if loss.beta > 0:
            self.log_variance = nn.Linear(self.extractor.feature_width, units.num_units)
        if loss.capacity:  # C_t and beta_t, set before each step by the schedule (and checkpointed)
            self.register_buffer("capacity", torch.zeros(()))
        if loss.beta_scheduled:
            self.register_buffer("beta", torch.zeros(()))
        for name in loss.ramped:  # the weight now, set before each step by the schedule (and checkpointed)
            self.register_buffer(name, torch.tensor(float(getattr(loss, name))))
        if loss.tc_weight:  # the training set's size N (set when training opens the data)
            self.register_buffer("dataset_size", torch.ones((), dtype=torch.int64))
        if loss.gather_units > units.num_units:
            raise ConfigError(f"loss.gather_units: {loss.gather_units} is more than the extractor's {units.num_units} units")
        if loss.hold_weight:  # the units' running KL, which of them are held, and the copy they are held to
            self.register_buffer("unit_kl", torch.zeros(units.num_units))
            self.register_buffer("held", torch.zeros(units.num_units, dtype=torch.bool))
            self.register_buffer("hold_taken", torch.zeros((), dtype=torch.bool))
            self.held_extractor = copy.deepcopy(self.extractor).requires_grad_(False)

    def hooks(self) -> list[Hook]:
        scheduled = self.loss.capacity or self.loss.beta_scheduled or self.loss.ramped or self.loss.hold_weight
        return ([LossSchedule(self)] if scheduled else []) + (
            [DatasetSize(self)] if self.loss.tc_weight else [])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of the module docstring on images in [-1, 1], and its terms to log."""
        pixels = images[0].numel()
        t = self.terms(images)
        loss = (t["pixels"] + self.weight("gradient_weight") * t["edges"] + self._prior(t["kl_units"])
                + self.loss.tc_weight * t["tc"] + self.loss.hold_weight * t["hold"]
                + self.weight("hessian_weight") * t["hessian"]).mean() / pixels
        return {"loss": loss, "recon": t["pixels"].mean().detach() / pixels,
                "gradient": t["edges"].mean().detach() / pixels,
                "kl": t["kl_units"].sum(1).mean().detach(), "tc": t["tc"].mean().detach(),  # nats per image
                **({"hold": t["hold"].mean().detach()} if self.loss.hold_weight else {}),
                **({"hessian": t["hessian"].mean().detach() / pixels} if self.loss.weighs("hessian_weight") else {})}

    def terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss's terms per image, unweighted (B,): the pixels' and the edges' squared errors, the
        total correlation, the hold's distance and the Hessian penalty (one estimate for the batch);
        and each unit's KL (B, N). Zeros where a term is off."""
        zero = images.new_zeros(len(images))
        if self.loss.beta == 0:
            z, kl_units, tc = self.extractor(images), zero[:, None], zero
        else:
            h = self.extractor.features(images)
            mu, logvar = self.extractor.fc[-1](h), self.log_variance(h)
            z, kl_units = reparameterize(mu, logvar), gaussian_kl_units(mu, logvar)
            tc = total_correlation(z, mu, logvar, int(self.dataset_size)) if self.loss.tc_weight else zero
        recon = self.decoder(z)
        return {"pixels": _sum_of_squares(recon - images),
                "edges": (_gradient_error(recon, images, self.loss.gradient, self.loss.gradient_scale)
                          if self.loss.gradient_weight else zero),
                "kl_units": kl_units, "tc": tc,
                "hold": self._hold(images, mu, kl_units) if self.loss.hold_weight else zero,
                "hessian": self._hessian(z).expand_as(zero) if self.weight("hessian_weight") else zero}

    def _hessian(self, z: torch.Tensor) -> torch.Tensor:
        """(): the Hessian penalty, sum over output values of Var_v(v^T H v), mean over the first
        ``hessian_images`` codes (held fixed); two Rademacher v's, central differences."""
        z = z[: self.loss.hessian_images].detach()
        eps = self.loss.hessian_step
        v = torch.randint(0, 2, (2, *z.shape), dtype=z.dtype, device=z.device) * 2 - 1
        shifted = self.decoder(torch.cat([z + eps * v[0], z - eps * v[0], z + eps * v[1], z - eps * v[1], z]))
        # D(z) cancels in quad0 - quad1; dropping it changes the arithmetic, and the demo preset's
        # runs were measured with it (docs/demo-study.md, session of 2026-12-05, third)
        up0, down0, up1, down1, base = shifted.chunk(5)
        quad0, quad1 = (up0 + down0 - 2 * base) / eps ** 2, (up1 + down1 - 2 * base) / eps ** 2  # v^T H v
        return (_sum_of_squares(quad0 - quad1) / 2).mean()  # the unbiased variance of two draws

    def weight(self, name: str) -> torch.Tensor | float:
        """The weight of a term of ``RAMPED`` now: the schedule's buffer where it moves, else the config's."""
        return getattr(self, name) if name in self.loss.ramped else getattr(self.loss, name)

    def _hold(self, images: torch.Tensor, mu: torch.Tensor, kl_units: torch.Tensor) -> torch.Tensor:
        """(B,): the held units' squared distance from the frozen copy's means (0 before the hold);
        until the hold is taken, keeps the units' running KL (a mean over the last ~10 steps) while training."""
        if not self.hold_taken:
            if self.training:
                self.unit_kl.lerp_(kl_units.detach().mean(0), 0.1)
            return images.new_zeros(len(images))
        if not self.held.any():
            return images.new_zeros(len(images))
        with torch.no_grad():
            held = self.held_extractor(images)
        return _sum_of_squares((mu - held)[:, self.held])

    def hold_units(self, code: np.ndarray | None = None) -> list[nn.Parameter]:
        """Marks the units whose running KL exceeds hold_nats, freezes the extractor's copy, and
        draws the ``reopen`` modules anew; returns the parameters drawn anew. With ``gather_units``, the
        posterior means ``code`` (images x N) of the training images give the components the copy's
        first units output instead, and those units are the ones held."""
        self.hold_taken.fill_(True)
        self.held_extractor.load_state_dict(self.extractor.state_dict())
        if self.loss.gather_units:
            count = self.loss.gather_units
            matrix, offset = gathered_components(code, count)
            n = len(self.held)
            fold_linear(self.held_extractor.fc[-1], np.pad(matrix, ((0, n - count), (0, 0))), np.pad(offset, (0, n - count)))
            self.held.copy_(torch.arange(n) < count)
        else:
            self.held.copy_(self.unit_kl > self.loss.hold_nats)
        return self._reopen() if self.loss.reopen else []

    def _reopen(self) -> list[nn.Parameter]:
        """Draws the ``reopen`` modules' weights anew, as at initialisation, from the training's random
        stream as it stands at the hold (so from the run's seed), in a fork of it: the stream itself
        stays as it was, and what follows the hold draws the same numbers as without it."""
        parts = {"extractor": [self.extractor, self.log_variance], "decoder": [self.decoder]}
        parts["all"] = parts["extractor"] + parts["decoder"]
        with torch.random.fork_rng():
            for part in parts[self.loss.reopen]:
                for module in part.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        return [p for part in parts[self.loss.reopen] for p in part.parameters()]

    def _prior(self, kl_units: torch.Tensor) -> torch.Tensor:
        """(B,) from each unit's KL (B, N): beta_t |KL - C_t|; with free bits one batch-level KL for all,
        each unit's floored at f_t (or, pooled, their sum at N f_t)."""
        kl = kl_units.sum(1)
        if self.loss.weighs("free_nats"):
            units, free = kl_units.mean(0), self.weight("free_nats")
            floored = units.sum().clamp(min=free * len(units)) if self.loss.free_nats_pooled else units.clamp(min=free).sum()
            kl = floored.expand_as(kl)
        if self.loss.capacity:
            kl = (kl - self.capacity).abs()
        return (self.beta if self.loss.beta_scheduled else self.loss.beta) * kl

    @torch.no_grad()
    def representation(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"units": self.extractor(images)}

    @torch.no_grad()
    def decode_units(self, units: torch.Tensor, seed: int = 0, steps: int | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images from scalar units (B, N) (deterministic: ``seed``, ``steps`` and ``noise`` are unused)."""
        return self.decoder(units).clamp(-1, 1)


class LossSchedule(Hook):
    """Sets the autoencoder's C_t = capacity min(1, kimg / capacity_kimg), beta_t = b_t
    min(1, kimg / beta_warmup_kimg) with b_t from beta to beta_end across gradient_ramp_kimg (beta
    without beta_end), the edge weight w_t (from gradient_weight to gradient_weight_end across
    gradient_ramp_kimg) and the free bits f_t and the Hessian penalty's weight alike (free_nats to
    free_nats_end, hessian_weight to hessian_weight_end) (those it uses) before every step, and holds
    the used units when the ramp begins."""
    name = "loss_schedule"

    def __init__(self, model: Autoencoder):
        self.model = model

    def interval(self, ctx: HookContext) -> int:
        return 1

    def open(self, ctx: HookContext) -> None:
        self(ctx, ctx.resume_step or 0)

    def __call__(self, ctx: HookContext, step: int) -> None:
        loss, kimg = self.model.loss, step * ctx.cfg.batch_size / 1000
        if loss.capacity:
            self.model.capacity.fill_(_linear(0.0, loss.capacity, kimg, (0.0, loss.capacity_kimg)))
        if loss.beta_scheduled:
            beta = loss.beta if loss.beta_end is None else _linear(loss.beta, loss.beta_end, kimg, loss.gradient_ramp_kimg)
            self.model.beta.fill_(_linear(0.0, beta, kimg, (0.0, loss.beta_warmup_kimg)))
        for name in loss.ramped:
            getattr(self.model, name).fill_(_linear(getattr(loss, name), getattr(loss, f"{name}_end"), kimg,
                                                    loss.gradient_ramp_kimg))
        if loss.hold_weight and kimg >= loss.gradient_ramp_kimg[0] and not self.model.hold_taken:
            # under DDP every rank encodes the code and copies the extractor with rank 0's BatchNorm
            # statistics, and takes rank 0's fresh draws (each rank's random stream is its own)
            distributed.broadcast_buffers(self.model)
            drawn = self.model.hold_units(self._code(ctx) if loss.gather_units else None)
            distributed.broadcast_in_place(drawn)
            for parameter in drawn:
                if ctx.optimizer is not None:  # a module drawn anew starts its moments afresh too
                    ctx.optimizer.state.pop(parameter, None)

    def _code(self, ctx: HookContext) -> np.ndarray:
        """The extractor's units (posterior means, eval mode) on the training images, all or a fixed
        random subset of 10000, in float64; the run's random stream is left as it was."""
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            return encode_training_subset(self.model.extractor, ctx, 10000, 3, "code to gather").double().numpy()


def _linear(first: float, last: float, kimg: float, window: tuple[float, float]) -> float:
    """``first`` until ``window[0]`` kimg, ``last`` from ``window[1]`` on, linear between (a step at
    ``window[1]`` when the window is empty)."""
    start, end = window
    progress = min(1.0, max(0.0, (kimg - start) / (end - start))) if end > start else float(kimg >= end)
    return first + progress * (last - first)


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """(B,): each sample's sum of squares."""
    return x.square().flatten(1).sum(1)


def _gradient_error(recon: torch.Tensor, images: torch.Tensor, kind: str, scale: float) -> torch.Tensor:
    """(B,): the squared error of the finite differences along x and y (``signed``), or of each
    pixel's edge strength sqrt(sum over channels and both directions of the differences^2)
    (``magnitude``: how strong an edge is there, whatever its colours), or of tanh(strength / scale)
    (``saturated``: whether an edge is there, nearly whatever the contrast of the colours on either side)."""
    if kind == "signed":
        return (_sum_of_squares(recon.diff(dim=-1) - images.diff(dim=-1))
                + _sum_of_squares(recon.diff(dim=-2) - images.diff(dim=-2)))
    if kind == "saturated":
        return _sum_of_squares(torch.tanh(edge_strength(recon) / scale) - torch.tanh(edge_strength(images) / scale))
    return _sum_of_squares(edge_strength(recon) - edge_strength(images))


def edge_strength(x: torch.Tensor) -> torch.Tensor:
    """(B, H - 1, W - 1) from images (B, C, H, W): sqrt(sum_c dx^2 + dy^2 + 1e-6) at each pixel but the
    last row and column (the 1e-6 keeps the gradient finite where the image is flat)."""
    dx, dy = x.diff(dim=-1)[..., :-1, :], x.diff(dim=-2)[..., :-1]
    return (dx.square() + dy.square()).sum(1).add(1e-6).sqrt()
