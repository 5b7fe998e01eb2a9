"""The one training loop, for every method and stage.

AdamW over the groups the method declares (optionally after a linear warm-up), an EMA of
the weights (or of chosen submodules), optional gradient clipping, bf16 autocast on GPUs,
the method's hooks on their schedules, atomic checkpoints, exact resume, and DDP under
torchrun. The loop knows no particular method: a model follows the protocol of
:class:`disdis.models.method.Method` (``forward(images) -> dict`` with a scalar ``"loss"``
and scalars to log, ``param_groups(cfg)``, ``hooks()``); whatever a method keeps between
steps lives in its buffers or in its hooks' ``state_dict``, and is checkpointed with them.
Parameters with ``requires_grad`` are trained (a frozen first stage is not).

Every schedule is counted in images (kimg = 1000 images) of the *global*
batch, which is split evenly over the processes, so a run means the same on 1
or 8 devices; the learning rate is never rescaled by the device count.

On one process the step's batch may be cut into shards, each run on a thread of its own
(``train.shards``, :mod:`disdis.train.shards`): on a CPU of few cores the cores do more that way.

Exact resume. Every random draw of a step (diffusion times and noise, dropout,
Skip Dropout masks) comes from the global torch generator, re-seeded at the
start of each step from (seed, step, rank), or with shards from each shard's generator, seeded
from (seed, step, shard); the data order is a function of
(seed, step) (:mod:`disdis.train.sampler`); hooks seed their own draws from
(seed, step). The checkpoint therefore only needs the weights and buffers, the
EMA, the optimizer moments, the hooks' state and the step: a run killed and
resumed ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from disdis.errors import ConfigError, DisdisError
from disdis.progress import progress
from disdis.rundir import RunDir
from disdis.train import checkpoint as ckpt
from disdis.train import distributed
from disdis.train.config import TrainConfig
from disdis.train.ema import EMA, named_submodules
from disdis.train.hooks import Hook, HookContext
from disdis.train.logger import CSVLogger, read_csv_log
from disdis.train.optim import lr_factor, make_optimizer
from disdis.train.sampler import StepBatchSampler, step_seed
from disdis.train.shards import ShardedStep

ONE_PROCESS = "one process only (under torchrun, set train.shards: 1)"  # train.shards and DDP, refused together

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "TrainStep", "TrainingInterrupted", "train"]


@dataclass
class TrainResult:
    step: int
    checkpoint: Path
    final_loss: float


class NonFiniteLossError(DisdisError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class TrainingInterrupted(DisdisError):
    """SIGINT or SIGTERM arrived; the run saved a checkpoint at the step it had finished and stopped.
    ``stopped`` says so, ``how`` is the way to continue; ``exit_code`` is the shell's 128 + the signal's
    number."""

    def __init__(self, stopped: str, signum: int, how: str):
        super().__init__(f"{stopped}; continue with {how}")
        self.stopped, self.signum, self.exit_code = stopped, signum, 128 + signum

    def continued_with(self, how: str) -> TrainingInterrupted:
        """The same stop with another way to continue: the loop names the stage it was training
        (``--resume RUN/first_stage`` while a run trains its own first stage, which would finish that
        stage alone); the commands name the whole run (``--resume RUN``, or ``disdis demo --out DIR``)."""
        return TrainingInterrupted(self.stopped, self.signum, how)


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

    def flag(self) -> float:
        """1.0 once this rank has received a signal; reduced with the loss, so every rank stops together."""
        return float(self.received is not None)


@dataclass
class _Schedule:
    """The run's intervals converted from images to whole steps."""
    total: int
    checkpoint: int
    log: int
    steps_per_epoch: int

    @classmethod
    def build(cls, cfg: TrainConfig, num_items: int) -> _Schedule:
        return cls(total=cfg.steps(cfg.total_kimg), checkpoint=cfg.steps(cfg.checkpoint_every_kimg),
                   log=cfg.steps(cfg.log_every_kimg), steps_per_epoch=max(1, num_items // cfg.batch_size))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


@dataclass
class StepOutput:
    out: dict                 # the model's output
    loss: float               # the loss, averaged over ranks
    stopping: bool            # some rank received SIGINT or SIGTERM
    out_of_time: bool = False # the run's time budget (train.max_minutes) is spent


class TrainStep:
    """One optimisation step as the loop runs it, and what it needs between steps: the optimizer
    over the method's parameter groups, the EMA, and the hooks on their intervals.

    A step: seed the step's draws; forward under autocast; average the loss over ranks (with the
    stop flag riding on that all-reduce: no extra collective); backward (with ``train.shards``, forward
    and backward run on the shards' threads, and their summed gradients are set); the warm-up rate;
    frozen modules held; gradient clipping; AdamW; the hooks (``after_step``, then those due);
    the EMA update. ``benchmarks/train_step.py`` times exactly this.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, *,
                 wrap: Callable[[nn.Module], nn.Module] | None = None, hooks: list[Hook] = (),
                 ctx: HookContext | None = None, freeze_steps: int = 0):
        self.model, self.wrap, self.cfg, self.device = model, wrap, cfg, device
        self.ddp = wrap(model) if wrap is not None else model
        self.bf16 = cfg.bf16 and device.type == "cuda"
        self.optimizer = make_optimizer(model, cfg, fused=device.type in ("cpu", "cuda"))
        self.ema = EMA(model, cfg.ema_halflife_kimg * 1000, warmup=cfg.ema_warmup, modules=cfg.ema_modules)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.frozen = [p for m in named_submodules(model, cfg.freeze_modules, "train.freeze_modules")
                       for p in m.parameters() if p.requires_grad]
        self.freeze_steps = freeze_steps
        self.holding = False
        self.hooks, self.ctx = list(hooks), ctx
        self.intervals = [hook.interval(ctx) for hook in self.hooks] if ctx is not None else [0] * len(self.hooks)
        self.rank = distributed.rank()
        if cfg.shards > 1 and wrap is not None:
            raise ConfigError(f"train.shards: {ONE_PROCESS}")
        self.shards = ShardedStep(model, cfg.shards, cfg.seed) if cfg.shards > 1 else None

    def __call__(self, images: torch.Tensor, step: int, stop_flag: float = 0.0, time_flag: float = 0.0) -> StepOutput:
        torch.manual_seed(step_seed(self.cfg.seed, step, self.rank))
        self.hold(step < self.freeze_steps)
        if self.shards is not None:  # forward and backward, on the shards' threads
            out, grads = self.shards(images, step)
        else:
            with _autocast(self.device, self.bf16):
                out = self.ddp(images)
        loss = out["loss"]
        flags = torch.tensor([stop_flag, time_flag], device=self.device)
        # the step's one host read: the rank-averaged loss and the stop flags together
        loss_mean, stopping, out_of_time = distributed.all_reduce_mean(
            torch.cat([loss.detach().float().view(1), flags])).tolist()
        if not math.isfinite(loss_mean):
            raise NonFiniteLossError(f"non-finite loss ({loss_mean}) at step {step} "
                                     f"({step * self.cfg.batch_size / 1000:g} kimg)")
        self.optimizer.zero_grad(set_to_none=True)
        if self.shards is not None:
            for p, grad in grads:
                p.grad = grad
        else:
            loss.backward()
        if self.cfg.lr_warmup_kimg:
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(self.cfg, step)
        if self.holding:
            for p in self.frozen:  # AdamW skips parameters without a gradient: no step, no decay
                p.grad = None
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_step(out)
        for hook, every in zip(self.hooks, self.intervals):
            if every and (step + 1) % every == 0:
                with between_steps():
                    hook(self.ctx, step + 1)
        self.ema.update(self.model, self.cfg.batch_size)
        return StepOutput(out, loss_mean, stopping > 0, out_of_time > 0)

    def close(self) -> None:
        """Stop the shards' threads and take their hooks off the model (a no-op without shards)."""
        if self.shards is not None:
            self.shards.close()

    def hold(self, holding: bool) -> None:
        """Hold the frozen modules still (``train.freeze_modules``) or release them. Held parameters stop
        requiring a gradient: they leave the graph (no backward through them: the demo's held step runs
        1.12x faster), and the EMA, which averages only parameters that do, leaves them as they are,
        which equals averaging a weight that does not move. DDP reduces the gradients of the parameters
        that required one when it was built, so it is built again (``wrap``) whenever the hold changes."""
        if holding != self.holding:
            for p in self.frozen:
                p.requires_grad_(not holding)
            if self.wrap is not None:
                self.ddp = self.wrap(self.model)
        self.holding = holding


def check_step(model: nn.Module, cfg: TrainConfig) -> None:
    """What the step's settings ask of the model and the run, checked before any work: the submodules
    they name (held still, averaged, given their own learning rate or eps); networks to compile; for
    shards, a method that declares them safe (the ``"shards"`` capability), no dropout layer (it draws
    from torch's global generator), one process, the CPU, no compiling."""
    for key in ("freeze_modules", "ema_modules", "lr_scale", "group_eps"):
        named_submodules(model, list(getattr(cfg, key) or ()), f"train.{key}")
    name = type(model).__name__
    if cfg.compile and not getattr(model, "networks", ()):
        raise ConfigError(f"train.compile: {name} names no networks to compile")
    if cfg.shards == 1:
        return
    dropout = next((n for n, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0), None)
    problems = [(not getattr(model, "can", lambda _: False)("shards"),
                 f"{name} does not declare its training forward safe to run on several threads"),
                (dropout is not None, f"dropout {dropout!r} draws from torch's global generator, which threads "
                                      f"cannot share reproducibly (set its rate to 0, or train.shards: 1)"),
                (resolve_device(cfg.device).type != "cpu", "the step's threads are for CPUs (train.device: cpu)"),
                (cfg.compile, "not with train.compile"),
                (distributed.launched_world_size() > 1, ONE_PROCESS)]
    for bad, why in problems:
        if bad:
            raise ConfigError(f"train.shards: {why}")


def between_steps():
    """The context of the work between steps (hooks, the probe): eager under ``train.compile``, whose
    graphs are the step's; compiled, each other mode the networks run in (evaluation, no gradient,
    a probe's forward hooks) would cost a compilation of its own."""
    return torch.compiler.set_stance("force_eager")


def train(model: nn.Module, dataset: torch.utils.data.Dataset, cfg: TrainConfig, run_dir: str | Path | RunDir,
          *, resume: bool = False, probe=None) -> TrainResult:
    """Train ``model`` on ``dataset`` (items: image tensor or (image, ...)); checkpoints go to ``run_dir``.

    With ``resume`` the newest readable checkpoint in ``run_dir/checkpoints`` is loaded and the run
    continues exactly where it stopped (from the start when there is none; a finished run returns
    at once). ``probe`` (e.g. :class:`disdis.diagnostics.UnitProbe`), called on rank 0 at every
    logging interval as ``probe(model, step, kimg) -> dict``, adds its scalars to the log row; it
    is opened with ``probe.open(resume_step)`` and closed with ``probe.close()``.
    """
    run = RunDir.of(run_dir)
    device = distributed.init(resolve_device(cfg.device).type)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    sched = _Schedule.build(cfg, len(dataset))
    configure_backends(device)

    model.to(device).train()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    check_step(model, cfg)
    if cfg.compile:
        model.compile_networks()
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank=rank, world_size=world)
    state = _load_latest(run.checkpoints) if resume else None
    resume_step = int(state.meta["step"]) if state is not None else None
    hooks = model.hooks()
    ctx = HookContext(model=model, dataset=dataset, cfg=cfg, device=device, bf16=cfg.bf16 and device.type == "cuda",
                      run_dir=run, resume_step=resume_step, steps_per_epoch=sched.steps_per_epoch)
    probe = probe if main else None
    logger = CSVLogger(run.log("train"), resume_step) if main else None
    try:
        for hook in hooks:
            hook.open(ctx)
        if probe is not None:
            probe.open(resume_step)
        if state is None:  # every rank sees the whole first global batch
            first = collate_images([dataset[int(i)] for i in sampler.global_batch(0)]).to(device)
            with between_steps():
                for hook in hooks:
                    hook.start(ctx, first)
        wrap = None
        if world > 1:
            wrap = functools.partial(nn.parallel.DistributedDataParallel,
                                     device_ids=[device.index] if device.type == "cuda" else None)
        freeze = round(cfg.freeze_kimg * 1000 / cfg.batch_size) if cfg.freeze_modules else 0
        stepper = TrainStep(model, cfg, device, wrap=wrap, hooks=hooks, ctx=ctx, freeze_steps=freeze)
        ctx.optimizer = stepper.optimizer
        start = _restore(state, stepper, cfg) if state is not None else 0
        seconds = float(state.meta.get("train_seconds", 0.0)) if state is not None else 0.0
        sampler.start_step = start
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=_workers(cfg.num_workers),
                                             pin_memory=device.type == "cuda", collate_fn=collate_images,
                                             persistent_workers=False,
                                             generator=torch.Generator().manual_seed(cfg.seed))
        return _run(stepper, loader, sched, start, state.path if state is not None else None, run, logger, probe,
                    layout, seconds)
    finally:
        for log in (logger, *hooks, probe):
            if log is not None:
                log.close()


def _run(stepper: TrainStep, loader, sched: _Schedule, start: int, last_ckpt: Path | None, run: RunDir,
         logger: CSVLogger | None, probe, layout, seconds_before: float) -> TrainResult:
    """The steps from ``start`` to the end (or to the time budget), with logging, checkpoints and the
    stop signals. ``seconds_before``: the training time of the run's earlier sessions."""
    cfg, device, main = stepper.cfg, stepper.device, distributed.is_main()
    budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    session_start = time.perf_counter()

    def seconds() -> float:
        return seconds_before + time.perf_counter() - session_start

    bar = progress(total=sched.total, initial=start, desc="train", unit="step", disable=None if main else True)
    totals: dict[str, torch.Tensor] = {}
    window_start, window_steps = time.perf_counter(), 0
    loss_value = float("nan")
    finished = start >= sched.total or seconds_before >= budget
    if finished:  # a finished run: report its last logged loss
        rows = read_csv_log(logger.path) if main and logger.path.is_file() else []
        loss_value = rows[-1]["loss"] if rows else loss_value
        if main:
            why = f"step {start} of {sched.total}" if start >= sched.total else f"its {cfg.max_minutes:g} minutes are spent"
            print(f"the run is already finished ({why}); nothing to train", file=sys.stderr)
    data = iter(loader)
    stop = _StopSignals()
    done = start
    try:
        stop.install()
        for step in range(start, start if finished else sched.total):
            images = next(data).to(device, non_blocking=True).contiguous(memory_format=layout)
            try:
                result = stepper(images, step, stop.flag(), float(main and seconds() >= budget))
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"{err}; the run stopped without saving; last good checkpoint: "
                                         f"{last_ckpt or 'none (nothing saved yet)'}") from None
            done = step + 1
            _accumulate(totals, result.out, result.loss)
            window_steps += 1
            bar.update(1)
            last = done == sched.total or result.out_of_time
            saved = done % sched.checkpoint == 0 or last
            if main and (saved or result.stopping):
                last_ckpt = _save(run.checkpoints, stepper, cfg, done, sched, seconds())
                ckpt.prune_checkpoints(run.checkpoints, cfg.keep_checkpoints)
            if done % sched.log == 0 or last:
                elapsed = time.perf_counter() - window_start
                row = {"step": done, "kimg": done * cfg.batch_size / 1000, "epoch": done / max(sched.steps_per_epoch, 1)}
                row.update({k: float(v) / window_steps for k, v in totals.items()})
                row.update({"img_per_s": window_steps * cfg.batch_size / elapsed, "sec_per_step": elapsed / window_steps})
                loss_value = row["loss"]  # the final loss: the last window's mean (every run ends on a logged step),
                                          # what a resume of a finished run reads back
                if probe is not None:
                    with between_steps():
                        row.update(probe(stepper.model, done, row["kimg"]))
                if main:
                    logger.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}")
                    if bar.disable:  # no live bar (not a terminal): one line per interval instead
                        print(f"step {done}/{sched.total}  kimg {row['kimg']:.1f}  loss {row['loss']:.4f}  "
                              f"{row['img_per_s']:.1f} img/s", file=sys.stderr, flush=True)
                totals.clear()
                window_start, window_steps = time.perf_counter(), 0
            if result.stopping:
                signum = stop.received or signal.SIGTERM
                raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} after step {done}; saved "
                                          f"{last_ckpt}", signum, f"--resume {run}")
            if result.out_of_time:
                if main:
                    print(f"time budget reached: {cfg.max_minutes:g} minutes of training, step {done} "
                          f"({done * cfg.batch_size / 1000:g} kimg)", file=sys.stderr)
                break
    finally:
        stop.restore()
        bar.close()
        del data
        stepper.hold(False)  # a run stopped while holding returns a model whose parameters all train
        stepper.close()
    distributed.barrier()
    return TrainResult(step=done, checkpoint=last_ckpt, final_loss=loss_value)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class _State:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict


def _save(directory: Path, stepper: TrainStep, cfg: TrainConfig, step: int, sched: _Schedule, seconds: float) -> Path:
    optim_tensors, groups = ckpt.optimizer_state(stepper.optimizer)
    requires = stepper.model.dependencies()
    tensors = {**ckpt.with_prefix("model", own_state(stepper.model.state_dict(), requires)),
               **ckpt.with_prefix("ema", own_state(stepper.ema.module.state_dict(), requires)),
               **ckpt.with_prefix("optim", optim_tensors)}
    for hook in stepper.hooks:
        tensors.update(ckpt.with_prefix(f"hook/{hook.name}", hook.state_dict()))
    epoch, offset = divmod(step, sched.steps_per_epoch)
    meta = {"step": step, "kimg": step * cfg.batch_size / 1000, "epoch": epoch, "batch_in_epoch": offset,
            "seed": cfg.seed, "batch_size": cfg.batch_size, "world_size": distributed.world_size(),
            "ema_updates": stepper.ema.num_updates, "optimizer_groups": groups, "requires": requires,
            "train_seconds": round(seconds, 3)}
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


def _restore(state: _State, stepper: TrainStep, cfg: TrainConfig) -> int:
    check_resumable(state.meta, cfg, state.path)
    state.tensors = stepper.model.upgrade_checkpoint(state.tensors)
    requires = stepper.model.dependencies()
    load_weights(stepper.model, ckpt.strip_prefix("model", state.tensors), state.path, requires)
    load_weights(stepper.ema.module, ckpt.strip_prefix("ema", state.tensors), state.path, requires)
    ckpt.load_optimizer_state(stepper.optimizer, ckpt.strip_prefix("optim", state.tensors), state.meta["optimizer_groups"])
    stepper.ema.num_updates = int(state.meta["ema_updates"])
    for hook in stepper.hooks:
        hook.load_state_dict(ckpt.strip_prefix(f"hook/{hook.name}", state.tensors))
    if distributed.is_main():
        print(f"resuming from {state.path} (step {state.meta['step']}, {state.meta['kimg']:g} kimg)", file=sys.stderr)
    return int(state.meta["step"])


def _supplied(key: str, requires: dict) -> bool:
    """Whether a state-dict key belongs to a submodule another run supplies (``requires``)."""
    return any(key.startswith(f"{name}.") for name in requires)


def own_state(state: dict[str, torch.Tensor], requires: dict) -> dict[str, torch.Tensor]:
    """``state`` without the tensors of the submodules another run supplies (``requires``)."""
    return {k: v for k, v in state.items() if not _supplied(k, requires)}


def load_weights(module: nn.Module, weights: dict[str, torch.Tensor], path: Path, requires: dict = ()) -> None:
    """``module``'s weights and buffers from a checkpoint's (the submodules in ``requires`` come from
    their own runs and may be absent); a mismatch is a CheckpointError naming ``path``."""
    try:
        missing, unexpected = module.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a shape mismatch
        raise ckpt.CheckpointError(f"{path}: weights do not match the configured model "
                                   f"({str(err).splitlines()[0]})") from None
    missing = [k for k in missing if not _supplied(k, requires)]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ckpt.CheckpointError(f"{path}: weights do not match the configured model ({what}, "
                                   f"{len(missing)} missing, {len(unexpected)} unexpected)")


# ---------------------------------------------------------------------------------------------
# Small helpers


def collate_images(items: list) -> torch.Tensor:
    """Stack the images of dataset items (an image tensor, or a tuple whose first entry is one)."""
    return torch.stack([item[0] if isinstance(item, (list, tuple)) else item for item in items])


def _workers(wanted: int) -> int:
    """The loader's workers, at most one per CPU this process may use (a GPU preset's 8 on a 2-core
    machine would only contend); the batches do not depend on the count."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(wanted, cpus)


def configure_backends(device: torch.device) -> None:
    """On a GPU: TF32 for float32 matmuls and convolutions, and cuDNN's autotuner (the step's shapes
    do not change). Where full float32 matters (the anchoring), it is asked for locally."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _accumulate(totals: dict[str, torch.Tensor], out: dict, loss_mean: torch.Tensor) -> None:
    values = {"loss": loss_mean, **{k: v for k, v in out.items() if k not in ("loss", "tokens")}}
    for key, value in values.items():
        value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
        totals[key] = totals[key] + value if key in totals else value.clone()
