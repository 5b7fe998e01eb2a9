"""Feature extractor and per-unit token MLPs (DESIGN 2.2) at the paper configuration."""

import pytest
import torch
from torch import nn

from disdis.errors import ConfigError
from disdis.nn.units import FeatureExtractor, UnitsConfig, UnitTokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_extractor_shapes_and_parameter_count():
    """The released image encoder at N = 20, 64 px: 20,600,084 parameters, 16,781,312 of them in
    the 4096 x 4096 layer; 20,599,124 without the (redundant) conv biases."""
    d = 64
    weights = 3 * d * 49 + 16 * (d * 2 * d + 2 * d * 4 * d + 4 * d * 4 * d + 4 * d * 4 * d)
    conv_biases = d + 2 * d + 4 * d + 4 * d + 4 * d
    norms = 2 * conv_biases  # BatchNorm weight + bias per channel
    fcs = (4096 * 4096 + 4096) + (4096 * 256 + 256) + (256 * 20 + 20)
    extractor = FeatureExtractor(UnitsConfig(conv_bias=True))
    assert count(extractor) == weights + conv_biases + norms + fcs == 20_600_084
    assert count(extractor.fc[1]) == 16_781_312
    assert count(FeatureExtractor(UnitsConfig())) == 20_600_084 - conv_biases == 20_599_124
    assert extractor(torch.randn(2, 3, 64, 64)).shape == (2, 20)
    released = count(extractor) + count(UnitTokenizer(UnitsConfig()))  # the released image encoder + MLPs
    assert released == 23_570_324


def test_extractor_head_widths():
    """fc_hidden lists the head's hidden widths; an empty list maps the features straight to N."""
    narrow = FeatureExtractor(UnitsConfig(fc_hidden=256))  # an integer: one hidden layer (older configs)
    assert narrow.fc is not None and UnitsConfig(fc_hidden=256).fc_hidden == (256,)
    assert [m.out_features for m in narrow.fc if isinstance(m, nn.Linear)] == [256, 20]
    assert count(narrow) == 3_817_812  # the earlier single-hidden-layer head
    direct = FeatureExtractor(UnitsConfig(fc_hidden=(), resolution=32, extractor_width=8, num_units=5))
    assert [(m.in_features, m.out_features) for m in direct.fc if isinstance(m, nn.Linear)] == [(128, 5)]
    with pytest.raises(ConfigError, match="units.fc_hidden"):
        UnitsConfig(fc_hidden=(0,))


def test_extractor_other_resolution_and_bad_resolution():
    extractor = FeatureExtractor(UnitsConfig(resolution=32, extractor_width=8, num_units=5))
    assert extractor.fc[1].in_features == 32 * 2 * 2 and extractor.fc[1].out_features == 4096
    assert extractor(torch.randn(3, 3, 32, 32)).shape == (3, 5)
    with pytest.raises(ConfigError, match="units.resolution"):
        FeatureExtractor(UnitsConfig(resolution=40))


def test_extractor_same_output_in_channels_last():
    torch.manual_seed(0)
    extractor = FeatureExtractor(UnitsConfig(extractor_width=8, resolution=32)).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = extractor(x)
    fast = extractor.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_tokenizer_parameter_count_and_shapes():
    cfg = UnitsConfig()
    per_unit = (1 * 256 + 256) + (256 * 512 + 512) + (512 * 32 + 32)
    tokenizer = UnitTokenizer(cfg)
    assert count(tokenizer) == 20 * per_unit == 2_970_240
    tokens = tokenizer(torch.randn(4, 20))
    assert tokens.shape == (4, 20, 32) and tokens.is_contiguous()
    assert (tokens >= 0).all()  # ReLU after the last layer too (released)


@pytest.mark.parametrize("variant", ["released", "encdiff"])
def test_tokenizer_matches_independent_mlps(variant):
    """Unit k's token is exactly MLP_k(unit k) for N separate nn.Linear MLPs with the same weights:
    ReLU after every layer (released), or ELU after the hidden ones only (EncDiff)."""
    torch.manual_seed(0)
    encdiff = variant == "encdiff"
    cfg = UnitsConfig(num_units=5, token_dim=6, mlp_hidden=(7, 9), token_activation="elu" if encdiff else "relu",
                      token_final_activation=not encdiff)
    tokenizer = UnitTokenizer(cfg)
    units = torch.randn(3, 5)
    tokens = tokenizer(units)
    for k in range(5):
        mlp = []
        for w, b in zip(tokenizer.weights, tokenizer.biases):
            lin = nn.Linear(w.shape[1], w.shape[2])
            lin.weight.data = w[k].t().clone()
            lin.bias.data = b[k].clone()
            mlp += [lin, nn.ELU() if encdiff else nn.ReLU()]
        if encdiff:
            mlp.pop()  # no activation after the last layer
        expected = nn.Sequential(*mlp)(units[:, k:k + 1])
        torch.testing.assert_close(tokens[:, k], expected)
    assert (tokens < 0).any() == encdiff


def test_tokenizer_units_are_independent():
    """Changing one unit changes only its own token (no mixing across units)."""
    torch.manual_seed(1)
    tokenizer = UnitTokenizer(UnitsConfig(num_units=4, token_dim=8, mlp_hidden=(16, 16)))
    units = torch.randn(2, 4)
    moved = units.clone()
    moved[:, 2] += 1.0
    a, b = tokenizer(units), tokenizer(moved)
    torch.testing.assert_close(a[:, [0, 1, 3]], b[:, [0, 1, 3]])
    with pytest.raises(ValueError):
        tokenizer(torch.randn(2, 3))
