"""How much does knowing each group of factors lower the diffusion loss? An oracle for a run config.

The run's U-Net is trained from scratch with ground-truth tokens in place of the learned
units: one token per factor, a learned embedding of its class, zeroed for the factors
outside the group. Its noise-prediction loss on every image of the set, with fresh noise
and timesteps (the same draws for every group), is printed per timestep band, for each
group and for knowing nothing, with each group's gain over knowing nothing. A factor whose gain is comparable to the others' is one the
loss rewards; if the learned units still miss it, the cause is the units' training, not
the objective. A last line checks the other side: the run's feature extractor, trained with
a linear classifier per factor on its units instead of the diffusion loss, and the share of
images whose class it then gets right, per factor.

    .venv/bin/python benchmarks/factor_oracle.py configs/demo.yaml data.path=data/demo/shapes3d_grid.npz \\
        requires.first_stage=runs/demo/first_stage --groups floor_hue,wall_hue,object_hue scale,shape,orientation
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from disdis.diffusion import NoiseLoss, NoiseSchedule
from disdis.nn.first_stage import LatentScaler
from disdis.nn.unet import UNet
from disdis.nn.units import FeatureExtractor
from disdis.run_config import load_run_config
from disdis.train.run import load_required, open_training_data

BAND_EDGES = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)  # timestep bands as fractions of T


class OracleTokens(nn.Module):
    """Factor classes (B, K) -> tokens (B, K, D): a learned embedding per (factor, class), masked."""

    def __init__(self, factor_sizes: list[int], dim: int, known: list[bool]):
        super().__init__()
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(n, dim)) for n in factor_sizes)
        self.register_buffer("mask", torch.tensor(known, dtype=torch.float32)[None, :, None])

    def forward(self, classes: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([table[classes[:, k]] for k, table in enumerate(self.tables)], dim=1)
        return tokens * self.mask


def bands(num_steps: int) -> list[tuple[int, int]]:
    edges = [round(f * num_steps) for f in BAND_EDGES]
    return list(zip(edges[:-1], edges[1:]))


def fit(cfg, modules: list[nn.Module], batch_loss, size: int, steps: int, seed: int) -> None:
    """``steps`` AdamW steps (the run's lr) on ``batch_loss(indices, generator)`` over random batches."""
    opt = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = batch_loss(torch.randint(0, size, (cfg.train.batch_size,), generator=g), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_oracle(cfg, z0, classes, known, steps, seed) -> tuple[UNet, OracleTokens]:
    torch.manual_seed(seed)
    unet = UNet(cfg.method.unet)
    tokens = OracleTokens([int(c.max()) + 1 for c in classes.T], cfg.method.unet.context_dim, known)
    loss_fn = NoiseLoss(NoiseSchedule.from_config(cfg.method.diffusion), cfg.method.diffusion.loss)
    fit(cfg, [unet, tokens], lambda i, g: loss_fn(unet, z0[i], tokens(classes[i]), generator=g),
        len(z0), steps, seed)
    return unet.eval(), tokens


@torch.no_grad()
def band_losses(cfg, unet, tokens, z0, classes, draws: int = 3) -> list[float]:
    """Mean loss over every image, ``draws`` noises each, per timestep band (fixed seeds)."""
    schedule = NoiseSchedule.from_config(cfg.method.diffusion)
    loss_fn = NoiseLoss(schedule, cfg.method.diffusion.loss)
    g = torch.Generator().manual_seed(12345)
    out = []
    for lo, hi in bands(schedule.num_steps):
        total = 0.0
        for _ in range(draws):
            t = torch.randint(lo, hi, (len(z0),), generator=g)
            total += loss_fn(unet, z0, tokens(classes), t=t, noise=torch.randn(z0.shape, generator=g)).item()
        out.append(total / draws)
    return out


def supervised_extractor(cfg, images, classes, steps: int, seed: int) -> tuple[FeatureExtractor, nn.ModuleList]:
    """The run's extractor trained with a linear classifier per factor on its units (and the heads)."""
    torch.manual_seed(seed)
    extractor = FeatureExtractor(cfg.method.units)
    sizes = [int(c.max()) + 1 for c in classes.T]
    heads = nn.ModuleList(nn.Linear(cfg.method.units.num_units, n) for n in sizes)

    def batch_loss(i, g):
        units = extractor(images[i])
        return sum(nn.functional.cross_entropy(h(units), classes[i, k]) for k, h in enumerate(heads))

    fit(cfg, [extractor, heads], batch_loss, len(images), steps, seed)
    return extractor.eval(), heads


def extractor_accuracy(cfg, images, classes, steps: int, seed: int) -> list[float]:
    """Per-factor accuracy of the run's extractor trained with linear heads on its units (supervised)."""
    extractor, heads = supervised_extractor(cfg, images, classes, steps, seed)
    with torch.no_grad():
        units = extractor(images)
        return [(h(units).argmax(1) == classes[:, k]).float().mean().item() for k, h in enumerate(heads)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value; needs data.path and requires.first_stage")
    p.add_argument("--groups", nargs="+", default=[], help="comma-separated factor names, one group each "
                   "(knowing nothing and knowing every factor are always measured)")
    p.add_argument("--steps", type=int, default=600, help="training steps per group")
    p.add_argument("--extractor-steps", type=int, default=300, help="steps of the supervised extractor check")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_run_config(args.config, args.overrides)
    if not cfg.requires.get("first_stage"):
        p.error("requires.first_stage=RUN is required (a trained first stage)")
    data = open_training_data(cfg)
    names = list(data.dataset.factor_names)
    images, classes = map(torch.stack, zip(*data.__getitems__(range(len(data)))))  # one read of the file
    first_stage = load_required(cfg.requires["first_stage"], "first_stage")[1].eval()
    with torch.no_grad():
        z = first_stage.encode(images).float()
    scaler = LatentScaler()
    scaler.fit(z[: cfg.train.batch_size])
    z0 = scaler(z)

    groups = {"nothing": []}
    for group in args.groups:
        unknown = set(group.split(",")) - set(names)
        if unknown:
            p.error(f"--groups: unknown factors {sorted(unknown)} (known: {', '.join(names)})")
        groups[group] = group.split(",")
    groups["every factor"] = names

    edges = bands(NoiseSchedule.from_config(cfg.method.diffusion).num_steps)
    header = "| known factors | " + " | ".join(f"t {lo}-{hi - 1}" for lo, hi in edges) + " | mean | gain | s |"
    print(f"{len(z0)} images, {args.steps} steps at batch {cfg.train.batch_size}; loss on fresh noise "
          "per timestep band")
    print(header, flush=True)
    print("|" + "---|" * (len(edges) + 4))
    base = None
    for label, known in groups.items():
        start = time.perf_counter()
        unet, tokens = train_oracle(cfg, z0, classes, [n in known for n in names], args.steps, args.seed)
        losses = band_losses(cfg, unet, tokens, z0, classes)
        # the mean over uniform t: each band weighted by its width
        mean = sum(v * (hi - lo) for v, (lo, hi) in zip(losses, edges)) / edges[-1][1]
        base = mean if base is None else base
        cells = " | ".join(f"{v:.4f}" for v in losses)
        print(f"| {label} | {cells} | {mean:.4f} | {base - mean:+.4f} | {time.perf_counter() - start:.0f} |",
              flush=True)
    start = time.perf_counter()
    accuracy = extractor_accuracy(cfg, images, classes, args.extractor_steps, args.seed)
    print(f"extractor trained on the labels ({args.extractor_steps} steps, "
          f"{time.perf_counter() - start:.0f} s), accuracy: "
          + ", ".join(f"{n} {a:.2f}" for n, a in zip(names, accuracy)))


if __name__ == "__main__":
    main()
