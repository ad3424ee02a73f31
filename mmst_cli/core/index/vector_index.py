"""The FAISS index of a dense index folder: exact or approximate, over float, int8 or binary codes.

- ``flat``: exact search (inner product on unit vectors for cosine models, the model's own
  similarity otherwise: inner product, L2, L1);
- ``ivf``: an inverted file, ``lists`` k-means cells (default ``sqrt(rows)``), of which each
  query visits ``nprobe`` (default a sixteenth, at least 8); with every list probed it is exact;
- ``hnsw``: a graph of ``hnsw_m`` neighbours per node, searched with ``ef_search`` candidates;
- ``auto``: ``flat`` below :data:`AUTO_APPROXIMATE_MIN` rows, ``ivf`` from there.

Quantisation shrinks the stored codes: ``int8`` (FAISS's 8-bit scalar quantiser, trained
per dimension) or ``binary`` (one sign bit per dimension, Hamming distance). The float vectors
stay in the folder, so a quantised search can re-score its candidates exactly (``rescore``).

Scores follow :func:`mmst_cli.core.retrieval.search.search`: higher is better, distances are
negated (Euclidean as the distance itself, not its square); binary scores are negated Hamming
distances until they are re-scored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mmst_cli.core.errors import MmstError
from mmst_cli.core.retrieval.search import FAISS_MIN_DOCUMENTS

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
QUANTIZATIONS = ("none", "int8", "binary")

#: ``--index auto`` builds an approximate (IVF) index from this many rows on, as ``mmst mine`` does.
AUTO_APPROXIMATE_MIN = FAISS_MIN_DOCUMENTS
#: Neighbours per HNSW node (FAISS's ``M``): 32 is the usual trade of memory for recall.
DEFAULT_HNSW_M = 32
#: Candidates an HNSW search keeps (FAISS's ``efSearch``).
DEFAULT_EF_SEARCH = 64
#: k-means trains on at most this many rows per IVF list: enough for stable cells, and it keeps
#: training a million rows within seconds on two cores.
TRAINING_ROWS_PER_LIST = 64
#: The int8 quantiser learns each dimension's range from at most this many rows.
SCALAR_TRAINING_ROWS = 100_000
#: Binary indexes fetch this many times ``k`` candidates and re-score them with the float vectors.
DEFAULT_BINARY_RESCORE = 4


def resolve_type(requested: str, rows: int) -> str:
    """The index type to build: ``requested``, or for ``auto`` ``flat`` below :data:`AUTO_APPROXIMATE_MIN` rows, else ``ivf``."""
    if requested != "auto":
        return requested
    return "flat" if rows < AUTO_APPROXIMATE_MIN else "ivf"


def default_lists(rows: int) -> int:
    """IVF lists for ``rows`` vectors: ``sqrt(rows)``, and never more than rows / 39 (FAISS's
    minimum of training points per list), at least 1."""
    return max(1, min(round(math.sqrt(rows)), rows // 39))


def default_nprobe(lists: int) -> int:
    """Lists an IVF search visits by default: a sixteenth of them, at least 8 (all of a small index)."""
    return min(lists, max(8, lists // 16))


def check_settings(similarity: str, index_type: str, quantize: str, dim: int) -> None:
    """Refuse combinations FAISS has no index for, naming the flag to change."""
    if similarity not in ("cosine", "dot", "euclidean", "manhattan"):
        raise MmstError(f"the model scores with {similarity!r}, which mmst index has no FAISS index for")
    if similarity == "manhattan" and (index_type != "flat" or quantize != "none"):
        raise MmstError("the model scores with manhattan distance, which FAISS searches only exactly; use --index flat --quantize none")
    if quantize == "binary":
        if similarity not in ("cosine", "dot"):
            raise MmstError(f"--quantize binary keeps the sign of each dimension, which suits cosine or dot models, not {similarity}")
        if dim % 8:
            raise MmstError(f"--quantize binary needs a vector width divisible by 8, got {dim}; set --dim")


def _metric(similarity: str) -> int:
    import faiss

    return {"euclidean": faiss.METRIC_L2, "manhattan": faiss.METRIC_L1}.get(similarity, faiss.METRIC_INNER_PRODUCT)


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """One bit per dimension (``> 0``), packed 8 to a byte, as Sentence Transformers' ``ubinary``."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def _training_rows(vectors: np.ndarray, settings: dict[str, Any], seed: int) -> np.ndarray:
    """A seeded sample of the rows to train on: :data:`TRAINING_ROWS_PER_LIST` per IVF list, else
    :data:`SCALAR_TRAINING_ROWS` (for the int8 ranges)."""
    limit = settings["lists"] * TRAINING_ROWS_PER_LIST if settings["index"] == "ivf" else SCALAR_TRAINING_ROWS
    if len(vectors) <= limit:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), limit, replace=False))]


def build(vectors: np.ndarray, settings: dict[str, Any], seed: int = 0):
    """Build and fill the FAISS index ``settings`` describe (``index``, ``quantize``, ``lists``,
    ``hnsw_m``, ``similarity``) over float32 ``vectors``."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim, kind, quantize = vectors.shape[1], settings["index"], settings["quantize"]
    metric = _metric(settings["similarity"])
    if quantize == "binary":
        if kind == "flat":
            index = faiss.IndexBinaryFlat(dim)
        elif kind == "ivf":
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dim), dim, settings["lists"])
        else:
            index = faiss.IndexBinaryHNSW(dim, settings["hnsw_m"])
        codes = binary_codes(vectors)
        if not index.is_trained:
            index.train(binary_codes(_training_rows(vectors, settings, seed)))
        index.add(codes)
        return index
    int8 = faiss.ScalarQuantizer.QT_8bit
    if kind == "flat":
        index = faiss.IndexFlat(dim, metric) if quantize == "none" else faiss.IndexScalarQuantizer(dim, int8, metric)
    elif kind == "ivf":
        # FAISS's Python wrapper keeps the coarse quantiser alive as long as the IVF index.
        coarse, lists = faiss.IndexFlat(dim, metric), settings["lists"]
        if quantize == "none":
            index = faiss.IndexIVFFlat(coarse, dim, lists, metric)
        else:
            index = faiss.IndexIVFScalarQuantizer(coarse, dim, lists, int8, metric)
    else:
        if quantize == "none":
            index = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], metric)
        else:
            index = faiss.IndexHNSWSQ(dim, int8, settings["hnsw_m"], metric)
    if not index.is_trained:
        index.train(_training_rows(vectors, settings, seed))
    index.add(vectors)
    return index


def add(index, vectors: np.ndarray, settings: dict[str, Any]) -> None:
    """Add rows to a built index (no retraining: IVF cells and int8 ranges stay as trained)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index.add(binary_codes(vectors) if settings["quantize"] == "binary" else vectors)


def save(index, path: Path, settings: dict[str, Any]) -> None:
    """Write the index to ``path`` (FAISS's own format)."""
    import faiss

    (faiss.write_index_binary if settings["quantize"] == "binary" else faiss.write_index)(index, str(path))


def load(path: Path, settings: dict[str, Any]):
    """Read an index :func:`save` wrote."""
    import faiss

    return (faiss.read_index_binary if settings["quantize"] == "binary" else faiss.read_index)(str(path))


def _set_search_parameters(index, settings: dict[str, Any], nprobe: int | None, ef_search: int | None) -> None:
    import faiss

    if settings["index"] == "ivf":
        ivf = index if settings["quantize"] == "binary" else faiss.extract_index_ivf(index)
        ivf.nprobe = min(nprobe or settings["nprobe"], settings["lists"])
    elif settings["index"] == "hnsw":
        index.hnsw.efSearch = ef_search or settings["ef_search"]


def search(
    index, queries: np.ndarray, k: int, settings: dict[str, Any], *, vectors=None, nprobe: int | None = None,
    ef_search: int | None = None, rescore: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows per query: ``(scores, rows)``, each ``(queries, k')``, rows ``-1`` where
    an approximate index found fewer than ``k``.

    Args:
        index: What :func:`build` or :func:`load` returned.
        queries: ``(queries, dim)`` float32, encoded as the documents were (unit length for cosine).
        k: Rows kept per query.
        settings: The index's settings (``index``, ``quantize``, ``similarity``, ``nprobe``, ...).
        vectors: The float vectors (``vectors.npy``), needed to re-score.
        nprobe / ef_search: Override the IVF / HNSW search breadth; ``None`` for the index's default.
        rescore: Fetch ``rescore * k`` candidates and re-score them with the float vectors; ``None``
            for :data:`DEFAULT_BINARY_RESCORE` on binary indexes and no re-scoring otherwise; 1 for none.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    _set_search_parameters(index, settings, nprobe, ef_search)
    if rescore is None:
        rescore = DEFAULT_BINARY_RESCORE if settings["quantize"] == "binary" else 1
    fetch = min(index.ntotal, k * max(1, rescore))
    if settings["quantize"] == "binary":
        distances, rows = index.search(binary_codes(queries), fetch)
        scores = -distances.astype(np.float32)
    else:
        distances, rows = index.search(queries, fetch)
        similarity = settings["similarity"]
        scores = -np.sqrt(np.maximum(distances, 0)) if similarity == "euclidean" else -distances if similarity == "manhattan" else distances
    if rescore > 1 and vectors is not None:
        scores, rows = _rescore(queries, rows, vectors, settings["similarity"])
    return scores[:, :k].astype(np.float32), rows[:, :k]


def _rescore(queries: np.ndarray, rows: np.ndarray, vectors, similarity: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of each query's candidate rows, re-ranked (missing candidates, ``-1``, last).

    Plain numpy on the vectors as stored (unit length for cosine models, so cosine is their dot
    product): a few hundred candidates per query need no blocked search.
    """
    found = rows >= 0
    flat = np.where(found, rows, 0).reshape(-1)
    order = np.argsort(flat, kind="stable")  # a memory map reads sorted rows fastest
    candidates = np.empty((len(flat), queries.shape[1]), dtype=np.float32)
    candidates[order] = vectors[flat[order]]
    candidates = candidates.reshape(rows.shape[0], rows.shape[1], -1)
    if similarity in ("cosine", "dot"):
        exact = np.einsum("qd,qfd->qf", queries, candidates)
    else:
        exact = -np.linalg.norm(candidates - queries[:, None, :], ord=2 if similarity == "euclidean" else 1, axis=-1)
    scores = np.where(found, exact, -np.inf).astype(np.float32)
    ranking = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, ranking, axis=1), np.take_along_axis(rows, ranking, axis=1)
