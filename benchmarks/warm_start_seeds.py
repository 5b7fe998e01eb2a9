"""The extractor warm start over seeds: which factors each seed's autoencoder captures, and its units' scores.

    python benchmarks/warm_start_seeds.py [--config demo] [--seeds 0 1 2 3 4 5] [--jobs 2]
                                          [--out runs/warm_start_seeds] [key=value ...]

For each seed, the autoencoder that ``disdis demo train.seed=S key=value ...`` trains in
``RUN/extractor`` (the run config's own, ``method.own_dependency("extractor")``, so every
``method.extractor_init_loss.*`` override applies) is trained by ``disdis train`` in
``OUT/seed<S>``, one thread each, ``--jobs`` at a time (1-thread runs are deterministic, so a
row repeats; a finished seed is read, not trained again). Then one row per seed: each factor's
best unit share at the end (from the training probe; >= 0.5 counts as captured) and FactorVAE /
DCI / MIG of its units with the run's own protocol (the model weights, as the demo's
``warm_start``), and a summary: in how many seeds every factor was captured. A second table gives
each factor's best unit share once the units are unmixed as ``method.unmix_units`` would unmix
them at the start of the diffusion stage (:func:`disdis.ica.kurtosis_rotation` in the default
``method.unmix_order`` over every image of the grid, the extractor in eval mode). On the demo grid
the hue phase and the hold are chaotic per seed, so an option is judged by this count over
seeds, not by one run (docs/demo-study.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from disdis.config import save_config
from disdis.data.demo_grid import make_demo_data
from disdis.diagnostics import CAPTURED
from disdis.errors import DisdisError
from disdis.evaluation import evaluate_run
from disdis.report import headline
from disdis.run_config import load_run_config
from disdis.rundir import RunDir
from disdis.train.logger import read_csv_log
from disdis.train.run import training_seconds


def write_seed_configs(args: argparse.Namespace) -> dict[int, Path]:
    """Each seed's autoencoder run config, written to OUT/seed<S>.yaml (checked before any training)."""
    configs = {}
    for seed in args.seeds:
        cfg = load_run_config(args.config, [f"data.path={args.data}", f"run_dir={args.out / 'unused'}",
                                            f"train.seed={seed}", *args.overrides])
        if "extractor" not in cfg.method.needs():
            raise SystemExit(f"{args.config}: its method trains no extractor warm start (method.extractor_init)")
        own = cfg.method.own_dependency("extractor", cfg)
        own.run_dir = str(args.out / f"seed{seed}")
        configs[seed] = args.out / f"seed{seed}.yaml"
        save_config(own, configs[seed])
    return configs


def train_all(configs: dict[int, Path], jobs: int) -> None:
    """``disdis train`` for every seed not finished yet, ``jobs`` at a time, one thread each."""
    pending = [s for s in configs if RunDir(configs[s].with_suffix("")).status().get("state") != "finished"]
    running: dict[int, subprocess.Popen] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            log = open(configs[seed].with_suffix(".log"), "w")
            running[seed] = subprocess.Popen([sys.executable, "-m", "disdis", "train", str(configs[seed])],
                                             stdout=log, stderr=subprocess.STDOUT, env=env)
            print(f"seed {seed}: training (log {log.name})", flush=True)
        time.sleep(5)
        for seed, process in list(running.items()):
            if process.poll() is not None:
                del running[seed]
                if process.returncode:
                    for other in running.values():  # no orphans left training after the error
                        other.terminate()
                    raise SystemExit(f"seed {seed}: disdis train failed (rc {process.returncode}); "
                                     f"see {configs[seed].with_suffix('.log')}")
                print(f"seed {seed}: done", flush=True)


def unmixed_shares(run: Path) -> list[float]:
    """Each factor's best unit share over the grid's images once the run's units are unmixed."""
    import torch

    from disdis.ica import kurtosis_rotation
    from disdis.metrics import unit_factor_shares
    from disdis.models.disentangled_diffusion import DisentangledDiffusionConfig
    from disdis.train.run import load_trained_model, open_training_data
    cfg, model, _ = load_trained_model(run, "model")
    data = open_training_data(cfg)
    with torch.no_grad():
        units = model.extractor(torch.stack([data[i][0] for i in range(len(data.dataset))])).double().numpy()
    fit = kurtosis_rotation(units, order=DisentangledDiffusionConfig.unmix_order)  # the diffusion stage's default
    return unit_factor_shares(units @ fit.matrix.T + fit.offset, data.dataset.factor_sizes).max(0).tolist()


def seed_row(run: Path, names: list[str] | None) -> tuple[list[str], list[float], list[float], float]:
    """(factor names, each factor's last best unit share, FactorVAE / DCI / MIG, training minutes)."""
    rows = read_csv_log(run / "logs" / "train.csv")
    names = names or [k[len("share_"):] for k in rows[-1] if k.startswith("share_")]
    if not names:
        raise SystemExit(f"{run}: logs/train.csv has no share_<factor> columns (no factor grid, or the probe was off)")
    # the run's own eval section is the demo's protocol with the extractor's units (own_dependency sets it)
    results, _ = evaluate_run(run, weights="model", out=run / "metrics_warm_start.json", n_jobs=1)
    return names, [float(rows[-1][f"share_{n}"]) for n in names], list(headline(results)), training_seconds(RunDir(run)) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="a run config with an extractor warm start (default: demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at once, one thread each (default 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/warm_start_seeds"))
    parser.add_argument("--data", default="data/demo/shapes3d_grid.npz",
                        help="the demo grid's file, made when missing (default %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run config")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs: expected >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        configs = write_seed_configs(args)
    except DisdisError as error:  # a bad config or override: one line, before any training
        raise SystemExit(f"warm_start_seeds: {error}") from None
    make_demo_data(Path(args.data), load_run_config(configs[args.seeds[0]]).data.resolution or 32)
    train_all(configs, args.jobs)

    import torch
    torch.set_num_threads(args.jobs)
    names, lines, unmixed_lines, complete, unmixed_complete = None, [], [], 0, 0
    for seed, path in configs.items():
        names, shares, scores, minutes = seed_row(path.with_suffix(""), names)
        every = all(s >= CAPTURED for s in shares)
        complete += every
        lines.append(f"| {seed} | " + " | ".join(f"{s:.2f}" for s in shares)
                     + f" | {'yes' if every else 'no'} | {' / '.join(f'{v:.3f}' for v in scores)} | {minutes:.1f} |")
        unmixed = unmixed_shares(path.with_suffix(""))
        every = all(s >= CAPTURED for s in unmixed)
        unmixed_complete += every
        unmixed_lines.append(f"| {seed} | " + " | ".join(f"{s:.2f}" for s in unmixed) + f" | {'yes' if every else 'no'} |")
    print(f"\n{args.config} {' '.join(args.overrides)}\n")
    print("| seed | " + " | ".join(names) + " | every factor | FactorVAE / DCI / MIG | minutes |")
    print("|---|" + "---|" * (len(names) + 3))
    print("\n".join(lines))
    print(f"\nevery factor captured (a unit's share >= {CAPTURED}) in {complete} of {len(configs)} seeds")
    print("\nthe same units unmixed (method.unmix_units; each factor's best unit share):\n")
    print("| seed | " + " | ".join(names) + " | every factor |")
    print("|---|" + "---|" * (len(names) + 1))
    print("\n".join(unmixed_lines))
    print(f"\nevery factor captured once unmixed in {unmixed_complete} of {len(configs)} seeds")


if __name__ == "__main__":
    main()
