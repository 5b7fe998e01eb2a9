"""First-stage autoencoders (DESIGN 2.1): shapes, losses, overfitting, latent scaling, perceptual loss."""

import pytest
import torch
import torch.nn.functional as F

from disdis.errors import ConfigError, DisdisError
from disdis.nn.first_stage import (FirstStageConfig, LatentScaler, PerceptualLoss, VectorQuantizer,
                                   build_first_stage, estimate_latent_scale)

TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, codebook_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=size, mode="bilinear", align_corners=False)


def test_released_vq_shapes():
    stage = build_first_stage(FirstStageConfig())
    assert stage.latent_channels == 3 and stage.downsample_factor == 4 and stage.trainable
    assert stage.quantizer.codebook.weight.shape == (2048, 3)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = stage.encode(x)
        assert z.shape == (2, 3, 16, 16)
        assert stage.decode(z).shape == (2, 3, 64, 64)


def test_vector_quantizer_picks_nearest_code_and_passes_gradients_straight_through():
    vq = VectorQuantizer(4, 2, beta=0.25)
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    vq.codebook.weight.data.copy_(codes)
    z = torch.tensor([[0.9, 0.2], [0.1, -0.1], [-0.6, -0.7], [0.2, 0.8]]).t().reshape(1, 2, 2, 2).requires_grad_()
    zq, loss = vq(z)
    assert vq.indices(z).flatten().tolist() == [1, 0, 3, 2]
    torch.testing.assert_close(zq.detach(), codes[[1, 0, 3, 2]].t().reshape(1, 2, 2, 2))
    mse = F.mse_loss(zq.detach(), z.detach()).item()
    assert loss.item() == pytest.approx(1.25 * mse)
    zq.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_vector_quantizer_search_under_bf16_autocast_is_the_float32_search():
    torch.manual_seed(0)
    vq = VectorQuantizer(512, 3, beta=0.25)  # the codes at initialisation, within 1/512 of each other
    z = 0.002 * torch.randn(8, 3, 16, 16)
    # the distances in float64, an independent reference for the nearest code
    dist = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 3).double(), vq.codebook.weight.double())
    expected = dist.argmin(1).view(8, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the first stage trains on a GPU
        assert torch.equal(vq.indices(z), expected)


def test_vq_autoencoder_overfits_a_small_batch():
    torch.manual_seed(0)
    stage = build_first_stage(FirstStageConfig(**TINY))
    x = smooth_images(4, 8)
    opt = torch.optim.Adam(stage.autoencoder_parameters(), lr=5e-3)
    first = None
    for _ in range(120):
        loss, logs = stage.training_loss(x)
        first = first or logs["recon_l1"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"recon_l1", "codebook", "loss"}
    with torch.no_grad():
        final = (stage.eval()(x) - x).abs().mean().item()
    assert final < 0.15 * first and final < 0.06  # |x| averages 0.35


def test_kl_and_identity_stages():
    torch.manual_seed(0)
    kl = build_first_stage(FirstStageConfig(kind="kl", **TINY))
    x = smooth_images(2, 16)
    z = kl.encode(x)
    assert z.shape == (2, 3, 8, 8) and kl.encoder(x).shape == (2, 6, 8, 8)
    torch.testing.assert_close(z, kl.encode(x))  # the mean: deterministic
    loss, logs = kl.training_loss(x)
    assert {"recon_l1", "kl", "loss"} <= set(logs) and logs["kl"] >= 0
    loss.backward()

    ident = build_first_stage(FirstStageConfig(kind="identity"))
    assert ident.latent_channels == 3 and ident.downsample_factor == 1 and not ident.trainable
    assert ident.encode(x) is x and ident.decode(x) is x
    assert not list(ident.parameters())
    with pytest.raises(DisdisError, match="nothing to train"):
        ident.training_loss(x)


def test_discriminator_losses():
    torch.manual_seed(0)
    stage = build_first_stage(FirstStageConfig(**TINY, use_discriminator=True, disc_channels=8, disc_layers=2,
                                               disc_start=5))
    x = smooth_images(2, 32)
    disc_params = set(map(id, stage.discriminator_parameters()))
    assert disc_params and not disc_params & set(map(id, stage.autoencoder_parameters()))
    _, logs = stage.training_loss(x, step=0)
    assert "generator_adv" not in logs
    loss, logs = stage.training_loss(x, step=5)
    assert "generator_adv" in logs
    loss.backward()
    # the autoencoder loss never trains the discriminator
    assert all(p.grad is None for p in stage.discriminator_parameters())
    stage.zero_grad(set_to_none=True)
    d_loss, d_logs = stage.discriminator_loss(x)
    d_loss.backward()
    assert d_logs["disc_loss"] == pytest.approx(d_logs["disc_real"] + d_logs["disc_fake"])
    assert all(p.grad is None for p in stage.autoencoder_parameters())
    with pytest.raises(DisdisError):
        build_first_stage(FirstStageConfig(**TINY)).discriminator_loss(x)


def test_perceptual_loss_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="perceptual_weights"):
        PerceptualLoss(tmp_path / "missing.safetensors")
    # a VGG16 with random weights, named as torchvision names it
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    state = {}
    for i, (cin, cout) in zip(indices, convs):
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(cout)
    path = tmp_path / "vgg.safetensors"
    save_file(state, str(path))
    bad = tmp_path / "bad.safetensors"
    save_file({k: v for k, v in state.items() if k != "features.28.bias"}, str(bad))
    with pytest.raises(ConfigError, match="features.28.bias"):
        PerceptualLoss(bad)
    loss = PerceptualLoss(path)
    assert not any(p.requires_grad for p in loss.parameters())
    x = smooth_images(1, 32)
    assert loss(x, x).item() == 0.0
    assert loss(x, x + 0.3 * torch.randn_like(x)).item() > loss(x, x + 0.03 * torch.randn_like(x)).item() > 0
    stage = build_first_stage(FirstStageConfig(**TINY, perceptual_weights=str(path)))
    assert "perceptual" in stage.training_loss(x)[1]
    assert not set(map(id, stage.perceptual.parameters())) & set(map(id, stage.autoencoder_parameters()))


def test_latent_scale_is_one_over_std_and_fitted_once():
    z = 3.0 * torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 1.0
    scale = estimate_latent_scale(z)
    assert scale == pytest.approx(1.0 / z.double().std().item())
    scaler = LatentScaler()
    assert scaler.fit(z) == pytest.approx(scale) and scaler.fit(10 * z) == pytest.approx(scale)
    assert (scaler(z) - scaler(z).mean()).std().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(scaler.inverse(scaler(z)), z)
    restored = LatentScaler()
    restored.load_state_dict(scaler.state_dict())
    assert float(restored.scale) == pytest.approx(scale) and bool(restored.fitted)
    with pytest.raises(DisdisError):
        estimate_latent_scale(torch.zeros(4, 3))


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="first_stage.kind"):
        build_first_stage(FirstStageConfig(kind="vqgan"))  # type: ignore[arg-type]
