"""Packaged presets: found by name outside a checkout, and the dSprites preset (one image channel) end to end."""

import json

import numpy as np
import pytest

from disdis import presets
from disdis.cli import main
from disdis.errors import ConfigError
from disdis.run_config import load_run_config


def test_presets_are_found_by_name_and_file_paths_still_work(tmp_path):
    assert {"demo", "dsprites", "shapes3d", "encdiff"} <= set(presets.names())
    assert presets.resolve("shapes3d") == presets.resolve("shapes3d.yaml")
    assert presets.resolve("shapes3d").parent.name == "presets"
    assert load_run_config("dsprites", ["data.path=x"]).method.units.in_channels == 1
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\ndata: {path: x}\n")
    assert load_run_config(mine).name == "mine"
    with pytest.raises(ConfigError, match="nosuch: no such config file, and not a preset"):
        load_run_config("nosuch")


def _sprite_grid(path):
    """A 1-channel factor grid of sprites: 3 shapes x 2 scales x 2 orientations x 4 x 4 positions (192)."""
    from disdis.data import write_grid_npz
    from disdis.data.base import canonical_factors
    from disdis.data.render_dsprites import FACTOR_NAMES, render_dsprites
    kept = [np.arange(3), np.array([0, 5]), np.array([0, 10]), np.array([2, 10, 20, 29]), np.array([2, 10, 20, 29])]
    sizes = [len(k) for k in kept]
    classes = canonical_factors(sizes)
    rows = np.stack([kept[k][classes[:, k]] for k in range(5)], axis=1)
    images = (render_dsprites(rows) * 255)[..., None]
    write_grid_npz(str(path), images=images, factor_sizes=sizes, factor_names=FACTOR_NAMES)


def test_dsprites_preset_trains_and_evaluates_one_channel_images(tmp_path, one_torch_thread):
    """The preset, shrunk to 16x16 and tiny networks: first stage, diffusion model, DyGA refits and
    the metrics all run on 1-channel images."""
    data = tmp_path / "sprites.npz"
    _sprite_grid(data)
    run = tmp_path / "run"
    tiny = [f"data.path={data}", "data.kind=null", "data.resolution=16", f"run_dir={run}",
            "method.first_stage.base_channels=8", "method.first_stage.channel_mult=[1,2]", "method.first_stage.num_res_blocks=1",
            "method.first_stage.codebook_size=32", "method.first_stage_train.total_kimg=0.064", "method.first_stage_train.batch_size=32",
            "method.first_stage_train.device=cpu", "method.first_stage_train.num_workers=0", "method.first_stage_train.bf16=false",
            "method.units.num_units=4", "method.units.token_dim=8", "method.units.extractor_width=4", "method.units.fc_hidden=[16]",
            "method.units.mlp_hidden=[8]", "method.units.resolution=16", "method.unet.resolution=8", "method.unet.base_channels=8",
            "method.unet.channel_mult=[1,2]", "method.unet.num_res_blocks=1", "method.unet.attention_resolutions=[2]", "method.unet.num_heads=2",
            "method.unet.context_dim=8", "method.anchoring.refit_images=64", "method.anchoring.refit_unit=kimg", "method.anchoring.refit_every=0.064", "train.total_kimg=0.128",
            "train.batch_size=32", "train.device=cpu", "train.num_workers=0", "train.bf16=false",
            "train.channels_last=false", "train.checkpoint_every_kimg=0.064", "train.log_every_kimg=0.064",
            "train.probe_images=64", "eval.batch_size=64", "method.diffusion.ddim_steps=2"]
    assert main(["train", "dsprites", *tiny]) == 0
    assert sorted(p.name for p in (run / "fits").iterdir())  # refitted on 1-channel tokens
    assert main(["evaluate", str(run), "eval.metrics=[dci,mig]", "eval.num_train=100", "eval.num_test=50"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["dci"]["disentanglement"] <= 1 and metrics["mig"]["discrete_mig"] >= 0


@pytest.mark.parametrize("preset, key", [("demo", "method.first_stage.in_channels"), ("beta_vae", "method.in_channels"),
                                         ("disdiff", "method.in_channels"), ("first_stage_vq_f4", "method.first_stage.in_channels")])
def test_one_channel_data_under_a_three_channel_preset_stops_with_the_key_to_set(tmp_path, capsys, preset, key):
    """Not a convolution's shape error after the run folder is made: one line, before any work."""
    data = tmp_path / "sprites.npz"
    _sprite_grid(data)
    assert main(["train", preset, f"data.path={data}", "data.kind=null", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"holds 1-channel images, the model takes 3 (set {key}=1)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_wheel_ships_every_preset(tmp_path):
    """`pip install .` outside a checkout gets the presets: they are package data of the wheel."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("disdis-*.whl")
    shipped = {Path(n).stem for n in zipfile.ZipFile(wheel).namelist() if n.startswith("disdis/presets/") and n.endswith(".yaml")}
    assert shipped == set(presets.names())


def test_the_released_presets_use_the_released_batches_100k_steps_and_ema_decay():
    """The released configs train at batch 512 (Shapes3D, MPI3D, Cars3D) and 64 (CelebA:
    configs/latent-diffusion/celeba.yaml of the released code), each preset 100k steps with the
    released EMA decay 0.9999 per step."""
    for name, batch in {"shapes3d": 512, "mpi3d": 512, "cars3d": 512, "celeba": 64}.items():
        train = load_run_config(name, ["data.path=x"]).train
        assert train.batch_size == batch, name
        assert train.total_kimg * 1000 / batch == 100_000, name
        assert 0.5 ** (batch / (train.ema_halflife_kimg * 1000)) == pytest.approx(0.9999, abs=1e-8), name
