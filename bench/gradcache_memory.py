"""Training memory as the batch grows: cached MNRL (GradCache) against plain MNRL.

The batch size of a contrastive loss is also its number of in-batch negatives, so bigger is
better; plain MNRL keeps every activation of the whole batch for the backward pass, while cached
MNRL (GradCache) embeds the batch in mini-batches of 32 without gradients, computes the loss on
the cached embeddings and then re-embeds each mini-batch with gradients, one at a time. Its
activation memory should stay at one mini-batch's, whatever the batch size.

For each batch size in ``--batches`` (default 32, 64, 128, 256, 512) and each loss, a fresh process
runs ``mmst train-embed --data <emoji train.parquet> --loss L --batch-size B --max-steps 2``: the
embedded default Router (MiniLM + frozen EfficientNet-Lite0) on the emoji pairs, no evaluation. Two
steps, so that the peak includes the optimiser state next to a step's activations and gradients.
Memory is the process' peak RSS (``VmHWM``, reported by the process itself at exit; see
``_common``), which also holds the libraries, the model and the data: the table also shows each
peak's growth over the same loss at the smallest batch, which is the part the batch size drives.
The two losses alternate per batch size (A B, B A, ...).

Rows: the peak of each loss per batch size and the ratio cached / plain (information), and the
growth from the smallest to the largest batch, cached / plain, with the target <= 0.5 (GradCache
must at least halve the memory the batch size adds; the issue states no number).

    .venv/bin/python bench/gradcache_memory.py [--batches 32,64,128,256,512] [--repeats 1]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import (
    Row,
    common_arguments,
    interleaved,
    machine_description,
    median,
    parse_arguments,
    print_machine,
    report,
    run_mmst,
)

LOSSES = ("mnrl", "cached-mnrl")
STEPS = 2
TARGET = ("<=", 0.5)


def peak_mib(loss: str, batch: int, data: str, scratch: Path) -> float:
    output = tempfile.mkdtemp(dir=scratch, prefix=f"{loss}-{batch}-")
    args = ["train-embed", "--data", data, "--loss", loss, "--batch-size", str(batch), "--max-steps", str(STEPS),
            "--output-dir", output, "--json"]
    return run_mmst(args, measure_peak=True).peak_rss_mib


def main() -> None:
    parser = common_arguments(__doc__, repeats=1)
    parser.add_argument("--batches", default="32,64,128,256,512", help="comma-separated batch sizes")
    args = parse_arguments(parser)
    batches = sorted({int(value) for value in args.batches.split(",")})
    if len(batches) < 2:
        parser.error("--batches needs at least two sizes: the target compares how the peak grows between them")

    from mmst_cli.core.models.composition import EMOJI_TRAIN

    machine = machine_description()
    print_machine(machine)
    peaks: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mmst-bench-gradcache-") as scratch_name:
        for batch in batches:
            print(f"batch {batch}", flush=True)
            runs = interleaved({loss: (lambda loss=loss: peak_mib(loss, batch, str(EMOJI_TRAIN), Path(scratch_name)))
                                for loss in LOSSES}, args.repeats)
            peaks[batch] = {loss: median(values) for loss, values in runs.items()}

    smallest, largest = batches[0], batches[-1]
    rows = []
    for batch in batches:
        mnrl, cached = peaks[batch]["mnrl"], peaks[batch]["cached-mnrl"]
        growth = {loss: peaks[batch][loss] - peaks[smallest][loss] for loss in LOSSES}
        rows.append(Row(f"batch {batch}: peak RSS", cached, mnrl, "MiB", cached / mnrl, "cached / plain peak",
                        extra={"growth_over_smallest_mib": growth}))
    growth_cached = peaks[largest]["cached-mnrl"] - peaks[smallest]["cached-mnrl"]
    growth_plain = peaks[largest]["mnrl"] - peaks[smallest]["mnrl"]
    rows.append(Row(f"growth of the peak, batch {smallest} -> {largest}", growth_cached, growth_plain, "MiB",
                    growth_cached / growth_plain, "cached / plain growth", TARGET))
    settings = {"batches": batches, "steps": STEPS, "mini_batch_size": 32, "repeats": args.repeats,
                "threads": args.threads, "model": "embedded default Router", "data": "emoji train.parquet"}
    report("GradCache memory: peak RSS of a fresh training process", rows, ("cached-mnrl", "mnrl"), machine,
           settings, args.json_path)


if __name__ == "__main__":
    main()
