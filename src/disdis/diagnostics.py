"""What the latent units hold while a model trains, measured on a fixed probe set.

:class:`UnitProbe` is handed to the training loop, which calls it at every
logging interval. On a balanced factor sub-grid of the training data (every
factor kept at a few evenly spaced values, at most ``max_images`` images) it
encodes the units with the live model in eval mode and measures

* the share table: for each unit and factor, the share of the unit's variance
  that the factor explains (eta^2, :func:`disdis.metrics.unit_factor_shares`);
  logged as each factor's best unit, ``share_<factor>``, and written whole to
  ``logs/shares.csv``;
* ``direction_<factor>``: the largest share of the factor over every linear combination of the
  units (:func:`disdis.metrics.direction_shares`): far above ``share_<factor>`` when the units hold
  the factor spread over several of them, as low when they do not hold it;
* ``units_top_pc``: the share of the units' total variance on their first
  principal direction (near 1 when the units have collapsed onto one signal);
* for every cross-attention layer i (a :class:`~disdis.nn.layers.Attention`
  given a context), on ``attention_images`` probe images at random timesteps
  drawn from a fixed seed: ``attn<i>_entropy``, the mean entropy of the
  weights over the tokens in nats (log M for uniform weights over M tokens),
  and ``attn<i>_selectivity``, the spatial variance of the layer's output
  (less its constant bias) over its mean square (0 when every pixel receives
  the same vector, i.e. when the tokens act as a per-image bias). Layers are
  numbered in the order the U-Net runs them: encoder, middle, decoder;
* ``usage_<factor>``: on the same images, noise and timesteps, how much the
  loss rises when the units are taken from the image that differs in that
  factor alone (its class moved to the next probed one). It is 0 when the
  model does not read the factor from the units, whether or not they hold it
  (models whose forward takes ``condition_images``). On a small data set a
  model can also come to rely on each image's exact unit values, so usage is
  a clean test of reading a factor only where the units are known to hold it.

It also redraws ``figures/factor_shares.png``: each factor's best share
against kimg (and, dotted, its best direction's, from ``logs/train.csv``), so a user sees when each
factor is captured; at most every
``redraw_seconds`` while training (a drawing costs about 0.4 s, a probe's
measurements about 0.8 s at the demo's size) and once more when the probe closes. The probe's draws
come from its own seed inside ``torch.random.fork_rng``, so training draws the
same numbers with or without it.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from disdis.metrics import direction_shares, unit_factor_shares
from disdis.nn.layers import TransformerBlock
from disdis.rundir import RunDir
from disdis.train.logger import CSVLogger, read_csv_log

CAPTURED = 0.5  # a factor counts as captured when some unit's share of it reaches this


def probe_classes(factor_sizes: Sequence[int], max_images: int) -> list[np.ndarray]:
    """Evenly spaced classes of each factor, as many as fit ``max_images`` in the product: the
    largest factor loses a value until the sub-grid is small enough (every factor keeps >= 2)."""
    counts = list(factor_sizes)
    while math.prod(counts) > max_images and max(counts) > 2:
        counts[int(np.argmax(counts))] -= 1
    return [np.unique(np.round(np.linspace(0, size - 1, n)).astype(int)) for size, n in zip(factor_sizes, counts)]


class UnitProbe:
    """``probe(model, step, kimg) -> dict`` of scalars to log (module docstring)."""

    def __init__(self, dataset, factor_names: Sequence[str], factor_sizes: Sequence[int], run_dir: str | Path, *,
                 grid_index, max_images: int = 4096, attention_images: int = 64, batch_size: int = 256,
                 seed: int = 0, redraw_seconds: float = 30.0):
        classes = probe_classes(factor_sizes, max_images)
        rows = np.array(list(itertools.product(*classes)), dtype=np.int64)  # canonical order of the sub-grid
        self.indices = grid_index(rows)
        self.sizes = [len(c) for c in classes]
        self.factor_names = list(factor_names)
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        picks = np.random.default_rng(seed).permutation(len(self.indices))[:attention_images]
        self.attention_indices = self.indices[picks]
        # for each factor, the same images with that factor's class moved to the next probed class
        position = np.stack(np.unravel_index(picks, self.sizes), axis=1)
        self.swapped = {}
        for k, name in enumerate(self.factor_names):
            moved = position.copy()
            moved[:, k] = (moved[:, k] + 1) % self.sizes[k]
            self.swapped[name] = self.indices[np.ravel_multi_index(moved.T, self.sizes)]
        self.run_dir = RunDir.of(run_dir)
        self.figure = self.run_dir.figure("factor_shares")
        self.table_log: CSVLogger | None = None
        self.redraw_seconds = redraw_seconds
        self.drawn_at = -math.inf  # when the figure was last drawn (time.monotonic)
        self.stale = False  # rows logged since

    def open(self, resume_step: int | None) -> None:
        """Start (or, resuming at ``resume_step``, continue) ``logs/shares.csv``."""
        self.table_log = CSVLogger(self.run_dir.log("shares"), resume_step, tensorboard=False)

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int, kimg: float) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            units = torch.cat([model.representation(self._images(chunk, device))["units"].float().cpu()
                               for chunk in np.array_split(self.indices, max(1, len(self.indices) // self.batch_size))])
            row = self._unit_stats(units.double().numpy(), step, kimg)
            row.update(self._conditioning_stats(model, device))
        finally:
            model.train(was_training)
        self.stale = True
        if time.monotonic() - self.drawn_at >= self.redraw_seconds:
            self._draw()
        return row

    def close(self) -> None:
        if self.table_log is not None:
            if self.stale:
                self._draw()
            self.table_log.close()

    def _images(self, indices: np.ndarray, device: torch.device) -> torch.Tensor:
        items = self.dataset.__getitems__(indices.tolist()) if hasattr(self.dataset, "__getitems__") else \
            [self.dataset[int(i)] for i in indices]
        return torch.stack([item[0] if isinstance(item, (list, tuple)) else item for item in items]).to(device)

    def _unit_stats(self, units: np.ndarray, step: int, kimg: float) -> dict[str, float]:
        shares = unit_factor_shares(units, self.sizes)
        for unit, values in enumerate(shares):
            self.table_log.log({"step": step, "kimg": kimg, "unit": unit,
                                **{name: float(v) for name, v in zip(self.factor_names, values)}})
        eigen = np.linalg.eigvalsh(np.cov(units, rowvar=False).reshape(units.shape[1], units.shape[1]))
        top = float(eigen[-1] / eigen.sum()) if eigen.sum() > 0 else 1.0
        best = shares.max(axis=0)
        row = {f"share_{name}": float(v) for name, v in zip(self.factor_names, best)}
        row["factors_captured"] = int((best >= CAPTURED).sum())
        row["units_top_pc"] = top
        row.update({f"direction_{name}": float(v) for name, v in zip(self.factor_names, direction_shares(units, self.sizes))})
        return row

    def _conditioning_stats(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Cross-attention entropy and selectivity per layer, and the usage of each factor."""
        layers = [m.cross_attn for m in model.modules() if isinstance(m, TransformerBlock)]
        if not layers:
            return {}
        stats: list[list[tuple[float, float]]] = [[] for _ in layers]
        hooks = [layer.register_forward_hook(_record_attention(stats[i])) for i, layer in enumerate(layers)]
        images = self._images(self.attention_indices, device)
        try:
            own = self._loss(model, images, None, device)
        finally:
            for hook in hooks:
                hook.remove()
        row = {}
        for i, records in enumerate(stats):
            if records:
                row[f"attn{i}_entropy"] = float(np.mean([r[0] for r in records]))
                row[f"attn{i}_selectivity"] = float(np.mean([r[1] for r in records]))
        if "condition_images" in inspect.signature(model.forward).parameters:
            for name, indices in self.swapped.items():
                row[f"usage_{name}"] = self._loss(model, images, self._images(indices, device), device) - own
        return row

    def _loss(self, model: nn.Module, images: torch.Tensor, condition: torch.Tensor | None,
              device: torch.device) -> float:
        """The model's loss on ``images`` with the probe's own draws (the same at every call)."""
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            out = model(images) if condition is None else model(images, condition_images=condition)
        return float(out["loss"])

    def _draw(self) -> None:
        from disdis.figures import plot_factor_shares
        rows = read_csv_log(self.table_log.path)
        train_log = self.run_dir.log("train")  # the loop writes each probe's row after the probe returns
        if rows:
            plot_factor_shares(rows, self.factor_names, self.figure,
                               directions=read_csv_log(train_log) if train_log.is_file() else ())
        self.drawn_at, self.stale = time.monotonic(), False


def training_log(run_dir) -> tuple[list[dict], list[str], float]:
    """A run folder's ``logs/train.csv`` rows (none yet: []), the factors its probe logged, and the
    minutes of the stages it trained first inside its folder (a first stage, an autoencoder)."""
    from disdis.train.run import dependencies_seconds
    run = RunDir.of(run_dir)
    rows = read_csv_log(run.log("train")) if run.log("train").is_file() else []
    names = [k[len("share_"):] for k in (rows[0] if rows else {}) if k.startswith("share_")]
    return rows, names, dependencies_seconds(run) / 60


def capture_times(rows: Sequence[dict], factor_names: Sequence[str], captured: float = CAPTURED,
                  start_minutes: float = 0.0) -> dict[str, tuple[float, float] | None]:
    """For each factor, (kimg, training minutes) of the first logged interval at which some unit's
    share reached ``captured``, from the rows of ``logs/train.csv``; None when it never did. The
    minutes count from ``start_minutes`` (the training time of the run's own dependencies)."""
    out: dict[str, tuple[float, float] | None] = {name: None for name in factor_names}
    minutes, last_step = start_minutes, 0.0
    for row in rows:
        minutes += (row["step"] - last_step) * row["sec_per_step"] / 60
        last_step = row["step"]
        for name in factor_names:
            if out[name] is None and row.get(f"share_{name}", 0.0) >= captured:
                out[name] = (row["kimg"], minutes)
    return out


def lost_factors(rows: Sequence[dict], factor_names: Sequence[str], captured: float = CAPTURED) -> dict[str, float]:
    """The factors some logged interval captured whose best unit share at the last one is below
    ``captured`` again, with that last share: captured once is not captured at the end."""
    if not rows:
        return {}
    def share(row: dict, name: str) -> float:
        return row.get(f"share_{name}", 0.0)
    return {name: share(rows[-1], name) for name in factor_names
            if share(rows[-1], name) < captured <= max(share(row, name) for row in rows)}


def uncaptured(shares, factor_names: Sequence[str], captured: float = CAPTURED) -> dict[str, float]:
    """The factors no unit holds in a share table (units x factors, as ``unit_factor_shares``): each
    with its best unit's share, below ``captured``."""
    best = np.asarray(shares, dtype=np.float64).max(axis=0)
    return {name: float(b) for name, b in zip(factor_names, best) if b < captured}


def _record_attention(records: list):
    """A forward hook on a cross-attention layer: (weight entropy, output selectivity) per call."""
    def hook(module, inputs, output):
        weights = module.weights(inputs[0], inputs[1])
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1).mean()
        out = output.float() - module.to_out[0].bias.float()  # (B, L, C), without the constant bias
        selectivity = out.var(dim=1, unbiased=False).mean() / out.pow(2).mean().clamp_min(1e-30)
        records.append((float(entropy), float(selectivity)))
    return hook
