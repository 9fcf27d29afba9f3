#!/usr/bin/env bash
# The GPU check of ipsolve: one table of every GPU path (CUDA tests, operators and solvers against CPU
# float64, fp16/bf16 against fp32, UNet speed and memory, Nested DDRM speed, torchrun over nccl).
#   bash scripts/device_check.sh           on a CUDA machine (under 8 minutes on one GPU)
#   bash scripts/device_check.sh --cpu     every row on the CPU at small sizes
# PYTHON (default .venv/bin/python) runs it; exit code 1 when a row fails, 2 without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
limit=480  # the GPU run must finish within 8 minutes
if [[ " $* " == *" --cpu "* ]]; then
  limit=900
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a shared CPU: more threads than free cores is many times slower
fi
exec timeout "$limit" "${PYTHON:-.venv/bin/python}" scripts/device_check.py "$@"
