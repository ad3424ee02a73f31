"""Retrieval metrics whose numbers equal trec_eval's, and TREC run / qrels files.

Data types
    A *run* is ``{query_id: {doc_id: score}}`` and *qrels* are ``{query_id: {doc_id: relevance}}``
    with integer, graded relevance. As in trec_eval (``-l 1``, its default), a document is
    relevant when its relevance is >= 1; 0 and negative values are non-relevant, and a retrieved
    document missing from the qrels is non-relevant too.

Ranking rule (trec_eval's ``comp_sim_docno`` in ``form_res_rels.c``)
    Documents are sorted by score descending (scores converted to Python float, i.e. float64),
    and equal scores are broken by document id *descending* (trec_eval's ``strcmp``; Python
    compares str by code point, which orders like ``strcmp`` on their UTF-8 bytes). The rank
    column of a run file is ignored, as trec_eval ignores it. trec_eval has held scores as double
    since 2023 (version 10.0); the trec_eval 9.0.x bundled in pytrec_eval-terrier 0.5.x holds
    them as float32, so two scores that differ only beyond float32 precision tie there but not
    here.

Metrics (``name@k``; each equals the trec_eval measure named after it)
    ``ndcg@k``      ``ndcg_cut_k``: gain = relevance level (> 0), discount ``log2(rank + 1)``,
                    ideal DCG from the query's qrels sorted by relevance, both cut at k.
    ``mrr@k``       ``recip_rank`` of the run cut to its top k: 1 / rank of the first relevant
                    document within the top k, else 0 (trec_eval's ``recip_rank`` has no cut).
    ``recall@k``    ``recall_k``: relevant documents in the top k / relevant documents in qrels.
    ``precision@k`` ``P_k``: relevant documents in the top k / k, even if fewer were retrieved.
    ``map@k``       ``map_cut_k``: sum of precision at the rank of each relevant document in the
                    top k, divided by *all* relevant documents in qrels (not by ``min(k, R)``).
    ``accuracy@k``  ``success_k``: 1 if any relevant document is in the top k, else 0.

Which queries count (trec_eval ``-c``, the default)
    Every query of the qrels counts once in the mean of every metric: a query whose judgements
    are all non-relevant scores 0 on every metric, and so does a query the run retrieved nothing
    for. That is ``trec_eval -c``, and the mean mteb and BEIR's evaluation report: they average
    pytrec_eval's per-query values, which hold such queries at 0, and they retrieve for every
    query, so none is missing from their runs. Numbers therefore compare with the leaderboards
    built on those tools. Run queries absent from the qrels cannot be judged and are ignored.
    Without ``-c``, trec_eval 9 (and pytrec_eval's per-query output) covers only the queries
    present in both files, so a system that returns nothing for its hardest queries would look
    better; trec_eval 10 stops with an error instead.

    ``skip_queries_without_relevant=True`` keeps the older rule: qrels queries without any
    relevant document leave the mean (no system can score on them) and are only counted. Every
    count is reported either way (:class:`MetricResult`).
"""

from __future__ import annotations

import heapq
import math
import operator
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmst_cli.core.errors import EXIT_FAILURE, MmstError
from mmst_cli.core.outputs import atomic_path

Run = Mapping[str, Mapping[str, float]]
Qrels = dict[str, dict[str, int]]

#: Metrics :func:`compute_metrics` knows, in the order their keys are reported.
METRIC_NAMES = ("ndcg", "mrr", "recall", "precision", "map", "accuracy")

#: Lowest relevance that makes a document relevant (trec_eval's ``-l``, default 1).
RELEVANCE_LEVEL = 1

_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class MetricResult:
    """Metric values of one run against one set of qrels.

    Attributes:
        means: ``"ndcg@10"``-style key -> mean over the evaluated queries.
        per_query: Query id -> the same keys for that query; holds exactly the evaluated queries
            (those the run missed at 0), in query-id order as ``trec_eval -q`` lists them.
        num_queries: Queries evaluated: the denominator of every mean.
        num_without_relevant: Qrels queries without any relevant document: evaluated at 0 by
            default, left out with ``skip_queries_without_relevant``.
        num_missing_from_run: Evaluated queries the run retrieved nothing for (scored 0).
        num_ignored_not_in_qrels: Run queries absent from the qrels (not evaluated).
    """

    means: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int
    num_without_relevant: int
    num_missing_from_run: int
    num_ignored_not_in_qrels: int

    def counts(self) -> dict[str, int]:
        """The query counts as reports name them."""
        return {
            "evaluated": self.num_queries,
            "without_relevant": self.num_without_relevant,
            "missing_from_run": self.num_missing_from_run,
            "ignored_not_in_qrels": self.num_ignored_not_in_qrels,
        }


def rank_documents(doc_scores: Mapping[str, float], depth: int | None = None) -> list[tuple[str, float]]:
    """Documents of one query in trec_eval's order (see the module docstring).

    Args:
        doc_scores: Document id -> score.
        depth: Keep only the first ``depth`` documents; ``None`` (the default) keeps all.

    Returns:
        ``(doc_id, score)`` pairs, best first, scores as float.

    Raises:
        MmstError: A score is NaN, which has no place in an order.
    """
    keyed = [(float(score), doc_id) for doc_id, score in doc_scores.items()]
    for score, doc_id in keyed:
        if math.isnan(score):
            raise MmstError(f"document {doc_id!r} has a NaN score, which cannot be ranked")
    # Document ids are unique within a query, so (score, doc_id) is a total order and the
    # descending sort needs no stable-sort subtleties: it is exactly trec_eval's qsort order.
    ordered = sorted(keyed, reverse=True) if depth is None else heapq.nlargest(depth, keyed)
    return [(doc_id, score) for score, doc_id in ordered]


def compute_metrics(
    run: Run,
    qrels: Qrels,
    ks: Iterable[int] | int = (10,),
    metrics: Iterable[str] | str = METRIC_NAMES,
    *,
    skip_queries_without_relevant: bool = False,
) -> MetricResult:
    """Score ``run`` against ``qrels`` exactly as ``trec_eval -c`` would (see the module docstring).

    Args:
        run: Query id -> document id -> score (any mapping; a query's documents are read once).
        qrels: Query id -> document id -> integer relevance.
        ks: Cut-offs, each a positive integer (or one integer); duplicates are ignored.
            Default ``(10,)``.
        metrics: Names from :data:`METRIC_NAMES` (or one name); default all of them.
        skip_queries_without_relevant: Leave qrels queries without a relevant document out of
            the mean instead of scoring them 0 (the rule before trec_eval's). Default ``False``.

    Returns:
        A :class:`MetricResult` whose keys are ``f"{metric}@{k}"``, metric-major, k ascending.

    Raises:
        MmstError: An unknown metric, a bad cut-off, a NaN score, a non-integer relevance, or
            qrels without a single relevant document (a mean of zeros would only hide a wrong
            qrels file).
    """
    metric_names = _check_metrics(metrics)
    cutoffs = _check_cutoffs(ks)
    keys = [f"{metric}@{k}" for metric in metric_names for k in cutoffs]

    per_query: dict[str, dict[str, float]] = {}
    num_without_relevant = num_missing = 0
    for query_id in sorted(qrels):
        judgements = {doc_id: _relevance(query_id, doc_id, rel) for doc_id, rel in qrels[query_id].items()}
        has_relevant = any(rel >= RELEVANCE_LEVEL for rel in judgements.values())
        num_without_relevant += not has_relevant
        if not has_relevant and skip_queries_without_relevant:
            continue
        retrieved = run.get(query_id) or {}
        num_missing += not retrieved
        if has_relevant:
            values = _query_metrics(retrieved, judgements, cutoffs)
            per_query[query_id] = {f"{metric}@{k}": values[metric][k] for metric in metric_names for k in cutoffs}
        else:  # nothing to find: trec_eval scores every measure 0
            per_query[query_id] = dict.fromkeys(keys, 0.0)

    if num_without_relevant == len(qrels):
        raise MmstError(
            f"no query in the qrels has a relevant document (relevance >= {RELEVANCE_LEVEL}), "
            "so there is nothing to average; check that the qrels file is the right one"
        )
    means = {key: math.fsum(scores[key] for scores in per_query.values()) / len(per_query) for key in keys}
    return MetricResult(
        means=means,
        per_query=per_query,
        num_queries=len(per_query),
        num_without_relevant=num_without_relevant,
        num_missing_from_run=num_missing,
        num_ignored_not_in_qrels=sum(query_id not in qrels for query_id in run),
    )


def _check_metrics(metrics: Iterable[str] | str) -> list[str]:
    names = list(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names:
        problem = f"unknown metric {', '.join(unknown)}" if unknown else "no metric asked for"
        raise MmstError(f"{problem}; choose from {', '.join(METRIC_NAMES)}")
    return names


def _check_cutoffs(ks: Iterable[int] | int) -> list[int]:
    cutoffs = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not cutoffs or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in cutoffs):
        raise MmstError(f"cut-offs must be positive integers, got {cutoffs}")
    return sorted({int(k) for k in cutoffs})


def _relevance(query_id: str, doc_id: str, value: object) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise MmstError(
            f"relevance of document {doc_id!r} for query {query_id!r} must be an integer, got {value!r}"
        ) from None


def _query_metrics(
    retrieved: Mapping[str, float], judgements: dict[str, int], cutoffs: list[int]
) -> dict[str, dict[int, float]]:
    """Every metric at every cut-off for one query with at least one relevant document."""
    ranking = rank_documents(retrieved, depth=cutoffs[-1])
    # Documents absent from the qrels count as relevance 0, as trec_eval's "not in pool".
    relevance = np.array([judgements.get(doc_id, 0) for doc_id, _ in ranking], dtype=np.int64)
    ranks = np.arange(1, len(relevance) + 1)
    is_relevant = relevance >= RELEVANCE_LEVEL
    hits = np.cumsum(is_relevant)  # relevant documents at or above each rank
    precision_sums = np.cumsum(np.where(is_relevant, hits / ranks, 0.0))
    # The gain is the relevance level itself; 0 and negative levels gain nothing.
    dcg = np.cumsum(np.where(relevance > 0, relevance, 0) / np.log2(ranks + 1))
    ideal_gains = np.array(sorted((rel for rel in judgements.values() if rel > 0), reverse=True), dtype=np.float64)
    ideal_dcg = np.cumsum(ideal_gains / np.log2(np.arange(2, len(ideal_gains) + 2)))
    num_relevant = sum(rel >= RELEVANCE_LEVEL for rel in judgements.values())
    first_relevant = int(np.argmax(is_relevant)) + 1 if is_relevant.any() else None

    values: dict[str, dict[int, float]] = {metric: {} for metric in METRIC_NAMES}
    for k in cutoffs:
        # Past the end of the ranking nothing more is retrieved: take the value at its last rank.
        last = min(k, len(ranking)) - 1
        hits_at_k = int(hits[last]) if last >= 0 else 0
        values["ndcg"][k] = float(dcg[last] / ideal_dcg[min(k, len(ideal_dcg)) - 1]) if last >= 0 else 0.0
        values["mrr"][k] = 1.0 / first_relevant if first_relevant is not None and first_relevant <= k else 0.0
        values["recall"][k] = hits_at_k / num_relevant
        values["precision"][k] = hits_at_k / k
        values["map"][k] = float(precision_sums[last]) / num_relevant if last >= 0 else 0.0
        values["accuracy"][k] = 1.0 if hits_at_k else 0.0
    return values


# ---------------------------------------------------------------------------------------------
# TREC files


def read_trec_run(path: str | os.PathLike, flag: str = "") -> dict[str, dict[str, float]]:
    """Read a TREC run file: one ``qid Q0 docid rank score tag`` line per retrieved document.

    Columns are separated by whitespace; blank lines are skipped. The ``Q0``, ``rank`` and
    ``tag`` columns are checked for presence (and ``rank`` for being an integer, which catches
    shifted columns) but not used: the ranking comes from the scores, as in trec_eval.

    Args:
        path: The run file.
        flag: The option that named it (``--run``), put before the file in messages; default none.

    Returns:
        Query id -> document id -> score.

    Raises:
        MmstError: The file cannot be read, a line does not have six columns, the rank is not an
            integer, the score is not a number or is NaN, or a document is listed twice for one
            query. Messages give ``file:line``.
    """
    run: dict[str, dict[str, float]] = {}
    for where, fields in _data_lines(path, flag):
        if len(fields) != 6:
            raise MmstError(
                f"{where}: expected 6 columns 'qid Q0 docid rank score tag', found {len(fields)}"
            )
        query_id, _, doc_id, rank, score_text, _ = fields
        if not _INTEGER.fullmatch(rank):
            raise MmstError(f"{where}: rank {rank!r} is not an integer (column 4 of 'qid Q0 docid rank score tag')")
        try:
            score = float(score_text)
        except ValueError:
            raise MmstError(f"{where}: score {score_text!r} is not a number (column 5)") from None
        if math.isnan(score):
            raise MmstError(f"{where}: score is NaN, which cannot be ranked")
        documents = run.setdefault(query_id, {})
        if doc_id in documents:
            raise MmstError(f"{where}: document {doc_id!r} is listed twice for query {query_id!r}")
        documents[doc_id] = score
    return run


def write_trec_run(run: Run, path: str | os.PathLike, tag: str = "mmst") -> None:
    """Write ``run`` as a TREC run file, ranks in trec_eval's order, atomically.

    The file appears complete or not at all: it is written under a temporary name in the same
    folder and renamed over ``path`` (:func:`mmst_cli.core.outputs.atomic_path`). Scores are written with ``repr`` so that reading the file
    back gives the same floats, and therefore the same ranking and ties.

    Args:
        run: Query id -> document id -> score; queries are written in the run's order.
        path: Destination file; its folder must exist.
        tag: The run name of the last column (default ``"mmst"``).

    Raises:
        MmstError: An id or the tag is empty or contains whitespace (it would shift columns),
            or the file cannot be written.
    """
    _check_token("run tag", tag)
    lines = []
    for query_id, doc_scores in run.items():
        _check_token("query id", query_id)
        for rank, (doc_id, score) in enumerate(rank_documents(doc_scores), start=1):
            _check_token("document id", doc_id)
            lines.append(f"{query_id} Q0 {doc_id} {rank} {score!r} {tag}\n")

    destination = Path(path)
    try:
        with atomic_path(destination) as temporary:
            temporary.write_text("".join(lines), encoding="utf8")
    except OSError as error:
        raise MmstError(f"cannot write run file {destination}: {error.strerror or error}", EXIT_FAILURE) from None


def read_qrels(path: str | os.PathLike, flag: str = "") -> Qrels:
    """Read relevance judgements in TREC or BEIR/mteb format; the format is told by column count.

    * TREC qrels: ``qid iteration docid relevance`` (4 columns; the iteration is ignored).
    * BEIR / mteb: ``query-id<TAB>corpus-id<TAB>score`` (3 columns). Its first line is a header
      and is skipped when its third column is not an integer, so a file without the header loses
      no judgement.

    Columns are separated by whitespace; blank lines are skipped.

    Args:
        path: The qrels file.
        flag: The option that named it (``--qrels``), put before the file in messages; default none.

    Returns:
        Query id -> document id -> integer relevance.

    Raises:
        MmstError: The file cannot be read or holds no judgement, a line has the wrong number
            of columns, a relevance is not an integer, or a (query, document) pair is judged
            twice. Messages give ``file:line``.
    """
    qrels: Qrels = {}
    columns = None
    for where, fields in _data_lines(path, flag):
        if columns is None:
            columns = len(fields)
            if columns not in (3, 4):
                raise MmstError(
                    f"{where}: expected TREC qrels 'qid 0 docid relevance' (4 columns) or "
                    f"BEIR 'query-id corpus-id score' (3 columns), found {columns} columns"
                )
            if columns == 3 and not _INTEGER.fullmatch(fields[2]):
                continue  # the BEIR header line
        elif len(fields) != columns:
            raise MmstError(f"{where}: expected {columns} columns like the first line, found {len(fields)}")
        # TREC: qid iteration docid relevance; BEIR: query-id corpus-id score.
        query_id, doc_id, relevance = fields if columns == 3 else (fields[0], fields[2], fields[3])
        if not _INTEGER.fullmatch(relevance):
            raise MmstError(f"{where}: relevance {relevance!r} is not an integer")
        judgements = qrels.setdefault(query_id, {})
        if doc_id in judgements:
            raise MmstError(f"{where}: document {doc_id!r} is judged twice for query {query_id!r}")
        judgements[doc_id] = int(relevance)
    if not qrels:
        raise MmstError(f"{_named(path, flag)}: no relevance judgements in the file")
    return qrels


def _named(path: str | os.PathLike, flag: str) -> str:
    return f"{flag} {path}" if flag else str(path)


def _data_lines(path: str | os.PathLike, flag: str = "") -> Iterator[tuple[str, list[str]]]:
    """``("file:line", fields)`` for each non-blank line of a UTF-8 file, errors as MmstError
    (``flag``, the option that named the file, goes first)."""
    name = _named(path, flag)
    if Path(path).is_dir():
        raise MmstError(f"{name} is a folder; name the file itself")
    try:
        stream = open(path, "rb")  # decoded line by line, so that a bad byte gets its line number
    except FileNotFoundError:
        raise MmstError(f"{name}: file not found; check the path") from None
    except OSError as error:
        raise MmstError(f"{name}: cannot read ({error.strerror or error})") from None
    with stream:
        for number, raw in enumerate(stream, start=1):
            try:
                fields = raw.decode("utf8").split()
            except UnicodeDecodeError:
                raise MmstError(f"{name}:{number}: not UTF-8 text") from None
            if fields:
                yield f"{name}:{number}", fields


def _check_token(what: str, value: str) -> None:
    if not value or any(character.isspace() for character in value):
        raise MmstError(f"{what} {value!r} cannot be written to a TREC file: it is empty or contains whitespace")


def unmatched_run_ids(run: dict[str, dict[str, float]], qrels: Qrels) -> list[str]:
    """Warnings for a run whose ids do not meet the qrels' at all, so that every query scores 0:
    no query id in common, or no retrieved document ever judged (a corpus indexed with other ids)."""
    shared = [query for query in run if query in qrels]
    if run and not shared:
        return [
            f"no query of the run is in the qrels (run: {next(iter(run))!r}, qrels: {next(iter(qrels))!r}), so every "
            "query scores 0; were the queries numbered differently? (mmst search --queries takes a BEIR folder's _id)"
        ]
    judged = {document for judgements in qrels.values() for document in judgements}
    retrieved = [document for query in shared for document in run[query]]
    if retrieved and not judged.intersection(retrieved):
        return [
            f"no document of the run is judged in the qrels (run: {retrieved[0]!r}, qrels: {sorted(judged)[0]!r}), so "
            "every query scores 0; was the corpus indexed with other ids? (mmst index takes a BEIR folder's _id)"
        ]
    return []

