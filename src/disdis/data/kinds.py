"""Opening any dataset by path: the kind is inferred from the file or folder when not given.

Every kind is stored in one of three formats (:data:`FORMATS`): an HDF5 file, an npz (a zip of
``.npy`` arrays) or a folder. :func:`open_dataset` checks the format of the path against the
kind asked for before any kind-specific reader runs, so a file of another known format (a grid
npz given as ``data.kind: shapes3d``, a folder given as a grid) is named for what it is.
"""

from __future__ import annotations

import os

from disdis.data.base import GroundTruthDataset
from disdis.data.files import file_format
from disdis.errors import ConfigError, DataError

KINDS = ("shapes3d", "dsprites", "mpi3d", "cars3d", "celeba", "grid")
# the storage format of each kind, and what a file of that kind is (for messages)
FORMATS = {"shapes3d": "hdf5", "dsprites": "npz", "mpi3d": "npz", "grid": "npz", "cars3d": "folder",
           "celeba": "folder"}
EXPECTED = {"shapes3d": "the released HDF5 file, 3dshapes.h5", "dsprites": "the released dSprites .npz",
            "mpi3d": "the released MPI3D .npz", "grid": "a factor-grid .npz file",
            "cars3d": "the Cars3D folder of .mat files", "celeba": "the CelebA folder of images and attributes"}
# what a file or folder is, by the kind inferred from it
FOUND = {"shapes3d": "an HDF5 file", "dsprites": "a dSprites .npz", "mpi3d": "an MPI3D .npz",
         "grid": "an .npz factor grid", "cars3d": "a Cars3D folder", "celeba": "a CelebA folder"}


def check_kind(kind: str | None, key: str = "data.kind") -> None:
    """Raise a ConfigError naming ``key`` unless ``kind`` is one of :data:`KINDS` (or None)."""
    if kind is None or kind in KINDS:
        return
    hint = " (a celeba-like folder is read as celeba)" if kind == "celeba-like" else ""
    infer = "null" if key.startswith("data.") else f"leave out {key}"
    raise ConfigError(f"{key}: unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}, "
                      f"or {infer} to infer it from the file{hint}")


def infer_kind(path: str) -> str:
    """The dataset kind of ``path`` from its content (HDF5 -> shapes3d; npz keys; folder layout),
    by its extension (.h5, .hdf5, .npz) where the content is none of these."""
    fmt = file_format(path)
    if fmt == "folder":
        return _folder_kind(path)
    if fmt == "missing":
        raise DataError(f"{path}: file not found")
    if fmt == "hdf5" or (fmt != "npz" and path.endswith((".h5", ".hdf5"))):
        return "shapes3d"
    if fmt == "npz" or path.endswith(".npz"):
        return _npz_kind(path)
    raise DataError(f"{path}: not an HDF5 (Shapes3D) or npz file, nor a CelebA/Cars3D folder"
                    f"{' (it holds text)' if fmt == 'text' else ''}")


def _folder_kind(path: str) -> str:
    from disdis.data.cars3d import _mat_folder
    from disdis.data.celeba import ATTRIBUTE_FILE, IMAGE_FOLDER
    names = set(os.listdir(path))
    if IMAGE_FOLDER in names or ATTRIBUTE_FILE in names:
        return "celeba"
    if any(n.endswith(".mat") for n in os.listdir(_mat_folder(path))):
        return "cars3d"
    raise DataError(f"{path}: cannot tell the dataset kind of this folder (expected CelebA's "
                    f"{IMAGE_FOLDER}/ and {ATTRIBUTE_FILE}, or Cars3D's .mat files)")


def _npz_kind(path: str) -> str:
    from disdis.data.files import npz_members
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


def _inferred(path: str) -> str | None:
    try:
        return infer_kind(path)
    except DataError:
        return None


def check_format(path: str, kind: str, key: str = "data.kind") -> None:
    """Raise a one-line DataError when ``path`` cannot hold a dataset of ``kind``: missing, of
    another known format or kind (an HDF5 file, an npz or a folder of another kind), or not
    readable as the format the kind is stored in. A path that passes is left to the kind's reader."""
    want, fmt = FORMATS[kind], file_format(path)
    if fmt == "missing":
        raise DataError(f"{path}: {'folder' if want == 'folder' else 'file'} not found")
    if fmt == want == "hdf5":  # the one HDF5 kind
        return
    other = _inferred(path) if fmt in ("hdf5", "npz", "folder") else None
    if other == "mpi3d" and want == "npz":  # inferred from 'images' alone: a grid npz missing its
        other = None                        # factor_sizes looks the same; the kind's reader says more
    if other is not None and other != kind:
        infer = "give data.kind=null" if key.startswith("data.") else f"leave out {key}"
        raise DataError(f"{path}: {FOUND[other]}, but {key} is {kind} ({EXPECTED[kind]}); "
                        f"{infer} to infer the kind from the {'folder' if fmt == 'folder' else 'file'}")
    if fmt == want:  # of this kind, or one its content does not tell: the kind's reader says more
        return
    if fmt == "folder":
        raise DataError(f"{path}: a folder, not {EXPECTED[kind]} ({key} is {kind})")
    if want == "folder":
        raise DataError(f"{path}: a file, not {EXPECTED[kind]} ({key} is {kind})")
    noun = "HDF5 file" if want == "hdf5" else ".npz grid" if kind == "grid" else f"{kind} .npz"
    why = {"text": "it holds text", "hdf5": "it is an HDF5 file", "npz": "it is an .npz (zip) file"}.get(
        fmt, "unknown content: truncated, corrupt or another format")
    raise DataError(f"{path}: not a readable {noun} ({why}; {key} is {kind})")


def open_dataset(path, kind: str | None = None, resolution: int | None = None, *,
                 kind_key: str = "data.kind", resolution_key: str = "data.resolution") -> GroundTruthDataset:
    """Open a ground-truth dataset file or folder.

    ``kind`` is one of :data:`KINDS` (inferred from the content when omitted).
    ``resolution`` gives images at that size: Cars3D and CelebA are resized
    from their sources (Lanczos), the others area-averaged from their native
    resolution, which it must divide. ``kind_key`` and ``resolution_key`` are the
    names the settings have in messages (the config keys by default; a command
    line passes its options).
    """
    path = os.fspath(path)
    check_kind(kind, kind_key)
    if resolution is not None and (isinstance(resolution, bool) or int(resolution) < 1):
        raise ConfigError(f"{resolution_key}: expected a positive number of pixels, got {resolution!r}")
    if kind is None:
        kind = infer_kind(path)
    else:
        check_format(path, kind, kind_key)
    if kind == "shapes3d":
        from disdis.data.shapes3d import Shapes3D as cls
    elif kind == "dsprites":
        from disdis.data.dsprites import DSprites as cls
    elif kind == "mpi3d":
        from disdis.data.mpi3d import MPI3D as cls
    elif kind == "grid":
        from disdis.data.grid import GridNpz as cls
    else:
        from disdis.data.cars3d import Cars3D
        from disdis.data.celeba import CelebA
        cls = Cars3D if kind == "cars3d" else CelebA
        return cls(path) if resolution is None else cls(path, resolution=int(resolution))
    return cls(path).at_resolution(resolution, resolution_key)
