"""The one training loop, for every model and stage.

AdamW at a constant learning rate (optionally after a linear warm-up), an EMA of the
weights (or of chosen submodules), optional gradient
clipping, bf16 autocast on GPUs, Dynamic Gaussian Anchoring refits on a
schedule, atomic checkpoints, exact resume, and DDP under torchrun.

Every schedule is counted in images (kimg = 1000 images) of the *global*
batch, which is split evenly over the processes, so a run means the same on 1
or 8 devices; the learning rate is never rescaled by the device count.

Exact resume. Every random draw of a step (diffusion times and noise, dropout,
Skip Dropout masks) comes from the global torch generator, re-seeded at the
start of each step from (seed, step, rank); the data order is a function of
(seed, step) (:mod:`disdis.train.sampler`); anchoring fits are seeded from
(seed, step). The checkpoint therefore only needs the weights, the EMA, the
optimizer moments, the anchors, the step and (for ``refit_source: recent``) the
token buffer: a run killed and resumed ends with the same weights as one that
was never interrupted.

The model contract (duck-typed; :mod:`disdis.models` builds conforming models):
  * ``forward(images) -> dict`` with a scalar ``"loss"``, optional scalar
    entries that are logged, and optionally ``"tokens"``: the batch's
    un-anchored unit tokens (B, U, D), detached.
  * optional ``setup(images)``: a one-time, data-dependent initialisation run on
    the first global batch before training (e.g. the latent scale 1/std).
  * anchoring, when ``anchoring_enabled`` is true: ``unit_tokens(images)`` ->
    (B, U, D) un-anchored tokens; ``fit_anchors(tokens (U, N, D), seed)`` -> the
    fit as a dict of tensors; ``load_anchors(tensors or None)``; an ``anchors``
    attribute with ``save(path)``.
Parameters with ``requires_grad`` are trained (a frozen first stage is not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from disdis.errors import ConfigError, DisdisError
from disdis.progress import progress
from disdis.train import checkpoint as ckpt
from disdis.train import distributed
from disdis.train.ema import EMA, named_submodules
from disdis.train.encode import encode_images
from disdis.train.logger import CSVLogger, read_csv_log
from disdis.train.sampler import StepBatchSampler


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
    freeze_kimg: float = 0.0                  # ... for the first this many kimg (a diagnostic; none by default)
    refit_every: float = 1.0                  # DyGA refit interval (released: every epoch; Cars3D/CelebA 5) ...
    refit_unit: Literal["epochs", "kimg"] = "epochs"  # ... counted in epochs or in kimg
    refit_source: Literal["subset", "recent"] = "subset"  # fixed training subset, or tokens of recent batches
    refit_images: int = 48000                 # tokens per fit (released: 10% of sets above 100k images)
    checkpoint_every_kimg: float = 512.0
    keep_checkpoints: int = 2
    log_every_kimg: float = 12.8
    probe_images: int = 4096                  # factor-grid images probed at every log (what each unit holds); 0: off
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True                         # bf16 autocast; used on GPUs only
    channels_last: bool = False               # 4-D weights and images channels-last: faster for the paper's networks
                                              # (benchmarks/train_step.py), slower for the demo's tiny ones on CPUs
    num_workers: int = 4

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
            (self.refit_every > 0, "refit_every", "positive"),
            (self.refit_images >= 1, "refit_images", "a positive integer"),
            (self.checkpoint_every_kimg > 0, "checkpoint_every_kimg", "positive"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1"),
            (self.log_every_kimg > 0, "log_every_kimg", "positive"),
            (self.probe_images >= 0, "probe_images", "0 or more"),
            (self.freeze_kimg >= 0, "freeze_kimg", "0 or more"),
            (self.num_workers >= 0, "num_workers", "0 or more"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"train.{key}: expected {expected}, got {getattr(self, key)!r}")
        for key in ("lr_scale", "group_eps"):
            for name, value in getattr(self, key).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"train.{key}.{name}: expected a positive number, got {value!r}")


@dataclass
class TrainResult:
    step: int
    checkpoint: Path
    final_loss: float


class NonFiniteLossError(DisdisError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class TrainingInterrupted(DisdisError):
    """SIGINT or SIGTERM arrived; the run saved a checkpoint at the step it had finished and stopped.
    ``exit_code`` is the shell's 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _StopSignals:
    """Between install() and restore(), SIGINT and SIGTERM only set ``received``; the loop then saves
    a checkpoint and stops."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def flag(self, device: torch.device) -> torch.Tensor:
        """1.0 once this rank has received a signal; reduced with the loss, so every rank stops together."""
        return torch.tensor(float(self.received is not None), device=device)


@dataclass
class _Schedule:
    """The run's intervals converted from images to whole steps."""
    total: int
    checkpoint: int
    log: int
    refit: int  # 0: never
    steps_per_epoch: int
    freeze: int  # steps with freeze_modules held fixed

    @classmethod
    def build(cls, cfg: TrainConfig, num_items: int, anchoring: bool) -> _Schedule:
        def steps(kimg: float) -> int:
            return max(1, round(kimg * 1000 / cfg.batch_size))
        steps_per_epoch = max(1, num_items // cfg.batch_size)
        refit = 0
        if anchoring:
            refit = max(1, round(cfg.refit_every * steps_per_epoch)) if cfg.refit_unit == "epochs" else steps(cfg.refit_every)
        return cls(total=steps(cfg.total_kimg), checkpoint=steps(cfg.checkpoint_every_kimg), log=steps(cfg.log_every_kimg),
                   refit=refit, steps_per_epoch=steps_per_epoch,
                   freeze=round(cfg.freeze_kimg * 1000 / cfg.batch_size) if cfg.freeze_modules else 0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


FIT_STREAM = 1 << 30  # the random stream of anchoring fits, apart from every rank's training stream


def step_seed(seed: int, step: int, stream: int) -> int:
    """The seed of the random draws made at ``step`` in ``stream`` (the rank, or FIT_STREAM)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` over ``cfg.lr``: linear from ``lr_warmup_start`` to 1 over
    ``lr_warmup_kimg`` (counted in images), then 1."""
    warm_steps = cfg.lr_warmup_kimg * 1000 / cfg.batch_size
    if step >= warm_steps:
        return 1.0
    return cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * step / warm_steps


def train(model: nn.Module, dataset: torch.utils.data.Dataset, cfg: TrainConfig, run_dir: str | Path,
          *, resume: bool = False, probe=None) -> TrainResult:
    """Train ``model`` on ``dataset`` (items: image tensor or (image, ...)); checkpoints go to ``run_dir``.

    With ``resume`` the newest readable checkpoint in ``run_dir/checkpoints`` is loaded and the run
    continues exactly where it stopped (from the start when there is none; a finished run returns
    at once). ``probe`` (e.g. :class:`disdis.diagnostics.UnitProbe`), called on rank 0 at every
    logging interval as ``probe(model, step, kimg) -> dict``, adds its scalars to the log row; it
    is opened with ``probe.open(resume_step)`` and closed with ``probe.close()``.
    """
    run_dir = Path(run_dir)
    device = distributed.init(resolve_device(cfg.device).type)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    anchoring = bool(getattr(model, "anchoring_enabled", False))
    sched = _Schedule.build(cfg, len(dataset), anchoring)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    model.to(device).train()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank=rank, world_size=world)
    state = _load_latest(run_dir / "checkpoints") if resume else None
    if state is None:
        start = 0
        if hasattr(model, "setup"):  # every rank sees the whole first global batch: same result, no messages
            first = _collate([dataset[int(i)] for i in sampler.global_batch(0)]).to(device)
            with torch.no_grad():
                model.setup(first)
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for m in named_submodules(model, cfg.freeze_modules, "train.freeze_modules")
              for p in m.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, cfg, fused=device.type in ("cpu", "cuda"))
    ema = EMA(model, cfg.ema_halflife_kimg * 1000, warmup=cfg.ema_warmup, modules=cfg.ema_modules)
    recent = _TokenBuffer(min(cfg.refit_images, len(dataset))) if anchoring and cfg.refit_source == "recent" else None
    if state is not None:
        start = _restore(state, model, ema, optimizer, recent, device, cfg)
    sampler.start_step = start

    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda", collate_fn=_collate,
                                         persistent_workers=False,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    subset = None
    if anchoring and cfg.refit_source == "subset":
        subset = np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(dataset), size=min(cfg.refit_images, len(dataset)), replace=False))

    resume_step = start if state is not None else None
    logger = CSVLogger(run_dir / "logs" / "train.csv", resume_step) if main else None
    fit_log = CSVLogger(run_dir / "logs" / "fits.csv", resume_step, tensorboard=False) if main and anchoring else None
    probe = probe if main else None
    if probe is not None:
        probe.open(resume_step)
    last_ckpt = state.path if state is not None else None
    bar = progress(total=sched.total, initial=start, desc="train", unit="step", disable=None if main else True)
    totals: dict[str, torch.Tensor] = {}
    window_start, window_steps = time.perf_counter(), 0
    loss_value = float("nan")
    if start >= sched.total:  # a finished run: report its last logged loss
        rows = read_csv_log(logger.path) if main and logger.path.is_file() else []
        loss_value = rows[-1]["loss"] if rows else loss_value
        if main:
            print(f"the run is already finished (step {start} of {sched.total}); nothing to train", file=sys.stderr)
    data = iter(loader)
    stop = _StopSignals()
    try:
        stop.install()
        for step in range(start, sched.total):
            torch.manual_seed(step_seed(cfg.seed, step, rank))
            images = next(data).to(device, non_blocking=True).contiguous(memory_format=layout)
            with _autocast(device, use_bf16):
                out = ddp(images)
            loss = out["loss"]
            # the stop flag rides on the loss's all-reduce: no extra collective per step
            loss_mean, stopping = distributed.all_reduce_mean(torch.stack([loss.detach().float(), stop.flag(device)]))
            loss_value = float(loss_mean)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss_value}) at step {step} ({step * cfg.batch_size / 1000:g} kimg); the run stopped "
                    f"without saving; last good checkpoint: {last_ckpt or 'none (nothing saved yet)'}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.lr_warmup_kimg:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * group["lr_scale"] * lr_factor(cfg, step)
            if step < sched.freeze:
                for p in frozen:  # AdamW skips parameters without a gradient: no step, no decay
                    p.grad = None
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            ema.update(model, cfg.batch_size)
            if recent is not None:
                recent.add(distributed.gather_shards(out["tokens"].detach().float(), cfg.batch_size))
            _accumulate(totals, out, loss_mean)
            window_steps += 1
            done = step + 1
            bar.update(1)

            if sched.refit and done % sched.refit == 0:
                _refit(model, ema, dataset, subset, recent, cfg, device, use_bf16, done, run_dir, fit_log)
            if done % sched.checkpoint == 0 or done == sched.total:
                if main:
                    last_ckpt = _save(run_dir / "checkpoints", model, ema, optimizer, recent, cfg, done, sched)
                    ckpt.prune_checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints)
            if done % sched.log == 0 or done == sched.total:
                elapsed = time.perf_counter() - window_start
                row = {"step": done, "kimg": done * cfg.batch_size / 1000, "epoch": done / max(sched.steps_per_epoch, 1)}
                row.update({k: float(v) / window_steps for k, v in totals.items()})
                row.update({"img_per_s": window_steps * cfg.batch_size / elapsed, "sec_per_step": elapsed / window_steps})
                if probe is not None:
                    row.update(probe(model, done, row["kimg"]))
                if main:
                    logger.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}")
                    if bar.disable:  # no live bar (not a terminal): one line per interval instead
                        print(f"step {done}/{sched.total}  kimg {row['kimg']:.1f}  loss {row['loss']:.4f}  "
                              f"{row['img_per_s']:.1f} img/s", file=sys.stderr, flush=True)
                totals.clear()
                window_start, window_steps = time.perf_counter(), 0
            if stopping > 0:
                saved = done % sched.checkpoint == 0 or done == sched.total
                if main and not saved:
                    last_ckpt = _save(run_dir / "checkpoints", model, ema, optimizer, recent, cfg, done, sched)
                    ckpt.prune_checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints)
                signum = stop.received or signal.SIGTERM
                raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} after step {done}; saved "
                                          f"{last_ckpt}; continue with --resume {run_dir}", signum)
    finally:
        stop.restore()
        bar.close()
        for log in (logger, fit_log, probe):
            if log is not None:
                log.close()
        del data
    distributed.barrier()
    return TrainResult(step=sched.total, checkpoint=last_ckpt, final_loss=loss_value)


# ---------------------------------------------------------------------------------------------
# Anchoring refits


class _TokenBuffer:
    """The most recent ``capacity`` token rows seen in training (all ranks), oldest first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.tokens: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.cpu()
        self.tokens = rows if self.tokens is None else torch.cat([self.tokens, rows])
        self.tokens = self.tokens[-self.capacity:]


def _refit(model, ema: EMA, dataset, subset, recent: _TokenBuffer | None, cfg: TrainConfig, device: torch.device,
           use_bf16: bool, step: int, run_dir: Path, fit_log: CSVLogger | None) -> None:
    """Fit the anchors on tokens from every rank, once on rank 0, and broadcast the fit."""
    start = time.perf_counter()
    if recent is not None:
        tokens = recent.tokens
    else:
        distributed.broadcast_buffers(model)  # encode every shard with rank 0's BatchNorm statistics
        model.eval()
        per_rank = max(1, cfg.batch_size // distributed.world_size())
        tokens = encode_images(model.unit_tokens, dataset, subset, per_rank, device, bf16=use_bf16,
                               num_workers=cfg.num_workers, desc=f"tokens for anchoring fit (step {step})")
        model.train()
    fit = None
    if distributed.is_main():
        fit = {k: v.cpu() for k, v in model.fit_anchors(tokens.transpose(0, 1).contiguous(), seed=step_seed(cfg.seed, step, FIT_STREAM)).items()}
    fit = distributed.broadcast_tensors(fit)
    model.load_anchors(fit)
    ema.module.load_anchors(fit)
    if distributed.is_main():
        (run_dir / "fits").mkdir(parents=True, exist_ok=True)
        model.anchors.save(run_dir / "fits" / f"fit-{step:09d}.safetensors")
        counts = model.anchors.num_components
        fit_log.log({"step": step, "tokens": len(tokens), "seconds": time.perf_counter() - start,
                     "components_mean": sum(counts) / len(counts), "components_min": min(counts),
                     "components_max": max(counts)})


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class _State:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict


def _save(directory: Path, model: nn.Module, ema: EMA, optimizer, recent: _TokenBuffer | None,
          cfg: TrainConfig, step: int, sched: _Schedule) -> Path:
    optim_tensors, groups = ckpt.optimizer_state(optimizer)
    tensors = {**ckpt.with_prefix("model", model.state_dict()), **ckpt.with_prefix("ema", ema.module.state_dict()),
               **ckpt.with_prefix("optim", optim_tensors)}
    anchors = getattr(model, "anchors", None)
    if anchors is not None:
        tensors.update(ckpt.with_prefix("anchors", anchors.to_tensors()))
    if recent is not None and recent.tokens is not None:
        tensors["recent_tokens"] = recent.tokens
    epoch, offset = divmod(step, sched.steps_per_epoch)
    meta = {"step": step, "kimg": step * cfg.batch_size / 1000, "epoch": epoch, "batch_in_epoch": offset,
            "seed": cfg.seed, "batch_size": cfg.batch_size, "world_size": distributed.world_size(),
            "ema_updates": ema.num_updates, "optimizer_groups": groups}
    return ckpt.save_checkpoint(ckpt.checkpoint_path(directory, step), tensors, meta)


def _load_latest(directory: Path) -> _State | None:
    """The newest readable checkpoint; an unreadable newest one is reported and skipped."""
    found = ckpt.list_checkpoints(directory)
    if not found:  # stopped before its first save: start from the beginning
        if distributed.is_main():
            print(f"no checkpoint in {directory}; starting from step 0", file=sys.stderr)
        return None
    for path in reversed(found):
        try:
            tensors, meta = ckpt.load_checkpoint(path)
        except ckpt.CheckpointError as err:
            if distributed.is_main():
                # set aside, so that rotation never counts it among the checkpoints it keeps
                aside = path.with_name(path.name + ".unreadable")
                print(f"warning: {err}; moved to {aside.name}; trying the previous checkpoint", file=sys.stderr)
                path.replace(aside)
            continue
        return _State(path, tensors, meta)
    raise ckpt.CheckpointError(f"{directory}: no readable checkpoint to resume from")


def check_resumable(meta: dict, cfg: TrainConfig, path: Path) -> None:
    """A run resumes with the batch it was trained at: its steps, data order and kimg count assume it."""
    if meta["batch_size"] != cfg.batch_size:
        raise ConfigError(f"train.batch_size: the run of {path} was trained at batch {meta['batch_size']}; "
                          f"resume it with that batch (got {cfg.batch_size})")


def _restore(state: _State, model: nn.Module, ema: EMA, optimizer, recent: _TokenBuffer | None,
             device: torch.device, cfg: TrainConfig) -> int:
    check_resumable(state.meta, cfg, state.path)
    anchors = ckpt.strip_prefix("anchors", state.tensors)
    if hasattr(model, "load_anchors"):
        model.load_anchors(anchors or None)
        ema.module.load_anchors(anchors or None)
    _load_weights(model, ckpt.strip_prefix("model", state.tensors), state.path)
    _load_weights(ema.module, ckpt.strip_prefix("ema", state.tensors), state.path)
    ckpt.load_optimizer_state(optimizer, ckpt.strip_prefix("optim", state.tensors), state.meta["optimizer_groups"])
    ema.num_updates = int(state.meta["ema_updates"])
    if recent is not None and "recent_tokens" in state.tensors:
        recent.tokens = state.tensors["recent_tokens"]
    if distributed.is_main():
        print(f"resuming from {state.path} (step {state.meta['step']}, {state.meta['kimg']:g} kimg)", file=sys.stderr)
    return int(state.meta["step"])


def _load_weights(module: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"{path}: weights do not match the configured model "
                                   f"({str(err).splitlines()[0]})") from None


# ---------------------------------------------------------------------------------------------
# Small helpers


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = True) -> torch.optim.AdamW:
    """The run's AdamW over the model's trained parameters, in the groups of :func:`_param_groups`;
    ``fused``: one kernel for the whole update instead of a loop over parameter tensors."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(_param_groups(model, params, cfg), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, fused=fused)


def _param_groups(model: nn.Module, params: list[nn.Parameter], cfg: TrainConfig) -> list[dict]:
    """One AdamW group of every trained parameter (released), or, for each submodule named in
    ``lr_scale`` or ``group_eps``, a group of its own at its multiple of the learning rate and its
    eps, plus one group of the rest."""
    modules = {name: module for key in ("lr_scale", "group_eps")
               for name, module in zip(getattr(cfg, key), named_submodules(model, list(getattr(cfg, key)), f"train.{key}"))}
    taken: set[int] = set()
    groups = []
    for name, module in modules.items():
        own = [p for p in module.parameters() if p.requires_grad and id(p) not in taken]
        taken.update(id(p) for p in own)
        scale = float(cfg.lr_scale.get(name, 1.0))
        groups.append({"params": own, "lr": cfg.lr * scale, "lr_scale": scale,
                       "eps": float(cfg.group_eps.get(name, cfg.adam_eps))})
    rest = [p for p in params if id(p) not in taken]
    return [{"params": rest, "lr": cfg.lr, "lr_scale": 1.0}, *groups]


def _collate(items: list) -> torch.Tensor:
    """Stack the images of dataset items (an image tensor, or a tuple whose first entry is one)."""
    return torch.stack([item[0] if isinstance(item, (list, tuple)) else item for item in items])


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _accumulate(totals: dict[str, torch.Tensor], out: dict, loss_mean: torch.Tensor) -> None:
    values = {"loss": loss_mean, **{k: v for k, v in out.items() if k not in ("loss", "tokens")}}
    for key, value in values.items():
        value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
        totals[key] = totals[key] + value if key in totals else value.clone()
