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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mmst_cli.core.encode.multi_vector import encode_tokens

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


def maxsim_search(
    model,
    queries: Sequence[Any],
    corpus: Sequence[Any],
    k: int,
    *,
    batch_size: int = 32,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    pooling=None,
    corpus_chunk: int = CORPUS_CHUNK,
    chunk_elements: int | None = None,
    track: Callable[[str, int], Callable[[int], None]] | None = None,
) -> tuple[np.ndarray, np.ndarray, TokenCounts]:
    """The ``k`` best documents per query by the model's MaxSim, encoding the corpus in chunks.

    Args:
        model: A MultiVectorEncoder.
        queries / corpus: Inputs of each side, in id order.
        k: Documents kept per query (all of them in a smaller corpus).
        batch_size: Inputs per forward pass.
        query_prompt / document_prompt: Replace the model's prompt of that side; ``None`` keeps it.
        pooling: Token pooling for the documents (see :func:`token_pooling`).
        corpus_chunk: Documents encoded and scored at a time. Default :data:`CORPUS_CHUNK`.
        chunk_elements: Element budget of Sentence Transformers' MaxSim intermediate; ``None``
            for its default (100 million, about 400 MB in float32).
        track: Progress tracker (see :func:`mmst_cli.core.progress.progress_bars`); ``None`` for none.

    Returns:
        ``(scores, indices, tokens)``: two ``(queries, k')`` arrays, and the token vectors taken.
    """
    track = track or (lambda description, total: lambda done: None)
    query_tokens = encode_tokens(model, queries, task="query", prompt=query_prompt, batch_size=batch_size)
    track("encoding queries", len(queries))(len(queries))
    advance = track("encoding and scoring corpus", len(corpus))
    document_tokens = 0

    def encoded_chunks() -> Iterator[list]:
        nonlocal document_tokens
        for start in range(0, len(corpus), corpus_chunk):
            chunk = encode_tokens(
                model, corpus[start : start + corpus_chunk], task="document", prompt=document_prompt,
                batch_size=batch_size, pooling=pooling,
            )  # fmt: skip
            document_tokens += sum(tokens.shape[0] for tokens in chunk)
            yield chunk
            advance(len(chunk))

    scores, indices = maxsim_top_k(model, query_tokens, encoded_chunks(), k, chunk_elements=chunk_elements)
    query_count = sum(tokens.shape[0] for tokens in query_tokens)
    pool_factor = getattr(pooling, "pool_factor", None)
    counts = TokenCounts(query_count, document_tokens, len(corpus), pool_factor)
    return scores, indices, counts


def maxsim_top_k(
    model, query_tokens: Sequence[Any], document_chunks: Iterable[Sequence[Any]], k: int, *, chunk_elements: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best documents per query by the model's MaxSim, the documents coming a chunk at a time.

    Args:
        model: The MultiVectorEncoder whose ``similarity_fn_name`` and device score.
        query_tokens: Each query's ``[tokens, dim]`` float tensor.
        document_chunks: Consecutive chunks of documents, each a list of ``[tokens, dim]`` tensors
            (encoded on the fly by :func:`maxsim_search`, read from an index by ``mmst search``).
        k: Documents kept per query (all of them in a smaller corpus).
        chunk_elements: As in :func:`maxsim_search`.

    Returns:
        ``(scores, indices)``: two ``(queries, k')`` arrays, best first.
    """
    import torch
    from sentence_transformers.util import SimilarityFunction

    score = SimilarityFunction.to_similarity_fn(model.similarity_fn_name)
    if chunk_elements is not None:
        score = partial(score, chunk_elements=chunk_elements)
    # Zero rows added by padding match every document token with 0, so they add nothing to a sum.
    padded_queries = torch.nn.utils.rnn.pad_sequence(list(query_tokens), batch_first=True)
    best_scores = torch.full((len(query_tokens), 0), float("-inf"))
    best_indices = torch.empty((len(query_tokens), 0), dtype=torch.long)
    start = 0
    for chunk in document_chunks:
        # Token vectors are kept on the CPU; each chunk is scored on the model's device (a GPU when
        # the model runs on one), and the scores come back to the CPU.
        scores = score(padded_queries, list(chunk), device=getattr(model, "device", None)).float().cpu()
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_indices = torch.cat([best_indices, torch.arange(start, start + len(chunk)).expand(len(query_tokens), -1)], dim=1)
        order = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1).indices
        best_scores = torch.gather(merged_scores, 1, order)
        best_indices = torch.gather(merged_indices, 1, order)
        start += len(chunk)
    return best_scores.numpy(), best_indices.numpy()
