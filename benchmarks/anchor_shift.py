"""How far does DyGA move the tokens the U-Net is conditioned on?

    python benchmarks/anchor_shift.py RUN [RUN ...] [--draws 4] [--threads 1]

DyGA (docs/method.md) pulls each token ``method.anchoring.strength`` of the way to the mean of the
anchor it is assigned to. What that can change depends on how far the tokens are from their anchors:
where each unit's tokens already sit in tight clusters, one per value of the factor the unit holds,
the pull moves them little against their spread, and the U-Net is conditioned on nearly the tokens
it would see without it. At a checkpoint of a disentangled-diffusion run on a factor grid (every
image of the grid, the extractor in eval mode, the checkpoint's own anchors), per unit: its best
factor and that factor's share (the probe's eta^2, of the scalar unit), its anchors (mixture
components) against the factor's values, the RMS distance of its tokens from their mean (the
spread), the RMS of the DyGA shift as a share of that spread, and the RMS distance of each token
from the mean token of its value of the best factor (the within-value spread) as a share of it.
The last line gives the noise-prediction loss on the grid with and without the shift, from the same
draws of timestep, noise and Skip Dropout (``--draws`` per image): the shift's effect on what
the U-Net is trained on.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def rms(x: torch.Tensor) -> float:
    """Root mean square of the last dimension's norms."""
    return float(x.square().sum(-1).mean().sqrt())


def within_value_spread(tokens: torch.Tensor, sizes: list[int], factor: int) -> float:
    """RMS distance of each token (grid-ordered, (images, D)) from the mean token of its value of ``factor``."""
    grid = tokens.reshape(*sizes, tokens.shape[-1])
    axes = [k for k in range(len(sizes)) if k != factor]
    return rms(grid - grid.mean(dim=axes, keepdim=True))


def noise_losses(model, images: torch.Tensor, tokens: torch.Tensor, anchored: torch.Tensor,
                 draws: int) -> tuple[float, float]:
    """The noise-prediction loss on ``images`` conditioned on ``anchored`` and on ``tokens``, from the
    same draws (timestep, noise, Skip Dropout masks)."""
    z0 = model.latents(images)
    losses = np.zeros((2, draws))
    with torch.no_grad():
        for d in range(draws):
            for i, cond in enumerate((anchored, tokens)):
                torch.manual_seed(d)  # the same Skip Dropout masks
                losses[i, d] = float(model.noise_loss(model.unet, z0, cond, generator=torch.Generator().manual_seed(d)))
    return float(losses[0].mean()), float(losses[1].mean())


def report(source: str, draws: int) -> None:
    from disdis.metrics import unit_factor_shares
    from disdis.train.run import load_trained_model
    from unit_drift import grid_images  # benchmarks/, beside this script
    cfg, model, checkpoint = load_trained_model(source, "model")
    if not hasattr(model, "anchor_state") or not hasattr(model, "tokenizer"):
        raise SystemExit(f"{source}: not a run of the paper's method (no anchors to shift tokens to)")
    if not model.anchoring.enabled:
        raise SystemExit(f"{source}: its run has DyGA off (method.anchoring.enabled: false)")
    images, sizes, names = grid_images(cfg)
    model.eval()
    with torch.no_grad():
        units = model.extractor(images)
        tokens = model.tokenizer(units)
        anchored = model.anchor(tokens)
    shares = unit_factor_shares(units.double().numpy(), sizes)
    components = [int(k) for k in model.anchor_state.anchors().num_components]
    print(f"\n{checkpoint}: DyGA strength {model.anchoring.strength:g}, {len(images)} grid images\n")
    print("| unit | best factor (share) | anchors / values | token spread | shift / spread | within-value / spread |")
    print("|---|---|---|---|---|---|")
    shifts = []
    for u in np.argsort(-shares.max(1)):
        f = int(np.argmax(shares[u]))
        spread = rms(tokens[:, u] - tokens[:, u].mean(0))
        shift = rms(anchored[:, u] - tokens[:, u]) / spread
        shifts.append(shift)
        within = within_value_spread(tokens[:, u], sizes, f) / spread
        print(f"| {u} | {names[f]} ({shares[u, f]:.2f}) | {components[u]} / {sizes[f]} | {spread:.3g} | "
              f"{shift:.3f} | {within:.3f} |")
    model.unet.train()  # Skip Dropout as in training
    with_shift, without = noise_losses(model, images, tokens, anchored, draws)
    print(f"\nshift / spread over the units: {np.mean(shifts):.3f} (from {min(shifts):.3f} to {max(shifts):.3f}); "
          f"noise-prediction loss on the grid ({draws} draws per image): {with_shift:.5f} with the shift, "
          f"{without:.5f} without ({100 * (with_shift / without - 1):+.2f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (newest checkpoint) or checkpoint files")
    parser.add_argument("--draws", type=int, default=4, help="timestep and noise draws per image for the loss")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for source in args.runs:
        report(source, args.draws)


if __name__ == "__main__":
    main()
