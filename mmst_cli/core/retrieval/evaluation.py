"""Score an embedding model (and optionally a reranker) on a retrieval task, trec_eval-exact.

The corpus and the queries are each encoded once (grouped by modality, float32 scores); exact
top-k search runs in blocks (:mod:`mmst_cli.core.retrieval.search`); the ranking is scored with
:mod:`mmst_cli.core.retrieval.metrics`, whose numbers equal trec_eval's. A Matryoshka sweep re-scores the
same embeddings truncated to each dimension, so it costs one encoding.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from mmst_cli.core.data.documents import PdfPage, RenderSettings
from mmst_cli.core.data.media import page_image_file
from mmst_cli.core.encode.encoding import encode_inputs
from mmst_cli.core.errors import MmstError
from mmst_cli.core.progress import Tracker, no_progress
from mmst_cli.core.retrieval.metrics import METRIC_NAMES, Run, compute_metrics
from mmst_cli.core.retrieval.reranking import load_reranker_for, predict_pairs
from mmst_cli.core.encode.multi_vector import is_multi_vector, token_pooling
from mmst_cli.core.retrieval.maxsim import TokenCounts, maxsim_search
from mmst_cli.core.retrieval.search import model_similarity, search
from mmst_cli.core.retrieval.tasks import MAIN_METRIC, RetrievalTask

#: Cut-offs ``mmst evaluate`` reports by default: those mteb's retrieval results are read at.
DEFAULT_CUTOFFS = (1, 3, 5, 10, 100)

#: Documents retrieved (and written by ``--save-run``) per query by default, as mteb keeps.
DEFAULT_DEPTH = 1000
#: First-stage results a ``--reranker`` re-scores per query by default.
RERANK_TOP_K = 100


@dataclass
class StageResult:
    """The scored ranking of one stage: retrieval (at one dimension: ``dim``), or reranking."""

    name: str
    run: Run
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    counts: dict[str, int]
    dim: int | None = None


def embed_task(
    model,
    task: RetrievalTask,
    *,
    batch_size: int = 32,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    track: Tracker = no_progress,
):
    """Encode queries (as queries) and corpus (as documents); returns both id lists and arrays.

    ``query_prompt`` / ``document_prompt`` replace the model's own prompt for that side (as
    ``model.encode_query(..., prompt=...)`` does); ``None`` keeps the model's.
    """
    query_ids, corpus_ids = list(task.queries), list(task.corpus)
    query_vectors = encode_inputs(
        model, [task.queries[i] for i in query_ids], task="query", prompt=query_prompt, batch_size=batch_size,
        on_progress=track("encoding queries", len(query_ids)),
    )  # fmt: skip
    corpus_vectors = encode_inputs(
        model, [task.corpus[i] for i in corpus_ids], task="document", prompt=document_prompt, batch_size=batch_size,
        on_progress=track("encoding corpus", len(corpus_ids)),
    )  # fmt: skip
    return query_ids, query_vectors, corpus_ids, corpus_vectors


def resolve_prompt(model, side: str, text: str | None, name: str | None) -> str | None:
    """The prompt of one side: ``text`` as given, or the model's prompt called ``name``.

    Raises:
        MmstError: ``name`` is not one of the model's prompts (the message lists them).
    """
    if name is None:
        return text
    prompts = dict(getattr(model, "prompts", None) or {})
    if name not in prompts:
        known = f"its prompts are {', '.join(sorted(prompts))}" if prompts else "it has none"
        raise MmstError(f"--{side}-prompt-name {name!r}: the model has no prompt of that name; {known}")
    return prompts[name]


class SearchRun(Mapping[str, dict[str, float]]):
    """A search's ranking as a run ``{qid: {docid: score}}`` that keeps the search's arrays.

    A query's ``{docid: score}`` dict is built when it is read. As Python dicts, 10k queries x
    1000 documents would take about a gigabyte per stage; the arrays take 120 MB.
    """

    def __init__(self, query_ids: list[str], corpus_ids: list[str], scores: np.ndarray, indices: np.ndarray):
        self._rows = {qid: row for row, qid in enumerate(query_ids)}
        self._corpus_ids = corpus_ids
        self._scores = scores
        self._indices = indices

    def __getitem__(self, query_id: str) -> dict[str, float]:
        row = self._rows[query_id]
        documents = [self._corpus_ids[index] for index in self._indices[row].tolist()]
        return dict(zip(documents, self._scores[row].tolist()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def retrieve(
    query_ids, query_vectors, corpus_ids, corpus_vectors, *, k: int, similarity: str, track: Tracker = no_progress
) -> SearchRun:
    """Top-``k`` documents per query (all of them in a smaller corpus), as a run."""
    scores, indices = search(
        query_vectors, corpus_vectors, k, similarity=similarity, on_progress=track("searching", len(query_ids))
    )
    return SearchRun(list(query_ids), list(corpus_ids), scores, indices)


def score_run(
    name: str, run, task: RetrievalTask, ks: tuple[int, ...], *, skip_queries_without_relevant: bool = False,
    dim: int | None = None,
) -> StageResult:
    """Score one stage's ranking against the task's qrels (see :func:`compute_metrics`); ``dim``: the
    dimension a sweep ranked at."""
    result = compute_metrics(run, task.qrels, ks=ks, skip_queries_without_relevant=skip_queries_without_relevant)
    return StageResult(name, run, result.means, result.per_query, result.counts(), dim)


def evaluate_embedder(
    model,
    task: RetrievalTask,
    *,
    ks: tuple[int, ...] = (10,),
    dims: tuple[int, ...] = (),
    batch_size: int = 32,
    search_depth: int = DEFAULT_DEPTH,
    skip_queries_without_relevant: bool = False,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    track: Tracker = no_progress,
) -> list[StageResult]:
    """Retrieval results at full dimension, or at each of ``dims`` (a Matryoshka sweep).

    Args:
        model: A SentenceTransformer.
        task: The retrieval task.
        ks: Cut-offs for every metric.
        dims: Matryoshka dimensions to sweep; empty for the model's full dimension only.
        batch_size: Inputs per forward pass.
        search_depth: Documents retrieved per query (at least ``max(ks)`` are); rerankers and run
            files read these. Default :data:`DEFAULT_DEPTH`.
        skip_queries_without_relevant: Leave qrels queries without a relevant document out of
            the means (see :func:`compute_metrics`); default ``False``, trec_eval's rule.
        query_prompt / document_prompt: Prompts that replace the model's own (see :func:`embed_task`).
        track: Progress tracker (see :func:`mmst_cli.core.progress.progress_bars`).
    """
    query_ids, query_vectors, corpus_ids, corpus_vectors = embed_task(
        model, task, batch_size=batch_size, query_prompt=query_prompt, document_prompt=document_prompt, track=track
    )
    full = query_vectors.shape[1]
    too_large = [dim for dim in dims if dim > full]
    if too_large:
        raise MmstError(f"--dims {too_large} exceed the model's embedding dimension {full}")
    similarity = model_similarity(model)
    depth = max(max(ks), search_depth)
    results = []
    for dim in dims or (full,):
        run = retrieve(
            query_ids, query_vectors[:, :dim], corpus_ids, corpus_vectors[:, :dim],
            k=depth, similarity=similarity, track=track,
        )  # fmt: skip
        results.append(score_run(f"dim {dim}", run, task, ks, skip_queries_without_relevant=skip_queries_without_relevant, dim=dim))
    return results


def evaluate_multi_vector(
    model,
    task: RetrievalTask,
    *,
    ks: tuple[int, ...] = (10,),
    dims: tuple[int, ...] = (),
    batch_size: int = 32,
    search_depth: int = DEFAULT_DEPTH,
    skip_queries_without_relevant: bool = False,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    token_pool_factor: float | None = None,
    track: Tracker = no_progress,
) -> tuple[list[StageResult], TokenCounts]:
    """Retrieval results of a multi-vector model by exact MaxSim (:mod:`~mmst_cli.core.retrieval.maxsim`).

    Arguments as :func:`evaluate_embedder`'s (``dims`` truncates every token vector, encoded once);
    ``token_pool_factor`` pools document tokens (``None``: the model's own pooling, if any).
    Returns one stage per dimension (one, at full size, without ``dims``) and the token vectors taken.
    """
    query_ids, corpus_ids = list(task.queries), list(task.corpus)
    rankings, tokens = maxsim_search(
        model, [task.queries[i] for i in query_ids], [task.corpus[i] for i in corpus_ids],
        max(max(ks), search_depth), dims=dims or (None,), batch_size=batch_size, query_prompt=query_prompt,
        document_prompt=document_prompt, pooling=token_pooling(token_pool_factor), track=track,
    )  # fmt: skip
    name = "maxsim" if token_pool_factor is None else f"maxsim, token pool factor {token_pool_factor:g}"
    stages = [
        score_run(
            name if dim is None else f"{name}, dim {dim}", SearchRun(query_ids, corpus_ids, scores, indices), task, ks,
            skip_queries_without_relevant=skip_queries_without_relevant, dim=dim,
        )  # fmt: skip
        for dim, (scores, indices) in zip(dims or (None,), rankings)
    ]
    return stages, tokens


def rerank(
    reranker,
    task: RetrievalTask,
    first_stage: Run,
    *,
    top_k: int,
    ks: tuple[int, ...],
    batch_size: int = 32,
    skip_queries_without_relevant: bool = False,
    track: Tracker = no_progress,
) -> StageResult:
    """Re-score each query's top ``top_k`` first-stage documents with a reranker (CrossEncoder)."""
    pairs, keys = [], []
    for qid, ranked in first_stage.items():
        best = sorted(ranked.items(), key=lambda item: (-item[1], item[0]))[:top_k]
        for doc_id, _ in best:
            document = task.corpus[doc_id]
            if isinstance(document, PdfPage):  # rerankers read image files; rendered once, cached
                document = str(page_image_file(document))
            pairs.append((task.queries[qid], document))
            keys.append((qid, doc_id))
    scores = predict_pairs(reranker, pairs, batch_size=batch_size, track=track)
    run: dict[str, dict[str, float]] = {}
    for (qid, doc_id), score in zip(keys, scores):
        run.setdefault(qid, {})[doc_id] = float(score)
    return score_run(
        f"rerank top {top_k}", run, task, ks, skip_queries_without_relevant=skip_queries_without_relevant
    )


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
    ks: tuple[int, ...] = DEFAULT_CUTOFFS
    main_metric: str | None = None
    skip_queries_without_relevant: bool = False
    dims: tuple[int, ...] = ()
    reranker: str | None = None
    rerank_top_k: int | None = None  # refused without a reranker
    depth: int | None = None  # DEFAULT_DEPTH; refused with a run, which is scored as retrieved
    query_prompt: str | None = None
    document_prompt: str | None = None
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    batch_size: int = 32
    trust_remote_code: bool = False
    fail_under: tuple[str, ...] = ()
    mteb_results: str | None = None
    model_name: str | None = None
    task_name: str | None = None
    task_languages: tuple[str, ...] = ("eng-Latn",)
    pdf: RenderSettings = RenderSettings()
    pdf_text: bool = False
    #: A train-embed run folder whose evaluation data is scored instead of ``data`` (``--eval-of``).
    eval_of: str | None = None
    #: Pool a multi-vector model's document tokens by this factor (``--token-pool-factor``).
    token_pool_factor: float | None = None

    @property
    def search_depth(self) -> int:
        """Documents the model's search retrieves per query: ``--depth``, else :data:`DEFAULT_DEPTH`."""
        return DEFAULT_DEPTH if self.depth is None else self.depth

    @property
    def top_k_reranked(self) -> int:
        """First-stage results the reranker re-scores: ``--rerank-top-k``, else :data:`RERANK_TOP_K`."""
        return RERANK_TOP_K if self.rerank_top_k is None else self.rerank_top_k

    def validate(self) -> None:
        if not self.ks:
            raise MmstError("--k is empty; give at least one cut-off, e.g. --k 10")
        if any(k <= 0 for k in self.ks):
            raise MmstError(f"--k must be positive, got {list(self.ks)}")
        if any(dim <= 0 for dim in self.dims):
            raise MmstError(f"--dims must be positive, got {list(self.dims)}")
        if self.rerank_top_k is not None and not self.reranker:
            raise MmstError("--rerank-top-k sets how many results --reranker re-scores; add --reranker or drop it")
        if self.run and self.depth is not None:
            raise MmstError("--depth sets how many documents --model's search retrieves; a --run is scored as it was "
                            "retrieved; drop --depth")  # fmt: skip
        depth = self.search_depth
        if self.batch_size <= 0 or self.top_k_reranked <= 0 or depth <= 0:
            raise MmstError("--batch-size, --rerank-top-k and --depth must be positive")
        if self.reranker and self.top_k_reranked > depth:
            raise MmstError(f"--rerank-top-k {self.top_k_reranked} exceeds --depth {depth}: the reranker reads the retrieved documents; raise --depth")
        if not self.run and max(self.ks) > depth:
            raise MmstError(
                f"--k {max(self.ks)} exceeds --depth {depth}: metrics at k would see only {depth} "
                "retrieved documents; raise --depth or lower --k"
            )
        for side in ("query", "document"):
            if getattr(self, f"{side}_prompt") is not None and getattr(self, f"{side}_prompt_name") is not None:
                raise MmstError(f"--{side}-prompt and --{side}-prompt-name both set the {side} prompt; give one")
        if (self.run is None) != (self.qrels is None):
            raise MmstError("--run and --qrels go together: score an existing ranking against judgements")
        if self.run and (self.model or self.data or self.reranker or self.dims):
            raise MmstError("--run/--qrels score a ranking without a model; drop --model, --data, --reranker and --dims")
        if self.run and self.mteb_results:
            raise MmstError("--mteb-results writes a model's scores; it needs --model, not --run/--qrels")
        if self.task_name is not None and (not self.task_name.strip() or "/" in self.task_name):
            raise MmstError(f"--task-name {self.task_name!r} names a file: give a non-empty name without '/'")
        if self.model_name is not None and not self.model_name.strip():
            raise MmstError("--model-name is empty; give the name results should be filed under, e.g. my-org/my-model")
        if not self.task_languages:
            raise MmstError("--task-languages is empty; give at least one code, e.g. eng-Latn")
        for language in self.task_languages:
            if not re.fullmatch(r"[a-z]{3}-[A-Z][a-z]{3}", language):
                raise MmstError(f"--task-languages {language!r}: write ISO 639-3 language and ISO 15924 script, e.g. eng-Latn")
        prompts = (self.query_prompt, self.document_prompt, self.query_prompt_name, self.document_prompt_name)
        if self.run and any(prompt is not None for prompt in prompts):
            raise MmstError("--run/--qrels score a ranking without a model; the prompt options need --model")
        if self.token_pool_factor is not None and (self.run or self.token_pool_factor < 1):
            raise MmstError("--token-pool-factor pools a multi-vector model's document tokens: give a factor of at least 1 and --model")
        if self.eval_of and (self.data or self.run):
            raise MmstError("--eval-of scores a run's own evaluation data; drop --data (and --run/--qrels)")
        parse_thresholds(self.fail_under, self.ks)
        self.main_metric_name()

    def main_metric_name(self) -> str:
        """``--main-metric``, checked against the computed metrics; by default ndcg@10, or NDCG at
        the cut-off nearest 10 when 10 is not one of them."""
        if self.main_metric is None:
            return f"ndcg@{min(self.ks, key=lambda k: (abs(k - 10), k))}"
        name = self.main_metric.strip().lower()
        if name not in computed_metrics(self.ks):
            raise MmstError(
                f"--main-metric {self.main_metric}: not a computed metric; use one of {', '.join(computed_metrics(self.ks))}"
            )
        return name


def computed_metrics(ks: tuple[int, ...]) -> list[str]:
    """Every ``metric@k`` key an evaluation at cut-offs ``ks`` reports."""
    return [f"{name}@{k}" for name in METRIC_NAMES for k in sorted(set(ks))]


def parse_thresholds(values: tuple[str, ...], ks: tuple[int, ...]) -> dict[str, float]:
    """``("ndcg@10=0.85",)`` -> ``{"ndcg@10": 0.85}``; the metric must be one that is computed."""
    computed = computed_metrics(ks)
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


def run_evaluation(options: EvaluateOptions, *, track: Tracker = no_progress) -> tuple[dict[str, Any], StageResult, RetrievalTask]:
    """The whole ``mmst evaluate`` job. Returns the JSON report, the main stage and the task (for result files).

    The main stage is the reranked ranking with ``--reranker``, else retrieval at the full (or the
    largest swept) dimension. ``--fail-under`` applies to the main stage.
    """
    from mmst_cli.core.models.checkpoints import audio_sampling_rate
    from mmst_cli.core.models.composition import EMOJI_EVAL
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model
    from mmst_cli.core.retrieval.metrics import read_trec_run, unmatched_run_ids
    from mmst_cli.core.retrieval.run_eval_data import run_eval_task
    from mmst_cli.core.retrieval.tasks import MediaOptions, judgements_task, load_retrieval_task, task_summary

    options.validate()
    thresholds = parse_thresholds(options.fail_under, options.ks)
    report: dict[str, Any] = {"ks": list(options.ks)}
    if options.run:
        task, run = judgements_task(options.qrels, options.split), read_trec_run(options.run, "--run")
        main = score_run("run", run, task, options.ks, skip_queries_without_relevant=options.skip_queries_without_relevant)
        report.update(run=options.run, qrels=options.qrels, stages=[_stage_report(main)])
        report["warnings"] = unmatched_run_ids(run, task.qrels)
    else:
        source = locate_model(options.model)
        if source.kind not in ("embedder", "multi-vector"):
            raise MmstError(f"--model {source.reference!r} is a {source.kind}; evaluate retrieves with an embedder or a multi-vector model")
        multi_vector = source.kind == "multi-vector"
        if not multi_vector and options.token_pool_factor is not None:
            raise MmstError(f"--token-pool-factor pools token vectors, but --model {source.reference!r} gives one vector per input; drop it")
        model = load_model(source, trust_remote_code=options.trust_remote_code)
        started = time.perf_counter()
        query_prompt = resolve_prompt(model, "query", options.query_prompt, options.query_prompt_name)
        document_prompt = resolve_prompt(model, "document", options.document_prompt, options.document_prompt_name)
        media = MediaOptions(
            media_root=_path_or_none(options.media_root),
            audio_sampling_rate=audio_sampling_rate(model),
            skip_bad=options.skip_bad,
            allow_remote_media=options.allow_remote_media,
            allow_outside_root=options.allow_outside_root,
            pdf=options.pdf,
            pdf_text=options.pdf_text,
        )
        if options.eval_of:
            task = run_eval_task(options.eval_of, media.audio_sampling_rate)
            data = task.source
        else:
            data = options.data or str(EMOJI_EVAL)
            task = load_retrieval_task(
                data, split=options.split, config=options.data_config, columns=options.columns,
                media=media, strict=options.strict,
            )  # fmt: skip
        beyond_corpus = [k for k in options.ks if k > len(task.corpus)]
        if beyond_corpus:
            at = ", ".join(f"@{k}" for k in beyond_corpus)
            task.warnings.append(
                f"the corpus holds {len(task.corpus)} documents, fewer than the cut-off(s) {at}: every document is "
                f"retrieved there, so recall and accuracy {at} are 1.0 for any model; use a smaller --k or a larger corpus"
            )
        reranker = (  # before the long encode
            load_reranker_for(
                options.reranker, {"queries": task.queries.values(), "documents": task.corpus.values()}, task.source,
                trust_remote_code=options.trust_remote_code,
            )  # fmt: skip
            if options.reranker
            else None
        )
        if multi_vector:
            stages, tokens = evaluate_multi_vector(
                model, task, ks=options.ks, dims=options.dims, batch_size=options.batch_size, search_depth=options.search_depth,
                skip_queries_without_relevant=options.skip_queries_without_relevant, query_prompt=query_prompt,
                document_prompt=document_prompt, token_pool_factor=options.token_pool_factor, track=track,
            )  # fmt: skip
            report["token_vectors"] = tokens.report()
        else:
            stages = evaluate_embedder(
                model, task, ks=options.ks, dims=options.dims, batch_size=options.batch_size,
                search_depth=options.search_depth,
                skip_queries_without_relevant=options.skip_queries_without_relevant,
                query_prompt=query_prompt, document_prompt=document_prompt, track=track,
            )  # fmt: skip
        main = max(stages, key=lambda stage: stage.dim or 0)  # the full (or the largest swept) dimension
        report.update(model=source.reference, data=data, similarity=model_similarity(model), **task_summary(task))
        report["prompts"] = {"query": query_prompt, "document": document_prompt}
        if options.dims:
            report["dims"] = [{"dim": stage.dim, "metrics": stage.metrics} for stage in stages]
        report["warnings"] = task.warnings
        report["stages"] = [_stage_report(main)]
        if reranker is not None:
            main = rerank(
                reranker, task, main.run, top_k=options.top_k_reranked, ks=options.ks,
                batch_size=options.batch_size,
                skip_queries_without_relevant=options.skip_queries_without_relevant, track=track,
            )  # fmt: skip
            report["reranker"] = options.reranker
            report["stages"].append(_stage_report(main))
    report["main_metric"] = options.main_metric_name()
    report["main_score"] = main.metrics[report["main_metric"]]
    report["metrics"] = main.metrics
    report["counts"] = main.counts
    report["queries_without_relevant"] = "left out" if options.skip_queries_without_relevant else "scored 0"
    report["fail_under"] = check_thresholds(main.metrics, thresholds)
    report["passed"] = all(check["passed"] for check in report["fail_under"].values())
    if options.mteb_results:
        from mmst_cli.core.retrieval.reports import write_model_mteb_results

        report["mteb_results"] = str(write_model_mteb_results(
            Path(options.mteb_results).expanduser(), model, source, report, task.qrels,
            model_name=options.model_name, task_name=options.task_name, split=options.split or "test",
            languages=list(options.task_languages), seconds=time.perf_counter() - started,
        ))  # fmt: skip
    return report, main, task


def _stage_report(stage: StageResult) -> dict[str, Any]:
    return {"name": stage.name, "metrics": stage.metrics, "counts": stage.counts}


def _path_or_none(value: str | None):
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
        # The metrics read only the top max(ks) documents; a deeper search would only cost memory.
        if is_multi_vector(model):
            stages, _ = evaluate_multi_vector(model, self.task, ks=self.ks, batch_size=self.batch_size, search_depth=max(self.ks))
            return stages[-1].metrics
        stages = evaluate_embedder(model, self.task, ks=self.ks, batch_size=self.batch_size, search_depth=max(self.ks))
        return stages[-1].metrics

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics = self.prefix_name_to_metrics(self.scores(model), self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
