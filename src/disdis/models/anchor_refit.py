"""Dynamic Gaussian Anchoring's refit, as a hook the paper's method hands to the training loop.

Every ``anchoring.refit_every`` epochs (or kimg), the per-unit mixtures are fitted again
(docs/method.md, "Dynamic Gaussian Anchoring") on fresh un-anchored tokens: those of a
fixed random training subset (``refit_source: subset``, re-encoded by the current
extractor in eval mode, sharded over the ranks), or those of the most recent training
batches (``recent``). The fit runs once, on rank 0, seeded from (seed, step); every rank
receives it and loads it into the method's :class:`disdis.anchoring.AnchorState`. Each
fit is saved as ``fits/fit-STEP.safetensors`` and summarised in ``logs/fits.csv``.

The method provides ``unit_tokens(images) -> (B, U, D)``, ``fit_anchors(tokens (U, N, D),
seed) -> GaussianAnchors`` and ``anchor_state``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from disdis.anchoring import GaussianAnchors
from disdis.train import distributed
from disdis.train.encode import encode_images
from disdis.train.hooks import Hook, HookContext
from disdis.train.logger import CSVLogger
from disdis.train.sampler import step_seed

FIT_STREAM = 1 << 30  # the random stream of the fits, apart from every rank's training stream


class Anchored:
    """Model mixin of a method whose units are tokens (B, N, D) shifted toward their DyGA anchors:
    it has ``self.anchoring`` (an AnchoringConfig), ``self.anchor_state`` and ``unit_tokens(images)``."""

    def anchor_hooks(self) -> list[Hook]:
        return [AnchorRefit(self)] if self.anchoring.enabled else []

    def fit_anchors(self, tokens: torch.Tensor, seed: int) -> GaussianAnchors:
        """Fit the per-unit mixtures on tokens (U, N, D)."""
        tokens = tokens.to(self.anchor_state.offset.device)  # fit where the model lives (fast on a GPU)
        return GaussianAnchors.fit(tokens, seed=seed, config=self.anchoring)

    def anchor(self, tokens: torch.Tensor) -> torch.Tensor:
        """DyGA shift toward each token's anchor; the identity before the first fit or when disabled."""
        if not self.anchoring.enabled:
            return tokens
        return self.anchor_state.shift_batch(tokens, self.anchoring.strength)


class AnchorRefit(Hook):
    name = "anchor_refit"

    def __init__(self, method):
        self.method = method
        self.cfg = method.anchoring
        self.recent: _TokenBuffer | None = None
        self.subset: np.ndarray | None = None
        self.log: CSVLogger | None = None

    def interval(self, ctx: HookContext) -> int:
        if self.cfg.refit_unit == "epochs":
            return max(1, round(self.cfg.refit_every * ctx.steps_per_epoch))
        return ctx.steps(self.cfg.refit_every)

    def open(self, ctx: HookContext) -> None:
        count = min(self.cfg.refit_images, len(ctx.dataset))
        if self.cfg.refit_source == "recent":
            self.recent = _TokenBuffer(count)
        else:
            rng = np.random.default_rng([ctx.cfg.seed, 1])
            self.subset = np.sort(rng.choice(len(ctx.dataset), size=count, replace=False))
        self.batch_size = ctx.cfg.batch_size
        if distributed.is_main():
            self.log = CSVLogger(ctx.run_dir.log("fits"), ctx.resume_step, tensorboard=False)

    def after_step(self, out: dict) -> None:
        if self.recent is not None:
            self.recent.add(distributed.gather_shards(out["tokens"].detach().float(), self.batch_size))

    def __call__(self, ctx: HookContext, step: int) -> None:
        start = time.perf_counter()
        tokens = self.recent.tokens if self.recent is not None else self._encode_subset(ctx, step)
        fit = None
        if distributed.is_main():
            seed = step_seed(ctx.cfg.seed, step, FIT_STREAM)
            fit = {k: v.cpu() for k, v in self.method.fit_anchors(tokens.transpose(0, 1).contiguous(), seed).to_tensors().items()}
        anchors = GaussianAnchors.from_tensors(distributed.broadcast_tensors(fit), self.cfg)
        self.method.anchor_state.load(anchors)
        if distributed.is_main():
            anchors.save(ctx.run_dir.fit(step))
            counts = anchors.num_components
            self.log.log({"step": step, "tokens": len(tokens), "seconds": time.perf_counter() - start,
                          "components_mean": sum(counts) / len(counts), "components_min": min(counts),
                          "components_max": max(counts)})

    def _encode_subset(self, ctx: HookContext, step: int) -> torch.Tensor:
        distributed.broadcast_buffers(ctx.model)  # encode every shard with rank 0's BatchNorm statistics
        ctx.model.eval()
        per_rank = max(1, ctx.cfg.batch_size // distributed.world_size())
        tokens = encode_images(self.method.unit_tokens, ctx.dataset, self.subset, per_rank, ctx.device, bf16=ctx.bf16,
                               num_workers=ctx.cfg.num_workers, desc=f"tokens for anchoring fit (step {step})")
        ctx.model.train()
        return tokens

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.recent is None or self.recent.tokens is None:
            return {}
        return {"recent_tokens": self.recent.tokens}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.recent is not None and "recent_tokens" in tensors:
            self.recent.tokens = tensors["recent_tokens"]


class _TokenBuffer:
    """The most recent ``capacity`` token rows seen in training (all ranks), oldest first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.tokens: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.cpu()
        self.tokens = rows if self.tokens is None else torch.cat([self.tokens, rows])
        self.tokens = self.tokens[-self.capacity:]
