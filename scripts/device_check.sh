#!/usr/bin/env bash
# The device check on one GPU (about 8 minutes): GPU against CPU correctness, the
# training steps' throughput, RAT's ratios with intervals, and the 200-epoch estimates; it
# prints a summary and writes docs/performance/gpu.json (ratkit.bench.device_check, docs/performance.md).
# Without a CUDA device it exits at once with status 69 (EX_UNAVAILABLE) and a message.
#
#   scripts/device_check.sh                         # the whole check, docs/performance/gpu.json
#   scripts/device_check.sh --correctness-only --out /tmp/gpu.json
#   PY=/path/to/python scripts/device_check.sh      # default: .venv/bin/python, else python3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m ratkit.device_check --out docs/performance/gpu.json "$@"
