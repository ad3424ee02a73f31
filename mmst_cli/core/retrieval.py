"""Turn pair data into a retrieval task and score models on it.

The "eval-hard" setup of the published visual-document-retrieval recipe: every anchor is a query,
its positive is relevant, and the corpus is every positive and every negative of the split.
Identical anchors are one query (with all their positives relevant) and identical documents are
one corpus entry, so duplicates can neither inflate nor deflate the score.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from mmst_cli.core.data import PairData

#: The metric train-embed reports before, during and after training.
MAIN_METRIC = "ndcg@10"


@dataclass
class RetrievalTask:
    """Queries, corpus and relevance judgements, keyed by string ids."""

    queries: dict[str, Any]
    corpus: dict[str, Any]
    relevant_docs: dict[str, set[str]]


def content_key(value: Any) -> str:
    """A stable identity for a text, image or audio value, used to merge duplicates."""
    if isinstance(value, str):
        return "t:" + value
    digest = hashlib.sha1()
    if isinstance(value, dict) and "array" in value:
        import numpy as np

        digest.update(np.asarray(value["array"], dtype="float32").tobytes())
        digest.update(str(value["sampling_rate"]).encode())
    elif hasattr(value, "tobytes"):  # PIL image
        digest.update(value.mode.encode() + str(value.size).encode() + value.tobytes())
    else:
        digest.update(repr(value).encode())
    return "h:" + digest.hexdigest()


def pairs_to_retrieval_task(data: PairData) -> RetrievalTask:
    """Build the retrieval task of a pair dataset (see the module docstring)."""
    columns = list(data.dataset.column_names)
    queries: dict[str, Any] = {}
    corpus: dict[str, Any] = {}
    relevant: dict[str, set[str]] = {}
    query_ids: dict[str, str] = {}
    doc_ids: dict[str, str] = {}

    def doc_id(value: Any) -> str:
        key = content_key(value)
        if key not in doc_ids:
            doc_ids[key] = f"d{len(doc_ids)}"
            corpus[doc_ids[key]] = value
        return doc_ids[key]

    for row in data.dataset:
        anchor = row[columns[0]]
        key = content_key(anchor)
        if key not in query_ids:
            query_ids[key] = f"q{len(query_ids)}"
            queries[query_ids[key]] = anchor
        relevant.setdefault(query_ids[key], set()).add(doc_id(row[columns[1]]))
        for negative_column in columns[2:]:
            doc_id(row[negative_column])
    return RetrievalTask(queries, corpus, relevant)


def build_retrieval_evaluator(task: RetrievalTask, *, name: str, batch_size: int = 32, truncate_dim: int | None = None):
    """A Sentence Transformers ``InformationRetrievalEvaluator`` for ``task`` (NDCG@10, MRR@10, MAP, Recall@k)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries=task.queries,
        corpus=task.corpus,
        relevant_docs=task.relevant_docs,
        ndcg_at_k=[10],
        mrr_at_k=[10],
        map_at_k=[100],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10],
        batch_size=batch_size,
        name=name,
        write_csv=False,
        truncate_dim=truncate_dim,
        score_functions=None,
    )


def summarise_ir_metrics(raw: dict[str, float], name: str) -> dict[str, float]:
    """``{"eval_cosine_ndcg@10": x, ...}`` -> ``{"ndcg@10": x, ...}`` for the model's own similarity."""
    summary = {}
    for key, value in raw.items():
        metric = key.removeprefix("eval_").removeprefix(f"{name}_")
        score_function, _, metric = metric.partition("_")
        if metric and score_function in ("cosine", "dot", "euclidean", "manhattan"):
            summary[metric] = round(float(value), 6)
    return summary
