"""A CelebA-layout synthetic set: Shapes3D-like scenes with binary attributes that are
functions of the scene, written as ``img_align_celeba/*.jpg`` (178x218) and
``list_attr_celeba.txt`` (-1/1), so that the real CelebA loader (148-px centre crop, resize)
and the CelebA evaluation (TAD) run end to end on data whose attributes are known.

Each image draws its six Shapes3D factors uniformly at random (seeded); the scene is rendered
at 74 px, upscaled to the 148-px square that the loader's centre crop keeps, and framed by
the scene's own edge colours to the 178x218 of the aligned CelebA images. ``scene_factors.csv``
records each image's factor classes.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from disdis.data.celeba import ATTRIBUTE_FILE, IMAGE_FOLDER
from disdis.data.render_shapes3d import FACTOR_NAMES, FACTOR_SIZES, Shapes3DRenderer
from disdis.errors import DataError
from disdis.progress import progress

WIDTH, HEIGHT, SQUARE, RENDER = 178, 218, 148, 74
# attribute -> (factor, the classes for which it holds): each a fact about the scene and a threshold
# on the factor's class index (so a unit that orders the factor can hold it), with base rates
# between 0.3 and 0.5; hue classes run around the colour circle from red (0) through green (4)
# and blue (6) to pink (9), shapes are cube, cylinder, sphere, capsule
ATTRIBUTES = {
    "Warm_Object": ("object_hue", (0, 1, 2)),         # red, orange, yellow
    "Cool_Wall": ("wall_hue", (5, 6, 7, 8, 9)),
    "Warm_Floor": ("floor_hue", (0, 1, 2)),
    "Large_Object": ("scale", (4, 5, 6, 7)),
    "Round_Object": ("shape", (2, 3)),                # sphere, capsule
    "Tilted_Left": ("orientation", (0, 1, 2, 3, 4, 5)),
}


def scene_attributes(factors: np.ndarray) -> np.ndarray:
    """(n, A) int64 in {0, 1}: the :data:`ATTRIBUTES` of factor-class rows (n, 6)."""
    columns = [np.isin(factors[:, FACTOR_NAMES.index(factor)], classes)
               for factor, classes in ATTRIBUTES.values()]
    return np.stack(columns, axis=1).astype(np.int64)


def write_celeba_like(out: str, count: int = 2000, seed: int = 0, chunk: int = 256) -> None:
    """Write ``count`` images and their attributes in the CelebA layout under the folder ``out``
    (built in a temporary folder beside it and renamed, so an interrupted run leaves nothing)."""
    if count < 2:
        raise DataError(f"celeba-like: --count must be at least 2, got {count}")
    if os.path.exists(out):
        raise DataError(f"{out}: already exists (choose a new folder)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise DataError(f"{out}: output folder {parent} does not exist")
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, size, count) for size in FACTOR_SIZES], axis=1)
    attributes = scene_attributes(factors)
    names = [f"{i + 1:06d}.jpg" for i in range(count)]
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        os.mkdir(os.path.join(tmp, IMAGE_FOLDER))
        renderer = Shapes3DRenderer(RENDER)
        with progress(total=count, desc="rendering celeba-like scenes", unit="img") as bar:
            for start in range(0, count, chunk):
                for name, image in zip(names[start:start + chunk], renderer.render(factors[start:start + chunk])):
                    _framed(image).save(os.path.join(tmp, IMAGE_FOLDER, name), quality=95)
                bar.update(min(chunk, count - start))
        _write_attributes(os.path.join(tmp, ATTRIBUTE_FILE), names, attributes)
        with open(os.path.join(tmp, "scene_factors.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", *FACTOR_NAMES])
            writer.writerows([name, *row] for name, row in zip(names, factors.tolist()))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _framed(scene: np.ndarray) -> Image.Image:
    """The scene upscaled to the 148-px centre square of a 178x218 canvas, framed by its edge pixels."""
    square = np.asarray(Image.fromarray(scene).resize((SQUARE, SQUARE), Image.Resampling.BICUBIC))
    left, top = (WIDTH - SQUARE) // 2, (HEIGHT - SQUARE) // 2
    canvas = np.pad(square, ((top, HEIGHT - SQUARE - top), (left, WIDTH - SQUARE - left), (0, 0)), mode="edge")
    return Image.fromarray(canvas)


def _write_attributes(path: str, names: list[str], attributes: np.ndarray) -> None:
    lines = [str(len(names)), " ".join(ATTRIBUTES)]
    lines += [f"{name} " + " ".join("1" if v else "-1" for v in row) for name, row in zip(names, attributes)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
