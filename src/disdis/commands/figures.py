"""``disdis figures``: every figure of a trained run, into RUN/figures/ (disdis.figures)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from disdis.figures.run_figures import FIGURES
    parser = subparsers.add_parser(
        "figures", help="draw a run's figures: traversals, interchange, attention maps, heat maps, curves",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw the figures of a trained run into RUN/figures/ (PNG, at least 512 px wide, labelled "
        "with the factor each unit carries most, from the evaluation's share table): "
        f"{', '.join(FIGURES)}. By default every figure the run can make (attention maps need a diffusion "
        "method, the heat maps an evaluated run); --which asks for some, and one the run cannot make "
        "is an error.\n\nexamples:\n  disdis figures runs/demo\n  disdis figures RUN --which traversals,attention --t 300")
    parser.add_argument("run_dir", help="run folder (or one of its checkpoint files)")
    parser.add_argument("--which", help="comma-separated figure names (default: all the run can make)")
    parser.add_argument("--steps", type=int, help="DDIM steps for diffusion methods, 1..T (default: the run's)")
    parser.add_argument("--t", type=int, default=500,
                        help="timestep of the attention maps, 0..T-1 for a run of T diffusion steps (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and noise (default 0)")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from disdis.figures import make_figures
    which = [w.strip() for w in args.which.split(",") if w.strip()] if args.which else None
    made = make_figures(args.run_dir, which, weights=args.weights, seed=args.seed, steps=args.steps, t=args.t)
    for name, path in made.items():
        print(f"{name:<16} {path}")
    return 0
