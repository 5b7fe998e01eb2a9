"""Time disdis.metrics against disentanglement_lib on the same inputs.

The input is a 480,000 x 20 code table over the Shapes3D factor grid
(10, 10, 10, 8, 4, 15), generated from a seed (6 informative codes: each
factor's class plus noise; 14 noise codes). Every metric runs with
disentanglement_lib's study sample sizes and RandomState(0), in disdis and, when
available, in disentanglement_lib (a subprocess of the interpreter in
$DLIB_PYTHON, or this one if it imports disentanglement_lib; see
scripts/make_metric_reference.py for its TensorFlow-free setup). The table
shows seconds per metric, the speed-up (dlib / disdis) and the largest
difference of any reported value.

    .venv/bin/python benchmarks/metrics.py                 # study sizes (slow: dlib's DCI)
    .venv/bin/python benchmarks/metrics.py --quick         # reduced sizes, a smoke run
    DLIB_PYTHON=/work/dlib-venv/bin/python .venv/bin/python benchmarks/metrics.py

Both sides run BLAS single-threaded (disdis sets it itself; the dlib subprocess
gets OPENBLAS/OMP/MKL_NUM_THREADS=1, its fastest setting on a busy 2-core machine).
disdis fits per-factor classifiers on --jobs threads; dlib is sequential.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GRID = (10, 10, 10, 8, 4, 15)
METRICS = ("factor_vae", "beta_vae", "mig", "sap", "modularity_explicitness", "dci", "downstream")
STUDY = dict(num_train=10000, num_test=5000, num_eval=5000, num_variance_estimate=10000,
             batch_size=64, dci_train=10000, dci_test=5000, downstream_sizes=[100, 1000, 10000])
QUICK = dict(num_train=2000, num_test=1000, num_eval=1000, num_variance_estimate=2000,
             batch_size=64, dci_train=1000, dci_test=500, downstream_sizes=[100, 1000])


def make_table(seed: int = 0, num_codes: int = 20) -> np.ndarray:
    """The benchmark code table (float64, canonical order)."""
    rng = np.random.RandomState(seed)
    factors = np.stack(np.unravel_index(np.arange(int(np.prod(GRID))), GRID), 1)
    table = rng.standard_normal((len(factors), num_codes))
    table[:, :len(GRID)] += 3.0 * factors / (np.array(GRID) - 1.0)
    return table


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_disdis(name: str, table: np.ndarray, sizes: dict, jobs: int) -> dict:
    import disdis.metrics as M
    rs = lambda: np.random.RandomState(0)  # noqa: E731

    def train_test(n_train, n_test):
        r = rs()
        return M.sample_codes(table, GRID, n_train, r) + M.sample_codes(table, GRID, n_test, r)

    if name == "factor_vae":
        return M.factor_vae(table, GRID, rs(), sizes["batch_size"], sizes["num_train"],
                            sizes["num_eval"], sizes["num_variance_estimate"])
    if name == "beta_vae":
        return M.beta_vae(table, GRID, rs(), sizes["batch_size"], sizes["num_train"], sizes["num_eval"])
    if name == "mig":
        return {"discrete_mig": M.mig(*M.sample_codes(table, GRID, sizes["num_train"], rs()))}
    if name == "sap":
        return {"SAP_score": M.sap(*train_test(sizes["num_train"], sizes["num_test"]), n_jobs=jobs)}
    if name == "modularity_explicitness":
        return M.modularity_explicitness(*train_test(sizes["num_train"], sizes["num_test"]), n_jobs=jobs)
    if name == "dci":
        return M.dci(*train_test(sizes["dci_train"], sizes["dci_test"]), random_state=0,
                     n_jobs=jobs)
    if name == "downstream":
        out = M.downstream_efficiency(table, GRID, rs(), sizes["downstream_sizes"], sizes["num_test"],
                                      "exact", jobs)
        return {k: v for k, v in out.items() if ":" in k}
    raise ValueError(name)


def dlib_worker(args) -> None:
    """Runs inside the disentanglement_lib interpreter; prints one JSON line per metric."""
    ref = _load(ROOT / "scripts" / "make_metric_reference.py", "make_metric_reference")
    dlib = ref.load_dlib()
    ref.bind_study_settings(dlib)
    data = ref.grid_data(GRID)
    table = make_table(args.seed)
    sizes = QUICK if args.quick else STUDY
    for name in args.metrics:
        start = time.perf_counter()
        values = ref.run_dlib_metric(dlib, name, data, table, 0, sizes)
        print(json.dumps({"metric": name, "seconds": time.perf_counter() - start, "values": values}),
              flush=True)


def dlib_command() -> list[str] | None:
    if os.environ.get("DLIB_PYTHON"):
        return [os.environ["DLIB_PYTHON"]]
    if importlib.util.find_spec("disentanglement_lib") is not None:
        return [sys.executable]
    return None


def run_dlib(args) -> dict[str, dict]:
    command = dlib_command()
    if command is None or args.no_dlib:
        return {}
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = command + [str(Path(__file__).resolve()), "--dlib-worker", "--seed", str(args.seed),
                     "--metrics", *args.metrics] + (["--quick"] if args.quick else [])
    results = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:
            if line.startswith("{"):
                row = json.loads(line)
                results[row["metric"]] = row
                print(f"  dlib   {row['metric']:<24} {row['seconds']:8.1f}s", file=sys.stderr, flush=True)
    if proc.returncode:
        print(f"disentanglement_lib worker exited with {proc.returncode}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sample sizes (smoke run)")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument("--jobs", type=int, default=2, help="disdis threads for per-factor fits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the code table")
    parser.add_argument("--no-dlib", action="store_true", help="time disdis only")
    parser.add_argument("--dlib-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dlib_worker:
        return dlib_worker(args)

    sizes = QUICK if args.quick else STUDY
    table = make_table(args.seed)
    print(f"disdis metrics benchmark: code table {table.shape} over grid {GRID}, "
          f"{'QUICK (reduced) sizes' if args.quick else 'study sizes'} {sizes}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average before {os.getloadavg()[0]:.1f} (other jobs share the cores: times are "
          f"'measured under load'; ratios from one run are comparable)")
    ours: dict[str, tuple[float, dict]] = {}
    import disdis.metrics  # noqa: F401 - imports (scipy, sklearn) stay out of the first timing
    for name in args.metrics:
        start = time.perf_counter()
        values = run_disdis(name, table, sizes, args.jobs)
        ours[name] = (time.perf_counter() - start, values)
        print(f"  disdis {name:<24} {ours[name][0]:8.1f}s", file=sys.stderr, flush=True)
    theirs = run_dlib(args)
    if not theirs:
        print("disentanglement_lib not available (set DLIB_PYTHON): disdis times only")
    print(f"\n{'metric':<28}{'disdis s':>10}{'dlib s':>10}{'speed-up':>10}{'max |diff|':>12}  note")
    total_ours = total_theirs = 0.0
    for name, (seconds, values) in ours.items():
        row = theirs.get(name)
        if row:
            total_ours += seconds
            total_theirs += row["seconds"]
        diff = max((abs(values[k] - v) for k, v in row["values"].items() if k in values), default=float("nan")) \
            if row else float("nan")
        note = ("dlib trees unseeded: agree to ~0.01" if name in ("dci", "downstream") else
                "deterministic: equal" if row else "")
        dlib_s = f"{row['seconds']:10.1f}" if row else f"{'-':>10}"
        ratio = f"{row['seconds'] / seconds:9.1f}x" if row else f"{'-':>10}"
        print(f"{name:<28}{seconds:10.1f}{dlib_s}{ratio}{diff:12.2e}  {note}")
    if total_theirs:
        print(f"{'whole suite (reference)':<28}{total_ours:10.1f}{total_theirs:10.1f}"
              f"{total_theirs / total_ours:9.1f}x")
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
