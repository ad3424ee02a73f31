#!/usr/bin/env bash
# GPU check (bf16 steps, attention implementations, DataLoader workers, one-GPU FSDP, peak memory vs
# the planner); see bench/gpu_check.py. On a CUDA machine with mmst installed: bash bench/gpu_check.sh
# Each part has its own time limit (about 8 minutes in all) and a failing part does not stop the others;
# the exit status is 1 when any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python_bin="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
status=0
timeout 330 "$python_bin" bench/gpu_check.py bf16 flash_attention_2 dataloader_workers || status=1
# FSDP shards across the processes of a distributed launch, even a launch of one.
timeout 150 "$python_bin" -m torch.distributed.run --nproc_per_node 1 bench/gpu_check.py fsdp || status=1
exit "$status"
