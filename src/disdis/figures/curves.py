"""Training curves (matplotlib, Agg backend, at least 512 px wide)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from disdis.io import atomic_path


def plot_factor_shares(rows: Sequence[dict], factor_names: Sequence[str], path: str | Path,
                       captured: float = 0.5, directions: Sequence[dict] = ()) -> Path:
    """Each factor's best unit share (eta^2) against kimg, from the rows of ``logs/shares.csv``
    (one row per (step, unit) with a column per factor); a dashed line marks ``captured``. With
    ``directions`` (the rows of ``logs/train.csv``), each factor's best direction's share
    (``direction_<factor>``, a linear mix of the units) dotted in the factor's colour."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    kimg = np.array([r["kimg"] for r in rows])
    times = np.unique(kimg)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)  # 800 x 450 px
    dotted = False
    for name in factor_names:
        values = np.array([r[name] for r in rows])
        best = [values[kimg == t].max() for t in times]
        line, = ax.plot(times, best, marker="o", markersize=3, label=name)
        logged = [r for r in directions if f"direction_{name}" in r]  # runs before it was logged have none
        if logged:
            ax.plot([r["kimg"] for r in logged], [r[f"direction_{name}"] for r in logged], linestyle=":",
                    linewidth=1.2, color=line.get_color())
            dotted = True
    ax.axhline(captured, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training images (kimg)")
    ax.set_ylabel("best unit's share of the factor (eta^2)")
    ax.set_title("When each factor is captured (dashed: captured at 0.5"
                 + ("; dotted: the best direction, a mix of units)" if dotted else ")"))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def plot_training_curves(rows: Sequence[dict], path: str | Path) -> Path:
    """The loss (and any other logged loss terms) and the images per second against kimg, from the
    rows of ``logs/train.csv``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    kimg = np.array([r["kimg"] for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)  # 1100 x 400 px
    left.plot(kimg, [r["loss"] for r in rows], label="loss")
    left.set_xlabel("training images (kimg)")
    left.set_ylabel("training loss (mean over each log interval)")
    left.set_title("Loss")
    left.grid(alpha=0.3)
    right.plot(kimg, [r["img_per_s"] for r in rows], color="tab:green")
    right.set_xlabel("training images (kimg)")
    right.set_ylabel("images / s")
    right.set_title("Training speed")
    right.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
