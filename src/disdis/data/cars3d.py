"""Cars3D from the published folder (Reed et al. 2015, nips2015-analogy-data ``data/cars``).

183 MATLAB files ``car_XXX_mesh.mat``, each holding ``im`` (128, 128, 3, 24, 4)
uint8: 24 azimuths x 4 elevations of one car. Factors (as disentanglement_lib):
elevation 4, azimuth 24, object 183 (files in sorted name order), canonical
order. Images are resized to 64x64 with Lanczos anti-aliasing (what
disentanglement_lib's ``thumbnail(..., ANTIALIAS)`` does) and held in memory
(216 MB at 64x64).
"""

from __future__ import annotations

import os

import numpy as np
import scipy.io
from PIL import Image

from disdis.data.base import GroundTruthDataset
from disdis.errors import DataError

FACTOR_NAMES = ("elevation", "azimuth", "object")
FACTOR_SIZES = (4, 24, 183)


def _mat_folder(path: str) -> str:
    """The folder holding the .mat files: ``path`` itself, or its ``data/cars`` or ``cars``."""
    for folder in (path, os.path.join(path, "data", "cars"), os.path.join(path, "cars")):
        if os.path.isdir(folder) and any(n.endswith(".mat") for n in os.listdir(folder)):
            return folder
    return path


def _load_views(path: str) -> np.ndarray:
    """``im`` of one car as (elevation 4, azimuth 24, H, W, 3), or a DataError naming the file."""
    try:
        im = scipy.io.loadmat(path, variable_names=["im"]).get("im")
    except Exception as err:  # scipy raises many kinds for damaged files: all mean "not readable"
        raise DataError(f"{path}: not a readable .mat file ({type(err).__name__}: {err})") from None
    if im is None:
        raise DataError(f"{path}: missing variable 'im' (expected (128, 128, 3, 24, 4) uint8 views "
                        f"of one car)")
    if (im.ndim != 5 or im.shape[2:] != (3, 24, 4) or im.shape[0] != im.shape[1]
            or im.dtype != np.uint8):
        raise DataError(f"{path}: variable 'im' is {im.shape} {im.dtype}, expected "
                        f"(128, 128, 3, 24, 4) uint8")
    return np.transpose(im, (4, 3, 0, 1, 2))


def _resize(image: np.ndarray, resolution: int) -> np.ndarray:
    if image.shape[0] == resolution:
        return image
    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS))


class Cars3D(GroundTruthDataset):
    """The Cars3D folder, loaded into memory at ``resolution`` (64 by default)."""

    kind = "cars3d"

    def __init__(self, path: str, resolution: int = 64):
        path = str(path)
        if not os.path.isdir(path):
            raise DataError(f"{path}: folder not found (expected the Cars3D folder of "
                            f"{FACTOR_SIZES[2]} car_XXX_mesh.mat files)")
        folder = _mat_folder(path)
        files = sorted(n for n in os.listdir(folder) if n.endswith(".mat"))
        if len(files) != FACTOR_SIZES[2]:
            raise DataError(f"{folder}: found {len(files)} .mat files, expected {FACTOR_SIZES[2]} "
                            f"(car_XXX_mesh.mat, one per car)")
        super().__init__(folder, FACTOR_NAMES, FACTOR_SIZES, resolution, 3)
        self._images = np.empty(FACTOR_SIZES + (resolution, resolution, 3), dtype=np.uint8)
        for obj, name in enumerate(files):
            views = _load_views(os.path.join(folder, name))
            for elevation in range(FACTOR_SIZES[0]):
                for azimuth in range(FACTOR_SIZES[1]):
                    self._images[elevation, azimuth, obj] = _resize(views[elevation, azimuth],
                                                                   resolution)
        self._images = self._images.reshape(len(self), resolution, resolution, 3)

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        return self._images[indices]
