"""``disdis demo``: the whole method on the CPU, in minutes, on the built-in synthetic data.

Makes (and caches) a small Shapes3D-like factor grid, trains the first stage and
the paper's method with the preset demo (configs/demo.yaml), evaluates the units (FactorVAE, DCI,
MIG with the reduced sample counts of the config's eval section, flagged as
such; the paper's representation, per-unit PCA of the anchored tokens, and the
raw extractor outputs beside it), and writes a short report with the metrics
table, reconstructions and a latent-interchange grid.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# The demo's factor grid: every factor of Shapes3D, three values each (3^6 = 729 images), spread
# over each factor's range so that the values stay tellable apart at low resolution.
DEMO_GRID = {"floor_hue": [0, 3, 6], "wall_hue": [0, 3, 6], "object_hue": [0, 3, 6],
             "scale": [0, 3, 7], "shape": [0, 1, 2], "orientation": [0, 7, 14]}
REPRESENTATIONS = ("tokens_pca", "scalar")  # the paper's protocol first (docs/method.md)
TARGET = {"factor_vae": 0.9, "dci": 0.6}      # the demo's goal: FactorVAE >= 0.9, DCI disentanglement >= 0.6


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the CPU demo: synthetic data, training, evaluation and a report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render a small Shapes3D-like factor grid (cached), train a small first stage and "
        "the paper's method with the preset demo (configs/demo.yaml), evaluate the latent units (FactorVAE, DCI, MIG; "
        "reduced sample counts, marked as such) and write OUT/report.md with the metrics table, "
        "reconstructions and a latent-interchange grid. Run it again to continue an interrupted demo "
        "(a finished one is only re-evaluated).\n\n"
        "examples:\n  disdis demo\n  disdis demo --out runs/demo-long train.total_kimg=96")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo config")
    parser.add_argument("--out", default="runs/demo", help="run folder (default %(default)s)")
    parser.add_argument("--data", default="data/demo/shapes3d_grid.npz", help="cached data file (default %(default)s)")
    parser.add_argument("--config", help="config file or preset (default: the packaged preset 'demo')")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads (default: all %(default)s cores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from disdis.commands.evaluate import evaluate_run
    from disdis.commands.interchange import interchange_grid
    from disdis.metrics import format_table
    from disdis.run_config import load_run_config
    from disdis.train import checkpoint as ckpt
    from disdis.train.run import resume_run, start_run

    torch.set_num_threads(max(1, args.threads))
    clock = _Clock()
    config = args.config or "demo"
    out = Path(args.out)
    cfg = load_run_config(config, [f"data.path={args.data}", f"run_dir={out}", *args.overrides])
    _phase("1/4 data")
    make_demo_data(Path(args.data), cfg.data.resolution or 32)
    clock.lap("data")
    _phase("2/4 training (first stage, then the diffusion model)")
    if ckpt.list_checkpoints(out / "checkpoints"):
        resume_run(out, args.overrides)  # e.g. a larger train.total_kimg lengthens a finished demo
    else:
        start_run(cfg)
    clock.lap("training")
    _phase("3/4 evaluation")
    results = {}
    for rep in REPRESENTATIONS:
        results[rep], _ = evaluate_run(out, [f"eval.representation={rep}"],
                                       out=out / ("metrics.json" if rep == REPRESENTATIONS[0] else f"metrics_{rep}.json"))
    clock.lap("evaluation")
    _phase("4/4 figures")
    grid = interchange_grid(out, steps=cfg.eval.ddim_steps)
    recon = reconstructions(out, steps=cfg.eval.ddim_steps)
    clock.lap("figures")
    report = write_report(out / "report.md", cfg, results, grid, recon, clock)
    print(format_table(results[REPRESENTATIONS[0]]))
    print("\n".join(shares_table(results[REPRESENTATIONS[0]], list(DEMO_GRID))))
    print(report_summary(cfg, results, clock))
    print(f"report: {out / 'report.md'}")
    return 0


class _Clock:
    """Wall time of each phase of the demo."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    @property
    def total(self) -> float:
        return self.last - self.start


def _phase(name: str) -> None:
    print(f"== demo {name}", file=sys.stderr, flush=True)


def make_demo_data(path: Path, resolution: int) -> None:
    """Render the demo's factor grid once (canonical order) as a grid npz; reuse a matching cache."""
    import numpy as np

    from disdis.data import open_dataset, render_shapes3d, write_grid_npz
    from disdis.data.base import canonical_factors
    from disdis.data.render_shapes3d import FACTOR_NAMES

    sizes = [len(DEMO_GRID[n]) for n in FACTOR_NAMES]
    if path.is_file():
        data = open_dataset(path)
        if data.resolution == resolution and list(data.factor_sizes) == sizes:
            print(f"data: cached {path}", file=sys.stderr)
            return
    kept = [np.asarray(DEMO_GRID[name]) for name in FACTOR_NAMES]
    classes = canonical_factors(sizes)
    rows = np.stack([kept[k][classes[:, k]] for k in range(len(kept))], axis=1)
    t = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_grid_npz(str(path), images=render_shapes3d(rows, resolution), factor_sizes=sizes, factor_names=FACTOR_NAMES)
    print(f"data: {len(rows)} images at {resolution}x{resolution} in {time.perf_counter() - t:.1f} s -> {path}",
          file=sys.stderr)


def reconstructions(run_dir: Path, steps: int, count: int = 8) -> Path:
    """Rows: images; the first stage's reconstructions; DDIM from their inverted noise and own tokens."""
    import numpy as np
    import torch

    from disdis.commands.interchange import save_grid
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, _ = load_trained_model(run_dir)
    data = open_training_data(cfg)
    picks = np.random.default_rng(1).choice(len(data), size=count, replace=False)
    x = torch.stack([data[int(i)][0] for i in picks])
    with torch.no_grad():
        first = model.first_stage(x).clamp(-1, 1)
    context = model.encode_units(x)[1]
    ddim = model.sample(context, noise=model.invert(x, context, steps), steps=steps)
    path = run_dir / "figures" / "reconstructions.png"
    save_grid(torch.stack([x, first, ddim]), path)
    return path


def headline(result: dict) -> tuple[float, float, float]:
    m = result["metrics"]
    return m["factor_vae"]["eval_accuracy"], m["dci"]["disentanglement"], m["mig"]["discrete_mig"]


def report_summary(cfg, results: dict, clock: _Clock) -> str:
    """A few lines: wall time per phase, the headline scores of each representation, the target."""
    phases = ", ".join(f"{k} {v / 60:.1f}" for k, v in clock.laps.items())
    lines = [f"demo wall time: {clock.total / 60:.1f} min ({phases} min)"]
    for rep, result in results.items():
        fvae, dci, mig = headline(result)
        reached = fvae >= TARGET["factor_vae"] and dci >= TARGET["dci"]
        lines.append(f"{rep:>10}: FactorVAE {fvae:.3f}  DCI disentanglement {dci:.3f}  MIG {mig:.3f}  "
                     f"(target FactorVAE >= {TARGET['factor_vae']}, DCI >= {TARGET['dci']}: "
                     f"{'reached' if reached else 'not reached'})")
    lines.append(capture_line(Path(cfg.run_dir)))
    e = cfg.eval
    lines.append(f"reduced protocol (not the paper's): {e.num_train} train / {e.num_test} test points, "
                 f"{e.num_eval} FactorVAE eval votes, {e.num_variance_estimate} variance samples")
    return "\n".join(lines)


def capture_line(run_dir: Path) -> str:
    """When training first captured each factor (some unit's share >= 0.5), from logs/train.csv."""
    from disdis.diagnostics import CAPTURED, capture_times
    from disdis.train.logger import read_csv_log
    log = run_dir / "logs" / "train.csv"
    times = capture_times(read_csv_log(log), list(DEMO_GRID)) if log.is_file() else {}
    got = [f"{n} at {t[0]:g} kimg ({t[1]:.1f} min)" for n, t in times.items() if t]
    missed = [n for n, t in times.items() if not t]
    return (f"captured (a unit's share >= {CAPTURED}): {', '.join(got) or 'none'}"
            + (f"; never captured: {', '.join(missed)}" if missed else "; every factor captured"))


def shares_table(result: dict, factor_names: list[str]) -> list[str]:
    """Markdown: the share of each unit's variance that each factor explains (eta^2, disdis.metrics.shares)."""
    shares = result.get("unit_factor_shares")
    if not shares:
        return []
    lines = ["What each unit carries (tokens_pca; share of the unit's variance explained by each factor, "
             "1 = that factor alone):", "", "| unit | " + " | ".join(factor_names) + " |",
             "|---" * (len(factor_names) + 1) + "|"]
    for unit, row in enumerate(shares):
        lines.append(f"| {unit} | " + " | ".join(f"**{v:.2f}**" if v >= 0.5 else f"{v:.2f}" for v in row) + " |")
    return lines


def capture_curve(run_dir: Path) -> list[str]:
    """Markdown: the training probe's figure of each factor's best unit share against kimg."""
    figure = run_dir / "figures" / "factor_shares.png"
    if not figure.is_file():
        return []
    return ["When each factor was captured during training (each factor's best unit share, measured on the "
            f"grid at every logging interval; logs/shares.csv has the whole table): "
            f"![]({figure.relative_to(run_dir)})", ""]


def write_report(path: Path, cfg, results: dict, grid: Path, recon: Path, clock: _Clock) -> Path:
    from disdis.io import write_text_atomic
    from disdis.metrics import format_table
    rows = ["| representation | FactorVAE | DCI disentanglement | MIG |", "|---|---|---|---|"]
    for rep, result in results.items():
        rows.append("| {} | {:.3f} | {:.3f} | {:.3f} |".format(rep, *headline(result)))
    grid_names = ", ".join(f"{k} {v}" for k, v in DEMO_GRID.items())
    lines = [
        "# disdis demo", "",
        "```", report_summary(cfg, results, clock), "```", "",
        *rows, "",
        "tokens_pca: each unit's anchored token reduced to one number by PCA (the paper's protocol); "
        "scalar: the feature extractor's raw outputs.", "",
        f"Data: the synthetic Shapes3D-like grid ({grid_names}; Shapes3D class indices), "
        f"{cfg.data.resolution}x{cfg.data.resolution}.", "",
        "Full metric table (tokens_pca):", "", "```", format_table(results[REPRESENTATIONS[0]]), "```", "",
        *shares_table(results[REPRESENTATIONS[0]], list(DEMO_GRID)), "",
        *capture_curve(path.parent),
        f"Reconstructions (rows: images; first-stage reconstructions; DDIM from their inverted noise and own "
        f"tokens): ![]({recon.relative_to(path.parent)})", "",
        "Latent interchange (row u: the targets of the first row regenerated with unit u's token taken from "
        f"the source in the first column): ![]({grid.relative_to(path.parent)})", "",
    ]
    return write_text_atomic(path, "\n".join(lines))
