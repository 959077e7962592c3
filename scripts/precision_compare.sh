#!/usr/bin/env bash
# Issue 19: step time and accuracy of the Fashion-MNIST preset with the whole step in bf16
# (train.precision=bfloat16) against today's preset (float32 step, bf16 attack), same seed and
# epochs. Two `rat train` runs, then a paired timing of the two steps in one process (rounds in a
# reshuffled order, as `rat bench` does), then one table. Long: two full runs with evaluation.
#
#   scripts/precision_compare.sh                          # DEVICE=auto OUT=runs/precision-compare
#   DEVICE=cuda PRECISION=float16 scripts/precision_compare.sh
#   SMOKE=1 scripts/precision_compare.sh                  # seconds: synthetic data, tiny model, no AutoAttack
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-bfloat16}
OUT=${OUT:-runs/precision-compare}
SEED=${SEED:-0}
EXTRA=()
if [ "${SMOKE:-0}" = 1 ]; then
  EXTRA=(--dataset synthetic --train-subset 256 --epochs 1 --set data.val_size=128 --set train.val_n=64
         --set model.kwargs.channels=[4,8] --set model.kwargs.hidden=16 --set eval.attacks=clean,pgd20
         --set eval.n=64 --set eval.aa_n=null)
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

for precision in float32 "$PRECISION"; do
  [ -e "$OUT/$precision/last.safetensors" ] && { echo "$OUT/$precision exists: skipped"; continue; }
  "$PY" -m ratkit train --seed "$SEED" --device "$DEVICE" --out "$OUT/$precision" --quiet \
    --set "train.precision=$precision" "${EXTRA[@]}"
done

"$PY" - "$OUT" "$DEVICE" "$PRECISION" "$SEED" "${SMOKE:-0}" <<'EOF'
import json, random, statistics, sys, time
from pathlib import Path

import torch

from ratkit.config import load_config
from ratkit.data import dataset_info
from ratkit.device import resolve_device
from ratkit.methods import StepPrecision
from ratkit.train import build_method, build_model_from_config

out, device, precision, seed, smoke = Path(sys.argv[1]), resolve_device(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
cfg = load_config(out / "float32" / "config.yaml")
info = dataset_info(cfg.data.dataset)
g = torch.Generator().manual_seed(seed)
x = torch.rand(cfg.train.batch_size, *info.image_shape, generator=g).to(device)
y = torch.randint(0, info.num_classes, (cfg.train.batch_size,), generator=g).to(device)
if cfg.train.channels_last:
    x = x.contiguous(memory_format=torch.channels_last)


def runner(name):
    torch.manual_seed(seed)
    model = build_model_from_config(cfg, info)[0].to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    method, optimizer = build_method(cfg), torch.optim.SGD(model.parameters(), lr=1e-3)
    step_precision, generator = StepPrecision(name, device.type), torch.Generator(device=device).manual_seed(seed)
    return lambda: method.step(model, optimizer, x, y, generator=generator, precision=step_precision)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


runners = {name: runner(name) for name in ("float32", precision)}
rounds, steps = (2, 2) if smoke else (5, 8)
times = {name: [] for name in runners}
for run in runners.values():
    for _ in range(2):
        run()
order = random.Random(seed)
names = list(runners)
for _ in range(rounds):
    order.shuffle(names)
    for name in names:
        for _ in range(steps):
            sync()
            start = time.perf_counter()
            runners[name]()
            sync()
            times[name].append(time.perf_counter() - start)
median = {name: statistics.median(v) for name, v in times.items()}


def summary(name):
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((out / name / "eval.json").read_text())
    accuracy = {k: v["accuracy"] for k, v in report["attacks"].items()}
    return sum(r["train_seconds"] for r in rows), rows[-1].get("val_pgd20"), accuracy


print(f"\ndevice {device}; paired timing: median s per step over {rounds * steps} steps, batch {cfg.train.batch_size}")
attacks = None
for name in runners:
    seconds, val, accuracy = summary(name)
    attacks = attacks or list(accuracy)
    if name == "float32":
        print("| train.precision | s/step (paired) | training s | last val PGD-20 | " + " | ".join(attacks) + " |")
        print("|---" * (4 + len(attacks)) + "|")
    print(f"| {name} | {median[name]:.4f} | {seconds:.0f} | {100 * val:.1f}% | "
          + " | ".join(f"{100 * accuracy.get(a, float('nan')):.2f}%" for a in attacks) + " |")
print(f"speed-up of {precision} over float32 (paired): {median['float32'] / median[precision]:.2f}x")
EOF
