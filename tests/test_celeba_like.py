"""The CelebA-layout synthetic set: the real CelebA loader reads it, its attributes are the scene's,
TAD finds them in codes that hold the factors, and a CelebA-type run trains and is scored by TAD."""

import csv
import json

import numpy as np
import pytest

from disdis.cli import main
from disdis.data import open_dataset
from disdis.data.celeba_like import ATTRIBUTES, scene_attributes
from disdis.errors import DataError
from disdis.metrics import tad


@pytest.fixture(scope="module")
def celeba_like(tmp_path_factory):
    out = tmp_path_factory.mktemp("celeba") / "set"
    assert main(["data", "make", "celeba-like", "--out", str(out), "--count", "240", "--seed", "1"]) == 0
    return out


def test_the_celeba_loader_reads_it_and_its_attributes_are_the_scenes(celeba_like):
    data = open_dataset(celeba_like, resolution=64)
    assert data.kind == "celeba" and len(data) == 240 and data.attribute_names == list(ATTRIBUTES)
    images = data.images(np.arange(3))
    assert images.shape == (3, 64, 64, 3) and images.std() > 10  # the 148-px crop of a scene, not a blank frame
    with open(celeba_like / "scene_factors.csv") as f:
        factors = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])
    attrs = data.attributes(np.arange(240))
    assert np.array_equal(attrs, scene_attributes(factors)) and 0.1 < attrs.mean() < 0.6
    # the true factors as codes: every attribute is captured; random codes capture none
    assert tad(factors.astype(float), attrs)["num_attributes_captured"] == len(ATTRIBUTES)
    assert tad(np.random.default_rng(0).normal(size=(240, 6)), attrs)["num_attributes_captured"] == 0
    with pytest.raises(DataError, match="already exists"):
        from disdis.data.celeba_like import write_celeba_like
        write_celeba_like(str(celeba_like), count=4)


def test_a_celeba_run_trains_and_is_scored_by_tad_and_fid(celeba_like, tmp_path, one_torch_thread, monkeypatch, capsys):
    run = tmp_path / "run"
    tiny = [f"data.path={celeba_like}", f"run_dir={run}", "method.first_stage.base_channels=8", "method.first_stage.channel_mult=[1,2]",
            "method.first_stage.num_res_blocks=1", "method.first_stage.codebook_size=32", "data.resolution=16",
            "method.first_stage_train.total_kimg=0.064", "method.first_stage_train.batch_size=32", "method.first_stage_train.device=cpu",
            "method.first_stage_train.num_workers=0", "method.first_stage_train.bf16=false", "method.units.num_units=4", "method.units.token_dim=8",
            "method.units.extractor_width=4", "method.units.fc_hidden=[16]", "method.units.mlp_hidden=[8]", "method.units.resolution=16",
            "method.unet.resolution=8", "method.unet.base_channels=8", "method.unet.channel_mult=[1,2]", "method.unet.num_res_blocks=1",
            "method.unet.attention_resolutions=[2]", "method.unet.num_heads=2", "method.unet.context_dim=8", "method.anchoring.refit_images=64",
            "method.anchoring.refit_unit=kimg", "method.anchoring.refit_every=0.064", "train.total_kimg=0.128", "train.batch_size=32",
            "train.device=cpu", "train.num_workers=0", "train.bf16=false", "train.channels_last=false",
            "train.checkpoint_every_kimg=0.064", "train.log_every_kimg=0.064", "eval.batch_size=64", "method.diffusion.ddim_steps=2"]
    assert main(["train", "celeba", *tiny]) == 0
    monkeypatch.delenv("DISDIS_INCEPTION_WEIGHTS", raising=False)
    assert main(["evaluate", str(run)]) == 0
    assert "FID skipped: no Inception weights" in capsys.readouterr().err
    result = json.loads((run / "metrics.json").read_text())
    assert set(result["metrics"]) == {"tad"} and set(result["metrics"]["tad"]) == {"tad", "num_attributes_captured"}
    assert result["metrics"]["tad"]["tad"] >= 0 and "published" in result["protocol"]["tad_auroc"]
    # with local weights (here an untrained network's): FID of 16 generated against 16 training images
    import torch
    from safetensors.torch import save_file
    from disdis.metrics.fid import InceptionFeatures
    torch.manual_seed(0)
    save_file(InceptionFeatures().state_dict(), str(tmp_path / "inception.safetensors"))
    monkeypatch.setenv("DISDIS_INCEPTION_WEIGHTS", str(tmp_path / "inception.safetensors"))
    assert main(["evaluate", str(run), "eval.fid_images=16", "eval.batch_size=8"]) == 0
    result = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(result["metrics"]["fid"]["fid"]) and result["metrics"]["fid"]["fid"] >= 0
    assert result["protocol"]["fid_images"] == 16
    assert main(["evaluate", str(run), f"eval.inception_weights={tmp_path / 'missing.pth'}"]) != 0
    assert "Inception weights file not found" in capsys.readouterr().err
