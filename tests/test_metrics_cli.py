"""``disdis evaluate --codes FILE.npz --dataset DATASET_FILE`` end to end on the small
Shapes3D-like grid: ground-truth factors as codes score near 1, random codes near 0."""

from __future__ import annotations

import json

import numpy as np

from disdis.cli import main
from disdis.data import open_dataset

QUICK = ["eval.num_train=300", "eval.num_test=150", "eval.num_eval=150",
         "eval.num_variance_estimate=300", "eval.metrics=[factor_vae, dci, mig, beta_vae, sap, "
         "modularity_explicitness]"]


def _factors(dataset_path):
    dataset = open_dataset(str(dataset_path))
    factors = dataset.factors(np.arange(len(dataset))).astype(np.float64)
    dataset.close()
    return factors


def test_evaluate_codes_ground_truth_and_random(shapes3d_grid_npz, tmp_path, capsys):
    factors = _factors(shapes3d_grid_npz)
    truth = tmp_path / "truth" / "codes.npz"
    truth.parent.mkdir()
    np.savez(truth, codes=factors + 0.01 * np.random.RandomState(0).randn(*factors.shape))
    assert main(["evaluate", "--codes", str(truth), "--dataset", str(shapes3d_grid_npz), *QUICK]) == 0
    out = capsys.readouterr().out
    good = json.loads((truth.parent / "metrics.json").read_text())
    assert "NOTE" in out and good["protocol"]["reference"] is False
    m = good["metrics"]
    assert m["factor_vae"]["eval_accuracy"] > 0.95 and m["beta_vae"]["eval_accuracy"] > 0.95
    assert m["dci"]["disentanglement"] > 0.9 and m["mig"]["discrete_mig"] > 0.5
    assert m["modularity_explicitness"]["modularity_score"] > 0.9

    tokens = tmp_path / "tokens.npz"  # vectors per unit: reduced by PCA first
    np.savez(tokens, tokens=np.random.RandomState(1).randn(len(factors), 5, 3))
    out_json = tmp_path / "random.json"
    assert main(["evaluate", "--codes", str(tokens), "--dataset", str(shapes3d_grid_npz),
                 "--out", str(out_json), *QUICK]) == 0
    bad = json.loads(out_json.read_text())
    assert bad["run"]["representation"] == "tokens_pca"
    assert bad["metrics"]["dci"]["disentanglement"] < 0.3 and bad["metrics"]["mig"]["discrete_mig"] < 0.2


def test_evaluate_codes_bad_input(shapes3d_grid_npz, tmp_path, capsys):
    codes = tmp_path / "short.npz"
    np.savez(codes, codes=np.zeros((10, 4)))
    assert main(["evaluate", "--codes", str(codes), "--dataset", str(shapes3d_grid_npz)]) == 2
    assert "10 rows" in capsys.readouterr().err
    nan = np.zeros((len(_factors(shapes3d_grid_npz)), 4))
    nan[0, 0] = np.nan
    np.savez(codes, codes=nan)
    assert main(["evaluate", "--codes", str(codes), "--dataset", str(shapes3d_grid_npz), *QUICK]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["evaluate", "--codes", str(codes)]) == 2


def test_evaluate_codes_that_are_not_an_npz(shapes3d_grid_npz, tmp_path, capsys):
    text = tmp_path / "t.npz"
    text.write_text("not an array\n")
    assert main(["evaluate", "--codes", str(text), "--dataset", str(shapes3d_grid_npz)]) == 2
    err = capsys.readouterr().err
    assert "not a readable codes .npz (it holds text" in err and "pickle" not in err
