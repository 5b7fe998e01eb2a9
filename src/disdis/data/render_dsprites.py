"""A dSprites-like rasteriser: one white sprite on black, 64x64, binary.

Factors (the published dSprites grid): shape (square, ellipse, heart), scale
linspace(0.5, 1, 6), orientation linspace(0, 2 pi, 40), position x and y
linspace(0, 1, 32). A pixel is on when its centre lies inside the sprite, the
sprite's implicit inside-test being evaluated in its own rotated, scaled
frame. Only a window around each sprite is evaluated, vectorised over images.
"""

from __future__ import annotations

import numpy as np

from disdis.data.render_shapes3d import check_factor_rows

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)
# The published latents_values columns after 'color' (always 1.0): shape is stored as 1, 2, 3.
FACTOR_VALUES = (np.array([1.0, 2.0, 3.0]), SCALES, ORIENTATIONS, POSITIONS, POSITIONS)

SIZE = 64
_CENTRE_MIN, _CENTRE_SPAN = 10.5, 43.0  # sprite centres range over [10.5, 53.5] pixels
_WINDOW = 24  # every sprite fits in 24x24 pixels around its centre (radius <= 10.5)
_PAD = _WINDOW // 2


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in sprite units at scale 1 (``v`` points down the image)."""
    if shape == 0:  # square, side 14 px
        return np.maximum(np.abs(u), np.abs(v)) <= 7.0
    if shape == 1:  # ellipse, semi-axes 10 x 5 px
        return (u / 10.0) ** 2 + (v / 5.0) ** 2 <= 1.0
    # heart: (x^2 + y^2 - 1)^3 <= x^2 y^3, lobes up, about 18 px across
    x, y = u / 8.0, -v / 8.0 + 0.1
    return (x * x + y * y - 1.0) ** 3 <= x * x * y ** 3


def render_dsprites(factor_indices) -> np.ndarray:
    """Binary images (n, 64, 64) uint8 in {0, 1} (as the published ``imgs``) of factor-class rows (n, 5)."""
    f = check_factor_rows(factor_indices, FACTOR_SIZES, FACTOR_NAMES)
    n = len(f)
    cx = _CENTRE_MIN + _CENTRE_SPAN * POSITIONS[f[:, 3]]
    cy = _CENTRE_MIN + _CENTRE_SPAN * POSITIONS[f[:, 4]]
    x0 = np.floor(cx).astype(np.int64) - _PAD
    y0 = np.floor(cy).astype(np.int64) - _PAD
    steps = np.arange(_WINDOW)
    dx = (x0[:, None] + steps + 0.5 - cx[:, None])[:, None, :]  # (n, 1, W) pixel-centre offsets
    dy = (y0[:, None] + steps + 0.5 - cy[:, None])[:, :, None]  # (n, W, 1)
    angle = ORIENTATIONS[f[:, 2]][:, None, None]
    scale = SCALES[f[:, 1]][:, None, None]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / scale  # rotate the pixel grid by -angle into the sprite frame
    v = (-sin * dx + cos * dy) / scale
    window = np.zeros((n, _WINDOW, _WINDOW), dtype=np.uint8)
    for shape in range(len(SHAPE_NAMES)):
        rows = f[:, 0] == shape
        window[rows] = _inside(shape, u[rows], v[rows])
    canvas = np.zeros((n, SIZE + 2 * _PAD, SIZE + 2 * _PAD), dtype=np.uint8)
    canvas[np.arange(n)[:, None, None], (y0[:, None] + _PAD + steps)[:, :, None],
           (x0[:, None] + _PAD + steps)[:, None, :]] = window
    return canvas[:, _PAD:_PAD + SIZE, _PAD:_PAD + SIZE]
