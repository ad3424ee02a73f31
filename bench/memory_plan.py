"""Memory planner accuracy: ``mmst train-embed`` / ``train-rerank --dry-run`` estimates against measured peaks.

For each model the planner's total (``--dry-run --json``) is compared with the peak resident set
size of the same run actually training (a fresh process reporting its own ``VmHWM``, see
``_common``). The ratio in the table is the relative error ``|estimate / measured - 1|``; the target
is at most 0.25. On a CPU the estimate includes the process itself (libraries, weights, data), as
the measured peak does; on a GPU run ``bench/gpu_check.sh`` instead.

    .venv/bin/python bench/memory_plan.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import (
    REPO_ROOT,
    Row,
    common_arguments,
    machine_description,
    parse_arguments,
    print_machine,
    report,
    run_mmst,
)

STEPS = "20"


def _cases(scratch: Path) -> list[tuple[str, str, list[str]]]:
    sys.path.insert(0, str(REPO_ROOT))
    from mmst_cli.testing.tiny_models import build_tiny_bert, build_tiny_clip, build_tiny_qwen2_vl
    from tests.data_factory import write_colour_pairs

    data = str(write_colour_pairs(scratch / "data", count=64))
    clip, bert, qwen = (str(build(scratch / name)) for build, name in (
        (build_tiny_clip, "clip"), (build_tiny_bert, "bert"), (build_tiny_qwen2_vl, "qwen")))  # fmt: skip
    return [
        ("demo router, cached-mnrl, batch 32", "train-embed", []),
        ("demo router, mnrl, batch 64", "train-embed", ["--loss", "mnrl", "--batch-size", "64"]),
        ("tiny clip, mnrl, batch 16", "train-embed", ["--model", clip, "--data", data, "--loss", "mnrl", "--batch-size", "16"]),
        ("tiny router, cached-mnrl", "train-embed", ["--text-encoder", bert, "--image-encoder", clip, "--dim", "16", "--data", data]),
        ("tiny qwen2-vl, mnrl, batch 16", "train-embed", ["--model", qwen, "--data", data, "--loss", "mnrl", "--batch-size", "16"]),
        ("tiny qwen2-vl reranker, bce, batch 16", "train-rerank", ["--model", qwen, "--data", data, "--batch-size", "16"]),
        ("tiny qwen2-vl reranker, cmnrl, batch 16", "train-rerank", ["--model", qwen, "--data", data, "--loss", "cmnrl",
                                                                     "--batch-size", "16", "--mini-batch-size", "4"]),
    ]


def main() -> None:
    args = parse_arguments(common_arguments(__doc__, repeats=1))
    machine = machine_description()
    print_machine(machine)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, command, extra) in enumerate(_cases(Path(scratch))):
            out = ["--output-dir", str(Path(scratch) / f"run{index}"), "--max-steps", STEPS]
            plan = run_mmst([command, *extra, *out, "--dry-run", "--json"]).json()["dry_run"]
            trained = run_mmst([command, *extra, *out, "--json"], measure_peak=True)
            estimate, measured = plan["total_bytes"] / 2**20, trained.peak_rss_mib
            print(f"{name}: estimated {estimate:.0f} MiB, measured peak {measured:.0f} MiB", flush=True)
            rows.append(Row(name, estimate, measured, "MiB", abs(estimate / measured - 1), "|estimate/peak - 1|", ("<=", 0.25)))
    report("memory planner vs measured peak RSS (CPU)", rows, ("estimate", "measured peak"), machine,
           {"steps": STEPS, "threads": args.threads}, args.json_path)  # fmt: skip


if __name__ == "__main__":
    main()
