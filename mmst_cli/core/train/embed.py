"""Finetune an embedding model on pair data with the Sentence Transformers trainer.

:func:`train_embedding_model` is the whole ``mmst train-embed`` job: build or load the model, load
and validate the data, score the model before training, train, score it after, and write the
model, its card and ``metrics.json`` without ever leaving a half-written file under a final name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mmst_cli.core.data.tables import PairData
from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.locate import peek_audio_sampling_rate
from mmst_cli.core.models.lora import add_lora, merge_lora
from mmst_cli.core.models.model_card import name_training_data, record_scores, show_loading
from mmst_cli.core.retrieval.tasks import MAIN_METRIC, pairs_to_retrieval_task
from mmst_cli.core.train.common import (
    TrainingOptions,
    check_modalities,
    common_training_arguments,
    ensure_disk_space,
    run_in_owned_folder,
    save_run,
    train_summary,
    train_with_progress,
    world_size,
)
from mmst_cli.core.train.dataloader_workers import preprocess_in_workers, training_rows
from mmst_cli.core.train.fsdp import check_fsdp_model, fully_sharded_trainer, gathered_weights
from mmst_cli.core.train.eval_record import load_pairs_with_eval_record, write_eval_record
from mmst_cli.core.train.losses import LossOptions, build_loss
from mmst_cli.core.train.multi_vector import (
    build_multi_vector_loss,
    build_multi_vector_model,
    trainer_classes,
    validate_multi_vector_options,
    wants_multi_vector,
)

#: ``--batch-sampler`` values -> Sentence Transformers' batch samplers.
BATCH_SAMPLERS = {
    "no-duplicates": "no_duplicates",
    "no-duplicates-hashed": "no_duplicates_hashed",
    "default": "batch_sampler",
}
TOWERS = ("text", "image", "audio")

#: The demo's schedule, where it differs from the general defaults (option name -> value). Tuned on
#: an 800/261 split of the emoji training pairs only; the 300 held-out pairs went from 0.022 to 0.351
#: NDCG@10 in 93 s on 2 cores. The frozen image tower makes three epochs cheap, and plain MNRL at 64
#: pairs needs no GradCache on this small model. The general defaults (one epoch, 32 pairs,
#: cached MNRL) stay what a first run on a user's own, larger data should start from.
DEMO_RECIPE: dict[str, Any] = {"loss": "mnrl", "epochs": 3.0, "batch_size": 64}


@dataclass
class TrainEmbedOptions(TrainingOptions):
    """Every option of ``mmst train-embed``; the CLI fills it, tests may build it directly.

    Model: ``model`` (folder or Hub id) or a Router composed from ``text_encoder`` /
    ``image_encoder`` / ``audio_encoder`` projected to ``dim``; neither gives the embedded default.
    Data: ``data`` etc.; no data (with no model) gives the embedded emoji dataset. The schedule and
    run options are :class:`~mmst_cli.core.train.common.TrainingOptions`'.
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

    loss: LossOptions = field(default_factory=LossOptions)
    head_lr: float = 2e-3
    batch_sampler: str | None = None
    prompts: str | dict[str, str] | None = None
    #: Train a late-interaction model (see :mod:`mmst_cli.core.train.multi_vector`).
    multi_vector: bool = False
    query_length: int | None = None
    document_length: int | None = None

    command = "train-embed"

    def validate(self) -> None:
        """Reject bad values and impossible combinations before any model or data is loaded."""
        self.validate_schedule()
        if self.model and (self.text_encoder or self.image_encoder or self.audio_encoder):
            raise MmstError("--model cannot be combined with --text-encoder/--image-encoder/--audio-encoder; pick one")
        if (self.image_encoder or self.audio_encoder) and not self.text_encoder and self.dim is None:
            raise MmstError("a composed model without --text-encoder needs --dim")
        for name in ("dim", "image_size", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise MmstError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.head_lr <= 0:
            raise MmstError(f"--head-lr must be positive, got {self.head_lr}")
        if self.batch_sampler is not None and self.batch_sampler not in BATCH_SAMPLERS:
            raise MmstError(f"--batch-sampler {self.batch_sampler!r} is unknown; use one of {', '.join(BATCH_SAMPLERS)}")
        unknown = [tower for tower in self.freeze if tower not in TOWERS]
        if unknown:
            raise MmstError(f"--freeze {unknown[0]!r} is not a tower; use one of {', '.join(TOWERS)}")
        if self.eval_data and self.eval_split:
            raise MmstError("--eval-data and --eval-split both choose evaluation data; pass one")
        if self.data is None and (self.model or self.text_encoder or self.image_encoder or self.audio_encoder):
            raise MmstError("--data is required when you choose a model (the emoji demo data goes with the default model)")
        self.loss.validate(gradient_checkpointing=self.gradient_checkpointing)
        composed = self.text_encoder or self.image_encoder or self.audio_encoder
        shaping = [flag for flag, value in (("--dim", self.dim), ("--image-size", self.image_size), ("--freeze", self.freeze)) if value]
        if shaping and not composed and not wants_multi_vector(self):  # the model would be built without them
            start = f"--model {self.model!r}" if self.model else "the embedded default"
            raise MmstError(
                f"{', '.join(shaping)} shape a Router composed with --text-encoder/--image-encoder/--audio-encoder "
                f"(--dim also a --multi-vector model's token size); {start} keeps its own, so drop {', '.join(shaping)}"
            )
        if wants_multi_vector(self):
            validate_multi_vector_options(self)
        elif self.query_length is not None or self.document_length is not None:
            raise MmstError("--query-length and --document-length cap the tokens of a multi-vector model; add --multi-vector")

    @property
    def is_demo(self) -> bool:
        """No model and no data: the embedded default trains on the embedded emoji pairs."""
        return not (self.model or self.text_encoder or self.image_encoder or self.audio_encoder or self.data)


def with_demo_recipe(options: TrainEmbedOptions, chosen: set[str]) -> tuple[TrainEmbedOptions, dict[str, Any]]:
    """Apply :data:`DEMO_RECIPE` to a demo run, except to the options the user chose.

    Args:
        options: The run's options.
        chosen: Names of the options set on the command line or in a config file; they always win,
            and a GradCache flag (``mini_batch_size``, ``mini_batch_tokens``) keeps the cached loss.

    Returns:
        The options to run with, and the recipe values applied (empty unless ``options.is_demo``).
    """
    if not options.is_demo:
        return options, {}
    if chosen & {"mini_batch_size", "mini_batch_tokens"}:
        chosen = chosen | {"loss"}  # GradCache flags ask for the cached loss, the general default
    applied = {name: value for name, value in DEMO_RECIPE.items() if name not in chosen}
    changes = {name: value for name, value in applied.items() if name != "loss"}
    if "loss" in applied:
        changes["loss"] = replace(options.loss, name=applied["loss"])
    return replace(options, **changes), applied


def _training_arguments(arguments_class, options: TrainEmbedOptions, checkpoints: Path, built, data: PairData, has_eval: bool):
    # Comparing decoded images or audio arrays row by row is slow: hash them once instead.
    batch_sampler = options.batch_sampler or ("no-duplicates-hashed" if data.media_columns else "no-duplicates")
    # A plain loss runs one forward per column, then one backward: DDP's default search for unused
    # parameters marks a tower that only some columns use (CLIP's, a Router's) ready twice and fails.
    # The parameters a step uses are the same every step, which a static graph states. GradCache's
    # forward and backward passes come in pairs per mini batch, which the default search follows.
    static = {"ddp_find_unused_parameters": False, "ddp_static_graph": True}
    ddp = static if world_size() > 1 and not options.fsdp and not options.loss.name.startswith("cached-") else {}
    return arguments_class(
        **common_training_arguments(options, checkpoints, rows=len(data.dataset), has_eval=has_eval, model=built.model),
        **ddp,
        learning_rate_mapping=built.learning_rate_mapping or {},
        batch_sampler=BATCH_SAMPLERS[batch_sampler],
        prompts=options.prompts,
        # Routers need each column's route; the modality of the column is its route name.
        router_mapping=dict(data.column_modalities) if built.is_router else {},
    )


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
    return run_in_owned_folder(options, _train, progress_console=progress_console, log=log)


def _train(options: TrainEmbedOptions, output_dir: Path, progress_console, log) -> TrainingResult:
    """The run itself, in a folder it owns: data, model, the score before, training, the score after."""
    from transformers import set_seed

    from mmst_cli.core.models.composition import build_training_model

    model_dir = output_dir / "model"
    # Data first: bad media fails in seconds, before any weights are loaded.
    train_data, eval_data, eval_record = load_pairs_with_eval_record(
        options, peek_audio_sampling_rate(options.audio_encoder or options.model)
    )
    set_seed(options.seed)
    multi_vector = wants_multi_vector(options)
    built = build_multi_vector_model(options) if multi_vector else build_training_model(options)
    model = built.model
    check_fsdp_model(options, model)
    if not options.dry_run:
        ensure_disk_space(output_dir, model)
    if built.attention:
        log(f"attention: {built.attention}; text batches {_text_batch_path(model)}")
    if options.lora.enabled:
        trainable = add_lora(model, options.lora)
        log(f"LoRA r={options.lora.r}: {trainable:,} trainable parameters")
    check_modalities(model, train_data)
    if eval_data is not None:
        check_modalities(model, eval_data)
    adopted = adopt_training_prompts(model, options.prompts, train_data)
    if adopted:
        log(f"prompts: {adopted} (kept with the model, so evaluation and later encoding use them)")
    log(
        f"data: {len(train_data.dataset)} training rows from {train_data.source}"
        + (f", {len(eval_data.dataset)} evaluation rows" if eval_data else ", no evaluation data")
        + (f" ({train_data.skipped_rows} rows with bad media skipped)" if train_data.skipped_rows else "")
    )
    for note in train_data.notes + (eval_data.notes if eval_data else []):
        log(note)

    if options.dry_run:
        return _dry_run(options, built, train_data, multi_vector=multi_vector)

    loss_options = options.loss
    if world_size() > 1 and not loss_options.gather_across_devices:
        loss_options = LossOptions(**{**asdict(loss_options), "gather_across_devices": True})
    loss_options.validate(embedding_dimension=model.get_embedding_dimension())
    if multi_vector:
        loss = build_multi_vector_loss(model, loss_options)
    else:
        guide = built.make_guide() if "gist" in loss_options.name else None
        loss = build_loss(model, loss_options, guide=guide)

    evaluator = None
    if eval_data is not None:
        from mmst_cli.core.retrieval.evaluation import RetrievalEvaluator

        evaluator = RetrievalEvaluator(pairs_to_retrieval_task(eval_data), batch_size=options.batch_size)
    base_metrics = evaluator.scores(model) if evaluator else {}
    if base_metrics:
        log(f"before training: NDCG@10 {base_metrics[MAIN_METRIC]:.4f}")
        record_scores(model, evaluator, base_metrics)
    name_training_data(model, train_data.source)

    trainer_class, arguments_class = trainer_classes(multi_vector)
    if options.fsdp:
        trainer_class = fully_sharded_trainer(trainer_class)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_rows, audio = training_rows(train_data.dataset)
    trainer = trainer_class(
        model=model,
        args=_training_arguments(
            arguments_class, options, output_dir / "checkpoints", built, train_data, evaluator is not None
        ),
        train_dataset=train_rows,
        loss=loss,
        evaluator=evaluator,
    )
    preprocess_in_workers(trainer, audio)
    output, runtime = train_with_progress(trainer, options, progress_console, log)
    if options.lora.enabled:
        merge_lora(model)
    full_weights = gathered_weights(trainer)  # every process takes part, before the main one saves
    final_metrics = evaluator.scores(model) if evaluator else {}
    if final_metrics:
        record_scores(model, evaluator, final_metrics, epoch=trainer.state.epoch or 0, step=trainer.state.global_step)
    show_loading(model, model_dir)

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
        "train": train_summary(trainer, output, runtime),
        "options": options.as_json(),
    }
    write_eval_record(output_dir, eval_record)  # what `mmst evaluate --model RUN` scores
    save_run(model, model_dir, output_dir, summary, full_weights)
    return TrainingResult(summary, model)


def adopt_training_prompts(model, prompts: str | dict[str, str] | None, data: PairData) -> dict[str, str]:
    """Make the ``--prompts`` a run trains with the model's own ``query`` and ``document`` prompts.

    The trainer prepends ``--prompts`` to the columns it trains on but does not keep them with the
    model, so evaluation before, during and after training, ``mmst evaluate`` and every later
    ``encode_query`` / ``encode_document`` would feed inputs the model never trained on. The
    first data column is the query side and the second the document side (negatives share the
    documents' encoder). A column without a prompt leaves that side as the model had it.

    Args:
        model: The SentenceTransformer about to train.
        prompts: ``--prompts``: one prompt for every column, a column -> prompt mapping, or ``None``.
        data: The training pairs, whose column order says which column is which side.

    Returns:
        The prompts given to the model, ``{"query": ..., "document": ...}`` (empty without ``--prompts``).
    """
    if not prompts:
        return {}
    query_column, document_column = list(data.column_modalities)[:2]
    sides = {"query": query_column, "document": document_column}
    adopted = {
        side: prompts if isinstance(prompts, str) else prompts[column]
        for side, column in sides.items()
        if isinstance(prompts, str) or column in prompts
    }
    model.prompts = {**(model.prompts or {}), **adopted}
    return adopted


def _dry_run(options: TrainEmbedOptions, built, train_data: PairData, *, multi_vector: bool) -> TrainingResult:
    """Plan the run's peak memory instead of training (``--dry-run``); a multi-vector run's GradCache
    keeps one vector per token of every input, not one per input."""
    from mmst_cli.core.train.memory_plan import gpu_plan_options, plan_training_memory, sample_inputs

    cached = options.loss.name.startswith("cached-")
    plan = plan_training_memory(
        built.model,
        sample_inputs(train_data, is_router=built.is_router, multi_vector=multi_vector),
        batch_size=options.batch_size,
        mini_batch_size=options.loss.mini_batch_size if cached else None,
        precision=options.precision,
        modalities=train_data.column_modalities.values(),
        gradient_checkpointing=options.gradient_checkpointing,
        gradcache_output=("token_embeddings" if multi_vector else "sentence_embedding") if cached else None,
        **gpu_plan_options(options),
    )
    summary = {"model": built.description, "data": train_data.source, "dry_run": plan.as_json()}
    return TrainingResult(summary, built.model)


def _text_batch_path(model) -> str:
    """Which path text-only batches take: unpadded (FlashAttention-2 varlen) or padded."""
    from mmst_cli.core.models.checkpoints import iter_modules

    flattening = [getattr(module, "can_flatten_inputs", None) for module in iter_modules(model)]
    if any(flattening):
        return "unpadded (FlashAttention-2 varlen)"
    return "padded (unpadding needs flash_attention_2)"
