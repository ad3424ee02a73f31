#!/usr/bin/env bash
# GPU check (bf16 steps, sdpa vs eager, peak memory vs the planner, multi-vector MaxSim bf16 vs CPU); see bench/gpu_check.py.
# On a CUDA machine with mmst installed: bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python_bin="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
timeout 480 "$python_bin" bench/gpu_check.py

# DataLoader workers: the share of step time spent waiting for data, 0 vs mmst's default number of
# workers, on the demo Router (fp32, the GPU training while workers decode); see bench/data_wait.py.
timeout 150 "$python_bin" bench/data_wait.py --steps 11 --repeats 1 --threads 0
