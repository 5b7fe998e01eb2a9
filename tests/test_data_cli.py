"""``disdis data`` end to end, and every kind of bad input: one line naming the file, exit 2."""

import os

import h5py
import numpy as np
import pytest
import scipy.io
from conftest import write_shapes3d_h5
from PIL import Image

from disdis.cli import main
from disdis.data import open_dataset
from disdis.errors import DataError


def run_fail(capsys, argv, *expected):
    """Run the CLI expecting exit status 2 and one stderr line containing ``expected``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_make_shapes3d_end_to_end_then_show_and_subset(tmp_path, capsys):
    """The real generator at 4x4: published layout and labels, contact sheet, sub-grid npz."""
    out = tmp_path / "3dshapes.h5"
    assert main(["data", "make", "shapes3d", "--out", str(out), "--resolution", "4"]) == 0
    with h5py.File(out) as f:
        assert f["images"].shape == (480000, 4, 4, 3) and f["images"].dtype == np.uint8
        assert f["labels"].shape == (480000, 6) and f["labels"].dtype == np.float64
        assert np.allclose(f["labels"][479999], [0.9, 0.9, 0.9, 1.25, 3.0, 30.0])
        assert np.allclose(f["labels"][15 * 4 * 2 + 15 + 1], [0, 0, 0, 0.75 + 2 * 0.5 / 7, 1, -30 + 60 / 14])
    assert [n for n in os.listdir(tmp_path)] == ["3dshapes.h5"]  # no temporary left behind
    png = tmp_path / "sheet.png"
    assert main(["data", "show", str(out), "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size[0] > 15 * 48 and im.size[1] > 6 * 48
    small = tmp_path / "small.npz"
    assert main(["data", "subset", str(out), "--out", str(small), "--keep", "floor_hue=0,3,6",
                 "--keep", "shape=0,1", "--resolution", "2"]) == 0
    ds = open_dataset(small)
    assert ds.factor_sizes == (3, 10, 10, 8, 2, 15) and ds.resolution == 2
    assert main(["data", "info", str(small)]) == 0
    assert "factor shape: 2" in capsys.readouterr().out


def test_celeba_info_and_show(tmp_path, capsys):
    from test_data_formats import write_celeba
    write_celeba(tmp_path / "celeba")
    assert main(["data", "info", str(tmp_path / "celeba")]) == 0
    assert "40 binary" in capsys.readouterr().out
    assert main(["data", "show", str(tmp_path / "celeba"), "--out", str(tmp_path / "c.png")]) == 0


def test_missing_file(tmp_path, capsys):
    run_fail(capsys, ["data", "show", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x.png")],
             "nope.h5", "file not found")


def test_unknown_npz_keys(tmp_path, capsys):
    np.savez(tmp_path / "odd.npz", pictures=np.zeros((2, 4, 4, 3), np.uint8))
    run_fail(capsys, ["data", "info", str(tmp_path / "odd.npz")], "odd.npz", "pictures",
             "'imgs' (dSprites)")


def test_missing_h5_dataset(tmp_path, capsys):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["images"] = np.zeros((3, 4, 4, 3), np.uint8)
    run_fail(capsys, ["data", "info", str(tmp_path / "a.h5")], "a.h5", "missing dataset 'labels'")


def test_missing_grid_key(tmp_path):
    np.savez(tmp_path / "g.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="g.npz: missing array 'factor_sizes'"):
        open_dataset(tmp_path / "g.npz", kind="grid")


@pytest.mark.parametrize("images,labels,message", [
    (np.zeros((480000, 2, 2, 3), np.float32), None, "'images' is (480000, 2, 2, 3) float32, "
                                                   "expected (480000, R, R, 3) uint8"),
    (np.zeros((1000, 2, 2, 3), np.uint8), None, "expected (480000, R, R, 3) uint8"),
    (np.zeros((480000, 2, 3, 3), np.uint8), None, "expected (480000, R, R, 3) uint8"),
    (np.zeros((480000, 2, 2, 3), np.uint8), np.zeros((480000, 5)), "'labels' is (480000, 5)"),
    (np.zeros((480000, 2, 2, 3), np.uint8), np.zeros((480000, 6)), "has 1 distinct values, expected 10"),
], ids=["dtype", "rows", "not-square", "labels-shape", "labels-values"])
def test_shapes3d_wrong_shape_or_dtype(tmp_path, images, labels, message):
    from disdis.data.base import canonical_factors
    from disdis.data.shapes3d import label_values
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["images"] = images
        f["labels"] = labels if labels is not None else label_values(
            canonical_factors((10, 10, 10, 8, 4, 15)))
    with pytest.raises(DataError, match="s.h5: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        open_dataset(tmp_path / "s.h5")


def test_shapes3d_labels_out_of_order(tmp_path):
    from disdis.data.base import canonical_factors
    from disdis.data.shapes3d import label_values
    labels = label_values(canonical_factors((10, 10, 10, 8, 4, 15)))
    labels[[0, 1]] = labels[[1, 0]]
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["images"] = np.zeros((480000, 1, 1, 3), np.uint8)
        f["labels"] = labels
    with pytest.raises(DataError, match="not in canonical order.*'orientation' at row 0"):
        open_dataset(tmp_path / "s.h5")


def test_truncated_h5(tmp_path, capsys):
    path = tmp_path / "t.h5"
    write_shapes3d_h5(path, resolution=2)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    run_fail(capsys, ["data", "info", str(path)], "t.h5", "truncated or corrupt")


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_npz(tmp_path, capsys, compressed):
    path = tmp_path / "mpi3d_toy.npz"
    (np.savez_compressed if compressed else np.savez)(
        path, images=np.zeros((6 * 6 * 2 * 3 * 3 * 40 * 40, 1, 1, 3), np.uint8))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    run_fail(capsys, ["data", "info", str(path), "--kind", "mpi3d"], "mpi3d_toy.npz", "corrupt")


def test_dsprites_wrong_rows(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", imgs=np.zeros((10, 64, 64), np.uint8))
    run_fail(capsys, ["data", "info", str(tmp_path / "d.npz")], "d.npz",
             "'imgs' is (10, 64, 64) uint8, expected (737280, R, R) uint8")


def test_pickled_array_is_never_loaded(tmp_path):
    np.savez(tmp_path / "g.npz", images=np.zeros((2, 1, 1, 3), np.uint8),
             factor_sizes=np.array([2, 1], dtype=object))
    with pytest.raises(DataError, match="factor_sizes"):
        open_dataset(tmp_path / "g.npz")


def test_cars3d_wrong_mat_contents(tmp_path, capsys):
    folder = tmp_path / "cars"
    folder.mkdir()
    for car in range(183):
        scipy.io.savemat(folder / f"car_{car + 1:03d}_mesh.mat",
                         {"im": np.zeros((2, 2, 3, 24, 4), np.uint8)})
    scipy.io.savemat(folder / "car_007_mesh.mat", {"im": np.zeros((2, 2, 3, 12, 4), np.uint8)})
    run_fail(capsys, ["data", "info", str(folder)], "car_007_mesh.mat",
             "'im' is (2, 2, 3, 12, 4) uint8, expected (128, 128, 3, 24, 4) uint8")
    scipy.io.savemat(folder / "car_007_mesh.mat", {"depth": np.zeros(3)})
    run_fail(capsys, ["data", "info", str(folder)], "car_007_mesh.mat", "missing variable 'im'")
    (folder / "car_007_mesh.mat").write_bytes(b"not a mat file at all")
    run_fail(capsys, ["data", "info", str(folder)], "car_007_mesh.mat", "not a readable .mat")
    os.remove(folder / "car_007_mesh.mat")
    run_fail(capsys, ["data", "info", str(folder)], "found 182 .mat files, expected 183")


def test_celeba_without_attribute_file(tmp_path, capsys):
    from test_data_formats import write_celeba
    write_celeba(tmp_path)
    os.remove(tmp_path / "list_attr_celeba.txt")
    run_fail(capsys, ["data", "info", str(tmp_path), "--kind", "celeba"],
             str(tmp_path), "missing attribute file list_attr_celeba.txt")


def test_factor_indices_out_of_range(tmp_path, capsys, shapes3d_grid_npz):
    run_fail(capsys, ["data", "subset", str(shapes3d_grid_npz), "--out", str(tmp_path / "s.npz"),
                      "--keep", "shape=0,4"], "shapes3d_small.npz", "'shape' must keep classes in 0..3")
    run_fail(capsys, ["data", "subset", str(shapes3d_grid_npz), "--out", str(tmp_path / "s.npz"),
                      "--keep", "shape"], "expected FACTOR=I,J")
    assert not (tmp_path / "s.npz").exists()


def test_sigterm_during_data_make_leaves_no_partial_file(tmp_path):
    """SIGTERM while the file is being written: exit 143, nothing under the final name, and the
    hidden temporary file is removed too."""
    import os
    import signal
    import subprocess
    import sys
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "disdis.cli", "data", "make", "dsprites", "--out",
                             str(tmp_path / "d.npz")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not any(".partial" in n for n in os.listdir(tmp_path)):
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be stopped"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 143 and "terminated" in err, err[-2000:]
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- a path of another kind or format

def test_a_file_of_another_kind_is_named_for_what_it_is(tmp_path, capsys, shapes3d_grid_npz, shapes3d_h5_small):
    """A kind given for a file of another known format or kind says what the file is, once, for
    every kind (not the reader's "not a readable HDF5 file")."""
    with pytest.raises(DataError, match=r"shapes3d_small.npz: an .npz factor grid, but data.kind is shapes3d "
                                        r"\(the released HDF5 file.*\); give data.kind=null to infer the kind"):
        open_dataset(shapes3d_grid_npz, kind="shapes3d")
    run_fail(capsys, ["data", "info", str(shapes3d_grid_npz), "--kind", "shapes3d"],
             "an .npz factor grid, but --kind is shapes3d", "leave out --kind")
    for kind in ("grid", "dsprites", "mpi3d"):
        with pytest.raises(DataError, match=f"an HDF5 file, but data.kind is {kind} "):
            open_dataset(shapes3d_h5_small, kind=kind)
    for kind in ("dsprites", "mpi3d"):
        with pytest.raises(DataError, match=f"an .npz factor grid, but data.kind is {kind} "):
            open_dataset(shapes3d_grid_npz, kind=kind)
    for kind in ("cars3d", "celeba"):
        with pytest.raises(DataError, match=f"shapes3d_small.npz: an .npz factor grid, but data.kind is {kind} "):
            open_dataset(shapes3d_grid_npz, kind=kind)


def test_resolution_larger_than_the_file_names_the_key(capsys, tmp_path, shapes3d_grid_npz):
    from disdis.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^data.resolution: 64 is larger than the native 16 px of .*shapes3d_small"
                                          r".npz \(it must divide it: 16, 8, 4, 2, 1\)$"):
        open_dataset(shapes3d_grid_npz, kind="grid", resolution=64)
    with pytest.raises(ConfigError, match=r"^data.resolution: 3 does not divide the native 16 px"):
        open_dataset(shapes3d_grid_npz, resolution=3)
    run_fail(capsys, ["data", "subset", str(shapes3d_grid_npz), "--out", str(tmp_path / "s.npz"),
                      "--resolution", "32"], "--resolution: 32 is larger than the native 16 px")
    run_fail(capsys, ["data", "subset", str(shapes3d_grid_npz), "--out", str(tmp_path / "s.npz"),
                      "--resolution", "0"], "--resolution: 0 is not a positive size")
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("argv,message", [
    (["dsprites", "--out", "x.h5"], "--out x.h5: dsprites writes an npz (zip) file; give a name ending in .npz"),
    (["shapes3d", "--out", "x.npz"], "--out x.npz: shapes3d writes an HDF5 file; give a name ending in .h5 or .hdf5"),
    (["shapes3d", "--out", "x"], "give a name ending in .h5 or .hdf5"),
    (["celeba-like", "--out", "x.npz"], "celeba-like writes a folder"),
    (["shapes3d", "--out", "x.h5", "--resolution", "7"], "--resolution: shapes3d is rendered at 4 to 256 px in steps of 4"),
    (["shapes3d", "--out", "x.h5", "--resolution", "2"], "got 2"),
    (["shapes3d", "--out", "x.h5", "--resolution", "0"], "got 0"),
    (["shapes3d", "--out", "x.h5", "--resolution", "1024"], "got 1024"),
    (["celeba-like", "--out", "c", "--resolution", "32"], "celeba-like images are always 178x218"),
], ids=["dsprites-h5", "shapes3d-npz", "no-extension", "celeba-like-file", "res-7", "res-2", "res-0", "res-1024",
        "celeba-like-res"])
def test_make_refuses_a_wrong_extension_or_resolution_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    import disdis.data.celeba_like
    import disdis.data.dsprites
    import disdis.data.shapes3d

    def work(*args, **kwargs):
        raise AssertionError("the dataset was being made")

    for module, name in ((disdis.data.shapes3d, "write_shapes3d"), (disdis.data.dsprites, "write_dsprites"),
                         (disdis.data.celeba_like, "write_celeba_like")):
        monkeypatch.setattr(module, name, work)
    monkeypatch.chdir(tmp_path)
    run_fail(capsys, ["data", "make", *argv], message)
    assert os.listdir(tmp_path) == []


def test_a_file_is_read_by_its_content_not_its_name(tmp_path, capsys, shapes3d_grid_npz):
    """An npz named .h5 (what `data make` used to write for --out x.h5) opens as what it holds."""
    renamed = tmp_path / "grid.h5"
    renamed.write_bytes(shapes3d_grid_npz.read_bytes())
    assert main(["data", "info", str(renamed)]) == 0
    assert "kind: grid" in capsys.readouterr().out


def test_a_folder_given_as_a_grid_file(tmp_path, capsys):
    from test_data_formats import write_celeba
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: a folder, not a factor-grid .npz file \(data.kind is grid\)"):
        open_dataset(tmp_path / "plain", kind="grid")
    write_celeba(tmp_path / "celeba")
    with pytest.raises(DataError, match=r"celeba: a CelebA folder, but data.kind is grid \(a factor-grid .npz "
                                        r"file\); give data.kind=null to infer the kind from the folder"):
        open_dataset(tmp_path / "celeba", kind="grid")
    run_fail(capsys, ["data", "info", str(tmp_path / "plain"), "--kind", "mpi3d"], "plain: a folder, not the released MPI3D")


class _Marker:
    """Unpickling this creates the file ``path``: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_text_or_pickle_file_given_as_npz_is_not_read(tmp_path, capsys):
    import pickle
    text = tmp_path / "notes.npz"
    text.write_text("factor_sizes: 2 3\nimages: none\n")
    with pytest.raises(DataError, match=r"notes.npz: not a readable .npz grid \(it holds text; data.kind is grid\)"):
        open_dataset(text, kind="grid")
    run_fail(capsys, ["data", "info", str(text)], "notes.npz: not a readable .npz file (it holds text, not a zip archive)")
    marker = tmp_path / "unpickled"
    pickled = tmp_path / "p.npz"
    pickled.write_bytes(pickle.dumps(_Marker(marker)))
    for kind in (None, "grid", "dsprites", "mpi3d"):
        with pytest.raises(DataError, match="p.npz: not a readable .*npz"):
            open_dataset(pickled, kind=kind)
    run_fail(capsys, ["data", "info", str(pickled)], "not a readable .npz file (not a zip archive")
    assert not marker.exists()


def test_an_unknown_kind_names_the_option(tmp_path, capsys, shapes3d_grid_npz):
    run_fail(capsys, ["data", "info", str(shapes3d_grid_npz), "--kind", "foo"],
             "--kind: unknown dataset kind 'foo'; expected one of shapes3d")
