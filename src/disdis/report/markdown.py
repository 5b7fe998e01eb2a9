"""The demo's markdown report and its printed summary: metrics, what each unit carries, when each
factor was captured, and the figures."""

from __future__ import annotations

import time
from pathlib import Path

from disdis.data.demo_grid import DEMO_GRID
from disdis.rundir import RunDir

REPRESENTATIONS = ("tokens_pca", "scalar")  # the paper's protocol first (docs/method.md)
WARM_START = "warm_start"  # the units of the autoencoder that started the extractor, before the diffusion training
UNMIXED_START = "unmixed_start"  # the same units as the unmixing (method.unmix_units) turned them: the training's start
TARGET = {"factor_vae": 0.9, "dci": 0.6}      # the demo's goal: FactorVAE >= 0.9, DCI disentanglement >= 0.6


class Clock:
    """Wall time of each phase of the demo."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    @property
    def total(self) -> float:
        return self.last - self.start


HEADLINE = (("factor_vae", "eval_accuracy"), ("dci", "disentanglement"), ("mig", "discrete_mig"))


def headline(result: dict) -> tuple[float, float, float]:
    m = result["metrics"]
    return tuple(m[metric][key] for metric, key in HEADLINE)


def headline_cells(result: dict) -> list[str]:
    """FactorVAE, DCI disentanglement and MIG as text (3 decimals), "-" for each the evaluation did
    not compute (e.g. eval.metrics=[dci,mig])."""
    m = result.get("metrics") or {}
    return [f"{m[metric][key]:.3f}" if isinstance((m.get(metric) or {}).get(key), (int, float)) else "-"
            for metric, key in HEADLINE]


def report_summary(cfg, results: dict, clock: Clock) -> str:
    """A few lines: wall time per phase, the headline scores of each representation, when each factor
    was captured in training, what the evaluated units hold at the end, and the target."""
    phases = ", ".join(f"{k} {v / 60:.1f}" for k, v in clock.laps.items())
    lines = [f"demo wall time: {clock.total / 60:.1f} min ({phases} min)"]
    for rep, result in results.items():
        fvae, dci, mig = headline(result)
        lines.append(f"{rep:>10}: FactorVAE {fvae:.3f}  DCI disentanglement {dci:.3f}  MIG {mig:.3f}  "
                     f"(FactorVAE >= {TARGET['factor_vae']}, DCI >= {TARGET['dci']}: "
                     f"{'met' if _scores_met(result) else 'not met'})")
    lines.append(capture_line(Path(cfg.run_dir)))
    lines += target_lines(results[REPRESENTATIONS[0]])
    e = cfg.eval
    lines.append(f"reduced protocol (not the paper's): {e.num_train} train / {e.num_test} test points, "
                 f"{e.num_eval} FactorVAE eval votes, {e.num_variance_estimate} variance samples")
    return "\n".join(lines)


def _scores_met(result: dict) -> bool:
    fvae, dci, _ = headline(result)
    return fvae >= TARGET["factor_vae"] and dci >= TARGET["dci"]


def target_reached(result: dict) -> bool:
    """The demo's target on ``result`` (the paper's representation): FactorVAE and DCI at their
    thresholds and every factor captured in its share table (none without one)."""
    from disdis.diagnostics import uncaptured
    shares = result.get("unit_factor_shares")
    return _scores_met(result) and bool(shares) and not uncaptured(shares, list(DEMO_GRID))


def target_lines(result: dict) -> list[str]:
    """What the evaluated units (``result``, the paper's representation) hold at the end, from their
    share table, and the demo's target: FactorVAE and DCI at their thresholds and every factor captured
    at the end; a factor captured during training and lost again does not count."""
    from disdis.diagnostics import CAPTURED, uncaptured
    rep, names, shares = REPRESENTATIONS[0], list(DEMO_GRID), result.get("unit_factor_shares")
    missing = uncaptured(shares, names) if shares else names
    if not shares:
        held = "no share table (the evaluation data has no factor grid)"
    elif not missing:
        held = "every factor captured"
    else:
        direction = dict(zip(names, result.get("direction_shares") or []))
        held = f"{len(names) - len(missing)} of {len(names)} factors captured; not " + ", ".join(
            f"{name} (best unit {share:.2f}" + (f", best direction {direction[name]:.2f}" if name in direction else "") + ")"
            for name, share in missing.items())
    reached = target_reached(result)
    return [f"at the end ({rep}, the share table; a unit's share >= {CAPTURED}): {held}",
            f"target ({rep}: FactorVAE >= {TARGET['factor_vae']}, DCI >= {TARGET['dci']}, every factor captured "
            f"at the end): {'reached' if reached else 'not reached'}"]


def capture_line(run_dir: Path) -> str:
    """When training first captured each factor (some unit's share >= 0.5 in the training probe, the
    live model's units), from logs/train.csv; minutes of training, those of the stages the run trained
    first (first stage, autoencoder) included; and the factors lost again by the last logged interval."""
    from disdis.diagnostics import CAPTURED, capture_times, lost_factors, training_log
    rows, _, before = training_log(run_dir)
    names = list(DEMO_GRID)
    times, lost = capture_times(rows, names, start_minutes=before), lost_factors(rows, names)
    got = [f"{n} at {t[0]:g} kimg ({t[1]:.1f} min)" for n, t in times.items() if t]
    missed = [n for n, t in times.items() if not t]
    counted = f"; kimg of the diffusion training; minutes since the run began, its first stages' {before:.1f} min " \
        "included" if before > 0 else ""
    end = (f"; never captured: {', '.join(missed)}" if missed else "") + \
        (f"; lost again by the end of training: {', '.join(f'{n} ({v:.2f})' for n, v in lost.items())}" if lost else "")
    return (f"captured in training (a unit's share >= {CAPTURED}{counted}): {', '.join(got) or 'none'}"
            + (end or "; every factor captured, and each still at the end of training"))


def shares_table(result: dict, factor_names: list[str]) -> list[str]:
    """Markdown: the share of each unit's variance that each factor explains (eta^2, disdis.metrics.shares)."""
    shares = result.get("unit_factor_shares")
    if not shares:
        return []
    lines = ["What each unit carries (tokens_pca; share of the unit's variance explained by each factor, "
             "1 = that factor alone):", "", "| unit | " + " | ".join(factor_names) + " |",
             "|---" * (len(factor_names) + 1) + "|"]
    for unit, row in enumerate(shares):
        lines.append(f"| {unit} | " + " | ".join(f"**{v:.2f}**" if v >= 0.5 else f"{v:.2f}" for v in row) + " |")
    if result.get("direction_shares"):  # a factor far above its best unit here is held, but spread over units
        lines.append("| any direction (a mix of units) | " + " | ".join(f"{v:.2f}" for v in result["direction_shares"]) + " |")
    return lines


def unmixing_summary(run_dir: Path) -> str | None:
    """What the units' unmixing before the first step did (``method.unmix_units``), from
    logs/unmixing.json; None for a run that did not unmix."""
    from disdis.models.unit_unmixing import read_record
    record = read_record(run_dir)
    if record is None:
        return None
    order = record.get("order", "cyclic")  # runs before method.unmix_order had only the cyclic sweeps
    return (f"{record['rotations']} rotations ({order}) over {sum(record['active'])} of {len(record['active'])} "
            f"units, summed |excess kurtosis| {record['kurtosis_before']:.2f} -> {record['kurtosis_after']:.2f} "
            f"on {record['images']} images")


def unmixing_lines(run_dir: Path, starts_scored: bool) -> list[str]:
    """Markdown: :func:`unmixing_summary` as a sentence; ``starts_scored``: the report scores the units
    before the unmixing (the warm start) and after it."""
    summary = unmixing_summary(run_dir)
    if summary is None:
        return []
    return [f"The extractor's units were unmixed before the first step (method.unmix_units, the pairs turned "
            f"to the largest kurtosis): {summary} (logs/unmixing.json has the map)."
            + (f" {WARM_START} scores the units before it, {UNMIXED_START} after it." if starts_scored else ""), ""]


def capture_curve(run_dir: Path) -> list[str]:
    """Markdown: the training probe's figure of each factor's best unit share against kimg."""
    figure = RunDir.of(run_dir).figure("factor_shares")
    if not figure.is_file():
        return []
    return ["When each factor was captured during training (each factor's best unit share, measured on the "
            f"grid at every logging interval; logs/shares.csv has the whole table): "
            f"![]({figure.relative_to(run_dir)})", ""]


def write_report(path: Path, cfg, results: dict, grid: Path, recon: Path, clock: Clock) -> Path:
    from disdis.io import write_text_atomic
    from disdis.metrics import format_table
    rows = ["| representation | FactorVAE | DCI disentanglement | MIG |", "|---|---|---|---|"]
    for rep, result in results.items():
        rows.append("| {} | {:.3f} | {:.3f} | {:.3f} |".format(rep, *headline(result)))
    grid_names = ", ".join(f"{k} {v}" for k, v in DEMO_GRID.items())
    lines = [
        "# disdis demo", "",
        "```", report_summary(cfg, results, clock), "```", "",
        *rows, "",
        "tokens_pca: each unit's anchored token reduced to one number by PCA (the paper's protocol); "
        "scalar: the feature extractor's raw outputs."
        + (f" {WARM_START}: the units of the autoencoder whose extractor the diffusion training started from "
           "(scored alike; the difference from scalar is what the diffusion training did to them)."
           if WARM_START in results else "")
        + (f" {UNMIXED_START}: those units as the unmixing turned them, the units the diffusion training started from"
           f" (the difference from {WARM_START} is the unmixing's, from scalar the diffusion training's)."
           if UNMIXED_START in results else ""), "",
        f"Data: the synthetic Shapes3D-like grid ({grid_names}; Shapes3D class indices), "
        f"{cfg.data.resolution}x{cfg.data.resolution}.", "",
        *unmixing_lines(path.parent, UNMIXED_START in results),
        "Full metric table (tokens_pca):", "", "```", format_table(results[REPRESENTATIONS[0]]), "```", "",
        *shares_table(results[REPRESENTATIONS[0]], list(DEMO_GRID)), "",
        *capture_curve(path.parent),
        f"Reconstructions (rows: images; first-stage reconstructions; DDIM from their inverted noise and own "
        f"tokens): ![]({recon.relative_to(path.parent)})", "",
        "Latent interchange (row u: the targets of the first row regenerated with unit u's token taken from "
        f"the source in the first column): ![]({grid.relative_to(path.parent)})", "",
    ]
    return write_text_atomic(path, "\n".join(lines))
