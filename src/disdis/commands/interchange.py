"""``disdis interchange``: a grid that swaps one latent unit at a time from a source image into
target images, so a person sees which factor each unit carries."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "interchange", help="save a latent-interchange grid of a trained run (PNG)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Top row: the target images; left column: the source image. Row u shows the "
        "targets regenerated (DDIM, eta 0, from each target's own DDIM-inverted noise) with unit "
        "u's anchored token replaced by the source's: the factor that changes along the row is "
        "the one unit u carries. Uses the EMA weights of the run's newest checkpoint.\n\n"
        "example:\n  disdis interchange runs/00001-shapes3d-diffusion --targets 6 --steps 50")
    parser.add_argument("run_dir", help="run folder (or one of its checkpoint files)")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/figures/interchange.png)")
    parser.add_argument("--source", type=int, help="dataset index of the source image (default: random)")
    parser.add_argument("--targets", type=int, default=6, help="number of random target images (default 6)")
    parser.add_argument("--units", help="comma-separated units to show (default all)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default eval.ddim_steps of the run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images (default 0)")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    units = [int(u) for u in args.units.split(",")] if args.units else None
    out = interchange_grid(args.run_dir, out=args.out, source=args.source, num_targets=args.targets, units=units,
                           steps=args.steps, seed=args.seed, weights=args.weights)
    print(f"wrote {out}")
    return 0


def interchange_grid(run_source: str | Path, out: str | Path | None = None, source: int | None = None,
                     num_targets: int = 6, units: list[int] | None = None, steps: int | None = None,
                     seed: int = 0, weights: str = "ema") -> Path:
    import numpy as np
    import torch

    from disdis.errors import DisdisError
    from disdis.progress import progress
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(run_source, weights)
    if not model.can("generate"):
        raise DisdisError(f"interchange: a '{cfg.stage}' run has no latent units")
    device = resolve_device(cfg.train.device)
    model.to(device)
    data = open_training_data(cfg)
    num_units = model.tokenizer.num_units
    units = list(range(num_units)) if units is None else units
    if any(not 0 <= u < num_units for u in units):
        raise DisdisError(f"--units: expected units in 0..{num_units - 1}, got {units}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(data), size=num_targets + 1, replace=False)
    if source is not None:
        if not 0 <= source < len(data):
            raise DisdisError(f"--source: expected an index in 0..{len(data) - 1}, got {source}")
        picks[0] = source
    images = torch.stack([data[int(i)][0] for i in picks]).to(device)
    src, targets = images[:1], images[1:]
    steps = steps or cfg.eval.ddim_steps
    noise = model.invert(targets, steps=steps)
    rows = [torch.cat([torch.ones_like(src), targets])]
    for u in progress(units, desc="interchange", unit="unit"):
        rows.append(torch.cat([src, model.interchange(src, targets, u, noise=noise, steps=steps)]))
    run_dir = checkpoint.parent.parent
    out = Path(out) if out else run_dir / "figures" / "interchange.png"
    save_grid(torch.stack(rows), out)
    return out


def save_grid(grid, path: str | Path, pad: int = 2) -> None:
    """Save images (rows, cols, C, H, W) in [-1, 1] as one PNG with white gutters (atomic)."""
    import numpy as np
    from PIL import Image

    from disdis.io import atomic_path

    rows, cols, c, h, w = grid.shape
    pixels = ((grid.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).cpu().numpy()
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            y, x = pad + r * (h + pad), pad + k * (w + pad)
            canvas[y:y + h, x:x + w] = pixels[r, k]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas).save(tmp)
