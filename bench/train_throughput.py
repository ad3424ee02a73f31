"""Training throughput: ``mmst train-embed`` against a plain ``SentenceTransformerTrainer`` script.

Two models, each trained for a fixed number of optimiser steps with cached MNRL, batch 32, seed 42
and no evaluation:

* ``router``: the embedded default Router (all-MiniLM-L6-v2 + frozen EfficientNet-Lite0 at 128 px)
  on the emoji caption -> image pairs shipped with mmst;
* ``vlm``: a tiny random-weight Qwen2-VL (``mmst_cli.testing.tiny_models``) that mmst turns into a
  last-token embedder, on a small image-caption set written to a temporary folder.

Side A runs the CLI: ``mmst train-embed --data ... --max-steps N --loss cached-mnrl --batch-size 32``.
Side B is :func:`plain_train` below, the script a user would write by hand with Sentence
Transformers: the same model (the Router is built by mmst's ``build_default_model``, since its
timm module is mmst's; the VLM embedder is written out with Sentence Transformers modules), the
same data columns, loss, batch sampler (``no_duplicates_hashed``, what mmst picks for media data)
and the same ``SentenceTransformerTrainingArguments`` values mmst passes. Equal mean training losses
on both sides show that the two runs do the same work.

What is measured, the same way on both sides: the time of each training step, as the interval
between two consecutive ``on_step_end`` events of the trainer (batch fetch and collation, forward,
backward, optimiser, logging and every callback, mmst's progress bar included), recorded by the
same callback on both sides (``_common.install_step_timer``, which patches ``Trainer.train``). The
first step (warm-up) and the checkpoint written after the last one fall outside the intervals.
Each run is a fresh process and the sides alternate (A B, B A, ...).

Both sides train on the same batches in the same order (same seed and sampler), so step ``i`` does
the same work in every run. Other jobs on a shared machine only ever add time, so the primary
number takes, for each step, the fastest of the ``--repeats`` runs of a side, and sums them:
steady-state samples/s = batch x (steps - 1) / sum of per-step minima. Information rows: the
median over runs of the batch size over the run's median step time, and the trainer's own
``train_samples_per_second`` (steps x batch / wall time of the whole training loop, first step and
final checkpoint included). Target: mmst / plain >= 0.97 on the primary number.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--repeats 3] [--models router,vlm]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    HIDDEN,
    Row,
    common_arguments,
    install_step_timer,
    interleaved,
    machine_description,
    median,
    parse_arguments,
    peak_rss_mib,
    print_machine,
    read_step_intervals,
    report,
    run_mmst,
    run_self_child,
)

TARGET = (">=", 0.97)
BATCH_SIZE = 32
SEED = 42
LOSS = "cached-mnrl"
VLM_ROWS = 320


# ------------------------------------------------------------------------------------------ data


def prepare_vlm(folder: Path) -> tuple[Path, Path]:
    """Write a tiny Qwen2-VL checkpoint and ``VLM_ROWS`` (caption, image path) pairs; return both paths."""
    import random

    from PIL import Image, ImageDraw

    from mmst_cli.testing.tiny_models import build_tiny_qwen2_vl

    model_dir = build_tiny_qwen2_vl(folder / "tiny-qwen2-vl")
    images = folder / "images"
    images.mkdir()
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    shapes = ["circle", "square"]
    rng = random.Random(SEED)
    rows = []
    for index in range(VLM_ROWS):
        colour, background, shape = rng.choice(colours), rng.choice(colours), rng.choice(shapes)
        image = Image.new("RGB", (56, 56), background)
        draw = ImageDraw.Draw(image)
        box = sorted(rng.sample(range(4, 52), 2))
        (draw.ellipse if shape == "circle" else draw.rectangle)([box[0], box[0], box[1], box[1]], fill=colour)
        path = (images / f"{index:04d}.png").resolve()
        image.save(path)
        rows.append({"caption": f"a {colour} {shape} on {background}, picture {index}", "image": str(path)})
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model_dir, data


# ------------------------------------------------------------------------------- side B: plain ST


def plain_train(model_name: str, data: str, model_dir: str | None, steps: int, output_dir: str) -> dict:
    """Train with Sentence Transformers directly, as mmst train-embed would; return the trainer's numbers."""
    import datasets
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    from transformers import set_seed

    from mmst_cli.core.train.dataloader_workers import dataloader_arguments

    set_seed(SEED)
    if model_name == "router":
        from mmst_cli.core.models.composition import build_default_model

        built = build_default_model(head_lr=2e-3, seed=SEED)
        model, learning_rate_mapping = built.model, built.learning_rate_mapping
        router_mapping = {"caption": "text", "image": "image"}
        dataset = datasets.load_dataset("parquet", data_files=data, split="train").select_columns(["caption", "image"])
    else:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling

        # A Qwen3-VL-Embedding-style embedder: last token after the generation prompt, padded inputs.
        transformer = Transformer(
            model_dir,
            transformer_task="feature-extraction",
            model_kwargs={"attn_implementation": "sdpa", "trust_remote_code": False},
            processor_kwargs={"trust_remote_code": False},
            config_kwargs={"trust_remote_code": False},
            processing_kwargs={"chat_template": {"add_generation_prompt": True}},
            unpad_inputs=False,
        )
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
        model = SentenceTransformer(modules=[transformer, pooling, Normalize()])
        learning_rate_mapping, router_mapping = {}, {}
        dataset = datasets.load_dataset("json", data_files=data, split="train").select_columns(["caption", "image"])

    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=32, gather_across_devices=False)
    args = SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=1.0,
        max_steps=steps,
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=BATCH_SIZE,
        learning_rate=2e-5,
        warmup_steps=0.1,
        seed=SEED,
        data_seed=SEED,
        eval_strategy="no",
        save_strategy="steps",
        save_steps=500,
        save_total_limit=2,
        logging_steps=max(1, steps // 20),
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        # mmst's DataLoader workers for this machine (none on 2 cores), so both sides load alike.
        **dataloader_arguments(None),
        dataloader_drop_last=False,
        learning_rate_mapping=learning_rate_mapping,
        batch_sampler="no_duplicates_hashed",
        router_mapping=router_mapping,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    return {
        "trainer_samples_per_s": output.metrics["train_samples_per_second"],
        "train_wall_s": round(wall, 3),
        "mean_loss": round(float(output.training_loss), 6),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


# ---------------------------------------------------------------------------------------- driver


def mmst_side(model_name: str, data: str, model_dir: str | None, steps: int, scratch: Path) -> dict:
    output = tempfile.mkdtemp(dir=scratch, prefix=f"mmst-{model_name}-")
    args = ["train-embed", "--data", data, "--max-steps", str(steps), "--loss", LOSS,
            "--batch-size", str(BATCH_SIZE), "--seed", str(SEED), "--output-dir", output, "--json"]
    if model_dir:
        args += ["--model", model_dir]
    step_file = Path(output) / "step-times.json"
    child = run_mmst(args, measure_peak=True, step_file=step_file)
    train = child.json()["train"]
    return {"trainer_samples_per_s": train["samples_per_s"], "train_wall_s": train["runtime_s"],
            "mean_loss": train["mean_loss"], "peak_rss_mib": round(child.peak_rss_mib, 1),
            **step_times(step_file)}


def plain_side(model_name: str, data: str, model_dir: str | None, steps: int, scratch: Path, threads: int) -> dict:
    output = tempfile.mkdtemp(dir=scratch, prefix=f"plain-{model_name}-")
    step_file = Path(output) / "step-times.json"
    args = ["--child-plain", model_name, "--data", data, "--steps", str(steps), "--output-dir", output,
            "--step-file", str(step_file), "--threads", str(threads)]
    if model_dir:
        args += ["--model-dir", model_dir]
    return {**run_self_child(__file__, args).json(), **step_times(step_file)}


def step_times(step_file: Path) -> dict:
    steps = read_step_intervals(step_file)
    return {"step_s": steps["wall"], "step_cpu_s": steps["cpu"]}


def best_of_runs_rate(runs: list[dict]) -> float:
    """Samples/s over the per-step minima across runs (step i is the same batch in every run)."""
    fastest = [min(times) for times in zip(*(run["step_s"] for run in runs))]
    return BATCH_SIZE * len(fastest) / sum(fastest)


def median_run_rate(runs: list[dict]) -> float:
    """Median over runs of the batch size over the run's median step time."""
    return median([BATCH_SIZE / median(run["step_s"]) for run in runs])


def main() -> None:
    parser = common_arguments(__doc__, repeats=3)
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per run (default 20)")
    parser.add_argument("--models", default="router,vlm", help="comma-separated: router, vlm (default both)")
    # Child mode: one plain Sentence Transformers run, printing its numbers as JSON.
    parser.add_argument("--child-plain", choices=["router", "vlm"], help=HIDDEN)
    parser.add_argument("--data", help=HIDDEN)
    parser.add_argument("--model-dir", help=HIDDEN)
    parser.add_argument("--output-dir", help=HIDDEN)
    parser.add_argument("--step-file", help=HIDDEN)
    args = parse_arguments(parser)
    if args.child_plain:
        install_step_timer(args.step_file)
        print(json.dumps(plain_train(args.child_plain, args.data, args.model_dir, args.steps, args.output_dir)))
        return

    from mmst_cli.core.models.composition import EMOJI_TRAIN

    machine = machine_description()
    print_machine(machine)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmst-bench-train-") as scratch_name:
        scratch = Path(scratch_name)
        for model_name in args.models.split(","):
            if model_name == "router":
                data, model_dir = str(EMOJI_TRAIN), None
            else:
                model_dir, data_path = prepare_vlm(scratch / "vlm")
                data, model_dir = str(data_path), str(model_dir)
            print(f"{model_name}: {args.steps} steps x batch {BATCH_SIZE}, {LOSS}, {args.repeats} runs per side",
                  flush=True)
            runs = interleaved({
                "mmst": lambda: mmst_side(model_name, data, model_dir, args.steps, scratch),
                "plain": lambda: plain_side(model_name, data, model_dir, args.steps, scratch, args.threads),
            }, args.repeats)
            losses = {side: sorted({run["mean_loss"] for run in side_runs}) for side, side_runs in runs.items()}
            if losses["mmst"] != losses["plain"]:
                print(f"  note: mean training losses differ: {losses}", flush=True)
            peaks = {side: median([run["peak_rss_mib"] for run in side_runs]) for side, side_runs in runs.items()}
            measures = [
                ("steady-state samples/s (best of runs per step)", best_of_runs_rate, TARGET),
                ("samples/s (median run, median step)", median_run_rate, None),
                ("trainer train_samples_per_second (median run)",
                 lambda side_runs: median([run["trainer_samples_per_s"] for run in side_runs]), None),
            ]
            for name, measure, target in measures:
                mmst, plain = measure(runs["mmst"]), measure(runs["plain"])
                extra = {"runs": runs, "mean_losses": losses, "peak_rss_mib": peaks} if target else {}
                rows.append(Row(f"{model_name}: {name}", mmst, plain, "samples/s", mmst / plain,
                                "mmst / plain throughput", target, extra=extra))
    settings = {"steps": args.steps, "batch_size": BATCH_SIZE, "loss": LOSS, "repeats": args.repeats,
                "threads": args.threads,
                "metric": "batch x (steps - 1) / sum over steps of the fastest run's step time"}
    report("Training throughput", rows, ("mmst train-embed", "plain SentenceTransformerTrainer"), machine, settings,
           args.json_path)


if __name__ == "__main__":
    sys.exit(main())
