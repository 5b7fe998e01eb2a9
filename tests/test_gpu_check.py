"""benchmarks/gpu_check.sh at toy sizes (``SMOKE=1``) on the CPU: every part runs as it would on the first
GPU a session is lent, where its device time is too short to find a broken script."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_every_part_at_toy_sizes(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "SMOKE": "1", "FIDELITY_MINUTES": "0.4", "PYTHON": sys.executable}  # 24 s: steps past a checkpoint on a slow machine too
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    summary = done.stdout.split("== gpu_check summary")[1]
    pairs = [(k.strip(), v) for k, v in re.findall(r"^(\S.{43}) (.*)$", summary, re.M)]
    rows = dict(pairs)
    for part in ("train_step.py (smoke, batch 8)", "generate the 64x64 grid (small)",
                 "run: first stage + diffusion to 0.064 kimg", "resume to 0.128 kimg", "fidelity run (0.4 min + scoring)"):
        assert rows[part].startswith("exit 0"), (part, rows.get(part), done.stderr[-2000:])
    assert "resuming from" in (out / "train2.log").read_text()  # the second run continued the first
    assert re.match(r"\d+ \(log windows", rows["first stage img/s (median)"])
    assert re.match(r"\d+ \(log windows", rows["diffusion img/s (median)"])
    assert re.search(r"at step 8$", rows["diffusion loss first -> last"])  # 0.128 kimg at batch 16
    assert rows["anchoring refits"].split(",")[0].isdigit()
    final = [v for k, v in pairs if k == "fidelity [final]"]  # two rows: the shares, then the scores
    assert any("floor_hue" in v and "top" in v for v in final)  # the probe's shares, read off the run's log
    assert any(re.search(r"FactorVAE \d\.\d{3}  DCI \d\.\d{3}  MIG \d\.\d{3}", v) for v in final)  # a checkpoint scored


def test_gpu_check_without_cuda_stops_before_any_part(tmp_path):
    """Not SMOKE and no CUDA device: an error at once, not the paper configuration trained on the CPU."""
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("SMOKE", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "check")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "sees no CUDA device" in done.stderr
    assert not (tmp_path / "check" / "run").exists() and "summary" not in done.stdout


def test_gpu_check_skips_the_fidelity_part_when_the_budget_is_spent(tmp_path):
    env = {**os.environ, "SMOKE": "1", "PARTS": "4", "BUDGET_S": "60", "PYTHON": sys.executable,
           "COPY_TO": str(tmp_path / "copy")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "check")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and re.search(r"^fidelity run +skipped: \d+ s of BUDGET_S=60 left", done.stdout, re.M)
    assert (tmp_path / "copy" / "rows.txt").read_text() == (tmp_path / "check" / "rows.txt").read_text()


def test_fidelity_reports_a_training_run_that_fails(tmp_path):
    """benchmarks/fidelity.py: a run that stops on its own (here: data that do not exist) is reported with
    its exit code and the last line of its log, and the script exits non-zero, instead of waiting out the
    minutes and printing that no probe row has come yet."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "demo",
                           f"data.path={tmp_path / 'missing.npz'}", f"run_dir={tmp_path / 'run'}", "--minutes", "5",
                           "--every", "60"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert re.search(r"^\[final\] training stopped with exit code 2: .*missing\.npz", done.stdout, re.M)
