"""Train a run config for a fixed wall time and print, every interval, what the units hold.

Starts ``disdis train CONFIG OVERRIDES`` in a subprocess and, every ``--every`` seconds,
reads the training probe's last row (each factor's best unit share, the top principal
direction) and scores the newest checkpoint with the run's evaluation (``--eval`` overrides,
a reduced protocol by default): FactorVAE, DCI disentanglement and MIG. After
``--minutes`` the training is stopped and the newest checkpoint is scored once more.
Made for the GPU check (``benchmarks/gpu_check.sh``), where the paper configuration trains on
the procedural 64x64 Shapes3D; on a CPU give it a small config.

    .venv/bin/python benchmarks/fidelity.py configs/shapes3d.yaml data.path=shapes3d_64.npz \\
        requires.first_stage=RUN/first_stage run_dir=OUT/fidelity --minutes 6 --every 60
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EVAL = ["eval.metrics=[factor_vae,dci,mig]", "eval.num_train=2000", "eval.num_test=1000", "eval.num_eval=1000",
        "eval.num_variance_estimate=2000"]


def score(run_dir: Path, eval_overrides: list[str]) -> str:
    from disdis.report import headline
    from disdis.evaluation import evaluate_run
    from disdis.rundir import RunDir
    found = RunDir(run_dir).list_checkpoints()
    if not found:
        return "no checkpoint yet"
    result, _ = evaluate_run(found[-1], eval_overrides, out=run_dir / "metrics_fidelity.json")
    fvae, dci, mig = headline(result)
    return f"{found[-1].name}: FactorVAE {fvae:.3f}  DCI {dci:.3f}  MIG {mig:.3f}"


def shares(run_dir: Path) -> str:
    from disdis.rundir import RunDir
    from disdis.train.logger import read_csv_log
    path = RunDir(run_dir).log("train")
    rows = read_csv_log(path) if path.is_file() else []
    if not rows or "units_top_pc" not in rows[-1]:
        return "no probe row yet"
    r = rows[-1]
    cells = "  ".join(f"{k[6:]} {v:.2f}" for k, v in r.items() if k.startswith("share_"))
    return f"kimg {r['kimg']:.1f}  loss {r['loss']:.4f}  {r['img_per_s']:.0f} img/s  | {cells}  | top {r['units_top_pc']:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value for disdis train; must set run_dir")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--every", type=float, default=60.0, help="seconds between reports")
    p.add_argument("--eval", nargs="*", default=EVAL, help="eval.* overrides for the scores")
    args = p.parse_intermixed_args()
    run = [o.split("=", 1)[1] for o in args.overrides if o.startswith("run_dir=")]
    if not run:
        p.error("give run_dir=DIR among the overrides")
    run_dir = Path(run[0])
    log = run_dir.with_name(run_dir.name + ".log")
    # `python -m disdis`, not the `disdis` script: where disdis runs from its source folder
    # (PYTHONPATH=src, as on a lent GPU machine) no script is installed beside the interpreter
    proc = subprocess.Popen([sys.executable, "-m", "disdis", "train", args.config, *args.overrides],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    start = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - start < args.minutes * 60:
            try:  # until the next report, or sooner if the training stops
                proc.wait(timeout=max(0.0, min(args.every, args.minutes * 60 - (time.monotonic() - start))))
            except subprocess.TimeoutExpired:
                pass
            minute = (time.monotonic() - start) / 60
            print(f"[{minute:4.1f} min] {shares(run_dir)}", flush=True)
            print(f"[{minute:4.1f} min] {score(run_dir, args.eval)}", flush=True)
        failed = proc.poll() not in (None, 0)  # it stopped on its own before the time was up
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait()
    if failed:
        last = (log.read_text().strip().splitlines() or ["(nothing in its log)"])[-1]
        print(f"[final] training stopped with exit code {proc.returncode}: {last}")
        return 1
    print(f"[final] {shares(run_dir)}")
    print(f"[final] {score(run_dir, args.eval)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
