"""Finetune an embedding model on pair data with the Sentence Transformers trainer.

:func:`train_embedding_model` is the whole ``mmst train-embed`` job: build or load the model, load
and validate the data, score the model before training, train, score it after, and write the
model, its card and ``metrics.json`` without ever leaving a half-written file under a final name.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mmst_cli.core.data import PairData, load_pair_data, split_off_eval
from mmst_cli.core.errors import EXIT_FAILURE, MmstError
from mmst_cli.core.lora import LoraOptions, add_lora, merge_lora
from mmst_cli.core.losses import LossOptions, build_loss
from mmst_cli.core.retrieval import MAIN_METRIC, pairs_to_retrieval_task

#: ``--batch-sampler`` values -> Sentence Transformers' batch samplers.
BATCH_SAMPLERS = {
    "no-duplicates": "no_duplicates",
    "no-duplicates-hashed": "no_duplicates_hashed",
    "default": "batch_sampler",
}
PRECISIONS = ("fp32", "bf16", "fp16")
REPORT_TARGETS = ("none", "tensorboard")
#: Checkpoint interval when --save-steps is not given (the transformers default).
DEFAULT_SAVE_STEPS = 500
TOWERS = ("text", "image", "audio")


@dataclass
class TrainEmbedOptions:
    """Every option of ``mmst train-embed``; the CLI fills it, tests may build it directly.

    Model: ``model`` (folder or Hub id) or a Router composed from ``text_encoder`` /
    ``image_encoder`` / ``audio_encoder`` projected to ``dim``; neither gives the embedded default.
    Data: ``data`` etc.; no data (with no model) gives the embedded emoji dataset.
    """

    model: str | None = None
    text_encoder: str | None = None
    image_encoder: str | None = None
    audio_encoder: str | None = None
    image_size: int | None = None
    max_pixels: int | None = None
    dim: int | None = None
    pooling: str | None = None
    freeze: tuple[str, ...] = ()
    trust_remote_code: bool = False

    data: str | None = None
    data_config: str | None = None
    split: str | None = None
    columns: list[str] | None = None
    media_root: str | None = None
    eval_data: str | None = None
    eval_data_split: str | None = None
    eval_split: float | None = None
    skip_bad: bool = False
    allow_remote_media: bool = False

    loss: LossOptions = field(default_factory=LossOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 2e-5
    head_lr: float = 2e-3
    warmup: float = 0.1
    precision: str = "fp32"
    seed: int = 42
    gradient_checkpointing: bool = False
    attn_implementation: str = "auto"
    batch_sampler: str | None = None
    prompts: str | dict[str, str] | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    output_dir: str | None = None
    resume: bool = False
    report_to: str = "none"

    def validate(self) -> None:
        """Reject bad values and impossible combinations before any model or data is loaded."""
        if self.model and (self.text_encoder or self.image_encoder or self.audio_encoder):
            raise MmstError("--model cannot be combined with --text-encoder/--image-encoder/--audio-encoder; pick one")
        if (self.image_encoder or self.audio_encoder) and not self.text_encoder and self.dim is None:
            raise MmstError("a composed model without --text-encoder needs --dim")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise MmstError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("dim", "image_size", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise MmstError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.lr <= 0 or self.head_lr <= 0:
            raise MmstError("--lr and --head-lr must be positive")
        if not 0 <= self.warmup < 1:
            raise MmstError(f"--warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.precision not in PRECISIONS:
            raise MmstError(f"precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
        if self.report_to not in REPORT_TARGETS:
            raise MmstError(f"--report-to {self.report_to!r} is unknown; use one of {', '.join(REPORT_TARGETS)}")
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise MmstError("--report-to tensorboard needs the 'tensorboard' package: pip install tensorboard")
        if self.batch_sampler is not None and self.batch_sampler not in BATCH_SAMPLERS:
            raise MmstError(f"--batch-sampler {self.batch_sampler!r} is unknown; use one of {', '.join(BATCH_SAMPLERS)}")
        unknown = [tower for tower in self.freeze if tower not in TOWERS]
        if unknown:
            raise MmstError(f"--freeze {unknown[0]!r} is not a tower; use one of {', '.join(TOWERS)}")
        for name in ("eval_steps", "save_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise MmstError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.eval_data and self.eval_split:
            raise MmstError("--eval-data and --eval-split both choose evaluation data; pass one")
        if self.data is None and (self.model or self.text_encoder or self.image_encoder or self.audio_encoder):
            raise MmstError("--data is required when you choose a model (the emoji demo data goes with the default model)")
        self.loss.validate(gradient_checkpointing=self.gradient_checkpointing)
        self.lora.validate()
        if self.lora.enabled and self.resume:
            raise MmstError("--resume is not supported with --lora-r yet: checkpoints hold adapters only")

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        return Path("runs") / datetime.now().strftime("train-embed-%Y%m%d-%H%M%S")


def world_size() -> int:
    """Number of processes in this launch (``torchrun`` / ``accelerate launch`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _load_training_data(options: TrainEmbedOptions, audio_rate: int | None) -> tuple[PairData, PairData | None]:
    from mmst_cli.core.composition import EMOJI_EVAL, EMOJI_TRAIN

    common = {
        "columns": options.columns,
        "media_root": Path(options.media_root).expanduser() if options.media_root else None,
        "audio_sampling_rate": audio_rate,
        "skip_bad": options.skip_bad,
        "allow_remote_media": options.allow_remote_media,
    }
    if options.data is None:
        return load_pair_data(str(EMOJI_TRAIN), **common), load_pair_data(str(EMOJI_EVAL), **common)
    train = load_pair_data(options.data, config=options.data_config, split=options.split, **common)
    if options.eval_data:
        return train, load_pair_data(
            options.eval_data, config=options.data_config, split=options.eval_data_split, **common
        )
    if options.eval_split:
        return split_off_eval(train, options.eval_split, options.seed)
    return train, None


def _check_modalities(model, data: PairData) -> None:
    for column, modality in data.column_modalities.items():
        if modality == "video" and not any(importlib.util.find_spec(name) for name in ("torchcodec", "av")):
            raise MmstError(
                f"data {data.source!r}: column {column!r} holds video files, but no video decoder is installed; "
                "pip install av (or torchcodec)"
            )
        if not model.supports(modality):
            raise MmstError(
                f"data {data.source!r}: column {column!r} holds {modality}, but the model takes "
                f"{', '.join(str(m) for m in model.modalities)}; choose another model or --columns"
            )


def _planned_steps(options: TrainEmbedOptions, rows: int) -> int:
    if options.max_steps > 0:
        return options.max_steps
    per_epoch = max(1, math.ceil(rows / (options.batch_size * world_size())))
    return max(1, math.ceil(options.epochs * per_epoch))


def _training_arguments(options: TrainEmbedOptions, checkpoints: Path, learning_rate_mapping, router_mapping, has_eval, data):
    from sentence_transformers import SentenceTransformerTrainingArguments

    rows = len(data.dataset)
    # Comparing decoded images or audio arrays row by row is slow: hash them once instead.
    batch_sampler = options.batch_sampler or ("no-duplicates-hashed" if data.media_columns else "no-duplicates")

    # About 20 loss readings per run, for metrics.json's loss curve.
    logging_steps = max(1, _planned_steps(options, rows) // 20)

    eval_steps = options.eval_steps if has_eval else None
    # Passed only when asked for: transformers warns about the old name whenever it is set.
    checkpointing = {"gradient_checkpointing": True} if options.gradient_checkpointing else {}
    return SentenceTransformerTrainingArguments(
        **checkpointing,
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        learning_rate=options.lr,
        learning_rate_mapping=learning_rate_mapping or {},
        warmup_steps=options.warmup,  # a float below 1 is a ratio of the total steps
        bf16=options.precision == "bf16",
        fp16=options.precision == "fp16",
        seed=options.seed,
        data_seed=options.seed,
        batch_sampler=BATCH_SAMPLERS[batch_sampler],
        prompts=options.prompts,
        router_mapping=router_mapping or {},
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=options.save_steps or DEFAULT_SAVE_STEPS,
        save_total_limit=2,
        logging_steps=logging_steps,
        report_to=options.report_to,
        disable_tqdm=True,
        dataloader_pin_memory=_has_cuda(),
        dataloader_drop_last=world_size() > 1,
        # NCCL needs GPUs; a CPU launch under torchrun / accelerate uses gloo.
        ddp_backend=None if _has_cuda() or world_size() == 1 else "gloo",
    )


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf8")
    temporary.replace(path)


def _save_model_atomically(model, destination: Path) -> None:
    temporary = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save(str(temporary))
    if destination.exists():
        shutil.rmtree(destination)
    temporary.replace(destination)


def _evaluate(evaluator, model) -> dict[str, float]:
    return evaluator.scores(model) if evaluator is not None else {}


@dataclass
class TrainingResult:
    """What a training run produced.

    Attributes:
        summary: ``{"model", "output_dir", "model_dir", "data", "base", "final", "train", ...}``,
            also written to ``metrics.json``.
        model: The trained model, as saved to ``summary["model_dir"]``.
    """

    summary: dict[str, Any]
    model: Any


def train_embedding_model(options: TrainEmbedOptions, *, progress_console=None, log=print) -> TrainingResult:
    """Run a whole train-embed job: see the module docstring.

    Args:
        options: What to train, on what, and how.
        progress_console: Rich console for the progress bar (stderr when ``None``).
        log: Receives one-line status messages for the user (from the main process only).
    """
    options.validate()
    if not is_main_process():
        log = _silent
    from mmst_cli.core.composition import build_training_model

    output_dir = options.resolved_output_dir()
    model_dir = output_dir / "model"
    if model_dir.exists() and not options.resume:
        raise MmstError(f"{model_dir} already holds a trained model; choose another --output-dir or pass --resume")
    if options.resume and not (output_dir / "checkpoints").is_dir():
        raise MmstError(f"--resume: {output_dir / 'checkpoints'} has no checkpoint to continue from")

    from transformers import set_seed

    set_seed(options.seed)  # before building: new projection heads start from seeded weights
    built = build_training_model(options)
    model = built.model
    if built.attention:
        log(f"attention: {built.attention}")
    if options.lora.enabled:
        trainable = add_lora(model, options.lora)
        log(f"LoRA r={options.lora.r}: {trainable:,} trainable parameters")
    train_data, eval_data = _load_training_data(options, built.audio_sampling_rate)
    _check_modalities(model, train_data)
    if eval_data is not None:
        _check_modalities(model, eval_data)
    log(
        f"data: {len(train_data.dataset)} training rows from {train_data.source}"
        + (f", {len(eval_data.dataset)} evaluation rows" if eval_data else ", no evaluation data")
        + (f" ({train_data.skipped_rows} rows with bad media skipped)" if train_data.skipped_rows else "")
    )

    loss_options = options.loss
    if world_size() > 1 and not loss_options.gather_across_devices:
        loss_options = LossOptions(**{**asdict(loss_options), "gather_across_devices": True})
    loss_options.validate(embedding_dimension=model.get_embedding_dimension())
    guide = built.make_guide() if "gist" in loss_options.name else None
    loss = build_loss(model, loss_options, guide=guide)

    evaluator = None
    if eval_data is not None:
        from mmst_cli.core.evaluation import RetrievalEvaluator

        evaluator = RetrievalEvaluator(pairs_to_retrieval_task(eval_data), batch_size=options.batch_size)
    base_metrics = _evaluate(evaluator, model)
    if base_metrics:
        log(f"before training: NDCG@10 {base_metrics[MAIN_METRIC]:.4f}")

    from sentence_transformers import SentenceTransformerTrainer

    from mmst_cli.core.progress import RichProgressCallback

    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = output_dir / "checkpoints"
    router_mapping = dict(train_data.column_modalities) if built.is_router else None
    args = _training_arguments(
        options, checkpoints, built.learning_rate_mapping, router_mapping, evaluator is not None, train_data
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_data.dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=[RichProgressCallback(progress_console)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts on stdout, which is for --json
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=True if options.resume else None)
    except KeyboardInterrupt:
        raise
    except (RuntimeError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "out of memory" in message.lower():
            raise MmstError(
                f"out of memory while training ({message}); lower --batch-size or --mini-batch-size, "
                "or use --precision bf16", EXIT_FAILURE
            ) from error
        raise
    runtime = time.perf_counter() - started
    if options.lora.enabled:
        merge_lora(model)
    final_metrics = _evaluate(evaluator, model)

    summary = {
        "model": built.description,
        "output_dir": str(output_dir),
        "model_dir": str(model_dir),
        "data": train_data.source,
        "train_rows": len(train_data.dataset),
        "eval_data": eval_data.source if eval_data else None,
        "eval_rows": len(eval_data.dataset) if eval_data else 0,
        "loss": loss_options.name,
        "base": base_metrics,
        "final": final_metrics,
        "train": {
            "steps": trainer.state.global_step,
            "epochs": round(float(trainer.state.epoch or 0), 4),
            "runtime_s": round(runtime, 2),
            "samples_per_s": round(result.metrics.get("train_samples_per_second", 0.0), 3),
            "mean_loss": round(float(result.training_loss), 6),
            "loss_curve": [
                [entry["step"], round(float(entry["loss"]), 6)] for entry in trainer.state.log_history if "loss" in entry
            ],
        },
        "options": _jsonable_options(options),
    }
    if is_main_process():
        _save_model_atomically(model, model_dir)
        _write_json_atomically(output_dir / "metrics.json", summary)
    return TrainingResult(summary, model)


def _silent(_line: str) -> None:
    """The log of processes other than the main one."""


def _jsonable_options(options: TrainEmbedOptions) -> dict[str, Any]:
    values = asdict(options)
    values["freeze"] = list(options.freeze)
    return values
