"""disdis compare: methods x seeds on one budget and protocol, summarised; a stopped comparison continues."""

import json

import pytest

from disdis.cli import main
from train_standins import tiny_run_config, write_yaml

SHARED = ["data.resolution=16", "train.checkpoint_every_kimg=0.032", "train.log_every_kimg=0.032",
          "train.probe_images=64", "eval.batch_size=64", "eval.num_train=200", "eval.num_test=100",
          "eval.num_eval=100", "eval.num_variance_estimate=200"]


def test_compare_trains_evaluates_summarises_and_continues(tmp_path, shapes3d_grid_npz, capsys):
    paper = tiny_run_config(shapes3d_grid_npz, tmp_path / "unused", train={"batch_size": 16})
    del paper["run_dir"]
    configs = [write_yaml(tmp_path / "tiny_paper.yaml", paper),
               write_yaml(tmp_path / "tiny_vae.yaml", {"base": "beta_vae", "train": {"batch_size": 16}})]
    out = tmp_path / "cmp"
    command = ["compare", "--methods", ",".join(configs), "--seeds", "0,1", "--kimg", "0.064", "--out", str(out),
               "--data", str(shapes3d_grid_npz), "--jobs", "2", "--threads", "1", *SHARED]
    assert main(command) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["methods"]) == {"tiny_paper", "tiny_vae"} and summary["budget"] == {"minutes": None, "kimg": 0.064}
    for entry in summary["methods"].values():
        assert set(entry["mean"]) >= {"factor_vae", "dci", "mig"} and set(entry["std"]) == set(entry["mean"])
        assert entry["kimg"] == 0.064 and entry["minutes"] > 0 and len(entry["runs"]) == 2
        assert all(0 <= v <= 1 for v in entry["mean"].values())
    assert "eval.num_train=200" in summary["protocol"]
    table = (out / "compare.md").read_text()
    assert "| tiny_vae |" in table and "± " in table and "| tiny_paper |" in capsys.readouterr().out
    # run again: every run is done and read back, nothing trains
    assert main(command) == 0
    assert capsys.readouterr().err.count("done already") == 4
    assert json.loads((out / "compare.json").read_text())["methods"] == summary["methods"]


def test_compare_checks_every_method_before_any_run(tmp_path, shapes3d_grid_npz, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "beta_vae,nope", "--kimg", "1", "--out", str(out),
                 "--data", str(shapes3d_grid_npz), "data.resolution=16"]) == 2
    assert "nope" in capsys.readouterr().err and not out.exists()
    # the data is checked too: the demo scale's 32 px cannot be read from this 16-px grid
    assert main(["compare", "--methods", "beta_vae", "--kimg", "1", "--out", str(out),
                 "--data", str(shapes3d_grid_npz)]) == 2
    assert "resolution 32 must divide the native resolution 16" in capsys.readouterr().err and not out.exists()
    from disdis.compare import Budget
    from disdis.errors import ConfigError
    with pytest.raises(ConfigError, match="the budget must be positive"):
        Budget(minutes=0.0)
    with pytest.raises(SystemExit, match="2"):  # no budget
        main(["compare", "--methods", "beta_vae", "--out", str(out), "--data", str(shapes3d_grid_npz)])
