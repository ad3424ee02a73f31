"""Exact late-interaction (MaxSim) retrieval for multi-vector models, memory bounded.

A multi-vector model (``MultiVectorEncoder``: ColBERT, ColPali, ColQwen) gives one vector per token
or image patch, and scores a query against a document with MaxSim: for each query token, its best
match among the document's tokens, summed. The corpus is encoded and scored a chunk of documents
at a time against all queries, keeping a running top-k per query, so memory holds one chunk's
token vectors and one ``queries x chunk`` score matrix, never the whole corpus's token vectors.
Scoring is Sentence Transformers' own (``util.maxsim`` or ``mean_maxsim``, from the model's
``similarity_fn_name``), whose ``chunk_elements`` bounds the token-by-token intermediate.

Optional token pooling (``HierarchicalTokenPooling``) merges similar document tokens at encoding
time; comparing metrics with and without it measures what the smaller index costs in quality.
A Matryoshka sweep (``dims``) scores the same full-size token vectors truncated to each size in
the same pass, so it costs one encoding and one running top-k per size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mmst_cli.core.encode.multi_vector import encode_tokens
from mmst_cli.core.errors import MmstError

#: Documents encoded and scored at a time: bounds the token vectors held in memory.
CORPUS_CHUNK = 1024


@dataclass
class TokenCounts:
    """How many token vectors the queries and the corpus took (what an index would store)."""

    queries: int
    documents: int
    corpus_size: int
    token_pool_factor: float | None

    def report(self) -> dict[str, Any]:
        return {
            "query_tokens": self.queries,
            "document_tokens": self.documents,
            "tokens_per_document": self.documents / self.corpus_size if self.corpus_size else 0.0,
            "token_pool_factor": self.token_pool_factor,
        }


class _RunningTopK:
    """The best ``k`` documents per query seen so far, merged one scored corpus chunk at a time."""

    def __init__(self, queries: int, k: int) -> None:
        import torch

        self.k = k
        self.scores = torch.full((queries, 0), float("-inf"))
        self.indices = torch.empty((queries, 0), dtype=torch.long)

    def add(self, scores, start: int) -> None:
        """Merge ``scores`` ``(queries, chunk)`` of documents ``start .. start + chunk``."""
        import torch

        merged_scores = torch.cat([self.scores, scores], dim=1)
        chunk = torch.arange(start, start + scores.shape[1]).expand(scores.shape[0], -1)
        merged_indices = torch.cat([self.indices, chunk], dim=1)
        order = torch.topk(merged_scores, min(self.k, merged_scores.shape[1]), dim=1).indices
        self.scores = torch.gather(merged_scores, 1, order)
        self.indices = torch.gather(merged_indices, 1, order)


def truncated(tokens: list, dim: int | None) -> list:
    """Each input's token vectors cut to their first ``dim`` values and L2-normalised again, as
    Sentence Transformers' ``truncate_dim`` and its multi-vector Matryoshka loss do; ``None`` keeps them."""
    if dim is None:
        return tokens
    from sentence_transformers.sentence_transformer.losses.matryoshka import shrink

    return [shrink(vectors, dim) for vectors in tokens]


def maxsim_search(
    model,
    queries: Sequence[Any],
    corpus: Sequence[Any],
    k: int,
    *,
    dims: Sequence[int | None] = (None,),
    batch_size: int = 32,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    pooling=None,
    corpus_chunk: int = CORPUS_CHUNK,
    chunk_elements: int | None = None,
    track: Callable[[str, int], Callable[[int], None]] | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], TokenCounts]:
    """The ``k`` best documents per query by the model's MaxSim, encoding the corpus in chunks.

    Args:
        model: A MultiVectorEncoder.
        queries / corpus: Inputs of each side, in id order.
        k: Documents kept per query (all of them in a smaller corpus).
        dims: Token vector sizes to rank at (a Matryoshka sweep, see :func:`truncated`); ``None``
            is the full size. Every input is encoded once, at full size, and each chunk is scored at
            every size, each with its own running top-k. Default: the full size only.
        batch_size: Inputs per forward pass.
        query_prompt / document_prompt: Replace the model's prompt of that side; ``None`` keeps it.
        pooling: Token pooling for the documents (see :func:`token_pooling`); pooling comes before
            truncation, as in Sentence Transformers' ``encode``.
        corpus_chunk: Documents encoded and scored at a time. Default :data:`CORPUS_CHUNK`.
        chunk_elements: Element budget of Sentence Transformers' MaxSim intermediate; ``None``
            for its default (100 million, about 400 MB in float32).
        track: Progress tracker (see :func:`mmst_cli.core.progress.progress_bars`); ``None`` for none.

    Returns:
        ``(rankings, tokens)``: per entry of ``dims``, ``(scores, indices)``, two ``(queries, k')``
        arrays; and the token vectors taken.

    Raises:
        MmstError: a size in ``dims`` exceeds the model's token vectors (checked before the corpus is encoded).
    """
    import torch

    track = track or (lambda description, total: lambda done: None)
    score = _score_function(model, chunk_elements)
    query_tokens = encode_tokens(model, queries, task="query", prompt=query_prompt, batch_size=batch_size)
    track("encoding queries", len(queries))(len(queries))
    width = query_tokens[0].shape[1] if query_tokens else 0
    too_large = [dim for dim in dims if dim is not None and dim > width]
    if too_large:
        raise MmstError(f"--dims {too_large} exceed the model's token vector size {width}")
    # Zero rows added by padding match every document token with 0, so they add nothing to a sum.
    padded_queries = [torch.nn.utils.rnn.pad_sequence(truncated(query_tokens, dim), batch_first=True) for dim in dims]
    best = [_RunningTopK(len(queries), min(k, len(corpus))) for _ in dims]
    document_tokens = 0
    advance = track("encoding and scoring corpus", len(corpus))
    for start in range(0, len(corpus), corpus_chunk):
        chunk = encode_tokens(
            model, corpus[start : start + corpus_chunk], task="document", prompt=document_prompt,
            batch_size=batch_size, pooling=pooling,
        )  # fmt: skip
        document_tokens += sum(tokens.shape[0] for tokens in chunk)
        # Token vectors are kept on the CPU; each chunk is scored on the model's device (a GPU when
        # the model runs on one), and the scores come back to the CPU.
        for dim, queries_at_dim, top in zip(dims, padded_queries, best):
            top.add(score(queries_at_dim, truncated(chunk, dim), device=getattr(model, "device", None)).float().cpu(), start)
        advance(len(chunk))
    query_count = sum(tokens.shape[0] for tokens in query_tokens)
    pool_factor = getattr(pooling, "pool_factor", None)
    counts = TokenCounts(query_count, document_tokens, len(corpus), pool_factor)
    return [(top.scores.numpy(), top.indices.numpy()) for top in best], counts


def _score_function(model, chunk_elements: int | None):
    """The model's MaxSim scoring function (``util.maxsim`` or ``mean_maxsim``), with its element budget."""
    from sentence_transformers.util import SimilarityFunction

    score = SimilarityFunction.to_similarity_fn(model.similarity_fn_name)
    return score if chunk_elements is None else partial(score, chunk_elements=chunk_elements)


def maxsim_top_k(
    model, query_tokens: Sequence[Any], document_chunks: Iterable[Sequence[Any]], k: int, *, chunk_elements: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best documents per query by the model's MaxSim, over token vectors already encoded.

    Args:
        model: The MultiVectorEncoder whose ``similarity_fn_name`` and device score.
        query_tokens: Each query's ``[tokens, dim]`` float tensor.
        document_chunks: Consecutive chunks of documents, each a list of ``[tokens, dim]`` tensors
            (``mmst search`` reads them from an index a chunk at a time, so memory holds one chunk).
        k: Documents kept per query (all of them in a smaller corpus).
        chunk_elements: As in :func:`maxsim_search`.

    Returns:
        ``(scores, indices)``: two ``(queries, k')`` arrays, best first.
    """
    import torch

    score = _score_function(model, chunk_elements)
    # Zero rows added by padding match every document token with 0, so they add nothing to a sum.
    padded_queries = torch.nn.utils.rnn.pad_sequence(list(query_tokens), batch_first=True)
    top = _RunningTopK(len(query_tokens), k)
    start = 0
    for chunk in document_chunks:
        top.add(score(padded_queries, list(chunk), device=getattr(model, "device", None)).float().cpu(), start)
        start += len(chunk)
    return top.scores.numpy(), top.indices.numpy()
