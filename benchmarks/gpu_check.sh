#!/usr/bin/env bash
# GPU check on one GPU: the training-step benchmark at batch 512 in bf16; a short training run at the
# paper configuration (configs/shapes3d.yaml: VQ first stage trained in the run, then the diffusion
# model at batch 512, bf16, with DyGA refits), stopped at its first checkpoint and resumed; then the
# fidelity run: the paper configuration trained for FIDELITY_MINUTES (default 3) on the procedural 64x64
# Shapes3D from that first stage, printing every minute the share table's best unit per factor and
# FactorVAE / DCI / MIG (reduced protocol). The whole check keeps within BUDGET_S seconds (default 540, one
# device call of 600 s): part 4 trains for what parts 1-3 left of it, FIDELITY_MINUTES at most.
# On a lent GPU machine (no .venv there; its python3 holds torch, and disdis runs from src/):
#   COPY_TO=$OUT PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh /tmp/gc      (run's timeout_s=600)
# COPY_TO: where to copy the table and the logs (the checkpoints and the grid stay in DIR).
# SMOKE=1 runs every part at toy sizes on whatever device there is (the test suite runs it on the CPU, so
# that the script works the first time a GPU is lent). Without it, no CUDA device is an error.
# Prints one table at the end. Usage: benchmarks/gpu_check.sh [DIR]   (default: a temp dir)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DIR=${1:-$(mktemp -d)}
PARTS=${PARTS:-1 2 3 4}
FIDELITY_MINUTES=${FIDELITY_MINUTES:-3}
BUDGET_S=${BUDGET_S:-540}
want() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
mkdir -p "$DIR"
ROWS="$DIR/rows.txt"
: > "$ROWS"
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$ROWS"; }

# the sizes, in kimg: at batch 512 a first stage of 19.2 kimg is 300 steps of its batch 64, the diffusion
# run stops at its first checkpoint (51.2 kimg, 100 steps) and resumes to 153.6 (300 steps); the grid has
# all hues, 2 scales, 4 shapes, 3 orientations (24,000 images)
STEP_ARGS=(--batch 512 --bf16 --device cuda) STEP_LABEL="batch 512, bf16"
GRID=full
FIRST_STAGE=(method.first_stage_train.total_kimg=19.2 method.first_stage_train.checkpoint_every_kimg=9.6
             method.first_stage_train.log_every_kimg=3.2)
STOP_KIMG=51.2 RESUME_KIMG=153.6 LOG_KIMG=12.8 REFIT_IMAGES=24000 EVERY=60
EXTRA=(train.device=cuda)  # train.device=auto would train on the CPU, unseen, where CUDA is missing
EVAL=()
if [ -n "${SMOKE:-}" ]; then
  EXTRA=(method.first_stage.base_channels=8 method.first_stage.channel_mult=[1,2] method.first_stage.codebook_size=32
         method.first_stage_train.batch_size=16 method.first_stage_train.num_workers=0
         method.units.num_units=4 method.units.token_dim=8 method.units.extractor_width=4 method.units.fc_hidden=[16]
         method.units.mlp_hidden=[8] method.unet.base_channels=8 method.unet.channel_mult=[1,2]
         method.unet.attention_resolutions=[2] method.unet.num_heads=2 method.unet.context_dim=8
         method.anchoring.refit_unit=kimg method.anchoring.refit_every=0.032 method.diffusion.ddim_steps=2
         train.batch_size=16 train.num_workers=0 train.channels_last=false train.probe_images=64 eval.batch_size=64)
  STEP_ARGS=(--batch 8 --set "${EXTRA[@]}") STEP_LABEL="smoke, batch 8"
  GRID=small
  FIRST_STAGE=(method.first_stage_train.total_kimg=0.064 method.first_stage_train.checkpoint_every_kimg=0.032
               method.first_stage_train.log_every_kimg=0.016)
  STOP_KIMG=0.064 RESUME_KIMG=0.128 LOG_KIMG=0.032 REFIT_IMAGES=64 EVERY=10
  EVAL=(--eval "eval.metrics=[factor_vae,dci,mig]" eval.num_train=100 eval.num_test=50 eval.num_eval=20
        eval.num_variance_estimate=100)
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
if [ -z "${SMOKE:-}" ] && ! "$PY" -c "import sys, torch, disdis; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: $PY sees no CUDA device (or cannot import torch and disdis); SMOKE=1 runs the toy sizes anywhere" >&2
  exit 2
fi

# 1. training-step benchmark, at the paper configuration
if want 1; then
  timeout 90 "$PY" benchmarks/train_step.py --config configs/shapes3d.yaml "${STEP_ARGS[@]}" --steps 5 --warmup 2 2>&1 | tee "$DIR/train_step.txt"
  row "train_step.py ($STEP_LABEL)" "exit $? (table above, $DIR/train_step.txt)"
fi

# 2. the Shapes3D-like grid at 64x64 (SMOKE: 2 values of each factor, 64 images), an npz file (data.kind=null
#    below: the preset's kind reads the real dataset's HDF5)
DATA="$DIR/shapes3d_64.npz"
t0=$SECONDS
if want 2; then
"$PY" - "$DATA" "$GRID" <<'PY'
import sys
import numpy as np
from disdis.data import render_shapes3d, write_grid_npz
from disdis.data.base import canonical_factors
from disdis.data.render_shapes3d import FACTOR_NAMES
if sys.argv[2] == "full":
    keep = [np.arange(10), np.arange(10), np.arange(10), np.array([0, 7]), np.arange(4), np.array([0, 7, 14])]
else:
    keep = [np.arange(2), np.arange(2), np.arange(2), np.array([0, 7]), np.arange(2), np.array([0, 14])]
classes = canonical_factors([len(k) for k in keep])
rows = np.stack([keep[k][classes[:, k]] for k in range(6)], axis=1)
write_grid_npz(sys.argv[1], images=render_shapes3d(rows, 64), factor_sizes=[len(k) for k in keep], factor_names=FACTOR_NAMES)
print(f"grid: {len(rows)} images at 64x64 -> {sys.argv[1]}")
PY
row "generate the 64x64 grid ($GRID)" "exit $?, $((SECONDS - t0)) s"
fi

# 3. the paper configuration, short: the first stage, then the diffusion model to its first checkpoint
#    (refits every epoch: 46 steps on 24,000 images), stopped there and resumed
RUN="$DIR/run"
ARGS=(data.path="$DATA" data.kind=null run_dir="$RUN" "${FIRST_STAGE[@]}" train.checkpoint_every_kimg=$STOP_KIMG
      train.log_every_kimg=$LOG_KIMG method.anchoring.refit_images=$REFIT_IMAGES "${EXTRA[@]}")
if want 3; then
t0=$SECONDS
timeout 150 "$PY" -m disdis train configs/shapes3d.yaml "${ARGS[@]}" train.total_kimg=$STOP_KIMG > "$DIR/train1.log" 2>&1
rc1=$?
t1=$SECONDS
timeout 120 "$PY" -m disdis train --resume "$RUN" train.total_kimg=$RESUME_KIMG > "$DIR/train2.log" 2>&1
rc2=$?
t2=$SECONDS
tail -3 "$DIR/train1.log"; tail -3 "$DIR/train2.log"
row "run: first stage + diffusion to $STOP_KIMG kimg" "exit $rc1, $((t1 - t0)) s"
row "resume to $RESUME_KIMG kimg" "exit $rc2, $((t2 - t1)) s"
"$PY" - "$RUN" "$ROWS" <<'PY'
import sys
from pathlib import Path
from disdis.train.logger import read_csv_log
run, rows_path = Path(sys.argv[1]), sys.argv[2]
out = []
for name, path in [("first stage", run / "first_stage/logs/train.csv"), ("diffusion", run / "logs/train.csv")]:
    if not path.is_file():
        out.append((name, "no log"))
        continue
    rows = read_csv_log(path)
    steady = rows[1:] or rows
    rate = sorted(r["img_per_s"] for r in steady)[len(steady) // 2]
    out.append((f"{name} img/s (median)", f"{rate:.0f} (log windows: refits and saves in)"))
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
grep -h "resuming\|error" "$DIR"/train*.log 2>/dev/null | tail -4

# 4. fidelity: the paper configuration for FIDELITY_MINUTES on the 64x64 grid, scored every minute
if want 4; then
  FS=("${FIRST_STAGE[@]}")
  [ -d "$RUN/first_stage/checkpoints" ] && FS=(requires.first_stage="$RUN/first_stage")
  t0=$SECONDS
  # what is left of BUDGET_S, less 120 s for starting and for the last scoring, FIDELITY_MINUTES at most
  minutes=$(awk -v m="$FIDELITY_MINUTES" -v left=$((BUDGET_S - SECONDS - 120)) 'BEGIN { l = left / 60; print (l < m ? l : m) }')
  limit=$(awk -v m="$minutes" 'BEGIN { print int(m * 60 + 120) }')
  if awk -v m="$minutes" 'BEGIN { exit !(m < 0.25) }'; then
    row "fidelity run" "skipped: $((BUDGET_S - SECONDS)) s of BUDGET_S=$BUDGET_S left"
  else
  timeout "$limit" "$PY" benchmarks/fidelity.py configs/shapes3d.yaml \
    data.path="$DATA" data.kind=null run_dir="$DIR/fidelity" "${FS[@]}" train.total_kimg=1000000 train.checkpoint_every_kimg=$STOP_KIMG \
    train.log_every_kimg=$LOG_KIMG method.anchoring.refit_images=$REFIT_IMAGES train.keep_checkpoints=2 "${EXTRA[@]}" \
    --minutes "$minutes" --every $EVERY "${EVAL[@]}" 2>"$DIR/fidelity.err" | tee "$DIR/fidelity.txt"
  row "fidelity run ($minutes min + scoring)" "exit $?, $((SECONDS - t0)) s ($DIR/fidelity.txt)"
  tail -2 "$DIR/fidelity.txt" | while read -r line; do row "fidelity ${line%%]*}]" "${line#*] }"; done
  fi
fi
echo
echo "== gpu_check summary ($DIR, $SECONDS s) =="
cat "$ROWS"
if [ -n "${COPY_TO:-}" ]; then
  mkdir -p "$COPY_TO" && cp "$DIR"/*.txt "$DIR"/*.log "$DIR"/*.err "$COPY_TO"/ 2>/dev/null
fi
true
