"""Train a reranker (a Sentence Transformers CrossEncoder) with the CrossEncoder trainer.

:func:`train_reranker` is the whole ``mmst train-rerank`` job: build or load the reranker
(:mod:`mmst_cli.core.models.rerankers`), load and validate the data, score it before training, train,
score it after, and write the model and ``metrics.json`` atomically, like ``train-embed``.

Data layouts (found from the columns, validated like train-embed's data: every media reference is
checked before any model work, with ``--media-root``, ``--skip-bad`` and ``--allow-remote-media``):

``pointwise``  (query, document, label): a scalar ``label`` / ``score`` column.
``pairs``      (query, positive, negative...): no label column; each positive is relevant (1)
               and each negative is not (0); ``--negatives-per-positive N`` keeps the first N.
``listwise``   (query, [documents], [labels]): a list column of documents and one of labels;
               validated after flattening, so a row number in an error counts documents.

Every layout becomes the same thing: (query, document, label) rows grouped by query, where
identical queries merge into one. Each loss then gets the shape it needs: ``bce`` pointwise rows,
``cmnrl`` (query, positive, k hard negatives) rows, ``lambda`` / ``listnet`` / ``plistmle`` one
list per query. So pointwise and pair data train listwise losses and lists train ``bce``.

Evaluation reranks each evaluation query's own candidates: the run is the reranker's raw score
(no sigmoid, which saturates and ties in float32) of every (query, candidate) pair, the qrels are
the labels (integer labels are graded relevance; fractional ones count as relevant from 0.5), and
:func:`mmst_cli.core.retrieval.metrics.compute_metrics` gives NDCG@10, MRR@10, MAP and accuracy@1 exactly as
trec_eval would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.locate import peek_audio_sampling_rate
from mmst_cli.core.models.lora import add_lora, merge_lora
from mmst_cli.core.train.common import (
    TrainingOptions,
    check_modalities,
    common_training_arguments,
    ensure_disk_space,
    load_train_and_eval,
    run_in_owned_folder,
    save_run,
    train_summary,
    train_with_progress,
    world_size,
)
from mmst_cli.core.train.dataloader_workers import preprocess_in_workers
from mmst_cli.core.train.fsdp import check_fsdp_model, fully_sharded_trainer, gathered_weights
from mmst_cli.core.train.losses import gradcache_kwargs, validate_token_budget
from mmst_cli.core.train.rerank_demo import DEFAULT_MODEL_NOTE, DEMO_EVAL, DEMO_TRAIN, default_reranker_start
from mmst_cli.core.train.rerank_data import (
    RerankData,
    load_rerank_data,
    relevance,
    split_queries,
    training_dataset,
)

#: ``--loss`` values.
LOSSES = ("bce", "cmnrl", "lambda", "listnet", "plistmle")
#: Losses that learn from one list of documents per query.
LISTWISE_LOSSES = ("lambda", "listnet", "plistmle")
#: The metric that leads reports, and the trainer's primary metric.
MAIN_METRIC = "ndcg@10"


@dataclass
class TrainRerankOptions(TrainingOptions):
    """Every option of ``mmst train-rerank``; the CLI fills it, tests may build it directly.

    Model: ``model`` (a checkpoint, a saved reranker or a train-embed run; ``None``: the packaged
    all-MiniLM-L6-v2, see :mod:`~mmst_cli.core.train.rerank_demo`), ``arch`` (see
    :data:`mmst_cli.core.models.rerankers.ARCHITECTURES`), the answer tokens, ``prompt`` (the
    instruction; ``None`` keeps a saved one or uses the default for new LM rerankers),
    ``pair_template`` and ``max_pixels``. Data: ``data`` etc. as in train-embed (``None``, with no
    model: the demo's emoji-name pairs), plus
    ``label_column`` and ``negatives_per_positive``. Loss: ``loss``, ``mini_batch_size`` (pairs
    per forward pass of the cached and listwise losses) and ``mini_batch_tokens`` (a token budget
    per forward pass instead, where the installed loss supports one).
    """

    model: str | None = None
    arch: str = "auto"
    true_token: str = "1"
    false_token: str = "0"
    prompt: str | None = None
    pair_template: str = "auto"
    max_pixels: int | None = None

    label_column: str | None = None
    negatives_per_positive: int | None = None

    loss: str = "bce"
    mini_batch_size: int = 16
    mini_batch_tokens: int | None = None
    batch_size: int = 16

    command = "train-rerank"

    def validate(self) -> None:
        """Reject bad values and impossible combinations before any model or data is loaded."""
        from mmst_cli.core.models.rerankers import ARCHITECTURES, PAIR_TEMPLATES

        self.validate_schedule()
        if not self.data and self.model:
            raise MmstError(
                "--data is required when you choose a model: (query, document, label), (query, positive, negatives...) "
                "or listwise rows (the emoji demo data goes with the default model)"
            )
        if not self.data and (self.eval_data or self.eval_split):
            raise MmstError("--eval-data and --eval-split need --data; the demo brings its own evaluation pairs")
        if self.arch not in ARCHITECTURES:
            raise MmstError(f"--arch {self.arch!r} is unknown; use one of {', '.join(ARCHITECTURES)}")
        if self.pair_template not in PAIR_TEMPLATES:
            raise MmstError(f"--pair-template {self.pair_template!r} is unknown; use one of {', '.join(PAIR_TEMPLATES)}")
        if self.loss not in LOSSES:
            raise MmstError(f"--loss {self.loss!r} is not a reranking loss mmst knows; use one of {', '.join(LOSSES)}")
        if not self.true_token or not self.false_token:
            raise MmstError("--true-token and --false-token must not be empty")
        if self.true_token == self.false_token:
            raise MmstError(f"--true-token and --false-token are both {self.true_token!r}; they must differ")
        for name in ("max_pixels", "negatives_per_positive", "mini_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise MmstError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.mini_batch_tokens is not None and self.loss == "bce":
            raise MmstError("--mini-batch-tokens budgets the mini batches of cmnrl and the listwise losses; --loss bce has none")
        validate_token_budget(self.mini_batch_tokens)
        if self.eval_data and self.eval_split:
            raise MmstError("--eval-data and --eval-split both choose evaluation data; pass one")
        if self.eval_split is not None and not 0 < self.eval_split < 1:
            raise MmstError(f"--eval-split must be between 0 and 1 (exclusive), got {self.eval_split}")
        if self.loss == "cmnrl" and self.gradient_checkpointing:
            raise MmstError(
                "--loss cmnrl (GradCache) cannot be combined with --gradient-checkpointing; drop one "
                "(GradCache already bounds activation memory through --mini-batch-size)"
            )


def text_tower_start(reference: str, log=print) -> str:
    """The checkpoint a reranker starts from: ``reference`` itself, or for an mmst-trained embedder
    (a train-embed run folder, or its saved ``model/``, a Router) the folder of its text route's
    transformer, which then gets a fresh one-label head (``--arch classifier``).

    Raises:
        MmstError: when such a Router has no text route to start from.
    """
    from mmst_cli.core.models.locate import is_run_folder

    run_folder = is_run_folder(reference)
    folder = Path(reference).expanduser() / ("model" if run_folder else "")
    router = folder / "router_config.json"
    if not router.is_file():
        return str(folder) if run_folder else reference
    config = json.loads(router.read_text(encoding="utf8"))
    routes = config.get("structure", {})
    first = (routes.get("text") or [None])[0]
    if first is None or not str(config.get("types", {}).get(first, "")).endswith("Transformer"):
        raise MmstError(
            f"--model {reference!r} is an embedder whose Router has no text tower (routes: {', '.join(routes) or 'none'}); "
            "a reranker starts from a text transformer: train the embedder with --text-encoder, or pass a checkpoint"
        )
    log(f"reranker: starting from the text tower of {reference} ({first})")
    return str(folder / first)


def build_rerank_loss(model, name: str, mini_batch_size: int, mini_batch_tokens: int | None = None):
    """The Sentence Transformers CrossEncoder loss for ``--loss``."""
    from sentence_transformers.cross_encoder import losses

    if name == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    factory = {
        "cmnrl": losses.CachedMultipleNegativesRankingLoss,
        "lambda": losses.LambdaLoss,
        "listnet": losses.ListNetLoss,
        "plistmle": losses.PListMLELoss,
    }[name]
    return factory(model, **gradcache_kwargs(factory, mini_batch_size, mini_batch_tokens))


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def _decoder(feature):
    import datasets

    if isinstance(feature, datasets.Image):
        return feature.decode_example
    if isinstance(feature, dict) and "array" in feature:  # audio decoded by prepare_media

        def audio(value):
            import numpy as np

            return {"array": np.asarray(value["array"], dtype=np.float32), "sampling_rate": value["sampling_rate"]}

        return audio
    return lambda value: value


def reranker_scores(model, data: RerankData, batch_size: int = 32, chunk: int = 256) -> list[float]:
    """The raw score (no activation) of every (query, document) row, decoding media a chunk at a time."""
    import numpy as np
    import torch

    decode_query, decode_document = _decoder(data.query_feature), _decoder(data.document_feature)
    scores: list[float] = []
    for start in range(0, len(data.queries), chunk):
        pairs = [
            (decode_query(query), decode_document(document))
            for query, document in zip(data.queries[start : start + chunk], data.documents[start : start + chunk])
        ]
        predicted = model.predict(
            pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(), convert_to_numpy=True, show_progress_bar=False
        )
        scores.extend(np.asarray(predicted, dtype=np.float64).reshape(len(pairs), -1)[:, 0].tolist())
    return scores


def reranking_metrics(data: RerankData, scores: list[float]) -> tuple[dict[str, float], dict[str, int]]:
    """NDCG@10, MRR@10, MAP (over all candidates) and accuracy@1 of ``scores``, and query counts."""
    from mmst_cli.core.retrieval.metrics import compute_metrics

    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    # Fixed-width ids: equal scores are broken by document id descending (trec_eval's rule), i.e.
    # the later candidate of a query first, whatever the number of rows.
    width = len(str(len(scores)))
    for row, (group, label, score) in enumerate(zip(data.groups, data.labels, scores)):
        doc_id = f"d{row:0{width}d}"
        run.setdefault(f"q{group}", {})[doc_id] = float(score)
        qrels.setdefault(f"q{group}", {})[doc_id] = relevance(label)
    if not any(value >= 1 for judged in qrels.values() for value in judged.values()):
        raise MmstError(
            f"evaluation data {data.source!r} has no relevant document (label >= 1, or >= 0.5 for fractions): nothing to rank"
        )
    depth = max(len(judged) for judged in qrels.values())
    # A query with only negative candidates says nothing about the reranker's order: skipped.
    result = compute_metrics(
        run, qrels, ks=sorted({1, 10, depth}), metrics=("ndcg", "mrr", "map", "accuracy"),
        skip_queries_without_relevant=True,
    )  # fmt: skip
    metrics = {
        "ndcg@10": result.means["ndcg@10"],
        "mrr@10": result.means["mrr@10"],
        "map": result.means[f"map@{depth}"],
        "accuracy@1": result.means["accuracy@1"],
    }
    counts = {"evaluated": result.num_queries, "skipped_no_relevant": result.num_without_relevant}
    return metrics, counts


def reranking_evaluator(data: RerankData, name: str = "eval", batch_size: int = 32):
    """A Sentence Transformers evaluator that reranks each evaluation query's candidates.

    The trainer calls it during training (``--eval-steps``); ``.scores(model)`` gives the metrics
    without a name prefix (before and after training), and ``.counts`` the query counts. Built on
    demand so that importing this module (option validation) does not import the ML stack.
    """
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    class RerankingEvaluator(BaseEvaluator):
        def __init__(self):
            super().__init__()
            self.data = data
            self.name = name
            self.batch_size = batch_size
            self.primary_metric = MAIN_METRIC
            self.counts: dict[str, int] = {}

        def scores(self, model) -> dict[str, float]:
            metrics, self.counts = reranking_metrics(self.data, reranker_scores(model, self.data, self.batch_size))
            return metrics

        def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            metrics = self.prefix_name_to_metrics(self.scores(model), self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return RerankingEvaluator()


@dataclass
class RerankResult:
    """What a train-rerank run produced (shaped like train-embed's ``TrainingResult``).

    Attributes:
        summary: ``{"model", "arch", "output_dir", "model_dir", "data", "base", "final", "train", ...}``,
            also written to ``metrics.json``.
        model: The trained CrossEncoder, as saved to ``summary["model_dir"]``.
    """

    summary: dict[str, Any]
    model: Any


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------


def _load_training_data(options: TrainRerankOptions, audio_rate: int | None) -> tuple[RerankData, RerankData | None]:
    def load(reference: str, **where) -> RerankData:
        return load_rerank_data(
            reference,
            columns=options.columns,
            label_column=options.label_column,
            negatives_per_positive=options.negatives_per_positive,
            **where,
            **options.media_options(audio_rate),
        )

    if options.data is None:
        return load(str(DEMO_TRAIN)), load(str(DEMO_EVAL))
    return load_train_and_eval(options, load, split_queries)


def _describe(data: RerankData) -> str:
    return (
        f"{data.num_queries} queries, {len(data.labels)} (query, document) pairs "
        f"({data.layout}, {data.column_modalities['query']} -> {data.column_modalities['document']})"
    )


def _dry_run(options: TrainRerankOptions, built, train_dataset, data: RerankData) -> RerankResult:
    """Plan the run's peak memory instead of training (``--dry-run``): one (query, document) pair,
    the longest of a few training rows, is what each forward pass holds per sample."""
    from mmst_cli.core.train.memory_plan import SAMPLE_ROWS, gpu_plan_options, plan_training_memory

    query, document = train_dataset.column_names[:2]

    def pair(row) -> tuple[Any, Any]:
        candidate = row[document]
        return row[query], candidate[0] if isinstance(candidate, list) else candidate

    pairs = [pair(train_dataset[index]) for index in range(min(SAMPLE_ROWS, len(train_dataset)))]
    longest = max(pairs, key=lambda both: sum(len(side) for side in both if isinstance(side, str)))
    plan = plan_training_memory(
        built.model,
        [(longest, None)],
        batch_size=options.batch_size,
        # bce scores the whole batch at once; cmnrl and the listwise losses go mini batch by mini batch.
        mini_batch_size=None if options.loss == "bce" else options.mini_batch_size,
        precision=options.precision,
        modalities=data.column_modalities.values(),
        gradient_checkpointing=options.gradient_checkpointing,
        **gpu_plan_options(options),
    )
    return RerankResult({"model": built.description, "data": data.source, "dry_run": plan.as_json()}, built.model)


def train_reranker(options: TrainRerankOptions, *, progress_console=None, log=print) -> RerankResult:
    """Run a whole train-rerank job: see the module docstring.

    Args:
        options: What to train, on what, and how.
        progress_console: Rich console for the progress bar (stderr when ``None``).
        log: Receives one-line status messages for the user (from the main process only).
    """
    return run_in_owned_folder(options, _train, progress_console=progress_console, log=log)


def _train(options: TrainRerankOptions, output_dir: Path, progress_console, log) -> RerankResult:
    """The run itself, in a folder it owns: data, reranker, the score before, training, the score after."""
    from transformers import set_seed

    from mmst_cli.core.models.rerankers import build_reranker, instruction_of

    model_dir = output_dir / "model"
    if options.model:
        start = text_tower_start(options.model, log)
    else:
        start = default_reranker_start()
        log(DEFAULT_MODEL_NOTE)
    # Data first: bad media fails in seconds, before any weights are loaded.
    train_data, eval_data = _load_training_data(options, peek_audio_sampling_rate(start))
    # The shape the loss reads, checked before the weights load too (bce on positives only, ...).
    train_dataset = training_dataset(train_data, options.loss, options.negatives_per_positive, log)
    set_seed(options.seed)
    built = build_reranker(
        start,
        arch=options.arch,
        true_token=options.true_token,
        false_token=options.false_token,
        prompt=options.prompt,
        pair_template=options.pair_template,
        max_pixels=options.max_pixels,
        attn_implementation=options.attn_implementation,
        trust_remote_code=options.trust_remote_code,
        log=log,
    )
    model = built.model
    check_fsdp_model(options, model)
    if not options.dry_run:
        ensure_disk_space(output_dir, model)
    log(f"reranker: {built.description}; attention: {built.attention}")
    for note in built.notes:
        log(note)
    if options.lora.enabled:
        trainable = add_lora(model, options.lora)
        log(f"LoRA r={options.lora.r}: {trainable:,} trainable parameters")

    check_modalities(model, train_data.as_pair_data())
    if eval_data is not None:
        check_modalities(model, eval_data.as_pair_data())
    log(
        f"data: {_describe(train_data)} from {train_data.source}"
        + (f"; evaluation: {_describe(eval_data)}" if eval_data else "; no evaluation data")
        + (f" ({train_data.skipped_rows} rows with bad media skipped)" if train_data.skipped_rows else "")
    )
    for note in train_data.notes:
        log(note)
    if options.dry_run:
        return _dry_run(options, built, train_dataset, train_data)
    loss = build_rerank_loss(model, options.loss, options.mini_batch_size, options.mini_batch_tokens)

    evaluator = reranking_evaluator(eval_data, batch_size=options.batch_size) if eval_data is not None else None
    base_metrics = evaluator.scores(model) if evaluator else {}
    if base_metrics:
        log(f"before training: NDCG@10 {base_metrics[MAIN_METRIC]:.4f}")

    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )

    # CMNRL's in-batch negatives must not be the anchor's own positive: no duplicates in a batch
    # (hashing decoded media once instead of comparing it row by row).
    has_media = any(modality != "text" for modality in train_data.column_modalities.values())
    sampler = ("no_duplicates_hashed" if has_media else "no_duplicates") if options.loss == "cmnrl" else "batch_sampler"
    # Every loss runs the model more than once before (or, GradCache, within) its backward; DDP's
    # default search for unused parameters then marks parameters ready twice and fails. The
    # parameters a step uses are the same every step, which a static graph states.
    distributed = world_size() > 1 and not options.fsdp
    static_ddp_graph = {"ddp_find_unused_parameters": False, "ddp_static_graph": True} if distributed else {}
    output_dir.mkdir(parents=True, exist_ok=True)
    args = CrossEncoderTrainingArguments(
        **common_training_arguments(
            options, output_dir / "checkpoints", rows=len(train_dataset), has_eval=evaluator is not None, model=model
        ),
        batch_sampler=sampler,
        **static_ddp_graph,
        # The loss sees the instruction only through the trainer: a model's default prompt applies to
        # predict(), not to training batches.
        prompts=instruction_of(model) or None,
    )
    trainer_class = fully_sharded_trainer(CrossEncoderTrainer) if options.fsdp else CrossEncoderTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator)
    preprocess_in_workers(trainer)
    output, runtime = train_with_progress(trainer, options, progress_console, log)
    if options.lora.enabled:
        merge_lora(model)
    full_weights = gathered_weights(trainer)  # every process takes part, before the main one saves
    final_metrics = evaluator.scores(model) if evaluator else {}

    summary = {
        "model": built.description,
        "arch": built.arch,
        "pair_template": built.pair_template,
        "instruction": instruction_of(model),
        "output_dir": str(output_dir),
        "model_dir": str(model_dir),
        "data": train_data.source,
        "data_layout": train_data.layout,
        "train_queries": train_data.num_queries,
        "train_pairs": len(train_data.labels),
        "train_rows": len(train_dataset),
        "eval_data": eval_data.source if eval_data else None,
        "eval_queries": eval_data.num_queries if eval_data else 0,
        "eval_pairs": len(eval_data.labels) if eval_data else 0,
        "eval_counts": evaluator.counts if evaluator else {},
        "loss": options.loss,
        "base": base_metrics,
        "final": final_metrics,
        "train": train_summary(trainer, output, runtime),
        "options": options.as_json(),
    }
    save_run(model, model_dir, output_dir, summary, full_weights)
    return RerankResult(summary, model)
