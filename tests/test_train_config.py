"""Run configs: the shipped configs load; mismatched sections and bad commands fail with one line."""

from pathlib import Path

import pytest

from disdis.cli import main
from disdis.errors import ConfigError
from disdis.run_config import load_run_config
from train_standins import tiny_run_config, write_yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["shapes3d", "mpi3d", "cars3d", "celeba", "first_stage_vq_f4", "demo"])
def test_shipped_configs_load(name):
    cfg = load_run_config(CONFIGS / f"{name}.yaml", ["data.path=somewhere"])
    assert cfg.train.lr == 1e-4 or name == "demo"


def test_released_hyperparameters():
    cfg = load_run_config(CONFIGS / "shapes3d.yaml", ["data.path=x"])
    assert (cfg.train.batch_size, cfg.train.total_kimg * 1000 / cfg.train.batch_size) == (512, 100000)
    assert (cfg.units.num_units, cfg.units.token_dim, cfg.unet.skip_dropout, cfg.anchoring.enabled) == (20, 32, 0.2, True)
    assert (cfg.anchoring.refit_every, cfg.anchoring.refit_unit) == (1, "epochs")
    assert load_run_config(CONFIGS / "celeba.yaml", ["data.path=x"]).train.batch_size == 64
    assert load_run_config(CONFIGS / "cars3d.yaml", ["data.path=x"]).anchoring.refit_every == 5


@pytest.mark.parametrize("overrides, message", [
    (["unet.resolution=8"], "unet.resolution: 8 does not match the latent size 16"),
    (["units.resolution=32"], "units.resolution: 32 differs from data.resolution 16"),
    (["unet.context_dim=4"], "unet.context_dim: 4 differs from units.token_dim 8"),
    (["unet.context_tokens=3"], r"unet.context_tokens: expected 0 or units.num_units \(4\), got 3"),
    (["data.path="], "data.path: required"),
    (["stage=first_stage"], "identity"),
    (["anchoring.refit_unit=steps"], "anchoring.refit_unit: expected one of 'epochs', 'kimg'"),
    (["train.refit_every=2"], "train.refit_every: this setting is now anchoring.refit_every"),
    (["train.batch_size=0"], "train.batch_size"),
])
def test_mismatched_sections(tmp_path, overrides, message):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config("data.npz", tmp_path / "run"))
    with pytest.raises(ConfigError, match=message):
        load_run_config(path, overrides)


def test_command_line_errors_are_one_line(tmp_path, capsys, shapes3d_grid_npz):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run"))
    assert main(["train", path, "unet.resolution=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("disdis train: error: unet.resolution")
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train"]) == 2
    # a run folder that already holds a run is not overwritten
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    (tmp_path / "run/checkpoints/ckpt-000000001.safetensors").write_bytes(b"x")
    assert main(["train", path]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_config_file_with_keys_that_moved_still_loads(tmp_path):
    """Run folders saved before train.refit_* and eval.ddim_steps moved (to anchoring.refit_* and
    diffusion.ddim_steps) resume: the file's keys are read in their new places."""
    old = tmp_path / "config.yaml"
    old.write_text("data: {path: x}\ntrain: {refit_every: 3, refit_unit: kimg, batch_size: 8}\n"
                   "first_stage_train: {refit_every: 1}\neval: {ddim_steps: 7}\n")
    cfg = load_run_config(old)
    assert (cfg.anchoring.refit_every, cfg.anchoring.refit_unit, cfg.train.batch_size) == (3, "kimg", 8)
    assert cfg.diffusion.ddim_steps == 7
    with pytest.raises(ConfigError, match="eval.ddim_steps: this setting is now diffusion.ddim_steps"):
        load_run_config(old, ["eval.ddim_steps=3"])
