"""``disdis interchange``: a grid that swaps one latent unit at a time from a source image into
target images, so a person sees which factor each unit carries."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "interchange", help="save a latent-interchange grid of a trained run (PNG)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Top row: the target images; left column: the source image. Row u shows the "
        "targets regenerated (DDIM, eta 0, from each target's own DDIM-inverted noise) with unit "
        "u's anchored token replaced by the source's: the factor that changes along the row is "
        "the one unit u carries. Uses the EMA weights of the run's newest checkpoint.\n\n"
        "example:\n  disdis interchange runs/00001-shapes3d-disentangled_diffusion --targets 6 --steps 50")
    parser.add_argument("run_dir", help="run folder (or one of its checkpoint files)")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/figures/interchange.png)")
    parser.add_argument("--source", type=int, help="dataset index of the source image (default: random)")
    parser.add_argument("--targets", type=int, default=6, help="number of random target images, 1 or more (default 6)")
    parser.add_argument("--units", help="comma-separated units to show (default all)")
    parser.add_argument("--steps", type=int, help="DDIM steps, 1 or more (default diffusion.ddim_steps of the run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images (default 0)")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from disdis.errors import DisdisError
    from disdis.figures import interchange_grid
    try:
        units = [int(u) for u in args.units.split(",")] if args.units else None
    except ValueError:
        raise DisdisError(f"--units: expected comma-separated unit numbers, got {args.units!r}") from None
    out = interchange_grid(args.run_dir, out=args.out, source_index=args.source, num_targets=args.targets, units=units,
                           steps=args.steps, seed=args.seed, weights=args.weights)
    print(f"wrote {out}")
    return 0
