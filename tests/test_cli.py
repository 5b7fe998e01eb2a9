"""The command line as users start it: `python -m disdis` (what `torchrun -m disdis` runs), `disdis
train`'s options, and the way an interrupted run says to continue."""

import signal
import subprocess
import sys

import pytest
import torch

from disdis.cli import main
from train_standins import interrupted, tiny_run_config, write_yaml


def test_module_entry_point_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "disdis", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "train", "evaluate", "interchange", "demo"):
        assert command in out.stdout


def test_setup_script_prints_its_usage_and_refuses_unknown_arguments_before_any_work():
    from pathlib import Path
    setup = Path(__file__).resolve().parent.parent / "scripts" / "setup"
    for flag in ("--help", "-h"):
        done = subprocess.run(["bash", str(setup), flag], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("usage: scripts/setup [--browser]") and not done.stderr
        assert "--browser" in done.stdout.split("\n\n", 2)[2]
    for args in (["--bogus"], ["--browser", "x"]):
        done = subprocess.run(["bash", str(setup), *args], capture_output=True, text=True)
        assert done.returncode == 2 and "see scripts/setup --help" in done.stderr and not done.stdout


def test_the_stop_message_is_retold_with_the_way_to_continue_the_whole_run():
    from disdis.train.loop import TrainingInterrupted
    head = "stopped by SIGINT after step 7; saved runs/int/first_stage/checkpoints/ckpt-000000007.safetensors"
    loop = TrainingInterrupted(head, signal.SIGINT, "--resume runs/int/first_stage")
    assert str(loop) == f"{head}; continue with --resume runs/int/first_stage"
    err = loop.continued_with("--resume runs/int")
    assert isinstance(err, TrainingInterrupted) and err.exit_code == 130 and str(err) == f"{head}; continue with --resume runs/int"
    assert str(loop.continued_with("`disdis demo --out runs/d`")) == f"{head}; continue with `disdis demo --out runs/d`"


def test_ctrl_c_in_the_runs_own_first_stage_names_the_run_to_resume(tmp_path, shapes3d_grid_npz):
    """Ctrl-C while a run trains its own first stage: the hint names the run (whose resume finishes the
    first stage, then trains the rest), not RUN/first_stage (whose resume would finish that stage only)."""
    run = tmp_path / "int"
    cfg = tiny_run_config(shapes3d_grid_npz, run,
                          first_stage={"kind": "vq", "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                       "codebook_size": 32},
                          unet={"resolution": 8},
                          first_stage_train={"batch_size": 16, "total_kimg": 16, "checkpoint_every_kimg": 16,
                                             "log_every_kimg": 0.016, "num_workers": 0, "device": "cpu"},
                          train={"probe_images": 0})
    config = write_yaml(tmp_path / "vq.yaml", cfg)
    code, err = interrupted(["train", config], run / "first_stage" / "logs" / "train.csv", 3)  # header + 2 steps
    assert code == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "first_stage/checkpoints/ckpt-" in last and last.endswith(f"; continue with --resume {run}"), last
    assert not (run / "checkpoints").exists()  # stopped in the first stage


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_threads_sets_torchs_threads_and_refuses_less_than_one(tmp_path, shapes3d_grid_npz, capsys, restore_threads):
    config = write_yaml(tmp_path / "t.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run"))
    for bad in ("0", "-2"):
        assert main(["train", config, "--threads", bad]) == 2
        err = capsys.readouterr().err
        assert err == f"disdis train: error: --threads: expected a positive integer, got {bad}\n"
    assert not (tmp_path / "run").exists()
    torch.set_num_threads(2)
    assert main(["train", config, "--threads", "1", "--print-config"]) == 0
    assert torch.get_num_threads() == 1 and "batch_size: 16" in capsys.readouterr().out
    assert "--threads N" in subprocess.run([sys.executable, "-m", "disdis", "train", "--help"], capture_output=True,
                                           text=True, check=True).stdout


def test_resuming_a_finished_run_keeps_its_recorded_final_loss(tmp_path, shapes3d_grid_npz, capsys, one_torch_thread):
    """`disdis train --resume RUN` of a finished run trains nothing and leaves status.json's final loss,
    the mean over the last log window (logs/train.csv's last row), as the run recorded it."""
    from disdis.rundir import RunDir
    from disdis.train.logger import read_csv_log
    run = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_run_config(shapes3d_grid_npz, run, train={"total_kimg": 0.16,
                                                                                           "probe_images": 0}))
    assert main(["train", config]) == 0
    recorded = RunDir(run).status()["final_loss"]
    assert recorded == read_csv_log(run / "logs/train.csv")[-1]["loss"]  # the last window's mean (steps 6-10)
    printed = capsys.readouterr().out
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished" in capsys.readouterr().err
    assert RunDir(run).status()["final_loss"] == recorded and f"final loss {recorded:.4f}" in printed
