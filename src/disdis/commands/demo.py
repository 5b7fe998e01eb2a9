"""``disdis demo``: the whole method on the CPU, in minutes, on the built-in synthetic data.

Makes (and caches) a small Shapes3D-like factor grid, trains the first stage, the
autoencoder that starts the feature extractor, and the paper's method with the preset demo
(configs/demo.yaml), evaluates the units (FactorVAE, DCI,
MIG with the reduced sample counts of the config's eval section, flagged as
such; the paper's representation, per-unit PCA of the anchored tokens, and the
raw extractor outputs beside it), and writes a short report with the metrics
table, reconstructions and a latent-interchange grid.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from disdis.data.demo_grid import DEMO_DATA


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the CPU demo: synthetic data, training, evaluation and a report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render a small Shapes3D-like factor grid (cached), train a small first stage, the "
        "autoencoder that starts the feature extractor, and the paper's method with the preset demo (configs/demo.yaml), evaluate the latent units (FactorVAE, DCI, MIG; "
        "reduced sample counts, marked as such) and write OUT/report.md with the metrics table, "
        "reconstructions and a latent-interchange grid. Run it again to continue an interrupted demo "
        "(a finished one is only re-evaluated).\n\n"
        "examples:\n  disdis demo\n  disdis demo --out runs/demo-long train.total_kimg=96")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo config")
    parser.add_argument("--out", default="runs/demo", help="run folder (default %(default)s)")
    parser.add_argument("--data", default=DEMO_DATA, help="cached data file (default %(default)s)")
    parser.add_argument("--config", help="config file or preset (default: the packaged preset 'demo')")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads, 1 or more (default: all %(default)s cores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from disdis.errors import ConfigError
    if args.threads < 1:  # before any data is made (0 used to mean 1 thread, silently)
        raise ConfigError(f"--threads: expected a positive integer, got {args.threads}")
    import torch

    from disdis.data.demo_grid import DEMO_GRID, make_demo_data
    from disdis.evaluation import evaluate_run, protocol_overrides
    from disdis.figures import make_figures
    from disdis.metrics import format_table
    from disdis.models.unit_unmixing import read_record
    from disdis.report import (REPRESENTATIONS, UNMIXED_START, WARM_START, Clock, report_summary, shares_table,
                               write_html_report, write_report)
    from disdis.run_config import load_run_config
    from disdis.rundir import RunDir
    from disdis.train import distributed
    from disdis.train.loop import TrainingInterrupted
    from disdis.train.run import dependency_source, resume_run, start_run

    # measured slower than one process of 2 threads (docs/demo-results.md, "Batch 128")
    if distributed.launched_world_size() > 1:
        raise ConfigError("the demo runs as one process; to train on several: torchrun --nproc_per_node N "
                          f"-m disdis train demo data.path={args.data}")
    torch.set_num_threads(args.threads)
    clock = Clock()
    config = args.config or "demo"
    out = Path(args.out)
    cfg = load_run_config(config, [f"data.path={args.data}", f"run_dir={out}", *args.overrides])
    _phase("1/4 data")
    make_demo_data(Path(args.data), cfg.data.resolution or 32)
    clock.lap("data")
    _phase("2/4 training (first stage, extractor's autoencoder, then the diffusion model)")
    try:
        if RunDir(out).list_checkpoints():
            resume_run(out, args.overrides)  # e.g. a larger train.total_kimg lengthens a finished demo
        else:
            start_run(cfg)
    except TrainingInterrupted as err:  # the demo continues by running it again (it has no --resume)
        raise err.continued_with(continue_command(args)) from None
    clock.lap("training")
    _phase("3/4 evaluation")
    results = {}
    for rep in REPRESENTATIONS:
        results[rep], _ = evaluate_run(out, [f"eval.representation={rep}"],
                                       out=out / ("metrics.json" if rep == REPRESENTATIONS[0] else f"metrics_{rep}.json"))
    start = dependency_source(cfg, "extractor") if "extractor" in cfg.method.needs() else None
    if start is not None and RunDir.of(start).list_checkpoints():  # what the diffusion training started from, scored alike
        scalar = [*protocol_overrides(cfg.eval), "eval.representation=scalar"]
        results[WARM_START], _ = evaluate_run(start, scalar, weights="model", out=out / f"metrics_{WARM_START}.json")
        record = read_record(out)
        if record is not None:  # the same units as the unmixing turned them: the diffusion training's start
            results[UNMIXED_START], _ = evaluate_run(start, scalar, weights="model", out=out / f"metrics_{UNMIXED_START}.json",
                                                     unit_map=(record["matrix"], record["offset"]))
    clock.lap("evaluation")
    _phase("4/4 figures and report")
    figures = make_figures(out)
    clock.lap("figures")
    report = write_report(out / "report.md", cfg, results, figures["interchange"], figures["reconstructions"], clock)
    page = write_html_report([out], out / "report.html")
    clock.lap("report")  # in the printed total; report.md, written before, gives the phases up to figures
    print(format_table(results[REPRESENTATIONS[0]]))
    print("\n".join(shares_table(results[REPRESENTATIONS[0]], list(DEMO_GRID))))
    print(report_summary(cfg, results, clock))
    print(f"report: {report} and {page}")
    return 0


def continue_command(args: argparse.Namespace) -> str:
    """The command that continues this demo: ``disdis demo`` again on its folder (and its data)."""
    data = f" --data {args.data}" if str(args.data) != DEMO_DATA else ""
    return f"`disdis demo --out {args.out}{data}`"


def _phase(name: str) -> None:
    print(f"== demo {name}", file=sys.stderr, flush=True)
