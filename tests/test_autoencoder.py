"""The autoencoder method and the extractor warm start it gives a diffusion run."""

import re

import pytest
import torch

from disdis.cli import main
from disdis.errors import ConfigError
from disdis.models.autoencoder import Autoencoder, AutoencoderLoss, edge_strength
from disdis.nn.units import UnitsConfig
from disdis.train.checkpoint import list_checkpoints, load_checkpoint
from disdis.train.logger import read_csv_log
from train_standins import repo_script, tiny_run_config, write_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNITS = {"num_units": 4, "token_dim": 8, "extractor_width": 4, "fc_hidden": [16], "mlp_hidden": [8, 8]}


def test_autoencoder_loss_is_the_mean_squared_reconstruction_error():
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16)).eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    expected = torch.nn.functional.mse_loss(model.decoder(model.extractor(x)), x)
    assert torch.allclose(model(x)["loss"], expected)
    assert model.representation(x)["units"].shape == (5, 4)
    assert model.decode_units(model.representation(x)["units"]).shape == x.shape


def _output_and_float64_reference(model, x):
    """The model's output on ``x`` and, in float64 from the same noise, its posterior (mu, logvar),
    the sample z = mu + sigma eps and that sample's reconstruction."""
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    eps = torch.randn(len(x), model.log_variance.out_features)
    with torch.no_grad():
        h = model.extractor.features(x)
        mu, logvar = model.extractor(x).double(), model.log_variance(h).double()
        z = mu + (0.5 * logvar).exp() * eps.double()
        return out, mu, logvar, z, model.decoder(z.float()).double()


def test_variational_autoencoder_loss_against_an_independent_float64_computation():
    """beta > 0: a sample z = u + sigma eps of the posterior the extractor's output centres, its
    squared error per image, w times its finite differences', plus beta times the KL to N(0, I)
    (here torch.distributions'), per pixel."""
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(beta=3.0, gradient_weight=2.0)).eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    out, mu, logvar, _, recon = _output_and_float64_reference(model, x)
    normal = torch.distributions.Normal
    kl = torch.distributions.kl_divergence(normal(mu, (0.5 * logvar).exp()), normal(torch.zeros_like(mu), 1.0)).sum(1)
    error = recon - x.double()
    sse = error.square().flatten(1).sum(1)
    # the finite differences' errors, as loops over neighbouring pixels
    gradient = sum((error[..., i + 1] - error[..., i]).square().flatten(1).sum(1)
                   + (error[..., i + 1, :] - error[..., i, :]).square().flatten(1).sum(1) for i in range(15))
    assert torch.allclose(out["loss"].double(), (sse + 2.0 * gradient + 3.0 * kl).mean() / (3 * 16 * 16), rtol=1e-5)
    assert torch.allclose(out["kl"].double(), kl.mean(), rtol=1e-5)
    assert torch.equal(model.representation(x)["units"], model.extractor(x))  # the posterior mean
    assert not hasattr(Autoencoder(UnitsConfig(**UNITS, resolution=16)), "log_variance")
    with pytest.raises(ConfigError, match="loss.beta"):
        AutoencoderLoss(beta=-1.0)


def test_capacity_and_total_correlation_terms_against_a_float64_computation():
    """capacity: beta |KL - C_t| in place of beta KL; tc_weight: t times the minibatch-weighted
    total correlation of the posterior sample, with the N the schedule's hook sets."""
    from disdis.models.vae_losses import total_correlation
    torch.manual_seed(0)
    loss = AutoencoderLoss(beta=3.0, capacity=10.0, capacity_kimg=1.0, tc_weight=2.0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), loss).eval()
    model.capacity.fill_(4.0)
    model.dataset_size.fill_(100)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    out, mu, logvar, z, recon = _output_and_float64_reference(model, x)
    kl = 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(1)
    tc = total_correlation(z, mu, logvar, 100)
    sse = (recon - x.double()).square().flatten(1).sum(1)
    expected = (sse + 3.0 * (kl - 4.0).abs() + 2.0 * tc).mean() / (3 * 16 * 16)
    assert torch.allclose(out["loss"].double(), expected, rtol=1e-5)
    assert torch.allclose(out["tc"].double(), tc.mean(), rtol=1e-4)
    for key in ("capacity", "beta_warmup_kimg", "free_nats", "tc_weight"):
        with pytest.raises(ConfigError, match=f"loss.{key}: needs a variational autoencoder"):
            AutoencoderLoss(**{key: 1.0})
    with pytest.raises(ConfigError, match="loss.free_nats: not with loss.capacity"):
        AutoencoderLoss(beta=1.0, capacity=1.0, free_nats=1.0)
    with pytest.raises(ConfigError, match="loss.capacity_kimg"):
        AutoencoderLoss(beta=1.0, capacity=1.0, capacity_kimg=-1.0)


def test_free_bits_against_a_float64_computation():
    """free_nats = f: each unit's batch-mean KL counts as at least f (one value for every image),
    here under a warmed-up beta_t = 1.5; f lies between the units' KLs, so both sides are tested."""
    import dataclasses
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16),
                        AutoencoderLoss(beta=3.0, free_nats=1.0, beta_warmup_kimg=1.0)).eval()
    model.beta.fill_(1.5)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    _, mu, logvar, _, _ = _output_and_float64_reference(model, x)
    units = (0.5 * (mu.square() + logvar.exp() - logvar - 1)).mean(0)
    f = units.median().item()
    assert units.min() < f < units.max()
    model.loss = dataclasses.replace(model.loss, free_nats=f)
    out, _, _, _, recon = _output_and_float64_reference(model, x)
    sse = (recon - x.double()).square().flatten(1).sum(1)
    free = units.clamp(min=f).sum()
    assert torch.allclose(out["loss"].double(), (sse.mean() + 1.5 * free) / (3 * 16 * 16), rtol=1e-5)


def test_pooled_free_bits_floor_the_summed_kl_against_a_float64_computation():
    """free_nats_pooled: the units' batch-mean KLs summed count as at least N f; with N f above the
    sum the loss is the floor's (no pull on any unit), below it the plain KL's, and in between the
    pooled floor differs from the per-unit one (which floors the smaller units only)."""
    import dataclasses
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(beta=2.0, free_nats=1.0)).eval()
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    _, mu, logvar, _, recon = _output_and_float64_reference(model, x)
    units = (0.5 * (mu.square() + logvar.exp() - logvar - 1)).mean(0)
    sse = (recon - x.double()).square().flatten(1).sum(1).mean()
    n = len(units)
    for f in (units.sum().item() / n * 1.5, units.sum().item() / n * 0.5, units.median().item()):
        model.loss = dataclasses.replace(model.loss, free_nats=f, free_nats_pooled=True)
        out = _output_and_float64_reference(model, x)[0]  # the reference's noise again
        expected = (sse + 2.0 * units.sum().clamp(min=n * f)) / (3 * 16 * 16)
        assert torch.allclose(out["loss"].double(), expected, rtol=1e-5)
    assert not torch.allclose(units.sum().clamp(min=n * f), units.clamp(min=f).sum())  # the two floors differ there
    with pytest.raises(ConfigError, match="loss.free_nats_pooled: needs free bits"):
        AutoencoderLoss(beta=1.0, free_nats_pooled=True)


def test_capacity_rises_linearly_and_is_where_a_resumed_run_left_it(tmp_path, shapes3d_grid_npz):
    """C_t = C min(1, kimg / capacity_kimg), set before every step: 16 images a step, C = 8 nats over
    0.32 kimg (20 steps); a run stopped at 10 steps and resumed ends as one that ran 30 at once."""
    from types import SimpleNamespace

    from disdis.models.autoencoder import LossSchedule
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16),
                        AutoencoderLoss(beta=2.0, capacity=8.0, capacity_kimg=0.32, beta_warmup_kimg=0.16))
    schedule = LossSchedule(model)
    ctx = SimpleNamespace(cfg=SimpleNamespace(batch_size=16), resume_step=5)
    schedule.open(ctx)
    assert (model.capacity.item(), model.beta.item()) == pytest.approx((2.0, 1.0))
    for step, capacity, beta in ((10, 4.0, 2.0), (20, 8.0, 2.0), (30, 8.0, 2.0)):
        schedule(ctx, step)
        assert (model.capacity.item(), model.beta.item()) == pytest.approx((capacity, beta))
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "ae", train={"total_kimg": 0.48, "checkpoint_every_kimg": 0.16})
    cfg["method"] = {"name": "autoencoder", "units": UNITS, "loss": {
        "beta": 1.0, "capacity": 8.0, "capacity_kimg": 0.32, "beta_warmup_kimg": 0.4, "tc_weight": 1.0}}
    config = write_yaml(tmp_path / "ae.yaml", cfg)
    assert main(["train", config]) == 0
    assert main(["train", config, f"run_dir={tmp_path / 'split'}", "train.total_kimg=0.16"]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "train.total_kimg=0.48"]) == 0
    whole, split = (load_checkpoint(list_checkpoints(tmp_path / run / "checkpoints")[-1])[0] for run in ("ae", "split"))
    assert whole["model/capacity"].item() == pytest.approx(8.0) and whole["model/dataset_size"].item() == 288
    assert whole["model/beta"].item() == pytest.approx(1.0)
    assert all(torch.equal(whole[k], split[k]) for k in whole if k.startswith("model/"))
    assert read_csv_log(tmp_path / "ae/logs/train.csv")[-1]["tc"] != 0


def test_edge_and_kl_weights_move_linearly_across_the_ramp_and_the_loss_uses_them(tmp_path, shapes3d_grid_npz):
    """w_t: gradient_weight (17) until 0.16 kimg, linearly to gradient_weight_end (2) at 0.48 kimg (9.5 at 0.32),
    held after, beta_t alike from beta (8) to beta_end (1) (4.5 at 0.32), the free bits f_t from
    free_nats (0) to free_nats_end (1) (0.5 at 0.32) and the Hessian penalty's weight g_t from
    hessian_weight (0) to hessian_weight_end (2) (1 at 0.32); 16 images a step. The loss is the one of
    gradient_weight = w_t, beta = beta_t, free_nats = f_t and hessian_weight = g_t (at g_t = 0 the
    penalty is not drawn for: the random stream is a run's without it), and a resumed run ends as
    one that ran at once."""
    from types import SimpleNamespace

    from disdis.models.autoencoder import LossSchedule
    loss = {"beta": 8.0, "beta_end": 1.0, "gradient_weight": 17.0, "gradient": "magnitude", "gradient_weight_end": 2.0,
            "gradient_ramp_kimg": [0.16, 0.48], "free_nats": 0.0, "free_nats_end": 1.0,
            "hessian_weight": 0.0, "hessian_weight_end": 2.0, "hessian_images": 2}
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(**loss)).eval()
    schedule, ctx = LossSchedule(model), SimpleNamespace(cfg=SimpleNamespace(batch_size=16), resume_step=None)
    for step, weight, beta, free, hessian in ((0, 17.0, 8.0, 0.0, 0.0), (10, 17.0, 8.0, 0.0, 0.0),
                                              (20, 9.5, 4.5, 0.5, 1.0), (30, 2.0, 1.0, 1.0, 2.0), (40, 2.0, 1.0, 1.0, 2.0)):
        schedule(ctx, step)
        assert (model.gradient_weight.item(), model.beta.item(), model.free_nats.item(),
                model.hessian_weight.item()) == pytest.approx((weight, beta, free, hessian))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    schedule(ctx, 0)  # no free bits nor Hessian penalty yet: the KL of each image, as without them
    plain = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(beta=8.0, gradient_weight=17.0,
                                                                             gradient="magnitude")).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    out = _output_and_float64_reference(model, x)[0]
    after = torch.rand(())  # the stream after the step: as in the run without the penalty
    assert torch.allclose(out["loss"], _output_and_float64_reference(plain, x)[0]["loss"])
    assert out["hessian"] == 0 and torch.equal(after, torch.rand(()))
    schedule(ctx, 20)
    fixed = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(beta=4.5, gradient_weight=9.5,
                                                                             gradient="magnitude", free_nats=0.5,
                                                                             hessian_weight=1.0, hessian_images=2)).eval()
    fixed.load_state_dict(model.state_dict(), strict=False)
    out = _output_and_float64_reference(model, x)[0]
    assert out["hessian"] > 0 and torch.allclose(out["loss"], _output_and_float64_reference(fixed, x)[0]["loss"])
    for bad, match in (({"gradient_weight_end": -1.0}, "gradient_weight_end"),
                       ({"gradient_ramp_kimg": (2.0, 1.0)}, "gradient_ramp_kimg"),
                       ({"gradient_weight": 0.0}, "gradient_weight_end"),
                       ({"beta_end": -1.0}, "beta_end"),
                       ({"beta": 0.0, "gradient_weight_end": None, "free_nats_end": None}, "beta_end"),
                       ({"gradient_weight_end": None, "gradient_ramp_kimg": (2.0, 1.0)}, "gradient_ramp_kimg"),
                       ({"free_nats_end": -1.0}, "free_nats_end"),
                       ({"gradient_weight_end": None, "beta_end": None, "free_nats_end": None},
                        "hessian_weight_end: needs a ramp"),
                       ({"hessian_weight_end": -1.0}, "hessian_weight_end"),
                       ({"gradient_weight_end": None, "beta_end": None}, "free_nats_end: needs a ramp"),
                       ({"capacity": 1.0}, "free_nats: not with loss.capacity")):
        with pytest.raises(ConfigError, match=match):
            AutoencoderLoss(**{**loss, **bad})
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "ae", train={"total_kimg": 0.48, "checkpoint_every_kimg": 0.16})
    cfg["method"] = {"name": "autoencoder", "units": UNITS, "loss": loss}
    config = write_yaml(tmp_path / "ae.yaml", cfg)
    assert main(["train", config]) == 0
    assert main(["train", config, f"run_dir={tmp_path / 'split'}", "train.total_kimg=0.32"]) == 0  # mid-ramp
    assert main(["train", "--resume", str(tmp_path / "split"), "train.total_kimg=0.48"]) == 0
    whole, split = (load_checkpoint(list_checkpoints(tmp_path / run / "checkpoints")[-1])[0] for run in ("ae", "split"))
    assert (whole["model/gradient_weight"].item(), whole["model/beta"].item(), whole["model/free_nats"].item(),
            whole["model/hessian_weight"].item()) == pytest.approx((2.0, 1.0, 1.0, 2.0))
    assert all(torch.equal(whole[k], split[k]) for k in whole if k.startswith("model/"))


def test_units_used_when_the_ramp_begins_are_held_to_a_frozen_copy(tmp_path, shapes3d_grid_npz):
    """hold_weight h: at the ramp's start (0.16 kimg, step 10 of 16 images) the units whose running KL
    exceeds hold_nats are marked and the extractor copied; from then on the loss adds h times the
    marked units' squared distance from the copy's means (float64 reference), the copy does not train,
    and a run resumed after the hold (with everything else drawn anew there) ends as one that ran at once."""
    from types import SimpleNamespace

    from disdis.models.autoencoder import LossSchedule
    loss = {"beta": 2.0, "beta_end": 1.0, "gradient_ramp_kimg": [0.16, 0.48], "hold_weight": 3.0, "hold_nats": 1.0}
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(**loss)).eval()
    schedule, ctx = LossSchedule(model), SimpleNamespace(cfg=SimpleNamespace(batch_size=16), resume_step=None)
    model.unit_kl.copy_(torch.tensor([2.0, 0.1, 3.0, 0.5]))
    schedule(ctx, 9)
    assert not model.held.any() and not model.hold_taken
    with torch.no_grad():  # the extractor trained since it was built: the copy must be of it now
        model.extractor.fc[-1].weight.mul_(1.5)
    schedule(ctx, 10)
    assert model.held.tolist() == [True, False, True, False]
    assert all(torch.equal(a, b) for a, b in zip(model.held_extractor.state_dict().values(),
                                                  model.extractor.state_dict().values()))
    model.unit_kl.fill_(5.0)
    schedule(ctx, 11)  # taken once: later KLs change nothing
    assert model.held.tolist() == [True, False, True, False]
    held_copy = model.held_extractor(torch.zeros(1, 3, 16, 16))
    with torch.no_grad():
        model.extractor.fc[-1].bias.add_(torch.tensor([0.5, -1.0, 0.25, 2.0]))
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    free = Autoencoder(UnitsConfig(**UNITS, resolution=16),
                       AutoencoderLoss(**{**loss, "hold_weight": 0.0})).eval()
    free.load_state_dict(model.state_dict(), strict=False)
    out, mu = _output_and_float64_reference(model, x)[:2]
    with torch.no_grad():
        mu0 = model.held_extractor(x).double()
    pull = (mu - mu0)[:, [0, 2]].square().sum(1)
    assert torch.allclose(pull, torch.tensor([0.5 ** 2 + 0.25 ** 2] * 5, dtype=torch.float64))
    expected = _output_and_float64_reference(free, x)[0]["loss"].double() + 3.0 * pull.mean() / (3 * 16 * 16)
    assert torch.allclose(out["loss"].double(), expected, rtol=1e-5)
    assert torch.equal(model.held_extractor(torch.zeros(1, 3, 16, 16)), held_copy)
    for bad, match in (({"beta_end": None}, "hold_weight: needs a ramp"), ({"hold_nats": -1.0}, "hold_nats"),
                       ({"beta": 0.0, "beta_end": None, "gradient_weight": 1.0, "gradient_weight_end": 1.0},
                        "hold_weight: needs a variational")):
        with pytest.raises(ConfigError, match=match):
            AutoencoderLoss(**{**loss, **bad})
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "ae", train={"total_kimg": 0.48, "checkpoint_every_kimg": 0.16})
    cfg["method"] = {"name": "autoencoder", "units": UNITS, "loss": {**loss, "hold_nats": 0.0, "reopen": "all"}}
    config = write_yaml(tmp_path / "ae.yaml", cfg)
    assert main(["train", config]) == 0
    assert main(["train", config, f"run_dir={tmp_path / 'split'}", "train.total_kimg=0.32"]) == 0  # held since 0.16
    assert main(["train", "--resume", str(tmp_path / "split"), "train.total_kimg=0.48"]) == 0
    whole, split = (load_checkpoint(list_checkpoints(tmp_path / run / "checkpoints")[-1])[0] for run in ("ae", "split"))
    assert whole["model/held"].all() and whole["model/hold_taken"]
    assert all(torch.equal(whole[k], split[k]) for k in whole if k.startswith("model/"))
    copy_weights = [k for k in whole if k.startswith("model/held_extractor.") and k.endswith("weight")]
    first = load_checkpoint(list_checkpoints(tmp_path / "ae/checkpoints")[0])[0]  # written at 0.16 kimg, the hold
    assert first["model/hold_taken"] and copy_weights and all(torch.equal(whole[k], first[k]) for k in copy_weights)
    assert read_csv_log(tmp_path / "ae/logs/train.csv")[-1]["hold"] > 0
    about, factors = repo_script("benchmarks/hold_report.py").hold_rows(tmp_path / "ae")  # the KL's hold (the demo's test: a gathered one)
    assert "hold at 0.16 kimg (KL > 0 nats), shares before it at 0.08 kimg, after it at 0.24" in about
    assert "4 of 4 units held" in about and all(f["held"] is True for f in factors)


def test_gather_units_holds_the_codes_leading_components_unmixed_in_the_first_units(tmp_path, shapes3d_grid_npz):
    """gather_units k: at the hold the extractor encodes the training images (eval mode); the frozen
    copy's first k units output the code's k leading principal components, centred, of unit variance,
    uncorrelated, and spanning those components; its other layers are the extractor's; units 0 to k - 1
    are held whatever their KL; the training's random stream is left as it was. A run resumed after
    the hold ends as one that ran at once; k beyond the units, or without a hold, is refused."""
    from types import SimpleNamespace

    from disdis.models.autoencoder import LossSchedule
    loss = {"beta": 2.0, "beta_end": 1.0, "gradient_ramp_kimg": [0.16, 0.48], "hold_weight": 3.0, "gather_units": 2}
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(**loss))
    images = torch.rand(48, 3, 16, 16) * 2 - 1
    ctx = SimpleNamespace(cfg=SimpleNamespace(batch_size=16, seed=0, num_workers=0), resume_step=None,
                          optimizer=None, dataset=torch.utils.data.TensorDataset(images), device=torch.device("cpu"))
    model.unit_kl.copy_(torch.tensor([0.1, 0.1, 3.0, 3.0]))  # by KL, units 2 and 3 would be held
    state = torch.random.get_rng_state()
    LossSchedule(model)(ctx, 10)
    assert torch.equal(torch.random.get_rng_state(), state) and model.training
    assert model.held.tolist() == [True, True, False, False]
    copy_, own = model.held_extractor.state_dict(), model.extractor.state_dict()
    last = f"fc.{len(model.extractor.fc) - 1}."
    assert all(torch.equal(copy_[k], own[k]) != k.startswith(last) for k in own)  # all but the last layer's
    with torch.no_grad():
        code = model.extractor.eval()(images).double()
        gathered = model.held_extractor.eval()(images).double()[:, :2]
    centred = code - code.mean(0)
    top = centred @ torch.linalg.svd(centred, full_matrices=False)[2][:2].T  # the two leading components
    assert torch.allclose(gathered.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(torch.cov(gathered.T, correction=0), torch.eye(2, dtype=torch.float64), atol=1e-4)
    fit = torch.linalg.lstsq(gathered, top).solution  # the components, as a linear map of the gathered units
    assert (gathered @ fit - top).norm() < 1e-4 * top.norm()
    for bad, match in (({"hold_weight": 0.0, "beta_end": None}, "gather_units: needs loss.hold_weight"),
                       ({"gather_units": -1}, "gather_units: expected a whole number"),
                       ({"gather_units": True}, "gather_units: expected a whole number")):
        with pytest.raises(ConfigError, match=match):
            AutoencoderLoss(**{**loss, **bad})
    with pytest.raises(ConfigError, match="gather_units: 5 is more than the extractor's 4 units"):
        Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(**{**loss, "gather_units": 5}))
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "ae", train={"total_kimg": 0.48, "checkpoint_every_kimg": 0.16})
    cfg["method"] = {"name": "autoencoder", "units": UNITS, "loss": {**loss, "reopen": "all"}}
    config = write_yaml(tmp_path / "ae.yaml", cfg)
    assert main(["train", config]) == 0
    assert main(["train", config, f"run_dir={tmp_path / 'split'}", "train.total_kimg=0.32"]) == 0  # held since 0.16
    assert main(["train", "--resume", str(tmp_path / "split"), "train.total_kimg=0.48"]) == 0
    whole, split = (load_checkpoint(list_checkpoints(tmp_path / run / "checkpoints")[-1])[0] for run in ("ae", "split"))
    assert whole["model/held"].tolist() == [True, True, False, False]
    assert all(torch.equal(whole[k], split[k]) for k in whole if k.startswith("model/"))


@pytest.mark.parametrize("reopen, fresh", [("decoder", {"decoder"}), ("extractor", {"extractor", "log_variance"}),
                                            ("all", {"decoder", "extractor", "log_variance"})])
def test_reopen_draws_the_named_modules_anew_when_the_hold_is_taken(reopen, fresh):
    """reopen: at the hold (not before), the named modules' weights are drawn anew, as a freshly built
    model's of the same seed are, and their optimizer moments dropped (Adam starts them afresh); the
    others, their moments, the held copy (of the extractor before) and the training's random stream
    are unchanged; the new weights come from the training's stream at the hold (two seeds draw
    two different starts); without a hold it is refused."""
    from types import SimpleNamespace

    from disdis.models.autoencoder import LossSchedule
    from disdis.nn.vae import DeconvDecoder
    loss = {"beta": 2.0, "beta_end": 1.0, "gradient_ramp_kimg": [0.16, 0.48], "hold_weight": 3.0, "reopen": reopen}
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(**loss))
    with torch.no_grad():  # trained weights, unlike any initialisation
        for p in model.parameters():
            p.add_(1.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable)
    for p in trainable:
        p.grad = torch.ones_like(p)
    optimizer.step()
    trained = {k: v.clone() for k, v in model.named_parameters()}
    schedule = LossSchedule(model)
    ctx = SimpleNamespace(cfg=SimpleNamespace(batch_size=16), resume_step=None, optimizer=optimizer)
    model.unit_kl.copy_(torch.tensor([2.0, 0.1, 3.0, 0.5]))
    schedule(ctx, 9)
    assert all(torch.equal(v, trained[k]) for k, v in model.named_parameters())
    assert all(p in optimizer.state for p in trainable)
    state = torch.random.get_rng_state()
    schedule(ctx, 10)
    assert torch.equal(torch.random.get_rng_state(), state)
    after = dict(model.named_parameters())
    for key, value in after.items():
        part = key.split(".")[0]
        if part == "held_extractor":
            assert torch.equal(value, trained["extractor." + key.split(".", 1)[1]]), key
        elif part in fresh:  # drawn anew, its optimizer moments too
            assert (value - trained[key]).abs().max() > 0.5 and value not in optimizer.state, key
        else:
            assert torch.equal(value, trained[key]) and value in optimizer.state, key
    with torch.random.fork_rng():  # as at initialisation: what a model built on the same stream draws
        torch.random.set_rng_state(state)  # the training's stream at the hold, so the run's seed
        built = DeconvDecoder(3, 16, UNITS["num_units"])
    if reopen == "decoder":
        assert all(torch.equal(v, after["decoder." + k]) for k, v in built.named_parameters())
    with pytest.raises(ConfigError, match="reopen: needs loss.hold_weight"):
        AutoencoderLoss(beta=1.0, reopen=reopen)


class _Quadratic(torch.nn.Module):
    """D_i(z) = z^T A_i z for each output value i: Hessian 2 A_i (A_i symmetric), and central
    differences give v^T H v exactly."""

    def __init__(self, units: int, shape=(3, 16, 16)):
        super().__init__()
        a = torch.randn(int(torch.tensor(shape).prod()), units, units, dtype=torch.float64)
        self.a, self.shape = torch.nn.Parameter((a + a.transpose(1, 2)) / 2), shape

    def forward(self, z):
        return torch.einsum("bj,ijk,bk->bi", z.double(), self.a, z.double()).view(len(z), *self.shape)


def test_hessian_penalty_against_the_exact_hessian_of_a_quadratic_decoder():
    """hessian_weight: with v the two Rademacher draws the term makes, the penalty equals
    sum_i (v0^T H_i v0 - v1^T H_i v1)^2 / 2 with the exact Hessians (float64), averaged over the
    first hessian_images images; over many draws it tends to Var_v = 2 sum_i sum_{j != k} H_ijk^2;
    it reaches the decoder's weights only (the code is held fixed); with weight 0 it is not computed."""
    torch.manual_seed(0)
    loss = AutoencoderLoss(beta=1.0, hessian_weight=2.0, hessian_images=3, hessian_step=0.5)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), loss)
    model.decoder = _Quadratic(4)
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    penalty = model._hessian(z)
    torch.manual_seed(7)
    v = (torch.randint(0, 2, (2, 3, 4), dtype=torch.float64) * 2 - 1)
    hessians = 2 * model.decoder.a.detach()  # (values, units, units), the same for every z
    quad = torch.einsum("nbj,ijk,nbk->nbi", v, hessians, v)  # (draw, image, value)
    expected = ((quad[0] - quad[1]).square().sum(1) / 2).mean()
    assert torch.allclose(penalty, expected, rtol=1e-9)
    draws = torch.stack([model._hessian(z) for _ in range(4000)]).mean()
    off_diagonal = hessians.square().sum() - torch.diagonal(hessians, dim1=1, dim2=2).square().sum()
    assert abs(draws / (2 * off_diagonal) - 1) < 0.05
    penalty.backward()
    assert z.grad is None and model.decoder.a.grad.abs().sum() > 0
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    plain = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(beta=1.0))
    penalised = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(beta=1.0, hessian_weight=3.0))
    penalised.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    without = plain(x)
    torch.manual_seed(1)
    out = penalised(x)  # the same noise for z, then the penalty's draws
    assert "hessian" not in without and torch.allclose(out["loss"], without["loss"] + 3.0 * out["hessian"])
    with pytest.raises(ConfigError, match="hessian_images"):
        AutoencoderLoss(beta=1.0, hessian_weight=1.0, hessian_images=0)


def test_edge_strength_loss_against_a_loop_over_pixels():
    """gradient: magnitude compares each pixel's edge strength sqrt(sum_c dx^2 + dy^2), whatever the
    colours: a red square on black and a blue square on black have the same edges."""
    import numpy as np
    torch.manual_seed(0)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), AutoencoderLoss(gradient_weight=5.0, gradient="magnitude"))
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    e = np.zeros((2, 15, 15))
    for i in range(15):
        for j in range(15):
            dx, dy = x[:, :, i, j + 1] - x[:, :, i, j], x[:, :, i + 1, j] - x[:, :, i, j]
            e[:, i, j] = np.sqrt((dx.square() + dy.square()).sum(1).numpy() + 1e-6)
    assert np.allclose(edge_strength(x).numpy(), e)
    red, blue = torch.full((1, 3, 16, 16), -1.0), torch.full((1, 3, 16, 16), -1.0)
    red[:, 0, 4:9, 4:9], blue[:, 2, 4:9, 4:9] = 1.0, 1.0
    assert torch.equal(edge_strength(red), edge_strength(blue))
    model.eval()
    with torch.no_grad():
        recon = model.decoder(model.extractor(x.float()))
        expected = ((recon - x.float()).square().sum() + 5.0 * (edge_strength(recon) - edge_strength(x.float())).square().sum())
    assert torch.allclose(model(x.float())["loss"], expected / (2 * 3 * 16 * 16), rtol=1e-5)


def test_saturated_edges_see_an_outline_whatever_its_contrast():
    """gradient: saturated compares tanh(strength / gradient_scale) at each pixel: a square's outline
    against its background is ~1 whether the two colours differ by 2 or by 0.5 (the magnitude: 2 and
    0.5), a flat image is ~0; the loss adds w times its squared error, per value; a scale <= 0 is refused."""
    torch.manual_seed(0)
    loss = AutoencoderLoss(gradient_weight=5.0, gradient="saturated", gradient_scale=0.05)
    model = Autoencoder(UnitsConfig(**UNITS, resolution=16), loss).eval()
    strong, faint = torch.full((1, 3, 16, 16), -1.0), torch.full((1, 3, 16, 16), -1.0)
    strong[:, 0, 4:9, 4:9], faint[:, 0, 4:9, 4:9] = 1.0, -0.5
    outline = edge_strength(strong) > 0.1  # the pixels at the square's edges
    assert torch.allclose(edge_strength(strong)[outline].max(), torch.tensor(2.0 * 2 ** 0.5), atol=1e-4)
    for image in (strong, faint):
        assert torch.tanh(edge_strength(image) / 0.05)[outline].min() > 0.99999
        assert torch.tanh(edge_strength(image) / 0.05)[~outline].max() < 0.03
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        recon = model.decoder(model.extractor(x))
        edges = (torch.tanh(edge_strength(recon) / 0.05) - torch.tanh(edge_strength(x) / 0.05)).square().sum()
        expected = ((recon - x).square().sum() + 5.0 * edges) / (2 * 3 * 16 * 16)
    assert torch.allclose(model(x)["loss"], expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="gradient_scale"):
        AutoencoderLoss(gradient_weight=1.0, gradient="saturated", gradient_scale=0.0)


def test_autoencoder_run_learns_and_is_evaluated(tmp_path, shapes3d_grid_npz):
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "ae", train={"total_kimg": 0.64, "log_every_kimg": 0.16})
    cfg["method"] = {"name": "autoencoder", "units": UNITS}
    assert main(["train", write_yaml(tmp_path / "ae.yaml", cfg)]) == 0
    rows = read_csv_log(tmp_path / "ae/logs/train.csv")
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"] and "share_scale" in rows[-1]  # the unit probe runs
    assert main(["evaluate", str(tmp_path / "ae"), "eval.representation=scalar", "eval.metrics=[dci]",
                 "eval.num_train=64", "eval.num_test=32"]) == 0


def _warm_start_config(data, run_dir, **train):
    return tiny_run_config(data, run_dir, method={"extractor_init": "autoencoder", "extractor_init_loss": {"beta": 2.0}},
                           extractor_init_train={"batch_size": 16, "total_kimg": 0.16, "checkpoint_every_kimg": 0.16,
                                                 "log_every_kimg": 0.08, "num_workers": 0, "device": "cpu"},
                           train={"total_kimg": 0.16, "freeze_modules": ["extractor"], "freeze_kimg": 1.0, **train})


def test_warm_start_trains_the_autoencoder_and_starts_the_extractor_from_it(tmp_path, shapes3d_grid_npz):
    """The run trains its autoencoder in RUN/extractor, copies its extractor (held still here, so the
    weights must be equal at the end), keeps those weights in its own checkpoints (they are trained
    on, not a frozen reference) and resumes without the autoencoder."""
    run = tmp_path / "run"
    assert main(["train", write_yaml(tmp_path / "warm.yaml", _warm_start_config(shapes3d_grid_npz, run))]) == 0
    ae, ae_meta = load_checkpoint(list_checkpoints(run / "extractor/checkpoints")[-1])
    assert ae_meta["step"] == 10
    tensors, meta = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert "extractor" not in (meta.get("requires") or {})
    started = {k.removeprefix("model/extractor."): v for k, v in tensors.items()  # weights (BatchNorm's statistics
               if k.startswith("model/extractor.") and k.endswith((".weight", ".bias"))}  # move while it is held)
    assert len(started) > 8 and all(torch.equal(v, ae[f"model/extractor.{k}"]) for k, v in started.items())
    import yaml
    ae_config = yaml.safe_load((run / "extractor/config.yaml").read_text())
    assert ae_config["train"]["seed"] == 3 and ae_config["method"]["loss"]["beta"] == 2.0  # the run's seed, its beta
    import shutil
    shutil.rmtree(run / "extractor")  # the resumed run reads its own checkpoint, not the autoencoder
    assert main(["train", "--resume", str(run), "train.total_kimg=0.32"]) == 0
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])[1]["step"] == 20
    assert not (run / "extractor").exists()


def test_warm_start_from_a_named_autoencoder_run(tmp_path, shapes3d_grid_npz, capsys):
    ae = tmp_path / "ae"
    cfg = tiny_run_config(shapes3d_grid_npz, ae, train={"total_kimg": 0.16})
    cfg["method"] = {"name": "autoencoder", "units": UNITS}
    assert main(["train", write_yaml(tmp_path / "ae.yaml", cfg)]) == 0
    config = write_yaml(tmp_path / "warm.yaml", _warm_start_config(shapes3d_grid_npz, tmp_path / "run"))
    assert main(["train", config, f"requires.extractor={ae}"]) == 0
    assert not (tmp_path / "run/extractor").exists()
    source = load_checkpoint(list_checkpoints(ae / "checkpoints")[-1])[0]
    tensors = load_checkpoint(list_checkpoints(tmp_path / "run/checkpoints")[-1])[0]
    assert all(torch.equal(v, source[k]) for k, v in tensors.items()
               if k.startswith("model/extractor.") and k.endswith((".weight", ".bias")))
    # a random start names no autoencoder; a diffusion run is not one
    capsys.readouterr()
    assert main(["train", config, f"requires.extractor={ae}", "method.extractor_init=random",
                 f"run_dir={tmp_path / 'x'}"]) != 0
    assert "requires.extractor: this disentangled_diffusion configuration builds on no extractor" in capsys.readouterr().err
    assert main(["train", config, f"requires.extractor={tmp_path / 'run'}", f"run_dir={tmp_path / 'y'}"]) != 0


def test_a_named_autoencoder_gives_its_extractor_sizes_not_its_token_settings(tmp_path, shapes3d_grid_npz):
    import dataclasses

    from disdis.errors import ConfigError
    from disdis.run_config import load_run_config
    run = load_run_config(write_yaml(tmp_path / "warm.yaml", _warm_start_config(shapes3d_grid_npz, tmp_path / "run")),
                          ["method.units.token_activation=elu", "method.units.token_final_activation=false"])
    ae = load_run_config(write_yaml(tmp_path / "ae.yaml", {**tiny_run_config(shapes3d_grid_npz, tmp_path / "ae"),
                                                           "method": {"name": "autoencoder"}}), [])
    adopted = run.method.adopt("extractor", ae).units
    assert (adopted.num_units, adopted.extractor_width, adopted.fc_hidden) == (20, 64, (4096, 256))  # its extractor
    assert (adopted.token_dim, adopted.token_activation, adopted.token_final_activation) == (8, "elu", False)  # ours
    ae.method.units = dataclasses.replace(ae.method.units, resolution=32)
    with pytest.raises(ConfigError, match="requires.extractor: its extractor reads 32x32 images"):
        run.method.adopt("extractor", ae)


def test_the_stages_a_run_trains_itself_share_its_time_budget(tmp_path, shapes3d_grid_npz):
    """The autoencoder, trained after the first stage, gets the budget the first stage left."""
    import yaml

    from disdis.train.checkpoint import read_meta
    cfg = _warm_start_config(shapes3d_grid_npz, tmp_path / "run", max_minutes=100.0)
    cfg["method"]["first_stage"] = {"kind": "vq", "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                    "codebook_size": 32}
    cfg["method"]["unet"]["resolution"] = 8
    cfg["method"]["first_stage_train"] = {"batch_size": 16, "total_kimg": 0.048, "checkpoint_every_kimg": 0.048,
                                          "num_workers": 0, "device": "cpu"}
    assert main(["train", write_yaml(tmp_path / "warm.yaml", cfg)]) == 0
    first = read_meta(list_checkpoints(tmp_path / "run/first_stage/checkpoints")[-1])["train_seconds"]
    budget = yaml.safe_load((tmp_path / "run/extractor/config.yaml").read_text())["train"]["max_minutes"]
    assert first > 0 and budget == pytest.approx(100.0 - first / 60)


def test_loss_conflict_benchmark_compares_the_pixels_and_the_edges_gradients(tmp_path, shapes3d_grid_npz, capsys):
    """benchmarks/loss_conflict.py on a tiny autoencoder run with an edge term: for the extractor and the
    decoder, each term's gradient norm (the edges' weighted as the run weighed them) and their cosine; a run
    without an edge term is refused."""
    bench = repo_script("benchmarks/loss_conflict.py")
    for name, loss in (("edges", {"gradient_weight": 2.0, "gradient": "magnitude"}), ("plain", {})):
        cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / name, train={"total_kimg": 0.16})
        cfg["method"] = {"name": "autoencoder", "units": UNITS, "loss": {"beta": 1.0, **loss}}
        assert main(["train", write_yaml(tmp_path / f"{name}.yaml", cfg)]) == 0
    capsys.readouterr()
    bench.report(str(tmp_path / "edges"), "model")
    out = capsys.readouterr().out
    assert "(edge weight 2)" in out
    rows = {m: (float(p), float(e), float(c)) for m, p, e, c in
            re.findall(r"^\| (extractor|decoder) \| (\d+\.\d{4}) \| (\d+\.\d{4}) \| ([+-]\d\.\d{3}) \|$", out, re.M)}
    assert set(rows) == {"extractor", "decoder"}
    assert all(p > 0 and e > 0 and -1 <= c <= 1 for p, e, c in rows.values())
    with pytest.raises(SystemExit, match="not an autoencoder with an edge term"):
        bench.report(str(tmp_path / "plain"), "model")
