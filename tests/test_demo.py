"""`disdis demo` end to end on a tiny configuration (seconds): data, both stages, evaluation, report."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from disdis.cli import main
from train_standins import interrupted, repo_script

# the demo's own config, shrunk: a few training steps, tiny networks, small metric samples, 2 DDIM steps
TINY = ["method.first_stage_train.total_kimg=0.064", "method.first_stage_train.batch_size=32", "method.first_stage.base_channels=8",
        "method.extractor_init_train.total_kimg=0.064", "method.extractor_init_train.batch_size=32",
        "method.extractor_init_loss.gradient_ramp_kimg=[0.032,0.032]",  # the preset's hold and fresh start, midway,
        "method.extractor_init_loss.gather_units=2",  # gathering the code into 2 of the 4 units (the preset: 6 of 10)
        "train.total_kimg=0.128", "train.batch_size=32", "train.freeze_kimg=0.064", "method.anchoring.refit_every=0.064", "method.anchoring.refit_images=200",
        "method.units.num_units=4", "method.units.token_dim=8", "method.units.extractor_width=4", "method.units.fc_hidden=[16]",
        "method.units.mlp_hidden=[8]", "method.unet.context_dim=8", "method.unet.base_channels=8", "method.unet.channel_mult=[1,2]",
        "method.unet.attention_resolutions=[2]", "method.unet.num_heads=2", "method.diffusion.ddim_steps=2", "eval.num_train=200",
        "eval.num_test=100", "eval.num_eval=100", "eval.num_variance_estimate=200"]


def test_demo_end_to_end(tmp_path, capsys, one_torch_thread):
    out, data = tmp_path / "run", tmp_path / "grid.npz"
    args = ["demo", "--out", str(out), "--data", str(data), "--threads", "1", *TINY,
            "method.extractor_init_train.batch_size=16", "method.extractor_init_train.log_every_kimg=0.016"]  # a log before the hold
    assert main(args) == 0
    printed, err = capsys.readouterr()
    assert "units unmixed on 729 images" in err  # the preset unmixes the warm start's units first
    assert json.loads((out / "logs" / "unmixing.json").read_text())["images"] == 729
    assert "demo wall time" in printed and "FactorVAE" in printed and "reduced protocol" in printed
    assert "What each unit carries" in printed and "| 3 |" in printed  # the share table, one row per unit
    assert "captured in training (a unit's share >= 0.5; kimg of the diffusion training; minutes since the run began" in printed
    assert "at the end (tokens_pca, the share table; a unit's share >= 0.5): " in printed
    assert "target (tokens_pca: FactorVAE >= 0.9, DCI >= 0.6, every factor captured at the end): " in printed
    assert "warm_start: FactorVAE" in printed  # the autoencoder's units, before the diffusion training
    protocols = []
    for name in ("metrics.json", "metrics_scalar.json", "metrics_warm_start.json", "metrics_unmixed_start.json"):
        result = json.loads((out / name).read_text())
        protocols.append(result["protocol"])
        assert set(result["metrics"]) == {"factor_vae", "dci", "mig"} and result["protocol"]["reference"] is False
        shares = np.asarray(result["unit_factor_shares"])  # units x factors, each row a split of the variance
        assert shares.shape[1] == 6 and np.all(shares >= 0) and np.all(shares.sum(1) <= 1 + 1e-3)
    assert protocols[0] == protocols[1] == protocols[2] == protocols[3]  # the start is scored alike
    assert "unmixed_start: FactorVAE" in printed  # the start as the unmixing turned it
    check_unmixed_start(out)
    report = (out / "report.md").read_text()
    assert "tokens_pca" in report and "scalar" in report and "| warm_start |" in report and "What each unit carries" in report
    record = json.loads((out / "logs" / "unmixing.json").read_text())
    assert (f"unmixed before the first step (method.unmix_units, the pairs turned to the largest kurtosis): "
            f"{record['rotations']} rotations (largest_gain) over {sum(record['active'])} of 4 units") in report
    assert "(logs/unmixing.json has the map). warm_start scores the units before it, unmixed_start after it." in report
    assert "| unmixed_start |" in report
    for name in ("reconstructions.png", "interchange.png", "factor_shares.png"):
        assert name in report
        Image.open(out / "figures" / name).verify()
    assert (out / "first_stage" / "config.yaml").is_file() and (out / "extractor" / "config.yaml").is_file()
    page = (out / "report.html").read_text()  # the HTML report, every figure embedded
    assert page.count("<img ") >= 8 and "What each unit carries" in page
    assert f"<th>units unmixed first</th><td>{record['rotations']} rotations (largest_gain)" in page
    check_hold_report(out)
    # run again with a longer schedule: the finished demo continues from its checkpoint
    assert main(args + ["train.total_kimg=0.192"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "units unmixed" not in err  # a resumed run keeps the folded units
    assert (out / "logs" / "train.csv").read_text().splitlines()[-1].startswith("6,")


def check_unmixed_start(run):
    """The unmixed start's share table is that of the warm start's units mapped by logs/unmixing.json's
    map, computed here from the autoencoder's units."""
    from disdis.evaluation import encode_dataset
    from disdis.metrics import unit_factor_shares
    from disdis.train.run import load_trained_model, open_training_data
    record = json.loads((run / "logs" / "unmixing.json").read_text())
    cfg, model, _ = load_trained_model(run / "extractor", "model")
    data = open_training_data(cfg)
    units = encode_dataset(model, data, 256, torch.device("cpu"))[0].astype(np.float64)
    mapped = units @ np.asarray(record["matrix"]).T + np.asarray(record["offset"])
    result = json.loads((run / "metrics_unmixed_start.json").read_text())
    assert result["run"]["units_mapped"] is True
    np.testing.assert_allclose(result["unit_factor_shares"], unit_factor_shares(mapped, data.dataset.factor_sizes), atol=1e-4)


def check_hold_report(run):
    """benchmarks/hold_report.py on a demo folder (its hold gathered into 2 units): per factor, its best
    unit at the last log before the hold (the probe's shares), that unit's KL as the autoencoder's
    checkpoint stores it, no held flag (the gathered units are not the units before the hold), and the
    factor's best share at the first log after the hold."""
    from disdis.train import checkpoint as ckpt
    from disdis.train.logger import read_csv_log
    about, factors = repo_script("benchmarks/hold_report.py").hold_rows(run)
    assert "hold at 0.032 kimg (the code gathered into 2 units)" in about and "shares before it at 0.016 kimg" in about
    assert "2 of 4 units held" in about  # the gathered hold holds units 0 and 1, whatever their KL
    tensors, _ = ckpt.load_checkpoint(ckpt.list_checkpoints(run / "extractor" / "checkpoints")[-1])
    rows = read_csv_log(run / "extractor" / "logs" / "shares.csv")
    before = [r for r in rows if r["kimg"] == 0.016]
    after = [r for r in rows if r["kimg"] == min(r["kimg"] for r in rows if r["kimg"] > 0.032)]
    assert [f["factor"] for f in factors] == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    for f in factors:
        shares = [r[f["factor"]] for r in before]
        assert f["share"] == max(shares) and shares.index(f["share"]) == f["unit"]
        assert f["held"] is None and f["kl"] == float(tensors["model/unit_kl"][f["unit"]])
        assert f["after"] == max(r[f["factor"]] for r in after)


def test_the_target_counts_the_factors_the_evaluated_units_hold_at_the_end():
    from disdis.report.markdown import shares_table, target_lines, target_reached

    def result(fvae: float, dci: float, best: list) -> dict:
        shares = np.zeros((10, 6))
        shares[np.arange(6), np.arange(6)] = best  # factor k in unit k
        return {"metrics": {"factor_vae": {"eval_accuracy": fvae}, "dci": {"disentanglement": dci},
                            "mig": {"discrete_mig": 0.5}}, "unit_factor_shares": shares.tolist()}
    held, target = target_lines(result(0.95, 0.7, [0.9] * 6))
    assert held.endswith(": every factor captured") and target.endswith(": reached")
    held, target = target_lines(result(0.95, 0.7, [0.9] * 5 + [0.16]))  # scores met, orientation lost
    assert held.endswith("5 of 6 factors captured; not orientation (best unit 0.16)") and target.endswith("not reached")
    spread = {**result(0.95, 0.7, [0.9] * 5 + [0.16]), "direction_shares": [0.95] * 5 + [0.71]}
    assert target_lines(spread)[0].endswith("not orientation (best unit 0.16, best direction 0.71)")
    assert shares_table(spread, list("abcdef"))[-1] == "| any direction (a mix of units) | " + "0.95 | " * 5 + "0.71 |"
    assert target_lines(result(0.89, 0.7, [0.9] * 6))[1].endswith("not reached")
    held, target = target_lines({"metrics": result(0.95, 0.7, [0.9] * 6)["metrics"]})  # no factor grid
    assert "no share table" in held and target.endswith("not reached")
    # the same verdicts as a bool (benchmarks/target_by_kimg.py counts the runs with it)
    assert target_reached(result(0.95, 0.7, [0.9] * 6))
    assert not target_reached(result(0.95, 0.7, [0.9] * 5 + [0.16]))
    assert not target_reached(result(0.95, 0.59, [0.9] * 6))
    assert not target_reached({"metrics": result(0.95, 0.7, [0.9] * 6)["metrics"]})


def test_the_reports_unmixing_line_reads_the_runs_record(tmp_path):
    """Nothing without logs/unmixing.json; a record from before method.unmix_order (no "order") was
    written by the cyclic sweeps; the sentence on the starts only where the report scores them."""
    from disdis.report.markdown import unmixing_lines
    assert unmixing_lines(tmp_path, starts_scored=True) == []
    (tmp_path / "logs").mkdir()
    record = {"images": 729, "active": [True] * 9 + [False], "rotations": 4, "kurtosis_before": 9.9696,
              "kurtosis_after": 10.0995, "matrix": [], "offset": []}
    (tmp_path / "logs" / "unmixing.json").write_text(json.dumps(record))
    line = unmixing_lines(tmp_path, starts_scored=False)[0]
    assert "largest kurtosis): 4 rotations (cyclic) over 9 of 10 units, summed |excess kurtosis| 9.97 -> 10.10 " \
           "on 729 images (logs/unmixing.json has the map)." in line and "warm_start" not in line
    (tmp_path / "logs" / "unmixing.json").write_text(json.dumps({**record, "order": "largest_gain"}))
    line = unmixing_lines(tmp_path, starts_scored=True)[0]
    assert "4 rotations (largest_gain)" in line and line.endswith("warm_start scores the units before it, unmixed_start after it.")


def test_demo_data_is_cached(tmp_path, capsys):
    from disdis.data.demo_grid import DEMO_GRID, make_demo_data
    from disdis.data import open_dataset
    path = tmp_path / "grid.npz"
    make_demo_data(path, 16)
    data = open_dataset(path)
    assert len(data) == 729 and list(data.factor_sizes) == [len(v) for v in DEMO_GRID.values()]
    make_demo_data(path, 16)
    assert "data: cached" in capsys.readouterr().err
    make_demo_data(path, 32)  # another resolution renders again
    assert open_dataset(path).resolution == 32


def test_demo_under_torchrun_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["demo", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "grid.npz")]) == 2
    err = capsys.readouterr().err
    assert "the demo runs as one process; to train on several: torchrun --nproc_per_node N" in err
    assert f"-m disdis train demo data.path={tmp_path / 'grid.npz'}" in err  # the data the demo was given
    assert not (tmp_path / "grid.npz").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_demo_refuses_fewer_than_one_thread_before_any_work(tmp_path, capsys, monkeypatch, threads):
    """--threads 0 used to run on 1 thread, silently: now one line, before the data is made."""
    def made(*args):
        raise AssertionError("the demo made its data")
    monkeypatch.setattr("disdis.data.demo_grid.make_demo_data", made)
    assert main(["demo", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "grid.npz"), "--threads", threads]) == 2
    assert capsys.readouterr().err == f"disdis demo: error: --threads: expected a positive integer, got {threads}\n"
    assert not (tmp_path / "grid.npz").exists() and not (tmp_path / "run").exists()


def test_ctrl_c_in_the_demo_says_to_run_the_demo_again(tmp_path):
    """The demo has no --resume: Ctrl-C while it trains its first stage says to run it again on its
    folder (and its data), not `--resume RUN/first_stage`; run again, it continues."""
    out, data = tmp_path / "run", tmp_path / "grid.npz"
    args = ["demo", "--out", str(out), "--data", str(data), "--threads", "1", *TINY,
            "method.first_stage_train.total_kimg=16", "method.first_stage_train.log_every_kimg=0.032"]
    code, err = interrupted(args, out / "first_stage" / "logs" / "train.csv", 2)  # header + a logged step
    assert code == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("disdis demo: error: stopped by SIGINT after step ")
    assert last.endswith(f"; continue with `disdis demo --out {out} --data {data}`"), last
    assert "--resume" not in last


def test_demo_continue_command_names_its_folder_and_data_only_when_not_the_default():
    import argparse
    from disdis.commands.demo import continue_command
    from disdis.data.demo_grid import DEMO_DATA
    assert continue_command(argparse.Namespace(out="runs/demo", data=DEMO_DATA)) == "`disdis demo --out runs/demo`"
    assert continue_command(argparse.Namespace(out="r", data="g.npz")) == "`disdis demo --out r --data g.npz`"

def test_train_step_benchmark_times_the_warm_start_past_its_gathered_hold(one_torch_thread):
    """benchmarks/train_step.py --stage extractor on the demo's config (tiny): the autoencoder's step as at
    the end of its training, after the hold gathered the code of (random) images into its held copy."""
    import torch
    bench = repo_script("benchmarks/train_step.py")
    row = bench.run("demo", "eager", 8, 1, 0, torch.device("cpu"), False, TINY, stage="extractor")
    assert row["config"] == "demo/ae" and row["img_s"] > 0 and row["step"] > 0


def test_train_step_benchmark_alternates_its_rows_round_by_round(one_torch_thread, monkeypatch):
    """benchmarks/train_step.py --alternate R: every row built first, then timed row after row in R rounds,
    each row's median over its rounds (here the demo's step without and with shards, tiny)."""
    import sys
    import torch
    bench = repo_script("benchmarks/train_step.py")
    cpu, order = torch.device("cpu"), []
    timed = bench.timed
    monkeypatch.setattr(bench, "timed", lambda step, *args: (order.append(step), timed(step, *args))[1])
    specs = [dict(name="demo", variant="eager", batch=8, warmup=0, device=cpu, bf16=False, held=False, stage="run",
                  at_kimg=None, overrides=[*TINY, f"train.shards={k}"]) for k in (1, 2)]
    rows = bench.alternated(specs, 3, 2, cpu, torch.float32)
    assert len(order) == 6 and order[0::2] == [order[0]] * 3 and order[1::2] == [order[1]] * 3 and order[0] is not order[1]
    assert [r["config"] for r in rows] == ["demo", "demo"] and all(r["img_s"] > 0 and r["pct"] > 0 for r in rows)
    assert order[1].step.shards is not None and order[0].step.shards is None
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--alternate", "2", "--breakdown"])
    with pytest.raises(SystemExit):
        bench.main()


def test_train_step_benchmark_breakdown_splits_the_step_by_class_of_op(one_torch_thread):
    """benchmarks/train_step.py --breakdown on the demo's config (tiny): the profiled step's time split into
    convolutions, matmuls, attention and everything else, which add up to the step; the step without the
    rest is the step's time less "other". With shards the ops of the shards' threads are profiled too, the
    FLOPs are those of the same step without shards, and a timeline of the sharded step follows."""
    import torch
    bench = repo_script("benchmarks/train_step.py")
    rows = {k: bench.run("demo", "eager", 8, 1, 0, torch.device("cpu"), False, [*TINY, f"train.shards={k}"], by_op=True)
            for k in (1, 2)}
    for row in rows.values():
        ops = {o["op"]: o for o in row["ops"]}
        assert list(ops) == ["convolution", "matmul", "attention", "other", "step", "step - other"]
        assert ops["step"]["ms"] == pytest.approx(sum(ops[c]["ms"] for c in bench.OP_CLASSES))
        assert ops["step - other"]["ms"] == pytest.approx(ops["step"]["ms"] - ops["other"]["ms"])
        assert all(ops[c]["ms"] > 0 and ops[c]["gflop"] > 0 for c in ("convolution", "matmul", "attention"))
    assert [o["gflop"] for o in rows[1]["ops"]] == [o["gflop"] for o in rows[2]["ops"]]
    assert rows[1]["timeline"] == []
    timeline = {t["part"]: t["ms"] for t in rows[2]["timeline"]}
    assert list(timeline) == ["before the shards", "until all have started", "shard 0", "shard 1",
                              "the slowest, after the first", "after the last (sum, merge)", "the rest of the step", "step"]
    assert all(ms >= 0 for ms in timeline.values()) and timeline["step"] >= max(timeline["shard 0"], timeline["shard 1"]) > 0


def test_attention_threads_benchmark_times_the_shapes_the_model_runs(tmp_path):
    """benchmarks/attention_threads.py on the demo's config (tiny): the attention shapes one forward pass
    runs, read off the model (self-attention over the 8x8 map's 64 pixels, cross-attention to the 4 units'
    tokens, each once per transformer), then per shape its times on 1 and 2 threads and one rank's share."""
    import subprocess
    import sys
    bench = repo_script("benchmarks/attention_threads.py")
    shapes = bench.attention_shapes("demo", TINY, 4)
    assert set(shapes) == {(4, 2, 64, 64, 8), (4, 2, 64, 4, 8)} and len(set(shapes.values())) == 1
    out = subprocess.run([sys.executable, str(bench.__file__), "--config", "demo", "--set", *TINY, "--batch", "4",
                          "--calls", "2"], capture_output=True, text=True, check=True, timeout=300).stdout
    rows = re.findall(r"^4, 2, 64, (64|4), 8 +(\d+)( +\d+\.\d{2,3}){6}$", out, re.M)
    assert [row[0] for row in rows] == ["64", "4"] and {int(row[1]) for row in rows} == set(shapes.values())


def test_core_contention_benchmark_times_each_workload_alone_and_beside_a_partner():
    """benchmarks/core_contention.py on the demo's config (tiny): the step (and a memory-bound copy) timed
    alone, beside a thread of the same process (its own passes and the partner's) and beside a process,
    with the slowdowns against alone; bad counts and a config that does not load are refused before any work."""
    import subprocess
    import sys
    script = repo_script("benchmarks/core_contention.py").__file__
    out = subprocess.run([sys.executable, script, "--config", "demo", "--set", *TINY, "method.cache_latents=true",
                          "--batch", "4", "--held", "--workloads", "copy", "step", "--rounds", "1", "--passes", "2"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    rows = re.findall(r"^(copy|step, batch 4, held) +((?:\d+\.\d +){4})((?:\d+\.\d\dx *){3})$", out, re.M)
    assert [row[0] for row in rows] == ["copy", "step, batch 4, held"]
    for _, times, slowdowns in rows:
        alone, thread, partner, process = map(float, times.split())
        assert alone > 0 and [float(s) for s in slowdowns.replace("x", " ").split()] == pytest.approx(
            [thread / alone, partner / alone, process / alone], rel=0.1)  # from the printed, rounded times
    for args, said in ((["--passes", "0"], "--passes"), (["--config", "nope.yaml"], "nope.yaml: no such config file")):
        bad = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
        assert bad.returncode == 2 and said in bad.stderr.splitlines()[-1] and not bad.stdout
