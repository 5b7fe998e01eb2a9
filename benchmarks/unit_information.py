"""Is a factor missing from a run's units, or there but spread over them?

    python benchmarks/unit_information.py RUN [RUN ...] [--weights model|ema] [--folds 5]

For each run (or checkpoint file) of a method with scalar units, trained on a full factor grid,
encodes every image of its data and prints two tables:

- per factor: the accuracy of a linear probe (multinomial logistic regression on the
  standardised units, ``--folds``-fold cross-validation over shuffled images; chance is one over
  the factor's size) beside the best unit's share (eta^2, the training probe's measure). A factor
  with a low probe accuracy is missing from the code: no rotation of the units can disentangle
  it. A high accuracy with a low best share means it is there but spread over units. Where the
  method has the paper's extractor, a probe of the features its last layer reads (``features
  probe``) tells a factor the units leave out from one the extractor itself is blind to.
  (DCI's informativeness does not tell the two apart on a small grid: its training and test
  samples are drawn from the same few images, which its trees memorise.)
- per unit, most used first: the spread of its value over the images and every factor's share;
  for a variational autoencoder also its KL to the prior, averaged over the images, and its
  posterior sigma: a unit with KL near 0 and sigma near 1 is switched off (the prior), free for
  nothing; how much its decoder reads it (``decoder use``: the RMS over the images of
  (D(mu + d e_j) - D(mu)) / d, d = 0.1, the reconstruction's change per unit step of the unit's
  mean; a factor enters a code through the units the decoder already reads); and whether the unit
  is held (``hold_weight``); and the pair of factors that together explain most of it (``best pair``,
  eta^2 of the pair's cells, :func:`disdis.metrics.unit_pair_shares`): far above its best single
  share, the unit carries two factors jointly, a mixture or an interaction such as "the object's hue
  equals the floor's", which a linear probe of the units misses; and of the pairs of factors with
  as many values, the cyclic sum or difference (f_a + f_b or f_a - f_b, modulo that number) that
  explains most of it (``best cyclic``): a unit that carries one hue relative to another (on the
  demo grid, the object's hue as its step from the floor's) scores high there and near 0 for the
  factor it carries.

A last table lists the pairs of units that hold two factors mixed by a rotation: for each pair, the
standardised pair is rotated by every angle in 5-degree steps, and the pairs whose two best shares
(each rotated unit's largest) gain at least 0.1 summed at their best angle are printed with their
shares before and after and the correlation of the pair's standardised squares at both angles. Two
independent non-Gaussian factors rotated into two units keep a correlation of 0 but their squares
correlate (``method.unit_independence`` penalises that; docs/method.md).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch


def probe_accuracy(codes: np.ndarray, labels: np.ndarray, folds: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    return float(cross_val_score(LogisticRegression(max_iter=2000), codes, labels,
                                 cv=StratifiedKFold(folds, shuffle=True, random_state=0)).mean())


def unit_statistics(model, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Each unit's values (N images, units), and for a variational autoencoder its KL, sigma,
    decoder use and whether it is held."""
    from disdis.models.vae_losses import gaussian_kl_units
    with torch.no_grad():
        h = model.extractor.features(images) if hasattr(model, "extractor") else None
        features = {"features": h.double().numpy()} if h is not None else {}
        if not hasattr(model, "log_variance"):
            return {"units": model.representation(images)["units"].double().numpy(), **features}
        units, logvar = model.extractor.fc[-1](h), model.log_variance(h)
        held = getattr(model, "held", torch.zeros(units.shape[1], dtype=torch.bool))
        return {"units": units.double().numpy(), "kl": gaussian_kl_units(units, logvar).mean(0).numpy(),
                "sigma": (0.5 * logvar).exp().mean(0).numpy(), "use": decoder_use(model.decoder, units),
                "held": held.numpy(), **features}


def decoder_use(decoder, units: torch.Tensor, step: float = 0.1) -> np.ndarray:
    """(N,): per unit, the RMS over the images of the decoder's change per unit step of that unit."""
    base = decoder(units)
    return np.array([((decoder(units + step * torch.eye(units.shape[1])[j]) - base) / step).square().mean().sqrt().item()
                     for j in range(units.shape[1])])


def report(source: str, weights: str, folds: int) -> None:
    from disdis.metrics import unit_pair_shares
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(source, weights)
    data = open_training_data(cfg)
    dataset = data.dataset
    if not dataset.has_factor_grid:
        raise SystemExit(f"{source}: its data has no factor grid")
    images = torch.stack([data[i][0] for i in range(len(dataset))])
    stats = unit_statistics(model, images)
    units = stats["units"]
    sizes, names = dataset.factor_sizes, dataset.factor_names
    factors = np.stack(np.unravel_index(np.arange(len(units)), sizes), 1)
    standard = _standardised(units)
    pairs = unit_pair_shares(units, sizes)
    cyclic, cyclic_names = cyclic_shares(units, factors, sizes, names)
    shares = pairs.diagonal(axis1=1, axis2=2)  # each factor's share alone
    features = _standardised(stats["features"]) if "features" in stats else None
    print(f"\n{checkpoint}\n\n| factor | chance | linear probe | best unit share |"
          + (" features probe |" if features is not None else "") + "\n|---|---|---|---|" + "---|" * (features is not None))
    for k, name in enumerate(names):
        print(f"| {name} | {1 / sizes[k]:.3f} | {probe_accuracy(standard, factors[:, k], folds):.3f} | "
              f"{shares[:, k].max():.3f} |" + (f" {probe_accuracy(features, factors[:, k], folds):.3f} |"
                                               if features is not None else ""))
    variational = "kl" in stats
    order = np.argsort(-(stats["kl"] if variational else units.std(0)))
    print("\n| unit | std | " + ("KL | sigma | decoder use | " if variational else "") + " | ".join(names)
          + " | best pair | best cyclic |")
    print("|---" * (4 + 3 * variational + len(names)) + "|")
    for j in order:
        held = " (held)" if variational and stats["held"][j] else ""
        extra = (f"{stats['kl'][j]:.2f} | {stats['sigma'][j]:.3f} | {stats['use'][j]:.3f}{held} | "
                 if variational else "")
        k, m = np.unravel_index(np.argmax(np.triu(pairs[j], 1)), pairs[j].shape)
        print(f"| {j} | {units[:, j].std():.3f} | {extra}" + " | ".join(f"{v:.2f}" for v in shares[j])
              + f" | {names[k]} x {names[m]} {pairs[j, k, m]:.2f} | {_best(cyclic[j], cyclic_names)} |")
    mixed = rotated_pairs(standard, sizes)
    print("\n| units | rotated by | their best shares | rotated | squares' correlation | rotated |\n" + "|---" * 6 + "|"
          if mixed else "\nno pair of units gains 0.1 of share by a rotation")
    for (i, j), angle, before, after, dependence in mixed:
        print(f"| {i}, {j} | {angle} deg | " + " / ".join(_best(row, names) for row in before) + " | "
              + " / ".join(_best(row, names) for row in after) + f" | {dependence[0]:+.2f} | {dependence[1]:+.2f} |")


def _best(shares: np.ndarray, names: list[str]) -> str:
    return f"{names[shares.argmax()]} {shares.max():.2f}" if len(names) else "-"


def cyclic_shares(units: np.ndarray, factors: np.ndarray, sizes, names) -> tuple[np.ndarray, list[str]]:
    """(units, candidates) each unit's share of every cyclic sum or difference of two equal-sized
    factors, (f_b +- f_a) mod size, and the candidates' names. Replacing f_b by it maps the grid onto
    itself, so the images re-sorted by the new factor values form a grid again, and its share of
    factor b there is the share of the sum or difference (``unit_factor_shares``)."""
    from disdis.metrics import unit_factor_shares
    shares, labels = [], []
    for a, b in itertools.combinations(range(len(sizes)), 2):
        for sign, op in ((-1, "-"), (1, "+")) if sizes[a] == sizes[b] else ():
            relabelled = factors.copy()
            relabelled[:, b] = (factors[:, b] + sign * factors[:, a]) % sizes[b]
            table = np.empty_like(units)
            table[np.ravel_multi_index(relabelled.T, sizes)] = units
            shares.append(unit_factor_shares(table, sizes)[:, b])
            labels.append(f"{names[b]} {op} {names[a]}")
    return np.stack(shares, 1) if shares else np.zeros((units.shape[1], 0)), labels


def rotated_pairs(standard: np.ndarray, sizes, gain: float = 0.1) -> list[tuple]:
    """Pairs of (standardised) units whose two best shares rise by ``gain`` or more, summed, when the
    pair is rotated: ((i, j), the best angle in degrees, shares before (2, factors), after, the
    correlation of the pair's squares before and after), largest gain first."""
    from disdis.metrics import unit_factor_shares

    def rotated(pair: np.ndarray, degrees: int) -> np.ndarray:
        t = np.radians(degrees)
        return pair @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])

    def squares_correlation(pair: np.ndarray) -> float:
        return float(np.corrcoef(_standardised(pair) ** 2, rowvar=False)[0, 1])

    found = []
    for i, j in itertools.combinations(range(standard.shape[1]), 2):
        pair = standard[:, [i, j]]
        shares = {angle: unit_factor_shares(rotated(pair, angle), sizes) for angle in range(0, 180, 5)}
        best = max(shares, key=lambda angle: shares[angle].max(1).sum())
        rise = shares[best].max(1).sum() - shares[0].max(1).sum()
        if rise >= gain:
            found.append((rise, ((i, j), best, shares[0], shares[best],
                                 (squares_correlation(pair), squares_correlation(rotated(pair, best))))))
    return [entry for _, entry in sorted(found, key=lambda item: -item[0])]


def _standardised(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(0)) / (values.std(0) + 1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders or checkpoint files")
    parser.add_argument("--weights", choices=["model", "ema"], default="model")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        report(run, args.weights, args.folds)


if __name__ == "__main__":
    main()
