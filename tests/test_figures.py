"""Figures of a run (every one on a tiny run; a traversal of a stand-in whose decoder is known),
`disdis sample`, and the HTML report checked in headless Chromium."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from disdis.cli import main
from disdis.figures.units import traversal_images, unit_labels
from disdis.models.method import Method
from disdis.rundir import RunDir
from train_standins import tiny_run_config, write_yaml

EVAL = ["eval.num_train=200", "eval.num_test=100", "eval.num_eval=100", "eval.num_variance_estimate=200",
        "eval.metrics=[factor_vae,dci,mig]"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, shapes3d_grid_npz):
    root = tmp_path_factory.mktemp("figures")
    config = write_yaml(root / "tiny.yaml", tiny_run_config(shapes3d_grid_npz, root / "run", train={"total_kimg": 0.16}))
    assert main(["train", config]) == 0
    assert main(["evaluate", str(root / "run"), *EVAL]) == 0
    return root / "run"


def test_every_figure_of_a_run_is_drawn_wide_and_labelled(evaluated_run, capsys):
    assert main(["figures", str(evaluated_run), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    run = RunDir(evaluated_run)
    names = ("traversals", "anchors", "interchange", "attention", "reconstructions", "shares", "importance",
             "curves", "factor_shares")
    for name in names:
        assert name in printed and Image.open(run.figure(name)).size[0] >= 512, name
    labels = unit_labels(run, 4)
    factors = json.loads(run.metrics.read_text())["protocol"]["factor_names"]
    assert all(label.startswith(f"unit {k}: ") and label.split(": ")[1].split()[0] in factors
               for k, label in enumerate(labels))
    # one row per unit (and the interchange's source row): taller with more rows
    assert Image.open(run.figure("traversals")).size[1] > Image.open(run.figure("reconstructions")).size[1]
    assert main(["figures", str(evaluated_run), "--which", "nope"]) == 2


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, shapes3d_grid_npz):
    root = tmp_path_factory.mktemp("vae")
    config = write_yaml(root / "vae.yaml", {"base": "beta_vae", "data": {"path": str(shapes3d_grid_npz), "kind": None,
                                                                          "resolution": 16},
                                            "run_dir": str(root / "vae"),
                                            "train": {"batch_size": 16, "total_kimg": 0.032, "device": "cpu",
                                                      "num_workers": 0, "checkpoint_every_kimg": 0.032,
                                                      "log_every_kimg": 0.032}})
    assert main(["train", config]) == 0
    return root / "vae"


def test_figures_a_run_cannot_make_are_refused_by_name(vae_run, tmp_path, capsys):
    assert main(["figures", str(vae_run), "--which", "attention"]) == 2
    assert "cannot make it" in capsys.readouterr().err
    assert main(["figures", str(vae_run)]) == 0  # traversals, interchange, reconstructions, curves
    made = capsys.readouterr().out
    assert "traversals" in made and "interchange" in made and "attention" not in made
    assert main(["sample", str(vae_run), "--n", "5", "--out", str(tmp_path / "prior.png")]) == 0
    assert Image.open(tmp_path / "prior.png").size[0] >= 512


class PaintedFactors(Method):
    """A stand-in whose units are the image's factors: image block k holds factor k's value, the
    representation reads the blocks back, the decoder paints them."""
    capabilities = frozenset({"represent", "decode"})

    def __init__(self, num_factors):
        super().__init__()
        self.num_factors = num_factors
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to live on

    def paint(self, factors):
        images = torch.zeros(len(factors), 1, 4, 4 * self.num_factors)
        for k in range(self.num_factors):
            images[:, 0, :, 4 * k:4 * k + 4] = factors[:, k, None, None]
        return images

    def representation(self, images):
        return {"units": torch.stack([images[:, 0, 0, 4 * k] for k in range(self.num_factors)], dim=1)}

    def decode_units(self, units, seed=0, steps=None, noise=None):
        return self.paint(units)


def test_a_traversal_of_a_known_decoder_changes_only_the_traversed_factor():
    rng = np.random.default_rng(0)
    factors = torch.tensor(rng.uniform(-1, 1, size=(50, 3)), dtype=torch.float32)
    model = PaintedFactors(3)
    data = [(image, f) for image, f in zip(model.paint(factors), factors)]
    grid = traversal_images(model, data, seed=0)
    base = grid[0, 0].clone()
    base[:, :, 0:4] = grid[1, 0][:, :, 0:4]  # row 1 keeps factor 0 at the base image's value
    for k in range(3):
        row = grid[k]
        changed = [(row[:, :, :, 4 * j:4 * j + 4] - row[:1, :, :, 4 * j:4 * j + 4]).abs().max().item() for j in range(3)]
        assert changed[k] > 0.5 and all(c == 0 for j, c in enumerate(changed) if j != k), (k, changed)
        expected = torch.quantile(factors[:, k], torch.tensor([0.02, 0.98]))
        assert torch.allclose(row[[0, -1], 0, 0, 4 * k], expected, atol=0.05)


def test_sample_from_the_data_and_from_the_anchors(evaluated_run, tmp_path):
    for source in ("data", "anchors"):
        out = tmp_path / f"{source}.png"
        assert main(["sample", str(evaluated_run), "--n", "10", "--from", source, "--steps", "2", "--out", str(out)]) == 0
        assert Image.open(out).size[0] >= 512
    assert main(["sample", str(evaluated_run), "--from", "prior", "--out", str(tmp_path / "x.png")]) == 2


def _browser():
    """Headless Chromium through its WebDriver (system packages; scripts/test installs them by scripts/setup --browser)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    assert chromium and driver, "headless Chromium and chromedriver are needed: run scripts/setup --browser"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_report_renders_in_a_real_browser(evaluated_run, tmp_path):
    assert main(["figures", str(evaluated_run), "--steps", "2"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(evaluated_run), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<script" not in text and "Reduced protocol" in text and "What each unit carries" in text
    browser = _browser()
    try:
        browser.get(out.as_uri())
        widths = browser.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        page_width = browser.execute_script("return document.documentElement.scrollWidth")
        browser.set_window_size(1280, browser.execute_script("return document.body.scrollHeight"))
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert len(widths) >= 8 and all(w >= 512 for w in widths), widths
    assert errors == []
    assert page_width <= 1280  # nothing wider than the window at 1280 px
    assert Image.open(tmp_path / "report.png").size[0] == 1280


def test_factor_shares_draws_the_best_direction_dotted(tmp_path, monkeypatch):
    """With the train log's ``direction_<factor>`` columns each factor gets a second, dotted line, and
    the title says so; a log from before those columns draws none and says nothing of them."""
    from matplotlib import pyplot as plt

    from disdis.figures.curves import plot_factor_shares
    rows = [{"kimg": k, "unit": u, "a": 0.1 * k, "b": 0.2} for k in (1.0, 2.0) for u in (0, 1)]
    drawn = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (drawn.append(
        ([line.get_linestyle() for line in fig.axes[0].lines], fig.axes[0].get_title())), real_close(fig)))
    plot_factor_shares(rows, ["a", "b"], tmp_path / "plain.png")
    plot_factor_shares(rows, ["a", "b"], tmp_path / "dotted.png",
                       directions=[{"kimg": k, "direction_a": 0.5, "direction_b": 0.9} for k in (1.0, 2.0)])
    plot_factor_shares(rows, ["a", "b"], tmp_path / "old.png", directions=[{"kimg": 1.0, "loss": 0.3}])
    (plain, plain_title), (dotted, dotted_title), (old, old_title) = drawn
    assert plain.count(":") == 0 and dotted.count(":") == 2 and old.count(":") == 0
    assert "dotted" in dotted_title and "dotted" not in plain_title and old_title == plain_title
    assert Image.open(tmp_path / "dotted.png").size[0] >= 512


def refused(capsys, *argv: str) -> str:
    """The one line on stderr of a command refused as a usage error (exit status 2), no traceback."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"disdis {argv[0]}: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def nothing_drawn(monkeypatch):
    """Every drawing of a figure fails the test: a refusal must come before any work."""
    from disdis.figures import labelled

    def drawn(*args, **kwargs):
        raise AssertionError("a figure was drawn before the refusal")
    for name in ("labelled_grid", "overlay_grid"):
        monkeypatch.setattr(f"disdis.figures.units.{name}", drawn)
    monkeypatch.setattr(labelled, "plot_matrix", drawn)
    monkeypatch.setattr("disdis.figures.curves.plot_training_curves", drawn)


def test_an_attention_timestep_outside_the_diffusion_is_refused_up_front(evaluated_run, capsys, nothing_drawn):
    err = refused(capsys, "figures", str(evaluated_run), "--which", "traversals,curves,attention", "--t", "5000")
    assert "--t: expected a timestep in 0..999 (the run's diffusion has 1000 steps), got 5000" in err
    refused(capsys, "figures", str(evaluated_run), "--which", "attention", "--t", "1000")
    assert "got -1" in refused(capsys, "figures", str(evaluated_run), "--which", "attention", "--t", "-1")


def test_bad_counts_and_zero_steps_are_refused_not_replaced(evaluated_run, tmp_path, capsys, nothing_drawn):
    run = str(evaluated_run)
    for targets in ("-2", "0"):
        err = refused(capsys, "interchange", run, "--targets", targets, "--out", str(tmp_path / "x.png"))
        assert f"--targets: expected a number of target images >= 1, got {targets}" in err
    assert "--targets: expected 1..287 target images" in refused(capsys, "interchange", run, "--targets", "288")
    assert "--units: expected comma-separated unit numbers" in refused(capsys, "interchange", run, "--units", "a")
    for argv in (["figures", run, "--which", "traversals"], ["interchange", run], ["sample", run]):
        err = refused(capsys, *argv, "--steps", "0")
        assert "--steps: expected a number of DDIM steps >= 1, got 0" in err
        assert "--steps: expected 1..1000 DDIM steps" in refused(capsys, *argv, "--steps", "1001")
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def disdiff_run(tmp_path_factory, shapes3d_grid_npz):
    """A tiny DisDiff run with the chain it trained itself: RUN/ldm (an unconditional LDM), RUN/ldm/first_stage."""
    from test_disdiff import TINY
    run = tmp_path_factory.mktemp("disdiff") / "run"
    assert main(["train", "demo_disdiff", f"data.path={shapes3d_grid_npz}", f"run_dir={run}",
                 "train.total_kimg=0.032", *TINY]) == 0
    return run


def test_runs_without_units_are_refused_by_figures_as_by_the_other_commands(disdiff_run, capsys, nothing_drawn):
    for run, name in ((disdiff_run / "ldm" / "first_stage", "first_stage"), (disdiff_run / "ldm", "latent_diffusion")):
        err = refused(capsys, "figures", str(run))
        assert f"a '{name}' run has no latent units" in err and "--which curves" in err
        refused(capsys, "figures", str(run), "--which", "traversals")
        # the same check as interchange and sample: the same message
        for command in ("interchange", "sample"):
            same = err.split(": error: ")[1].split(" (its training curves")[0]
            assert refused(capsys, command, str(run)).split(": error: ")[1] == same + "\n"


def test_a_disdiff_run_interchanges_reconstructs_and_samples_through_its_fields(disdiff_run, tmp_path, capsys):
    """DisDiff's units condition DDIM through their gradient fields: the interchange, the reconstructions
    and sampling from data work; the traversals (scalar units decoded) and the anchors (no DyGA here) not."""
    out = tmp_path / "swap.png"
    assert main(["interchange", str(disdiff_run), "--targets", "2", "--units", "0,2", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).width >= 512
    assert main(["figures", str(disdiff_run), "--steps", "2", "--which", "interchange,reconstructions"]) == 0
    assert {"interchange.png", "reconstructions.png"} <= {p.name for p in (disdiff_run / "figures").iterdir()}
    assert "a 'disdiff' run cannot make it" in refused(capsys, "figures", str(disdiff_run), "--which", "traversals")
    assert main(["sample", str(disdiff_run), "--n", "3", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert "no fitted anchors" in refused(capsys, "sample", str(disdiff_run), "--from", "anchors", "--steps", "2")


def test_a_missing_dci_importance_is_named_with_how_to_compute_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"metrics": {"sap": {"sap": 0.1}},
                                                  "protocol": {"factor_names": ["a", "b"]},
                                                  "unit_factor_shares": [[0.5, 0.1], [0.2, 0.6]]}))
    err = refused(capsys, "figures", str(run), "--which", "importance")
    assert "has no DCI importance matrix (its metrics: sap)" in err and "no metrics.json" not in err
    assert f"disdis evaluate {run} eval.metrics=[sap,dci]" in err
    assert main(["figures", str(run), "--which", "shares"]) == 0  # what is there is drawn
    assert "no metrics.json" in refused(capsys, "figures", str(tmp_path), "--which", "importance")


def test_sampling_a_vae_from_anchors_says_it_has_none(vae_run, capsys, nothing_drawn):
    err = refused(capsys, "sample", str(vae_run), "--from", "anchors")
    assert "a 'beta_vae' run has no anchors to sample from" in err and "only --from prior" in err
    assert "generator" not in err
    assert "only --from prior" in refused(capsys, "sample", str(vae_run), "--from", "data")
