"""Score an embedding model (and optionally a reranker) on a retrieval task, trec_eval-exact.

The corpus and the queries are each encoded once (grouped by modality, float32 scores); exact
top-k search runs in blocks (:mod:`mmst_cli.core.retrieval.search`); the ranking is scored with
:mod:`mmst_cli.core.retrieval.metrics`, whose numbers equal trec_eval's. A Matryoshka sweep re-scores the
same embeddings truncated to each dimension, so it costs one encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from mmst_cli.core.data.documents import PdfPage, RenderSettings
from mmst_cli.core.data.media import page_image_file
from mmst_cli.core.encode.encoding import encode_inputs, modality_of
from mmst_cli.core.errors import MmstError
from mmst_cli.core.retrieval.metrics import compute_metrics
from mmst_cli.core.retrieval.search import search
from mmst_cli.core.retrieval.tasks import MAIN_METRIC, RetrievalTask

Tracker = Callable[[str, int], Callable[[int], None]]


def _no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class StageResult:
    """The scored ranking of one stage: retrieval at one dimension, or reranking."""

    name: str
    run: dict[str, dict[str, float]]
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    counts: dict[str, int]


def _similarity(model) -> str:
    name = getattr(model, "similarity_fn_name", None) or "cosine"
    return str(getattr(name, "value", name))


def embed_task(model, task: RetrievalTask, *, batch_size: int = 32, track: Tracker = _no_progress):
    """Encode queries (as queries) and corpus (as documents); returns both id lists and arrays."""
    query_ids, corpus_ids = list(task.queries), list(task.corpus)
    query_vectors = encode_inputs(
        model, [task.queries[i] for i in query_ids], task="query", batch_size=batch_size,
        on_progress=track("encoding queries", len(query_ids)),
    )  # fmt: skip
    corpus_vectors = encode_inputs(
        model, [task.corpus[i] for i in corpus_ids], task="document", batch_size=batch_size,
        on_progress=track("encoding corpus", len(corpus_ids)),
    )  # fmt: skip
    return query_ids, query_vectors, corpus_ids, corpus_vectors


def retrieve(
    query_ids, query_vectors, corpus_ids, corpus_vectors, *, k: int, similarity: str, track: Tracker = _no_progress
) -> dict[str, dict[str, float]]:
    """Top-``k`` documents per query as a run ``{qid: {docid: score}}``."""
    scores, indices = search(
        query_vectors, corpus_vectors, k, similarity=similarity, on_progress=track("searching", len(query_ids))
    )
    return {
        qid: {corpus_ids[index]: float(score) for score, index in zip(row_scores, row_indices)}
        for qid, row_scores, row_indices in zip(query_ids, scores, indices)
    }


def score_run(name: str, run, task: RetrievalTask, ks: tuple[int, ...]) -> StageResult:
    result = compute_metrics(run, task.qrels, ks=ks)
    counts = {
        "evaluated": result.num_queries,
        "skipped_no_relevant": result.num_skipped_no_relevant,
        "ignored_not_in_qrels": result.num_ignored_not_in_qrels,
        "missing_from_run": result.num_missing_from_run,
    }
    return StageResult(name, run, result.means, result.per_query, counts)


def evaluate_embedder(
    model,
    task: RetrievalTask,
    *,
    ks: tuple[int, ...] = (10,),
    dims: tuple[int, ...] = (),
    batch_size: int = 32,
    search_depth: int = 100,
    track: Tracker = _no_progress,
) -> list[StageResult]:
    """Retrieval results at full dimension, or at each of ``dims`` (a Matryoshka sweep).

    Args:
        model: A SentenceTransformer.
        task: The retrieval task.
        ks: Cut-offs for every metric.
        dims: Matryoshka dimensions to sweep; empty for the model's full dimension only.
        batch_size: Inputs per forward pass.
        search_depth: Documents retrieved per query (at least ``max(ks)``); rerankers read these.
        track: Progress tracker (see :func:`mmst_cli.core.progress.progress_bars`).
    """
    query_ids, query_vectors, corpus_ids, corpus_vectors = embed_task(model, task, batch_size=batch_size, track=track)
    full = query_vectors.shape[1]
    too_large = [dim for dim in dims if dim > full]
    if too_large:
        raise MmstError(f"--dims {too_large} exceed the model's embedding dimension {full}")
    similarity = _similarity(model)
    depth = max(max(ks), search_depth)
    results = []
    for dim in dims or (full,):
        run = retrieve(
            query_ids, query_vectors[:, :dim], corpus_ids, corpus_vectors[:, :dim],
            k=depth, similarity=similarity, track=track,
        )  # fmt: skip
        results.append(score_run(f"dim {dim}", run, task, ks))
    return results


def rerank(
    reranker,
    task: RetrievalTask,
    first_stage: dict[str, dict[str, float]],
    *,
    top_k: int,
    ks: tuple[int, ...],
    batch_size: int = 32,
    track: Tracker = _no_progress,
) -> StageResult:
    """Re-score each query's top ``top_k`` first-stage documents with a reranker (CrossEncoder)."""
    import torch

    pairs, keys = [], []
    for qid, ranked in first_stage.items():
        best = sorted(ranked.items(), key=lambda item: (-item[1], item[0]))[:top_k]
        for doc_id, _ in best:
            document = task.corpus[doc_id]
            if isinstance(document, PdfPage):  # rerankers read image files; rendered once, cached
                document = str(page_image_file(document))
            pairs.append((task.queries[qid], document))
            keys.append((qid, doc_id))
    advance = track("reranking", len(pairs))
    scores = []
    for start in range(0, len(pairs), 1024):
        chunk = pairs[start : start + 1024]
        # Raw scores: a sigmoid saturates to exactly 1.0 in float32 for confident pairs and makes ties.
        predicted = reranker.predict(
            chunk, batch_size=batch_size, activation_fn=torch.nn.Identity(), convert_to_numpy=True,
            show_progress_bar=False,
        )  # fmt: skip
        scores.extend(np.asarray(predicted, dtype=np.float32).reshape(len(chunk), -1)[:, 0].tolist())
        advance(len(chunk))
    run: dict[str, dict[str, float]] = {}
    for (qid, doc_id), score in zip(keys, scores):
        run.setdefault(qid, {})[doc_id] = float(score)
    return score_run(f"rerank top {top_k}", run, task, ks)


def _load_reranker(options: EvaluateOptions, task: RetrievalTask):
    """Load ``--reranker`` and make sure it reads every modality of the task's queries and documents.

    A text-only reranker handed image documents would score their file paths as text.
    """
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model

    source = locate_model(options.reranker)
    if source.kind != "reranker":
        raise MmstError(f"--reranker {options.reranker!r} is a {source.kind}, not a reranker")
    reranker = load_model(source, trust_remote_code=options.trust_remote_code)
    for side, values in (("queries", task.queries), ("documents", task.corpus)):
        unreadable = sorted(m for m in {modality_of(value) for value in values.values()} if not reranker.supports(m))
        if unreadable:
            raise MmstError(
                f"--reranker {options.reranker!r} cannot read {' or '.join(unreadable)} inputs, but the {side} of "
                f"{task.source!r} hold them; choose a reranker that takes them (`mmst detect MODEL` shows what a model takes)"
            )
    return reranker


@dataclass
class EvaluateOptions:
    """Every option of ``mmst evaluate`` (see :func:`run_evaluation`)."""

    model: str | None = None
    data: str | None = None
    split: str | None = None
    data_config: str | None = None
    columns: list[str] | None = None
    media_root: str | None = None
    skip_bad: bool = False
    allow_remote_media: bool = False
    allow_outside_root: bool = False
    strict: bool = False
    run: str | None = None
    qrels: str | None = None
    ks: tuple[int, ...] = (10,)
    dims: tuple[int, ...] = ()
    reranker: str | None = None
    rerank_top_k: int = 100
    batch_size: int = 32
    trust_remote_code: bool = False
    fail_under: tuple[str, ...] = ()
    pdf: RenderSettings = RenderSettings()
    pdf_text: bool = False

    def validate(self) -> None:
        if any(k <= 0 for k in self.ks):
            raise MmstError(f"--k must be positive, got {list(self.ks)}")
        if any(dim <= 0 for dim in self.dims):
            raise MmstError(f"--dims must be positive, got {list(self.dims)}")
        if self.batch_size <= 0 or self.rerank_top_k <= 0:
            raise MmstError("--batch-size and --rerank-top-k must be positive")
        if (self.run is None) != (self.qrels is None):
            raise MmstError("--run and --qrels go together: score an existing ranking against judgements")
        if self.run and (self.model or self.data or self.reranker or self.dims):
            raise MmstError("--run/--qrels score a ranking without a model; drop --model, --data, --reranker and --dims")
        parse_thresholds(self.fail_under, self.ks)


def parse_thresholds(values: tuple[str, ...], ks: tuple[int, ...]) -> dict[str, float]:
    """``("ndcg@10=0.85",)`` -> ``{"ndcg@10": 0.85}``; the metric must be one that is computed."""
    from mmst_cli.core.retrieval.metrics import METRIC_NAMES

    computed = [f"{name}@{k}" for name in METRIC_NAMES for k in ks]
    thresholds = {}
    for value in values:
        metric, separator, number = value.partition("=")
        metric = metric.strip().lower()
        try:
            thresholds[metric] = float(number)
        except ValueError:
            separator = ""
        if not separator:
            raise MmstError(f"--fail-under {value!r}: write METRIC=VALUE, e.g. ndcg@10=0.85")
        if metric not in computed:
            raise MmstError(f"--fail-under {metric}: not a computed metric; use one of {', '.join(computed)}")
        # nan would never fail (every comparison with it is false) and scores live in [0, 1].
        if not 0 <= thresholds[metric] <= 1:
            raise MmstError(f"--fail-under {value!r}: the threshold must be a number from 0 to 1")
    return thresholds


def check_thresholds(metrics: dict[str, float], thresholds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Compare metrics with ``--fail-under`` thresholds (validated by :func:`parse_thresholds`)."""
    return {
        metric: {"threshold": threshold, "value": metrics[metric], "passed": metrics[metric] >= threshold}
        for metric, threshold in thresholds.items()
    }


def run_evaluation(options: EvaluateOptions, *, track: Tracker = _no_progress) -> tuple[dict[str, Any], StageResult]:
    """The whole ``mmst evaluate`` job. Returns the JSON report and the main stage (for run files).

    The main stage is the reranked ranking with ``--reranker``, else retrieval at the full (or the
    largest swept) dimension. ``--fail-under`` applies to the main stage.
    """
    from mmst_cli.core.models.checkpoints import audio_sampling_rate
    from mmst_cli.core.models.composition import EMOJI_EVAL
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model
    from mmst_cli.core.retrieval.metrics import read_qrels, read_trec_run
    from mmst_cli.core.retrieval.tasks import (
        MediaOptions,
        load_retrieval_task,
        task_summary,
    )

    options.validate()
    thresholds = parse_thresholds(options.fail_under, options.ks)
    report: dict[str, Any] = {"ks": list(options.ks)}
    if options.run:
        task = RetrievalTask({}, {}, read_qrels(options.qrels), options.qrels)
        main = score_run("run", read_trec_run(options.run), task, options.ks)
        report.update(run=options.run, qrels=options.qrels, stages=[_stage_report(main)])
    else:
        source = locate_model(options.model)
        if source.kind != "embedder":
            raise MmstError(f"--model {source.reference!r} is a {source.kind}; evaluate retrieves with an embedder")
        model = load_model(source, trust_remote_code=options.trust_remote_code)
        media = MediaOptions(
            media_root=_path_or_none(options.media_root),
            audio_sampling_rate=audio_sampling_rate(model),
            skip_bad=options.skip_bad,
            allow_remote_media=options.allow_remote_media,
            allow_outside_root=options.allow_outside_root,
            pdf=options.pdf,
            pdf_text=options.pdf_text,
        )
        data = options.data or str(EMOJI_EVAL)
        task = load_retrieval_task(
            data, split=options.split, config=options.data_config, columns=options.columns,
            media=media, strict=options.strict,
        )  # fmt: skip
        reranker = _load_reranker(options, task) if options.reranker else None  # before the long encode
        stages = evaluate_embedder(
            model, task, ks=options.ks, dims=options.dims, batch_size=options.batch_size,
            search_depth=max(100, options.rerank_top_k), track=track,
        )  # fmt: skip
        main = stages[-1] if not options.dims else max(stages, key=lambda stage: int(stage.name.split()[1]))
        report.update(model=source.reference, data=data, similarity=_similarity(model), **task_summary(task))
        if options.dims:
            report["dims"] = [{"dim": int(stage.name.split()[1]), "metrics": stage.metrics} for stage in stages]
        report["warnings"] = task.warnings
        report["stages"] = [_stage_report(main)]
        if reranker is not None:
            main = rerank(
                reranker, task, main.run, top_k=options.rerank_top_k, ks=options.ks,
                batch_size=options.batch_size, track=track,
            )  # fmt: skip
            report["reranker"] = options.reranker
            report["stages"].append(_stage_report(main))
    report["metrics"] = main.metrics
    report["counts"] = main.counts
    report["fail_under"] = check_thresholds(main.metrics, thresholds)
    report["passed"] = all(check["passed"] for check in report["fail_under"].values())
    return report, main


def _stage_report(stage: StageResult) -> dict[str, Any]:
    return {"name": stage.name, "metrics": stage.metrics, "counts": stage.counts}


def _path_or_none(value: str | None):
    from pathlib import Path

    return Path(value).expanduser() if value else None


class RetrievalEvaluator(BaseEvaluator):
    """A Sentence Transformers evaluator over :func:`evaluate_embedder`.

    The trainer calls it before, during (``--eval-steps``) and after training, so train-embed
    reports exactly the numbers ``mmst evaluate`` gives for the same model and data.

    Args:
        task: The retrieval task to score.
        name: Prefix of the metric names the trainer logs.
        ks: Metric cut-offs. Default ``(10,)``.
        batch_size: Inputs per forward pass. Default 32.
    """

    def __init__(self, task: RetrievalTask, name: str = "eval", ks: tuple[int, ...] = (10,), batch_size: int = 32):
        super().__init__()
        self.task = task
        self.name = name
        self.ks = ks
        self.batch_size = batch_size
        self.primary_metric = MAIN_METRIC

    def scores(self, model) -> dict[str, float]:
        """The metrics without a name prefix."""
        return evaluate_embedder(model, self.task, ks=self.ks, batch_size=self.batch_size)[-1].metrics

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics = self.prefix_name_to_metrics(self.scores(model), self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
