"""`disdis evaluate` and `disdis interchange` on a tiny finished run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from disdis.cli import main
from train_standins import tiny_run_config, write_yaml


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shapes3d_grid_npz):
    root = tmp_path_factory.mktemp("evaluate")
    config = write_yaml(root / "tiny.yaml", tiny_run_config(shapes3d_grid_npz, root / "run", train={"total_kimg": 0.08}))
    assert main(["train", config]) == 0
    return root / "run"


def test_evaluate_writes_metrics(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run), "eval.num_train=200", "eval.num_test=100", "eval.num_eval=100",
                 "eval.num_variance_estimate=200", "eval.metrics=[factor_vae, mig, dci]"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tiny_run / "metrics.json").read_text())
    assert set(result["metrics"]) == {"factor_vae", "mig", "dci"} and result["protocol"]["reference"] is False
    assert 0 <= result["metrics"]["factor_vae"]["eval_accuracy"] <= 1 and "factor_vae" in out and "NOTE" in out
    assert result["run"]["num_images"] == 288 and result["run"]["weights"] == "ema"
    assert result["protocol"]["n_jobs"] == 2


def test_evaluate_jobs_reach_the_metric_suite(tiny_run, tmp_path):
    assert main(["evaluate", str(tiny_run), "--jobs", "1", "--out", str(tmp_path / "m.json"), "eval.num_train=200",
                 "eval.num_test=100", "eval.metrics=[dci]"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["protocol"]["n_jobs"] == 1


def test_encoding_is_canonical_and_anchored(tiny_run):
    from disdis.evaluation import encode_dataset
    from disdis.train.run import load_trained_model, open_training_data
    cfg, model, _ = load_trained_model(tiny_run)
    data = open_training_data(cfg)
    units, tokens = encode_dataset(model, data, 100, torch.device("cpu"))
    assert units.shape == (288, 4) and tokens.shape == (288, 4, 8)
    x = torch.stack([data[i][0] for i in (0, 287)])
    ref_units, ref_tokens = model.encode_units(x)
    assert np.allclose(units[[0, 287]], ref_units.numpy(), atol=1e-5)
    assert np.allclose(tokens[[0, 287]], ref_tokens.numpy(), atol=1e-5)
    assert float(model.anchor_state.fitted) == 1  # the run's last fit came with the checkpoint


def test_evaluation_encodes_in_float32_although_the_run_trains_in_bf16(tiny_run, tmp_path, monkeypatch):
    # train.bf16 is on in the tiny run's config (it takes effect on GPUs only); the scores must not
    # depend on it, so the evaluation asks for no autocast whatever the device
    import disdis.train.encode as encode
    from disdis.evaluation import evaluate_run
    from disdis.train.run import load_trained_model
    assert load_trained_model(tiny_run)[0].train.bf16
    asked = []
    real = encode.encode_images
    monkeypatch.setattr(encode, "encode_images", lambda *a, **k: asked.append(k.get("bf16", False)) or real(*a, **k))
    evaluate_run(tiny_run, ["eval.num_train=100", "eval.num_test=50", "eval.metrics=[mig]"], out=tmp_path / "m.json")
    assert asked == [False]


def test_interchange_grid(tiny_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["interchange", str(tiny_run), "--targets", "3", "--units", "0,2", "--steps", "2", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size[0] >= 512 and image.size[1] > 200  # labelled, upscaled: 1 + 3 columns, 1 + 2 rows
    assert main(["interchange", str(tiny_run), "--units", "9"]) == 2


def test_protocol_overrides_carry_every_eval_setting():
    """Another run's eval section, with protocol_overrides applied, is the given protocol (lists,
    strings and None included), whatever it was before."""
    from disdis.config import apply_overrides, config_from_dict, config_to_dict
    from disdis.evaluation import protocol_overrides
    from disdis.run_config import EvalConfig
    wanted = EvalConfig(num_train=123, metrics=["dci", "mig"], dci_backend="sklearn", downstream_sizes=[7, 8], seed=5)
    other = {"eval": config_to_dict(EvalConfig(num_train=9, representation="scalar"))}
    got = config_from_dict(EvalConfig, apply_overrides(other, protocol_overrides(wanted))["eval"], "eval")
    assert config_to_dict(got) == config_to_dict(wanted)


def test_a_map_of_the_units_is_scored_on_scalars_only(tiny_run, tmp_path):
    """``evaluate_run(unit_map=...)`` scores matrix @ u + offset: a permutation of the units permutes
    the share table's rows; with tokens_pca it is refused before any encoding."""
    from disdis.errors import ConfigError
    from disdis.evaluation import evaluate_run
    protocol = ["eval.representation=scalar", "eval.num_train=200", "eval.num_test=100", "eval.metrics=[dci]"]
    plain, _ = evaluate_run(tiny_run, protocol, out=tmp_path / "plain.json")
    flip = np.eye(4)[[3, 2, 1, 0]]
    mapped, _ = evaluate_run(tiny_run, protocol, out=tmp_path / "mapped.json", unit_map=(flip, np.zeros(4)))
    np.testing.assert_allclose(mapped["unit_factor_shares"], plain["unit_factor_shares"][::-1], atol=1e-4)
    # what any direction of the units holds does not depend on their order; never less than a unit's share
    np.testing.assert_allclose(mapped["direction_shares"], plain["direction_shares"], atol=1e-4)
    assert np.all(np.array(plain["direction_shares"]) >= np.max(plain["unit_factor_shares"], axis=0) - 1e-4)
    assert mapped["run"]["units_mapped"] is True and "units_mapped" not in plain["run"]
    with pytest.raises(ConfigError, match="a map of the units applies to eval.representation=scalar"):
        evaluate_run(tiny_run, ["eval.representation=tokens_pca"], out=tmp_path / "x.json", unit_map=(flip, np.zeros(4)))
