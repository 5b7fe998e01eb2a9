"""Saving a plain image grid (no labels, one pixel per pixel): ``disdis sample --plain`` and tools."""

from __future__ import annotations

from pathlib import Path


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
        Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas).save(tmp, format="PNG")
