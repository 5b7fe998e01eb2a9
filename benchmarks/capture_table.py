"""When did each run's units capture each factor? A time-to-capture table from training logs.

    python benchmarks/capture_table.py RUN [RUN ...] [--captured 0.5]

For every run folder (trained with the training probe on, so that ``logs/train.csv`` holds
``share_<factor>``, each factor's best unit share) prints one row: per factor, the kimg and
training minutes of the first logged interval at which some unit's share reached ``--captured``
(:func:`disdis.diagnostics.capture_times`; the minutes include those of the stages the run trained
first inside its folder, a first stage or an autoencoder: the "before" column), followed by its
share at the last logged interval when it has fallen below ``--captured`` again
(:func:`disdis.diagnostics.lost_factors`), or "-" with the largest share it reached; the kimg
trained; and FactorVAE / DCI / MIG when the run has been evaluated (``metrics.json``; "-" for one
the evaluation did not compute).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from disdis.diagnostics import CAPTURED, capture_times, lost_factors, training_log
from disdis.report.markdown import headline_cells


def row(run: Path, captured: float) -> tuple[list[str], str]:
    if not (run / "logs" / "train.csv").is_file():
        raise SystemExit(f"{run}: no logs/train.csv (not a run folder, or it has not logged yet)")
    rows, names, before = training_log(run)
    if not names:
        raise SystemExit(f"{run}: logs/train.csv has no share_<factor> columns (trained without the probe?)")
    times, lost = capture_times(rows, names, captured, start_minutes=before), lost_factors(rows, names, captured)
    cells = [(f"{times[n][0]:g} ({times[n][1]:.1f} min)" + (f", {lost[n]:.2f} at the end" if n in lost else ""))
             if times[n] else f"- ({max(r.get(f'share_{n}', 0.0) for r in rows):.2f})" for n in names]
    scores = ""
    metrics = run / "metrics.json"
    if metrics.is_file():
        scores = " / ".join(headline_cells(json.loads(metrics.read_text())))  # "-": a metric not computed
    return names, f"| {run} | {rows[-1]['kimg']:g} | {before:.1f} min | " + " | ".join(cells) + f" | {scores} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--captured", type=float, default=CAPTURED, help="share that counts as captured")
    args = p.parse_args()
    header = None
    for run in args.runs:
        names, line = row(run, args.captured)
        if names != header:
            header = names
            print(f"\n| run | kimg | before | {' | '.join(names)} | FactorVAE / DCI / MIG |\n|{'---|' * (len(names) + 4)}")
        print(line)


if __name__ == "__main__":
    main()
