#!/usr/bin/env bash
# One-time, idempotent set-up: a .venv with the CPU build of torch, ratkit (editable, with
# test extras), and Debian's Fashion-MNIST when apt is available. Fast on the second run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STAMP="$VENV/.ratkit-setup"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Re-install only when pyproject.toml changed (or torch is missing).
want="$(sha256sum pyproject.toml | cut -d' ' -f1) torch==$TORCH_VERSION"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ] || ! "$PY" -c "import torch, ratkit" 2>/dev/null; then
  # An exact pin installs the local CPU build where one is provided and never pulls the
  # multi-GB CUDA wheels that an unpinned 'torch' would. A GPU user who already has a CUDA
  # torch in this venv keeps it (TORCH_VERSION=skip).
  if [ "$TORCH_VERSION" != "skip" ] && ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch==$TORCH_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
  echo "[setup] installing ratkit (editable, with test extras)"
  "$PY" -m pip install -q -e ".[test]"
  echo "$want" > "$STAMP"
fi

# Real data: Debian's dataset-fashion-mnist, when apt is available.
FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ -n "${RAT_DATA_DIR:-}" ]; then
  :
elif [ ! -f "$FMNIST_DIR/t10k-labels-idx1-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
    fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
      echo "[setup] installing Debian package dataset-fashion-mnist"
      $SUDO apt-get update -qq >/dev/null || echo "[setup] apt-get update failed; trying the install anyway"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
    fi
  fi
  if [ ! -f "$FMNIST_DIR/t10k-labels-idx1-ubyte.gz" ]; then
    echo "[setup] Fashion-MNIST not found in $FMNIST_DIR and it could not be installed here." >&2
    echo "[setup] Install it with 'sudo apt-get install dataset-fashion-mnist', or put the four IDX files" >&2
    echo "[setup] (train-images-idx3-ubyte.gz, ...) in a directory and set RAT_DATA_DIR=/that/dir." >&2
  fi
fi
