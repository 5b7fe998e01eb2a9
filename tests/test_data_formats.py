"""Every dataset kind read back from small files in exactly the published layouts.

Files with a factor grid hold the full published grid at a tiny resolution, with
images that encode their own index (or factors), so every read is checked exactly.
"""

import os

import numpy as np
import pytest
import scipy.io
from conftest import decode_index, encode_index, write_shapes3d_h5
from PIL import Image

from disdis.data import open_dataset, write_grid_npz
from disdis.data.base import canonical_factors
from disdis.data.dsprites import latents
from disdis.data.render_dsprites import FACTOR_SIZES as DSPRITES_SIZES
from disdis.errors import DisdisError

RNG = np.random.default_rng(0)


def check_grid_roundtrip(ds, n=500):
    """index_of(factors(i)) == i; images are decoded back to their own index."""
    idx = RNG.integers(0, len(ds), size=n)
    idx[:3] = [0, len(ds) - 1, idx[3]]  # ends, and a repeat
    assert np.array_equal(ds.index_of(ds.factors(idx)), idx)
    assert ds.factors(idx).dtype == np.int64 and ds.index_of(ds.factors(idx)).dtype == np.int64
    assert np.array_equal(ds.factors(idx), np.stack(np.unravel_index(idx, ds.factor_sizes), 1))
    images = ds.images(idx)
    assert images.dtype == np.uint8
    assert images.shape == (n, ds.resolution, ds.resolution, ds.channels)
    return idx, images


def test_sample_factors_draws_like_disentanglement_lib(shapes3d_h5_small):
    ds = open_dataset(shapes3d_h5_small)
    rs = np.random.RandomState(7)
    expected = np.stack([rs.randint(s, size=11) for s in ds.factor_sizes], axis=1)
    got = ds.sample_factors(11, np.random.RandomState(7))
    assert got.dtype == np.int64 and np.array_equal(got, expected)


@pytest.mark.parametrize("chunked", [False, True], ids=["contiguous-memmap", "chunked-h5py"])
def test_shapes3d_h5(tmp_path, shapes3d_h5_small, chunked):
    path = shapes3d_h5_small
    if chunked:
        path = tmp_path / "3dshapes_chunked.h5"
        write_shapes3d_h5(path, chunks=True)
    ds = open_dataset(path)
    assert ds.kind == "shapes3d" and len(ds) == 480000
    assert ds.factor_names == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert ds.factor_sizes == (10, 10, 10, 8, 4, 15) and (ds.resolution, ds.channels) == (4, 3)
    idx, images = check_grid_roundtrip(ds)
    assert np.array_equal(decode_index(images), idx)
    run = np.arange(1000, 1512)  # a sequential batch
    assert np.array_equal(decode_index(ds.images(run)), run)
    assert np.allclose(ds.factor_values[3], np.linspace(0.75, 1.25, 8))


def test_resolution_downscale_is_an_area_mean(shapes3d_h5_small):
    ds = open_dataset(shapes3d_h5_small, resolution=2)
    idx = np.array([5, 479999, 12345])
    assert ds.images(idx).shape == (3, 2, 2, 3)
    assert np.array_equal(decode_index(ds.images(idx)), idx)  # constant images stay exact
    with pytest.raises(DisdisError, match="must divide"):
        open_dataset(shapes3d_h5_small, resolution=3)


def test_subgrid_remaps_indices_and_classes(shapes3d_h5_small):
    parent = open_dataset(shapes3d_h5_small)
    sub = parent.subgrid({"floor_hue": [0, 3, 6], "shape": [3, 1]})
    assert sub.factor_sizes == (3, 10, 10, 8, 2, 15) and len(sub) == 3 * 10 * 10 * 8 * 2 * 15
    idx, images = check_grid_roundtrip(sub, 200)
    f = sub.factors(idx)
    expected_parent = f.copy()
    expected_parent[:, 0] = np.array([0, 3, 6])[f[:, 0]]
    expected_parent[:, 4] = np.array([3, 1])[f[:, 4]]
    assert np.array_equal(decode_index(images), parent.index_of(expected_parent))
    with pytest.raises(DisdisError, match="colour"):
        parent.subgrid({"colour": [0]})
    with pytest.raises(DisdisError, match="0..3"):
        parent.subgrid({"shape": [4]})


def test_dsprites_npz_with_pickled_metadata(tmp_path):
    """Published keys, including a pickled `metadata` object array that must never be loaded."""
    n, res = int(np.prod(DSPRITES_SIZES)), 5  # 25 bits per image encode the index
    idx = np.arange(n)
    imgs = ((idx[:, None] >> np.arange(25)) & 1).astype(np.uint8).reshape(n, res, res)
    classes, values = latents(canonical_factors(DSPRITES_SIZES))
    path = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=values,
                        metadata=np.array({"latents_sizes": [1, 3, 6, 40, 32, 32]}, dtype=object))
    ds = open_dataset(path)
    assert ds.kind == "dsprites" and ds.factor_sizes == (3, 6, 40, 32, 32) and ds.channels == 1
    sample, images = check_grid_roundtrip(ds)
    bits = (images.reshape(len(sample), 25) // 255).astype(np.int64)
    assert set(np.unique(images)) <= {0, 255}
    assert np.array_equal((bits << np.arange(25)).sum(1), sample)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored-memmap", "compressed"])
def test_mpi3d_npz(tmp_path, compressed):
    n = 6 * 6 * 2 * 3 * 3 * 40 * 40
    path = tmp_path / "mpi3d_toy.npz"
    (np.savez_compressed if compressed else np.savez)(path, images=encode_index(np.arange(n), 2))
    ds = open_dataset(path)
    assert ds.kind == "mpi3d" and len(ds) == 1036800 and ds.factor_sizes == (6, 6, 2, 3, 3, 40, 40)
    idx, images = check_grid_roundtrip(ds)
    assert np.array_equal(decode_index(images), idx)


def write_cars3d(folder, res=4, n_cars=183):
    """Cars whose every pixel is (car, azimuth, elevation) -- constant, so resizing keeps it."""
    folder.mkdir()
    for car in range(n_cars):
        im = np.zeros((res, res, 3, 24, 4), dtype=np.uint8)
        im[:, :, 0] = car
        im[:, :, 1] = np.arange(24)[:, None]
        im[:, :, 2] = np.arange(4)[None, :]
        scipy.io.savemat(folder / f"car_{car + 1:03d}_mesh.mat", {"im": im})
    return folder


def test_cars3d_folder(tmp_path):
    write_cars3d(tmp_path / "cars")
    ds = open_dataset(tmp_path, resolution=4)  # the parent folder works too (finds cars/)
    assert ds.kind == "cars3d" and ds.factor_sizes == (4, 24, 183) and ds.resolution == 4
    idx, images = check_grid_roundtrip(ds)
    f = ds.factors(idx)
    assert np.array_equal(images[:, 3, 1].astype(np.int64), f[:, [2, 1, 0]])


def test_cars3d_resize_is_antialiased():
    """A one-pixel checkerboard halved must turn grey (aliasing would keep it black or white)."""
    from disdis.data.cars3d import _resize
    board = ((np.indices((128, 128)).sum(0) % 2) * 255).astype(np.uint8)
    small = _resize(np.repeat(board[..., None], 3, -1), 64)
    assert small.shape == (64, 64, 3) and np.abs(small[4:-4, 4:-4].astype(int) - 128).max() < 8


def write_celeba(root, n=3, size=(178, 218)):
    (root / "img_align_celeba").mkdir(parents=True)
    for i in range(n):
        im = np.zeros(size[::-1] + (3,), dtype=np.uint8)
        im[:] = (200, 0, 0)  # red border, just outside the centre crop
        im[35:183, 15:163] = (0, 40 * i, 255)  # the centre 148x148 crop
        Image.fromarray(im).save(root / "img_align_celeba" / f"{i + 1:06d}.jpg", quality=95)
    names = ["5_o_Clock_Shadow", "Smiling"] + [f"attr_{k}" for k in range(38)]
    rows = [f"{i + 1:06d}.jpg " + " ".join("1" if (i + k) % 2 else "-1" for k in range(40))
            for i in range(n)]
    (root / "list_attr_celeba.txt").write_text("\n".join([str(n), " ".join(names)] + rows) + "\n")


def test_celeba_folder(tmp_path):
    write_celeba(tmp_path)
    ds = open_dataset(tmp_path)
    assert ds.kind == "celeba" and len(ds) == 3 and ds.attribute_names[1] == "Smiling"
    attrs = ds.attributes([0, 1, 2])
    assert attrs.dtype == np.int64 and attrs[0, :3].tolist() == [0, 1, 0] and attrs[1, 0] == 1
    images = ds.images([2, 0])
    assert images.shape == (2, 64, 64, 3)
    # The centre crop holds only the blue square: no red border is left (bar JPEG ringing).
    inner = images[:, 2:-2, 2:-2]
    assert inner[..., 0].max() < 40 and inner[..., 2].min() > 200
    assert abs(int(images[0, 32, 32, 1]) - 80) < 10
    for method, args in [("factors", ([0],)), ("index_of", ([[0]],)),
                         ("sample_factors", (2, np.random.RandomState(0)))]:
        with pytest.raises(DisdisError, match="no factor grid"):
            getattr(ds, method)(*args)


def test_grid_npz_roundtrip_and_dataset_copy(tmp_path, shapes3d_grid_npz):
    ds = open_dataset(shapes3d_grid_npz)
    assert ds.kind == "grid" and ds.factor_sizes == (2, 2, 3, 2, 4, 3) and ds.resolution == 16
    assert ds.factor_names[0] == "floor_hue"
    check_grid_roundtrip(ds, 50)
    copy = tmp_path / "copy.npz"
    write_grid_npz(str(copy), ds.subgrid({"shape": [2]}).at_resolution(8))
    back = open_dataset(copy)
    assert back.factor_sizes == (2, 2, 3, 2, 1, 3) and back.resolution == 8
    sub = ds.subgrid({"shape": [2]})
    assert np.array_equal(back.images(np.arange(len(back))),
                          sub.at_resolution(8).images(np.arange(len(sub))))
    assert not any(".partial" in n for n in os.listdir(tmp_path))


def test_out_of_range_indices_and_factors(shapes3d_grid_npz):
    ds = open_dataset(shapes3d_grid_npz)
    with pytest.raises(DisdisError, match="'shape' class 4 out of range 0..3"):
        ds.index_of([[0, 0, 0, 0, 4, 0]])
    with pytest.raises(DisdisError, match=r"\(n, 6\)"):
        ds.index_of([[0, 0, 0]])
    with pytest.raises(DisdisError, match="image index 288 out of range"):
        ds.images([0, 288])
    with pytest.raises(DisdisError, match="out of range"):
        ds.factors([-1])


def test_check_npz_file_refuses_what_np_load_would_unpickle(tmp_path, shapes3d_grid_npz):
    """The check readers of npz files run before np.load (whose message for a text file is about
    pickles): one line saying what the file is instead."""
    from disdis.data.files import check_npz_file
    from disdis.errors import DataError
    check_npz_file(str(shapes3d_grid_npz))
    (tmp_path / "t.npz").write_text("1 2 3\n")
    (tmp_path / "b.npz").write_bytes(b"\x80\x04\x95garbage\x00\xff")
    (tmp_path / "d").mkdir()
    for name, message in (("t.npz", r"not a readable codes .npz \(it holds text, not a zip archive\)"),
                          ("b.npz", r"not a readable codes .npz \(not a zip archive"),
                          ("d", "a folder, not a codes .npz"), ("none.npz", "file not found")):
        with pytest.raises(DataError, match=f"{name}: {message}"):
            check_npz_file(str(tmp_path / name), "codes .npz")
