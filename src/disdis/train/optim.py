"""The run's optimizer, built from the parameter groups a method declares.

A method's ``param_groups(cfg)`` returns torch optimizer groups (as nanoGPT's
``configure_optimizers``): each a dict with ``params`` and any of ``lr``, ``betas``,
``eps`` and ``weight_decay`` that differ from the ``train`` section. One AdamW holds
them all; a group with ``weight_decay: 0`` is exactly Adam. The loop's warm-up scales
each group's own base rate, kept as ``initial_lr``.
"""

from __future__ import annotations

import torch
from torch import nn

from disdis.train.config import TrainConfig
from disdis.train.ema import named_submodules


def default_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """One group of every trained parameter (released), or, for each submodule named in
    ``cfg.lr_scale`` or ``cfg.group_eps``, a group of its own at its multiple of the learning rate
    and its eps, plus one group of the rest (first)."""
    modules = {name: module for key in ("lr_scale", "group_eps")
               for name, module in zip(getattr(cfg, key), named_submodules(model, list(getattr(cfg, key)), f"train.{key}"))}
    taken: set[int] = set()
    groups = []
    for name, module in modules.items():
        own = [p for p in module.parameters() if p.requires_grad and id(p) not in taken]
        taken.update(id(p) for p in own)
        groups.append({"params": own, "lr": cfg.lr * float(cfg.lr_scale.get(name, 1.0)),
                       "eps": float(cfg.group_eps.get(name, cfg.adam_eps))})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return [{"params": rest, "lr": cfg.lr}, *groups]


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over ``model.param_groups(cfg)`` (the defaults of any key a group leaves out come from
    ``cfg``); ``fused``: one kernel for the whole update instead of a loop over tensors."""
    groups = model.param_groups(cfg)
    for group in groups:
        group.setdefault("lr", cfg.lr)
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` over each group's base rate: linear from ``lr_warmup_start`` to 1
    over ``lr_warmup_kimg`` (counted in images), then 1."""
    warm_steps = cfg.lr_warmup_kimg * 1000 / cfg.batch_size
    if step >= warm_steps:
        return 1.0
    return cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * step / warm_steps
