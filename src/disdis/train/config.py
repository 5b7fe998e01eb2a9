"""The ``train`` section of a run: optimisation and bookkeeping of the one training loop."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from disdis.errors import ConfigError


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Durations are in kimg (thousands of images of the global batch)."""
    batch_size: int = 512                     # global batch, split over processes (released: 512; CelebA 64)
    total_kimg: float = 51200.0               # 100k steps at batch 512 (released)
    lr: float = 1e-4                          # constant, no warm-up, never scaled by device count (released)
    lr_scale: dict[str, float] = dataclasses.field(default_factory=dict)  # submodule -> multiple of lr (own group)
    lr_warmup_kimg: float = 0.0               # linear warm-up over this many images (EncDiff: 10k steps x 128)
    lr_warmup_start: float = 1e-6             # ... from this fraction of lr (EncDiff's LambdaLinearScheduler)
    weight_decay: float = 0.01                # torch AdamW default, as in the released code
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8                    # torch's default; a large eps makes steps shrink with weak gradients
    group_eps: dict[str, float] = dataclasses.field(default_factory=dict)  # submodule -> its own group's eps
    grad_clip: Optional[float] = None         # max global grad norm; null = no clipping
    ema_halflife_kimg: float = 3549.0         # = decay 0.9999 per step at batch 512 (released)
    ema_warmup: bool = True                   # cap decay by (1+n)/(10+n) (released LitEma)
    ema_modules: Optional[list[str]] = None   # submodules the EMA averages (released: [unet]); null: all trained
    freeze_modules: list[str] = dataclasses.field(default_factory=list)  # submodules held fixed ...
    freeze_kimg: float = 0.0                  # ... for the first this many kimg (none by default; the demo holds
                                              # its warm-started extractor while the U-Net learns to read it)
    max_minutes: Optional[float] = None       # stop (with a checkpoint) after this much training time, summed
                                              # over resumed sessions: equal wall time for comparisons
    checkpoint_every_kimg: float = 512.0
    keep_checkpoints: int = 2
    log_every_kimg: float = 12.8
    probe_images: int = 4096                  # factor-grid images probed at every log (what each unit holds); 0: off
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True                         # bf16 autocast; used on GPUs only
    channels_last: bool = False               # 4-D weights and images channels-last: faster for the paper's networks
                                              # (benchmarks/train_step.py), slower for the demo's tiny ones on CPUs
    compile: bool = False                     # torch.compile the method's networks (Method.networks): the demo's step
                                              # 1.2x on CPUs after about 2 min of compiling (cached for later runs),
                                              # which its 3-min stage does not earn back (docs/demo-study.md)
    shards: int = 1                           # the step's batch cut into this many shards, each on a thread of its
                                              # own (CPU, one process; disdis.train.shards): the demo's step 1.1-1.2x
    num_workers: int = 4

    def steps(self, kimg: float) -> int:
        """Whole steps of the global batch in ``kimg`` thousand images (at least 1)."""
        return max(1, round(kimg * 1000 / self.batch_size))

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, "batch_size", "a positive integer"),
            (self.total_kimg > 0, "total_kimg", "positive"),
            (self.lr > 0, "lr", "positive"),
            (self.lr_warmup_kimg >= 0, "lr_warmup_kimg", "0 or more"),
            (0 < self.lr_warmup_start <= 1, "lr_warmup_start", "in (0, 1]"),
            (self.weight_decay >= 0, "weight_decay", "0 or more"),
            (self.adam_eps > 0, "adam_eps", "positive"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip", "positive or null"),
            (self.ema_halflife_kimg >= 0, "ema_halflife_kimg", "0 or more"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes", "positive or null"),
            (self.checkpoint_every_kimg > 0, "checkpoint_every_kimg", "positive"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1"),
            (self.log_every_kimg > 0, "log_every_kimg", "positive"),
            (self.probe_images >= 0, "probe_images", "0 or more"),
            (self.freeze_kimg >= 0, "freeze_kimg", "0 or more"),
            (self.num_workers >= 0, "num_workers", "0 or more"),
            (self.shards >= 1 and self.shards <= self.batch_size, "shards", "from 1 to batch_size"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"train.{key}: expected {expected}, got {getattr(self, key)!r}")
        for key in ("lr_scale", "group_eps"):
            for name, value in getattr(self, key).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"train.{key}.{name}: expected a positive number, got {value!r}")
