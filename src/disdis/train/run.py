"""Runs: a run directory, its resolved config, data and model, handed to the one loop.

A run directory holds::

    config.yaml         the resolved configuration (what was run)
    checkpoints/        ckpt-<step>.safetensors (weights and buffers such as the anchors, EMA, optimizer, hooks' state, step)
    first_stage/        a run folder of its own, when the run trained its first stage itself
    fits/               every anchoring fit, fit-<step>.safetensors (GaussianAnchors.load)
    logs/train.csv      loss, images/s, ... per logging interval
    metrics.json, figures/   written by evaluate / interchange
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import torch

from disdis.config import config_from_dict, read_yaml, save_config
from disdis.errors import ConfigError, DisdisError
from disdis.run_config import RunConfig, check_run_config, load_run_config
from disdis.train import checkpoint as ckpt
from disdis.train import distributed
from disdis.train.loop import TrainResult, check_resumable, resolve_device, train

CONFIG_NAME = "config.yaml"
FIRST_STAGE_DIR = "first_stage"


def start_run(cfg: RunConfig) -> tuple[Path, TrainResult]:
    """Create a run directory for ``cfg`` and train it from scratch (after checking every setting,
    so that a bad one stops the run before any folder is made or any stage is trained)."""
    validate_run_config(cfg)
    distributed.init(resolve_device(cfg.train.device).type)
    run_dir = _new_run_dir(cfg) if distributed.is_main() else None
    run_dir = Path(distributed.broadcast_json(str(run_dir) if run_dir else None))
    cfg.run_dir = str(run_dir)
    if distributed.is_main():
        save_config(cfg, run_dir / CONFIG_NAME)
    return run_dir, _run_stages(cfg, run_dir)


def resume_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Path, TrainResult]:
    """Continue the run in ``run_dir`` exactly where it stopped (``overrides``, e.g. a longer
    ``train.total_kimg``, are applied to its saved config)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, overrides)
    validate_run_config(cfg)  # a rejected override leaves the saved config as it was
    newest = ckpt.list_checkpoints(run_dir / "checkpoints")[-1:]
    meta = ckpt.read_meta(newest[0]) if newest else None
    if meta is not None:
        check_resumable(meta, cfg.train, newest[0])
    distributed.init(resolve_device(cfg.train.device).type)
    if distributed.is_main() and overrides:
        save_config(cfg, run_dir / CONFIG_NAME)
    return run_dir, _run_stages(cfg, run_dir)


def _run_stages(cfg: RunConfig, run_dir: Path) -> TrainResult:
    """Train (or continue) the run's stages: a diffusion run whose first stage is not given trains
    its own first, in ``run_dir/first_stage`` with the ``first_stage_train`` settings."""
    resume = bool(ckpt.list_checkpoints(run_dir / "checkpoints"))
    first_stage = None
    if cfg.stage == "diffusion" and cfg.first_stage.kind != "identity":
        source = cfg.first_stage_run
        if not source:
            source = run_dir / FIRST_STAGE_DIR
            first_cfg = dataclasses.replace(cfg, stage="first_stage", train=cfg.first_stage_train, run_dir=str(source))
            if distributed.is_main():
                source.mkdir(parents=True, exist_ok=True)
                save_config(first_cfg, source / CONFIG_NAME)
                print(f"stage 1/2: first stage in {source}", file=sys.stderr)
            _train(first_cfg, source, None, resume=True)  # a finished first stage returns at once
            if distributed.is_main():
                print(f"stage 2/2: diffusion model in {run_dir}", file=sys.stderr)
        if not resume:  # once the diffusion model has a checkpoint, the first stage's weights are in it
            first_cfg, first_stage = load_first_stage(source)
            if distributed.is_main() and first_cfg != cfg.first_stage:
                print(f"note: first_stage settings taken from {source}", file=sys.stderr)
            cfg.first_stage = first_cfg
            if distributed.is_main():
                save_config(cfg, run_dir / CONFIG_NAME)
    return _train(cfg, run_dir, first_stage, resume=resume)


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


def read_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise DisdisError(f"{run_dir}: not a run directory (no {CONFIG_NAME})")
    return load_run_config(path, overrides)


def open_training_data(cfg: RunConfig) -> torch.utils.data.Dataset:
    from disdis.data import TorchImageDataset, open_dataset
    dataset = open_dataset(cfg.data.path, kind=cfg.data.kind, resolution=cfg.data.resolution)
    if cfg.data.subgrid:
        dataset = dataset.subgrid(cfg.data.subgrid)
    return TorchImageDataset(dataset)


def load_first_stage(source: str | Path):
    """(config, module) of a trained first stage from its run folder or one of its checkpoint files."""
    from disdis.nn.first_stage import build_first_stage
    source = Path(source)
    run_dir = source if source.is_dir() else source.parent.parent
    data = read_yaml(run_dir / CONFIG_NAME) if (run_dir / CONFIG_NAME).is_file() else None
    if data is None:
        raise ConfigError(f"first_stage_run: {source} is not a first-stage run folder or checkpoint (no {CONFIG_NAME})")
    first_run = config_from_dict(RunConfig, data)
    if first_run.stage != "first_stage":
        raise ConfigError(f"first_stage_run: {source} is a '{first_run.stage}' run, not a first-stage one")
    path = source if source.is_file() else _newest_checkpoint(run_dir)
    tensors, _ = ckpt.load_checkpoint(path)
    module = build_first_stage(first_run.first_stage)
    weights = ckpt.strip_prefix("model", tensors)
    module.load_state_dict({k.removeprefix("first_stage."): v for k, v in weights.items()
                            if k.startswith("first_stage.")}, strict=True)
    return first_run.first_stage, module


def load_trained_model(source: str | Path, weights: str = "ema") -> tuple[RunConfig, torch.nn.Module, Path]:
    """(config, model in eval mode, checkpoint) of a run folder or checkpoint file; ``weights``: ema or model."""
    from disdis.models import build_model
    source = Path(source)
    run_dir = source if source.is_dir() else source.parent.parent
    cfg = read_run_config(run_dir)
    path = source if source.is_file() else _newest_checkpoint(run_dir)
    tensors, _ = ckpt.load_checkpoint(path)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt.strip_prefix(weights, tensors), strict=True)
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"{path}: weights do not match the run's config ({str(err).splitlines()[0]})") from None
    return cfg, model.eval(), path


def _train(cfg: RunConfig, run_dir: Path, first_stage, resume: bool) -> TrainResult:
    from disdis.models import build_model
    dataset = open_training_data(cfg)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg, first_stage)
    return train(model, dataset, cfg.train, run_dir, resume=resume, probe=unit_probe(cfg, dataset, run_dir))


def unit_probe(cfg: RunConfig, dataset, run_dir: Path):
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
        if ckpt.list_checkpoints(run_dir / "checkpoints"):
            raise ConfigError(f"run_dir: {run_dir} already holds a run; continue it with `disdis train --resume {run_dir}`")
    else:
        root = Path(cfg.runs_root)
        taken = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else ()) if (m := re.match(r"^(\d{5})-", p.name))]
        run_dir = root / f"{max(taken, default=-1) + 1:05d}-{cfg.name}-{cfg.stage}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _newest_checkpoint(run_dir: Path) -> Path:
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise DisdisError(f"{run_dir}: the run has no checkpoint yet")
    return found[-1]
