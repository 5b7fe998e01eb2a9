"""Runs: a run folder (:class:`disdis.rundir.RunDir`), its resolved config, data and model,
handed to the one loop; its status recorded as it goes (running, finished, failed)."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import torch

from disdis.config import config_from_dict, save_config
from disdis.errors import ConfigError, DisdisError
from disdis.run_config import RunConfig, check_run_config, load_run_config, read_run_file
from disdis.rundir import RunDir
from disdis.train import checkpoint as ckpt
from disdis.train import distributed
from disdis.train.loop import TrainResult, check_resumable, load_weights, resolve_device, train


def start_run(cfg: RunConfig) -> tuple[Path, TrainResult]:
    """Create a run directory for ``cfg`` and train it from scratch (after checking every setting,
    so that a bad one stops the run before any folder is made or any stage is trained)."""
    validate_run_config(cfg)
    distributed.init(resolve_device(cfg.train.device).type)
    run_dir = _new_run_dir(cfg) if distributed.is_main() else None
    run = RunDir(distributed.broadcast_json(str(run_dir) if run_dir else None))
    cfg.run_dir = str(run)
    if distributed.is_main():
        save_config(cfg, run.config)
    return run.path, _run_stages(cfg, run)


def resume_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Path, TrainResult]:
    """Continue the run in ``run_dir`` exactly where it stopped (``overrides``, e.g. a longer
    ``train.total_kimg``, are applied to its saved config)."""
    run = RunDir(run_dir)
    cfg = read_run_config(run, overrides)
    validate_run_config(cfg)  # a rejected override leaves the saved config as it was
    newest = run.list_checkpoints()[-1:]
    meta = ckpt.read_meta(newest[0]) if newest else None
    if meta is not None:
        check_resumable(meta, cfg.train, newest[0])
    distributed.init(resolve_device(cfg.train.device).type)
    if distributed.is_main() and overrides:
        save_config(cfg, run.config)
    return run.path, _run_stages(cfg, run)


def _run_stages(cfg: RunConfig, run: RunDir) -> TrainResult:
    """Train (or continue) the run's stages: a diffusion run whose first stage is not given trains
    its own first, in ``RUN/first_stage`` with the ``first_stage_train`` settings."""
    newest = run.list_checkpoints()[-1:]
    resume = bool(newest)
    first_stage = reference = None
    if cfg.stage == "diffusion" and cfg.first_stage.kind != "identity":
        source = cfg.first_stage_run
        if not source:
            source = run.first_stage
            first_cfg = dataclasses.replace(cfg, stage="first_stage", train=cfg.first_stage_train, run_dir=str(source))
            if distributed.is_main():
                source.path.mkdir(parents=True, exist_ok=True)
                save_config(first_cfg, source.config)
                print(f"stage 1/2: first stage in {source}", file=sys.stderr)
            _train(first_cfg, source, None, resume=True)  # a finished first stage returns at once
            if distributed.is_main():
                print(f"stage 2/2: diffusion model in {run}", file=sys.stderr)
        # a resumed run reads the first stage it recorded (checkpoints of older versions carry its weights)
        recorded = ((ckpt.read_meta(newest[0]) or {}).get("requires") or {}).get("first_stage") if resume else None
        if recorded:
            first_stage, reference = load_dependency(recorded, run), recorded
        elif not resume:
            first_cfg, first_stage, path = load_first_stage(source)
            reference = dependency_reference(path, run)
            if distributed.is_main() and first_cfg != cfg.first_stage:
                print(f"note: first_stage settings taken from {source}", file=sys.stderr)
            cfg.first_stage = first_cfg
            if distributed.is_main():
                save_config(cfg, run.config)
    return _train(cfg, run, first_stage, resume=resume, reference=reference)


def dependency_reference(checkpoint: Path, run: RunDir) -> dict:
    """How a run records a checkpoint it depends on: its path (relative to the run folder when inside
    it, so the folder can move) and the SHA-256 of its tensors."""
    checkpoint = Path(checkpoint).absolute()
    try:
        shown = checkpoint.relative_to(run.path.absolute())
    except ValueError:
        shown = checkpoint
    return {"checkpoint": str(shown), "sha256": ckpt.read_digest(checkpoint)}


def load_dependency(reference: dict, run: RunDir):
    """The first stage a run recorded, after checking that the file is the one it used."""
    path = Path(reference["checkpoint"])
    path = path if path.is_absolute() else run.path / path
    if not path.is_file():
        raise DisdisError(f"{run}: its first stage {path} is gone (the run recorded it; restore the file)")
    if ckpt.read_digest(path) != reference["sha256"]:
        raise DisdisError(f"{run}: its first stage {path} has changed since the run used it (SHA-256 "
                          f"{reference['sha256'][:12]}... recorded); restore it, or start a new run")
    return load_first_stage(path)[1]


def validate_run_config(cfg: RunConfig) -> None:
    """Every check a run's settings must pass, done before any work: the sections fit together, and
    the models of its stages build (on the meta device: no memory, no computation)."""
    from disdis.models import build_model
    check_run_config(cfg)
    stages = [cfg]
    if cfg.stage == "diffusion" and cfg.first_stage.kind != "identity" and not cfg.first_stage_run:
        stages.append(dataclasses.replace(cfg, stage="first_stage", train=cfg.first_stage_train))
    with torch.device("meta"):
        for stage in stages:
            build_model(stage)


def read_run_config(run_dir: str | Path | RunDir, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    run = RunDir.of(run_dir)
    if not run.is_run():
        raise DisdisError(f"{run}: not a run directory (no {run.config.name})")
    return load_run_config(run.config, overrides)


def open_training_data(cfg: RunConfig) -> torch.utils.data.Dataset:
    from disdis.data import TorchImageDataset, open_dataset
    dataset = open_dataset(cfg.data.path, kind=cfg.data.kind, resolution=cfg.data.resolution)
    if cfg.data.subgrid:
        dataset = dataset.subgrid(cfg.data.subgrid)
    return TorchImageDataset(dataset)


def load_first_stage(source: str | Path):
    """(config, module, checkpoint path) of a trained first stage from its run folder or one of its
    checkpoint files."""
    from disdis.nn.first_stage import build_first_stage
    source = source.path if isinstance(source, RunDir) else Path(source)
    run = RunDir.of(source)
    if not run.is_run():
        raise ConfigError(f"first_stage_run: {source} is not a first-stage run folder or checkpoint (no {run.config.name})")
    first_run = config_from_dict(RunConfig, read_run_file(run.config))
    if first_run.stage != "first_stage":
        raise ConfigError(f"first_stage_run: {source} is a '{first_run.stage}' run, not a first-stage one")
    path = source if source.is_file() else run.newest_checkpoint()
    tensors, _ = ckpt.load_checkpoint(path)
    module = build_first_stage(first_run.first_stage)
    weights = ckpt.strip_prefix("model", tensors)
    module.load_state_dict({k.removeprefix("first_stage."): v for k, v in weights.items()
                            if k.startswith("first_stage.")}, strict=True)
    return first_run.first_stage, module, path


def load_trained_model(source: str | Path, weights: str = "ema") -> tuple[RunConfig, torch.nn.Module, Path]:
    """(config, model in eval mode, checkpoint) of a run folder or checkpoint file; ``weights``: ema or model."""
    from disdis.models import build_model
    source = Path(source)
    run = RunDir.of(source)
    cfg = read_run_config(run)
    path = source if source.is_file() else run.newest_checkpoint()
    tensors, meta = ckpt.load_checkpoint(path)
    requires = meta.get("requires") or {}
    first_stage = load_dependency(requires["first_stage"], run) if "first_stage" in requires else None
    model = build_model(cfg, first_stage)
    for name, reference in requires.items():
        model.requires(name, reference)
    load_weights(model, ckpt.strip_prefix(weights, model.upgrade_checkpoint(tensors)), path, requires)
    return cfg, model.eval(), path


def _train(cfg: RunConfig, run: RunDir, first_stage, resume: bool, reference: dict | None = None) -> TrainResult:
    """One stage, with its status recorded: running, then finished or failed (with the message)."""
    from disdis.models import build_model
    main = distributed.is_main()
    if main:
        run.set_status("running", stage=cfg.stage)
    try:
        dataset = open_training_data(cfg)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = build_model(cfg, first_stage)
        if reference:  # the frozen first stage stays in its own run: checkpoints record it by reference
            model.requires("first_stage", reference)
        result = train(model, dataset, cfg.train, run, resume=resume, probe=unit_probe(cfg, dataset, run))
    except (Exception, KeyboardInterrupt) as err:
        if main:
            message = str(err) if isinstance(err, DisdisError) else f"{type(err).__name__}: {err}"
            run.set_status("failed", stage=cfg.stage, message=message)
        raise
    if main:
        run.set_status("finished", stage=cfg.stage, step=result.step, final_loss=result.final_loss)
    return result


def unit_probe(cfg: RunConfig, dataset, run_dir: RunDir):
    """The live share table and attention diagnostics of a diffusion run on data with a factor grid."""
    from disdis.diagnostics import UnitProbe
    grid = dataset.dataset
    if cfg.stage != "diffusion" or not cfg.train.probe_images or not grid.has_factor_grid:
        return None
    return UnitProbe(dataset, grid.factor_names, grid.factor_sizes, run_dir, grid_index=grid.index_of,
                     max_images=cfg.train.probe_images, batch_size=cfg.eval.batch_size, seed=cfg.train.seed)


def _new_run_dir(cfg: RunConfig) -> Path:
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if RunDir(run_dir).list_checkpoints():
            raise ConfigError(f"run_dir: {run_dir} already holds a run; continue it with `disdis train --resume {run_dir}`")
    else:
        root = Path(cfg.runs_root)
        taken = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else ()) if (m := re.match(r"^(\d{5})-", p.name))]
        run_dir = root / f"{max(taken, default=-1) + 1:05d}-{cfg.name}-{cfg.stage}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
