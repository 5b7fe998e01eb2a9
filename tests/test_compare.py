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
    # each protocol key once, with its effective value (the demo's eval.num_train overridden by SHARED's)
    keys = [item.split("=")[0] for item in summary["protocol"]]
    assert "eval.num_train=200" in summary["protocol"] and len(keys) == len(set(keys))
    table = (out / "compare.md").read_text()
    assert table.count("eval.num_train=") == 1
    assert "| tiny_vae |" in table and "± " in table and "| tiny_paper |" in capsys.readouterr().out
    # run again: every run is done and read back, nothing trains
    assert main(command) == 0
    assert capsys.readouterr().err.count("done already") == 4
    assert json.loads((out / "compare.json").read_text())["methods"] == summary["methods"]
    # with other settings the folder is refused before any work: its runs would be reported under them
    for old, new, said in [("0.064", "0.128", "budget --kimg 0.064 (now --kimg 0.128)"),
                           ("eval.num_train=200", "eval.num_train=100", "eval.num_train 200 (now 100)"),
                           ("train.probe_images=64", "train.probe_images=32", "train.probe_images 64 (now 32)"),
                           (str(shapes3d_grid_npz), str(tmp_path / "other.npz"), "data ")]:
        if new.endswith(".npz"):
            (tmp_path / "other.npz").write_bytes(shapes3d_grid_npz.read_bytes())
        assert main([new if item == old else item for item in command]) == 2
        err = capsys.readouterr().err
        assert said in err and "choose another --out" in err and "done already" not in err, err
    # a run scored by hand with another protocol is scored again, not reported under this one
    metrics = out / "runs" / "tiny_vae-s0" / "metrics.json"
    result = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**result, "protocol": {**result["protocol"], "num_train": 999}}))
    assert main(command) == 0
    err = capsys.readouterr().err
    assert err.count("done already") == 3 and "tiny_vae-s0: scoring" in err
    assert json.loads(metrics.read_text())["protocol"]["num_train"] == 200


def test_compare_checks_every_method_before_any_run(tmp_path, shapes3d_grid_npz, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "beta_vae,nope", "--kimg", "1", "--out", str(out),
                 "--data", str(shapes3d_grid_npz), "data.resolution=16"]) == 2
    assert "nope" in capsys.readouterr().err and not out.exists()
    # the data is checked too: the demo scale's 32 px cannot be read from this 16-px grid
    assert main(["compare", "--methods", "beta_vae", "--kimg", "1", "--out", str(out),
                 "--data", str(shapes3d_grid_npz)]) == 2
    assert "data.resolution: 32 is larger than the native 16 px" in capsys.readouterr().err and not out.exists()
    from disdis.compare import Budget
    from disdis.errors import ConfigError
    with pytest.raises(ConfigError, match="the budget must be positive"):
        Budget(minutes=0.0)
    with pytest.raises(SystemExit, match="2"):  # no budget
        main(["compare", "--methods", "beta_vae", "--out", str(out), "--data", str(shapes3d_grid_npz)])


def test_compare_checks_its_arguments_and_data_before_making_anything(tmp_path, shapes3d_grid_npz, capsys,
                                                                      monkeypatch):
    from disdis.data.celeba_like import write_celeba_like
    monkeypatch.chdir(tmp_path)  # where the demo grid would be made (data/demo/) without --data
    out = tmp_path / "cmp"
    base = ["compare", "--methods", "beta_vae", "--kimg", "1", "--out", str(out)]
    celeba = tmp_path / "celeba"
    write_celeba_like(str(celeba), count=8)
    (tmp_path / "old" / "runs" / "beta_vae-s0").mkdir(parents=True)  # made before settings.json was
    for change, said in [(["--methods", "foo"], "foo"), (["--kimg", "-1"], "the budget must be positive"),
                         (["--threads", "0"], "--threads: expected a positive integer, got 0"),
                         (["--threads", "-2"], "--threads: expected a positive integer, got -2"),
                         (["--jobs", "0"], "--jobs: expected a positive integer, got 0"),
                         (["--data", str(tmp_path / "missing.npz")], "missing.npz: no such file or folder"),
                         (["--data", str(celeba)], "has no factor grid"),
                         (["--out", str(tmp_path / "old"), "--data", str(shapes3d_grid_npz), "data.resolution=16"],
                          "holds runs but no record of the settings")]:
        command = [*base, *change]
        if change[0] in ("--methods", "--kimg"):  # options given twice: argparse keeps the last
            command = [*base[:base.index(change[0])], *change, *base[base.index(change[0]) + 2:]]
        assert main(command) == 2, change
        err = capsys.readouterr().err
        assert said in err and err.startswith("disdis compare: error: ") and len(err.splitlines()) == 1, err
        assert not out.exists() and not (tmp_path / "data").exists() and not (tmp_path / "old" / "logs").exists()
