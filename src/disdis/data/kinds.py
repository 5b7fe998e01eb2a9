"""Opening any dataset by path: the kind is inferred from the file or folder when not given."""

from __future__ import annotations

import os

from disdis.data.base import GroundTruthDataset
from disdis.errors import DataError, DisdisError

KINDS = ("shapes3d", "dsprites", "mpi3d", "cars3d", "celeba", "grid")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def infer_kind(path: str) -> str:
    """The dataset kind of ``path`` from its content (HDF5 -> shapes3d; npz keys; folder layout)."""
    from disdis.data.cars3d import _mat_folder
    from disdis.data.celeba import ATTRIBUTE_FILE, IMAGE_FOLDER
    from disdis.data.files import npz_members

    if os.path.isdir(path):
        names = set(os.listdir(path))
        if IMAGE_FOLDER in names or ATTRIBUTE_FILE in names:
            return "celeba"
        if any(n.endswith(".mat") for n in os.listdir(_mat_folder(path))):
            return "cars3d"
        raise DataError(f"{path}: cannot tell the dataset kind of this folder (expected CelebA's "
                        f"{IMAGE_FOLDER}/ and {ATTRIBUTE_FILE}, or Cars3D's .mat files)")
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if head == _HDF5_SIGNATURE or path.endswith((".h5", ".hdf5")):
        return "shapes3d"
    if head[:2] == b"PK" or path.endswith(".npz"):
        keys = set(npz_members(path))
        if "factor_sizes" in keys:
            return "grid"
        if "imgs" in keys:
            return "dsprites"
        if "images" in keys:
            return "mpi3d"
        raise DataError(f"{path}: cannot tell the dataset kind from its arrays "
                        f"({', '.join(sorted(keys)) or 'none'}); expected 'imgs' (dSprites), "
                        f"'images' (MPI3D) or 'images' + 'factor_sizes' (grid npz)")
    raise DataError(f"{path}: not an HDF5 (Shapes3D) or npz file, nor a CelebA/Cars3D folder")


def open_dataset(path, kind: str | None = None, resolution: int | None = None) -> GroundTruthDataset:
    """Open a ground-truth dataset file or folder.

    ``kind`` is one of :data:`KINDS` (inferred from the content when omitted).
    ``resolution`` gives images at that size: Cars3D and CelebA are resized
    from their sources (Lanczos), the others area-averaged from their native
    resolution, which it must divide.
    """
    path = os.fspath(path)
    kind = kind or infer_kind(path)
    if kind == "shapes3d":
        from disdis.data.shapes3d import Shapes3D as cls
    elif kind == "dsprites":
        from disdis.data.dsprites import DSprites as cls
    elif kind == "mpi3d":
        from disdis.data.mpi3d import MPI3D as cls
    elif kind == "grid":
        from disdis.data.grid import GridNpz as cls
    elif kind in ("cars3d", "celeba"):
        from disdis.data.cars3d import Cars3D
        from disdis.data.celeba import CelebA
        cls = Cars3D if kind == "cars3d" else CelebA
        return cls(path) if resolution is None else cls(path, resolution=int(resolution))
    else:
        raise DisdisError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    return cls(path).at_resolution(resolution)
