"""DisDiff: its field weights against a float64 computation, the disentangling logits' direction, and
the chain first stage -> unconditional LDM -> DisDiff trained by one command, resumed exactly,
loaded recursively and evaluated."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from disdis.cli import main
from disdis.diffusion import DiffusionConfig, NoiseSchedule
from disdis.models.disdiff import disentangling_logits, field_weights
from disdis.train.checkpoint import list_checkpoints, load_checkpoint


def test_field_weights_match_their_definitions():
    schedule = NoiseSchedule.from_config(DiffusionConfig())
    betas = schedule.betas.double().numpy()
    abar = np.cumprod(1 - betas)
    t = torch.tensor([0, 1, 500, 999])
    c, b = field_weights(schedule, t)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    ts = t.numpy()
    assert np.allclose(c.numpy(), np.sqrt(1 - betas[ts]) * (1 - abar_prev[ts]) / np.sqrt(1 - abar[ts]))
    assert np.allclose(b.numpy(), (1 - abar[ts]) / np.sqrt(abar[ts]))
    assert float(c[0]) == 0.0  # no field at t = 0


def test_the_disentangling_loss_is_low_when_only_the_chosen_unit_changes():
    torch.manual_seed(0)
    z = torch.randn(1, 4, 8)
    z_hat = z + 0.5 * torch.randn(1, 4, 8)  # the unconditional prediction's units, off everywhere
    moved = z_hat.clone()
    moved[0, 2] = z[0, 2]                    # unit 2's field brings unit 2, and only it, back
    changed, diff = disentangling_logits(z, z_hat, moved)
    for logits in (changed, diff):
        losses = [F.cross_entropy(logits, torch.tensor([k])).item() for k in range(4)]
        assert int(np.argmin(losses)) == 2
    assert torch.allclose(diff[0, [0, 1, 3]], torch.zeros(3))


TINY = ["data.resolution=16", "method.encoder_width=8", "method.unit_dim=4", "method.num_units=3",
        "method.decoder.base_channels=8", "method.decoder.channel_mult=[1,2]", "method.decoder.attention_resolutions=[2]",
        "method.decoder.num_heads=2",
        "method.ldm.first_stage.base_channels=8", "method.ldm.first_stage.codebook_size=32",
        "method.ldm.unet.base_channels=8", "method.ldm.unet.channel_mult=[1,2]", "method.ldm.unet.attention_resolutions=[2]",
        "method.ldm.unet.num_heads=2", "method.ldm.unet.context_dim=8", "method.ldm.diffusion.ddim_steps=2",
        "method.ldm.first_stage_train.total_kimg=0.032", "method.ldm.first_stage_train.batch_size=16",
        "method.ldm.first_stage_train.checkpoint_every_kimg=0.032", "method.ldm_train.total_kimg=0.032",
        "method.ldm_train.batch_size=16", "method.ldm_train.checkpoint_every_kimg=0.032",
        "train.batch_size=16", "train.checkpoint_every_kimg=0.032", "train.log_every_kimg=0.032",
        "train.probe_images=64", "eval.batch_size=64"]


def _tiny_disdiff(seed: int = 0):
    """A fresh DisDiff of TINY's sizes, every weight random (a U-Net's output layer starts at zero)."""
    from disdis.models import build_model
    from disdis.run_config import load_run_config
    torch.manual_seed(seed)
    model = build_model(load_run_config("demo_disdiff", ["data.path=x", *TINY])).eval()
    for p in [*model.decoder.parameters(), *model.ldm.unet.parameters()]:
        p.data.normal_(0, 0.2)
    for p in model.encoder.parameters():  # units that differ between images
        p.data.normal_(0, 0.5)
    return model


def test_disdiff_generates_with_the_noise_prediction_its_loss_fits():
    """DDIM's eps(x_t, t | z) is eps_LDM(x_t, t) - c_t sum_k G(x_t, t, [z_k; e_k]): here each unit's field
    is a decoder call of its own (the model batches the N units into one call)."""
    model = _tiny_disdiff()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.encode_units(images)[1]
    x, t = torch.randn(model.latent_shape(2)), torch.tensor([3, 700])
    c_t = field_weights(model.schedule, t)[0].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        fields = [model.decoder(x, t, torch.cat([z[:, k], model.unit_embedding[k].expand(2, -1)], -1)[:, None])
                  for k in range(3)]
        expected = model.ldm.eps(x, t) - c_t * sum(fields)
    assert float(c_t.min()) > 0 and float(sum(fields).abs().max()) > 1e-3  # the fields are not inert
    assert torch.allclose(model.denoiser(z)(x, t), expected, atol=1e-5)


def test_disdiff_with_zero_fields_samples_as_its_frozen_ldm_and_swaps_only_the_chosen_unit():
    from disdis.diffusion import ddim_sample
    model = _tiny_disdiff()
    model.decode_latents = lambda z: z  # compared as latents: the tiny VQ maps them all to a few codes
    images = torch.linspace(-1, 1, 3).view(3, 1, 1, 1).expand(3, 3, 16, 16)  # dark, grey, bright: other units
    z = model.encode_units(images)[1]
    noise = torch.randn(model.latent_shape(3))
    # a unit swapped from an image into itself changes nothing: the image's own regeneration
    own = model.sample(z[:1], noise=noise[:1], steps=3)
    assert torch.allclose(model.interchange(images[:1], images[:1], 1, noise=noise[:1], steps=3), own, atol=1e-6)
    swapped = model.interchange(images[:1], images[1:], 1, noise=noise[1:], steps=3)
    assert not torch.allclose(swapped, model.sample(z[1:], noise=noise[1:], steps=3), atol=1e-2)
    context = z[1:].clone()
    context[:, 1] = z[0, 1]
    assert torch.allclose(swapped, model.sample(context, noise=noise[1:], steps=3), atol=1e-5)
    for p in model.decoder.parameters():
        p.data.zero_()
    plain = ddim_sample(model.ldm.eps, noise, model.schedule, 3, 0.0)
    assert torch.allclose(model.sample(z, noise=noise, steps=3), plain, atol=1e-6)


def test_disdiff_trains_its_chain_resumes_exactly_and_evaluates(tmp_path, shapes3d_grid_npz, capsys):
    def train(run, kimg):
        return main(["train", "demo_disdiff", f"data.path={shapes3d_grid_npz}", f"run_dir={tmp_path / run}",
                     f"train.total_kimg={kimg}", *TINY])
    assert train("a", 0.064) == 0
    err = capsys.readouterr().err
    assert "ldm (trained by this run)" in err and "first_stage (trained by this run)" in err
    assert (tmp_path / "a/ldm/first_stage/checkpoints").is_dir()  # the chain: first stage -> LDM -> DisDiff
    tensors, meta = load_checkpoint(list_checkpoints(tmp_path / "a/checkpoints")[-1])
    assert set(meta["requires"]) == {"ldm"} and not any(k.startswith("model/ldm.") for k in tensors)
    # the run's training time counts the chain it trained itself: DisDiff, its LDM, the LDM's first stage
    from disdis.rundir import RunDir
    from disdis.train.run import training_seconds
    parts = [load_checkpoint(list_checkpoints(tmp_path / f"{p}checkpoints")[-1])[1]["train_seconds"]
             for p in ("a/", "a/ldm/", "a/ldm/first_stage/")]
    assert training_seconds(RunDir(tmp_path / "a")) == pytest.approx(sum(parts)) and min(parts) > 0
    assert train("b", 0.032) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "train.total_kimg=0.064"]) == 0
    other = load_checkpoint(list_checkpoints(tmp_path / "b/checkpoints")[-1])[0]
    # the runs trained their own LDMs from the same seed: identical, so the DisDiff weights are too
    assert sorted(other) == sorted(tensors) and all(torch.equal(other[k], tensors[k]) for k in tensors)
    # a run that names its LDM: recorded by reference, loaded (with the LDM's own first stage) recursively
    assert main(["train", "demo_disdiff", f"data.path={shapes3d_grid_npz}", f"run_dir={tmp_path / 'c'}",
                 f"requires.ldm={tmp_path / 'a/ldm'}", "train.total_kimg=0.032", *TINY]) == 0
    assert not (tmp_path / "c/ldm").exists()
    assert main(["evaluate", str(tmp_path / "c"), "eval.num_train=200", "eval.num_test=100", "eval.num_eval=100",
                 "eval.num_variance_estimate=200", "eval.metrics=[dci,mig]"]) == 0
    result = json.loads((tmp_path / "c/metrics.json").read_text())
    assert result["run"]["representation"] == "tokens_pca" and len(result["unit_factor_shares"]) == 3
    assert main(["train", "demo_disdiff", f"data.path={shapes3d_grid_npz}", f"run_dir={tmp_path / 'd'}",
                 f"requires.ldm={tmp_path / 'a'}", *TINY]) == 2  # a disdiff run is not an LDM
    assert "is a 'disdiff' run, not a 'latent_diffusion' one" in capsys.readouterr().err


def test_the_table_3_variants_train(tmp_path, shapes3d_grid_npz):
    """DisDiff + DyGA refits and uses anchors for its unit vectors; + Skip Dropout drops the decoder's skips."""
    from disdis.train.run import load_trained_model
    first = ["data.path=" + str(shapes3d_grid_npz), "train.total_kimg=0.064", *TINY]
    assert main(["train", "demo_disdiff_dyga", *first, f"run_dir={tmp_path / 'dyga'}",
                 "method.anchoring.refit_every=0.032", "method.anchoring.refit_images=64",
                 "method.anchoring.initial_components=2", "method.anchoring.min_soft_count=2"]) == 0
    _, model, _ = load_trained_model(tmp_path / "dyga")
    assert float(model.anchor_state.fitted) == 1 and (tmp_path / "dyga/fits").is_dir()
    assert main(["train", "demo_disdiff_skip_dropout", *first, f"run_dir={tmp_path / 'skip'}"]) == 0
    _, model, _ = load_trained_model(tmp_path / "skip")
    assert all(d.p == 0.2 for d in model.decoder.skip_dropouts) and all(d.p == 0 for d in model.ldm.unet.skip_dropouts)


def test_disdiff_takes_part_in_a_comparison(tmp_path, shapes3d_grid_npz):
    """The `disdiff` alias in `disdis compare`: its chain trains inside the comparison and its
    minutes count the chain (DisDiff, its LDM, the LDM's first stage)."""
    from disdis.rundir import RunDir
    from disdis.train.run import training_seconds
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "disdiff", "--kimg", "0.032", "--out", str(out), "--data", str(shapes3d_grid_npz),
                 "--threads", "1", *TINY, "eval.num_train=200", "eval.num_test=100",
                 "eval.num_eval=100", "eval.num_variance_estimate=200"]) == 0
    entry = json.loads((out / "compare.json").read_text())["methods"]["disdiff"]
    assert entry["preset"] == "demo_disdiff" and entry["kimg"] == 0.032 and set(entry["mean"]) >= {"factor_vae", "dci", "mig"}
    (run,) = entry["runs"]
    assert (RunDir(run).path / "ldm/first_stage/checkpoints").is_dir()
    assert entry["minutes"] == pytest.approx(training_seconds(RunDir(run)) / 60, abs=0.01)
