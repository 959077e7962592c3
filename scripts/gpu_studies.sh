#!/usr/bin/env bash
# Several study grids at once on one GPU: each argument is one `rat study` command line (its grid,
# a name in configs/studies/ or a file, first, then its flags), and every (configuration, seed) of
# it runs in its own process (`--jobs`), since one small Fashion-MNIST run leaves a large GPU mostly
# idle. Each grid's runs go to RUNS/study-<grid>, its result files to RESULTS/<grid> (<grid>: the
# name, or the file's name without .yaml). Stops waiting after STUDY_SECONDS
# (default 450); runs that finished have their result file in RESULTS, the others resume from RUNS
# with the same command (the study runner resumes and skips what is done).
#
#   scripts/gpu_studies.sh "bases --jobs 12" "rat-at-diagnosis --seeds 0 --jobs 6 --no-aggregate"
#   RESULTS=/tmp/res RUNS=/tmp/runs STUDY_SECONDS=3600 scripts/gpu_studies.sh "docs/results/pilots/regime-pilot-2.yaml --jobs 2"
#   scripts/gpu_studies.sh "bases --evaluate-only --jobs 12"     # evaluate runs trained elsewhere
#
# Defaults: RESULTS=docs/results RUNS=runs PY=python3; OMP_NUM_THREADS=1 unless set.
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-docs/results}
RUNS=${RUNS:-runs}
LIMIT=${STUDY_SECONDS:-450}
PY=${PY:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1

if [ $# -eq 0 ]; then
  echo "usage: scripts/gpu_studies.sh \"GRID [rat study flags]\" ..." >&2
  exit 2
fi
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
for spec in "$@"; do
  read -r grid flags <<< "$spec"
  name=$(basename "$grid" .yaml)
  # shellcheck disable=SC2086  # the flags are meant to split
  timeout "$LIMIT" "$PY" -m ratkit study --grid "$grid" $flags \
    --out "$RUNS/study-$name" --results "$RESULTS/$name" > "$RUNS/study-$name.log" 2>&1 &
done
wait
echo "studies stopped after $(( $(date +%s) - started )) s"
for spec in "$@"; do
  read -r grid _ <<< "$spec"
  name=$(basename "$grid" .yaml)
  echo "== $name: $(ls "$RESULTS/$name" 2>/dev/null | wc -l) result files"
  cat "$RUNS/study-$name.log"
done
