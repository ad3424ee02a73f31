"""Exact top-k search over embeddings in blocks, so memory never holds a queries x corpus matrix.

Scores are computed in float32 with the model's similarity function; each block of queries keeps
a running top-k while the corpus streams past in blocks. A 10k x 100k search holds at most one
``query_block x corpus_block`` score matrix (by default 1024 x 16384 float32 = 64 MiB).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")


def _scores(queries, documents, similarity: str):
    import torch

    if similarity in ("cosine", "dot"):
        return queries @ documents.T
    p = 2.0 if similarity == "euclidean" else 1.0
    return -torch.cdist(queries, documents, p=p)


def _float_tensors(queries: np.ndarray, documents: np.ndarray, similarity: str):
    """Both arrays as float32 tensors, L2-normalised for ``cosine``; an unknown similarity raises ``ValueError``."""
    import torch

    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}")
    queries = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    documents = torch.from_numpy(np.ascontiguousarray(documents, dtype=np.float32))
    if similarity == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=-1)
        documents = torch.nn.functional.normalize(documents, dim=-1)
    return queries, documents


def search(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    k: int,
    *,
    similarity: str = "cosine",
    query_block: int = 1024,
    corpus_block: int = 16384,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``k`` best corpus rows per query: ``(scores, indices)``, each ``(queries, k')``.

    Args:
        query_embeddings: ``(queries, dim)`` float32.
        corpus_embeddings: ``(documents, dim)`` float32.
        k: How many documents to keep per query; ``k' = min(k, documents)``.
        similarity: ``cosine`` (vectors are normalised first), ``dot``, ``euclidean`` or ``manhattan``
            (negated distances, so higher is better).
        query_block / corpus_block: Block sizes that bound memory.
        on_progress: Called with the number of queries finished after each query block.
    """
    import torch

    queries, corpus = _float_tensors(query_embeddings, corpus_embeddings, similarity)
    keep = min(k, corpus.shape[0])
    all_scores = np.empty((queries.shape[0], keep), dtype=np.float32)
    all_indices = np.empty((queries.shape[0], keep), dtype=np.int64)
    for q_start in range(0, queries.shape[0], query_block):
        block = queries[q_start : q_start + query_block]
        best_scores = torch.full((block.shape[0], 0), float("-inf"))
        best_indices = torch.empty((block.shape[0], 0), dtype=torch.long)
        for c_start in range(0, corpus.shape[0], corpus_block):
            scores = _scores(block, corpus[c_start : c_start + corpus_block], similarity)
            top = torch.topk(scores, min(keep, scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, top.values], dim=1)
            merged_indices = torch.cat([best_indices, top.indices + c_start], dim=1)
            order = torch.topk(merged_scores, min(keep, merged_scores.shape[1]), dim=1).indices
            best_scores = torch.gather(merged_scores, 1, order)
            best_indices = torch.gather(merged_indices, 1, order)
        all_scores[q_start : q_start + block.shape[0]] = best_scores.numpy()
        all_indices[q_start : q_start + block.shape[0]] = best_indices.numpy()
        if on_progress:
            on_progress(block.shape[0])
    return all_scores, all_indices


def pair_scores(query_embeddings: np.ndarray, document_embeddings: np.ndarray, *, similarity: str = "cosine") -> np.ndarray:
    """The score of each row's (query, document) pair, as :func:`search` scores it: ``(rows,)`` float32."""
    import torch

    queries, documents = _float_tensors(query_embeddings, document_embeddings, similarity)
    if similarity in ("cosine", "dot"):
        return (queries * documents).sum(dim=-1).numpy()
    p = 2.0 if similarity == "euclidean" else 1.0
    return -torch.linalg.vector_norm(queries - documents, ord=p, dim=-1).numpy()


#: Corpora of this many documents or more are searched with FAISS when the caller leaves the choice to mmst.
FAISS_MIN_DOCUMENTS = 200_000
#: Below this many documents a FAISS inverted-file index has too few points per list to train well,
#: so :func:`faiss_search` searches a flat (exact) FAISS index instead.
FAISS_MIN_IVF_DOCUMENTS = 10_000


def faiss_search(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    k: int,
    *,
    similarity: str = "cosine",
    nprobe: int | None = None,
    query_block: int = 1024,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k with a FAISS inverted-file index; same arguments and results as :func:`search`.

    The corpus is split into ``4 * sqrt(documents)`` clusters (k-means on the embeddings) and each
    query visits the ``nprobe`` nearest clusters (default: an eighth of them, at least 8); with
    ``nprobe`` equal to the number of clusters the result is exact. Euclidean scores are negated
    distances as in :func:`search`; ``manhattan`` has no FAISS index here and raises ``ValueError``.
    """
    import faiss

    if similarity not in ("cosine", "dot", "euclidean"):
        raise ValueError(f"FAISS search supports cosine, dot and euclidean similarity, not {similarity!r}")
    queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    corpus = np.ascontiguousarray(corpus_embeddings, dtype=np.float32)
    if similarity == "cosine":
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        corpus = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-12)
    metric = faiss.METRIC_L2 if similarity == "euclidean" else faiss.METRIC_INNER_PRODUCT
    dimension = corpus.shape[1]
    if corpus.shape[0] < FAISS_MIN_IVF_DOCUMENTS:
        index = faiss.IndexFlat(dimension, metric)
    else:
        lists = int(4 * corpus.shape[0] ** 0.5)
        index = faiss.IndexIVFFlat(faiss.IndexFlat(dimension, metric), dimension, lists, metric)
        index.train(corpus)
        index.nprobe = nprobe or max(8, lists // 8)
    index.add(corpus)
    keep = min(k, corpus.shape[0])
    all_scores = np.empty((queries.shape[0], keep), dtype=np.float32)
    all_indices = np.empty((queries.shape[0], keep), dtype=np.int64)
    for start in range(0, queries.shape[0], query_block):
        scores, indices = index.search(queries[start : start + query_block], keep)
        # FAISS returns squared L2 distances; search() ranks by the negated distance.
        all_scores[start : start + len(scores)] = -np.sqrt(np.maximum(scores, 0)) if similarity == "euclidean" else scores
        all_indices[start : start + len(scores)] = indices
        if on_progress:
            on_progress(len(scores))
    return all_scores, all_indices
