"""Labelled figures drawn with matplotlib (Agg): image grids with row and column labels, image
rows with a heat map laid over them, and annotated matrices; each at least 512 px wide."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from disdis.io import atomic_path

MIN_WIDTH_PX = 800
DPI = 100


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    return plt


def to_pixels(images) -> np.ndarray:
    """Images (..., C, H, W) in [-1, 1] (a tensor or array) as floats in [0, 1], (..., H, W, C)."""
    array = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=float)
    return np.moveaxis(np.clip((array + 1) / 2, 0, 1), -3, -1)


def _canvas(pixels: np.ndarray, pad: int = 2) -> np.ndarray:
    rows, cols, h, w, c = pixels.shape
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c))
    for r in range(rows):
        for k in range(cols):
            y, x = pad + r * (h + pad), pad + k * (w + pad)
            canvas[y:y + h, x:x + w] = pixels[r, k]
    return canvas


def _size(rows: int, cols: int, label_in: float = 2.2) -> tuple[float, float]:
    """Figure inches: cells of at least 0.8 in (80 px) and room for the row labels."""
    cell = max(0.8, (MIN_WIDTH_PX / DPI - label_in) / cols)
    return label_in + cols * cell, 0.9 + rows * cell


def labelled_grid(images, path: str | Path, row_labels: Sequence[str], col_labels: Sequence[str] | None = None,
                  title: str = "") -> Path:
    """Save images (rows, cols, C, H, W) in [-1, 1] as one labelled grid, upscaled without smoothing."""
    plt = _pyplot()
    pixels = to_pixels(images)
    rows, cols, h, w, c = pixels.shape
    canvas = _canvas(pixels)
    fig, ax = plt.subplots(figsize=_size(rows, cols), dpi=DPI)
    ax.imshow(canvas.squeeze(-1) if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_yticks([2 + r * (h + 2) + h / 2 for r in range(rows)], list(row_labels), fontsize=9)
    ax.set_xticks([2 + k * (w + 2) + w / 2 for k in range(cols)], list(col_labels) if col_labels else [""] * cols,
                  fontsize=8, rotation=30 if col_labels else 0)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)


def overlay_grid(images, maps, path: str | Path, row_labels: Sequence[str], title: str = "") -> Path:
    """Rows of images (cols, C, H, W) in [-1, 1], each cell with its heat map (rows, cols, H, W) over it
    (colour scale shared by the whole figure)."""
    plt = _pyplot()
    pixels = to_pixels(images)
    maps = maps.detach().float().cpu().numpy() if hasattr(maps, "detach") else np.asarray(maps, dtype=float)
    rows, cols = maps.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=_size(rows, cols), dpi=DPI, squeeze=False)
    top = float(maps.max()) or 1.0
    for r in range(rows):
        for k in range(cols):
            ax = axes[r, k]
            ax.imshow(pixels[k].squeeze(-1) if pixels.shape[-1] == 1 else pixels[k], cmap="gray", vmin=0, vmax=1)
            shown = ax.imshow(maps[r, k], cmap="inferno", alpha=0.55, vmin=0, vmax=top, interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(row_labels[r], fontsize=8, rotation=0, ha="right", va="center")
    fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.01, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path, tight=False)


def plot_matrix(matrix, path: str | Path, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                value_label: str) -> Path:
    """An annotated heat map of ``matrix`` (rows, cols), values in [0, max]."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(MIN_WIDTH_PX / DPI, 2.5 + 1.0 * cols), 1.4 + 0.42 * rows), dpi=DPI)
    shown = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(float(matrix.max()), 1e-12), aspect="auto")
    for r in range(rows):
        for k in range(cols):
            ax.text(k, r, f"{matrix[r, k]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[r, k] < 0.6 * matrix.max() else "black")
    ax.set_xticks(range(cols), list(col_labels), rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(rows), list(row_labels), fontsize=9)
    ax.set_title(title, fontsize=11)
    fig.colorbar(shown, ax=ax, label=value_label)
    return _save(fig, path)


def _save(fig, path: str | Path, tight: bool = True) -> Path:
    plt = _pyplot()
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:  # bbox "tight": long row labels are never cut off
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return Path(path)
