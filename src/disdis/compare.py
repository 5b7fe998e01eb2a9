"""Comparisons: every method x seed trained on the same data with the same budget (equal training
minutes, or equal images), all evaluated with one protocol, summarised as ``compare.json`` and
``compare.md`` (``disdis compare``; README, "Baselines").

    DIR/
      runs/<method>-s<seed>/     one run folder each (with metrics.json once evaluated)
      logs/<method>-s<seed>.log  what its training and evaluation printed
      settings.json              what defines the comparison (scale, budget, data, settings of every
                                 run, protocol, each method's preset): a re-run with others is refused
      compare.json               per method: mean and std over seeds of every headline metric,
                                 the training minutes and kimg, the run folders
      compare.md                 the same as a table

A method is a preset (or config file) name, or one of the aliases below, which name the preset
of the paper's method and each baseline at the chosen scale (``demo``: the CPU demo grid and its
reduced protocol, the diffusion presets with the demo's extractor warm start; ``paper``: the
released scale and disentanglement_lib's sample counts).
Runs train as subprocesses (``--jobs`` at a time, ``--threads`` each); a comparison that was
stopped continues where it was (run again with the same settings): finished runs scored with the
protocol are read back, finished ones scored otherwise are scored again, interrupted ones resume
(the time budget is summed over sessions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from disdis.errors import ConfigError, DataError, DisdisError
from disdis.rundir import RunDir

ALIASES = {
    "demo": {"paper": "demo", "encdiff": "demo_encdiff", "disdiff": "demo_disdiff", "disdiff_dyga": "demo_disdiff_dyga",
             "disdiff_skip_dropout": "demo_disdiff_skip_dropout", "beta_vae": "beta_vae", "beta_tcvae": "beta_tcvae",
             "factor_vae": "factor_vae", "dyga_only": "demo_dyga_only", "skip_dropout_only": "demo_skip_dropout_only"},
    "paper": {"paper": "shapes3d", "encdiff": "encdiff", "disdiff": "disdiff", "beta_vae": "beta_vae",
              "beta_tcvae": "beta_tcvae", "factor_vae": "factor_vae", "dyga_only": "dyga_only",
              "skip_dropout_only": "skip_dropout_only"},
}
# every run at the demo scale: the grid's 32 px images on the CPU, without the training probe (whose
# cost, counted in the time budget, would differ between methods)
DEMO_SETTINGS = ("data.kind=null", "data.resolution=32", "train.device=cpu", "train.num_workers=0", "train.bf16=false",
                 "train.probe_images=0")
HEADLINE = {"factor_vae": ("factor_vae", "eval_accuracy"), "dci": ("dci", "disentanglement"),
            "dci_completeness": ("dci", "completeness"), "dci_informativeness": ("dci", "informativeness_test"),
            "mig": ("mig", "discrete_mig")}
UNBOUNDED_KIMG = 1e9  # with a time budget the run ends on the clock
SETTINGS = "settings.json"


@dataclass
class Budget:
    minutes: float | None = None
    kimg: float | None = None

    def __post_init__(self) -> None:
        if (self.minutes is None) == (self.kimg is None):
            raise ConfigError("compare: give exactly one budget, --minutes M or --kimg K")
        if (self.minutes if self.minutes is not None else self.kimg) <= 0:
            raise ConfigError("compare: the budget must be positive")

    def overrides(self) -> list[str]:
        if self.minutes is not None:
            return [f"train.max_minutes={self.minutes}", f"train.total_kimg={UNBOUNDED_KIMG}"]
        return [f"train.total_kimg={self.kimg}"]

    def __str__(self) -> str:
        return f"--minutes {self.minutes:g}" if self.minutes is not None else f"--kimg {self.kimg:g}"


@dataclass
class Job:
    label: str             # the method's name in the comparison
    preset: str            # the preset or config file it trains
    seed: int
    run: RunDir
    log: Path
    overrides: list[str]   # data, budget, seed, scale
    protocol: list[str]    # eval.* of the shared protocol
    scored_with: dict      # what its metrics.json records when scored with that protocol


def plan(methods: list[str], seeds: list[int], budget: Budget, out: Path, data: str, scale: str,
         shared: list[str] = ()) -> list[Job]:
    """Every method x seed of the comparison, each checked to build before anything runs. ``shared``:
    ``key=value`` settings of every run (its ``eval.*`` ones join the protocol)."""
    from disdis.run_config import load_run_config
    from disdis.train.run import validate_run_config
    if scale not in ALIASES:
        raise ConfigError(f"compare: --scale: expected one of {', '.join(ALIASES)}, got {scale!r}")
    if not methods or not seeds:
        raise ConfigError("compare: give at least one method and one seed")
    # each key once, with its effective value (an eval.* of shared replaces the scale's)
    protocol = by_key([*protocol_overrides(scale), *(item for item in shared if item.startswith("eval."))])
    protocol = [f"{key}={value}" for key, value in protocol.items()]
    shared = [item for item in shared if not item.startswith("eval.")]
    jobs, scorable = [], set()
    for label in methods:
        preset = ALIASES[scale].get(label, label)
        for seed in seeds:
            run = RunDir(out / "runs" / f"{Path(label).stem}-s{seed}")
            overrides = [f"data.path={data}", f"run_dir={run}", f"train.seed={seed}",
                         *(DEMO_SETTINGS if scale == "demo" else ()), *budget.overrides(), *shared]
            cfg = load_run_config(preset, [*overrides, *protocol])
            check_scorable(cfg, scorable)
            validate_run_config(cfg)
            jobs.append(Job(Path(label).stem, preset, seed, run, out / "logs" / f"{Path(label).stem}-s{seed}.log",
                            overrides, protocol, scored_with(cfg)))
    return jobs


def by_key(items) -> dict[str, str]:
    """``key=value`` items as {key: value}, a later value of a key replacing the earlier (as it does
    in a run's configuration), in the order the keys first came."""
    return dict(item.split("=", 1) for item in items)


def check_scorable(cfg, checked: set) -> None:
    """Every metric of the comparison needs a factor grid (CelebA-type data has attributes only)."""
    from disdis.data import open_dataset
    key = (cfg.data.path, cfg.data.kind)
    if key in checked or not Path(cfg.data.path).exists():  # the demo grid is made after the checks
        return
    checked.add(key)
    if not open_dataset(cfg.data.path, kind=cfg.data.kind).has_factor_grid:
        raise DataError(f"--data: {cfg.data.path} has no factor grid, which the comparison's metrics "
                        "(FactorVAE, DCI, MIG) need")


def scored_with(cfg) -> dict:
    """What the metrics.json of a run scored with ``cfg``'s protocol records: the sampling settings
    (as JSON: lists for tuples) and the representation."""
    from disdis.metrics.suite import Sampling
    sampling = {f.name: getattr(cfg.eval, f.name) for f in fields(Sampling)}
    return json.loads(json.dumps({**sampling, "representation": cfg.eval.representation}))


def protocol_overrides(scale: str) -> list[str]:
    """The evaluation protocol every run shares (its sampling settings; each method keeps its own
    representation): the demo's reduced one, or disentanglement_lib's defaults."""
    from disdis.metrics.suite import Sampling
    from disdis.run_config import load_run_config
    sampling = load_run_config("demo", ["data.path=x"]).eval if scale == "demo" else Sampling()
    values = {f.name: getattr(sampling, f.name) for f in fields(Sampling)}
    return [f"eval.{key}=" + (f"[{','.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v))
            for key, v in values.items()]


def settings(work: list[Job], budget: Budget, data: str, scale: str, shared: list[str]) -> dict:
    """What defines a comparison (DIR/settings.json); seeds and methods may be added to it later."""
    return {"scale": scale, "budget": str(budget), "data": str(Path(data).resolve()),
            "overrides": by_key(item for item in shared if not item.startswith("eval.")),
            "protocol": by_key(work[0].protocol), "methods": {job.label: job.preset for job in work}}


def check_settings(out: Path, now: dict) -> dict:
    """The record of ``out`` with ``now``'s methods added; a ConfigError naming what differs where
    ``out`` was made with other settings: its runs would be read back or resumed as if made with
    these."""
    path = out / SETTINGS
    if not path.is_file():
        if (out / "runs").is_dir() and any((out / "runs").iterdir()):
            raise ConfigError(f"{out}: holds runs but no record of the settings they were made with "
                              f"({SETTINGS}); choose another --out")
        return now
    was = json.loads(path.read_text())
    differ = [f"{key} {was.get(key)} (now {now[key]})" for key in ("scale", "budget", "data")
              if was.get(key) != now[key]]
    for group in ("overrides", "protocol"):
        old, new = was.get(group, {}), now[group]
        differ += [f"{key} {old.get(key, 'unset')} (now {new.get(key, 'unset')})"
                   for key in [*old, *(k for k in new if k not in old)] if old.get(key) != new.get(key)]
    methods = was.get("methods", {})
    differ += [f"method {label} {methods[label]} (now {preset})" for label, preset in now["methods"].items()
               if methods.get(label, preset) != preset]
    if differ:
        raise ConfigError(f"{out} was made with other settings: {'; '.join(differ)}; choose another --out "
                          "(the same settings continue it)")
    return {**now, "methods": {**methods, **now["methods"]}}


def run_comparison(methods: list[str], seeds: list[int], budget: Budget, out: str | Path, data: str | None = None,
                   scale: str = "demo", jobs: int = 1, threads: int = 1, shared: list[str] = ()) -> dict:
    """Train and evaluate every method x seed (skipping what is done), then write the summary. Every
    check comes first: nothing is made (the demo grid when ``data`` is None, folders) before."""
    from disdis.data.demo_grid import DEMO_DATA, make_demo_data
    from disdis.io import write_text_atomic
    out = Path(out)
    if data is None:
        if scale != "demo":
            raise ConfigError("--data: required at --scale paper (a dataset file or folder)")
    elif not Path(data).exists():
        raise DataError(f"--data: {data}: no such file or folder")
    path = data or DEMO_DATA  # the demo grid, made (or read from its cache) without --data
    work = plan(methods, seeds, budget, out, path, scale, list(shared))
    record = check_settings(out, settings(work, budget, path, scale, list(shared)))
    if data is None:
        make_demo_data(Path(path), 32)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SETTINGS, json.dumps(record, indent=2))
    start = time.perf_counter()
    print(f"compare: {len(work)} runs ({len(methods)} methods x {len(seeds)} seeds), {jobs} at a time, "
          f"{threads} thread(s) each; logs in {out / 'logs'}", file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        failures = [f for f in pool.map(lambda job: _complete(job, threads), work) if f]
    except BaseException:  # Ctrl-C or SIGTERM: stop the runs (each saves a checkpoint), keep what is done
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_children()
        raise
    pool.shutdown()
    if failures:
        raise DisdisError(f"compare: {len(failures)} run(s) failed: {'; '.join(failures)}")
    summary = summarise(work, budget, scale, seeds, work[0].protocol)
    summary["wall_minutes"] = round((time.perf_counter() - start) / 60, 2)
    write_text_atomic(out / "compare.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "compare.md", markdown(summary))
    return summary


def _complete(job: Job, threads: int) -> str | None:
    """Train (or resume) and evaluate one run unless it is done (trained, and scored with the
    protocol); a message when it failed."""
    trained = job.run.status().get("state") == "finished"
    if trained and scored_alike(job):
        print(f"  {job.run.path.name}: done already", file=sys.stderr)
        return None
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    train = ["--resume", str(job.run)] if job.run.list_checkpoints() else [job.preset, *job.overrides]
    steps = [[sys.executable, "-m", "disdis", "evaluate", str(job.run), "--jobs", "1", *job.protocol]]
    if not trained:  # a trained run without metrics (or scored otherwise) is only scored
        steps.insert(0, [sys.executable, "-m", "disdis", "train", *train])
    started = time.perf_counter()
    doing = "scoring" if trained else "resuming" if train[0] == "--resume" else "training"
    print(f"  {job.run.path.name}: {doing}", file=sys.stderr)
    with open(job.log, "a") as log:
        for command in steps:
            if _run_child(command, log, env) != 0:
                return f"{job.run.path.name} (see {job.log})"
    print(f"  {job.run.path.name}: finished in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return None


def scored_alike(job: Job) -> bool:
    """Whether the run's metrics.json was scored with the job's protocol (not, say, by hand with
    another), so that it can be reported under it."""
    if not job.run.metrics.is_file():
        return False
    result = json.loads(job.run.metrics.read_text())
    scored = {**result.get("protocol", {}), "representation": result.get("run", {}).get("representation")}
    return all(scored.get(key) == value for key, value in job.scored_with.items())


_CHILDREN: set[subprocess.Popen] = set()


def _run_child(command: list[str], log, env: dict) -> int:
    """Run ``command`` to its end; if the comparison is stopped first, the child is stopped too
    (SIGTERM: a training run saves its checkpoint)."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    _CHILDREN.add(child)
    try:
        return child.wait()
    finally:
        _CHILDREN.discard(child)


def _stop_children() -> None:
    for child in list(_CHILDREN):
        child.terminate()
    for child in list(_CHILDREN):
        child.wait()


def run_record(run: RunDir) -> dict:
    """A finished, evaluated run: its headline metrics, training minutes (with the dependencies it
    trained itself) and kimg."""
    from disdis.train import checkpoint as ckpt
    from disdis.train.run import training_seconds
    result = json.loads(run.metrics.read_text())
    metrics = {key: float(result["metrics"][name][field]) for key, (name, field) in HEADLINE.items()
               if name in result["metrics"]}
    meta = ckpt.read_meta(run.newest_checkpoint()) or {}
    return {"run": str(run), "metrics": metrics, "minutes": training_seconds(run) / 60, "kimg": float(meta.get("kimg", 0.0))}


def summarise(work: list[Job], budget: Budget, scale: str, seeds: list[int], protocol: list[str]) -> dict:
    """``{"methods": {NAME: {"mean", "std", "minutes", "kimg", "runs", "preset"}}, ...}``; std over
    seeds with n - 1 (0 for one seed)."""
    methods: dict[str, dict] = {}
    for job in work:
        entry = methods.setdefault(job.label, {"preset": job.preset, "records": []})
        entry["records"].append(run_record(job.run))
    for entry in methods.values():
        records = entry.pop("records")
        keys = sorted(set.intersection(*(set(r["metrics"]) for r in records)))
        values = {k: np.array([r["metrics"][k] for r in records]) for k in keys}
        entry["mean"] = {k: round(float(v.mean()), 4) for k, v in values.items()}
        entry["std"] = {k: round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4) for k, v in values.items()}
        entry["minutes"] = round(float(np.mean([r["minutes"] for r in records])), 2)
        entry["kimg"] = round(float(np.mean([r["kimg"] for r in records])), 3)
        entry["runs"] = [r["run"] for r in records]
    return {"methods": methods, "seeds": seeds, "scale": scale,
            "budget": {"minutes": budget.minutes, "kimg": budget.kimg}, "protocol": protocol}


def markdown(summary: dict) -> str:
    budget = summary["budget"]
    said = f"{budget['minutes']:g} training minutes" if budget["minutes"] is not None else f"{budget['kimg']:g} kimg"
    lines = [f"# Comparison ({summary['scale']} scale, {said} per run, seeds {', '.join(map(str, summary['seeds']))})",
             "", "mean ± std over seeds; minutes and kimg: training per run (mean)", "",
             "| method | preset | FactorVAE | DCI disentanglement | DCI completeness | MIG | minutes | kimg |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in summary["methods"].items():
        cells = [f"{m['mean'][k]:.3f} ± {m['std'][k]:.3f}" if k in m["mean"] else "-"
                 for k in ("factor_vae", "dci", "dci_completeness", "mig")]
        lines.append(f"| {name} | {Path(m['preset']).name} | " + " | ".join(cells)
                     + f" | {m['minutes']:.2f} | {m['kimg']:g} |")
    lines += ["", "protocol: " + " ".join(summary["protocol"])]
    return "\n".join(lines) + "\n"
