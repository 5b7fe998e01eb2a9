"""The diffusion U-Net (DESIGN 2.4): shapes, parameter count, conditioning, Skip Dropout."""

import pytest
import torch
from torch import nn

from disdis.errors import ConfigError
from disdis.nn.unet import SkipDropout, UNet, UNetConfig

TINY = dict(base_channels=16, channel_mult=(1, 2), attention_resolutions=(1, 2), num_heads=2,
            context_dim=8, resolution=8, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def expected_unet_parameters(cfg: UNetConfig) -> int:
    """Parameter count by formula, block by block, for the released layout (a check independent of
    the module code: it only mirrors the channel bookkeeping of DESIGN 2.4)."""
    c0, emb = cfg.base_channels, 4 * cfg.base_channels

    def res(cin, cout):  # GN, conv3x3, emb -> (scale, shift), GN, conv3x3, 1x1 skip if widths differ
        return (2 * cin + 9 * cin * cout + cout + emb * 2 * cout + 2 * cout + 2 * cout + 9 * cout * cout + cout
                + (cin * cout + cout if cin != cout else 0))

    def attn(c):  # GN, proj_in; per layer 3 LN, self-attn, cross-attn, GEGLU; proj_out
        layer = 6 * c + (4 * c * c + c) + (2 * c * c + 2 * cfg.context_dim * c + c) + (c * 8 * c + 8 * c + 4 * c * c + c)
        return 2 * c + (c * c + c) + cfg.transformer_depth * layer + (c * c + c)

    total = (c0 * emb + emb + emb * emb + emb) + (9 * cfg.in_channels * c0 + c0)
    skips, ch, ds = [c0], c0, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            total += res(ch, mult * c0) + (attn(mult * c0) if ds in cfg.attention_resolutions else 0)
            ch = mult * c0
            skips.append(ch)
        if level < len(cfg.channel_mult) - 1:
            total += res(ch, ch)
            skips.append(ch)
            ds *= 2
    total += 2 * res(ch, ch) + attn(ch)
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            total += res(ch + skips.pop(), mult * c0)
            ch = mult * c0
            total += attn(ch) if ds in cfg.attention_resolutions else 0
            if level and i == cfg.num_res_blocks:
                total += res(ch, ch)
                ds //= 2
    return total + 2 * ch + 9 * ch * cfg.out_channels + cfg.out_channels


def test_paper_configuration_shapes_and_parameter_count():
    cfg = UNetConfig()
    unet = UNet(cfg)
    n = sum(p.numel() for p in unet.parameters())
    assert n == expected_unet_parameters(cfg) == 37_549_507
    x, t, ctx = torch.randn(2, 3, 16, 16), torch.tensor([0, 999]), torch.randn(2, 20, 32)
    assert unet(x, t, ctx).shape == (2, 3, 16, 16)
    # transformer blocks at downsampling factors 1, 2, 4 and in the middle: 2 + 2 + 2 + 1 + 3 + 3 + 3
    assert sum(1 for m in unet.modules() if type(m).__name__ == "SpatialTransformer") == 16
    # one skip per encoder block, popped once each by the decoder
    assert len(unet.input_blocks) == len(unet.output_blocks) == len(unet.skip_dropouts) == 12


def test_tiny_configuration_matches_formula():
    cfg = UNetConfig(**TINY, use_scale_shift_norm=True, transformer_depth=2)
    assert sum(p.numel() for p in UNet(cfg).parameters()) == expected_unet_parameters(cfg)


def test_output_depends_on_context_and_time():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**TINY)).eval()
    # the zero-initialised output layers make a fresh net output 0: perturb every parameter
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, ctx = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8)
    t = torch.tensor([10, 500])
    out = unet(x, t, ctx)
    assert not torch.allclose(out, unet(x, t, ctx + 1.0))
    assert not torch.allclose(out, unet(x, t + 100, ctx))
    # samples do not interact: the first sample's output ignores the second's inputs
    other = unet(torch.cat([x[:1], torch.randn(1, 3, 8, 8)]), t, torch.cat([ctx[:1], torch.randn(1, 5, 8)]))
    torch.testing.assert_close(other[0], out[0], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = UNetConfig(**TINY)
    plain, ckpt = UNet(cfg), UNet(UNetConfig(**TINY, use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([3, 7]), torch.randn(2, 5, 8)
    for net in (plain, ckpt):
        net.train()
        net(x, t, ctx).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_skip_dropout_module_drops_whole_channels_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = SkipDropout(0.2).train()
    h = torch.randn(400, 64, 4, 4)
    out = drop(h)
    ratio = out / h
    # per (sample, channel) the factor is constant over space and is 0 or 1/(1-p)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    factors = ratio[:, :, 0, 0]
    assert set(torch.unique(factors.round(decimals=4)).tolist()) == {0.0, 1.25}
    # masks differ between samples, and the drop rate is p (binomial, 25600 draws: 5 sigma = 0.0125)
    assert not torch.equal(factors[0], factors[1])
    assert abs((factors == 0).float().mean().item() - 0.2) < 0.0125
    # E[out] = h: with h = 1 the mean over 25600 (sample, channel) factors is 1 within 5 sigma
    ones = drop(torch.ones(400, 64, 1, 1))
    assert abs(ones.mean().item() - 1.0) < 5 * (0.2 / 0.8 / 25600) ** 0.5
    assert torch.equal(drop.eval()(h), h)
    with pytest.raises(ValueError):
        SkipDropout(1.0)


def _skip_dropout_records(unet: UNet, x, t, ctx):
    """(p, input, output) of every decoder skip's SkipDropout during one forward pass."""
    records = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: records.append((mod.p, inp[0], out)))
             for m in unet.skip_dropouts]
    try:
        unet(x, t, ctx)
    finally:
        for h in hooks:
            h.remove()
    return records


@pytest.mark.parametrize("resolutions, dropped", [("all", {8, 4}), ([4], {4}), ([8], {8})])
def test_skip_dropout_acts_at_configured_resolutions_only(resolutions, dropped):
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**TINY, skip_dropout=0.5, skip_dropout_resolutions=resolutions)).train()
    x, t, ctx = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4]), torch.randn(4, 5, 8)
    records = _skip_dropout_records(unet, x, t, ctx)
    assert len(records) == 6
    for p, inp, out in records:
        size = inp.shape[-1]
        if size in dropped:
            assert p == 0.5
            zero = (out == 0).flatten(2).all(-1)  # (B, C): whole channels dropped
            kept = torch.isclose(out, 2 * inp).flatten(2).all(-1)
            assert (zero | kept).all() and zero.any() and kept.any()
        else:
            assert p == 0.0 and torch.equal(out, inp)
    # identity in eval
    for _, inp, out in _skip_dropout_records(unet.eval(), x, t, ctx):
        assert torch.equal(out, inp)


def test_released_skip_dropout_placement():
    """The released rule drops a skip when its spatial width is not among the attention
    downsampling factors: at the paper's layout (16x16, mult (1, 2, 4, 4), attention at 1, 2, 4)
    the 16x16 and 8x8 skips, 6 of 12; at the demo's (16x16, mult (1, 2, 2), attention at 2, 4)
    4 of 6."""
    for layout, dropped, count in [
            (dict(channel_mult=(1, 2, 4, 4), attention_resolutions=(1, 2, 4), num_res_blocks=2), {16, 8}, 12),
            (dict(channel_mult=(1, 2, 2), attention_resolutions=(2, 4), num_res_blocks=1), {16, 8}, 6)]:
        cfg = UNetConfig(base_channels=8, resolution=16, num_heads=2, context_dim=4, dropout=0.0,
                         skip_dropout=0.3, skip_dropout_resolutions="released", **layout)
        assert UNetConfig().skip_dropout_resolutions == "released"
        x, t, ctx = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.randn(2, 3, 4)
        records = _skip_dropout_records(UNet(cfg).train(), x, t, ctx)
        assert len(records) == count
        assert {inp.shape[-1] for p, inp, _ in records if p > 0} == dropped
        assert sum(p > 0 for p, _, _ in records) == (6 if count == 12 else 4)


def test_skip_dropout_bad_resolution_is_a_config_error():
    with pytest.raises(ConfigError, match="skip_dropout_resolutions"):
        UNet(UNetConfig(**TINY, skip_dropout_resolutions=[16]))


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**TINY)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 8)
    ref = unet(x, t, ctx)
    fast = unet.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t, ctx)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    assert isinstance(unet.out[-1], nn.Conv2d)


def test_coord_channels_give_the_network_each_pixels_position():
    """unet.coord_channels: the first convolution sees (x, y) in [-1, 1] beside the input, so the
    same input pixel value at two positions gives different outputs; off, the network is unchanged."""
    from disdis.nn.unet import _coordinates
    coords = _coordinates(torch.zeros(2, 3, 4, 5))
    assert coords.shape == (2, 2, 4, 5)
    assert torch.equal(coords[0, 0, 0], torch.linspace(-1, 1, 5)) and torch.equal(coords[1, 1, :, 3], torch.linspace(-1, 1, 4))
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=3, out_channels=3, resolution=8, base_channels=8, channel_mult=(1, 2),
                          num_res_blocks=1, attention_resolutions=(2,), num_heads=2, context_dim=4,
                          coord_channels=True)).eval()
    assert net.input_blocks[0][0].in_channels == 5
    nn.init.normal_(net.out[2].weight)  # the output convolution starts at zero
    x = torch.ones(1, 3, 8, 8)  # a constant image: any spatial variation of the output comes from the coordinates
    out = net(x, torch.tensor([10]), torch.zeros(1, 2, 4))
    assert out.shape == (1, 3, 8, 8) and out[0, :, 2:6, 1].sub(out[0, :, 2:6, 6]).abs().max() > 1e-4


def test_context_tokens_also_condition_through_the_time_embedding():
    """method.unet.context_tokens=N: one linear map of the N flattened tokens is added to the time embedding
    (N D x 4C weights and 4C biases more); a token change then moves the ResBlocks' scale and shift."""
    cfg = dict(in_channels=3, out_channels=3, resolution=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(2,), num_heads=2, context_dim=4)
    torch.manual_seed(0)
    plain, film = UNet(UNetConfig(**cfg)), UNet(UNetConfig(**cfg, context_tokens=3))
    extra = sum(p.numel() for p in film.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * 4 * 32 + 32
    emb = {}

    def record(module, args, out):  # the embedding the first ResBlock receives
        emb[len(emb)] = args[1]
    film.input_blocks[1][0].register_forward_hook(record)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([5])
    film(x, t, torch.zeros(1, 3, 4))
    film(x, t, torch.ones(1, 3, 4))
    assert not torch.allclose(emb[0], emb[1])
    with pytest.raises(ConfigError, match="context_tokens"):
        UNetConfig(**cfg, context_tokens=-1)
