"""Ground-truth image datasets behind one interface, and procedural generators.

``open_dataset(path)`` opens Shapes3D (``3dshapes.h5``), dSprites, MPI3D, Cars3D
and CelebA files exactly as published, and "grid npz" files of your own; see
:class:`~disdis.data.base.GroundTruthDataset` for the interface.
``render_shapes3d`` and ``render_dsprites`` draw any factor rows of the
procedural look-alikes that ``disdis data make`` writes in the published
layouts. ``TorchImageDataset`` (imported lazily: it needs torch) feeds them to
a DataLoader.
"""

from disdis.data.base import GroundTruthDataset
from disdis.data.grid import write_grid_npz
from disdis.data.kinds import KINDS, infer_kind, open_dataset
from disdis.data.render_dsprites import render_dsprites
from disdis.data.render_shapes3d import Shapes3DRenderer, render_shapes3d

__all__ = ["GroundTruthDataset", "KINDS", "Shapes3DRenderer", "TorchImageDataset", "infer_kind",
           "open_dataset", "render_dsprites", "render_shapes3d", "write_grid_npz"]


def __getattr__(name: str):
    if name == "TorchImageDataset":
        from disdis.data.torch_dataset import TorchImageDataset
        return TorchImageDataset
    raise AttributeError(f"module 'disdis.data' has no attribute {name!r}")
