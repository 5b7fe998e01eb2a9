"""Runs: a run folder (:class:`disdis.rundir.RunDir`), its resolved config, data and model,
handed to the one loop; its status recorded as it goes (running, finished, failed)."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import torch

from disdis.config import save_config
from disdis.errors import ConfigError, DataError, DisdisError
from disdis.run_config import RunConfig, check_run_config, load_run_config
from disdis.rundir import RunDir
from disdis.train import checkpoint as ckpt
from disdis.train import distributed
from disdis.train.loop import TrainResult, check_step, check_resumable, load_weights, resolve_device, train
from disdis.train.sampler import check_batch_fits


def start_run(cfg: RunConfig) -> tuple[Path, TrainResult]:
    """Create a run directory for ``cfg`` and train it from scratch (after checking every setting,
    so that a bad one stops the run before any folder is made or any stage is trained)."""
    _record_data_path(cfg)
    validate_run_config(cfg)
    _check_data_exists(cfg)
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
    _record_data_path(cfg)
    validate_run_config(cfg)  # a rejected override leaves the saved config as it was
    _check_data_exists(cfg)
    newest = run.list_checkpoints()[-1:]
    meta = ckpt.read_meta(newest[0]) if newest else None
    if meta is not None:
        check_resumable(meta, cfg.train, newest[0])
    distributed.init(resolve_device(cfg.train.device).type)
    if distributed.is_main() and overrides:
        save_config(cfg, run.config)
    return run.path, _run_stages(cfg, run)


def _record_data_path(cfg: RunConfig) -> None:
    """The data path as the run keeps it: absolute, so that the run can be resumed, evaluated and
    read from any folder (a relative one would name the data only from the folder it started in)."""
    if cfg.data.path:
        cfg.data = dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).absolute()))


def _check_data_exists(cfg: RunConfig) -> None:
    """The data a run trains on must be there before a folder is made (validate_run_config lets a
    missing file pass, for the commands that make the data after checking the settings)."""
    if cfg.data.path and not Path(cfg.data.path).exists():
        raise DataError(f"data.path: {cfg.data.path}: no such file or folder")


def _recorded_requires(run: RunDir) -> dict:
    """What the newest readable checkpoint records of the runs it depends on ({} before the first):
    an unreadable newest one is skipped, as the loop skips it to resume from the one before."""
    for path in reversed(run.list_checkpoints()):
        meta = ckpt.read_meta(path)
        if meta is not None:
            return meta.get("requires") or {}
    return {}


def _run_stages(cfg: RunConfig, run: RunDir) -> TrainResult:
    """Train (or continue) the run, after the runs it depends on: a dependency ``requires`` does not
    name is trained by the run itself, in ``RUN/<dependency>`` (the first stage with the method's
    ``first_stage_train`` settings)."""
    resume = bool(run.list_checkpoints())
    recorded = _recorded_requires(run)
    dependencies, references = {}, {}
    for name in cfg.method.needs():
        if name in recorded:  # a resumed run reads what it recorded
            dependencies[name], references[name] = load_dependency(recorded[name], run, name), recorded[name]
            continue
        if resume and name in cfg.method.initialises:  # the checkpoint carries the weights it started from
            continue
        source = cfg.requires.get(name) or _train_own_dependency(cfg, run, name)
        if resume:  # a checkpoint of an older version, which carries the dependency's weights itself
            continue
        source_cfg, dependencies[name], path = load_required(source, name, cfg.method.dependency_kinds[name])
        if name not in cfg.method.initialises:  # frozen: checkpoints record it by reference
            references[name] = dependency_reference(path, run)
        adopted = cfg.method.adopt(name, source_cfg)
        if adopted != cfg.method:
            if distributed.is_main():
                print(f"note: method settings shared with {name} taken from {source}", file=sys.stderr)
            cfg.method = adopted
        if distributed.is_main():
            save_config(cfg, run.config)
    if distributed.is_main() and cfg.method.needs():
        print(f"{cfg.method.name} in {run}", file=sys.stderr)
    return _train(dataclasses.replace(cfg, train=_budget_left(cfg, run)), run, dependencies, resume=resume,
                  references=references)


def _budget_left(cfg: RunConfig, run: RunDir):
    """The run's ``train`` settings with the training time of the dependencies it trained itself taken
    out of ``train.max_minutes`` (the budget covers the whole run)."""
    if cfg.train.max_minutes is None:
        return cfg.train
    spent = sum(training_seconds(run.dependency(name)) for name in cfg.method.needs() if not cfg.requires.get(name))
    return dataclasses.replace(cfg.train, max_minutes=max(cfg.train.max_minutes - spent / 60, 1e-6))


def training_seconds(run: RunDir) -> float:
    """The training time of a run (its newest checkpoint's ``train_seconds``) and of the runs it
    trained itself inside its folder, theirs included (a DisDiff run's LDM and that LDM's first stage)."""
    seconds = float((ckpt.read_meta(run.newest_checkpoint()) or {}).get("train_seconds", 0.0)) \
        if run.list_checkpoints() else 0.0
    return seconds + dependencies_seconds(run)


def dependencies_seconds(run: RunDir) -> float:
    """The training time of the runs ``run`` trained itself inside its folder (theirs included)."""
    children = (RunDir(p) for p in sorted(run.path.iterdir()) if p.is_dir()) if run.path.is_dir() else ()
    return sum(training_seconds(child) for child in children if child.is_run())


def dependency_source(cfg: RunConfig, name: str) -> Path:
    """Where run ``cfg`` takes dependency ``name`` from: the run folder or checkpoint ``requires`` names,
    or the folder of the one it trains itself."""
    return Path(cfg.requires[name]) if cfg.requires.get(name) else RunDir(cfg.run_dir).dependency(name).path


def _train_own_dependency(cfg: RunConfig, run: RunDir, name: str) -> RunDir:
    """Train (or finish) dependency ``name`` inside ``run`` (a finished one returns at once)."""
    source = run.dependency(name)
    own = cfg.method.own_dependency(name, cfg)
    own.run_dir = str(source)
    if own.train.max_minutes is None and cfg.train.max_minutes is not None:
        # a time budget covers the dependencies the run trains itself: each gets what the ones before left
        spent = (dependencies_seconds(run) - training_seconds(source)) / 60  # a resumed one's own time is its own
        own.train = dataclasses.replace(own.train, max_minutes=max(cfg.train.max_minutes - spent, 1e-6))
    if distributed.is_main():
        source.path.mkdir(parents=True, exist_ok=True)
        save_config(own, source.config)
        print(f"{name} (trained by this run) in {source}", file=sys.stderr)
    _run_stages(own, source)  # and, first, whatever it depends on itself
    return source


def dependency_reference(checkpoint: Path, run: RunDir) -> dict:
    """How a run records a checkpoint it depends on: its path (relative to the run folder when inside
    it, so the folder can move) and the SHA-256 of its tensors."""
    checkpoint = Path(checkpoint).absolute()
    try:
        shown = checkpoint.relative_to(run.path.absolute())
    except ValueError:
        shown = checkpoint
    return {"checkpoint": str(shown), "sha256": ckpt.read_digest(checkpoint)}


def load_dependency(reference: dict, run: RunDir, name: str) -> torch.nn.Module:
    """Dependency ``name`` that ``run`` recorded, after checking that the file is the one it used."""
    path = Path(reference["checkpoint"])
    path = path if path.is_absolute() else run.path / path
    if not path.is_file():
        raise DisdisError(f"{run}: its {name} {path} is gone (the run recorded it; restore the file)")
    if ckpt.read_digest(path) != reference["sha256"]:
        raise DisdisError(f"{run}: its {name} {path} has changed since the run used it (SHA-256 "
                          f"{reference['sha256'][:12]}... recorded); restore it, or start a new run")
    return load_required(path, name)[1]


def load_required(source: str | Path | RunDir, name: str, kind: str | None = None):
    """(config, module, checkpoint) of dependency ``name``: what the trained model in ``source`` exports
    under that name (by default its submodule ``name``) (a run folder or one of its checkpoints; its own dependencies are loaded the same
    way, so chains resolve recursively). ``kind``: the method that run must have trained."""
    source = source.path if isinstance(source, RunDir) else Path(source)
    if not RunDir.of(source).is_run():
        raise ConfigError(f"requires.{name}: {source} is not a run folder or checkpoint (no config.yaml)")
    cfg, model, path = load_trained_model(source, weights="model")
    if kind is not None and cfg.method.name != kind:
        raise ConfigError(f"requires.{name}: {source} is a '{cfg.method.name}' run, not a '{kind}' one")
    return cfg, cfg.method.export(model, name).eval(), path


def validate_run_config(cfg: RunConfig) -> None:
    """Every check a run's settings must pass, done before any work: the sections fit together, and
    the models of its stages build (on the meta device: no memory, no computation)."""
    from disdis.models import build_model
    check_run_config(cfg)
    with torch.device("meta"):
        check_step(build_model(cfg), cfg.train)
    if cfg.data.path and Path(cfg.data.path).exists():  # the data of a run that makes it is checked when made
        data = open_training_data(cfg)
        check_batch_fits(cfg.train.batch_size, len(data))
        check_channels(cfg, data.dataset.channels)
    for name in cfg.method.needs():  # and the runs it trains itself, with theirs
        if not cfg.requires.get(name):
            validate_run_config(cfg.method.own_dependency(name, cfg))


def check_channels(cfg: RunConfig, channels: int) -> None:
    """The model must take images with the data's number of channels (dSprites has 1, the others 3)."""
    expected = cfg.method.image_channels()
    if expected != channels:
        raise ConfigError(f"data.path: {cfg.data.path} holds {channels}-channel images, the model takes {expected} "
                          f"(set method.{cfg.method.channels_key}={channels})")


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


def load_trained_model(source: str | Path, weights: str = "ema") -> tuple[RunConfig, torch.nn.Module, Path]:
    """(config, model in eval mode, checkpoint) of a run folder or checkpoint file; ``weights``: ema or model."""
    from disdis.models import build_model
    source = Path(source)
    run = RunDir.of(source)
    cfg = read_run_config(run)
    path = source if source.is_file() else run.newest_checkpoint()
    tensors, meta = ckpt.load_checkpoint(path)
    requires = meta.get("requires") or {}
    model = build_model(cfg, {name: load_dependency(reference, run, name) for name, reference in requires.items()})
    for name, reference in requires.items():
        model.requires(name, reference)
    load_weights(model, ckpt.strip_prefix(weights, model.upgrade_checkpoint(tensors)), path, requires)
    return cfg, model.eval(), path


def _train(cfg: RunConfig, run: RunDir, dependencies: dict, resume: bool, references: dict | None = None) -> TrainResult:
    """One run, with its status recorded: running, then finished or failed (with the message)."""
    from disdis.models import build_model
    main = distributed.is_main()
    if main:
        run.set_status("running", method=cfg.method.name)
    try:
        dataset = open_training_data(cfg)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = build_model(cfg, dependencies)
        for name, reference in (references or {}).items():  # frozen modules stay in their own runs:
            model.requires(name, reference)                  # checkpoints record them by reference
        result = train(model, dataset, cfg.train, run, resume=resume, probe=unit_probe(cfg, model, dataset, run))
    except (Exception, KeyboardInterrupt) as err:
        if main:
            message = str(err) if isinstance(err, DisdisError) else f"{type(err).__name__}: {err}"
            run.set_status("failed", method=cfg.method.name, message=message)
        raise
    if main:
        run.set_status("finished", method=cfg.method.name, step=result.step, final_loss=result.final_loss)
    return result


def unit_probe(cfg: RunConfig, model, dataset, run_dir: RunDir):
    """The live share table (and, for methods with attention, its diagnostics) of a run on data
    with a factor grid."""
    from disdis.diagnostics import UnitProbe
    grid = dataset.dataset
    if not model.can("represent") or not cfg.train.probe_images or not grid.has_factor_grid:
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
        run_dir = root / f"{max(taken, default=-1) + 1:05d}-{cfg.name}-{cfg.method.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
