"""End to end on the real (tiny) model: `disdis train`, loss falls, SIGKILL and resume, first stage."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from disdis.cli import main
from disdis.train.checkpoint import list_checkpoints, load_checkpoint
from disdis.rundir import RunDir
from disdis.train.logger import read_csv_log
from train_standins import interrupted, tiny_run_config, write_yaml


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_run_learns_and_fills_its_folder(tmp_path, shapes3d_grid_npz, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run",
                                                                train={"total_kimg": 0.64, "log_every_kimg": 0.16}))
    assert main(["train", config]) == 0
    run = tmp_path / "run"
    rows = read_csv_log(run / "logs/train.csv")
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]
    assert (run / "config.yaml").is_file() and "done: step 40" in capsys.readouterr().out
    assert [p.name for p in sorted((run / "fits").iterdir())][:2] == ["fit-000000005.safetensors", "fit-000000010.safetensors"]
    tensors, meta = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert meta["step"] == 40 and "model/anchor_state.means" in tensors and "ema/unet.out.2.weight" in tensors
    status = RunDir(run).status()
    assert (status["state"], status["step"], status["method"]) == ("finished", 40, "disentangled_diffusion")
    assert RunDir.of(list_checkpoints(run / "checkpoints")[-1]) == RunDir(run)
    assert RunDir(run).metrics == run / "metrics.json" and RunDir(run).fit(5) == run / "fits/fit-000000005.safetensors"


def test_a_run_records_its_data_path_absolute_and_is_read_from_any_folder(tmp_path, shapes3d_grid_npz, monkeypatch):
    """Data named relative to the folder a run starts in: the run's config records it absolute, so the run
    is resumed (with a relative path given again) and evaluated from another folder."""
    import shutil
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    (start / "data").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(shapes3d_grid_npz, start / "data/grid.npz")
    cfg = tiny_run_config("data/grid.npz", "run", train={"total_kimg": 0.16})
    monkeypatch.chdir(start)
    assert main(["train", write_yaml(tmp_path / "t.yaml", cfg)]) == 0
    from disdis.train.run import read_run_config
    assert read_run_config(start / "run").data.path == str(start / "data/grid.npz")
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(start / "run"), "train.total_kimg=0.32"]) == 0
    assert main(["evaluate", str(start / "run"), "eval.metrics=[mig]", "eval.num_train=100"]) == 0
    monkeypatch.chdir(start)  # a relative path given again on resume is recorded absolute as well
    assert main(["train", "--resume", "run", "data.path=data/grid.npz", "train.total_kimg=0.48"]) == 0
    assert read_run_config(start / "run").data.path == str(start / "data/grid.npz")


@pytest.mark.parametrize("channels_last, cache_latents, shards", [(False, False, 1), (True, True, 1), (False, True, 2)])
def test_killed_run_resumes_to_the_same_weights(tmp_path, shapes3d_grid_npz, channels_last, cache_latents, shards):
    total = 0.32  # 20 steps of 16; a checkpoint every 5 steps
    config = write_yaml(tmp_path / "tiny.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "killed",
                                                                train={"total_kimg": total, "channels_last": channels_last,
                                                                       "shards": shards},
                                                                method={"cache_latents": cache_latents},
                                                                unet={"dropout": 0.0 if shards > 1 else 0.1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "disdis.cli", "train", config], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / "killed/checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list_checkpoints(ckpts):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = [p.name for p in list_checkpoints(ckpts)]
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert "ckpt-000000020.safetensors" not in stopped_at

    assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    assert main(["train", config, f"run_dir={tmp_path / 'straight'}"]) == 0
    a, _ = load_checkpoint(tmp_path / "killed/checkpoints/ckpt-000000020.safetensors")
    b, _ = load_checkpoint(tmp_path / "straight/checkpoints/ckpt-000000020.safetensors")
    assert sorted(a) == sorted(b)
    diff = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()}
    assert max(diff.values()) == 0.0, {k: v for k, v in diff.items() if v}
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diffusion_run_trains_its_own_first_stage_then_resumes(tmp_path, shapes3d_grid_npz, capsys):
    """A VQ first stage (f=2) trained inside the run, then the diffusion model on its 8x8 latents."""
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run",
                          first_stage={"kind": "vq", "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                       "codebook_size": 32},
                          unet={"resolution": 8},
                          first_stage_train={"batch_size": 16, "total_kimg": 0.096, "checkpoint_every_kimg": 0.048,
                                             "log_every_kimg": 0.048, "num_workers": 0, "device": "cpu", "lr": 1e-3},
                          train={"total_kimg": 0.16})
    config = write_yaml(tmp_path / "vq.yaml", cfg)
    assert main(["train", config]) == 0
    run = tmp_path / "run"
    first_path = list_checkpoints(run / "first_stage/checkpoints")[-1]
    first = load_checkpoint(first_path)[0]
    second, meta = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    # the frozen first stage stays in its own run: recorded by reference (path inside the run, SHA-256
    # of its tensors), not copied into the model and the EMA; the latent scale it fitted is saved
    from disdis.train.checkpoint import read_digest
    assert meta["requires"] == {"first_stage": {"checkpoint": "first_stage/checkpoints/ckpt-000000006.safetensors",
                                                "sha256": read_digest(first_path)}}
    assert not any(k.startswith(("model/first_stage.", "ema/first_stage.")) for k in second)
    assert float(second["model/scaler.fitted"]) == 1.0
    from disdis.train.run import load_trained_model
    _, model, _ = load_trained_model(run)
    assert all(torch.equal(first[f"model/first_stage.{k}"], v) for k, v in model.first_stage.state_dict().items())
    # extending a finished run continues it (and the first stage is not retrained)
    assert main(["train", "--resume", str(run), "train.total_kimg=0.32"]) == 0
    assert list_checkpoints(run / "checkpoints")[-1].name == "ckpt-000000020.safetensors"
    assert list_checkpoints(run / "first_stage/checkpoints")[-1].name == "ckpt-000000006.safetensors"
    # a first stage saved by an older version (keys that have since moved) still loads
    import yaml
    old = yaml.safe_load((run / "first_stage/config.yaml").read_text())
    old["eval"]["ddim_steps"] = 4
    old["train"]["refit_every"] = 1.0
    (run / "first_stage/config.yaml").write_text(yaml.safe_dump(old))
    assert main(["interchange", str(run), "--targets", "2", "--units", "0", "--steps", "2"]) == 0
    # a first stage that changed (here: retrained from scratch) is refused, with the reason
    import shutil
    shutil.copy(list_checkpoints(run / "first_stage/checkpoints")[0], first_path)
    assert main(["evaluate", str(run)]) != 0
    assert "has changed since the run used it" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["method.unet.num_heads=3", "method.unet.skip_dropout=1.5", "method.units.num_units=0", "method.diffusion.ddim_steps=5000",
                                      "eval.metrics=[dcii]", "method.unet.attention_resolutions=[3]",
                                      "train.batch_size=512", "train.shards=2",  # shards: the U-Net's dropout 0.1
                                      "train.freeze_modules=[extractr]", "train.ema_modules=[nosuch]",
                                      "train.lr_scale={nosuch: 0.1}", "data.path=missing.npz",
                                      "method.first_stage.in_channels=1"])  # the data has 3
def test_rejected_settings_stop_before_any_work_and_leave_a_resumable_run(tmp_path, shapes3d_grid_npz, capsys, override):
    """A bad value stops `train` with one line before a folder is made or a stage trained; on
    --resume it leaves config.yaml as it was, so the run still resumes, evaluates and interchanges."""
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "bad", first_stage={"kind": "vq", "base_channels": 8,
                                                                            "channel_mult": [1], "num_res_blocks": 1})
    config = write_yaml(tmp_path / "tiny.yaml", cfg)
    assert main(["train", config, override]) != 0
    assert override.split("=")[0] in capsys.readouterr().err and not (tmp_path / "bad").exists()
    good = write_yaml(tmp_path / "good.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run",
                                                              train={"total_kimg": 0.16, "probe_images": 0}))
    assert main(["train", good]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert main(["train", "--resume", str(tmp_path / "run"), override]) != 0
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    assert main(["train", "--resume", str(tmp_path / "run"), "train.total_kimg=0.32"]) == 0


def test_resume_refuses_another_batch_size_and_reports_a_finished_run(tmp_path, shapes3d_grid_npz, capsys):
    config = write_yaml(tmp_path / "t.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run",
                                                             train={"total_kimg": 0.16, "probe_images": 0}))
    assert main(["train", config]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "train.batch_size=8", "train.total_kimg=0.32"]) != 0
    assert "train.batch_size: the run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "already finished (step 10 of 10)" in err and "final loss nan" not in out and "final loss 0." in out


def test_an_unreadable_newest_checkpoint_is_set_aside_not_kept_by_rotation(tmp_path, shapes3d_grid_npz, capsys):
    """The newest checkpoint is corrupt: resume falls back to the previous one and moves the corrupt
    file aside, so that rotation (keep 3) keeps the good ones and never the corrupt one."""
    config = write_yaml(tmp_path / "t.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run",
                                                             train={"total_kimg": 0.24, "probe_images": 0}))
    assert main(["train", config]) == 0
    ckpts = tmp_path / "run" / "checkpoints"
    newest = list_checkpoints(ckpts)[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    assert main(["train", "--resume", str(tmp_path / "run"), "train.total_kimg=0.48"]) == 0
    assert "moved to" in capsys.readouterr().err
    names = [p.name for p in list_checkpoints(ckpts)]
    assert names == ["ckpt-000000020.safetensors", "ckpt-000000025.safetensors", "ckpt-000000030.safetensors"]
    assert (ckpts / (newest.name + ".unreadable")).is_file()
    for path in list_checkpoints(ckpts):
        load_checkpoint(path)  # every kept checkpoint reads


def test_an_unreadable_newest_checkpoint_of_a_run_with_its_own_first_stage(tmp_path, shapes3d_grid_npz, capsys):
    """The fallback to the previous checkpoint also finds the first stage the run depends on (it is
    recorded in every checkpoint; reading it from the unreadable one left the frozen first stage out)."""
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run",
                          first_stage={"kind": "vq", "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                       "codebook_size": 32},
                          unet={"resolution": 8},
                          first_stage_train={"batch_size": 16, "total_kimg": 0.032, "checkpoint_every_kimg": 0.032,
                                             "log_every_kimg": 0.032, "num_workers": 0, "device": "cpu"},
                          train={"total_kimg": 0.16, "probe_images": 0})
    assert main(["train", write_yaml(tmp_path / "vq.yaml", cfg)]) == 0
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    newest.write_text("garbage")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "train.total_kimg=0.24"]) == 0
    assert "trying the previous checkpoint" in capsys.readouterr().err
    assert list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name == "ckpt-000000015.safetensors"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_the_run_resumes_exactly(tmp_path, shapes3d_grid_npz, sig):
    """SIGTERM or Ctrl-C between checkpoints: the run saves the step it finished, exits with 128 + the
    signal, and its resume ends with the weights of a run never stopped."""
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "stopped", train={"total_kimg": 0.32, "checkpoint_every_kimg": 0.32,
                                                                          "log_every_kimg": 0.016, "probe_images": 0})
    config = write_yaml(tmp_path / "tiny.yaml", cfg)
    code, err = interrupted(["train", config], tmp_path / "stopped" / "logs" / "train.csv", 4, sig)  # header + 3 steps
    assert code == 128 + sig, err[-2000:]
    saved = list_checkpoints(tmp_path / "stopped" / "checkpoints")
    assert len(saved) == 1 and saved[0].name != "ckpt-000000020.safetensors" and "continue with --resume" in err
    status = RunDir(tmp_path / "stopped").status()
    assert status["state"] == "failed" and f"stopped by {signal.Signals(sig).name}" in status["message"]
    assert main(["train", "--resume", str(tmp_path / "stopped")]) == 0
    assert RunDir(tmp_path / "stopped").status()["state"] == "finished"
    assert main(["train", config, f"run_dir={tmp_path / 'straight'}"]) == 0
    a, _ = load_checkpoint(tmp_path / "stopped/checkpoints/ckpt-000000020.safetensors")
    b, _ = load_checkpoint(tmp_path / "straight/checkpoints/ckpt-000000020.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_before_the_anchors_were_module_state_loads_and_resumes(tmp_path, shapes3d_grid_npz):
    """Older checkpoints kept the DyGA fit as anchors/* beside the weights: evaluating gives the same
    representation as the current layout, and the run resumes."""
    from disdis.anchoring import GaussianAnchors
    from disdis.train.checkpoint import save_checkpoint
    from disdis.train.run import load_trained_model
    config = write_yaml(tmp_path / "tiny.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run",
                                                                train={"total_kimg": 0.16, "probe_images": 0}))
    assert main(["train", config]) == 0
    path = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    _, now, _ = load_trained_model(tmp_path / "run")
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    expected = now.representation(x)["tokens"]
    tensors, meta = load_checkpoint(path)
    fit = GaussianAnchors.load(sorted((tmp_path / "run" / "fits").iterdir())[-1]).to_tensors()
    old = {k: v for k, v in tensors.items() if "anchor_state." not in k}
    old.update({f"anchors/{k}": v for k, v in fit.items()})
    save_checkpoint(path, old, meta)
    _, loaded, _ = load_trained_model(tmp_path / "run")
    assert torch.allclose(loaded.representation(x)["tokens"], expected, atol=1e-6)
    assert main(["train", "--resume", str(tmp_path / "run"), "train.total_kimg=0.32"]) == 0


def test_dependency_source_is_the_named_run_or_the_own_folder(tmp_path):
    from disdis.run_config import load_run_config
    from disdis.train.run import dependency_source
    cfg = load_run_config("demo", ["data.path=unused", f"run_dir={tmp_path / 'run'}"])
    assert dependency_source(cfg, "extractor") == tmp_path / "run" / "extractor"
    named = tmp_path / "ae" / "checkpoints" / "ckpt-000100.safetensors"
    cfg.requires["extractor"] = str(named)
    assert dependency_source(cfg, "extractor") == Path(named)
