"""Two processes with DDP on the CPU (gloo): both ranks end with the same weights and anchors, across a
hold of the extractor and across the warm start's hold and reopening; the benchmark of DDP processes
against threads runs."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from train_standins import tiny_run_config, write_yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from disdis.models import build_model
    from disdis.run_config import run_config_from_dict
    from disdis.train import distributed, train
    from disdis.train.run import open_training_data

    cfg = run_config_from_dict(cfg_dict)
    distributed.init("cpu")
    torch.manual_seed(cfg.train.seed + rank)  # different initial weights per rank: DDP must sync them
    model = build_model(cfg)
    train(model, open_training_data(cfg), cfg.train, cfg.run_dir)
    state = {f"param/{k}": v.detach() for k, v in model.named_parameters()}
    state.update({f"buffer/{k}": v for k, v in model.named_buffers()})
    # evaluation's gather: shards come back in canonical order on every rank
    mine = torch.tensor(list(distributed.shard(7)), dtype=torch.float32).view(-1, 1) * 10  # rank 0: 0..3, rank 1: 4..6
    state["gathered"] = distributed.gather_shards(mine, 7)
    state["broadcast"] = distributed.broadcast_tensors({"x": torch.arange(3) + 100} if rank == 0 else None)["x"]
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    distributed.shutdown()


def test_two_ranks_hold_the_same_weights_and_anchors(tmp_path, shapes3d_grid_npz):
    """Also across a hold of the extractor (steps 0-4; the DDP wrapper built anew at its start and end)."""
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run", train={  # 10 steps, 2 fits
        "total_kimg": 0.16, "freeze_modules": ["extractor"], "freeze_kimg": 0.08})
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert sorted(r0) == sorted(r1) and r0["buffer/anchor_state.fitted"] == 1
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    assert torch.equal(r0["gathered"], torch.arange(7.0).view(7, 1) * 10)
    assert torch.equal(r1["broadcast"], torch.arange(3) + 100)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt-000000005.safetensors",
                                                                       "ckpt-000000010.safetensors"]
    assert sorted(p.name for p in (run / "fits").iterdir()) == ["fit-000000005.safetensors", "fit-000000010.safetensors"]
    from disdis.train.logger import read_csv_log
    assert [row["step"] for row in read_csv_log(run / "logs/train.csv")] == [5, 10]


def test_ddp_step_benchmark_alternates_threads_and_processes(tmp_path, shapes3d_grid_npz):
    """benchmarks/ddp_step.py: one process of 2 threads against 2 DDP processes of 1 thread, alternated,
    each pair's ratio and their median, with the frozen modules held too; ``--by-op`` then the ops where the
    threads lose against one rank's share, held and not, with all ops together."""
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run", train={"freeze_modules": ["extractor"], "freeze_kimg": 1})
    config = write_yaml(tmp_path / "tiny.yaml", cfg)
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "ddp_step.py"
    out = subprocess.run([sys.executable, str(script), "--config", str(config), "--batch", "4", "--steps", "1",
                          "--warmup", "1", "--repeats", "2", "--held", "--by-op", "3"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    assert len(re.findall(r"^(held )?pair \d .* x\d+\.\d\d$", out, re.M)) == 4
    assert re.search(r"^median DDP / threads: x\d+\.\d\d$", out, re.M)
    assert re.search(r"^held median DDP / threads: x\d+\.\d\d$", out, re.M)
    tables = out.split("per op, ms per step: 2 threads at batch 4 against one rank's share (1 thread, batch 2")[1:]
    assert len(tables) == 2 and out.count("\nheld: per op") == 1
    for table in tables:  # three ops, then all of them: their times and the ratio
        rows = re.findall(r"^(\S.*?) +(\d+\.\d\d) +(\d+\.\d\d) +(\d+\.\d\d|inf)$", table, re.M)
        assert len(rows) == 4 and rows[-1][0] == "all ops"
        assert float(rows[-1][1]) >= max(float(row[1]) for row in rows[:3])


def test_two_ranks_hold_the_same_autoencoder_across_its_hold_and_reopening(tmp_path, shapes3d_grid_npz):
    """The extractor warm start's autoencoder under DDP: the hold gathers the code's components and draws
    the extractor and decoder anew (``reopen: all``) on every rank alike, so the ranks end equal."""
    units = {"num_units": 4, "token_dim": 8, "extractor_width": 4, "fc_hidden": [16], "mlp_hidden": [8, 8]}
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run", train={"total_kimg": 0.32, "checkpoint_every_kimg": 0.16})
    cfg["method"] = {"name": "autoencoder", "units": units, "loss": {
        "beta": 2.0, "beta_end": 1.0, "gradient_ramp_kimg": [0.16, 0.32], "hold_weight": 3.0, "gather_units": 2,
        "reopen": "all"}}
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert r0["buffer/hold_taken"] and sorted(r0) == sorted(r1)
    # parameters; BatchNorm's running statistics are each rank's own after the last step (rank 0's are saved)
    differ = [key for key in r0 if key.startswith("param/") and not torch.equal(r0[key], r1[key])]
    assert not differ, differ
