#!/bin/sh
# Run every benchmark of docs/benchmarks.md, one after another (about 28 minutes on 2 CPU cores).
#
#   sh bench/run_all.sh                  # what `make bench` runs
#   sh bench/run_all.sh --threads 0      # extra arguments go to every benchmark
#   BENCH_RESULTS=out sh bench/run_all.sh  # also write each benchmark's tables as JSON into out/
#
# BENCH_PYTHON picks the interpreter (default: .venv/bin/python). Each benchmark prints the
# machine description, its progress and a final table of ratios with targets and PASS / MISS.
set -eu
cd "$(dirname "$0")/.."
python=${BENCH_PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1

for name in cli_start train_throughput encode_throughput evaluate_scale maxsim_scale gradcache_memory data_wait; do
    echo "### bench/$name.py"
    if [ -n "${BENCH_RESULTS:-}" ]; then
        mkdir -p "$BENCH_RESULTS"
        "$python" "bench/$name.py" --json "$BENCH_RESULTS/$name.json" "$@"
    else
        "$python" "bench/$name.py" "$@"
    fi
done
