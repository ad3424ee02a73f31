#!/usr/bin/env bash
# GPU check (bf16 steps, multi-vector MaxSim bf16 vs CPU, attention implementations, DataLoader
# workers, one-GPU FSDP, peak memory vs the planner); see bench/gpu_check.py.
# On a CUDA machine with mmst installed, or with PyTorch and the kit of bench/gpu_kit.py: bash bench/gpu_check.sh
# Each part runs in its own process and time limit (8 minutes in all), so a part that fails or runs
# out of time does not hide the others; the exit status is 1 when any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python_bin="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
# A machine without a package index gets mmst's missing dependencies and the demo weights from the
# kit `python bench/gpu_kit.py pack` wrote elsewhere (see bench/gpu_kit.py); mmst runs from this checkout.
if [ -d .gpu-kit ]; then
    kit_site="${TMPDIR:-/tmp}/mmst-gpu-kit"
    "$python_bin" bench/gpu_kit.py unpack "$kit_site" || { echo "FAILED: unpacking .gpu-kit"; exit 1; }
    export PYTHONPATH="$PWD:$kit_site${PYTHONPATH:+:$PYTHONPATH}"
fi
status=0
run_part() {  # run_part SECONDS ARGS...: one part; a failure or timeout is reported and remembered
    local limit=$1; shift
    timeout "$limit" "$@" || { echo "FAILED (exit $?): $*"; status=1; }
}
run_part 160 "$python_bin" bench/gpu_check.py bf16
run_part 80 "$python_bin" bench/gpu_check.py multi_vector
run_part 40 "$python_bin" bench/gpu_check.py flash_attention_2
# DataLoader workers: the share of step time spent waiting for data, 0 vs mmst's default number of
# workers, on the demo Router (fp32, the GPU training while workers decode); see bench/data_wait.py.
run_part 120 "$python_bin" bench/data_wait.py --steps 11 --repeats 1 --threads 0
# FSDP shards across the processes of a distributed launch, even a launch of one.
run_part 80 "$python_bin" -m torch.distributed.run --nproc_per_node 1 bench/gpu_check.py fsdp
exit "$status"
