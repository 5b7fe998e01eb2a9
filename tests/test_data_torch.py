"""The torch view: float CHW in [-1, 1] and factors, through a DataLoader with worker processes."""

import numpy as np
import torch
from conftest import decode_index, write_shapes3d_h5

from disdis.data import TorchImageDataset, open_dataset


def test_items_are_scaled_chw_tensors(shapes3d_grid_npz):
    ds = open_dataset(shapes3d_grid_npz)
    tds = TorchImageDataset(ds, indices=[5, 17])
    image, factors = tds[1]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16)
    assert factors.dtype == torch.int64 and factors.tolist() == ds.factors([17])[0].tolist()
    expected = ds.images([17])[0].transpose(2, 0, 1) / 127.5 - 1
    assert np.allclose(image.numpy(), expected, atol=1e-6)
    assert -1 <= image.min() and image.max() <= 1


def test_dataloader_with_workers_reads_h5py_and_memmap(tmp_path, shapes3d_h5_small):
    chunked = tmp_path / "chunked.h5"
    write_shapes3d_h5(chunked, resolution=2, chunks=True)
    for path in (shapes3d_h5_small, chunked):
        ds = open_dataset(path)
        ds.images([0])  # a handle opened in the parent must not be reused by forked workers
        indices = np.random.default_rng(1).choice(len(ds), 96, replace=False)
        loader = torch.utils.data.DataLoader(TorchImageDataset(ds, indices), batch_size=32,
                                             num_workers=2, shuffle=False)
        seen = []
        for images, factors in loader:
            assert images.shape[1:] == (3, ds.resolution, ds.resolution)
            uint8 = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            assert np.array_equal(ds.index_of(factors.numpy()), decode_index(uint8))
            seen.append(decode_index(uint8))
        assert np.array_equal(np.concatenate(seen), indices)
