"""Hard-negative mining for any modality, with every false-negative rule counted.

Sentence Transformers' ``mine_hard_negatives`` mines text: its corpus is a list of strings and
it tells documents apart by string, so two paths to the same picture are two documents and a
decoded image or audio clip cannot be a document at all. This module keeps its options and their
meaning (``range_min`` / ``range_max`` ranks, the margins against the anchor's hardest positive,
``max_score`` / ``min_score``, ``top`` / ``random`` sampling) and runs one path for every modality:

1. Anchors, positives and corpus are read as references (texts, media paths, page references),
   checked by the same gate as every other command (:func:`mmst_cli.core.encode.inputs.read_inputs`
   for tables, folders and line files; :mod:`mmst_cli.core.retrieval.tasks` for BEIR and
   mteb / ViDoRe folders, whose qrels come along).
2. Queries are encoded as queries and documents as documents
   (:func:`mmst_cli.core.encode.encoding.encode_inputs`); the corpus embeddings are cached under a
   key of the model and the corpus's content, so a rerun with other mining options does not encode again.
3. Exact blocked search (:func:`mmst_cli.core.retrieval.search.search`) ranks ``range_max``
   documents per anchor; each candidate then passes the rules in :data:`RULES`, in that order, and
   the first rule that rejects it is counted.

Documents are identified by content (:func:`content_hash`: the bytes of a media file, the text
of a text), never by path, so a copy of the positive under another name is caught.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmst_cli.core.data.tables import is_retrieval_folder
from mmst_cli.core.encode.job import PooledModel, loading_device
from mmst_cli.core.encode.settings import check_devices, split_devices
from mmst_cli.core.errors import MmstError
from mmst_cli.core.progress import Tracker, no_progress
from mmst_cli.core.retrieval.mining_data import (
    MiningSet,
    add_corpus,
    content_hash,
    page_reference,
    pair_set,
    task_set,
)

#: ``--format`` values: rows for train-embed, and pointwise / listwise rows for train-rerank.
FORMATS = ("triplet", "labeled-pair", "labeled-list")
#: ``--index`` values: exact blocked search, FAISS, or FAISS from :data:`FAISS_MIN_DOCUMENTS` documents on.
INDEXES = ("auto", "exact", "faiss")
#: ``--sampling`` values, as Sentence Transformers names them.
SAMPLINGS = ("top", "random")
#: The seed of ``--sampling random`` when ``--seed`` is not given.
DEFAULT_SEED = 12
#: The reranker score from which a candidate counts as relevant (a probability for one-label rerankers).
RERANKER_THRESHOLD = 0.5
#: The rules a candidate passes, in order; the summary counts the candidates each one removed.
RULES = (
    "relevant",  # a positive of the anchor (any of its rows) or a document judged relevant in its qrels
    "same_content_as_positive",  # identical bytes or text to one of the anchor's positives
    "same_group_as_positive",  # --group-column: e.g. another page of the positive's PDF
    "absolute_margin",
    "relative_margin",
    "max_score",
    "min_score",
    "reranker",  # --reranker scored it as relevant
    "same_content_as_negative",  # a copy of a negative already chosen for the anchor
)


@dataclass
class MineOptions:
    """Every option of ``mmst mine``; the mining ones mean what they mean in Sentence Transformers.

    Attributes:
        model: Embedding model folder or Hub id; ``None`` for the embedded default, as in every command.
        data: Pair table (anchor, positive), or a BEIR / mteb folder (queries, corpus, qrels).
        output: The jsonl file written.
        corpus: Extra documents to mine from (table, folder of media, ``.txt``); default: the positives.
        columns: Pair-table columns anchor,positive; default: the first two.
        corpus_column: The corpus table's column; default: picked as ``mmst encode`` picks.
        group_column: A column of the pair table (and of the corpus table) naming each document's
            group; candidates of a positive's group are excluded.
        num_negatives: Negatives per anchor (default 3).
        range_min / range_max: Ranks of the search considered (default 0 and, as in Sentence
            Transformers, ``range_min + num_negatives * 10 + positives`` with a margin or score
            bound, else ``range_min + num_negatives + positives``).
        absolute_margin / relative_margin / max_score / min_score: Score rules (default off).
        sampling: ``top`` (the best remaining) or ``random`` (among the remaining; ``seed``).
        reranker / reranker_threshold: Rescore candidates; drop those scoring at least the threshold
            (the reranker's own activation: a probability for one-label rerankers; ``None`` for
            :data:`RERANKER_THRESHOLD`, and refused without a reranker).
        output_format: One of :data:`FORMATS` (default ``triplet``).
        scores: Write the embedding scores too.
        keep_incomplete: Keep anchors with fewer than ``num_negatives`` negatives (labelled formats).
        cache_dir: Corpus-embedding cache; ``None`` for ``$MMST_CACHE/mine`` or ``~/.cache/mmst/mine``.
        index: One of :data:`INDEXES` (default ``auto``).
        device: ``None`` lets Sentence Transformers choose; one device (``cuda:0``) or several,
            comma-separated (``cuda:0,cuda:1``), each an encoding process, as in ``mmst encode``.
        media_out: Folder for media embedded in the data or corpus (one file per distinct item);
            ``None`` for ``<output stem>-media`` beside the output.
    """

    model: str | None
    data: str
    output: str
    corpus: str | None = None
    columns: list[str] | None = None
    corpus_column: str | None = None
    group_column: str | None = None
    split: str | None = None
    data_config: str | None = None
    media_root: str | None = None
    allow_outside_root: bool = False
    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"
    seed: int | None = None
    reranker: str | None = None
    reranker_threshold: float | None = None
    output_format: str = "triplet"
    scores: bool = False
    keep_incomplete: bool = False
    cache_dir: str | None = None
    index: str = "auto"
    media_out: str | None = None
    device: str | None = None
    batch_size: int = 32
    trust_remote_code: bool = False

    def validate(self) -> None:
        """Refuse contradictory or out-of-range options before any data or model loads."""
        if self.num_negatives < 1:
            raise MmstError(f"--num-negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise MmstError(f"--range-min must be 0 or more, got {self.range_min}")
        if self.range_max is not None and self.range_max <= self.range_min:
            raise MmstError(f"--range-max ({self.range_max}) must be above --range-min ({self.range_min})")
        if self.sampling not in SAMPLINGS:
            raise MmstError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.seed is not None and self.sampling != "random":
            raise MmstError("--seed seeds --sampling random, and --sampling is top; add --sampling random or drop --seed")
        if self.index not in INDEXES:
            raise MmstError(f"--index must be one of {', '.join(INDEXES)}, got {self.index!r}")
        if self.output_format not in FORMATS:
            raise MmstError(f"--format must be one of {', '.join(FORMATS)}, got {self.output_format!r}")
        if self.keep_incomplete and self.output_format == "triplet":
            raise MmstError("--keep-incomplete needs --format labeled-pair or labeled-list: triplet rows need every negative")
        if self.reranker_threshold is not None and not self.reranker:
            raise MmstError("--reranker-threshold sets what --reranker counts as relevant; add --reranker or drop it")
        if self.columns is not None and len(self.columns) != 2:
            raise MmstError(f"--columns takes two columns, anchor,positive; got {','.join(self.columns)}")
        check_devices(self.device)
        if Path(self.output).suffix.lower() != ".jsonl":
            raise MmstError(f"-o {self.output}: mined rows are written as jsonl; name a .jsonl file")


def _materialised(values: list[Any], sampling_rate: int | None) -> list[Any]:
    """Values as ``model.encode`` takes them: audio file paths decoded at the model's rate."""
    from mmst_cli.core.data.media import string_modality
    from mmst_cli.core.data.audio import decode_audio

    out = []
    for value in values:
        if isinstance(value, str) and string_modality(value) == ("audio", "file"):
            if sampling_rate is None:
                raise MmstError(f"{value}: the model takes no audio; choose a model that does")
            value = {"array": decode_audio(Path(value), sampling_rate), "sampling_rate": sampling_rate}
        out.append(value)
    return out


def _encode(model, values: list[Any], side: str, sampling_rate: int | None, batch_size: int, track: Tracker) -> np.ndarray:
    """Encode ``values`` as ``side`` (query / document) a block at a time, so audio is decoded a block at a time."""
    from mmst_cli.core.encode.encoding import encode_inputs

    advance = track({"query": "encoding queries", "document": "encoding documents"}[side], len(values))
    blocks = []
    for start in range(0, len(values), 1024):
        block = _materialised(values[start : start + 1024], sampling_rate)
        # A pool's workers decode their own images, as in ``mmst encode``.
        workers = 0 if isinstance(model, PooledModel) else None
        blocks.append(encode_inputs(model, block, task=side, batch_size=batch_size, on_progress=advance, decode_workers=workers))
    return np.concatenate(blocks) if blocks else np.empty((0, 0), dtype=np.float32)


def default_cache_dir() -> Path:
    """``$MMST_CACHE/mine`` or ``~/.cache/mmst/mine``."""
    return Path(os.environ.get("MMST_CACHE") or Path.home() / ".cache" / "mmst") / "mine"


def _model_identity(source) -> str:
    """The model's reference, plus where and when its files were last written when it is a folder."""
    location = Path(source.location)
    if not location.is_dir():
        return source.reference
    newest = max((path.stat().st_mtime_ns for path in location.rglob("*") if path.is_file()), default=0)
    return f"{location.resolve()}@{newest}"


def _cached_corpus_embeddings(
    model, sampling_rate: int | None, identity: str, mining: MiningSet, hashes: list[str], options: MineOptions, track: Tracker
):
    """The documents' embeddings, from the cache when the model and the documents' content match.

    Returns:
        The embeddings and ``hit`` or ``written``.
    """
    from mmst_cli.core.outputs import atomic_path

    key = hashlib.sha1(json.dumps([identity, hashes]).encode()).hexdigest()
    folder = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
    path = folder / f"{key}.npy"
    if path.is_file():
        embeddings = np.load(path)
        if embeddings.shape[0] == len(hashes):
            return embeddings, "hit"
    embeddings = _encode(model, mining.documents, "document", sampling_rate, options.batch_size, track)
    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as stream:
            np.save(stream, embeddings)
    except OSError:  # a read-only cache costs a re-encode next time, never this run
        return embeddings, "not written"
    return embeddings, "written"


def default_range_max(options: MineOptions, max_positives: int) -> int:
    """Sentence Transformers' default: ten times the negatives when a margin or score rule may reject many."""
    if options.range_max is not None:
        return options.range_max
    bounded = any(v is not None for v in (options.absolute_margin, options.relative_margin, options.max_score, options.min_score))
    return options.range_min + options.num_negatives * (10 if bounded else 1) + max_positives


def choose_negatives(
    mining: MiningSet,
    hashes: list[str],
    scores: np.ndarray,
    indices: np.ndarray,
    positive_scores: dict[int, float],
    options: MineOptions,
    rerank: Callable[[int, list[int]], list[float]] | None = None,
) -> tuple[dict[int, list[tuple[int, float]]], dict[str, int]]:
    """Apply :data:`RULES` to each anchor's ranked candidates and pick its negatives.

    Args:
        mining: The anchors, documents and relevance.
        hashes: :func:`content_hash` per document.
        scores / indices: The search's ranking per anchor (best first).
        positive_scores: Anchor -> its hardest (lowest-scoring) positive's score, for the margins.
        options: The rule settings.
        rerank: ``(anchor, documents) -> scores`` of the reranker, or ``None``.

    Returns:
        Anchor -> ``[(document, score)]`` chosen, and how many candidates each rule removed.
    """
    removed = dict.fromkeys(RULES, 0)
    chosen: dict[int, list[tuple[int, float]]] = {}
    generator = random.Random(DEFAULT_SEED if options.seed is None else options.seed)
    for anchor in range(len(mining.anchors)):
        positives = mining.relevant.get(anchor, set())
        positive_hashes = {hashes[p] for p in positives}
        positive_groups = {mining.groups[p] for p in positives} - {None}
        floor = positive_scores[anchor]
        survivors: list[tuple[int, float]] = []
        for document, score in zip(indices[anchor].tolist()[options.range_min :], scores[anchor].tolist()[options.range_min :]):
            if document < 0:  # FAISS pads a short list of an inverted-file index with -1
                continue
            rule = _rejecting_rule(
                document, score, positives, positive_hashes,
                positive_groups, hashes, mining.groups, floor, options,
            )  # fmt: skip
            if rule:
                removed[rule] += 1
            else:
                survivors.append((document, score))
        if rerank is not None and survivors:
            verdicts = rerank(anchor, [document for document, _ in survivors])
            threshold = RERANKER_THRESHOLD if options.reranker_threshold is None else options.reranker_threshold
            removed["reranker"] += sum(v >= threshold for v in verdicts)
            survivors = [item for item, v in zip(survivors, verdicts) if v < threshold]
        if options.sampling == "random":
            survivors = generator.sample(survivors, len(survivors))
        negatives: list[tuple[int, float]] = []
        seen: set[str] = set()
        for document, score in survivors:
            if len(negatives) == options.num_negatives:
                break
            if hashes[document] in seen:
                removed["same_content_as_negative"] += 1
                continue
            seen.add(hashes[document])
            negatives.append((document, score))
        chosen[anchor] = sorted(negatives, key=lambda item: -item[1])
    return chosen, removed


def _rejecting_rule(document, score, relevant, positive_hashes, positive_groups, hashes, groups, floor, options) -> str | None:
    """The first rule of :data:`RULES` (reranker aside) that rejects a candidate, or ``None``."""
    if document in relevant:
        return "relevant"
    if hashes[document] in positive_hashes:
        return "same_content_as_positive"
    if groups[document] is not None and groups[document] in positive_groups:
        return "same_group_as_positive"
    if options.absolute_margin is not None and score + options.absolute_margin > floor:
        return "absolute_margin"
    if options.relative_margin is not None and score > floor - abs(floor) * options.relative_margin:
        return "relative_margin"
    if options.max_score is not None and score > options.max_score:
        return "max_score"
    if options.min_score is not None and score < options.min_score:
        return "min_score"
    return None


def _check_modalities(model, mining: MiningSet) -> None:
    """Refuse anchors or documents of a modality the model cannot embed (one line naming it)."""
    from mmst_cli.core.encode.encoding import modality_of

    for side, values in (("anchors", mining.anchors), ("documents", mining.documents)):
        for modality in sorted({modality_of(value) for value in values}):
            if not model.supports(modality):
                taken = ", ".join(m if isinstance(m, str) else "+".join(m) for m in model.modalities)
                raise MmstError(
                    f"the {side} of {mining.source!r} hold {modality}, but the model takes only {taken}; "
                    "pick a model that takes them (`mmst detect MODEL`)"
                )


def _reference(value: Any, folder: Path) -> Any:
    """How a document is written: texts as they are, media paths relative to the output's folder.

    mmst resolves a relative media path against its data file's folder, so the output trains as is.
    """
    from mmst_cli.core.data.media import string_modality

    value = page_reference(value) or value
    if isinstance(value, str) and string_modality(value)[1] in ("file", "pdf"):
        return Path(os.path.relpath(value, folder)).as_posix()
    return value


def _output_rows(mining: MiningSet, chosen, positive_scores: dict[tuple[int, int], float], options: MineOptions):
    """The rows of ``--format``, with ``scores`` when asked; also counts anchors left short."""
    folder = Path(options.output).expanduser().resolve().parent
    ref = lambda value: _reference(value, folder)  # noqa: E731 - one short local alias
    rows: list[dict[str, Any]] = []
    short_rows = 0
    labelled: set[int] = set()
    for anchor, positive in mining.rows:
        negatives = chosen[anchor]
        if len(negatives) < options.num_negatives:
            short_rows += 1
            if not options.keep_incomplete:
                continue
        scores = [positive_scores[(anchor, positive)]] + [score for _, score in negatives]
        query, documents = ref(mining.anchors[anchor]), [ref(mining.documents[positive])]
        documents += [ref(mining.documents[document]) for document, _ in negatives]
        if options.output_format == "triplet":
            row = {"anchor": query, "positive": documents[0]}
            row.update({f"negative_{i}": document for i, document in enumerate(documents[1:], start=1)})
            rows.append(row | ({"scores": scores} if options.scores else {}))
        elif options.output_format == "labeled-list":
            row = {"query": query, "documents": documents, "labels": [1] + [0] * (len(documents) - 1)}
            rows.append(row | ({"scores": scores} if options.scores else {}))
        else:  # an anchor's negatives are written once, however many positives it has
            fresh = anchor not in labelled
            labelled.add(anchor)
            for i, (document, score) in enumerate(zip(documents, scores)):
                if i == 0 or fresh:
                    rows.append({"query": query, "document": document, "label": int(i == 0)} | ({"score": score} if options.scores else {}))
    return rows, short_rows


def run_mining(options: MineOptions, *, track: Tracker = no_progress) -> dict[str, Any]:
    """The whole ``mmst mine`` job: read, encode (or reuse the cached corpus), search, filter, write.

    Returns:
        The summary: counts of anchors, documents, rows written and left short, and the candidates
        each rule of :data:`RULES` removed.
    """
    from mmst_cli.core.models.checkpoints import audio_sampling_rate
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model
    from mmst_cli.core.outputs import atomic_path, ensure_writable_file
    from mmst_cli.core.retrieval.reranking import load_reranker_for
    from mmst_cli.core.retrieval.search import FAISS_MIN_DOCUMENTS, faiss_search, model_similarity, pair_scores, search

    options.validate()
    output = Path(options.output).expanduser()
    ensure_writable_file(output, "-o")
    source = locate_model(options.model)
    if source.kind != "embedder":
        raise MmstError(f"--model {source.reference!r} is a {source.kind}; mmst mine ranks with an embedder")
    retrieval_folder = is_retrieval_folder(Path(options.data).expanduser())
    if retrieval_folder and options.group_column:
        raise MmstError("--group-column applies to pair tables and corpus tables, not to BEIR or mteb folders")
    # Tables and corpora are checked before the weights load; a BEIR folder's audio needs the model's rate.
    mining = None if retrieval_folder else pair_set(options)
    corpus_size = add_corpus(mining, options) if options.corpus and mining else 0
    devices = split_devices(options.device)
    model = load_model(source, trust_remote_code=options.trust_remote_code, device=loading_device(devices))
    sampling_rate = audio_sampling_rate(model)
    if mining is None:
        mining = task_set(options, sampling_rate)
        corpus_size = add_corpus(mining, options) if options.corpus else 0
    _check_modalities(model, mining)
    hashes = [content_hash(value) for value in mining.documents]

    pool = model.start_multi_process_pool(devices) if len(devices) > 1 else None
    try:
        encoder = model if pool is None else PooledModel(model, pool)
        query_vectors = _encode(encoder, mining.anchors, "query", sampling_rate, options.batch_size, track)
        document_vectors, cache = _cached_corpus_embeddings(encoder, sampling_rate, _model_identity(source), mining, hashes, options, track)
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)
    similarity = model_similarity(model)
    max_positives = max(len(documents) for documents in mining.relevant.values())
    depth = min(default_range_max(options, max_positives), len(mining.documents))
    index = options.index
    if index == "auto":
        index = "faiss" if len(mining.documents) >= FAISS_MIN_DOCUMENTS and similarity != "manhattan" else "exact"
    if index == "faiss" and similarity == "manhattan":
        raise MmstError("--index faiss: the model scores with manhattan distance, which FAISS does not index; use --index exact")
    find = faiss_search if index == "faiss" else search
    scores, indices = find(query_vectors, document_vectors, depth, similarity=similarity, on_progress=track("searching", len(mining.anchors)))
    row_anchor = [a for a, _ in mining.rows]
    row_positive = [p for _, p in mining.rows]
    row_scores = pair_scores(query_vectors[row_anchor], document_vectors[row_positive], similarity=similarity)
    positive_scores = {row: float(score) for row, score in zip(mining.rows, row_scores)}
    hardest: dict[int, float] = {}
    for (anchor, _), score in positive_scores.items():
        hardest[anchor] = min(score, hardest.get(anchor, score))

    rerank = None
    if options.reranker:
        reranker = load_reranker_for(
            options.reranker, {"anchors": mining.anchors, "documents": mining.documents}, mining.source,
            trust_remote_code=options.trust_remote_code,
        )  # fmt: skip
        advance = track("reranking", len(mining.anchors))

        def rerank(anchor: int, documents: list[int]) -> list[float]:
            query = _materialised([mining.anchors[anchor]], sampling_rate)[0]
            candidates = _materialised([mining.documents[d] for d in documents], sampling_rate)
            predicted = reranker.predict(
                [(query, candidate) for candidate in candidates], batch_size=options.batch_size, show_progress_bar=False
            )  # fmt: skip
            advance(1)
            return np.asarray(predicted, dtype=np.float32).reshape(len(documents), -1)[:, 0].tolist()

    chosen, removed = choose_negatives(mining, hashes, scores, indices, hardest, options, rerank)
    rows, short_rows = _output_rows(mining, chosen, positive_scores, options)
    if not rows:
        raise MmstError(
            f"no anchor of {mining.source!r} got {options.num_negatives} negatives; lower --num-negatives, raise "
            "--range-max, loosen the margins, add a --corpus, or pass --keep-incomplete with a labeled format"
        )
    with atomic_path(output) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    outside = sum(
        1 for row in rows for value in row.values() for item in (value if isinstance(value, list) else [value])
        if isinstance(item, str) and item.startswith("../")
    )  # fmt: skip
    notes = list(mining.notes)
    if outside:
        notes.append(
            f"{outside} media references lie outside the output's folder; train with --allow-outside-root, "
            "or write the output in the data's folder"
        )
    return {
        "model": source.reference,
        "data": options.data,
        "corpus": options.corpus,
        "output": str(output),
        "format": options.output_format,
        "anchors": len(mining.anchors),
        "documents": len(mining.documents),
        "corpus_documents": corpus_size,
        "searched_per_anchor": depth,
        "index": index,
        "rows_written": len(rows),
        "rows_short_of_negatives": short_rows,
        "short_rows_kept": options.keep_incomplete,
        "removed": removed,
        "corpus_cache": cache,
        "notes": notes,
    }
