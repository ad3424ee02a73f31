"""The checked inputs of an encode job: ids and inputs in order, materialised a chunk at a time.

:func:`mmst_cli.core.encode.inputs.read_inputs` makes them; the encode job, ``mmst index``,
``mmst search`` and ``mmst mine`` consume them. Strings (texts, media paths, PDF pages) are
:class:`ReferenceInputs`; a dataset column of HF ``Image`` / ``Audio`` features, media bytes or
frame lists is :class:`FeatureInputs`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmst_cli.core.data.media import audio_length_problem
from mmst_cli.core.errors import MmstError


@dataclass
class EncodeInputs:
    """Ids and inputs in order, checked and ready to be materialised a chunk at a time.

    Subclasses hold the inputs; :meth:`chunk` returns what ``model.encode`` takes.

    Attributes:
        source: The input reference, for messages and the summary.
        ids: One id per row, in input order (ints or strings).
        modalities: Modality -> number of rows (known after :meth:`bind` for dataset media columns).
        first_rows: Modality -> a description of its first row, for messages.
        fingerprint: A hash of the ids and inputs, recorded in the resume manifest.
        column: The table column embedded; ``None`` for line and folder inputs.
        notes: Choices made for the user (which column), shown on stderr.
        skipped: Rows left out because they are unusable (``skip_bad``).
        pdf_pages: One record per PDF page row (id, file, page, width and height in points),
            stored with the output.
    """

    source: str
    ids: list[Any]
    modalities: dict[str, int] = field(default_factory=dict)
    first_rows: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    column: str | None = None
    notes: list[str] = field(default_factory=list)
    skipped: int = 0
    pdf_pages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of rows."""
        return len(self.ids)

    def bind(self, model) -> None:
        """Finish the checks that need the loaded model, and check it takes every modality.

        Args:
            model: The loaded SentenceTransformer.

        Raises:
            MmstError: when the model cannot take one of the input modalities.
        """
        supports = getattr(model, "supports", None)
        for modality, count in self.modalities.items():
            if supports is not None and not supports(modality):
                taken = ", ".join(m if isinstance(m, str) else "+".join(m) for m in model.modalities)
                raise MmstError(
                    f"input {self.source!r} has {count} {modality} row(s) (first: {self.first_rows[modality]}), "
                    f"but the model takes only {taken}; pick another model or other inputs"
                )

    def chunk(self, start: int, stop: int) -> list[Any]:
        """The inputs of rows ``start`` to ``stop`` (exclusive), as ``model.encode`` takes them."""
        raise NotImplementedError

    def sources(self) -> list[tuple[str | None, str | None, str]]:
        """Per row ``(media reference, text, modality)``: the file as given, made absolute
        (``/a/b.pdf#page=3``), ``None`` for text and dataset media; the row's text (a page's with
        ``--pdf-text``), ``None`` for media. ``mmst index`` keeps them: search never reads the corpus."""
        raise NotImplementedError

    def subset(self, rows: Sequence[int]) -> EncodeInputs:
        """These inputs restricted to ``rows`` (ascending), fingerprinted anew (for ``mmst index --add``)."""
        raise NotImplementedError


@dataclass
class ReferenceInputs(EncodeInputs):
    """Inputs given as strings: texts, media file paths made absolute, and PDF pages.

    Audio files are decoded (and resampled to the model's rate) a chunk at a time, so a large
    audio collection is never held in memory at once. PDF pages stay :class:`PdfPage` references
    until :func:`mmst_cli.core.encode.encoding.encode_inputs` renders them, a few batches ahead.

    Attributes:
        values: One value per row: the text, the absolute path of the media file, or a PDF page.
        audio_rows: Rows whose value is an audio file path.
        sampling_rate: The model's audio rate (set by :meth:`bind`).
        references: Per row, the media file as given, made absolute (``/a/b.pdf#page=3`` for a
            page; an image may be encoded from a converted copy), or ``None`` for text.
        row_modalities: Per row, the modality it is embedded as (``text`` for ``--pdf-text`` pages).
    """

    values: list[Any] = field(default_factory=list)
    audio_rows: set[int] = field(default_factory=set)
    sampling_rate: int | None = None
    references: list[str | None] = field(default_factory=list)
    row_modalities: list[str] = field(default_factory=list)

    def bind(self, model) -> None:
        super().bind(model)
        if self.audio_rows:
            from mmst_cli.core.models.checkpoints import audio_sampling_rate

            self.sampling_rate = audio_sampling_rate(model)
            if self.sampling_rate is None:
                raise MmstError(f"input {self.source!r} has audio but the model has no audio feature extractor")

    def chunk(self, start: int, stop: int) -> list[Any]:
        if not self.audio_rows:
            return self.values[start:stop]
        from mmst_cli.core.data.audio import decode_audio

        batch: list[Any] = []
        for row in range(start, stop):
            value = self.values[row]
            if row in self.audio_rows:
                array = decode_audio(Path(value), self.sampling_rate)
                problem = audio_length_problem(array.size, self.sampling_rate)
                if problem:  # the file's header passed; the clip came out shorter after resampling
                    raise MmstError(f"input {self.source!r}: {value}: {problem}")
                value = {"array": array, "sampling_rate": self.sampling_rate}
            batch.append(value)
        return batch

    def sources(self) -> list[tuple[str | None, str | None, str]]:
        return [
            (reference, value if modality == "text" else None, modality)
            for reference, value, modality in zip(self.references, self.values, self.row_modalities)
        ]

    def subset(self, rows: Sequence[int]) -> ReferenceInputs:
        kept_ids = [self.ids[row] for row in rows]
        id_set = set(kept_ids)
        new_row = {row: position for position, row in enumerate(rows)}
        modalities: dict[str, int] = {}
        for row in rows:
            modalities[self.row_modalities[row]] = modalities.get(self.row_modalities[row], 0) + 1
        values = [self.values[row] for row in rows]
        return ReferenceInputs(
            source=self.source, ids=kept_ids, modalities=modalities,
            first_rows={name: label for name, label in self.first_rows.items() if name in modalities},
            fingerprint=inputs_fingerprint(kept_ids, values), column=self.column, notes=[], skipped=self.skipped,
            pdf_pages=[page for page in self.pdf_pages if page["id"] in id_set], values=values,
            audio_rows={new_row[row] for row in self.audio_rows if row in new_row}, sampling_rate=self.sampling_rate,
            references=[self.references[row] for row in rows], row_modalities=[self.row_modalities[row] for row in rows],
        )  # fmt: skip


@dataclass
class FeatureInputs(EncodeInputs):
    """Inputs in a dataset column of images, audio, media bytes or video frame lists (HF features).

    The column is checked by :func:`mmst_cli.core.data.tables.prepare_media` in :meth:`bind`, because audio
    is decoded there at the model's rate.

    Attributes:
        table: A ``datasets.Dataset`` with only the input column (:attr:`column`).
        media_root: Passed to ``prepare_media``.
        allow_outside_root: Passed to ``prepare_media``: media paths in the cells may leave the folder.
    """

    table: Any = None
    media_root: Path | None = None
    allow_outside_root: bool = False

    def bind(self, model) -> None:
        from mmst_cli.core.data.tables import prepare_media
        from mmst_cli.core.models.checkpoints import audio_sampling_rate

        prepared = prepare_media(
            self.table, self.source, media_root=self.media_root, audio_sampling_rate=audio_sampling_rate(model),
            allow_outside_root=self.allow_outside_root,
        )  # fmt: skip
        self.table = prepared.dataset
        modality = prepared.column_modalities[self.column]
        self.modalities = {modality: len(self.table)}
        self.first_rows = {modality: f"row 1, column {self.column!r}"}
        super().bind(model)

    def chunk(self, start: int, stop: int) -> list[Any]:
        import numpy as np

        batch = self.table[start:stop][self.column]
        return [
            {"array": np.asarray(cell["array"], dtype=np.float32), "sampling_rate": cell["sampling_rate"]}
            if isinstance(cell, dict) and "array" in cell
            else cell
            for cell in batch
        ]

    def sources(self) -> list[tuple[str | None, str | None, str]]:
        modality = type(self.table.features[self.column]).__name__.lower()  # Image, Audio; else bytes or frames
        return [(None, None, modality if modality in ("image", "audio") else "media")] * self.count

    def subset(self, rows: Sequence[int]) -> FeatureInputs:
        table = self.table.select(list(rows))
        ids = [self.ids[row] for row in rows]
        return FeatureInputs(
            source=self.source, ids=ids, fingerprint=inputs_fingerprint(ids, [str(getattr(table, "_fingerprint", "")), self.column]),
            column=self.column, table=table, media_root=self.media_root, allow_outside_root=self.allow_outside_root,
        )  # fmt: skip


def inputs_fingerprint(*sequences: Sequence[Any]) -> str:
    """A sha256 over every item of ``sequences`` (ids, input texts and paths, table fingerprints)."""
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(b"\x1e")
        for item in sequence:
            digest.update(json.dumps(item, ensure_ascii=False, default=str).encode("utf8", "surrogatepass") + b"\n")
    return digest.hexdigest()
