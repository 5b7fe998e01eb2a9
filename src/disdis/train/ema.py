"""Exponential moving average of a model's weights, used for evaluation and sampling.

The decay per step is set from a half-life counted in images, so a schedule
means the same at any batch size or device count:
    beta = 0.5 ** (images_per_step / halflife_images),
    ema <- beta * ema + (1 - beta) * weights.
With ``warmup`` the decay is capped by (1 + n) / (10 + n) after n updates, as the
released code's LitEma does, so early averages are not dominated by the random
initialisation. The released decay 0.9999 per step at batch 512 is a half-life
of ln 0.5 / ln 0.9999 * 512 ~= 3.55 M images.
Buffers (BatchNorm statistics, the latent scale) are copied, not averaged.

``modules`` limits the average to the parameters of the named submodules (the
released code averages the U-Net only, ``["unet"]``); every other parameter of
the copy follows the live model, so the copy is a complete model either way.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from disdis.errors import ConfigError


def named_submodules(model: nn.Module, names: Sequence[str], key: str) -> list[nn.Module]:
    """The submodules ``names`` of ``model``; a name it lacks is a ConfigError about ``key``."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or not n]
    if missing:
        raise ConfigError(f"{key}: the model has no submodule '{missing[0]}' "
                          f"(top-level ones: {', '.join(n for n, _ in model.named_children())})")
    return [modules[n] for n in names]


class EMA:
    def __init__(self, model: nn.Module, halflife_images: float, warmup: bool = True,
                 modules: Sequence[str] | None = None):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.halflife_images = halflife_images
        self.warmup = warmup
        self.num_updates = 0
        named_submodules(model, modules or [], "train.ema_modules")
        prefixes = None if modules is None else tuple(f"{m}." for m in modules)
        self.averaged = {name for name, _ in model.named_parameters()
                         if prefixes is None or name.startswith(prefixes)}

    def decay(self, images_per_step: int) -> float:
        beta = 0.5 ** (images_per_step / max(self.halflife_images, 1e-8))
        if self.warmup:
            beta = min(beta, (1 + self.num_updates) / (10 + self.num_updates))
        return beta

    @torch.no_grad()
    def update(self, model: nn.Module, images_per_step: int) -> None:
        beta = self.decay(images_per_step)
        self.num_updates += 1
        ema_params = dict(self.module.named_parameters())
        averaged: tuple[list, list] = ([], [])
        followed: tuple[list, list] = ([], [])
        for name, param in model.named_parameters():
            if param.requires_grad:
                pair = averaged if name in self.averaged else followed
                pair[0].append(ema_params[name])
                pair[1].append(param.detach())
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            followed[0].append(ema_buffers[name])
            followed[1].append(buf)
        # one multi-tensor kernel per kind instead of one small kernel per tensor
        if averaged[0]:
            torch._foreach_lerp_(averaged[0], averaged[1], 1.0 - beta)
        if followed[0]:
            torch._foreach_copy_(followed[0], followed[1])
