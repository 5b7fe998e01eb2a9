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
    assert (cfg.method.units.num_units, cfg.method.units.token_dim, cfg.method.unet.skip_dropout, cfg.method.anchoring.enabled) == (20, 32, 0.2, True)
    assert (cfg.method.anchoring.refit_every, cfg.method.anchoring.refit_unit) == (1, "epochs")
    assert load_run_config(CONFIGS / "celeba.yaml", ["data.path=x"]).train.batch_size == 64
    assert load_run_config(CONFIGS / "cars3d.yaml", ["data.path=x"]).method.anchoring.refit_every == 5


@pytest.mark.parametrize("overrides, message", [
    (["method.unet.resolution=8"], "method.unet.resolution: 8 does not match the latent size 16"),
    (["method.units.resolution=32"], "method.units.resolution: 32 differs from data.resolution 16"),
    (["method.unet.context_dim=4"], "method.unet.context_dim: 4 differs from method.units.token_dim 8"),
    (["method.unet.context_tokens=3"], r"method.unet.context_tokens: expected 0 or method.units.num_units \(4\), got 3"),
    (["method.unit_decorrelation=-1"], "method.unit_decorrelation: expected >= 0, got -1"),
    (["method.unit_independence=-0.5"], "method.unit_independence: expected >= 0, got -0.5"),
    (["method.unet.skip_dropout=1.5"], r"method.unet.skip_dropout: expected in \[0, 1\)"),
    (["data.path="], "data.path: required"),
    (["method.name=first_stage"], "unknown key 'method.anchoring' \\(known in this section: first_stage, name\\)"),
    (["method.name=nope"], "method.name: unknown method 'nope'"),
    (["requires.unet=somewhere"], "requires.unet: disentangled_diffusion depends on no 'unet'"),
    (["requires.first_stage=somewhere"], r"requires.first_stage: this disentangled_diffusion configuration builds "
                                         r"on no first_stage \(it builds on: nothing\)"),  # pixel space
    (["requires.extractor=somewhere"], "requires.extractor: this disentangled_diffusion configuration builds on no"),
    (["method.anchoring.refit_unit=steps"], "method.anchoring.refit_unit: expected one of 'epochs', 'kimg'"),
    (["train.refit_every=2"], "train.refit_every: this setting is now method.anchoring.refit_every"),
    (["units.num_units=2"], "units.num_units: this setting is now method.units.num_units"),
    (["first_stage_run=x"], "first_stage_run: this setting is now requires.first_stage"),
    (["stage=first_stage"], "stage: this setting is now method.name"),
    (["model=first_stage"], "model: this setting is now method.name$"),
    (["model.x=1"], "model.x: this setting is now method.x$"),  # not method.name.x
    (["units.num_units.x=1"], "units.num_units.x: this setting is now method.units.num_units.x$"),
    (["stage.x=1"], r"stage.x: stage was a single setting, now method.name; it has no 'x' \(give method.name=...\)"),
    (["train.refit_every.x=1"], "train.refit_every was a single setting, now method.anchoring.refit_every"),
    (["data.kind=foo"], "data.kind: unknown dataset kind 'foo'; expected one of shapes3d, dsprites"),
    (["data.kind=celeba-like"], "a celeba-like folder is read as celeba"),
    (["data.resolution=0"], "data.resolution: expected a positive number of pixels"),
    (["train.batch_size=0"], "train.batch_size"),
])
def test_mismatched_sections(tmp_path, overrides, message):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config("data.npz", tmp_path / "run"))
    with pytest.raises(ConfigError, match=message):
        load_run_config(path, overrides)


def test_command_line_errors_are_one_line(tmp_path, capsys, shapes3d_grid_npz):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config(shapes3d_grid_npz, tmp_path / "run"))
    assert main(["train", path, "method.unet.resolution=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("disdis train: error: method.unet.resolution")
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train"]) == 2
    # a run folder that already holds a run is not overwritten
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    (tmp_path / "run/checkpoints/ckpt-000000001.safetensors").write_bytes(b"x")
    assert main(["train", path]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_config_file_with_keys_that_moved_still_loads(tmp_path):
    """Run folders of older versions resume: their method's sections at the top level (with stage,
    model, first_stage_run), train.refit_* and eval.ddim_steps are read in their new places
    (method.anchoring.refit_*, method.diffusion.ddim_steps, requires.first_stage)."""
    old = tmp_path / "config.yaml"
    old.write_text("data: {path: x}\nstage: diffusion\nmodel: disentangled_diffusion\nfirst_stage_run: fs\n"
                   "train: {refit_every: 3, refit_unit: kimg, batch_size: 8}\nunits: {num_units: 5}\n"
                   "first_stage_train: {refit_every: 1, batch_size: 4}\neval: {ddim_steps: 7}\n")
    cfg = load_run_config(old)
    assert (cfg.method.anchoring.refit_every, cfg.method.anchoring.refit_unit, cfg.train.batch_size) == (3, "kimg", 8)
    assert cfg.method.diffusion.ddim_steps == 7 and cfg.method.units.num_units == 5
    assert cfg.method.first_stage_train.batch_size == 4 and cfg.requires == {"first_stage": "fs"}
    with pytest.raises(ConfigError, match="eval.ddim_steps: this setting is now method.diffusion.ddim_steps"):
        load_run_config(old, ["eval.ddim_steps=3"])
    first = tmp_path / "first.yaml"  # an old first-stage run saved every section; only its autoencoder counts
    first.write_text("data: {path: x}\nstage: first_stage\nfirst_stage: {codebook_size: 16}\nunits: {num_units: 5}\n")
    cfg = load_run_config(first)
    assert cfg.method.name == "first_stage" and cfg.method.first_stage.codebook_size == 16


def test_derived_sizes_follow_the_first_stage_tokens_and_data(tmp_path):
    """The U-Net's channels and size come from the first stage, its context from the tokens and the
    extractor's input from the data, unless written (then they must agree)."""
    data = {"data": {"path": "x", "resolution": 32},
            "method": {"first_stage": {"in_channels": 1, "latent_channels": 4, "channel_mult": [1, 2]},
                       "units": {"token_dim": 12}}}
    cfg = load_run_config(write_yaml(tmp_path / "c.yaml", data))
    unet, units = cfg.method.unet, cfg.method.units
    assert (unet.in_channels, unet.out_channels, unet.resolution, unet.context_dim) == (4, 4, 16, 12)
    assert (units.in_channels, units.resolution) == (1, 32)
    with pytest.raises(ConfigError, match="method.unet.in_channels: 3 differs"):
        load_run_config(tmp_path / "c.yaml", ["method.unet.in_channels=3"])


def test_a_preset_holds_only_what_differs_from_its_base(tmp_path):
    """``base:`` lays a config over a preset section by section; mpi3d is shapes3d on other data."""
    shapes, mpi = (load_run_config(name, ["data.path=x"]) for name in ("shapes3d", "mpi3d"))
    assert mpi.method.units == shapes.method.units and mpi.train == shapes.train
    assert (mpi.data.kind, mpi.method.anchoring.refit_images) == ("mpi3d", 100000)
    mine = write_yaml(tmp_path / "mine.yaml", {"base": "demo", "train": {"total_kimg": 4}})
    cfg = load_run_config(mine, ["data.path=x"])
    assert cfg.train.total_kimg == 4 and cfg.train.batch_size == 128 and cfg.method.units.num_units == 10
    assert cfg.train.lr_scale == {"extractor": 0.1}  # a mapping value merges key by key; an empty one clears it
    cleared = write_yaml(tmp_path / "cleared.yaml", {"base": "demo", "train": {"lr_scale": {}, "group_eps": {"unet": 1e-6}}})
    cfg = load_run_config(cleared, ["data.path=x"])
    assert cfg.train.lr_scale == {} and cfg.train.group_eps == {"unet": 1e-6}
    merged = write_yaml(tmp_path / "merged.yaml", {"base": "demo", "train": {"lr_scale": {"unet": 0.5}}})
    assert load_run_config(merged, ["data.path=x"]).train.lr_scale == {"extractor": 0.1, "unet": 0.5}
    assert load_run_config("demo_disdiff", ["data.path=x"]).train.lr_scale == {}  # DisDiff has no extractor
    loop = write_yaml(tmp_path / "loop.yaml", {"base": str(tmp_path / "loop.yaml")})
    with pytest.raises(ConfigError, match="base: expected the name of another preset"):
        load_run_config(loop, ["data.path=x"])


def test_print_config_shows_every_setting(capsys):
    assert main(["train", "encdiff", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "token_activation: elu" in out and "context_dim: 16" in out and "requires: {}" in out


def test_print_config_checks_the_config_but_not_the_data(capsys):
    """--print-config refuses what a run would refuse in its settings (data.kind included), and needs
    no data.path (nor opens one)."""
    for bad, message in ((["data.kind=foo"], "data.kind: unknown dataset kind 'foo'"),
                         (["data.resolution=-1"], "data.resolution: expected a positive number"),
                         (["requires.unet=x"], "requires.unet: disentangled_diffusion depends on no 'unet'"),
                         (["data.resolution=32", "method.units.resolution=64"], "method.units.resolution")):
        assert main(["train", "encdiff", "--print-config", *bad]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("disdis train: error: " + message), err
    assert main(["train", "encdiff", "--print-config", "data.kind=grid", "data.path=nowhere.npz"]) == 0
    assert load_run_config("encdiff", ["data.kind=grid"], check=False).data.kind == "grid"
    with pytest.raises(ConfigError, match="data.path: required"):
        load_run_config("encdiff", ["data.kind=grid"])


def test_data_of_another_kind_or_size_is_refused_before_any_work(tmp_path, capsys, shapes3d_grid_npz):
    """A preset's data.kind names the released file; a grid npz given to it says so (issue: it said
    "not a readable HDF5 file"), and then a data.resolution above the file's names the key."""
    run = tmp_path / "run"

    def refused(*overrides):
        assert main(["train", "beta_vae", f"data.path={shapes3d_grid_npz}", f"run_dir={run}", *overrides]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and not run.exists(), err
        return err

    err = refused()
    assert "shapes3d_small.npz: an .npz factor grid, but data.kind is shapes3d (the released HDF5 file" in err
    assert "give data.kind=null to infer the kind from the file" in err
    for kind in ("grid", "null"):
        err = refused(f"data.kind={kind}")
        assert ("error: data.resolution: 64 is larger than the native 16 px of " in err
                and "(it must divide it: 16, 8, 4, 2, 1)" in err), err
    err = refused(f"data.path={tmp_path}", "data.kind=grid")
    assert f"{tmp_path}: a folder, not a factor-grid .npz file (data.kind is grid)" in err


def test_a_run_is_named_by_its_folder_or_a_checkpoint_not_its_config(tmp_path, capsys):
    from disdis.errors import DisdisError
    from disdis.rundir import RunDir
    run = tmp_path / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {path: x}\n")
    (run / "checkpoints/ckpt-000000001.safetensors").write_bytes(b"x")
    assert RunDir.of(run).path == run and RunDir.of(run / "checkpoints/ckpt-000000001.safetensors").path == run
    with pytest.raises(DisdisError, match=f"^{run}/config.yaml: give the run folder \\({run}\\), not its config.yaml$"):
        RunDir.of(run / "config.yaml")
    assert main(["evaluate", str(run / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"give the run folder ({run}), not its config.yaml" in err, err
    assert "no config.yaml" not in err
