#!/usr/bin/env bash
# GPU check on one GPU: the training-step benchmark at batch 512 in bf16; a short training run at the
# paper configuration (configs/shapes3d.yaml: VQ first stage trained in the run, then the diffusion
# model at batch 512, bf16, with DyGA refits), killed and resumed; then the fidelity run: the paper
# configuration trained for FIDELITY_MINUTES (default 5) on the procedural 64x64 Shapes3D from that
# first stage, printing every minute the share table's best unit per factor and FactorVAE / DCI / MIG
# (reduced protocol). Parts 1-3 take about 6 minutes, part 4 FIDELITY_MINUTES plus its scoring; run
# them in separate calls where one call has a time limit: PARTS="1 2 3" or PARTS="2 4".
# Prints one table at the end. Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default: a temp dir)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-$(mktemp -d)}
PARTS=${PARTS:-1 2 3 4}
want() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
mkdir -p "$OUT"
ROWS="$OUT/rows.txt"
: > "$ROWS"
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$ROWS"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

# 1. training-step benchmark, at the paper configuration
if ! want 1; then
  :
elif [ -f benchmarks/train_step.py ]; then
  timeout 120 "$PY" benchmarks/train_step.py --config configs/shapes3d.yaml --batch 512 --bf16 --device cuda --steps 5 --warmup 2 2>&1 | tee "$OUT/train_step.txt"
  row "train_step.py (batch 512, bf16)" "exit $? (table above, $OUT/train_step.txt)"
else
  row "train_step.py" "missing"
fi

# 2. a Shapes3D-like grid at 64x64: all hues, 2 scales, 4 shapes, 3 orientations = 24,000 images
DATA="$OUT/shapes3d_64.npz"
t0=$SECONDS
want 2 && "$PY" - "$DATA" <<'PY'
import sys
import numpy as np
from disdis.data import render_shapes3d, write_grid_npz
from disdis.data.base import canonical_factors
from disdis.data.render_shapes3d import FACTOR_NAMES
keep = [np.arange(10), np.arange(10), np.arange(10), np.array([0, 7]), np.arange(4), np.array([0, 7, 14])]
classes = canonical_factors([len(k) for k in keep])
rows = np.stack([keep[k][classes[:, k]] for k in range(6)], axis=1)
write_grid_npz(sys.argv[1], images=render_shapes3d(rows, 64), factor_sizes=[len(k) for k in keep], factor_names=FACTOR_NAMES)
PY
row "generate 24,000 64x64 images" "$((SECONDS - t0)) s"

# 3. the paper configuration, short: 20 kimg of first stage (batch 64), then 300 steps of batch 512
#    (refits every epoch = 46 steps on 24,000 images); stopped after the step-200 checkpoint and resumed
RUN="$OUT/run"
ARGS=(data.path="$DATA" run_dir="$RUN" method.first_stage_train.total_kimg=19.2 method.first_stage_train.checkpoint_every_kimg=9.6
      method.first_stage_train.log_every_kimg=3.2 train.total_kimg=102.4 train.checkpoint_every_kimg=51.2
      train.log_every_kimg=12.8 method.anchoring.refit_images=24000)
if want 3; then
t0=$SECONDS
timeout 150 .venv/bin/disdis train configs/shapes3d.yaml "${ARGS[@]}" train.total_kimg=51.2 > "$OUT/train1.log" 2>&1
rc1=$?
t1=$SECONDS
timeout 90 .venv/bin/disdis train --resume "$RUN" train.total_kimg=153.6 > "$OUT/train2.log" 2>&1
rc2=$?
t2=$SECONDS
tail -3 "$OUT/train1.log"; tail -3 "$OUT/train2.log"
row "run: first stage + 100 diffusion steps" "exit $rc1, $((t1 - t0)) s"
row "resume to 300 diffusion steps" "exit $rc2, $((t2 - t1)) s"
"$PY" - "$RUN" "$ROWS" <<'PY'
import sys
from pathlib import Path
from disdis.train.logger import read_csv_log
run, rows_path = Path(sys.argv[1]), sys.argv[2]
out = []
for name, path in [("first stage (batch 64, bf16)", run / "first_stage/logs/train.csv"),
                   ("diffusion (batch 512, bf16)", run / "logs/train.csv")]:
    if not path.is_file():
        out.append((name, "no log"))
        continue
    rows = read_csv_log(path)
    steady = rows[1:] or rows
    rate = sorted(r["img_per_s"] for r in steady)[len(steady) // 2]
    out.append((f"{name} img/s (median)", f"{rate:.0f}"))
    out.append((f"{name} loss first -> last", f"{rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f} at step {rows[-1]['step']:.0f}"))
fits = run / "logs/fits.csv"
if fits.is_file():
    rows = read_csv_log(fits)
    out.append(("anchoring refits", f"{len(rows)}, median {sorted(r['seconds'] for r in rows)[len(rows) // 2]:.1f} s "
                f"(encode + fit of {rows[-1]['tokens']:.0f} tokens), components/unit {rows[-1]['components_mean']:.1f}"))
with open(rows_path, "a") as f:
    for k, v in out:
        line = f"{k:<44} {v}"
        print(line)
        f.write(line + "\n")
PY
fi
grep -h "resuming\|error" "$OUT"/train*.log 2>/dev/null | tail -4

# 4. fidelity: the paper configuration for FIDELITY_MINUTES on the 64x64 grid, scored every minute
if want 4; then
  FS=(method.first_stage_train.total_kimg=19.2 method.first_stage_train.checkpoint_every_kimg=9.6)
  [ -d "$RUN/first_stage/checkpoints" ] && FS=(requires.first_stage="$RUN/first_stage")
  t0=$SECONDS
  timeout $(( ${FIDELITY_MINUTES:-5} * 60 + 240 )) "$PY" benchmarks/fidelity.py configs/shapes3d.yaml \
    data.path="$DATA" run_dir="$OUT/fidelity" "${FS[@]}" train.total_kimg=1000000 train.checkpoint_every_kimg=51.2 \
    train.log_every_kimg=25.6 method.anchoring.refit_images=24000 train.keep_checkpoints=2 \
    --minutes "${FIDELITY_MINUTES:-5}" --every 60 2>"$OUT/fidelity.err" | tee "$OUT/fidelity.txt"
  row "fidelity run (${FIDELITY_MINUTES:-5} min + scoring)" "exit $?, $((SECONDS - t0)) s ($OUT/fidelity.txt)"
  tail -2 "$OUT/fidelity.txt" | while read -r line; do row "fidelity ${line%%]*}]" "${line#*] }"; done
fi
echo
echo "== gpu_check summary ($OUT) =="
cat "$ROWS"
