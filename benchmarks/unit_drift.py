"""Which factor does the diffusion loss push into each unit?

    python benchmarks/unit_drift.py CHECKPOINT [CHECKPOINT ...] [--draws 8] [--step 0.05] [--adam]

Once the extractor is released, the diffusion loss alone moves the units: it can gather a factor
into the unit that holds part of it, or spread one into a unit that holds another (the demo's seed
7: shape into the orientation unit, docs/demo-study.md). This script measures that push at a
checkpoint of a disentangled-diffusion run on a factor grid. It takes the gradient of the training
loss (the run's own: the noise-prediction loss and any term it adds, e.g.
``method.unit_decorrelation``; anchoring and Skip Dropout as in training) with respect
to the extractor's weights, on every image of the grid and ``--draws`` draws of the timestep and
noise per image (seeded), steps the weights along it (plain gradient descent, so the direction, not
Adam's per-weight scaling) by the length that changes the units by ``--step`` of their spread (RMS
over the units of the change, over the RMS of their standard deviations), and prints, per unit, each
factor's share (eta^2, the training probe's measure) before the step and its change per that step.
A unit whose share of a factor it does not hold rises is having that factor spread into it; the
factor whose best share rises is being gathered. A last line compares that mean gradient with the
gradients of single batches at the run's batch size (their norms and cosines with the mean): where
a batch's gradient is mostly noise the units can move mostly by chance, and with Adam, which sizes
each weight's step by the learning rate rather than by its gradient, as fast as they would move by
design.

The step goes through the extractor's weights, so it is what the network can do, not what each
image asks for. Training uses Adam, which divides each weight's step by the root of its running
mean squared gradient: ``--adam`` divides the mean gradient likewise, by the checkpoint's own
second moments (bias-corrected), which is the direction Adam takes on average at that point. Units
are the extractor's outputs in eval mode, as the training probe reads them.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch


def grid_images(cfg) -> tuple[torch.Tensor, list[int], list[str]]:
    from disdis.train.run import open_training_data
    data = open_training_data(cfg)
    if not data.dataset.has_factor_grid:
        raise SystemExit(f"{cfg.data.path}: its data has no factor grid")
    images = torch.stack([item[0] for item in data.__getitems__(range(len(data)))])  # one read of the file
    return images, list(data.dataset.factor_sizes), list(data.dataset.factor_names)


def loss_gradient(model, images: torch.Tensor, draws: int, chunk: int = 243) -> list[torch.Tensor]:
    """The extractor's gradient of the training loss averaged over every image and ``draws`` draws
    of (t, noise, Skip Dropout) per image."""
    grads = None
    torch.manual_seed(0)
    for _ in range(draws):
        for start in range(0, len(images), chunk):
            weight = min(chunk, len(images) - start) / len(images) / draws
            step = batch_gradient(model, images[start:start + chunk])
            grads = [g * weight for g in step] if grads is None else [a.add_(g, alpha=weight) for a, g in zip(grads, step)]
    return grads


def batch_gradient(model, images: torch.Tensor) -> list[torch.Tensor]:
    """The extractor's gradient of the training loss (the model's own, with any term it adds) on one
    batch (one draw per image), the extractor in eval mode (as the probe reads it) and the U-Net in
    train mode (Skip Dropout on)."""
    params = [p for p in model.extractor.parameters() if p.requires_grad]
    return list(torch.autograd.grad(model(images)["loss"], params))


def gradient_noise(model, images: torch.Tensor, mean: list[torch.Tensor], batch: int,
                   count: int = 8) -> tuple[float, list[float]]:
    """(the RMS of the norms of ``count`` random batches' gradients, their cosines with ``mean``)."""
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    norm = torch.sqrt(sum(g.square().sum() for g in mean))
    norms, cosines = [], []
    for _ in range(count):
        pick = torch.randperm(len(images), generator=generator)[:batch]
        grads = batch_gradient(model, images[pick])
        size = torch.sqrt(sum(g.square().sum() for g in grads))
        norms.append(float(size))
        cosines.append(float(sum((g * m).sum() for g, m in zip(grads, mean)) / size / norm))
    return float(np.sqrt(np.mean(np.square(norms)))), cosines


def units_of(extractor, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return extractor.eval()(images).double().numpy()


def adam_scales(model, cfg, checkpoint) -> list[torch.Tensor]:
    """Per extractor weight, 1 / (sqrt(v_hat) + eps) from the Adam second moments saved in the checkpoint."""
    from disdis.train import checkpoint as ckpt
    from disdis.train.optim import make_optimizer
    tensors, meta = ckpt.load_checkpoint(checkpoint)
    optimizer = make_optimizer(model, cfg.train, fused=False)
    ckpt.load_optimizer_state(optimizer, ckpt.strip_prefix("optim", tensors), meta["optimizer_groups"])
    beta2, eps = cfg.train.adam_betas[1], cfg.train.adam_eps
    scales = []
    for p in (p for p in model.extractor.parameters() if p.requires_grad):
        state = optimizer.state[p]
        if "exp_avg_sq" not in state:
            raise SystemExit(f"{checkpoint}: no Adam moments for the extractor (it was held still throughout)")
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
        scales.append(1 / (v_hat.sqrt() + eps))
    return scales


def drift(model, images: torch.Tensor, sizes: list[int], mean: list[torch.Tensor], step: float,
          scales: list[torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(shares before (units, factors), their change for a step of ``step`` of the units' spread,
    the step's length in weight space): the step along the mean gradient ``mean``, times ``scales``
    per weight when given."""
    from disdis.metrics import unit_factor_shares
    units = units_of(model.extractor, images)
    grads = mean if scales is None else [g * s for g, s in zip(mean, scales)]
    direction = torch.sqrt(sum(g.square().sum() for g in grads))
    spread = np.sqrt(np.mean(units.std(0) ** 2))

    def stepped(length: float) -> np.ndarray:
        moved = copy.deepcopy(model.extractor)
        with torch.no_grad():
            for p, g in zip((p for p in moved.parameters() if p.requires_grad), grads):
                p.sub_(g, alpha=length / float(direction))
        return units_of(moved, images)

    trial = 1e-3  # a first-order step: its change scales with the length
    change = np.sqrt(np.mean((stepped(trial) - units) ** 2)) / spread
    length = trial * step / change
    after = stepped(length)
    before = unit_factor_shares(units, sizes)
    return before, unit_factor_shares(after, sizes) - before, length


def report(source: str, draws: int, step: float, adam: bool) -> None:
    from disdis.train.run import load_trained_model
    cfg, model, checkpoint = load_trained_model(source, "model")
    if not hasattr(model, "extractor") or not hasattr(model, "noise_loss"):
        raise SystemExit(f"{source}: not a run of a method with a feature extractor and a diffusion loss")
    images, sizes, names = grid_images(cfg)
    model.eval()
    model.unet.train()  # Skip Dropout (and dropout) act as in training
    model.fill_latent_cache(images.split(243))  # the frozen encoder once, not in every gradient
    mean = loss_gradient(model, images, draws)
    scales = adam_scales(model, cfg, checkpoint) if adam else None
    before, delta, length = drift(model, images, sizes, mean, step, scales)
    norm = float(torch.sqrt(sum(g.square().sum() for g in mean)))
    batch_norm, cosines = gradient_noise(model, images, mean, cfg.train.batch_size)
    print(f"\n{checkpoint}: a step of {step:g} of the units' spread ({length:.3g} in weight space) along the mean "
          f"gradient{', scaled as Adam scales it' if adam else ''}, {draws} draws per image\n")
    print("| unit | " + " | ".join(names) + " | gains most |\n" + "|---" * (len(names) + 2) + "|")
    for j in np.argsort(-before.max(1)):
        k = int(np.argmax(delta[j]))
        print(f"| {j} | " + " | ".join(f"{b:.2f} ({d:+.3f})" for b, d in zip(before[j], delta[j]))
              + f" | {names[k]} {delta[j, k]:+.3f} |")
    best = before.argmax(0)
    print("\nper factor, its best unit's share and change: "
          + ", ".join(f"{n} unit {best[k]} {before[best[k], k]:.2f} ({delta[best[k], k]:+.3f})" for k, n in enumerate(names)))
    print(f"gradient: the mean's norm {norm:.4g}; batches of {cfg.train.batch_size}: RMS norm {batch_norm:.4g}, "
          f"cosine with the mean {np.mean(cosines):.2f} (from {min(cosines):.2f} to {max(cosines):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="run folders (newest checkpoint) or checkpoint files")
    parser.add_argument("--draws", type=int, default=8, help="timestep and noise draws per image")
    parser.add_argument("--step", type=float, default=0.05, help="the step, as a share of the units' spread")
    parser.add_argument("--adam", action="store_true", help="scale the gradient by the checkpoint's Adam second moments")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for source in args.checkpoints:
        report(source, args.draws, args.step, args.adam)


if __name__ == "__main__":
    main()
