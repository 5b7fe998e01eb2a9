"""``disdis compare``: several methods, several seeds, one budget and one protocol (disdis.compare)."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    from disdis.compare import ALIASES
    parser = subparsers.add_parser(
        "compare", help="train and evaluate several methods x seeds with one budget and one protocol",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every method x seed on the same data with the same budget (--minutes: equal "
        "training time per run, the fair question on a CPU; --kimg: equal images), evaluate them all "
        "with one protocol, and write DIR/compare.json and DIR/compare.md (mean and std over seeds of "
        "FactorVAE, DCI and MIG; minutes and kimg per run). A method is an alias "
        f"({', '.join(ALIASES['demo'])}: the preset of that method at --scale) or any preset or "
        "config file. --scale demo (default) trains on the demo grid (made when --data is not given) "
        "at 32 px on the CPU and scores with the demo's reduced protocol; --scale paper uses the "
        "released-scale presets and disentanglement_lib's sample counts. Run it again with the same "
        "settings to continue a stopped comparison: done runs are read back, interrupted ones resume; "
        "DIR/settings.json records them, and a run with others is refused (choose another --out).\n\n"
        "examples:\n"
        "  disdis compare --methods paper,encdiff,beta_vae,beta_tcvae,factor_vae --seeds 0,1 --minutes 15 --out runs/compare\n"
        "  disdis compare --methods paper,beta_vae --kimg 48 --out runs/compare-48k\n"
        "  disdis compare --scale paper --data 3dshapes.h5 --methods paper,encdiff,factor_vae --kimg 51200 --out runs/paper")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="settings of every run (after the scale's); eval.* ones join the shared protocol")
    parser.add_argument("--methods", required=True, help="comma-separated aliases, presets or config files")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training minutes per run (the stages a run trains "
                        "itself included: first stage, autoencoder)")
    budget.add_argument("--kimg", type=float, help="training images per run, in thousands")
    parser.add_argument("--out", required=True, help="comparison folder")
    parser.add_argument("--data", help="dataset file (default at --scale demo: the demo grid, made and cached)")
    parser.add_argument("--scale", default="demo", choices=("demo", "paper"), help="preset scale of the aliases")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per run (default: the cores divided among the jobs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from disdis.compare import Budget, run_comparison
    from disdis.errors import ConfigError

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if args.jobs < 1:
        raise ConfigError(f"--jobs: expected a positive integer, got {args.jobs}")
    if args.threads is not None and args.threads < 1:  # 0 would silently mean the default
        raise ConfigError(f"--threads: expected a positive integer, got {args.threads}")
    budget = Budget(args.minutes, args.kimg)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    # the data (the demo grid, made when --data is not given) comes after every check
    summary = run_comparison([m.strip() for m in args.methods.split(",") if m.strip()], seeds, budget,
                             args.out, args.data, args.scale, args.jobs, threads, list(args.overrides))
    from disdis.compare import markdown
    print(markdown(summary), end="")
    print(f"wrote {Path(args.out) / 'compare.json'} and compare.md ({summary['wall_minutes']:.1f} min)")
    return 0
