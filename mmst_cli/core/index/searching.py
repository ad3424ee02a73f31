"""Searching an index folder (``mmst search``): queries in, per-query ranked documents out.

Queries are texts, media files (``-i``: an image, audio file or PDF page, checked by the same
media gate as every input of mmst) or a queries file (jsonl / csv / parquet with an id column,
``id<TAB>text`` tsv, a txt file of one query per line, or a BEIR folder's ``queries.jsonl``).
They are encoded by the index's model as queries, searched in the index's FAISS index (or by exact
MaxSim for a multi-vector index), optionally re-scored by a reranker, and returned as
:class:`QueryResult` lists that any view (table, JSON lines, TREC run, HTML page) can render:
each hit carries the document id, its score and the media reference or text the index stored
(a file of the index's ``media/`` folder made absolute).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmst_cli.core.data.media import classify_string
from mmst_cli.core.data.tables import find_part
from mmst_cli.core.encode.checked_inputs import EncodeInputs
from mmst_cli.core.encode.inputs import pick_column, read_inputs
from mmst_cli.core.errors import MmstError
from mmst_cli.core.index import layout, vector_index

#: Documents of a multi-vector index scored by MaxSim at a time (bounds the token vectors in memory).
MAXSIM_CHUNK = 1024
#: Query columns of a queries table, tried in this order before the column ``mmst encode`` would pick.
QUERY_COLUMNS = ("query", "anchor")
#: Query id columns of a queries table, tried in this order (BEIR's ``_id`` first).
QUERY_ID_COLUMNS = ("_id", "query-id", "query_id", "qid", "id")
#: How close a moved ``--model``'s vector of a stored document must be to the stored one (devices and
#: batching move the last digits; another model lands far away).
MOVED_MODEL_COSINE = 0.99
#: First-stage candidates a reranker re-scores per query by default.
DEFAULT_RERANK_TOP = 50


@dataclass
class Hit:
    """One retrieved document: its id, score and what the index stored about it."""

    doc_id: Any
    score: float
    modality: str
    ref: str | None
    text: str | None


@dataclass
class QueryResult:
    """One query's ranked documents, best first; ``query`` is its text or media reference."""

    query_id: str
    query: str
    hits: list[Hit]


@dataclass
class SearchOutcome:
    """Every query's results and where the time went (seconds; encode and search for all queries)."""

    results: list[QueryResult]
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class Queries:
    """Queries read and checked before any model loads: ids, display labels, and their inputs
    (plain texts, or encode inputs of media and files that :meth:`values` binds to the model)."""

    ids: list[str]
    labels: list[str]
    parts: list[list[str] | EncodeInputs]
    notes: list[str] = field(default_factory=list)

    def values(self, model) -> list[Any]:
        """The model inputs, in query order (audio decoded at the model's rate, pages as pages)."""
        values: list[Any] = []
        for part in self.parts:
            if isinstance(part, list):
                if not model.supports("text"):
                    raise MmstError("the index's model does not take text queries; search with -i FILE")
                values.extend(part)
            else:
                part.bind(model)
                values.extend(part.chunk(0, part.count))
        return values


def _queries_file(reference: str, allow_outside_root: bool) -> EncodeInputs:
    path = Path(reference).expanduser()
    if not path.exists():
        raise MmstError(f"--queries {reference!r} does not exist; check the path")
    if path.is_dir():
        queries = find_part(path, "queries")
        if queries is None or queries.is_dir():
            raise MmstError(
                f"--queries {reference!r} is a folder without queries.jsonl; give a queries file "
                "(.txt, .tsv, .jsonl, .csv, .parquet) or a BEIR / mteb folder that holds queries.jsonl (or .csv, .parquet)"
            )
        path = queries
    if path.suffix.lower() == ".tsv":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf8").splitlines(), start=1):
            row = line.split("\t", 1)
            if line.strip() and not row[-1].strip():
                raise MmstError(f"--queries {reference!r}, line {number}: no query text after the id; write id<TAB>text")
            if line.strip():
                rows.append(row)
        stream = io.StringIO("".join(f"{row[-1]}\n" for row in rows))
        inputs = read_inputs("-", stdin=stream, media_root=path.parent, allow_outside_root=allow_outside_root)
        inputs.ids = [row[0] if len(row) == 2 else str(number) for number, row in enumerate(rows)]
        return inputs
    id_column = column = None
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        from mmst_cli.core.data.tables import load_table

        columns = load_table(str(path)).column_names
        id_column = next((name for name in QUERY_ID_COLUMNS if name in columns), None)
        # mteb / ViDoRe queries and pair tables hold the query in "query" (mine's rows in "anchor"),
        # beside documents or images; search has no --column, so a table it cannot read is named here.
        column = next((name for name in QUERY_COLUMNS if name in columns), None)
        if column is None:
            try:
                column = pick_column(columns, None, id_column, reference)
            except MmstError:
                raise MmstError(
                    f"--queries {reference!r}: no 'query' column, and no single text column among {columns}; "
                    "name the queries' column 'query', or give an id<TAB>text tsv"
                ) from None
    return read_inputs(str(path), column=column, id_column=id_column, allow_outside_root=allow_outside_root)


def read_queries(texts: list[str], media: list[str], queries_file: str | None, *, allow_outside_root: bool = False) -> Queries:
    """Read and check every query before the model loads.

    Args:
        texts: Text queries (ids ``q1``, ``q2``, ...).
        media: Media files (``-i``): images, audio, PDF pages (``doc.pdf#page=2``); ids go on
            from the texts'.
        queries_file: A queries file or BEIR folder (ids from its id column, else row numbers; the
            text or media of its ``query`` column, else of the column ``mmst encode`` would pick).
        allow_outside_root: A queries file may name media outside its folder.

    Raises:
        MmstError: (exit 2) for no query, an empty one, or a media file that is missing or unusable.
    """
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise MmstError(f"query {number} is empty; give the words to search for")
    for value in media:
        report = classify_string(value, Path.cwd())
        if report.problem:
            raise MmstError(f"-i {value!r}: {report.problem}")
        if report.source not in ("file", "pdf"):
            raise MmstError(f"-i {value!r} is not an image, audio or PDF page file (by its name); pass text queries as arguments")
    ids = [f"q{number}" for number in range(1, len(texts) + len(media) + 1)]
    labels, parts = list(texts), [list(texts)] if texts else []
    if media:
        stream = io.StringIO("".join(f"{value}\n" for value in media))
        parts.append(read_inputs("-", stdin=stream, allow_outside_root=True))
        labels.extend(media)
    if queries_file is not None:
        inputs = _queries_file(queries_file, allow_outside_root)
        for query_id, (ref, text, _) in zip(inputs.ids, inputs.sources()):
            if ref is None and text is not None and not text.strip():
                raise MmstError(f"--queries {queries_file!r}: query {str(query_id)!r} is empty; give its text or drop the row")
        ids.extend(str(item) for item in inputs.ids)
        labels.extend(ref or text or "" for ref, text, _ in inputs.sources())
        parts.append(inputs)
    if not ids:
        raise MmstError('give a query: mmst search INDEX "some words", -i FILE or --queries FILE')
    return Queries(ids, labels, parts, [note for part in parts if isinstance(part, EncodeInputs) for note in part.notes])


def load_index_model(index: layout.IndexFolder, model: str | None, *, device: str | None = None, trust_remote_code: bool = False):
    """Load the model an index was built with (or ``model``, the same model elsewhere)."""
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model

    reference = model or index.settings["model_identity"]
    try:
        source = locate_model(reference)
    except MmstError as error:
        raise MmstError(f"index {str(index.path)!r}: its model cannot be loaded ({error.message}); pass --model") from None
    return load_model(source, trust_remote_code=trust_remote_code, device=device)


def check_search_breadth(index: layout.IndexFolder, nprobe: int | None, ef_search: int | None, rescore: int | None) -> None:
    """Refuse a breadth option the index does not use, which would otherwise be accepted and ignored."""
    given = {flag: value for flag, value in (("--nprobe", nprobe), ("--ef-search", ef_search), ("--rescore", rescore)) if value is not None}
    name, settings = str(index.path), index.settings
    for flag, value in given.items():
        if value < 1:
            raise MmstError(f"{flag} must be a positive whole number, got {value}")
    if given and index.kind == "multi_vector":
        raise MmstError(f"index {name!r} is searched exactly by MaxSim (a multi-vector model); drop {', '.join(given)}")
    if nprobe is not None and settings["index"] != "ivf":
        raise MmstError(f"--nprobe sets how many IVF lists a query visits, but index {name!r} is {settings['index']}; drop it")
    if ef_search is not None and settings["index"] != "hnsw":
        raise MmstError(f"--ef-search sets an HNSW search's breadth, but index {name!r} is {settings['index']}; drop it")
    if rescore is not None and settings["quantize"] == "none":
        raise MmstError(f"--rescore re-scores a quantised index's candidates, but index {name!r} holds float vectors, "
                        "scored exactly; drop it")  # fmt: skip


def check_moved_model(index: layout.IndexFolder, model, documents: list[dict[str, Any]], batch_size: int) -> None:
    """Refuse a ``--model`` that is not the index's: a model of the same width would otherwise search
    vectors it did not make, and rank without a word. One stored document (a text, or a media file
    still in place inside :meth:`~mmst_cli.core.index.layout.IndexFolder.media_folder`) is embedded
    again and compared with its vector; with none left, nothing is checked. Multi-vector indexes are
    not checked."""
    from mmst_cli.core.data.media import confinement_problem
    from mmst_cli.core.encode.encoding import encode_inputs

    settings = index.settings
    media_folder = index.media_folder()
    for row, record in enumerate(documents):
        file = Path(record["ref"].partition("#page=")[0]) if record["ref"] else None
        if record["text"] is not None:
            value = record["text"]
        elif file is not None and file.is_file() and confinement_problem(file, media_folder) is None:
            inputs = read_inputs("-", stdin=io.StringIO(record["ref"] + "\n"), media_root=media_folder)
            inputs.bind(model)
            value = inputs.chunk(0, 1)[0]
        else:
            continue
        fresh = encode_inputs(model, [value], task="document", prompt=settings["prompt"], batch_size=batch_size,
                              normalize=settings["normalize"], truncate_dim=settings["dim"])[0]  # fmt: skip
        stored = np.asarray(index.vectors()[row], dtype=np.float32)
        if fresh.shape != stored.shape:
            return  # another width: the search names it
        cosine = float(fresh @ stored / max(float(np.linalg.norm(fresh) * np.linalg.norm(stored)), 1e-12))
        if cosine < MOVED_MODEL_COSINE:
            raise MmstError(
                f"--model embeds the index's document {str(record['id'])!r} differently from the model that built "
                f"{str(index.path)!r} (cosine {cosine:.3f}); pass the model it was built with"
            )
        return


def _token_chunks(index: layout.IndexFolder):
    """The index's documents' token vectors, :data:`MAXSIM_CHUNK` documents at a time."""
    import torch

    tokens, offsets = index.token_vectors()
    for start in range(0, len(offsets) - 1, MAXSIM_CHUNK):
        stop = min(start + MAXSIM_CHUNK, len(offsets) - 1)
        block = torch.from_numpy(np.array(tokens[offsets[start] : offsets[stop]], dtype=np.float32))
        yield list(torch.split(block, np.diff(offsets[start : stop + 1]).tolist()))


def _first_stage(index: layout.IndexFolder, faiss_index, model, values: list[Any], k: int, *, batch_size: int, nprobe,
                 ef_search, rescore) -> tuple[np.ndarray, np.ndarray, float, float]:  # fmt: skip
    """Encode the queries and search: ``(scores, rows, encode seconds, search seconds)``."""
    settings = index.settings
    started = time.perf_counter()
    if index.kind == "multi_vector":
        from mmst_cli.core.encode.multi_vector import encode_tokens
        from mmst_cli.core.retrieval.maxsim import maxsim_top_k

        query_tokens = encode_tokens(model, values, task="query", prompt=None, batch_size=batch_size)
        encoded = time.perf_counter()
        scores, rows = maxsim_top_k(model, query_tokens, _token_chunks(index), k)
        return scores, rows, encoded - started, time.perf_counter() - encoded
    from mmst_cli.core.encode.encoding import encode_inputs

    queries = encode_inputs(
        model, values, task="query", batch_size=batch_size, normalize=settings["normalize"], truncate_dim=settings["dim"],
    )  # fmt: skip
    encoded = time.perf_counter()
    if queries.shape[1] != index.manifest["dim"]:
        raise MmstError(f"--model gives {queries.shape[1]}-d vectors, but index {str(index.path)!r} holds "
                        f"{index.manifest['dim']}-d ones; pass the model it was built with")  # fmt: skip
    scores, rows = vector_index.search(
        faiss_index, queries, k, settings, vectors=index.vectors(), nprobe=nprobe, ef_search=ef_search, rescore=rescore,
    )  # fmt: skip
    return scores, rows, encoded - started, time.perf_counter() - encoded


def _readable(value: Any, settings: dict[str, Any]) -> Any:
    """A query or document as a reranker reads it: PDF pages as rendered image files (cached)."""
    from mmst_cli.core.data.documents import PdfPage, RenderSettings
    from mmst_cli.core.data.media import page_image_file

    if isinstance(value, str) and "#page=" in value:
        path, _, number = value.rpartition("#page=")
        value = PdfPage(Path(path), int(number), RenderSettings(dpi=settings["pdf_dpi"]))
    return str(page_image_file(value)) if isinstance(value, PdfPage) else value


def _rerank(reranker, values, candidates: list[list[tuple[int, float]]], documents, settings, batch_size: int):
    """Re-score each query's candidates (row, score) with the reranker; best first."""
    from mmst_cli.core.retrieval.reranking import predict_pairs

    pairs = []
    for value, rows in zip(values, candidates):
        for row, _ in rows:
            record = documents[row]
            if record["text"] is None and not Path(record["ref"].rpartition("#page=")[0] or record["ref"]).exists():
                raise MmstError(f"--reranker reads each candidate's media, and {record['ref']!r} is gone; "
                                "search without --reranker, or restore the file")  # fmt: skip
            pairs.append((_readable(value, settings), _readable(record["text"] if record["text"] is not None else record["ref"], settings)))
    scores = iter(predict_pairs(reranker, pairs, batch_size=batch_size))
    return [sorted(((row, next(scores)) for row, _ in rows), key=lambda item: -item[1]) for rows in candidates]


def search_index(
    index: layout.IndexFolder,
    queries: Queries,
    *,
    k: int = 10,
    model=None,
    reranker: str | None = None,
    rerank_top_k: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    rescore: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    trust_remote_code: bool = False,
    warm_up: bool = False,
) -> SearchOutcome:
    """Search ``index`` for every query; the results a table, JSON, a TREC run or a page can show.

    Args:
        index: An opened index (:func:`mmst_cli.core.index.layout.open_index`).
        queries: What :func:`read_queries` returned.
        k: Documents returned per query; default 10.
        model: A loaded model, a model folder or Hub id (the index's model, moved), or ``None``
            (default) for the model the index records.
        reranker: A reranker (CrossEncoder) folder or Hub id that re-scores each query's top
            ``rerank_top_k`` documents; ``None`` (default) for none.
        rerank_top_k: First-stage candidates the reranker re-scores, at least ``k``; ``None``
            (default) for :data:`DEFAULT_RERANK_TOP`, or ``k`` when larger.
        nprobe / ef_search / rescore: Search breadth of IVF / HNSW indexes and re-scoring of
            quantised ones (see :func:`mmst_cli.core.index.vector_index.search`); ``None`` for the index's defaults.
        batch_size: Queries per forward pass; default 32.
        device / trust_remote_code: How the model loads.
        warm_up: Encode and search the first query once before the timed run, so ``timing`` shows
            steady-state latency (the first forward pass and search pay one-off set-up); default off.

    Returns:
        A :class:`SearchOutcome`: per query its hits, best first, and ``timing`` (``load``,
        ``encode``, ``search``, ``rerank`` seconds over all queries, and ``queries``).

    Raises:
        MmstError: a query the model cannot take, a reranker that cannot read the documents, a
            ``rerank_top_k`` below ``k``, a moved ``model`` that is not the index's, a breadth
            option the index does not use (:func:`check_search_breadth`).
    """
    if k <= 0:
        raise MmstError(f"-k must be a positive whole number, got {k}")
    check_search_breadth(index, nprobe, ef_search, rescore)
    if rerank_top_k is not None and not reranker:
        raise MmstError("--rerank-top-k sets how many results --reranker re-scores; add --reranker or drop it")
    if reranker and rerank_top_k is not None and rerank_top_k < k:
        # The reranker would order only the first rerank_top_k of the k results (evaluate's rule too).
        raise MmstError(f"--rerank-top-k {rerank_top_k} is below -k {k}: the reranker re-scores the results it returns; "
                        f"raise --rerank-top-k to at least {k} or lower -k")  # fmt: skip
    started = time.perf_counter()
    moved = isinstance(model, str)
    if model is None or moved:
        model = load_index_model(index, model, device=device, trust_remote_code=trust_remote_code)
    documents = [dict(record, ref=index.media_reference(record["ref"])) for record in index.documents()]
    if moved and index.kind == "dense":
        check_moved_model(index, model, documents, batch_size)
    faiss_index = index.faiss_index() if index.kind == "dense" else None
    values = queries.values(model)
    depth = max(k, rerank_top_k or DEFAULT_RERANK_TOP) if reranker else k
    if warm_up:
        _first_stage(index, faiss_index, model, values[:1], depth, batch_size=batch_size, nprobe=nprobe,
                     ef_search=ef_search, rescore=rescore)  # fmt: skip
    loaded = time.perf_counter() - started
    scores, rows, encode_seconds, search_seconds = _first_stage(
        index, faiss_index, model, values, depth, batch_size=batch_size, nprobe=nprobe, ef_search=ef_search, rescore=rescore
    )
    ranked = [[(int(row), float(score)) for row, score in zip(row_list, score_list) if row >= 0]
              for row_list, score_list in zip(rows, scores)]  # fmt: skip
    rerank_seconds = 0.0
    if reranker:
        from mmst_cli.core.retrieval.reranking import load_reranker_for

        samples = {record["modality"]: record["text"] if record["text"] is not None else record["ref"] for record in documents}
        loaded_reranker = load_reranker_for(reranker, {"queries": values, "documents": samples.values()}, str(index.path),
                                            trust_remote_code=trust_remote_code)  # fmt: skip
        began = time.perf_counter()
        ranked = _rerank(loaded_reranker, values, ranked, documents, index.settings, batch_size)
        rerank_seconds = time.perf_counter() - began
    results = []
    for query_id, label, hits in zip(queries.ids, queries.labels, ranked):
        results.append(QueryResult(query_id, label, [
            Hit(documents[row]["id"], score, documents[row]["modality"], documents[row]["ref"], documents[row]["text"])
            for row, score in hits[:k]
        ]))  # fmt: skip
    timing = {"queries": len(values), "load": loaded, "encode": encode_seconds, "search": search_seconds, "rerank": rerank_seconds}
    return SearchOutcome(results, timing)


def as_run(results: list[QueryResult]) -> dict[str, dict[str, float]]:
    """The results as a TREC run ``{query id: {document id: score}}``."""
    return {result.query_id: {str(hit.doc_id): hit.score for hit in result.hits} for result in results}
