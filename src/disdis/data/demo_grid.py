"""The demo's data: a small Shapes3D-like factor grid, rendered once and cached."""

from __future__ import annotations

import sys
import time
from pathlib import Path

# where the demo and `disdis compare` cache the grid unless told otherwise (relative to the working folder)
DEMO_DATA = "data/demo/shapes3d_grid.npz"

# every factor of Shapes3D, three values each (3^6 = 729 images), spread over each factor's range
# so that the values stay tellable apart at low resolution
DEMO_GRID = {"floor_hue": [0, 3, 6], "wall_hue": [0, 3, 6], "object_hue": [0, 3, 6],
             "scale": [0, 3, 7], "shape": [0, 1, 2], "orientation": [0, 7, 14]}


def make_demo_data(path: Path, resolution: int) -> None:
    """Render the demo's factor grid once (canonical order) as a grid npz; reuse a matching cache."""
    import numpy as np

    from disdis.data import open_dataset, render_shapes3d, write_grid_npz
    from disdis.data.base import canonical_factors
    from disdis.data.render_shapes3d import FACTOR_NAMES

    sizes = [len(DEMO_GRID[n]) for n in FACTOR_NAMES]
    if path.is_file():
        data = open_dataset(path)
        if data.resolution == resolution and list(data.factor_sizes) == sizes:
            print(f"data: cached {path}", file=sys.stderr)
            return
    kept = [np.asarray(DEMO_GRID[name]) for name in FACTOR_NAMES]
    classes = canonical_factors(sizes)
    rows = np.stack([kept[k][classes[:, k]] for k in range(len(kept))], axis=1)
    t = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_grid_npz(str(path), images=render_shapes3d(rows, resolution), factor_sizes=sizes, factor_names=FACTOR_NAMES)
    print(f"data: {len(rows)} images at {resolution}x{resolution} in {time.perf_counter() - t:.1f} s -> {path}",
          file=sys.stderr)
