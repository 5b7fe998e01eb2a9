"""The training probe: the share table of units that are known functions of the factors, the
collapse statistic, the attention statistics in analytic cases, and its place in a real run."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

from disdis.cli import main
from disdis.diagnostics import UnitProbe, probe_classes
from disdis.nn.layers import TransformerBlock
from disdis.train.checkpoint import list_checkpoints, load_checkpoint
from disdis.train.logger import read_csv_log
from train_standins import repo_script, tiny_run_config, write_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = (3, 4, 2)
NAMES = ["a", "b", "c"]


class GridImages(torch.utils.data.Dataset):
    """Image i is a 1x1 'image' whose three channels are factor classes of grid row i."""

    def __init__(self):
        self.rows = np.array(list(itertools.product(*[range(s) for s in SIZES])), dtype=np.float32)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return torch.from_numpy(self.rows[i]).view(3, 1, 1), torch.zeros(3)

    def index_of(self, factors):
        return np.ravel_multi_index(np.asarray(factors).T, SIZES)


class KnownUnits(nn.Module):
    """Units: factor a; factor b; a + b scaled to equal variance; a constant. One transformer block
    whose cross-attention sees 5 tokens; its forward is a stand-in training loss."""

    def __init__(self, key_scale: float):
        super().__init__()
        self.block = TransformerBlock(dim=4, num_heads=1, context_dim=4)
        nn.init.constant_(self.block.cross_attn.to_k.weight, key_scale)
        self.tokens = nn.Parameter(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)))

    def representation(self, images):
        f = images.flatten(1)
        a, b = f[:, 0], f[:, 1]
        standard = (a - 1) / math.sqrt(2 / 3) + (b - 1.5) / math.sqrt(1.25)
        return {"units": torch.stack([a, b, standard, torch.ones_like(a)], dim=1)}

    def forward(self, images):
        x = torch.randn(len(images), 6, 4)  # 6 'pixels', drawn from the (forked) global generator
        out = self.block(x, self.tokens.expand(len(images), 5, 4))
        return {"loss": out.abs().mean()}


def probe(tmp_path, model_scale=0.0, **kw):
    data = GridImages()
    p = UnitProbe(data, NAMES, SIZES, tmp_path, grid_index=data.index_of, attention_images=8, **kw)
    p.open(None)
    return p, KnownUnits(model_scale)


def test_share_table_of_known_units(tmp_path):
    p, model = probe(tmp_path)
    row = p(model, step=10, kimg=0.5)
    p.close()
    assert row["share_a"] == pytest.approx(1.0) and row["share_b"] == pytest.approx(1.0)
    assert row["share_c"] == pytest.approx(0.0, abs=1e-12) and row["factors_captured"] == 2
    assert row["direction_a"] == pytest.approx(1.0) and row["direction_b"] == pytest.approx(1.0)
    assert row["direction_c"] == pytest.approx(0.0, abs=1e-12)
    table = read_csv_log(tmp_path / "logs" / "shares.csv")
    assert [r["unit"] for r in table] == [0, 1, 2, 3]
    mixed = table[2]  # a and b each explain half of the standardised sum
    assert mixed["a"] == pytest.approx(0.5) and mixed["b"] == pytest.approx(0.5)
    assert table[3]["a"] == 0.0  # a constant unit has no share
    # top principal direction: units a, b, a+b on the grid, computed independently
    units = model.representation(torch.stack([GridImages()[i][0] for i in range(24)]))["units"].double().numpy()
    eig = np.linalg.eigvalsh(np.cov(units.T))
    assert row["units_top_pc"] == pytest.approx(eig[-1] / eig.sum())
    with Image.open(tmp_path / "figures" / "factor_shares.png") as im:
        assert im.width >= 512


def test_figure_redrawn_at_most_every_redraw_seconds_and_completed_at_close(tmp_path, monkeypatch):
    import disdis.figures
    drawn = []
    monkeypatch.setattr(disdis.figures, "plot_factor_shares", lambda rows, names, path, **kw: drawn.append(len(rows)))
    p, model = probe(tmp_path, redraw_seconds=math.inf)
    for step in (1, 2, 3):
        p(model, step, step / 10)
    assert drawn == [4]  # the first probe draws (its 4 units' rows); the next ones wait
    p.close()
    assert drawn == [4, 12]  # closing draws what the figure lacked
    p, model = probe(tmp_path / "every", redraw_seconds=0.0)
    p(model, 1, 0.1), p(model, 2, 0.2)
    p.close()
    assert drawn[2:] == [4, 8]  # each probe drew; nothing left to draw at close


def test_uniform_attention_is_a_global_bias(tmp_path):
    """Zero keys: uniform weights over the 5 tokens (entropy log 5) and one output vector for every
    pixel (selectivity 0). Large keys sharpen the weights."""
    p, model = probe(tmp_path, model_scale=0.0)
    row = p(model, 1, 0.1)
    assert row["attn0_entropy"] == pytest.approx(math.log(5), rel=1e-6)
    assert row["attn0_selectivity"] == pytest.approx(0.0, abs=1e-10)
    sharp = p(KnownUnits(5.0), 2, 0.2)
    assert sharp["attn0_entropy"] < 0.9 * math.log(5) and sharp["attn0_selectivity"] > 1e-3


class ReadsA(KnownUnits):
    """A model whose loss depends on the units through factor a alone."""

    def forward(self, images, condition_images=None):
        cond = images if condition_images is None else condition_images
        out = super().forward(images)
        return {"loss": out["loss"] + (cond[:, 0] - images[:, 0]).abs().mean()}


def test_usage_is_the_loss_rise_when_one_factor_is_swapped(tmp_path):
    p, _ = probe(tmp_path)
    row = p(ReadsA(1.0), 1, 0.1)
    assert row["usage_b"] == 0.0 and row["usage_c"] == 0.0  # the same draws: exactly the own loss
    assert row["usage_a"] > 0.5  # moving a by one class (2 -> 0 moves it by 2) raises the loss by >= 1 per image
    assert "usage_a" not in p(KnownUnits(1.0), 2, 0.2)  # a forward without condition_images: not measured


def test_probe_leaves_the_training_generator_alone(tmp_path):
    p, model = probe(tmp_path)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    p(model.train(), 1, 0.1)
    assert torch.equal(torch.rand(3), expected) and model.training


def test_capture_times():
    from disdis.diagnostics import capture_times
    rows = [{"step": 10, "kimg": 1.0, "sec_per_step": 6.0, "share_a": 0.2, "share_b": 0.6},
            {"step": 20, "kimg": 2.0, "sec_per_step": 12.0, "share_a": 0.5, "share_b": 0.1}]
    assert capture_times(rows, ["a", "b", "c"]) == {"a": (2.0, 3.0), "b": (1.0, 1.0), "c": None}
    assert capture_times(rows, ["a"], start_minutes=4.0) == {"a": (2.0, 7.0)}  # after the run's first stages


def test_lost_factors_are_those_captured_once_and_below_the_threshold_at_the_last_interval():
    from disdis.diagnostics import lost_factors
    rows = [{"share_a": 0.2, "share_b": 0.6, "share_c": 0.1}, {"share_a": 0.6, "share_b": 0.7, "share_c": 0.4},
            {"share_a": 0.3, "share_b": 0.55, "share_c": 0.45}]
    assert lost_factors(rows, ["a", "b", "c"]) == {"a": 0.3}  # b is still held, c never was
    assert lost_factors(rows, ["a", "b"], captured=0.58) == {"a": 0.3, "b": 0.55}
    assert lost_factors([], ["a"]) == {}


def test_uncaptured_lists_each_factor_no_unit_holds_with_its_best_share():
    from disdis.diagnostics import uncaptured
    shares = [[0.9, 0.1, 0.2], [0.05, 0.4, 0.3]]  # units x factors
    assert uncaptured(shares, ["a", "b", "c"]) == {"b": 0.4, "c": 0.3}
    assert uncaptured(shares, ["a", "b", "c"], captured=0.25) == {}


def test_probe_classes_fit_the_budget():
    assert [c.tolist() for c in probe_classes([3, 4], 100)] == [[0, 1, 2], [0, 1, 2, 3]]
    classes = probe_classes([10, 10, 10, 8, 4, 15], 4096)
    assert math.prod(len(c) for c in classes) <= 4096 and all(len(c) >= 2 for c in classes)
    assert all(c[0] == 0 and c[-1] == s - 1 for c, s in zip(classes, [10, 10, 10, 8, 4, 15]))


def test_run_logs_shares_and_trains_the_same_weights_with_or_without_probe(tmp_path, shapes3d_grid_npz):
    base = tiny_run_config(shapes3d_grid_npz, tmp_path / "probed", train={"total_kimg": 0.32, "log_every_kimg": 0.16})
    assert main(["train", write_yaml(tmp_path / "a.yaml", base)]) == 0
    assert main(["train", write_yaml(tmp_path / "a.yaml", base), f"run_dir={tmp_path / 'plain'}",
                 "train.probe_images=0"]) == 0
    rows = read_csv_log(tmp_path / "probed" / "logs" / "train.csv")
    factors = ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert all(0 <= r[f"share_{f}"] <= r[f"direction_{f}"] + 1e-9 <= 1 + 1e-9 for r in rows for f in factors)
    assert all(0 < r["units_top_pc"] <= 1 and "attn0_entropy" in r and "attn0_selectivity" in r for r in rows)
    assert "share_scale" not in read_csv_log(tmp_path / "plain" / "logs" / "train.csv")[0]
    assert len(read_csv_log(tmp_path / "probed" / "logs" / "shares.csv")) == 2 * 4  # 2 logs x 4 units
    assert (tmp_path / "probed" / "figures" / "factor_shares.png").is_file()
    a, _ = load_checkpoint(list_checkpoints(tmp_path / "probed" / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(tmp_path / "plain" / "checkpoints")[-1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_anchor_shift_within_value_spread_of_tokens_known_as_functions_of_the_factors():
    script = repo_script("benchmarks/anchor_shift.py")
    sizes = [3, 4]
    values = torch.cartesian_prod(torch.arange(3.0), torch.arange(4.0))  # the grid's order: factor 0 slowest
    tokens = torch.stack([values[:, 0], 2 * values[:, 0] ** 2], dim=1)  # a function of factor 0 alone
    spread = script.rms(tokens - tokens.mean(0))
    assert spread == pytest.approx(math.sqrt(((tokens - tokens.mean(0)) ** 2).sum(1).mean().item()))
    assert script.within_value_spread(tokens, sizes, 0) == pytest.approx(0.0, abs=1e-6)
    # each value of factor 1 holds every value of factor 0 once: its mean token is the grand mean
    assert script.within_value_spread(tokens, sizes, 1) == pytest.approx(spread)
