"""CelebA from the published aligned images and attribute list (no factor grid).

Folder layout: ``img_align_celeba/000001.jpg ...`` (178x218) and
``list_attr_celeba.txt`` (first line: the image count; second: the 40
attribute names; then ``filename`` and 40 values in {-1, 1} per line), the
attribute file next to the image folder or in ``Anno/``. Images are centre
cropped to a square (148 px by default, the usual CelebA-64 crop) and resized
with Lanczos anti-aliasing; attributes are returned as 0/1.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from disdis.data.base import GroundTruthDataset
from disdis.errors import DataError

ATTRIBUTE_FILE = "list_attr_celeba.txt"
IMAGE_FOLDER = "img_align_celeba"


def _parse_attributes(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """(file names, attribute names, attributes (N, 40) int64 in {0, 1}) from list_attr_celeba.txt."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split() for line in f if line.strip()]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise DataError(f"{path}: expected the image count on line 1 and attribute names on line 2")
    count, names = int(lines[0][0]), lines[1]
    rows = lines[2:]
    if len(rows) != count:
        raise DataError(f"{path}: line 1 announces {count} images but {len(rows)} follow")
    files, values = [], np.empty((count, len(names)), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row) != len(names) + 1 or any(v not in ("1", "-1") for v in row[1:]):
            raise DataError(f"{path}: line {i + 3} must be a file name and {len(names)} values "
                            f"in {{-1, 1}}")
        files.append(row[0])
        values[i] = [v == "1" for v in row[1:]]
    return files, names, values


class CelebA(GroundTruthDataset):
    """CelebA images with binary attributes; the factor methods raise (there is no grid)."""

    kind = "celeba"
    has_factor_grid = False

    def __init__(self, path: str, resolution: int = 64, crop: int = 148):
        path = str(path)
        if not os.path.isdir(path):
            raise DataError(f"{path}: folder not found (expected {IMAGE_FOLDER}/ and {ATTRIBUTE_FILE})")
        self._folder = os.path.join(path, IMAGE_FOLDER)
        if not os.path.isdir(self._folder):
            raise DataError(f"{path}: missing image folder {IMAGE_FOLDER}/")
        attr = next((p for p in (os.path.join(path, ATTRIBUTE_FILE),
                                 os.path.join(path, "Anno", ATTRIBUTE_FILE)) if os.path.isfile(p)), None)
        if attr is None:
            raise DataError(f"{path}: missing attribute file {ATTRIBUTE_FILE} (expected next to "
                            f"{IMAGE_FOLDER}/ or in Anno/)")
        self.files, self.attribute_names, self._attributes = _parse_attributes(attr)
        present = set(os.listdir(self._folder))
        missing = [f for f in self.files if f not in present]
        if missing:
            raise DataError(f"{self._folder}: {len(missing)} images listed in {ATTRIBUTE_FILE} are "
                            f"missing, e.g. {missing[0]}")
        super().__init__(path, [], (), resolution, 3)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def attributes(self, indices) -> np.ndarray:
        """Binary attributes (n, 40) int64 in {0, 1}."""
        return self._attributes[self._check_indices(indices)]

    def labels(self, indices) -> np.ndarray:
        return self.attributes(indices)

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.resolution, self.resolution, 3), dtype=np.uint8)
        for row, i in enumerate(indices):
            out[row] = self._load(os.path.join(self._folder, self.files[i]))
        return out

    def _load(self, path: str) -> np.ndarray:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                side = min(self.crop, w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side))
                return np.asarray(im.resize((self.resolution, self.resolution),
                                            Image.Resampling.LANCZOS))
        except OSError as err:
            raise DataError(f"{path}: not a readable image ({err})") from None
