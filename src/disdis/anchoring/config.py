"""Configuration of Dynamic Gaussian Anchoring (the ``anchoring`` section of a training config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from disdis.errors import ConfigError


@dataclass
class AnchoringConfig:
    """Options of the DyGA fit (docs/method.md, "Dynamic Gaussian Anchoring") and of the shift.

    Values marked (released) reproduce the authors' code; the defaults are this
    project's fixes, explained in :mod:`disdis.anchoring`.
    """

    enabled: bool = True
    initial_components: int = 8        # K0, placed at random tokens
    em_iters: int = 30                 # EM iterations before the splits and again after the filter
    em_tol: float = 1e-3               # stop a unit's EM early when its mean log-likelihood per token
                                       # changes by less than this (0: always em_iters, released)
    split_rounds: int = 3
    max_components: int = 32
    split_rule: Literal["valley", "spread"] = "valley"
    split_threshold: float = 0.5       # "valley": split when the density at the deepest valley between
                                       # the two children is below this fraction of the lower peak (scale-free)
    spread_threshold: float = 0.5      # "spread" (released): split when the mean distance of the hard
                                       # members to their mean exceeds this, in token units (absolute)
    random_split: bool = False         # (released) also split any component with probability 1/2
    split_fit_limit: int = 1024        # the two-component fit of a split uses at most this many members
    min_soft_count: float = 10.0       # drop components with fewer responsibility-weighted tokens
    covariance_reg: float = 1e-6       # added to every covariance before factorising, in the fit space
    space: Literal["token", "released"] = "token"
    strength_mode: Literal["fixed", "safe", "released"] = "fixed"
    strength: float = 0.1              # lambda, or its ceiling for the "safe" and "released" modes
    subsample_above: int = 100_000     # (released) fit on a random subset when a unit has more tokens
    subsample_fraction: float = 0.1
    fit_dtype: Literal["float32", "float64"] = "float32"
    # when the training loop refits (the DyGA refit hook)
    refit_every: float = 1.0                     # interval (released: every epoch; Cars3D/CelebA 5) ...
    refit_unit: Literal["epochs", "kimg"] = "epochs"  # ... counted in epochs or in kimg
    refit_source: Literal["subset", "recent"] = "subset"  # fixed training subset, or tokens of recent batches
    refit_images: int = 48000                    # tokens per fit (released: 10% of sets above 100k images)

    def __post_init__(self) -> None:
        checks = [
            (self.initial_components >= 1, "initial_components", "at least 1"),
            (self.max_components >= self.initial_components, "max_components", "at least initial_components"),
            (self.em_iters >= 0, "em_iters", "0 or more"),
            (self.em_tol >= 0, "em_tol", "0 or more"),
            (self.split_rounds >= 0, "split_rounds", "0 or more"),
            (0 < self.split_threshold <= 1, "split_threshold", "in (0, 1]"),
            (self.spread_threshold > 0, "spread_threshold", "positive"),
            (self.split_fit_limit >= 4, "split_fit_limit", "at least 4"),
            (self.min_soft_count >= 0, "min_soft_count", "0 or more"),
            (self.covariance_reg > 0, "covariance_reg", "positive"),
            (0 <= self.strength <= 1, "strength", "in [0, 1]"),
            (self.subsample_above >= 1, "subsample_above", "at least 1"),
            (0 < self.subsample_fraction <= 1, "subsample_fraction", "in (0, 1]"),
            (self.refit_every > 0, "refit_every", "positive"),
            (self.refit_images >= 1, "refit_images", "a positive integer"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"anchoring.{key}: expected {expected}, got {getattr(self, key)!r}")
