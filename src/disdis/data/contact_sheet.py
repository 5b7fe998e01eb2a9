"""Contact sheets: one row per factor, traversing its values from a random base image."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from disdis.data.base import GroundTruthDataset
from disdis.data.files import atomic_path

_LABEL_WIDTH = 170
_GAP = 2
_HEADER = 18


def traversal_rows(dataset: GroundTruthDataset, seed: int = 0, max_columns: int = 20):
    """``[(label, factor rows (m, K))]``: each factor stepped through (at most ``max_columns``
    evenly spaced values) with the others held at one random base sample."""
    base = dataset.sample_factors(1, np.random.RandomState(seed))[0]
    rows = []
    for k, (name, size) in enumerate(zip(dataset.factor_names, dataset.factor_sizes)):
        values = np.unique(np.linspace(0, size - 1, min(size, max_columns)).round().astype(np.int64))
        factors = np.repeat(base[None], len(values), axis=0)
        factors[:, k] = values
        shown = f"{size}" if len(values) == size else f"{len(values)} of {size}"
        rows.append((f"{name} ({shown})", factors))
    return base, rows


def contact_sheet(dataset: GroundTruthDataset, seed: int = 0, max_columns: int = 20) -> Image.Image:
    """The contact sheet image; datasets without a factor grid (CelebA) get rows of random images."""
    if dataset.has_factor_grid:
        base, rows = traversal_rows(dataset, seed, max_columns)
        title = f"{os.path.basename(dataset.path)}  base factors {base.tolist()}"
        strips = [(label, dataset.images(dataset.index_of(f))) for label, f in rows]
    else:
        rng = np.random.RandomState(seed)
        n = min(len(dataset), max_columns)
        title = f"{os.path.basename(dataset.path)}  random images"
        strips = [(f"random {r + 1}", dataset.images(rng.choice(len(dataset), n, replace=False)))
                  for r in range(min(4, max(1, len(dataset) // n)))]
    zoom = max(1, -(-48 // dataset.resolution))  # show small images at >= 48 px, pixels kept sharp
    cell = dataset.resolution * zoom
    columns = max(len(images) for _, images in strips)
    sheet = Image.new("RGB", (_LABEL_WIDTH + columns * (cell + _GAP),
                              _HEADER + len(strips) * (cell + _GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), title, fill="black")
    for r, (label, images) in enumerate(strips):
        y = _HEADER + r * (cell + _GAP)
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            if image.shape[-1] == 1:
                image = np.repeat(image, 3, axis=-1)
            tile = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (_LABEL_WIDTH + c * (cell + _GAP), y))
    return sheet


def save_contact_sheet(dataset: GroundTruthDataset, out: str, seed: int = 0,
                       max_columns: int = 20) -> None:
    """Write the contact sheet as a PNG, atomically."""
    sheet = contact_sheet(dataset, seed, max_columns)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
