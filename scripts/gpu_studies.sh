#!/usr/bin/env bash
# Issue 15's grids on one GPU: every (configuration, seed) in its own process (`rat study --jobs`),
# since one small Fashion-MNIST run leaves a large GPU mostly idle. Stops waiting after
# STUDY_SECONDS (default 450); runs that finished have their result file in RESULTS, the others
# resume from RUNS with the same command (the study runner resumes and skips what is done).
#
#   scripts/gpu_studies.sh                  # RESULTS=docs/results RUNS=runs
#   RESULTS=/tmp/res RUNS=/tmp/runs STUDY_SECONDS=3600 scripts/gpu_studies.sh
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-docs/results}
RUNS=${RUNS:-runs}
LIMIT=${STUDY_SECONDS:-450}
PY=${PY:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_studies.sh: no CUDA device; run the grids with 'rat study --grid NAME' instead" >&2
  exit 1
fi
nvidia-smi -L 2>/dev/null
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# a tiny CUDA run first, so a broken set-up costs seconds, not the whole budget
"$PY" -m ratkit train --dataset synthetic --train-subset 256 --epochs 1 --batch-size 32 --device cuda \
  --set data.val_size=128 --set train.val_n=64 --set eval.attacks=clean,pgd20,aa --set eval.n=64 \
  --set eval.aa_n=16 --out "$RUNS/gpu-smoke" --quiet || { echo "gpu_studies.sh: CUDA smoke run failed" >&2; exit 1; }

started=$(date +%s)
timeout "$LIMIT" "$PY" -m ratkit study --grid bases --jobs 12 \
  --out "$RUNS/study-bases" --results "$RESULTS/bases" > "$RUNS/study-bases.log" 2>&1 &
timeout "$LIMIT" "$PY" -m ratkit study --grid rat-at-diagnosis --seeds 0 --jobs 6 --no-aggregate \
  --out "$RUNS/study-rat-at-diagnosis" --results "$RESULTS/rat-at-diagnosis" > "$RUNS/study-diag0.log" 2>&1 &
timeout "$LIMIT" "$PY" -m ratkit study --grid rat-at-diagnosis --seeds 1 --only rat-at-authors,rat-mart-authors \
  --jobs 2 --no-aggregate --out "$RUNS/study-rat-at-diagnosis" --results "$RESULTS/rat-at-diagnosis" \
  > "$RUNS/study-diag1.log" 2>&1 &
wait
echo "studies stopped after $(( $(date +%s) - started )) s"
cat "$RUNS"/study-*.log
ls "$RESULTS/bases" "$RESULTS/rat-at-diagnosis"
