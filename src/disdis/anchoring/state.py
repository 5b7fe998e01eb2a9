"""AnchorState: a model's current DyGA fit, held as module buffers.

As buffers, the fit travels with the model's ``state_dict``: a checkpoint saves it with
the weights, the EMA copy follows it as it follows every buffer, DDP broadcasts it, and
loading a run restores it, with no special case anywhere. The buffers have fixed shapes,
set by (units, token dimension, ``max_components``): a fit with fewer components per unit
is padded (:meth:`GaussianAnchors.padded`), so an in-place copy always fits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from disdis.anchoring.anchors import GaussianAnchors
from disdis.anchoring.config import AnchoringConfig


class AnchorState(nn.Module):
    """The fit of :class:`GaussianAnchors` as buffers, and the shift of a token batch.

    ``fitted`` (0-d, 1.0 once a fit is loaded) is read on the device: the shift is always
    computed and kept only where fitted, so no step waits on a host read of the flag. Before
    the first fit the tokens pass through unchanged (the unfitted state's anchors are zeros,
    so the discarded shift is finite and its gradient share is exactly zero).
    """

    def __init__(self, num_units: int, dim: int, config: AnchoringConfig):
        super().__init__()
        self.config = config
        u, k, d = num_units, config.max_components, dim
        eye = torch.eye(d).expand(u, k, d, d).clone()
        self.register_buffer("fitted", torch.zeros(()))
        self.register_buffer("offset", torch.zeros(u, d))
        self.register_buffer("scale", torch.ones(u))
        self.register_buffer("means", torch.zeros(u, k, d))
        self.register_buffer("chol", eye)
        self.register_buffer("log_weights", torch.full((u, k), -math.inf))
        self.register_buffer("num_components", torch.zeros(u, dtype=torch.long))
        # derived from the fit, recomputed whenever it changes; not saved
        self.register_buffer("whitening", eye.clone(), persistent=False)
        self.register_buffer("log_norm", torch.full((u, k), -math.inf), persistent=False)
        self.register_buffer("means_padded", torch.zeros(u, k, d), persistent=False)

    @torch.no_grad()
    def load(self, anchors: GaussianAnchors) -> None:
        """Hold ``anchors``, padded to this state's shapes."""
        padded = anchors.padded(self.config.max_components).to(self.fitted.device)
        for key, value in padded.to_tensors().items():
            getattr(self, key).copy_(value)
        self._derive()
        self.fitted.fill_(1.0)

    def anchors(self) -> GaussianAnchors:
        """The current fit as :class:`GaussianAnchors` (a view of the buffers; meaningful once fitted)."""
        return GaussianAnchors(self.offset, self.scale, self.means, self.chol, self.log_weights, self.num_components,
                               self.config, derived=(self.whitening, self.log_norm, self.means_padded))

    def shift_batch(self, tokens: Tensor, strength: float) -> Tensor:
        """(B, U, D) tokens shifted toward their anchors (float32); unchanged before the first fit."""
        tokens = tokens.float()
        return torch.where(self.fitted > 0, self.anchors().shift_batch(tokens, strength), tokens)

    @torch.no_grad()
    def _derive(self) -> None:
        fit = GaussianAnchors(self.offset, self.scale, self.means, self.chol, self.log_weights, self.num_components,
                              self.config)
        for name, value in zip(("whitening", "log_norm", "means_padded"), fit.derived_tensors()):
            getattr(self, name).copy_(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted.device.type != "meta" and float(self.fitted) > 0:
            self._derive()
