"""Data throughput: the two generators' render rates and the Shapes3D loader's read rates.

    python benchmarks/data.py [--file 3dshapes.h5] [--seconds 3]

Rendering is timed on a slice of the canonical grid and extrapolated to the
full set; Shapes3D's one-off ray casting of its 480 views is timed separately
(the per-image shading rate excludes it). Loading is timed on temporary 64x64
files in the 3dshapes.h5 image layout holding the first 48000 rows (a tenth of
the grid), contiguous (memory-mapped) and chunked (read through h5py), reading
sequential and random batches of 512 while the files are in the page cache; with
--file, a full file is timed through open_dataset as well. Numbers depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import h5py
import numpy as np

from disdis.data import open_dataset
from disdis.data.base import canonical_factors
from disdis.data.render_dsprites import FACTOR_SIZES as DSPRITES_SIZES
from disdis.data.render_dsprites import render_dsprites
from disdis.data.render_shapes3d import FACTOR_SIZES as SHAPES3D_SIZES
from disdis.data.render_shapes3d import Shapes3DRenderer
from disdis.data.shapes3d import Shapes3D

BATCH = 512


def timed(fn, seconds: float) -> tuple[float, int]:
    """(elapsed seconds, calls) of repeating ``fn`` for about ``seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed, calls


def render_rows(seconds: float) -> list[tuple[str, float, str]]:
    rows = []
    factors = canonical_factors(SHAPES3D_SIZES)
    renderer = Shapes3DRenderer(64)
    start = time.perf_counter()
    renderer.prepare(np.arange(480))
    cast = time.perf_counter() - start
    rows.append(("shapes3d 64x64: ray cast 480 views (once)", 480 / cast, f"{cast:.1f} s"))
    chunk = factors[:2400]
    elapsed, calls = timed(lambda: renderer.render(chunk), seconds)
    rate = calls * len(chunk) / elapsed
    rows.append(("shapes3d 64x64: shade images", rate,
                 f"full 480000: {cast + 480000 / rate:.0f} s + h5 writes"))
    factors = canonical_factors(DSPRITES_SIZES)
    chunk = factors[:8192]
    elapsed, calls = timed(lambda: render_dsprites(chunk), seconds)
    rate = calls * len(chunk) / elapsed
    rows.append(("dsprites 64x64: rasterise", rate, f"full 737280: {737280 / rate:.0f} s + zip"))
    return rows


def _write_images(path: str, n: int, chunked: bool) -> None:
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, 64, 64, 3), np.uint8,
                                  chunks=(64, 64, 64, 3) if chunked else None)
        rng = np.random.default_rng(0)
        for start in range(0, n, 4800):
            images[start:start + 4800] = rng.integers(0, 256, (4800, 64, 64, 3), dtype=np.uint8)


class _Rows(Shapes3D):
    """The Shapes3D reader on a file holding only the first rows (no grid validation)."""

    def __init__(self, path: str):
        with h5py.File(path) as f:
            d = f["images"]
            offset = d.id.get_offset() if d.chunks is None else None
            n = d.shape[0]
        self.path, self.resolution, self.channels = path, 64, 3
        self.factor_names, self.factor_sizes = ["row"], (n,)
        self._offset, self._h5, self._images, self._pid = offset, None, None, -1


def loader_rows(ds, label: str, seconds: float) -> list[tuple[str, float, str]]:
    rng = np.random.default_rng(0)
    n = len(ds)
    ds.images(np.arange(min(n, 48000)))  # warm the page cache

    def sequential():
        start = int(rng.integers(0, n - BATCH))
        ds.images(np.arange(start, start + BATCH))

    rows = []
    for kind, fn in (("sequential", sequential),
                     ("random", lambda: ds.images(rng.integers(0, n, BATCH)))):
        elapsed, calls = timed(fn, seconds)
        rows.append((f"{label}: {kind} batches of {BATCH}", calls * BATCH / elapsed,
                     f"{1000 * elapsed / calls:.1f} ms/batch"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="also time a full 3dshapes.h5 through open_dataset")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    rows = render_rows(args.seconds)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.file or "."))) as tmp:
        for chunked, label in ((False, "contiguous, memmap"), (True, "chunked 64 rows, h5py")):
            path = os.path.join(tmp, f"rows_{chunked}.h5")
            _write_images(path, 48000, chunked)
            rows += loader_rows(_Rows(path), f"load 48000x64x64 {label}", args.seconds)
    if args.file:
        rows += loader_rows(open_dataset(args.file), f"load {os.path.basename(args.file)}",
                            args.seconds)
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'images/s':>10}  note")
    for name, rate, note in rows:
        print(f"{name:<{width}}  {rate:>10,.0f}  {note}")
    print(f"({os.cpu_count()} CPUs; numpy {np.__version__}; h5py {h5py.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
