"""What ``mmst mine`` mines from: anchors, positives and documents as references, identified by content.

Every form is read and checked through the gates the other commands use: a pair table's columns as
``mmst encode`` reads a column (:func:`mmst_cli.core.encode.inputs.read_inputs`: texts, media paths
made absolute and checked, page references passed through), BEIR and mteb / ViDoRe folders as
``mmst evaluate`` reads them (:mod:`mmst_cli.core.retrieval.tasks`, qrels included), and a corpus
as ``mmst encode`` reads its inputs (a table column, a ``.txt`` file, a folder of images or audio).

Media stays a reference (a path), so the mined rows name the files the user gave (media embedded
in a table is written out as files first, :mod:`mmst_cli.core.retrieval.mining_media`); what a
document *is* comes from :func:`content_hash`, so two paths to the same picture are one document.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError


@dataclass
class MiningSet:
    """Anchors, documents and relevance, as references ready to encode and to write back.

    Attributes:
        anchors: One prepared value per distinct anchor (text, absolute media path, ...).
        documents: One prepared value per distinct document reference.
        rows: ``(anchor index, positive document index)`` per output row, in data order.
        relevant: Anchor index -> documents judged relevant (its positives, and qrels).
        groups: Document index -> group (``--group-column``); ``None`` when ungrouped.
        source: Where the data came from.
        notes: Things the user should know (qrels naming unknown ids, ...).
    """

    anchors: list[Any] = field(default_factory=list)
    documents: list[Any] = field(default_factory=list)
    rows: list[tuple[int, int]] = field(default_factory=list)
    relevant: dict[int, set[int]] = field(default_factory=dict)
    groups: list[Any] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    _anchor_index: dict[Any, int] = field(default_factory=dict)
    _document_index: dict[Any, int] = field(default_factory=dict)

    def anchor(self, value: Any) -> int:
        """The index of an anchor; identical anchors are one (their positives are all relevant)."""
        key = _identity(value)
        if key not in self._anchor_index:
            self._anchor_index[key] = len(self.anchors)
            self.anchors.append(value)
        return self._anchor_index[key]

    def document(self, value: Any, group: Any = None) -> int:
        """The index of a document reference; the same reference twice is one document."""
        key = _identity(value)
        if key not in self._document_index:
            self._document_index[key] = len(self.documents)
            self.documents.append(value)
            self.groups.append(group)
        elif group is not None and self.groups[self._document_index[key]] is None:
            self.groups[self._document_index[key]] = group
        return self._document_index[key]

    def add_row(self, anchor: Any, positive: Any, group: Any = None) -> None:
        """Add one (anchor, positive) row."""
        a, p = self.anchor(anchor), self.document(positive, group)
        self.rows.append((a, p))
        self.relevant.setdefault(a, set()).add(p)


def page_reference(value: Any) -> str | None:
    """``/abs/report.pdf#page=3`` for a checked PDF page (:class:`~mmst_cli.core.data.documents.PdfPage`), else ``None``."""
    from mmst_cli.core.data.documents import PdfPage

    return f"{value.path}#page={value.number}" if isinstance(value, PdfPage) else None


def _identity(value: Any) -> Any:
    """A hashable key for a prepared value: strings and PDF pages as references, other values by content."""
    if isinstance(value, str):
        return value
    if page_reference(value) is not None:
        return page_reference(value)
    from mmst_cli.core.retrieval.tasks import content_key

    return content_key(value)


def content_hash(value: Any) -> str:
    """What a document *is*: the SHA-1 of a media file's bytes, or of a text, or of decoded media.

    A PDF page (a :class:`~mmst_cli.core.data.documents.PdfPage` or ``report.pdf#page=3``) hashes
    its file's bytes with the page, so two copies of the same PDF give the same page the same hash.
    """
    from mmst_cli.core.data.media import string_modality
    from mmst_cli.core.retrieval.tasks import content_key

    value = page_reference(value) or value
    if not isinstance(value, str):
        return content_key(value)
    modality, source = string_modality(value)
    if source not in ("file", "pdf"):
        return "t:" + hashlib.sha1(value.encode("utf-8")).hexdigest()
    path, _, fragment = value.partition("#")
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    digest.update(fragment.encode())
    return f"{modality}:{digest.hexdigest()}"


def media_folder(options: Any) -> Path:
    """Where embedded media is written: ``--media-out``, or ``<output stem>-media/`` beside the output."""
    if options.media_out:
        return Path(options.media_out).expanduser()
    output = Path(options.output).expanduser()
    return output.with_name(output.stem + "-media")


def _reference_values(inputs: Any, options: Any) -> list[Any]:
    """The values of read inputs as references: a column of embedded media is written out as files first."""
    from mmst_cli.core.encode.checked_inputs import ReferenceInputs
    from mmst_cli.core.retrieval.mining_media import write_embedded_media

    if isinstance(inputs, ReferenceInputs):
        return inputs.values
    return write_embedded_media(inputs, media_folder(options))


def pair_set(options: Any) -> MiningSet:
    """Rows of a pair table (``options``: a ``MineOptions``): each column read and checked as ``mmst encode`` reads one."""
    from mmst_cli.core.data.tables import load_table
    from mmst_cli.core.encode.inputs import read_inputs

    table = load_table(options.data, config=options.data_config, split=options.split)
    columns = options.columns or [name for name in table.column_names if name != options.group_column][:2]
    if len(columns) < 2:
        raise MmstError(f"data {options.data!r} needs two columns, anchor and positive; it has {table.column_names}")
    if options.group_column is not None and options.group_column not in table.column_names:
        raise MmstError(
            f"--group-column {options.group_column!r} is not a column of {options.data!r}; its columns are {table.column_names}"
        )
    sides = []
    for column in columns:
        inputs = read_inputs(
            options.data, column=column, split=options.split, data_config=options.data_config,
            media_root=options.media_root, allow_outside_root=options.allow_outside_root,
        )  # fmt: skip
        sides.append(_reference_values(inputs, options))
    groups = table[options.group_column] if options.group_column else [None] * len(table)
    mining = MiningSet(source=options.data)
    for anchor, positive, group in zip(*sides, groups):
        mining.add_row(anchor, positive, group)
    return mining


def task_set(options: Any, sampling_rate: int | None) -> MiningSet:
    """Rows of a BEIR or mteb / ViDoRe folder: one per (query, relevant document)."""
    from mmst_cli.core.retrieval.tasks import MediaOptions, load_retrieval_task

    media = MediaOptions(
        media_root=Path(options.media_root) if options.media_root else None, audio_sampling_rate=sampling_rate,
        allow_outside_root=options.allow_outside_root,
    )  # fmt: skip
    task = load_retrieval_task(options.data, split=options.split or "train", config=options.data_config, media=media)
    _write_decoded_media(task.queries, "query", options)
    _write_decoded_media(task.corpus, "document", options)
    mining = MiningSet(source=options.data, notes=list(task.warnings))
    for value in task.corpus.values():
        mining.document(value)
    for query_id, judged in task.qrels.items():
        for doc_id, relevance in judged.items():
            if relevance > 0:
                mining.add_row(task.queries[query_id], task.corpus[doc_id])
        # Documents judged 0 (not relevant) stay candidates, the hardest ones there are.
    return mining


def _write_decoded_media(items: dict[str, Any], part: str, options: Any) -> None:
    """Replace decoded images and audio (as BEIR and mteb / ViDoRe folders hold them) by files in
    the media folder, in place, so that the mined rows can name them; references stay as they are."""
    from mmst_cli.core.data.documents import PdfPage
    from mmst_cli.core.retrieval.mining_media import write_decoded_media

    for item_id, value in items.items():
        if not isinstance(value, (str, PdfPage)):
            items[item_id] = write_decoded_media(value, media_folder(options), f"{options.data!r}, {part} {item_id!r}")


def add_corpus(mining: MiningSet, options: Any) -> int:
    """Add ``--corpus`` documents (checked like ``mmst encode`` inputs); returns how many it held."""
    from mmst_cli.core.encode.inputs import read_inputs

    inputs = read_inputs(
        options.corpus, column=options.corpus_column, media_root=options.media_root,
        allow_outside_root=options.allow_outside_root,
    )  # fmt: skip
    values = _reference_values(inputs, options)
    groups: list[Any] = [None] * len(values)
    if options.group_column and inputs.column is not None:
        from mmst_cli.core.data.tables import load_table

        table = load_table(options.corpus)
        if options.group_column in table.column_names:
            groups = table[options.group_column]
    for value, group in zip(values, groups):
        mining.document(value, group)
    return len(values)
