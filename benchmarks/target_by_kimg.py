"""How long must a run train? The demo's target at every kept checkpoint of each run.

    python benchmarks/target_by_kimg.py RUN [RUN ...] [--weights ema|model]

For every checkpoint in ``RUN/checkpoints`` (keep them with ``train.keep_checkpoints=N``; the default
keeps the last 2) evaluates the run's representation with its own eval section, as the demo does
(``disdis evaluate CHECKPOINT``; written to ``RUN/metrics_kimg<K>.json`` and read from there when
present), and prints one row: kimg, FactorVAE / DCI / MIG, each factor's best unit share and whether
the demo's target holds (FactorVAE >= 0.9, DCI >= 0.6, every factor captured). A run's training draws
depend only on (seed, step), not on its length (no schedule reads ``train.total_kimg``), so the
checkpoint at K kimg is exactly what a run of ``train.total_kimg=K`` ends with; the last lines count,
per kimg, the runs that reach the target there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from disdis.diagnostics import CAPTURED
from disdis.evaluation import evaluate_run
from disdis.report import headline, target_reached
from disdis.rundir import RunDir
from disdis.train import checkpoint as ckpt


def checkpoint_result(path: Path, run: Path, weights: str) -> tuple[float, dict]:
    """(kimg, the evaluation's result) of one checkpoint, evaluated once and cached beside the run."""
    kimg = float(ckpt.read_meta(path)["kimg"])
    out = run / f"metrics_kimg{kimg:g}{'' if weights == 'ema' else '_' + weights}.json"
    if out.is_file():
        return kimg, json.loads(out.read_text())
    result, _ = evaluate_run(path, weights=weights, out=out, n_jobs=1)
    return kimg, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (trained on a factor grid)")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    args = parser.parse_args()
    reached: dict[float, list[bool]] = {}
    print("| run | kimg | FactorVAE / DCI / MIG | best unit per factor | target |\n|---|---|---|---|---|")
    for run in args.runs:
        checkpoints = RunDir(run).list_checkpoints()
        if not checkpoints:
            raise SystemExit(f"{run}: no checkpoints")
        for path in checkpoints:
            kimg, result = checkpoint_result(path, run, args.weights)
            best = [max(column) for column in zip(*result.get("unit_factor_shares") or [[]])]
            ok = target_reached(result)
            reached.setdefault(kimg, []).append(ok)
            print(f"| {run} | {kimg:g} | " + " / ".join(f"{v:.3f}" for v in headline(result)) + " | "
                  + " / ".join(f"{b:.2f}" for b in best) + f" | {'reached' if ok else 'not'} |", flush=True)
    print(f"\ntarget (FactorVAE >= 0.9, DCI >= 0.6, every factor's best unit >= {CAPTURED}) reached:")
    for kimg in sorted(reached):
        print(f"  at {kimg:g} kimg: {sum(reached[kimg])} of {len(reached[kimg])} runs")


if __name__ == "__main__":
    main()
