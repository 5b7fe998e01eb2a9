"""The extractor's units unmixed once, at the start of a run (``method.unmix_units``; docs/method.md).

A warm start can hand over two factors mixed by a rotation over two units (docs/demo-study.md, "Why
seed 9 fails"); the diffusion stage keeps such a mix. Before the first step of a fresh run,
:class:`UnitUnmixing` encodes the training images (all, or a fixed random subset of ``max_images``)
with the extractor in eval mode, finds the kurtosis-maximising linear map of the units
(:func:`disdis.ica.kurtosis_rotation`, the pairs in ``order``), and folds it into the extractor's
last layer, so the extractor itself outputs the unmixed units from then on (checkpoints hold the
folded weights; a resumed run does not unmix again). Units whose spread is below ``min_spread`` of
the largest (a variational warm start's switched-off units) are left as they are. Every rank encodes
the same images and computes the same map (float64, no random draw). The run's
``logs/unmixing.json`` records the map and the kurtosis before and after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from disdis.ica import kurtosis_rotation
from disdis.rundir import RunDir
from disdis.train import distributed
from disdis.train.encode import encode_training_subset
from disdis.train.hooks import Hook, HookContext


def record_path(run_dir) -> Path:
    """``logs/unmixing.json`` of a run (a folder or a RunDir): the map and what the unmixing did."""
    return RunDir.of(run_dir).log("unmixing").with_suffix(".json")


def read_record(run_dir) -> dict | None:
    """The run's unmixing record (:func:`record_path`); None for a run that did not unmix."""
    path = record_path(run_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def fold_linear(layer: torch.nn.Linear, matrix: np.ndarray, offset: np.ndarray) -> None:
    """Make ``layer`` output ``matrix @ layer(x) + offset``."""
    with torch.no_grad():
        m = torch.as_tensor(matrix, dtype=torch.float64, device=layer.weight.device)
        layer.weight.copy_(m @ layer.weight.double())
        layer.bias.copy_(m @ layer.bias.double() + torch.as_tensor(offset, dtype=torch.float64, device=m.device))


class UnitUnmixing(Hook):
    name = "unit_unmixing"

    def __init__(self, extractor: torch.nn.Module, max_images: int = 10000, min_spread: float = 0.1,
                 order: str = "largest_gain"):
        self.extractor = extractor
        self.order = order
        self.max_images = max_images
        self.min_spread = min_spread

    def start(self, ctx: HookContext, images: torch.Tensor) -> None:
        # in float32 even where training runs under bf16: the fourth moments need the precision
        units = encode_training_subset(self.extractor, ctx, self.max_images, 2, "units to unmix").double().numpy()
        count = len(units)
        fit = kurtosis_rotation(units, self.min_spread, order=self.order)
        fold_linear(self.extractor.fc[-1], fit.matrix, fit.offset)
        if distributed.is_main():
            print(f"units unmixed on {count} images: {int(fit.active.sum())} of {len(fit.active)} units active, "
                  f"{fit.rotations} rotations ({self.order}), summed |excess kurtosis| "
                  f"{fit.kurtosis_before:.2f} -> {fit.kurtosis_after:.2f}", file=sys.stderr)
            record = {"images": count, "active": fit.active.tolist(), "order": self.order,
                      "rotations": fit.rotations, "kurtosis_before": fit.kurtosis_before,
                      "kurtosis_after": fit.kurtosis_after, "matrix": fit.matrix.tolist(), "offset": fit.offset.tolist()}
            path = record_path(ctx.run_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))
