"""The diagnostic benchmarks the README lists, each run as a user runs it, on a tiny demo run (seconds each):
a script that no test runs breaks unseen when the library under it changes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from disdis.cli import main
from disdis.data.demo_grid import DEMO_GRID
from test_demo import TINY

ROOT = Path(__file__).resolve().parent.parent
# the tiny demo's networks, for the scripts that build a model of the demo's config around its first stage
NETWORKS = [o for o in TINY if o.startswith(("method.units.", "method.unet."))]
FACTORS = list(DEMO_GRID)


def bench(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(run folder, data file) of a tiny demo: the first stage, the autoencoder warm start, the diffusion stage."""
    root = tmp_path_factory.mktemp("benchmarks")
    run, data = root / "run", root / "grid.npz"
    assert main(["demo", "--out", str(run), "--data", str(data), "--threads", "1", *TINY]) == 0
    return run, data


def table_rows(out: str, first: str) -> list[list[str]]:
    """The cells of a markdown table's rows whose first cell matches ``first`` (a regex)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("|") and re.fullmatch(first, line.strip("|").split("|")[0].strip())]


def test_capture_table_reads_a_run_folder(demo):
    run, _ = demo
    (row,) = table_rows(bench("capture_table.py", run), re.escape(str(run)))
    assert row[1] == "0.128" and len(row) == 10  # kimg, before, the six factors, the metrics
    assert re.fullmatch(r"\d\.\d{3} / \d\.\d{3} / \d\.\d{3}", row[-1])


def test_unit_information_probes_a_run_folder(demo):
    run, _ = demo
    out = bench("unit_information.py", "--threads", "1", run)
    assert [r[0] for r in table_rows(out, "|".join(FACTORS))] == FACTORS  # a linear probe per factor
    assert sorted(r[0] for r in table_rows(out, r"\d+")) == ["0", "1", "2", "3"]  # each of the 4 units


def test_unit_drift_reads_a_checkpoint(demo):
    run, _ = demo
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    out = bench("unit_drift.py", "--draws", "2", "--threads", "1", checkpoint)
    assert re.search(r"^per factor, its best unit's share and change: floor_hue unit \d", out, re.M)
    assert re.search(r"^gradient: the mean's norm \S+; batches of \d+: RMS norm", out, re.M)


def test_factor_oracle_and_unit_retention_build_the_config_around_a_first_stage(demo):
    run, data = demo
    given = [f"data.path={data}", f"requires.first_stage={run / 'first_stage'}", *NETWORKS]
    out = bench("factor_oracle.py", "demo", *given, "--groups", "floor_hue", "--steps", "2", "--extractor-steps", "2",
                "--threads", "1")
    assert [r[0] for r in table_rows(out, "nothing|floor_hue|every factor")] == ["nothing", "floor_hue", "every factor"]
    out = bench("unit_retention.py", "demo", *given, "--start-only", "--extractor-steps", "2", "--threads", "1")
    assert re.search(r"^supervised start, linear read-out accuracy per factor: floor_hue \d\.\d\d", out, re.M)


def test_warm_start_seeds_trains_and_scores_an_autoencoder_per_seed(demo, tmp_path):
    _, data = demo
    autoencoder = [o for o in TINY if o.startswith(("method.extractor_init", "method.units.", "eval."))]
    out = bench("warm_start_seeds.py", "--seeds", "0", "--jobs", "1", "--out", tmp_path / "seeds", "--data", data,
                *autoencoder)
    assert len(table_rows(out, "0")) == 2  # the seed's shares, then the same units unmixed
    assert re.search(r"^every factor captured once unmixed in \d of 1 seeds$", out, re.M)


def test_anchors_and_metrics_benchmarks_print_their_tables():
    out = bench("anchors.py", "--units", "2", "--tokens", "500", "--dim", "4", "--threads", "1")
    assert re.search(r"^default +\d+\.\d +\d+\.\d +1\.00 +\d+/\d+/\d+ +2/2 +\d\.\d{4}$", out, re.M)
    out = bench("metrics.py", "--quick", "--no-dlib", "--metrics", "mig", "factor_vae")
    assert re.search(r"^mig +\d+\.\d", out, re.M) and re.search(r"^factor_vae +\d+\.\d", out, re.M)


def test_capture_table_shows_a_dash_for_a_metric_the_evaluation_did_not_compute(demo, tmp_path):
    """A run evaluated with eval.metrics=[dci,mig] has no FactorVAE: '-' in its place, the others printed."""
    import json
    import shutil
    run = tmp_path / "run"
    shutil.copytree(demo[0], run, ignore=shutil.ignore_patterns("checkpoints", "figures"))
    result = json.loads((run / "metrics.json").read_text())
    del result["metrics"]["factor_vae"]
    (run / "metrics.json").write_text(json.dumps(result))
    (row,) = table_rows(bench("capture_table.py", run), re.escape(str(run)))
    assert re.fullmatch(r"- / \d\.\d{3} / \d\.\d{3}", row[-1])
