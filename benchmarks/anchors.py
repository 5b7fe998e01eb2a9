"""Time the Dynamic Gaussian Anchoring fit on token-like synthetic data.

Each unit's tokens are made like the model's: a scalar latent unit, drawn from a
few well-separated values (the "attribute values", 3 to 16 per unit) with a little
noise, lifted by a random 1 -> 256 -> 512 -> D MLP with ReLU after every layer
(docs/method.md). The table gives the fit time, the components per unit and the
purity of the components (the share of a component's tokens, by hard
assignment, that come from its most common attribute value; the minimum over
components and units), for the default options and, with --compare, for
variants (CPU times as ratios to the default, measured in the same run). "cpu s"
is the process CPU time (all threads): on a machine shared with other work it
shows how much of the wall time the fit actually ran.

    .venv/bin/python benchmarks/anchors.py                 # 20 units x 48,000 tokens x 32 dims
    .venv/bin/python benchmarks/anchors.py --compare --units 4
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from disdis.anchoring import GaussianAnchors, em

EVERY_PAIR = "every pair (no bound pruning)"
DEFAULT_TRUNCATION = em.TRUNCATION
VARIANTS = {
    "default": {},
    EVERY_PAIR: {},
    "em_tol=0 (30 EM its)": {"em_tol": 0.0},
    "spread rule (released)": {"split_rule": "spread"},
    "released (spread, random split, space, 30 its)": {"split_rule": "spread", "random_split": True,
                                                        "space": "released", "em_tol": 0.0},
    "fit on a 1/3 subsample": {"subsample_above": 16_000, "subsample_fraction": 1 / 3},
}


def token_like(units: int, tokens: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Tokens (U, N, D) from random ReLU MLPs of clustered scalars; labels (U, N); clusters per unit."""
    g = torch.Generator().manual_seed(seed)
    counts = [3 + (5 * u) % 14 for u in range(units)]  # 3..16 values per unit
    out, labels = [], []
    for c in counts:
        lab = torch.randint(c, (tokens,), generator=g)
        values = torch.linspace(-2, 2, c)
        s = values[lab] + 0.04 * (4 / max(c - 1, 1)) * torch.randn(tokens, generator=g)
        h = s.unsqueeze(1)
        for fan_in, fan_out in ((1, 256), (256, 512), (512, dim)):
            w = torch.randn(fan_in, fan_out, generator=g) * (2 / fan_in) ** 0.5
            b = 0.1 * torch.randn(fan_out, generator=g)
            h = torch.relu(h @ w + b)
        out.append(h)
        labels.append(lab)
    return torch.stack(out), torch.stack(labels), counts


def purity(assign: torch.Tensor, labels: torch.Tensor) -> float:
    """Minimum over components of the share of their hard members from the most common true value."""
    worst = 1.0
    for a, l in zip(assign, labels):
        table = torch.zeros(int(a.max()) + 1, int(l.max()) + 1)
        table.index_put_((a, l), torch.ones_like(a, dtype=torch.float32), accumulate=True)
        sizes = table.sum(1)
        worst = min(worst, float((table.max(1).values[sizes > 0] / sizes[sizes > 0]).min()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=48_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compare", action="store_true", help="also time the variants (released options)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens, labels, counts = token_like(args.units, args.tokens, args.dim, args.seed)
    print(f"{args.units} units x {args.tokens} tokens x {args.dim} dims, {torch.get_num_threads()} threads; "
          f"true values per unit: {counts}")
    print(f"{'variant':48s} {'time s':>8s} {'cpu s':>8s} {'cpu ratio':>9s} {'comps min/med/max':>18s} {'units K>=true':>14s} {'purity':>7s}")
    base = None
    for name, options in VARIANTS.items():
        if name != "default" and not args.compare:
            break
        em.TRUNCATION = math.inf if name == EVERY_PAIR else DEFAULT_TRUNCATION  # exact densities for all pairs
        start, cpu = time.perf_counter(), time.process_time()
        anchors = GaussianAnchors.fit(tokens, seed=args.seed, **options)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        em.TRUNCATION = DEFAULT_TRUNCATION
        base = base or cpu
        k = torch.tensor(anchors.num_components)
        enough = sum(int(a >= c) for a, c in zip(anchors.num_components, counts))
        p = purity(anchors.assign(tokens), labels)
        comps = f"{int(k.min())}/{int(k.median())}/{int(k.max())}"
        print(f"{name:48s} {elapsed:8.1f} {cpu:8.1f} {cpu / base:9.2f} {comps:>18s} {enough:>8d}/{args.units:<5d} {p:7.4f}")


if __name__ == "__main__":
    main()
