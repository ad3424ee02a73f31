"""``mmst evaluate --report``: the results page of an evaluation (:mod:`mmst_cli.core.report.page`).

Each shown query lists the top k documents of the main stage (the reranked ranking with
``--reranker``), where k is the cut-off of the main metric (10 for ndcg@10), marked relevant or not
by the qrels, and then the relevant documents outside the top k with their rank. Queries are
ordered by the main metric, worst first; only the shown queries are ranked, so a large evaluation
costs no more than its page.

A scored run file (``--run/--qrels``) has no queries or corpus: queries show their ids, and a
document id that names a media file or PDF page (``pages/3.png``, ``report.pdf#page=3``) under the
media folder (``--media-root``, else the run file's folder) is previewed; other ids stand alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mmst_cli.core.data.media import string_modality
from mmst_cli.core.data.tables import media_folder
from mmst_cli.core.report.page import ReportHit, ReportQuery, ResultsPage, worst_first, write_results_page
from mmst_cli.core.report.thumbnails import MediaAccess
from mmst_cli.core.retrieval.evaluation import EvaluateOptions, StageResult
from mmst_cli.core.retrieval.metrics import RELEVANCE_LEVEL, rank_documents
from mmst_cli.core.retrieval.reports import stage_metrics
from mmst_cli.core.retrieval.tasks import RetrievalTask


def write_evaluation_page(
    path: Path, report: dict[str, Any], main: StageResult, task: RetrievalTask, options: EvaluateOptions, *, max_queries: int
) -> dict[str, int]:
    """Write the results page of ``mmst evaluate`` (see the module docstring).

    Args:
        path: The HTML file to write.
        report: The evaluation's JSON report (:func:`mmst_cli.core.retrieval.evaluation.run_evaluation`).
        main: Its main stage: the ranking and the per-query metrics.
        task: Its task: queries, corpus (both empty for a scored run file) and qrels.
        options: The evaluation's options: where media resolve (``--media-root``, the data or run
            file's folder), whether they may leave it (``--allow-outside-root``), the PDF password.
        max_queries: Most queries drawn.

    Returns:
        What :func:`~mmst_cli.core.report.page.write_results_page` returns.
    """
    metric = report["main_metric"]
    k = int(metric.split("@")[1])
    every = [ReportQuery(qid, task.queries.get(qid), metric=values[metric]) for qid, values in main.per_query.items()]
    shown = [_with_hits(query, main, task, k) for query in worst_first(every)[:max_queries]]
    source, data = (report["model"], report["data"]) if "model" in report else (report["run"], report["qrels"])
    settings = {
        "model" if "model" in report else "run": source,
        "data" if "model" in report else "qrels": data,
        "reranker": report.get("reranker"),
        "similarity": report.get("similarity"),
        "corpus": f"{report['documents']} documents, {report['queries']} queries" if "documents" in report else None,
        "queries scored": report["counts"]["evaluated"],
        "main score": f"{metric} {report['main_score']:.4f}",
        "shown per query": f"top {k} of {main.name} (the cut-off of {metric}); relevant ones marked",
    }
    page = ResultsPage(
        title=f"mmst evaluate: {source} on {data}",
        queries=shown,
        settings=settings,
        metric_tables=stage_metrics(report),
        metric_name=metric,
        sweep=[(entry["dim"], entry["metrics"][metric]) for entry in report.get("dims", [])],
        max_queries=max_queries,
        total_queries=len(every),
    )
    root = media_folder(options.run or task.source, Path(options.media_root).expanduser() if options.media_root else None)
    access = MediaAccess(root, None if options.allow_outside_root else root, options.pdf.password)
    return write_results_page(path, page, access)


def _with_hits(query: ReportQuery, main: StageResult, task: RetrievalTask, k: int) -> ReportQuery:
    """``query`` with its top ``k`` documents and the relevant ones below them."""
    judgements = task.qrels.get(query.query_id, {})
    ranking = rank_documents(main.run.get(query.query_id) or {})
    ranks = {doc_id: rank for rank, (doc_id, _) in enumerate(ranking, start=1)}
    scores = dict(ranking)

    def hit(doc_id: str) -> ReportHit:
        relevant = judgements.get(doc_id, 0) >= RELEVANCE_LEVEL
        return ReportHit(doc_id, scores.get(doc_id), _document(task, doc_id), relevant, ranks.get(doc_id))

    hits = [hit(doc_id) for doc_id, _ in ranking[:k]]
    shown = {item.doc_id for item in hits}
    missed = [doc_id for doc_id, level in judgements.items() if level >= RELEVANCE_LEVEL and doc_id not in shown]
    missed.sort(key=lambda doc_id: (ranks.get(doc_id, len(ranks) + 1), doc_id))
    return replace(query, hits=hits, missed=[hit(doc_id) for doc_id in missed])


def _document(task: RetrievalTask, doc_id: str) -> Any:
    """What a document shows: its content, or for a run file its id when the id names media."""
    if task.corpus:
        return task.corpus.get(doc_id)
    return doc_id if string_modality(doc_id)[1] in ("file", "pdf") else None
