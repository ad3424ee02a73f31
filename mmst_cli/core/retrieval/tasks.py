"""Retrieval tasks (queries, corpus, graded relevance) from the formats users already have.

- **BEIR folder**: ``corpus.jsonl`` (``_id``, ``title``, ``text``; or ``image`` / ``audio`` paths),
  ``queries.jsonl`` (``_id``, ``text``), ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``).
- **BEIR folder of PDFs**: PDF files in place of ``corpus.jsonl``, in the folder or in ``corpus/``;
  every page is a document whose id is its page id relative to that folder (``report.pdf#page=3``),
  taken as an image, or by its text layer (``pdf_text``).
- **ViDoRe / mteb schema**: a Hub dataset with ``corpus``, ``queries`` and ``qrels`` configurations,
  or a local folder with ``corpus``, ``queries`` and ``qrels`` files (jsonl / csv / parquet) or
  ``save_to_disk`` sub-folders: corpus (``corpus-id``, ``image`` or ``text``), queries
  (``query-id``, ``query``), qrels (``query-id``, ``corpus-id``, ``score``).
- **Pairs** (query, positive[, negatives...]): every anchor is a query, its positive is relevant
  and the corpus is every positive and negative (the "eval-hard" setup of the published
  visual-document-retrieval recipe). Identical anchors are one query with all their positives
  relevant; identical documents are one corpus entry, so duplicates neither inflate nor deflate
  the score.

Media in any of them is checked like training data (:mod:`mmst_cli.core.data.tables`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmst_cli.core.data.documents import RenderSettings, page_of, pdf_files
from mmst_cli.core.data.media import classify_string, expand_pdf
from mmst_cli.core.data.retrieval_folders import join_title_and_text, pdf_corpus_folder
from mmst_cli.core.data.tables import (
    PROBLEMS_SHOWN,
    PairData,
    find_part,
    is_retrieval_folder,
    load_pair_data,
    load_table,
    prepare_media,
)
from mmst_cli.core.errors import MmstError

#: The metric train-embed and evaluate lead with.
MAIN_METRIC = "ndcg@10"


@dataclass
class RetrievalTask:
    """Queries, corpus and graded relevance judgements, keyed by string ids.

    Attributes:
        queries: Query id -> text or media.
        corpus: Document id -> text or media.
        qrels: Query id -> {document id: relevance}; relevance > 0 is relevant.
        source: Where the task came from.
        warnings: Problems that were tolerated (qrels naming unknown ids, ...).
    """

    queries: dict[str, Any]
    corpus: dict[str, Any]
    qrels: dict[str, dict[str, int]]
    source: str = ""
    warnings: list[str] = field(default_factory=list)


def content_key(value: Any) -> str:
    """A stable identity for a text, image, audio or video value, used to merge duplicates."""
    if isinstance(value, str):
        return "t:" + value
    digest = hashlib.sha1()
    _digest_content(digest, value)
    return "h:" + digest.hexdigest()


def _digest_content(digest, value: Any) -> None:
    if isinstance(value, dict) and "array" in value:  # audio
        import numpy as np

        digest.update(np.asarray(value["array"], dtype="float32").tobytes())
        digest.update(str(value["sampling_rate"]).encode())
    elif isinstance(value, dict):  # {"video": [frames]} or a multimodal input
        for key in sorted(value):
            digest.update(key.encode())
            _digest_content(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"[{len(value)}]".encode())
        for item in value:
            _digest_content(digest, item)
    elif hasattr(value, "tobytes"):  # PIL image
        digest.update(value.mode.encode() + str(value.size).encode() + value.tobytes())
    else:
        digest.update(repr(value).encode())


def pairs_to_retrieval_task(data: PairData) -> RetrievalTask:
    """Build the retrieval task of a pair dataset (see the module docstring)."""
    columns = list(data.dataset.column_names)
    queries: dict[str, Any] = {}
    corpus: dict[str, Any] = {}
    qrels: dict[str, dict[str, int]] = {}
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
        qrels.setdefault(query_ids[key], {})[doc_id(row[columns[1]])] = 1
        for negative_column in columns[2:]:
            if row[negative_column] is not None:
                doc_id(row[negative_column])
    return RetrievalTask(queries, corpus, qrels, data.source, warnings=list(data.notes))


@dataclass(frozen=True)
class MediaOptions:
    """How media references in evaluation data are resolved (see :func:`mmst_cli.core.data.tables.prepare_media`)."""

    media_root: Path | None = None
    audio_sampling_rate: int | None = None
    skip_bad: bool = False
    allow_remote_media: bool = False
    allow_outside_root: bool = False
    pdf: RenderSettings = RenderSettings()
    pdf_text: bool = False


def _unique_ids(table, id_column: str, part: str, source: str) -> list[str]:
    if id_column not in table.column_names:
        raise MmstError(f"{part} of {source!r} has no {id_column!r} column; its columns are {table.column_names}")
    ids = [str(value) for value in table[id_column]]
    seen: set[str] = set()
    duplicates = [value for value in ids if value in seen or seen.add(value)]
    if duplicates:
        raise MmstError(
            f"{part} of {source!r} repeats {len(duplicates)} id(s), e.g. {duplicates[0]!r}; ids must be unique"
        )
    return ids


def _content(table, id_column: str, candidates: tuple[str, ...], part: str, source: str, media: MediaOptions):
    """Read ids and the content column (the first of ``candidates`` present), with media checked.

    Returns:
        Id -> content, and the notes of the check (texts cut, ...).
    """
    ids = _unique_ids(table, id_column, part, source)
    content_column = next((name for name in candidates if name in table.column_names), None)
    if content_column is None:
        raise MmstError(
            f"{part} of {source!r} has none of the columns {list(candidates)}; its columns are {table.column_names}"
        )
    checked = prepare_media(
        table.select_columns([content_column]),
        source,
        media_root=media.media_root,
        audio_sampling_rate=media.audio_sampling_rate,
        allow_remote_media=media.allow_remote_media,
        allow_outside_root=media.allow_outside_root,
        pdf=media.pdf,
    )
    return dict(zip(ids, checked.dataset[content_column])), checked.notes


def _qrels_from_table(table, source: str) -> dict[str, dict[str, int]]:
    missing = [name for name in ("query-id", "corpus-id", "score") if name not in table.column_names]
    if missing:
        raise MmstError(f"qrels of {source!r} lack {missing}; they need query-id, corpus-id, score")
    qrels: dict[str, dict[str, int]] = {}
    for row, (query, document, score) in enumerate(zip(table["query-id"], table["corpus-id"], table["score"])):
        try:
            relevance = int(score)
        except (TypeError, ValueError) as error:
            raise MmstError(f"qrels of {source!r}, row {row + 1}: relevance {score!r} is not a whole number") from error
        qrels.setdefault(str(query), {})[str(document)] = relevance
    return qrels


def _beir_qrels(folder: Path, split: str) -> dict[str, dict[str, int]]:
    from mmst_cli.core.retrieval.metrics import read_qrels

    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(path.stem for path in (folder / "qrels").glob("*.tsv"))
        raise MmstError(f"BEIR folder {str(folder)!r} has no qrels/{split}.tsv; splits: {available}; pass --split")
    return read_qrels(qrels_path)


def judgements_task(qrels: str, split: str | None) -> RetrievalTask:
    """The task of ``mmst evaluate --run``: judgements alone.

    Args:
        qrels: ``--qrels``: a TREC or BEIR qrels file, or a retrieval folder's qrels (BEIR
            ``qrels/<split>.tsv``, or the ``qrels`` part of an mteb / ViDoRe folder).
        split: The qrels split of a folder; ``None`` for ``test``.
    """
    from mmst_cli.core.retrieval.metrics import read_qrels

    path = Path(qrels).expanduser()
    if not path.is_dir():
        return RetrievalTask({}, {}, read_qrels(path, "--qrels"), qrels)
    if (path / "qrels").is_dir() and any((path / "qrels").glob("*.tsv")):
        return RetrievalTask({}, {}, _beir_qrels(path, split or "test"), qrels)
    part = find_part(path, "qrels")
    if part is None:
        raise MmstError(
            f"--qrels {qrels!r} is a folder without qrels; give a qrels file (TREC, or BEIR's tsv) or a BEIR / mteb "
            "folder that holds them"
        )
    return RetrievalTask({}, {}, _qrels_from_table(load_table(str(part), split=split or "test"), qrels), qrels)


def _beir_task(folder: Path, split: str, media: MediaOptions) -> RetrievalTask:
    source = str(folder)
    corpus_table = load_table(str(folder / "corpus.jsonl"))
    queries_table = load_table(str(folder / "queries.jsonl"))
    qrels = _beir_qrels(folder, split)
    corpus, corpus_notes = _content(join_title_and_text(corpus_table), "_id", ("image", "video", "audio", "text"), "corpus", source, media)
    queries, query_notes = _content(queries_table, "_id", ("image", "video", "audio", "text"), "queries", source, media)
    return RetrievalTask(queries, corpus, qrels, source, warnings=query_notes + corpus_notes)


def _pdf_task(folder: Path, pdf_folder: Path, split: str, media: MediaOptions) -> RetrievalTask:
    """A BEIR folder whose corpus is the pages of its PDFs (see the module docstring)."""
    source = str(folder)
    confine_to = None if media.allow_outside_root else pdf_folder
    ids = [
        page
        for file in pdf_files(pdf_folder)
        for page in expand_pdf(file.as_posix(), pdf_folder, confine_to, media.pdf.password)
    ]
    corpus: dict[str, Any] = {}
    problems = []
    for page_id in ids:
        problem = classify_string(page_id, pdf_folder, confine_to, media.pdf).problem
        if problem:
            problems.append(f"{page_id}: {problem}")
            continue
        page = page_of(page_id, pdf_folder, media.pdf)
        corpus[page_id] = page.text() if media.pdf_text else page  # pages render as the corpus is encoded
    shown = "; ".join(problems[:PROBLEMS_SHOWN])
    shown += f" and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
    if problems and (not media.skip_bad or not corpus):
        raise MmstError(
            f"corpus of {source!r}: {len(problems)} of {len(ids)} PDF pages are unusable ({shown}); fix them, or pass "
            "--skip-bad to leave them out"
        )
    warnings = [f"left out {len(problems)} unusable PDF page(s) (--skip-bad): {shown}"] if problems else []
    textless = sum(1 for text in corpus.values() if text == "")
    if textless:
        warnings.append(
            f"{textless} of {len(corpus)} PDF page(s) have no text layer (scanned?); --pdf-text scores them as empty text"
        )
    queries, query_notes = _content(
        load_table(str(folder / "queries.jsonl")), "_id", ("image", "video", "audio", "text"), "queries", source, media
    )
    return RetrievalTask(queries, corpus, _beir_qrels(folder, split), source, warnings=warnings + query_notes)


def _schema_task(reference: str, folder: Path | None, split: str, config: str | None, media: MediaOptions) -> RetrievalTask:
    def part(name: str):
        if folder is not None:
            return load_table(str(find_part(folder, name)), split=split)
        return load_table(reference, config=name, split=split)

    corpus, corpus_notes = _content(part("corpus"), "corpus-id", ("image", "video", "audio", "text"), "corpus", reference, media)
    queries, query_notes = _content(
        part("queries"), "query-id", ("query", "image", "video", "audio", "text"), "queries", reference, media
    )
    qrels = _qrels_from_table(part("qrels"), reference)
    return RetrievalTask(queries, corpus, qrels, reference, warnings=query_notes + corpus_notes)


def _is_hub_schema_dataset(reference: str) -> bool:
    try:
        from datasets import get_dataset_config_names

        return {"corpus", "queries", "qrels"} <= set(get_dataset_config_names(reference))
    except Exception:  # offline, unknown id: not this format; load_table reports the real problem
        return False


def load_retrieval_task(
    reference: str,
    *,
    split: str | None = None,
    config: str | None = None,
    columns: list[str] | None = None,
    media: MediaOptions = MediaOptions(),
    strict: bool = False,
) -> RetrievalTask:
    """Load a retrieval task in any of the module's formats, and check its ids.

    Args:
        reference: BEIR folder, schema folder or Hub id, or pair data (file, folder, Hub id).
        split: Qrels split of a BEIR folder (default ``test``), or the split of a dataset
            (default ``test`` for the schema formats, ``train`` for pairs).
        config: Hub configuration of pair data.
        columns: Pair-data columns (query, positive[, negatives...]).
        media: How media references resolve.
        strict: Fail, instead of warning, when qrels name unknown queries or documents.
    """
    path = Path(reference).expanduser()
    beir_parts = (path / "corpus.jsonl", path / "queries.jsonl")
    has_beir_queries = path.is_dir() and beir_parts[1].is_file() and list((path / "qrels").glob("*.tsv"))
    if has_beir_queries and beir_parts[0].is_file():
        task = _beir_task(path, split or "test", media)
    elif has_beir_queries and (pdf_folder := pdf_corpus_folder(path)) is not None:
        task = _pdf_task(path, pdf_folder, split or "test", media)
    elif path.is_dir() and all(find_part(path, name) for name in ("corpus", "queries", "qrels")):
        task = _schema_task(reference, path, split or "test", None, media)
    elif is_retrieval_folder(path):
        present = [name for name in ("corpus", "queries", "qrels") if find_part(path, name)]
        missing = [name for name in ("corpus", "queries", "qrels") if name not in present]
        raise MmstError(
            f"retrieval folder {reference!r} has {' and '.join(present)} but no {' or '.join(missing)}; a retrieval "
            "folder holds corpus.jsonl, queries.jsonl and qrels/test.tsv (BEIR), or corpus, queries and qrels "
            "files or folders (mteb / ViDoRe); add the missing part"
        )
    elif not path.exists() and _is_hub_schema_dataset(reference):
        task = _schema_task(reference, None, split or "test", None, media)
    else:
        data = load_pair_data(
            reference,
            config=config,
            split=split,
            columns=columns,
            media_root=media.media_root,
            audio_sampling_rate=media.audio_sampling_rate,
            skip_bad=media.skip_bad,
            allow_remote_media=media.allow_remote_media,
            allow_outside_root=media.allow_outside_root,
            pdf=media.pdf,
        )
        task = pairs_to_retrieval_task(data)
    _check_qrels_ids(task, strict)
    return task


def _check_qrels_ids(task: RetrievalTask, strict: bool) -> None:
    unknown_queries = [qid for qid in task.qrels if qid not in task.queries]
    unknown_docs = {doc for judged in task.qrels.values() for doc in judged if doc not in task.corpus}
    problems = []
    if unknown_queries:
        problems.append(f"{len(unknown_queries)} qrels queries are not in the queries (e.g. {unknown_queries[0]!r})")
    if unknown_docs:
        problems.append(f"{len(unknown_docs)} qrels documents are not in the corpus (e.g. {sorted(unknown_docs)[0]!r})")
    if problems and strict:
        raise MmstError(f"{task.source!r}: " + "; ".join(problems) + " (--strict)")
    task.warnings.extend(f"{problem}; their judgements were dropped" for problem in problems)
    # A judged document that cannot be retrieved would only cap recall below 1.0.
    for qid in unknown_queries:
        del task.qrels[qid]
    for qid, judged in list(task.qrels.items()):
        task.qrels[qid] = {doc: relevance for doc, relevance in judged.items() if doc in task.corpus}
    if not any(relevance > 0 for judged in task.qrels.values() for relevance in judged.values()):
        raise MmstError(f"{task.source!r}: no query has a relevant document in the corpus; nothing to score")


def task_summary(task: RetrievalTask) -> dict[str, int]:
    """Counts for reports: queries, documents, judged queries."""
    return {"queries": len(task.queries), "documents": len(task.corpus), "judged_queries": len(task.qrels)}
