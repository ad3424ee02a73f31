#!/usr/bin/env bash
# GPU check (bf16 steps, sdpa vs eager, peak memory vs the planner, multi-vector MaxSim bf16 vs CPU); see bench/gpu_check.py.
# On a CUDA machine with mmst installed: bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python_bin="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
timeout 480 "$python_bin" bench/gpu_check.py
