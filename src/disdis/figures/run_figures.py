"""Every figure of a run, by name (``disdis figures RUN [--which ...]``), written to RUN/figures/.

    traversals       each unit from its 2% to its 98% quantile, the others fixed     (decode: scalar units)
    anchors          each unit's token set to its DyGA anchors' means                  (generate, anchoring fitted)
    interchange      one unit at a time swapped from a source into targets             (decode or generate)
    attention        where each unit's token is attended, over the images               (attention)
    reconstructions  images and their reconstructions                                  (decode or generate)
    shares           the unit x factor share table as a heat map                        (metrics.json)
    importance       DCI's importance matrix (codes x factors)                          (metrics.json)
    curves           loss and images/s against kimg; each factor's capture curve        (logs)

A figure the run cannot make (a method without the capability, a run not yet evaluated) is left
out of the default set; asked for by name, it is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from disdis.errors import DisdisError
from disdis.rundir import RunDir

MODEL_FIGURES = ("traversals", "anchors", "interchange", "attention", "reconstructions")
FILE_FIGURES = ("shares", "importance", "curves")
FIGURES = MODEL_FIGURES + FILE_FIGURES


def make_figures(source: str | Path, which: Sequence[str] | None = None, weights: str = "ema", seed: int = 0,
                 steps: int | None = None, t: int = 500) -> dict[str, Path]:
    """The figures ``which`` (default: every one the run can make) of the run at ``source``. Every
    check (the names, the numbers, what the run can make) comes before the first figure is drawn."""
    from disdis.figures.checks import check_at_least
    unknown = sorted(set(which or ()) - set(FIGURES))
    if unknown:
        raise DisdisError(f"--which: unknown figure {unknown[0]!r} (known: {', '.join(FIGURES)})")
    check_at_least("--seed", seed, 0)
    check_at_least("--steps", steps, 1, "a number of DDIM steps")
    run = RunDir.of(source)
    wanted = list(which or FIGURES)
    if "attention" in wanted:
        check_at_least("--t", t, 0, "a timestep")
    result = _metrics(run)
    files = _drawable_files(run, result, wanted, explicit=which is not None)
    model_wanted = [w for w in wanted if w in MODEL_FIGURES]
    draw_models = _model_figures(source, run, model_wanted, which is not None, weights, seed, steps, t) \
        if model_wanted else None
    made = _draw_file_figures(run, result, files)
    if draw_models is not None:
        made.update(draw_models())
    return {**{name: made[name] for name in FIGURES if name in made}, **made}  # (and factor_shares with curves)


def _model_figures(source, run: RunDir, wanted: list[str], explicit: bool, weights: str, seed: int,
                   steps: int | None, t: int):
    """Loads the model and checks that it can make ``wanted`` with these settings; returns the call
    that draws them."""
    from disdis.figures import units as figs
    from disdis.figures.checks import check_steps, check_timestep, require_units
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, _ = load_trained_model(source, weights)
    require_units(cfg, model, hint=" (its training curves: --which curves)")
    anchored = getattr(cfg.method, "anchoring", None)
    makes_images = model.can("decode") or model.can("generate")
    possible = {"traversals": model.can("decode"), "interchange": makes_images,
                "reconstructions": makes_images, "attention": model.can("attention"),
                "anchors": model.can("generate") and bool(anchored and anchored.enabled
                                                          and float(model.anchor_state.fitted))}
    for name in wanted:
        if explicit and not possible[name]:
            raise DisdisError(f"--which {name}: a '{cfg.method.name}' run cannot make it")
    wanted = [name for name in wanted if possible[name]]
    check_steps(model, steps)
    if "attention" in wanted:
        check_timestep(model, t)

    def draw() -> dict[str, Path]:
        model.to(resolve_device(cfg.train.device))
        data = open_training_data(cfg)
        labels = figs.unit_labels(run, figs.unit_count(model, data))
        makers = {"traversals": lambda p: figs.traversals(model, data, p, labels, seed=seed, steps=steps),
                  "anchors": lambda p: figs.anchor_traversals(model, data, p, labels, seed=seed, steps=steps),
                  "interchange": lambda p: figs.interchange(model, data, p, labels, seed=seed, steps=steps),
                  "attention": lambda p: figs.attention_maps(model, data, p, labels, t=t, seed=seed),
                  "reconstructions": lambda p: figs.reconstructions(model, data, p, steps=steps)}
        return {name: makers[name](run.figure(name)) for name in wanted}
    return draw


def _metrics(run: RunDir) -> dict:
    return json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}


def _evaluate_hint(run: RunDir, result: dict, metric: str) -> str:
    """How to compute ``metric`` too: the run's evaluation again with it added to the metrics it has."""
    from disdis.metrics.suite import METRIC_NAMES
    have = [m for m in (result.get("metrics") or {}) if m in METRIC_NAMES]
    return f"disdis evaluate {run} eval.metrics=[{','.join([*have, metric] if metric not in have else have)}]"


def _file_figure_missing(run: RunDir, result: dict, name: str, explicit: bool) -> str | None:
    """None when the run has what figure ``name`` is drawn from; else why not (raised when ``explicit``)."""
    names = (result.get("protocol") or {}).get("factor_names") or []
    if name == "curves":
        why = None if run.log("train").is_file() else \
            f"{run} has no train log ({run.log('train')}) to draw it from (train it first)"
    elif not run.metrics.is_file():
        why = f"{run} has no metrics.json to draw it from (evaluate it first: disdis evaluate {run})"
    elif not names:
        why = f"{run.metrics} has no factor names: the run was evaluated on data without a factor grid"
    elif name == "shares":
        why = None if result.get("unit_factor_shares") else f"{run.metrics} has no unit x factor share table " \
            f"(evaluate it again: disdis evaluate {run})"
    else:  # importance
        why = None if (result.get("matrices") or {}).get("dci_importance") else \
            (f"{run.metrics} has no DCI importance matrix (its metrics: "
             f"{', '.join(result.get('metrics') or {}) or 'none'}); compute it with DCI: "
             f"{_evaluate_hint(run, result, 'dci')}")
    if why is not None and explicit:
        raise DisdisError(f"--which {name}: {why}")
    return why


def _drawable_files(run: RunDir, result: dict, wanted: list[str], explicit: bool) -> list[str]:
    """The figures of ``wanted`` drawn from files that the run has what to draw from."""
    return [w for w in wanted if w in FILE_FIGURES and _file_figure_missing(run, result, w, explicit) is None]


def file_figures(run: RunDir, wanted: list[str], explicit: bool) -> dict[str, Path]:
    """The figures of ``wanted`` drawn from the run's files (metrics.json, the logs), those it has
    what to draw from (a missing source is an error when ``explicit``)."""
    result = _metrics(run)
    return _draw_file_figures(run, result, _drawable_files(run, result, wanted, explicit))


def _draw_file_figures(run: RunDir, result: dict, names_to_draw: list[str]) -> dict[str, Path]:
    from disdis.figures.curves import plot_factor_shares, plot_training_curves
    from disdis.figures.labelled import plot_matrix
    from disdis.train.logger import read_csv_log

    names = (result.get("protocol") or {}).get("factor_names") or []
    made = {}
    for name in names_to_draw:
        if name == "shares":
            shares = result["unit_factor_shares"]
            labels = [f"unit {k}" for k in range(len(shares))]
            if result.get("direction_shares"):  # the last row: what the units hold, spread or not
                shares, labels = [*shares, result["direction_shares"]], [*labels, "any direction (a mix)"]
            made[name] = plot_matrix(shares, run.figure("shares"), labels, names,
                                     "What each unit carries: share of each factor's variance (eta^2)", "share")
        elif name == "importance":
            importance = result["matrices"]["dci_importance"]
            made[name] = plot_matrix(importance, run.figure("importance"), [f"code {k}" for k in range(len(importance))],
                                     names, "DCI importance of each code for each factor (gradient-boosted trees)",
                                     "importance")
        elif name == "curves":
            train_log = read_csv_log(run.log("train"))
            made[name] = plot_training_curves(train_log, run.figure("curves"))
            if run.log("shares").is_file() and names:
                made["factor_shares"] = plot_factor_shares(read_csv_log(run.log("shares")), names,
                                                           run.figure("factor_shares"), directions=train_log)
    return made


def interchange_grid(source: str | Path, out: str | Path | None = None, source_index: int | None = None,
                     num_targets: int = 6, units: list[int] | None = None, steps: int | None = None,
                     seed: int = 0, weights: str = "ema") -> Path:
    """The labelled interchange figure of a run (``disdis interchange``)."""
    from disdis.figures import units as figs
    from disdis.figures.checks import check_at_least, check_steps, require_units
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    check_at_least("--targets", num_targets, 1, "a number of target images")
    check_at_least("--steps", steps, 1, "a number of DDIM steps")
    check_at_least("--seed", seed, 0)
    cfg, model, checkpoint = load_trained_model(source, weights)
    require_units(cfg, model, "decode", what="the swap of a unit")
    check_steps(model, steps)
    model.to(resolve_device(cfg.train.device))
    data = open_training_data(cfg)
    run = RunDir.of(checkpoint)
    labels = figs.unit_labels(run, figs.unit_count(model, data))
    return figs.interchange(model, data, Path(out) if out else run.figure("interchange"), labels, units=units,
                            source=source_index, num_targets=num_targets, seed=seed, steps=steps)
