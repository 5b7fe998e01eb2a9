"""Every figure of a run, by name (``disdis figures RUN [--which ...]``), written to RUN/figures/.

    traversals       each unit from its 2% to its 98% quantile, the others fixed     (decode)
    anchors          each unit's token set to its DyGA anchors' means                  (anchoring fitted)
    interchange      one unit at a time swapped from a source into targets             (decode)
    attention        where each unit's token is attended, over the images               (attention)
    reconstructions  images and their reconstructions                                  (decode)
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
    """The figures ``which`` (default: every one the run can make) of the run at ``source``."""
    unknown = sorted(set(which or ()) - set(FIGURES))
    if unknown:
        raise DisdisError(f"--which: unknown figure {unknown[0]!r} (known: {', '.join(FIGURES)})")
    run = RunDir.of(source)
    wanted = list(which or FIGURES)
    made = file_figures(run, [w for w in wanted if w in FILE_FIGURES], explicit=which is not None)
    if any(w in MODEL_FIGURES for w in wanted):
        made.update(_model_figures(source, run, [w for w in wanted if w in MODEL_FIGURES], which is not None,
                                   weights, seed, steps, t))
    return {**{name: made[name] for name in FIGURES if name in made}, **made}  # (and factor_shares with curves)


def _model_figures(source, run: RunDir, wanted: list[str], explicit: bool, weights: str, seed: int,
                   steps: int | None, t: int) -> dict[str, Path]:
    from disdis.figures import units as figs
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, _ = load_trained_model(source, weights)
    model.to(resolve_device(cfg.train.device))
    data = open_training_data(cfg)
    labels = figs.unit_labels(run, figs.unit_count(model, data))
    anchored = getattr(cfg.method, "anchoring", None)
    possible = {"traversals": model.can("decode"), "interchange": model.can("decode"),
                "reconstructions": model.can("decode"), "attention": model.can("attention"),
                "anchors": model.can("generate") and bool(anchored and anchored.enabled
                                                          and float(model.anchor_state.fitted))}
    makers = {"traversals": lambda p: figs.traversals(model, data, p, labels, seed=seed, steps=steps),
              "anchors": lambda p: figs.anchor_traversals(model, data, p, labels, seed=seed, steps=steps),
              "interchange": lambda p: figs.interchange(model, data, p, labels, seed=seed, steps=steps),
              "attention": lambda p: figs.attention_maps(model, data, p, labels, t=t, seed=seed),
              "reconstructions": lambda p: figs.reconstructions(model, data, p, steps=steps)}
    made = {}
    for name in wanted:
        if not possible[name]:
            if explicit:
                raise DisdisError(f"--which {name}: a '{cfg.method.name}' run cannot make it")
            continue
        made[name] = makers[name](run.figure(name))
    return made


def file_figures(run: RunDir, wanted: list[str], explicit: bool) -> dict[str, Path]:
    from disdis.figures.curves import plot_factor_shares, plot_training_curves
    from disdis.figures.labelled import plot_matrix
    from disdis.train.logger import read_csv_log

    result = json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}
    names = (result.get("protocol") or {}).get("factor_names") or []
    made = {}
    for name in wanted:
        if name == "shares" and result.get("unit_factor_shares") and names:
            shares = result["unit_factor_shares"]
            labels = [f"unit {k}" for k in range(len(shares))]
            if result.get("direction_shares"):  # the last row: what the units hold, spread or not
                shares, labels = [*shares, result["direction_shares"]], [*labels, "any direction (a mix)"]
            made[name] = plot_matrix(shares, run.figure("shares"), labels, names,
                                     "What each unit carries: share of each factor's variance (eta^2)", "share")
        elif name == "importance" and (result.get("matrices") or {}).get("dci_importance") and names:
            importance = result["matrices"]["dci_importance"]
            made[name] = plot_matrix(importance, run.figure("importance"), [f"code {k}" for k in range(len(importance))],
                                     names, "DCI importance of each code for each factor (gradient-boosted trees)",
                                     "importance")
        elif name == "curves" and run.log("train").is_file():
            made[name] = plot_training_curves(read_csv_log(run.log("train")), run.figure("curves"))
            if run.log("shares").is_file() and names:
                made["factor_shares"] = plot_factor_shares(read_csv_log(run.log("shares")), names,
                                                           run.figure("factor_shares"),
                                                           directions=read_csv_log(run.log("train")))
        elif explicit:
            raise DisdisError(f"--which {name}: {run} has no {'metrics.json' if name != 'curves' else 'train log'} "
                              "to draw it from (evaluate or train it first)")
    return made


def interchange_grid(source: str | Path, out: str | Path | None = None, source_index: int | None = None,
                     num_targets: int = 6, units: list[int] | None = None, steps: int | None = None,
                     seed: int = 0, weights: str = "ema") -> Path:
    """The labelled interchange figure of a run (``disdis interchange``)."""
    from disdis.figures import units as figs
    from disdis.train.loop import resolve_device
    from disdis.train.run import load_trained_model, open_training_data

    cfg, model, checkpoint = load_trained_model(source, weights)
    if not model.can("decode"):
        raise DisdisError(f"interchange: a '{cfg.method.name}' run has no units to swap")
    model.to(resolve_device(cfg.train.device))
    data = open_training_data(cfg)
    run = RunDir.of(checkpoint)
    labels = figs.unit_labels(run, figs.unit_count(model, data))
    return figs.interchange(model, data, Path(out) if out else run.figure("interchange"), labels, units=units,
                            source=source_index, num_targets=num_targets, seed=seed, steps=steps)
