"""The method protocol: what every trained model offers the loop, the evaluation and the figures.

A method is one ``nn.Module`` subclassing :class:`Method` (docs/architecture.md):

* ``forward(images) -> dict``: a scalar ``"loss"`` and any scalars to log (a detached
  ``"tokens"`` entry is passed to hooks, never logged);
* ``param_groups(cfg)``: its optimizer groups (:mod:`disdis.train.optim`); by default the
  released single AdamW group, or the ``train.lr_scale`` / ``train.group_eps`` groups;
* ``hooks()``: periodic work for the loop to schedule (:mod:`disdis.train.hooks`);
* ``dependencies()``: submodules whose weights come from another run (a frozen first stage):
  name -> the reference ``{"checkpoint": path, "sha256": digest}`` set with :meth:`requires`.
  Checkpoints leave their tensors out and record the reference; loading reads them from there;
* ``capabilities``: what else it offers, declared rather than probed:
  ``"represent"``: ``representation(images) -> dict`` gives what evaluation reads
  (``"units"`` (B, N) scalars, and ``"tokens"`` (B, N, D) where the units are vectors);
  ``"decode"``: ``decode_units(units, seed=0, steps=None, noise=None)`` gives images from the
  scalar units, all from one noise (``noise``, or one drawn from ``seed``) where decoding uses any; ``"generate"``: it has ``sample(context, ...)``,
  ``invert(images, ...)``, ``interchange(...)`` and ``encode_units(images)`` (a diffusion method
  conditioned on its units: :class:`disdis.models.token_sampling.TokenConditioned` gives these);
  ``"attention"``: ``attention_maps(images, t)`` gives where each unit's token is attended;
  ``"shards"``: its training forward may run on several threads at once (``train.shards``,
  :mod:`disdis.train.shards`): it writes no state but running statistics and draws through
  :mod:`disdis.draws`;
* ``networks``: the submodules whose forward does the training step's arithmetic, the ones
  ``train.compile`` hands to ``torch.compile`` (each in place: parameter names do not change).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from disdis.train.config import TrainConfig
from disdis.train.hooks import Hook
from disdis.train.optim import default_param_groups


class Method(nn.Module):
    capabilities: ClassVar[frozenset[str]] = frozenset()
    networks: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self._dependencies: dict[str, dict] = {}

    def requires(self, name: str, reference: dict) -> None:
        """Submodule ``name`` holds the weights of ``reference`` (another run's checkpoint), frozen."""
        if name not in dict(self.named_children()):
            raise ValueError(f"{type(self).__name__} has no submodule {name!r}")
        self._dependencies[name] = dict(reference)

    def dependencies(self) -> dict[str, dict]:
        return dict(self._dependencies)

    def upgrade_checkpoint(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's tensors in this version's layout (a method whose state moved converts the
        old keys here; loading and resuming call it before reading the weights)."""
        return tensors

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return default_param_groups(self, cfg)

    def hooks(self) -> list[Hook]:
        return []

    def representation(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no representation to evaluate")

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def compile_networks(self) -> None:
        """``torch.compile`` each of :attr:`networks` in place (``nn.Module.compile``): compiled on
        their first call, again for each new mode they are called in (training, held, evaluation)."""
        for name in self.networks:
            getattr(self, name).compile()
