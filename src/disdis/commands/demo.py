"""``disdis demo``: the whole method on the CPU, in minutes, on the built-in synthetic data.

Makes (and caches) a Shapes3D-like factor grid, trains the paper's method with
configs/demo.yaml, evaluates the units (FactorVAE, DCI, MIG with reduced sample
counts, flagged as such), and writes a short report with the metrics table,
reconstructions and a latent-interchange grid.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# The demo's factor grid: every factor of Shapes3D, fewer values each (4 x 4 x 4 x 4 x 4 x 3 = 3072 images).
DEMO_GRID = {"floor_hue": [0, 3, 6, 9], "wall_hue": [0, 3, 6, 9], "object_hue": [0, 3, 6, 9],
             "scale": [0, 2, 5, 7], "shape": [0, 1, 2, 3], "orientation": [0, 7, 14]}
DEMO_EVAL = ["eval.num_train=2000", "eval.num_test=1000", "eval.num_eval=1000", "eval.num_variance_estimate=2000",
             "eval.metrics=[factor_vae, dci, mig]"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the CPU demo: synthetic data, training, evaluation and a report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render a small Shapes3D-like factor grid (cached), train the paper's method "
        "with configs/demo.yaml, evaluate its latent units (FactorVAE, DCI, MIG; reduced sample "
        "counts, marked as such) and write OUT/report.md with the metrics table, reconstructions and "
        "a latent-interchange grid. Run it again to continue an interrupted demo.\n\n"
        "example:\n  disdis demo --out runs/demo train.total_kimg=48")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo config")
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--data", default="data/demo/shapes3d_grid.npz", help="cached data file (default %(default)s)")
    parser.add_argument("--config", help="config file (default configs/demo.yaml of the source tree)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from disdis.commands.evaluate import evaluate_run
    from disdis.commands.interchange import interchange_grid
    from disdis.metrics import format_table
    from disdis.run_config import load_run_config
    from disdis.train import checkpoint as ckpt
    from disdis.train.run import resume_run, start_run

    start = time.perf_counter()
    config = Path(args.config) if args.config else default_config()
    out = Path(args.out)
    cfg = load_run_config(config, [f"data.path={args.data}", f"run_dir={out}", *args.overrides])
    make_demo_data(Path(args.data), cfg.data.resolution or 32)
    if ckpt.list_checkpoints(out / "checkpoints"):
        resume_run(out)
    else:
        start_run(cfg)
    trained = time.perf_counter()
    result, _ = evaluate_run(out, DEMO_EVAL)
    table = format_table(result)
    print(table)
    grid = interchange_grid(out, steps=cfg.eval.ddim_steps)
    recon = reconstructions(out, steps=cfg.eval.ddim_steps)
    total = time.perf_counter() - start
    write_report(out / "report.md", result, table, grid, recon, trained - start, total)
    print(f"report: {out / 'report.md'} ({total / 60:.1f} min)")
    return 0


def default_config() -> Path:
    from disdis.errors import DisdisError
    path = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
    if not path.is_file():
        raise DisdisError(f"{path}: demo config not found (run from a source checkout, or pass --config)")
    return path


def make_demo_data(path: Path, resolution: int) -> None:
    """Render the demo's factor grid once (canonical order) as a grid npz."""
    import numpy as np

    from disdis.data import open_dataset, render_shapes3d, write_grid_npz
    from disdis.data.base import canonical_factors
    from disdis.data.render_shapes3d import FACTOR_NAMES

    if path.is_file():
        data = open_dataset(path)
        if data.resolution == resolution and list(data.factor_sizes) == [len(DEMO_GRID[n]) for n in FACTOR_NAMES]:
            return
    kept = [np.asarray(DEMO_GRID[name]) for name in FACTOR_NAMES]
    classes = canonical_factors([len(k) for k in kept])
    rows = np.stack([kept[k][classes[:, k]] for k in range(len(kept))], axis=1)
    t = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_grid_npz(str(path), images=render_shapes3d(rows, resolution), factor_sizes=[len(k) for k in kept],
                   factor_names=FACTOR_NAMES)
    print(f"data: {len(rows)} images at {resolution}x{resolution} in {time.perf_counter() - t:.1f} s -> {path}")


def reconstructions(run_dir: Path, steps: int, count: int = 8) -> Path:
    """Originals (top) and their DDIM reconstructions from inverted noise and their own tokens (bottom)."""
    import numpy as np
    import torch

    from disdis.commands.interchange import save_grid
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, _ = load_trained_model(run_dir)
    data = open_training_data(cfg)
    picks = np.random.default_rng(1).choice(len(data), size=count, replace=False)
    x = torch.stack([data[int(i)][0] for i in picks])
    context = model.encode_units(x)[1]
    rec = model.sample(context, noise=model.invert(x, context, steps), steps=steps)
    path = run_dir / "figures" / "reconstructions.png"
    save_grid(torch.stack([x, rec]), path)
    return path


def write_report(path: Path, result: dict, table: str, grid: Path, recon: Path, train_s: float, total_s: float) -> None:
    m = result["metrics"]
    lines = [
        "# disdis demo", "",
        f"Wall time: {total_s / 60:.1f} min in all, {train_s / 60:.1f} min of it for data and training.", "",
        "| FactorVAE | DCI disentanglement | MIG |", "|---|---|---|",
        f"| {m['factor_vae']['eval_accuracy']:.3f} | {m['dci']['disentanglement']:.3f} | {m['mig']['discrete_mig']:.3f} |", "",
        "Reduced sample counts (not the paper's protocol): " + ", ".join(DEMO_EVAL) + ".", "",
        "```", table, "```", "",
        f"Reconstructions (top: images, bottom: DDIM from their inverted noise and own tokens): ![]({recon.relative_to(path.parent)})", "",
        "Latent interchange (row u: the targets with unit u's token taken from the source in the first column): "
        f"![]({grid.relative_to(path.parent)})", "",
    ]
    path.write_text("\n".join(lines))
