"""Unmixing units by kurtosis (disdis.ica) and its fold into the extractor (models/unit_unmixing.py)."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from disdis.ica import _best_turn, excess_kurtosis, gathered_components, kurtosis_rotation
from disdis.metrics import unit_factor_shares
from disdis.models import build_model
from disdis.models.unit_unmixing import UnitUnmixing, fold_linear
from disdis.run_config import run_config_from_dict
from disdis.rundir import RunDir
from disdis.train.config import TrainConfig
from disdis.train.hooks import HookContext
from train_standins import tiny_run_config


def grid(values: int = 5, factors: int = 3) -> np.ndarray:
    """Every combination of ``factors`` independent uniform factors of ``values`` levels, centred."""
    levels = np.arange(values) - (values - 1) / 2
    return np.array(list(itertools.product(levels, repeat=factors)), dtype=np.float64)


def rotation(degrees: float, i: int, j: int, n: int = 3) -> np.ndarray:
    """The n-d rotation by ``degrees`` in the plane of axes i and j."""
    t, r = np.deg2rad(degrees), np.eye(n)
    r[[i, i, j, j], [i, j, i, j]] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def test_excess_kurtosis_of_analytic_cases():
    three = np.array([-1.0, 0.0, 1.0] * 5)[:, None]  # E z^4 = (2/3) / (2/3)^2 = 1.5: excess -1.5
    assert excess_kurtosis(three)[0] == pytest.approx(-1.5)
    uniform = np.linspace(-1, 1, 200001)[:, None]  # the continuous uniform: 9/5 - 3
    assert excess_kurtosis(uniform)[0] == pytest.approx(-1.2, abs=1e-4)
    gauss = np.random.default_rng(0).standard_normal((400000, 1))
    assert abs(excess_kurtosis(gauss)[0]) < 0.03


def test_kurtosis_rotation_recovers_independent_factors_mixed_by_rotations_and_scales():
    sources = grid()  # 125 samples of three independent 5-level factors
    mixing = rotation(-50, 1, 2) @ rotation(35, 0, 1)
    # standardising takes the scales out (each mixed unit of equal-variance factors has the same spread)
    units = (sources @ mixing.T) * np.array([2.0, 0.5, 3.0]) + np.array([1.0, -2.0, 0.3])
    fit = kurtosis_rotation(units)
    y = units @ fit.matrix.T + fit.offset
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-12)
    corr = np.abs(np.corrcoef(y.T, sources.T)[:3, 3:])  # each unmixed unit against each factor
    assert np.all(corr.max(1) > 0.999) and sorted(corr.argmax(1)) == [0, 1, 2]
    assert fit.kurtosis_after == pytest.approx(3 * 1.3, abs=1e-3)  # 5 levels -2..2: E z^4 / (E z^2)^2 = 6.8 / 2^2 = 1.7
    assert fit.kurtosis_before < fit.kurtosis_after and fit.rotations >= 2


def test_unmixed_factors_are_not_turned_and_inactive_units_pass_through():
    sources = grid(3, 3) * np.array([1.0, 2.0, 0.5])
    units = np.column_stack([sources, 0.01 * sources[:, 0] + 0.02 * sources[:, 1]])
    fit = kurtosis_rotation(units)  # the last unit's spread is under 0.1 of the largest: inactive
    assert fit.rotations == 0
    np.testing.assert_array_equal(kurtosis_rotation(units, order="largest_gain").matrix, fit.matrix)
    np.testing.assert_allclose(fit.matrix, np.diag([*(np.sqrt(1.5) / np.array([1.0, 2.0, 0.5])), 1.0]), atol=1e-12)
    np.testing.assert_array_equal(fit.matrix[3], [0, 0, 0, 1])
    assert fit.offset[3] == 0
    np.testing.assert_array_equal(fit.active, [True, True, True, False])
    with pytest.raises(ValueError, match="the units do not vary"):
        kurtosis_rotation(np.ones((5, 2)))
    with pytest.raises(ValueError, match="order: expected cyclic or largest_gain, got 'random'"):
        kurtosis_rotation(units, order="random")


def test_the_turns_kurtosis_from_moments_equals_the_turned_samples():
    """K of a turned pair from the pair's second and fourth moments (disdis.ica._best_turn) against
    the excess kurtosis of the turned samples themselves, in float64, at every angle of the grid."""
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.integers(0, 4, 300), rng.exponential(1.0, 300) + 0.5 * rng.integers(0, 3, 300)])
    x = (x - x.mean(0)) / x.std(0)
    angles = np.deg2rad(np.arange(0.0, 90.0))
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    direct = (np.abs(excess_kurtosis((c * x[:, 0] + s * x[:, 1]).T))
              + np.abs(excess_kurtosis((-s * x[:, 0] + c * x[:, 1]).T)))
    turn = _best_turn(x, 0, 1, angles)
    best = int(np.argmax(direct))
    assert turn.angle == angles[best] and turn.gain == pytest.approx(direct[best] - direct[0], abs=1e-12)
    np.testing.assert_array_equal(turn.first, c[best] * x[:, 0] + s[best] * x[:, 1])


@pytest.mark.parametrize("order", ["cyclic", "largest_gain"])
def test_both_orders_recover_factors_mixed_by_rotations(order):
    sources = grid()
    units = sources @ (rotation(-50, 1, 2) @ rotation(35, 0, 1)).T
    y = units @ kurtosis_rotation(units, order=order).matrix.T
    corr = np.abs(np.corrcoef(y.T, sources.T)[:3, 3:])
    assert np.all(corr.max(1) > 0.999) and sorted(corr.argmax(1)) == [0, 1, 2]


def test_the_largest_gain_first_unmixes_two_hues_that_cyclic_sweeps_leave_mixed():
    """A real case (tests/data/ica/demo_seed5_units.npy): units 0, 2, 6 and 8 of a demo seed's
    autoencoder (seed 5, 2 threads, 96 kimg) on the 729 grid images, in the grid's order (floor hue,
    wall hue, object hue, scale, shape, orientation; 3 values each, the last fastest). Units 0 and 2
    hold orientation (shares 0.72 and 0.71); 6 and 8 the floor's and the wall's hue mixed at 45
    degrees (0.5 each). A cyclic sweep first turns (0, 3) and (1, 3) by small gains, which mixes
    orientation into the fourth unit and leaves the hues mixed; the largest gain first turns the hues'
    pair, once, and each hue takes a unit of its own."""
    units = np.load(Path(__file__).parent / "data/ica/demo_seed5_units.npy").astype(np.float64)
    sizes = [3] * 6

    def shares(fit):
        return unit_factor_shares(units @ fit.matrix.T + fit.offset, sizes)

    cyclic, largest = kurtosis_rotation(units), kurtosis_rotation(units, order="largest_gain")
    assert cyclic.rotations == 2 and largest.rotations == 1
    assert cyclic.kurtosis_after == pytest.approx(3.799, abs=1e-3)
    assert largest.kurtosis_after == pytest.approx(5.058, abs=1e-3)
    assert shares(cyclic)[:, :2].max() < 0.51  # floor and wall hue: no unit holds either
    hues = shares(largest)[:, :2]
    assert hues.max(0).min() > 0.99 and hues.argmax(0).tolist() == [3, 2]


def test_gathered_components_take_two_factors_spread_over_six_units_into_two():
    """Two independent 5-level factors, each spread over several of six units (a rank-2 mix, plus
    noise 100x smaller): the two leading components, standardised and turned, are the two factors,
    one each; they are centred and of unit variance; more components than units is refused."""
    sources = grid(5, 2)  # 25 samples
    mixing = np.array([[1.0, 0.2], [0.9, -0.3], [0.1, 1.0], [-0.2, 0.8], [0.7, 0.7], [0.5, -0.6]])
    noise = 0.01 * np.random.default_rng(0).standard_normal((len(sources), 6))
    units = np.tile(sources @ mixing.T + noise, (4, 1)) + 3.0  # four copies: 100 samples
    matrix, offset = gathered_components(units, 2)
    assert matrix.shape == (2, 6) and offset.shape == (2,)
    y = units @ matrix.T + offset
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-9)
    corr = np.abs(np.corrcoef(y.T, np.tile(sources, (4, 1)).T)[:2, 2:])
    assert np.all(corr.max(1) > 0.999) and sorted(corr.argmax(1)) == [0, 1]
    for count in (0, 7):
        with pytest.raises(ValueError, match="count: expected 1 to 6"):
            gathered_components(units, count)


def test_fold_linear_makes_the_layer_output_the_map():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 3).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    matrix, offset = np.random.default_rng(1).standard_normal((3, 3)), np.array([0.5, -1.0, 2.0])
    expected = layer(x).detach().numpy() @ matrix.T + offset
    fold_linear(layer, matrix, offset)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-12)


def test_the_hook_folds_the_unmixing_of_the_extractors_units_over_the_data(tmp_path):
    cfg = run_config_from_dict(tiny_run_config("unused.npz", tmp_path, method={"unmix_units": True}))
    torch.manual_seed(0)
    model = build_model(cfg).double()
    hook = next(h for h in model.hooks() if isinstance(h, UnitUnmixing))
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    ctx = HookContext(model=model, dataset=images, cfg=TrainConfig(batch_size=16, num_workers=0), device=torch.device("cpu"),
                      bf16=False, run_dir=RunDir(tmp_path), resume_step=None, steps_per_epoch=3)
    model.extractor.eval()
    before = model.extractor(images).detach().numpy()
    model.train()
    hook.start(ctx, images[:16])
    assert model.extractor.training
    model.extractor.eval()
    after = model.extractor(images).detach().numpy()
    record = json.loads((tmp_path / "logs/unmixing.json").read_text())
    read = before.astype(np.float32).astype(np.float64)  # the hook reads the units in float32
    fit = kurtosis_rotation(read, order="largest_gain")  # the hook's default
    assert record["order"] == "largest_gain"
    np.testing.assert_allclose(record["matrix"], fit.matrix, atol=1e-9)
    # the units' spread is ~1e-4 around means of ~0.2: float32's rounding of the means, scaled to a unit spread
    np.testing.assert_allclose(after, before @ fit.matrix.T + fit.offset, atol=1e-3)
    np.testing.assert_allclose(after.std(0), 1, atol=1e-3)
    assert record["images"] == 40 and record["kurtosis_after"] >= record["kurtosis_before"]


def test_the_config_picks_the_hooks_order(tmp_path):
    for method, order in (({}, "largest_gain"), ({"unmix_order": "cyclic"}, "cyclic")):
        cfg = run_config_from_dict(tiny_run_config("unused.npz", tmp_path, method={"unmix_units": True, **method}))
        assert next(h for h in build_model(cfg).hooks() if isinstance(h, UnitUnmixing)).order == order
