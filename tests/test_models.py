"""The assembled models: the paper's method (and EncDiff / ablations as configurations), first stage."""


import numpy as np
import pytest
import torch

from disdis.errors import ConfigError
from disdis.models import METHODS, build_model
from disdis.models.disentangled_diffusion import unit_correlation
from disdis.run_config import RunConfig, run_config_from_dict
from train_standins import tiny_run_config


def tiny(**sections) -> RunConfig:
    return run_config_from_dict(tiny_run_config("unused.npz", "unused", **sections))


def images(n=8, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_registry_names():
    assert {"disentangled_diffusion", "first_stage"} <= set(METHODS)
    with pytest.raises(ConfigError, match="method.name: unknown method 'nope'"):
        tiny(method={"name": "nope"})


def test_training_loss_and_tokens():
    torch.manual_seed(0)
    model = build_model(tiny())
    x = images()
    model.setup(x)
    assert bool(model.scaler.fitted) and float(model.scaler.scale) == pytest.approx(1 / x.double().std().item(), rel=1e-5)
    out = model(x)
    assert out["loss"].ndim == 0 and out["tokens"].shape == (8, 4, 8) and not out["tokens"].requires_grad
    out["loss"].backward()
    assert model.unet.out[2].weight.grad is not None and model.tokenizer.weights[0].grad is not None
    assert all(p.grad is None for p in model.first_stage.parameters())


def test_unit_correlation_is_the_mean_squared_pearson_correlation_off_the_diagonal():
    u = torch.randn(64, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u[:, 3] = 2 * u[:, 0] - u[:, 1] + 3  # correlated, shifted and scaled: Pearson sees through both
    r = np.corrcoef(u.numpy(), rowvar=False)
    expected = (np.square(r).sum() - 5) / 20
    assert float(unit_correlation(u)) == pytest.approx(expected, rel=1e-6)  # the eps in the spread
    independent = torch.stack([torch.tensor([1., -1, 1, -1]), torch.tensor([1., 1, -1, -1])], 1)
    assert float(unit_correlation(independent)) == pytest.approx(0, abs=1e-12)  # orthogonal +-1 columns
    assert float(unit_correlation(torch.cat([independent[:, :1], -independent[:, :1]], 1))) == pytest.approx(1)


def test_unit_dependence_sees_a_rotation_of_independent_uniform_factors_that_correlation_misses():
    levels = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    factors = torch.cartesian_prod(levels, levels)  # a 3 x 3 grid: independent, uniform, not Gaussian
    z = (factors - factors.mean(0)) / factors.std(0, unbiased=False)
    squares = np.square(z.numpy())
    expected = np.corrcoef(squares, rowvar=False)[0, 1] ** 2
    assert float(unit_correlation(factors, power=2)) == pytest.approx(expected, abs=1e-12) and expected < 1e-20
    angle = torch.tensor(np.radians(40.0))
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    mixed = factors @ rotation
    assert float(unit_correlation(mixed)) == pytest.approx(0, abs=1e-12)  # still uncorrelated
    # rotated by t, the squares' covariance is c^2 s^2 (kurt_x + kurt_y - 6) with kurtosis 1.5 here
    c2s2 = float(angle.cos() ** 2 * angle.sin() ** 2)
    variance = np.var(np.square(z.numpy() @ rotation.numpy()), axis=0)
    assert float(unit_correlation(mixed, power=2)) == pytest.approx((c2s2 * -3.0) ** 2 / variance.prod(), rel=1e-6)


def test_unit_decorrelation_adds_its_weighted_term_and_reaches_the_extractor():
    x = images()
    losses, grads = {}, {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        model = build_model(tiny(method={"unit_decorrelation": weight, "unit_independence": weight / 2}))
        model.setup(x)
        torch.manual_seed(1)
        losses[weight] = out = model(x)
        grads[weight] = torch.autograd.grad(out["loss"], model.extractor.fc[-1].weight)[0]
    assert set(losses[0.0]) == {"loss", "tokens"}
    assert torch.equal(losses[2.0]["noise_loss"], losses[0.0]["loss"].detach())
    units = model.extractor(x)
    terms = 2.0 * unit_correlation(units) + 1.0 * unit_correlation(units, power=2)
    assert torch.allclose(out["loss"], losses[0.0]["loss"] + terms) and out["unit_correlation"] > 0 and out["unit_dependence"] > 0
    # the extractor's gradient is the noise loss's plus the terms' own (the same weights, draws and batch)
    own = torch.autograd.grad(terms, model.extractor.fc[-1].weight)[0]
    assert own.abs().sum() > 0 and torch.allclose(grads[2.0] - grads[0.0], own, atol=1e-6)


def fitted(model, x):
    tokens = model.unit_tokens(x).detach()
    model.anchor_state.load(model.fit_anchors(tokens.transpose(0, 1).contiguous(), seed=0))
    return tokens


def test_anchoring_shifts_tokens_only_when_enabled_and_fitted():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    x = images(32)
    units, before = model.encode_units(x)
    assert units.shape == (32, 4) and torch.equal(before, model.unit_tokens(x))  # no anchoring before a fit
    tokens = fitted(model, x)
    anchors = model.anchor_state.anchors().anchors_of(tokens, unit_dim=1)
    _, after = model.encode_units(x)
    assert torch.allclose(after, tokens + 0.1 * (anchors - tokens), atol=1e-6)
    encdiff = build_model(tiny(anchoring={"enabled": False}, unet={"skip_dropout": 0.0})).eval()
    encdiff.load_state_dict(model.state_dict())
    fitted(encdiff, x)
    assert torch.equal(encdiff.encode_units(x)[1], tokens)


def test_sampling_and_interchange():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    x = images(3)
    model.setup(x)
    context = model.encode_units(x)[1]
    noise = torch.randn(model.latent_shape(3), generator=torch.Generator().manual_seed(1))
    a = model.sample(context, noise=noise, steps=3)
    assert a.shape == x.shape and a.abs().max() <= 1 and torch.equal(a, model.sample(context, noise=noise, steps=3))
    assert model.invert(x, steps=3).shape == noise.shape
    # swapping a unit's token with the target's own token changes nothing
    own = model.interchange(x[:1], x[:1], unit=2, noise=noise[:1], steps=3)
    assert torch.allclose(own, model.sample(context[:1], noise=noise[:1], steps=3))
    swapped = model.interchange(x[:1], x[1:], unit=2, noise=noise[1:], steps=3)
    assert swapped.shape == (2, 3, 16, 16)
    # 0 steps is a value, refused, not "the configured number"
    for call in (lambda: model.sample(context, noise=noise, steps=0), lambda: model.invert(x, steps=0)):
        with pytest.raises(ConfigError, match="ddim_steps"):
            call()


def test_latent_cache_gives_the_encoders_latents_without_running_it():
    """cache_latents: the hook encodes the whole training set once (in chunks) before the first
    step; a batch of its images, in any order and layout, then gets the latents the encoder gives
    them (float64 reference: the encoder on each image alone), with the encoder not run; a batch
    with an image the cache lacks runs the encoder; the cache is dropped when the loop ends."""
    from types import SimpleNamespace

    from disdis.models.latent import LatentCache
    cfg = tiny(method={"cache_latents": True}, first_stage={"kind": "vq", "base_channels": 8, "channel_mult": [1, 2],
                                                 "num_res_blocks": 1, "codebook_size": 16})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = images(10)
    dataset = [(image, 0) for image in x]
    model.setup(x)
    hook = [h for h in model.hooks() if isinstance(h, LatentCache)][0]
    hook.chunk = 4  # three chunks, the last of two images
    hook.open(SimpleNamespace(dataset=dataset, model=model, device=torch.device("cpu")))
    assert len(model.latent_cache) == 10
    encoder = model.first_stage.encoder
    with torch.no_grad():
        reference = torch.cat([encoder.double()(image[None].double()) for image in x]) * model.scaler.scale.double()
    encoder.float()
    calls = []
    encoder.register_forward_hook(lambda *args: calls.append(1))
    batch = x[[7, 2, 9, 0]].contiguous(memory_format=torch.channels_last)
    assert torch.allclose(model.latents(batch).double(), reference[[7, 2, 9, 0]], atol=1e-5) and not calls
    unknown = torch.cat([x[:1], images(1, seed=5)])
    assert torch.allclose(model.latents(unknown)[0].double(), reference[0], atol=1e-5) and calls
    hook.close()
    assert model.latent_cache is None and not tiny().method.cache_latents


def test_first_stage_training_model():
    cfg = tiny(method={"name": "first_stage"}, first_stage={"kind": "vq", "base_channels": 8, "channel_mult": [1, 2],
                                                  "num_res_blocks": 1, "codebook_size": 16, "use_discriminator": True,
                                                  "disc_channels": 8, "disc_layers": 2})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    out = model(images(4))
    assert {"loss", "recon_l1", "codebook", "disc_loss"} <= set(out) and int(model.step) == 1
    out["loss"].backward()
    assert all(p.grad is not None for p in model.first_stage.discriminator.parameters())
    with pytest.raises(ConfigError, match="identity"):
        build_model(tiny(method={"name": "first_stage"}))


def test_paper_configuration_builds():
    from disdis.run_config import load_run_config
    cfg = load_run_config("configs/shapes3d.yaml", ["data.path=unused.h5"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.unet.cfg.resolution == 16 and model.tokenizer.num_units == 20
    assert model.first_stage.downsample_factor == 4 and model.first_stage.latent_channels == 3
    assert all(not p.requires_grad for p in model.first_stage.parameters())


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["shapes3d", "mpi3d", "cars3d", "celeba"])
def test_paper_configs_reproduce_the_released_code(name):
    """The released networks and training details: 23,570,324 parameters in the extractor and token
    MLPs, ResBlock dropout 0.1, Skip Dropout 0.2 on the 16x16 and 8x8 skips only (6 of 12), EMA of the
    U-Net only, one constant learning rate."""
    from disdis.run_config import load_run_config
    cfg = load_run_config(f"configs/{name}.yaml", ["data.path=unused"])
    model = build_model(cfg)
    assert count(model.extractor) == 20_600_084 and count(model.tokenizer) == 2_970_240
    assert cfg.method.unet.dropout == 0.1 and cfg.method.unet.skip_dropout == 0.2
    assert [d.p for d in model.unet.skip_dropouts] == [0.0] * 6 + [0.2] * 6  # decoder order: 2x2, 4x4, 8x8, 16x16
    assert cfg.train.ema_modules == ["unet"] and cfg.train.lr == 1e-4 and cfg.train.lr_warmup_kimg == 0
    assert cfg.method.units.token_activation == "relu" and cfg.method.units.token_final_activation


def test_encdiff_preset():
    """EncDiff's recipe: no anchoring, no Skip Dropout, its 1 -> 64 -> 128 -> 16 ELU token MLP with a
    linear last layer, lr 2.56e-4 after a 10k-step (at batch 128) linear warm-up."""
    from disdis.run_config import load_run_config
    cfg = load_run_config("configs/encdiff.yaml", ["data.path=unused"])
    model = build_model(cfg)
    per_unit = (64 + 64) + (64 * 128 + 128) + (128 * 16 + 16)
    assert count(model.tokenizer) == 20 * per_unit
    assert not cfg.method.anchoring.enabled and all(d.p == 0 for d in model.unet.skip_dropouts) and cfg.method.unet.dropout == 0
    assert cfg.train.batch_size == 128 and cfg.train.lr == 2.56e-4
    assert cfg.train.lr_warmup_kimg * 1000 / cfg.train.batch_size == 10_000
    tokens = model.tokenizer(torch.randn(64, 20))
    assert (tokens < 0).any()  # no final activation


def test_the_demo_uses_encdiffs_token_mlp_and_demo_encdiff_differs_only_in_the_method_switches():
    """The demo's tokens come from EncDiff's ELU MLP with a linear last layer (the released ReLU MLP's
    dead units flattened a shape unit's token: docs/demo-study.md); demo_encdiff is then the demo less
    DyGA and Skip Dropout."""
    import dataclasses

    from disdis.run_config import load_run_config
    demo = load_run_config("demo", ["data.path=unused"])
    encdiff = load_run_config("demo_encdiff", ["data.path=unused"])
    assert (demo.method.units.token_activation, demo.method.units.token_final_activation) == ("elu", False)
    assert encdiff.method.units == demo.method.units and encdiff.train == demo.train
    assert encdiff.method.unet == dataclasses.replace(demo.method.unet, skip_dropout=0.0)
    assert not encdiff.method.anchoring.enabled and demo.method.anchoring.enabled
    torch.manual_seed(0)
    assert (build_model(demo).tokenizer(torch.randn(64, 10)) < 0).any()  # no final ReLU


@pytest.mark.parametrize("scale", ["", "demo_"])
def test_the_single_ablation_presets_differ_from_their_base_by_one_switch(scale):
    """dyga_only: the paper's model (or the demo's) without Skip Dropout; skip_dropout_only: without DyGA."""
    import dataclasses

    from disdis.run_config import load_run_config
    base = load_run_config("shapes3d" if not scale else "demo", ["data.path=unused"])
    dyga = load_run_config(f"{scale}dyga_only", ["data.path=unused"])
    skip = load_run_config(f"{scale}skip_dropout_only", ["data.path=unused"])
    assert base.method.unet.skip_dropout > 0 and base.method.anchoring.enabled
    assert dyga.method.anchoring == base.method.anchoring and dyga.method.unet == dataclasses.replace(
        base.method.unet, skip_dropout=0.0)
    assert skip.method.unet == base.method.unet and skip.method.anchoring == dataclasses.replace(
        base.method.anchoring, enabled=False)
    for cfg in (dyga, skip):
        assert (cfg.train, cfg.method.units, cfg.method.diffusion) == (base.train, base.method.units, base.method.diffusion)
    with torch.device("meta"):
        assert all(d.p == 0 for d in build_model(dyga).unet.skip_dropouts)
