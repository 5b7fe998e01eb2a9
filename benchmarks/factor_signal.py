"""How much of the images' variance each factor moves, in pixels and in a first stage's latents.

    python benchmarks/factor_signal.py DATA [DATA ...] [--gradients] [--first-stage RUN] [--units RUN]

For each dataset file (a full factor grid, e.g. the demo's ``data/demo/shapes3d_grid.npz``)
prints, per factor, :func:`disdis.factor_grid.factor_signal` of the pixels (in [0, 1]) and, with
``--first-stage``, of that run's encoder latents: the main effect (``marginal``, what a per-class
offset expresses) and the variance along the grid lines where the factor alone changes
(``alone``, what telling its values apart needs). A factor with a small share is one a
reconstruction or denoising loss barely pays for; one whose ``alone`` share is far above its
``marginal`` one acts through the other factors (a silhouette takes the colours around it), so a
per-image bias cannot express it.

``--gradients`` measures the same for the images' finite differences along x and y (what the
autoencoder's ``gradient: signed`` term reconstructs) and for each pixel's edge strength (``gradient:
magnitude``): edges, where silhouettes carry more of the variance than in the pixels.

``--units RUN`` measures the same two shares for each of a trained run's scalar units (its EMA
weights) on the grid's images: a factor with a small ``marginal`` but a large ``alone`` share in a
unit is held by that unit through an interaction with the others (its effect on the unit depends
on their values), which the per-unit shares of the training probe (eta^2, ``marginal``) miss.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from disdis.data import open_dataset
from disdis.data.torch_dataset import to_tensor
from disdis.factor_grid import factor_signal
from disdis.models.autoencoder import edge_strength


def table(name: str, values: np.ndarray, sizes, factor_names) -> None:
    marginal, alone = factor_signal(values.reshape(len(values), -1), sizes)
    print(f"\n{name}\n\n| factor | marginal | alone |\n|---|---|---|")
    for n, m, a in zip(factor_names, marginal, alone):
        print(f"| {n} | {m:.4f} | {a:.4f} |")


def finite_differences(images: np.ndarray) -> np.ndarray:
    """(B, values): each image's (B, H, W, C) differences between neighbours along x, then along y."""
    return np.concatenate([np.diff(images, axis=2).reshape(len(images), -1),
                           np.diff(images, axis=1).reshape(len(images), -1)], axis=1)


def unit_tables(run: str, images: np.ndarray, sizes, factor_names) -> None:
    """Per unit of ``run``, the marginal / alone shares of every factor."""
    from disdis.train.run import load_trained_model
    _, model, path = load_trained_model(run, weights="ema")
    with torch.no_grad():
        units = torch.cat([model.representation(b)["units"].float() for b in to_tensor(images).split(256)]).numpy()
    print(f"\nunits of {path} (marginal / alone)\n\n| unit | " + " | ".join(factor_names) + " |\n"
          + "|---" * (len(factor_names) + 1) + "|")
    for j in range(units.shape[1]):
        marginal, alone = factor_signal(units[:, [j]], sizes)
        print(f"| {j} | " + " | ".join(f"{m:.2f} / {a:.2f}" for m, a in zip(marginal, alone)) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="grid dataset files")
    p.add_argument("--gradients", action="store_true", help="also measure the images' finite differences")
    p.add_argument("--first-stage", help="a trained first-stage run: also measure its latents")
    p.add_argument("--units", help="a trained run with scalar units on this grid: also measure each unit")
    args = p.parse_args()
    encoder = None
    if args.first_stage:
        from disdis.train.run import load_required
        encoder = load_required(args.first_stage, "first_stage")[1].eval()
    for path in args.data:
        data = open_dataset(path)
        sizes, names = list(data.factor_sizes), list(data.factor_names)
        if int(np.prod(sizes)) != len(data):
            p.error(f"{path}: {len(data)} images, not the full grid of {int(np.prod(sizes))}")
        images = data.images(np.arange(len(data)))  # uint8, canonical order
        print(f"{path}: {len(data)} images, {data.resolution} px, factors {dict(zip(names, sizes))}")
        table("pixels", images / 255.0, sizes, names)
        if args.gradients:
            table("finite differences along x and y", finite_differences(images / 255.0), sizes, names)
            table("edge strength", edge_strength(to_tensor(images).double()).numpy(), sizes, names)
        if encoder is not None:
            with torch.no_grad():
                z = torch.cat([encoder.encode(b).float() for b in to_tensor(images).split(256)])
            table(f"first-stage latents {tuple(z.shape[1:])}", z.numpy(), sizes, names)
        if args.units:
            unit_tables(args.units, images, sizes, names)


if __name__ == "__main__":
    main()
