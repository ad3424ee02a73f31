"""Data wait: the share of each training step spent waiting for the next batch, with 0 and with N
DataLoader workers (``mmst train-embed --dataloader-workers``).

What runs: ``mmst train-embed`` on the demo Router (all-MiniLM-L6-v2 + frozen EfficientNet-Lite0
at 128 px, the default model of ``make demo``) and the demo's emoji caption -> image training pairs
(``mmst_cli/assets/emoji/``), with the demo's loss and batch (MNRL, 64 pairs) and no evaluation,
for ``--steps`` optimiser steps: once with ``--dataloader-workers 0`` (every batch's images decoded
and preprocessed, and its captions tokenised, in the training process) and once with N workers
(default: mmst's default for this machine, at least 1). Each run is a fresh process; the two
alternate (A B, B A, ...) so that other jobs on a shared machine hit both alike.

What is measured, in the training process, by patching the trainer (no hook in mmst): the time
spent in ``Trainer.get_batch_samples`` (the fetch of the next batch from the DataLoader: with 0
workers it builds the batch itself, with workers it waits for a prepared one), and the interval
between consecutive ``on_step_end`` events (one whole step, that fetch included). The wait share
of a run is the sum of its fetch times over the sum of its step intervals, steps 2..S; the first
step, which starts the workers, is reported on its own. The primary ratio is the wait share with
N workers over the share with 0 (median of the runs of each side); the step-time ratio says
whether the workers made training faster on this machine. Target: wait share ratio <= 0.5.

    .venv/bin/python bench/data_wait.py [--steps 11] [--repeats 2] [--workers N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    HIDDEN,
    Row,
    common_arguments,
    interleaved,
    machine_description,
    median,
    parse_arguments,
    print_machine,
    report,
    run_self_child,
)

TARGET = ("<=", 0.5)
BATCH_SIZE = 64  # the demo's batch (DEMO_RECIPE)
SEED = 42


def install_wait_timer(path: str) -> None:
    """Record, per optimiser step, the time spent fetching its batch and the time it ended; write
    ``{"fetch_s": [...], "end_s": [...]}`` to ``path`` when training ends."""
    from transformers import Trainer, TrainerCallback

    fetch = Trainer.get_batch_samples
    original_train = Trainer.train
    record: dict[str, list[float]] = {"fetch_s": [], "end_s": []}
    pending: list[float] = []

    def get_batch_samples(self, *args: Any, **kwargs: Any):
        started = time.perf_counter()
        try:
            return fetch(self, *args, **kwargs)
        finally:
            pending.append(time.perf_counter() - started)

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record["fetch_s"].append(sum(pending))
            pending.clear()
            record["end_s"].append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            Path(path).write_text(json.dumps(record))

    def train(self, *args: Any, **kwargs: Any):
        self.add_callback(StepEnds())
        return original_train(self, *args, **kwargs)

    Trainer.get_batch_samples = get_batch_samples
    Trainer.train = train


def child(workers: int, steps: int, output_dir: str, record_file: str) -> None:
    """One ``mmst train-embed`` run in this process, timed by :func:`install_wait_timer`."""
    from mmst_cli.core.models.composition import EMOJI_TRAIN

    install_wait_timer(record_file)
    sys.argv = ["mmst", "train-embed", "--data", str(EMOJI_TRAIN), "--loss", "mnrl", "--batch-size", str(BATCH_SIZE),
                "--max-steps", str(steps), "--seed", str(SEED), "--dataloader-workers", str(workers),
                "--output-dir", output_dir, "--json"]  # fmt: skip
    from mmst_cli.cli.app import main

    try:
        main()
    except SystemExit as done:
        if done.code:
            raise
    record = json.loads(Path(record_file).read_text())
    intervals = [later - earlier for earlier, later in zip(record["end_s"], record["end_s"][1:])]
    waits = record["fetch_s"][1:]
    print(json.dumps({
        "wait_share": sum(waits) / sum(intervals),
        "step_s": median(intervals),
        "wait_s": median(waits),
        "first_fetch_s": record["fetch_s"][0],
    }))


def side(workers: int, steps: int, scratch: Path, threads: int) -> dict:
    output = tempfile.mkdtemp(dir=scratch, prefix=f"workers-{workers}-")
    args = ["--child", str(workers), "--steps", str(steps), "--output-dir", output,
            "--record-file", str(Path(output) / "record.json"), "--threads", str(threads)]  # fmt: skip
    return run_self_child(__file__, args).json()


def main() -> None:
    parser = common_arguments(__doc__, repeats=2)
    parser.add_argument("--steps", type=int, default=11,
                        help="optimiser steps per run (default 11: one epoch of the 761 demo pairs at 64)")
    parser.add_argument("--workers", type=int,
                        help="DataLoader workers of the second side (default: mmst's, at least 1)")
    parser.add_argument("--child", type=int, help=HIDDEN)
    parser.add_argument("--output-dir", help=HIDDEN)
    parser.add_argument("--record-file", help=HIDDEN)
    args = parse_arguments(parser)
    if args.child is not None:
        child(args.child, args.steps, args.output_dir, args.record_file)
        return

    from mmst_cli.core.train.dataloader_workers import default_dataloader_workers

    workers = args.workers or max(1, default_dataloader_workers())
    machine = machine_description()
    print_machine(machine)
    print(f"demo Router on the emoji pairs: {args.steps} steps x batch {BATCH_SIZE}, 0 vs {workers} workers, "
          f"{args.repeats} runs per side", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mmst-bench-data-wait-") as scratch_name:
        scratch = Path(scratch_name)
        runs = interleaved({
            f"{workers} workers": lambda: side(workers, args.steps, scratch, args.threads),
            "0 workers": lambda: side(0, args.steps, scratch, args.threads),
        }, args.repeats)  # fmt: skip
    with_workers, without = runs[f"{workers} workers"], runs["0 workers"]

    def medians(key: str) -> tuple[float, float]:
        return median([run[key] for run in with_workers]), median([run[key] for run in without])

    share, share_0 = medians("wait_share")
    step, step_0 = medians("step_s")
    wait, wait_0 = medians("wait_s")
    first, first_0 = medians("first_fetch_s")
    rows = [
        Row("share of step time waiting for data", 100 * share, 100 * share_0, "%", share / share_0,
            f"{workers} workers / 0", TARGET),
        Row("wait for a batch (median)", 1000 * wait, 1000 * wait_0, "ms", wait / wait_0, f"{workers} workers / 0"),
        Row("training step (median)", step, step_0, "s", step / step_0, f"{workers} workers / 0"),
        Row("first batch (starts the workers)", first, first_0, "s", first / first_0, f"{workers} workers / 0"),
    ]  # fmt: skip
    report("data wait, demo Router", rows, (f"{workers} workers", "0 workers"), machine,
           {"steps": args.steps, "batch_size": BATCH_SIZE, "workers": workers, "repeats": args.repeats,
            "threads": args.threads}, args.json_path)  # fmt: skip


if __name__ == "__main__":
    main()
