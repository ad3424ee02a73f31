"""The ``mmst encode`` job: texts, images and audio to embeddings on disk (or stdout), in chunks.

The job runs in five steps, each a function or class of this module:

1. :func:`read_inputs` turns the input reference (a jsonl / csv / parquet / txt file, a folder of
   images or audio, ``-`` for stdin, a ``save_to_disk`` folder or a Hub dataset) into an
   :class:`EncodeInputs`: ids plus one input per row, every media reference checked before any
   model work (a missing file is an error naming its row, never text);
2. the model is located and loaded (:mod:`mmst_cli.core.models`), and the inputs are bound to it
   (:meth:`EncodeInputs.bind`: media columns of a dataset are checked by
   :func:`~mmst_cli.core.data.prepare_media`, and every modality must be one the model takes);
3. rows are encoded in chunks of :attr:`EncodeOptions.chunk_size` rows, in input order, by
   :func:`~mmst_cli.core.encoding.encode_inputs` (which groups each chunk by modality and puts the
   rows back in order), on one device or on a pool of processes (``--device cuda:0,cuda:1``);
4. each finished chunk is saved as a float32 ``.npy`` part in ``.<output name>.parts/`` next to the
   output, with a ``manifest.json`` of the inputs and options, so ``--resume`` skips finished chunks;
5. the parts are converted to the output precision and written to a temporary file in the output's
   folder, which is then renamed onto the output (never a truncated file under the final name), and
   the parts folder is deleted. ``-o -`` streams jsonl to stdout instead, chunk by chunk, with no parts.

This module imports no ML library at module level; :mod:`mmst_cli.cli.encode` imports it inside
the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mmst_cli.core.data import DATA_FILE_BUILDERS, NON_CONTENT_COLUMNS, PROBLEMS_SHOWN, is_frame_list_feature
from mmst_cli.core.errors import EXIT_INTERRUPTED, MmstError
from mmst_cli.core.media import classify_string, media_modality_of_name

#: Output formats, chosen by ``--format`` or by the output's extension.
FORMATS = ("npy", "parquet", "jsonl", "safetensors")

#: ``--precision`` values. ``int8`` and ``ubinary`` use Sentence Transformers' ``quantize_embeddings``.
PRECISIONS = ("float32", "float16", "int8", "ubinary")

#: ``--task`` values: ``encode_query`` / ``encode_document`` instead of ``encode``.
TASKS = ("query", "document")

#: Rows encoded (and saved as one resumable part) at a time.
DEFAULT_CHUNK_SIZE = 4096

#: Column names taken as the input, in this order, when a table has several content columns.
PREFERRED_COLUMNS = ("input", "text", "sentence", "content", "image", "audio", "path", "file")

#: Plain-text files read like stdin: one text or media path per line.
LINE_FILE_EXTENSIONS = (".txt",)

#: Media a folder input picks up (by extension, recursively).
FOLDER_MODALITIES = ("image", "audio")

#: Bumped when the parts layout changes, so an old parts folder is never misread.
MANIFEST_VERSION = 1

#: The manifest entries that must match for ``--resume`` to reuse finished parts. Precision and
#: format are not among them: parts are float32 and converted only when the output is written.
RESUME_KEYS = ("count", "fingerprint", "model", "task", "prompt", "dim", "normalize", "chunk_size")


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass
class EncodeOptions:
    """Everything ``mmst encode`` was asked to do.

    Attributes:
        inputs: A jsonl / csv / parquet / txt file, a folder of images or audio (recursive), ``-``
            for stdin (one text or media path per line), a ``save_to_disk`` folder or a Hub
            dataset id. Required.
        output: The output file, or ``-`` to stream jsonl to stdout. Required.
        model: Model folder or Hub id; ``None`` (the default) for the embedded default model.
        column: The table column to embed; ``None`` picks one (see :func:`pick_column`).
        id_column: The table column whose values become the ids; ``None`` (the default) uses the
            0-based row number. Folders always use relative paths, line inputs the 0-based position.
        split: Dataset split to read; ``None`` for ``train``.
        data_config: Hub dataset configuration; ``None`` for the default one.
        media_root: Folder relative media paths resolve against; ``None`` for the input file's
            folder (the current directory for stdin and Hub datasets).
        allow_outside_root: Accept media paths in a table that resolve outside its folder (or
            ``media_root``); ``False`` (the default) refuses them.
        task: ``query`` or ``document`` to use ``encode_query`` / ``encode_document``; ``None`` (the
            default) for plain ``encode``.
        prompt: Text prepended to every text input (overrides the task's prompt); ``None`` for none.
        batch_size: Inputs per forward pass; default 32.
        chunk_size: Rows encoded and saved as one resumable part at a time; default 4096.
        dim: Keep the first ``dim`` dimensions (Matryoshka truncation); ``None`` keeps all.
        normalize: L2-normalise the vectors (after truncation); default off.
        precision: ``float32`` (default), ``float16``, ``int8`` or ``ubinary``.
        format: ``npy``, ``parquet``, ``jsonl`` or ``safetensors``; ``None`` takes the output's
            extension (``-o -`` is always jsonl).
        resume: Continue an interrupted run from its parts folder; default off (start over).
        device: ``None`` lets Sentence Transformers choose; one device (``cuda:0``, ``cpu``) runs
            in this process; several, comma-separated (``cuda:0,cuda:1`` or ``cpu,cpu``), start one
            encoding process per entry.
        trust_remote_code: Run custom modelling code from the model's repository; default off.
        decode_workers: Threads decoding image files ahead of the model; ``None`` (default) for one
            per core, at most 4; 0 leaves decoding to the model. Unused with several devices (each
            encoding process decodes its own inputs).
    """

    inputs: str
    output: str
    model: str | None = None
    column: str | None = None
    id_column: str | None = None
    split: str | None = None
    data_config: str | None = None
    media_root: str | None = None
    allow_outside_root: bool = False
    task: str | None = None
    prompt: str | None = None
    batch_size: int = 32
    chunk_size: int = DEFAULT_CHUNK_SIZE
    dim: int | None = None
    normalize: bool = False
    precision: str = "float32"
    format: str | None = None
    resume: bool = False
    device: str | None = None
    trust_remote_code: bool = False
    decode_workers: int | None = None

    @property
    def to_stdout(self) -> bool:
        """Whether the output is ``-`` (jsonl on stdout)."""
        return self.output == "-"

    @property
    def output_format(self) -> str:
        """The resolved output format (valid only after :meth:`validate`)."""
        if self.to_stdout:
            return "jsonl"
        if self.format:
            return self.format
        return Path(self.output).suffix.lower().lstrip(".")

    @property
    def devices(self) -> list[str]:
        """``--device`` split on commas; empty when not given."""
        if not self.device:
            return []
        return [item.strip() for item in self.device.split(",")]

    def validate(self) -> None:
        """Check the options on their own, before any file or model is read.

        Raises:
            MmstError: (exit status 2) naming the flag to fix.
        """
        if not self.output:
            raise MmstError("-o/--output is empty; name an output file, or - for jsonl on stdout")
        if self.format is not None:
            self.format = self.format.lower().lstrip(".")
            if self.format not in FORMATS:
                raise MmstError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.to_stdout:
            if self.format not in (None, "jsonl"):
                raise MmstError(f"-o - streams jsonl; --format {self.format} needs a file output")
            if self.resume:
                raise MmstError("--resume needs a file output: -o - streams as it goes and keeps no parts")
        elif self.format is None and self.output_format not in FORMATS:
            raise MmstError(
                f"cannot tell the output format from {self.output!r}; end it in "
                f"{', '.join('.' + name for name in FORMATS)} or pass --format"
            )
        if self.precision not in PRECISIONS:
            raise MmstError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.task is not None and self.task not in TASKS:
            raise MmstError(f"--task {self.task!r} is not one of {', '.join(TASKS)}")
        for flag, value in (("--batch-size", self.batch_size), ("--chunk-size", self.chunk_size), ("--dim", self.dim)):
            if value is not None and value <= 0:
                raise MmstError(f"{flag} must be a positive whole number, got {value}")
        if self.decode_workers is not None and self.decode_workers < 0:
            raise MmstError(f"--decode-workers must be 0 or more, got {self.decode_workers}")
        if self.device is not None and (not self.device.strip() or not all(self.devices)):
            raise MmstError(f"--device {self.device!r} has an empty entry; write e.g. cuda:0,cuda:1 or cpu,cpu")
        if self.media_root is not None and not Path(self.media_root).expanduser().is_dir():
            raise MmstError(f"--media-root {self.media_root!r} is not a folder")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


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
    """

    source: str
    ids: list[Any]
    modalities: dict[str, int] = field(default_factory=dict)
    first_rows: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    column: str | None = None
    notes: list[str] = field(default_factory=list)

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


@dataclass
class ReferenceInputs(EncodeInputs):
    """Inputs given as strings: texts, and media file paths made absolute.

    Audio files are decoded (and resampled to the model's rate) a chunk at a time, so a large
    audio collection is never held in memory at once.

    Attributes:
        values: One string per row: the text, or the absolute path of the media file.
        audio_rows: Rows whose value is an audio file path.
        sampling_rate: The model's audio rate (set by :meth:`bind`).
    """

    values: list[str] = field(default_factory=list)
    audio_rows: set[int] = field(default_factory=set)
    sampling_rate: int | None = None

    def bind(self, model) -> None:
        super().bind(model)
        if self.audio_rows:
            from mmst_cli.core.models import audio_sampling_rate

            self.sampling_rate = audio_sampling_rate(model)
            if self.sampling_rate is None:
                raise MmstError(f"input {self.source!r} has audio but the model has no audio feature extractor")

    def chunk(self, start: int, stop: int) -> list[Any]:
        if not self.audio_rows:
            return self.values[start:stop]
        from mmst_cli.core.data import decode_audio

        batch: list[Any] = []
        for row in range(start, stop):
            value = self.values[row]
            if row in self.audio_rows:
                array = decode_audio(Path(value), self.sampling_rate)
                if array.size == 0:
                    raise MmstError(f"input {self.source!r}: {value} is a zero-length audio clip")
                value = {"array": array, "sampling_rate": self.sampling_rate}
            batch.append(value)
        return batch


@dataclass
class FeatureInputs(EncodeInputs):
    """Inputs in a dataset column of images, audio, media bytes or video frame lists (HF features).

    The column is checked by :func:`mmst_cli.core.data.prepare_media` in :meth:`bind`, because audio
    is decoded there at the model's rate.

    Attributes:
        table: A ``datasets.Dataset`` with only the input column (:attr:`column`).
        media_root: Passed to ``prepare_media``.
    """

    table: Any = None
    media_root: Path | None = None

    def bind(self, model) -> None:
        from mmst_cli.core.data import prepare_media
        from mmst_cli.core.models import audio_sampling_rate

        prepared = prepare_media(
            self.table, self.source, media_root=self.media_root, audio_sampling_rate=audio_sampling_rate(model)
        )
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


def _fingerprint(*sequences: Sequence[Any]) -> str:
    """A sha256 over every item of ``sequences`` (ids, input texts and paths, table fingerprints)."""
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(b"\x1e")
        for item in sequence:
            digest.update(json.dumps(item, ensure_ascii=False, default=str).encode("utf8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def _check_references(
    values: Sequence[Any], labels: Callable[[int], str], root: Path, source: str, confine_to: Path | None = None
) -> tuple[list[str], dict[str, int], dict[str, str], set[int]]:
    """Classify every string input, one cell at a time, and make media paths absolute.

    Unlike a training column (one modality per column), each cell may be text, an image or an
    audio file. A string that names a media file by its extension is media: a missing or
    undecodable file is an error naming its row, never text.

    Returns:
        The prepared values, modality counts, the first row of each modality, and the audio rows.

    Raises:
        MmstError: listing how many rows are unusable and the first few.
    """
    prepared: list[str] = []
    modalities: dict[str, int] = {}
    first_rows: dict[str, str] = {}
    audio_rows: set[int] = set()
    problems: list[str] = []
    for row, value in enumerate(values):
        if not isinstance(value, str):
            kind = "no value" if value is None else f"not a text or path but {type(value).__name__}"
            problems.append(f"{labels(row)}: {kind}")
            prepared.append("")
            continue
        report = classify_string(value, root, confine_to)
        modality = str(report.modality)
        if report.source == "url":
            problems.append(f"{labels(row)}: {value[:80]}: remote media is not downloaded by mmst encode; "
                            "download it and pass the local path")
        elif report.problem:
            problems.append(f"{labels(row)}: {value[:80]}: {report.problem}")
        elif report.source == "file":
            path = Path(value).expanduser()
            value = str((path if path.is_absolute() else root / path).resolve())
            if modality == "audio":
                audio_rows.add(row)
        prepared.append(value)
        modalities[modality] = modalities.get(modality, 0) + 1
        first_rows.setdefault(modality, labels(row))
    if problems:
        shown = "; ".join(problems[:PROBLEMS_SHOWN])
        more = f" and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
        raise MmstError(
            f"input {source!r}: {len(problems)} of {len(values)} rows are unusable ({shown}{more}); "
            "fix them or set --media-root"
        )
    return prepared, modalities, first_rows, audio_rows


def _reference_inputs(
    source: str, ids: list[Any], values: Sequence[Any], labels, root: Path, confine_to: Path | None = None
) -> ReferenceInputs:
    if not values:
        raise MmstError(f"input {source!r} has no inputs")
    prepared, modalities, first_rows, audio_rows = _check_references(values, labels, root, source, confine_to)
    return ReferenceInputs(
        source=source,
        ids=ids,
        modalities=modalities,
        first_rows=first_rows,
        fingerprint=_fingerprint(ids, prepared),
        values=prepared,
        audio_rows=audio_rows,
    )


def _line_inputs(source: str, stream: TextIO, root: Path) -> ReferenceInputs:
    """One input per non-blank line; ids are the 0-based positions, messages name line numbers."""
    values: list[str] = []
    line_numbers: list[int] = []
    for number, line in enumerate(stream, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            values.append(text)
            line_numbers.append(number)
    return _reference_inputs(source, list(range(len(values))), values, lambda row: f"line {line_numbers[row]}", root)


def _folder_media(folder: Path) -> list[Path]:
    """Image and audio files under ``folder`` (recursive, hidden files and folders skipped), sorted."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and media_modality_of_name(path.name) in FOLDER_MODALITIES:
            found.append(relative)
    return sorted(found, key=lambda p: p.as_posix())


def _is_dataset_folder(folder: Path) -> bool:
    if any((folder / name).exists() for name in ("dataset_dict.json", "state.json", "dataset_info.json")):
        return True
    return any(child.is_file() and child.suffix.lower() in DATA_FILE_BUILDERS for child in folder.iterdir())


def _content_columns(columns: Sequence[str], id_column: str | None) -> list[str]:
    """Columns that may hold inputs: not the id column, ``id``, ``*_id``, ``label`` or ``score``."""
    return [
        name
        for name in columns
        if name != id_column and name.lower() not in NON_CONTENT_COLUMNS and not name.lower().endswith("_id")
    ]


def pick_column(columns: Sequence[str], column: str | None, id_column: str | None, source: str) -> str:
    """Choose the table column to embed.

    Args:
        columns: The table's columns, in order.
        column: ``--column``; must exist when given.
        id_column: ``--id-column``; never the input column by default.
        source: The input reference, for messages.

    Returns:
        ``column`` when given; else the only content column (ignoring ``id_column``, ``id``,
        ``*_id``, ``label`` and ``score`` columns); else the first of :data:`PREFERRED_COLUMNS`
        (``input``, ``text``, ``sentence``, ``content``, ``image``, ``audio``, ``path``, ``file``,
        case-insensitive) that exists.

    Raises:
        MmstError: when the column does not exist or the choice is ambiguous.
    """
    if column is not None:
        if column not in columns:
            raise MmstError(f"input {source!r} has no column {column!r}; its columns are {list(columns)}; fix --column")
        return column
    content = _content_columns(columns, id_column)
    if len(content) == 1:
        return content[0]
    by_name = {name.lower(): name for name in content}
    for preferred in PREFERRED_COLUMNS:
        if preferred in by_name:
            return by_name[preferred]
    raise MmstError(
        f"input {source!r} has {'no content columns' if not content else 'several columns ' + str(content)}; "
        "pick the one to embed with --column"
    )


def _scalar_ids(values: list[Any], id_column: str, source: str) -> list[Any]:
    for row, value in enumerate(values):
        if value is None or not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise MmstError(
                f"input {source!r}: row {row + 1}, id column {id_column!r}: {value!r} is not a string or number"
            )
    return values


def _table_inputs(
    table,
    source: str,
    *,
    column: str | None,
    id_column: str | None,
    root: Path,
    media_root: Path | None,
    allow_outside_root: bool = False,
) -> EncodeInputs:
    import datasets

    names = list(table.column_names)
    if id_column is not None and id_column not in names:
        raise MmstError(f"input {source!r} has no column {id_column!r}; its columns are {names}; fix --id-column")
    chosen = pick_column(names, column, id_column, source)
    notes = []
    others = [name for name in _content_columns(names, id_column) if name != chosen]
    if column is None and others:
        notes.append(f"embedding column {chosen!r} (other columns: {', '.join(others)}); pick another with --column")
    ids = _scalar_ids(list(table[id_column]), id_column, source) if id_column else list(range(len(table)))
    feature = table.features[chosen]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        # Paths in a data file stay inside its folder (or --media-root) unless the user allows otherwise.
        confine_to = None if allow_outside_root else root
        labels = lambda row: f"row {row + 1}, column {chosen!r}"  # noqa: E731
        inputs = _reference_inputs(source, ids, list(table[chosen]), labels, root, confine_to)
        inputs.column, inputs.notes = chosen, notes
        return inputs
    is_bytes = isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary")
    if isinstance(feature, (datasets.Image, datasets.Audio)) or is_bytes or is_frame_list_feature(feature):
        return FeatureInputs(
            source=source,
            ids=ids,
            fingerprint=_fingerprint(ids, [str(getattr(table, "_fingerprint", "")), chosen]),
            column=chosen,
            notes=notes,
            table=table.select_columns([chosen]),
            media_root=media_root,
        )
    raise MmstError(
        f"input {source!r}: column {chosen!r} has type {feature}, which is neither text nor media; "
        "pick another with --column"
    )


def read_inputs(
    reference: str,
    *,
    column: str | None = None,
    id_column: str | None = None,
    split: str | None = None,
    data_config: str | None = None,
    media_root: str | Path | None = None,
    stdin: TextIO | None = None,
    allow_outside_root: bool = False,
) -> EncodeInputs:
    """Read and check the inputs, before any model is loaded.

    Args:
        reference: ``-`` for stdin; a ``.txt`` file (one input per line); a jsonl / json / csv /
            parquet file; a folder with ``save_to_disk`` files or data files at its top level (a
            dataset); any other folder (its image and audio files, recursively, sorted by relative
            path; ids are the relative paths); or a Hub dataset id.
        column: The table column to embed; ``None`` picks one with :func:`pick_column`.
        id_column: The table column of ids; ``None`` (default) for 0-based row numbers.
        split: Dataset split; ``None`` for ``train``.
        data_config: Hub dataset configuration; ``None`` for the default.
        media_root: Folder relative media paths resolve against; ``None`` for the input file's
            folder, or the current directory for stdin and Hub datasets.
        stdin: The stream ``-`` reads; ``None`` for ``sys.stdin``.
        allow_outside_root: Accept media paths in a table that resolve outside its folder (or
            ``media_root``); refused by default. Stdin lines and folders are the user's own paths.

    Raises:
        MmstError: for a missing input, a bad column, or unusable media (naming the row).
    """
    from mmst_cli.core.data import load_table

    root_override = Path(media_root).expanduser() if media_root is not None else None
    is_table_input = reference != "-" and Path(reference).expanduser().suffix.lower() not in LINE_FILE_EXTENSIONS
    if (column is not None or id_column is not None) and not is_table_input:
        raise MmstError("--column and --id-column apply to tables (jsonl, csv, parquet, datasets), not to line inputs")
    if reference == "-":
        return _line_inputs("-", stdin if stdin is not None else sys.stdin, root_override or Path.cwd())
    path = Path(reference).expanduser()
    if not path.exists() and path.suffix.lower() in (*DATA_FILE_BUILDERS, *LINE_FILE_EXTENSIONS):
        raise MmstError(f"input {reference!r} does not exist; check the path")
    if path.is_file() and path.suffix.lower() in LINE_FILE_EXTENSIONS:
        with path.open(encoding="utf8") as stream:
            return _line_inputs(reference, stream, root_override or path.parent)
    if path.is_dir() and not _is_dataset_folder(path):
        if column is not None or id_column is not None:
            raise MmstError(f"--column and --id-column apply to tables; {reference!r} is a folder of media files")
        files = _folder_media(path)
        if not files:
            raise MmstError(
                f"folder {reference!r} has no image or audio files (by extension) and no dataset or data files"
            )
        ids = [file.as_posix() for file in files]
        return _reference_inputs(reference, ids, ids, lambda row: f"file {ids[row]!r}", path)
    if split is not None and path.is_file():
        raise MmstError(f"--split applies to dataset folders and Hub datasets; {reference!r} is one file")
    table = load_table(reference, config=data_config, split=split)
    root = root_override or (path.parent if path.is_file() else path if path.is_dir() else Path.cwd())
    return _table_inputs(
        table, reference, column=column, id_column=id_column, root=root, media_root=root_override,
        allow_outside_root=allow_outside_root,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Parts (resume)
# --------------------------------------------------------------------------------------------


def parts_folder(output: Path) -> Path:
    """The hidden folder of finished chunks next to ``output``: ``.<output name>.parts``."""
    return output.parent / f".{output.name}.parts"


def _atomic_save_npy(path: Path, array) -> None:
    import numpy as np

    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        np.save(handle, array)
    os.replace(temporary, path)


class Parts:
    """Finished chunks of one run, as float32 ``part-NNNNNN.npy`` files plus ``manifest.json``.

    Args:
        output: The final output file; the parts live in :func:`parts_folder` of it.
        manifest: What the parts were computed from (input count and hash, model, options).
    """

    def __init__(self, output: Path, manifest: dict[str, Any]) -> None:
        self.folder = parts_folder(output)
        self.manifest = manifest

    def path(self, index: int) -> Path:
        """The file of chunk ``index``."""
        return self.folder / f"part-{index:06d}.npy"

    def open(self, *, resume: bool, chunk_rows: Sequence[int], log: Callable[[str], None]) -> dict[int, int]:
        """Prepare the folder and return the finished chunks (index -> vector width) to reuse.

        Args:
            resume: Reuse finished chunks when the manifest matches; when off, any earlier parts
                of this output are deleted first.
            chunk_rows: Rows of every chunk, in order (to tell a complete part from a broken one).
            log: Where notes for the user go.

        Raises:
            MmstError: with ``resume`` when the parts were made from other inputs or options.
        """
        import numpy as np

        done: dict[int, int] = {}
        if self.folder.exists():
            if not resume:
                log(f"discarding the parts of an earlier unfinished run in {self.folder} (--resume would continue it)")
                self.remove()
            else:
                previous = self._read_manifest()
                for key in RESUME_KEYS:
                    if previous.get(key) != self.manifest.get(key):
                        raise MmstError(
                            f"--resume: the parts in {str(self.folder)!r} were computed with another {key} "
                            f"({previous.get(key)!r}, now {self.manifest.get(key)!r}); "
                            "rerun without --resume to start over"
                        )
                for index, rows in enumerate(chunk_rows):
                    try:
                        part = np.load(self.path(index), mmap_mode="r")
                    except (OSError, ValueError):
                        continue
                    if part.ndim == 2 and part.shape[0] == rows and part.dtype == np.float32:
                        done[index] = part.shape[1]
                if len(set(done.values())) > 1:
                    raise MmstError(f"--resume: the parts in {str(self.folder)!r} disagree on the vector width; "
                                    "rerun without --resume")
        elif resume:
            log("nothing to resume (no parts folder); encoding from the start")
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / "manifest.json.tmp"
        temporary.write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False), encoding="utf8")
        os.replace(temporary, self.folder / "manifest.json")
        return done

    def _read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads((self.folder / "manifest.json").read_text(encoding="utf8"))
        except (OSError, json.JSONDecodeError) as error:
            raise MmstError(
                f"--resume: {str(self.folder)!r} has no readable manifest.json; rerun without --resume"
            ) from error
        if manifest.get("version") != MANIFEST_VERSION:
            raise MmstError(f"--resume: {str(self.folder)!r} was written by another mmst version; rerun without --resume")
        return manifest

    def save(self, index: int, vectors) -> None:
        """Save chunk ``index`` (atomically)."""
        _atomic_save_npy(self.path(index), vectors)

    def load(self, index: int):
        """Chunk ``index`` as a read-only memory map."""
        import numpy as np

        return np.load(self.path(index), mmap_mode="r")

    def remove(self) -> None:
        """Delete the parts folder (after the output is in place, or to start over)."""
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Precision and writers
# --------------------------------------------------------------------------------------------


def convert_precision(vectors, precision: str, ranges=None):
    """Convert float32 vectors to the output precision.

    Args:
        vectors: A ``(rows, dim)`` float32 array.
        precision: ``float32`` (as is), ``float16`` (cast), ``int8`` (``quantize_embeddings`` with
            ``ranges``: per-dimension min/max, shape ``(2, dim)``) or ``ubinary`` (``quantize_embeddings``:
            one bit per dimension, ``> 0``, packed 8 to a ``uint8``: ``ceil(dim / 8)`` columns).
        ranges: Required for ``int8``: the min/max of every dimension over all the rows of the run.
    """
    import numpy as np

    if precision == "float32":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    if precision == "float16":
        return np.asarray(vectors).astype(np.float16)
    from sentence_transformers.util import quantize_embeddings

    if precision == "int8":
        return quantize_embeddings(np.asarray(vectors, dtype=np.float32), precision="int8", ranges=ranges)
    return quantize_embeddings(np.asarray(vectors, dtype=np.float32), precision="ubinary")


def output_width(dim: int, precision: str) -> int:
    """Columns of the stored matrix: ``dim``, or ``ceil(dim / 8)`` bytes for ``ubinary``."""
    return (dim + 7) // 8 if precision == "ubinary" else dim


def output_dtype(precision: str):
    """The numpy dtype stored for ``precision``."""
    import numpy as np

    return {"float32": np.float32, "float16": np.float16, "int8": np.int8, "ubinary": np.uint8}[precision]


def _jsonable_ids(ids: list[Any]) -> list[Any]:
    return [item.item() if hasattr(item, "item") else item for item in ids]


class Writer:
    """Writes rows of one output, in order, to ``path`` (or a stream, for jsonl).

    Args:
        path: The file to write (a temporary name; the caller renames it), or ``None`` with ``stream``.
        count: Total rows.
        width: Columns of the stored matrix (see :func:`output_width`).
        precision: The output precision (for dtypes).
        ids: All ids, in order.
        metadata: Run facts stored where the format has room (parquet, safetensors).
        ranges: The int8 ranges, stored in parquet metadata and as a safetensors tensor.
        stream: A text stream for jsonl (``-o -``).
    """

    def __init__(self, path: Path | None, *, count: int, width: int, precision: str, ids: list[Any],
                 metadata: dict[str, Any], ranges=None, stream: TextIO | None = None) -> None:
        self.path, self.count, self.width, self.precision = path, count, width, precision
        self.ids, self.metadata, self.ranges, self.stream = ids, metadata, ranges, stream

    def write(self, start: int, vectors) -> None:
        """Write rows ``start .. start + len(vectors)`` (already in the output precision)."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file."""

    def abort(self) -> None:
        """Release resources after a failure (the caller deletes the temporary file)."""
        self.close()


class NpyWriter(Writer):
    """``.npy``: one ``(count, width)`` matrix, row ``i`` = input ``i``; no ids (they are the input order)."""

    def __init__(self, path, **kwargs) -> None:
        import numpy as np

        super().__init__(path, **kwargs)
        self.matrix = np.lib.format.open_memmap(
            str(path), mode="w+", dtype=output_dtype(self.precision), shape=(self.count, self.width)
        )

    def write(self, start, vectors) -> None:
        self.matrix[start : start + len(vectors)] = vectors

    def close(self) -> None:
        if self.matrix is not None:
            self.matrix.flush()
            self.matrix = None


class JsonlWriter(Writer):
    """``.jsonl``: ``{"id": ..., "embedding": [...]}`` per line, in input order."""

    def __init__(self, path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.handle = self.stream if self.stream is not None else path.open("w", encoding="utf8")

    def write(self, start, vectors) -> None:
        ids = _jsonable_ids(self.ids[start : start + len(vectors)])
        lines = [
            json.dumps({"id": item, "embedding": row}, ensure_ascii=False) for item, row in zip(ids, vectors.tolist())
        ]
        self.handle.write("\n".join(lines) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None and self.stream is None:
            self.handle.close()
        self.handle = None


class ParquetWriter(Writer):
    """``.parquet``: columns ``id`` and ``embedding`` (``list<float|halffloat|int8|uint8>``); run facts
    (and int8 ranges) as JSON under the ``mmst`` key of the schema metadata."""

    def __init__(self, path, **kwargs) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path, **kwargs)
        ids = _jsonable_ids(self.ids)
        try:
            self.id_array = pa.array(ids)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            self.id_array = pa.array([str(item) for item in ids])
        value_type = pa.from_numpy_dtype(output_dtype(self.precision))
        metadata = dict(self.metadata)
        if self.ranges is not None:
            metadata["int8_ranges"] = self.ranges.tolist()
        self.schema = pa.schema(
            [("id", self.id_array.type), ("embedding", pa.list_(value_type))],
            metadata={"mmst": json.dumps(metadata, ensure_ascii=False)},
        )
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, start, vectors) -> None:
        import numpy as np
        import pyarrow as pa

        vectors = np.ascontiguousarray(vectors)
        width = vectors.shape[1]
        step = max(1, (2**31 - 1) // max(width, 1) // 2)  # int32 list offsets
        for offset in range(0, len(vectors), step):
            block = vectors[offset : offset + step]
            offsets = pa.array(np.arange(0, (len(block) + 1) * width, width, dtype=np.int32))
            embedding = pa.ListArray.from_arrays(offsets, pa.array(block.reshape(-1)), type=self.schema.field("embedding").type)
            table = pa.Table.from_arrays([self.id_array.slice(start + offset, len(block)), embedding], schema=self.schema)
            self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class SafetensorsWriter(Writer):
    """``.safetensors``: tensor ``embeddings`` ``(count, width)`` (plus ``int8_ranges`` ``(2, dim)``
    float32 for int8); metadata ``ids`` (a JSON list) and the run facts as strings.

    The file is written in one go at :meth:`close` (safetensors has no appending), so the whole
    matrix is held in memory.
    """

    def __init__(self, path, **kwargs) -> None:
        import numpy as np

        super().__init__(path, **kwargs)
        self.matrix = np.empty((self.count, self.width), dtype=output_dtype(self.precision))
        self.finished = False

    def write(self, start, vectors) -> None:
        self.matrix[start : start + len(vectors)] = vectors

    def close(self) -> None:
        if self.finished or self.matrix is None:
            return
        from safetensors.numpy import save_file

        tensors = {"embeddings": self.matrix}
        if self.ranges is not None:
            tensors["int8_ranges"] = self.ranges.astype("float32")
        metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in self.metadata.items()}
        metadata["ids"] = json.dumps(_jsonable_ids(self.ids), ensure_ascii=False)
        save_file(tensors, str(self.path), metadata=metadata)
        self.finished = True

    def abort(self) -> None:
        self.matrix = None


WRITERS: dict[str, type[Writer]] = {
    "npy": NpyWriter,
    "jsonl": JsonlWriter,
    "parquet": ParquetWriter,
    "safetensors": SafetensorsWriter,
}


def temporary_output(output: Path) -> Path:
    """The temporary name the output is written under, in the same folder: ``.<name>.<pid>.tmp``."""
    return output.parent / f".{output.name}.{os.getpid()}.tmp"


def write_output(output: Path, format: str, chunks: Callable[[], Iterator[tuple[int, Any]]], *, writer_kwargs) -> None:
    """Write the output atomically: to :func:`temporary_output`, then renamed onto ``output``.

    Args:
        output: The final file.
        format: A key of :data:`WRITERS`.
        chunks: Yields ``(start_row, vectors)`` in the output precision, in order.
        writer_kwargs: Passed to the writer class.
    """
    temporary = temporary_output(output)
    writer = None
    try:
        writer = WRITERS[format](temporary, **writer_kwargs)
        for start, vectors in chunks():
            writer.write(start, vectors)
        writer.close()
        os.replace(temporary, output)
    except BaseException:
        if writer is not None:
            writer.abort()
        temporary.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def int8_ranges(blocks) -> Any:
    """Per-dimension ``(2, dim)`` min/max over every row of ``blocks`` (float32 arrays), as
    ``quantize_embeddings`` computes them from the whole matrix, without holding it in memory."""
    import numpy as np

    minimum = maximum = None
    for block in blocks:
        low, high = np.min(block, axis=0), np.max(block, axis=0)
        minimum = low if minimum is None else np.minimum(minimum, low)
        maximum = high if maximum is None else np.maximum(maximum, high)
    return np.vstack((minimum, maximum)).astype(np.float32)


class PooledModel:
    """A model whose ``encode*`` calls go to a multi-process pool (``start_multi_process_pool``).

    :func:`~mmst_cli.core.encoding.encode_inputs` calls it one modality at a time, and Sentence
    Transformers splits each call into sub-chunks for the workers and puts them back in order, so
    grouping by modality and input order both hold.
    """

    def __init__(self, model, pool) -> None:
        self._model = model
        self._pool = pool

    def encode(self, inputs, **kwargs):
        return self._model.encode(inputs, pool=self._pool, **kwargs)

    def encode_query(self, inputs, **kwargs):
        return self._model.encode_query(inputs, pool=self._pool, **kwargs)

    def encode_document(self, inputs, **kwargs):
        return self._model.encode_document(inputs, pool=self._pool, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class EncodeInterrupted(MmstError):
    """Raised (exit status 130) when the run is interrupted; finished chunks are kept for ``--resume``."""


@dataclass
class EncodeResult:
    """What a run did.

    Attributes:
        summary: The JSON-ready summary (model, inputs, count, dim, output, precision, seconds, ...).
        encoded_chunks: Chunks encoded by this run.
        reused_chunks: Finished chunks taken from an earlier run (``--resume``).
    """

    summary: dict[str, Any]
    encoded_chunks: int
    reused_chunks: int


def _chunk_bounds(count: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def _model_identity(source) -> str:
    location = Path(source.location)
    return str(location.resolve()) if location.is_dir() else source.reference


def run_encode(
    options: EncodeOptions,
    *,
    console=None,
    show_progress: bool = True,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    model=None,
    on_chunk: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> EncodeResult:
    """Run ``mmst encode``: read and check the inputs, encode them in chunks, write the output.

    Args:
        options: What to do; validated here.
        console: Rich console for the progress bar (stderr); ``None`` for a new stderr console.
        show_progress: Draw the progress bar; default on.
        stdin: The stream ``-`` reads; ``None`` for ``sys.stdin``.
        stdout: Where ``-o -`` writes jsonl; ``None`` for ``sys.stdout``.
        model: An already loaded model to use instead of loading ``options.model`` (tests, notebooks);
            ``options.model`` still names it in the manifest and the summary.
        on_chunk: Called with each chunk's index after it is encoded and saved (a hook for tests and
            callers that want to stop early: raising there leaves the finished parts for ``--resume``).
        log: Where notes for the user go; default: stderr.

    Returns:
        An :class:`EncodeResult`.

    Raises:
        MmstError: for bad options, inputs or media (exit 2) before anything is written;
            :class:`EncodeInterrupted` (exit 130) on Ctrl-C, keeping the finished parts.
    """
    from mmst_cli.core.encoding import encode_inputs
    from mmst_cli.core.models import load_model, locate_model
    from mmst_cli.core.progress import progress_bars

    started = time.perf_counter()
    log = log or (lambda line: sys.stderr.write(line + "\n"))
    options.validate()
    source = locate_model(options.model)
    inputs = read_inputs(
        options.inputs,
        column=options.column,
        id_column=options.id_column,
        split=options.split,
        data_config=options.data_config,
        media_root=options.media_root,
        stdin=stdin,
        allow_outside_root=options.allow_outside_root,
    )
    for note in inputs.notes:
        log(note)
    output = None if options.to_stdout else Path(options.output).expanduser()
    if output is not None and output.is_dir():
        example = Path(options.output) / "embeddings.npy"
        raise MmstError(f"-o {options.output!r} is a folder; name a file such as {example}")

    devices = options.devices
    if model is None:
        # A pool copies the model from the CPU into each worker; one device loads straight onto it.
        device = devices[0] if len(devices) == 1 else "cpu" if devices else None
        model = load_model(source, trust_remote_code=options.trust_remote_code, device=device)
    elif len(devices) == 1:
        model.to(devices[0])
    inputs.bind(model)
    model_dim = model.get_embedding_dimension()
    if options.dim is not None and model_dim and options.dim > model_dim:
        raise MmstError(f"--dim {options.dim} is larger than the model's embedding dimension {model_dim}")
    dim = options.dim or model_dim

    bounds = _chunk_bounds(inputs.count, options.chunk_size)
    manifest = {
        "version": MANIFEST_VERSION,
        "inputs": options.inputs,
        "count": inputs.count,
        "fingerprint": inputs.fingerprint,
        "model": _model_identity(source),
        "task": options.task,
        "prompt": options.prompt,
        "dim": options.dim,
        "normalize": options.normalize,
        "chunk_size": options.chunk_size,
    }
    parts = None
    done: dict[int, int] = {}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        parts = Parts(output, manifest)
        done = parts.open(resume=options.resume, chunk_rows=[stop - start for start, stop in bounds], log=log)
        if done:
            dim = next(iter(done.values()))
            log(f"resuming: {len(done)} of {len(bounds)} chunks already encoded")

    metadata = {
        "model": source.reference,
        "inputs": options.inputs,
        "task": options.task,
        "prompt": options.prompt,
        "normalize": options.normalize,
        "precision": options.precision,
    }
    stream = stdout if stdout is not None else sys.stdout
    # -o - writes each chunk as soon as it is encoded, except int8, whose ranges need every row.
    held: list[Any] = []
    stream_writer: Writer | None = None
    encoded = 0
    pool = None
    try:
        try:
            encoder = model
            if len(devices) > 1 and len(done) < len(bounds):
                pool = model.start_multi_process_pool(devices)
                encoder = PooledModel(model, pool)
            # One call per chunk and modality in a pool (it splits the work itself); smaller calls
            # here, so the bar moves.
            inner = options.chunk_size if pool is not None else min(options.chunk_size, max(256, 8 * options.batch_size))
            with progress_bars(console, enabled=show_progress) as track:
                advance = track("encoding", inputs.count)
                advance(sum(bounds[index][1] - bounds[index][0] for index in done))
                for index, (start, stop) in enumerate(bounds):
                    if index in done:
                        continue
                    vectors = encode_inputs(
                        encoder,
                        inputs.chunk(start, stop),
                        task=options.task,
                        prompt=options.prompt,
                        batch_size=options.batch_size,
                        chunk_size=inner,
                        normalize=options.normalize,
                        truncate_dim=options.dim,
                        on_progress=advance,
                        decode_workers=0 if pool is not None else options.decode_workers,
                    )
                    dim = vectors.shape[1]
                    encoded += 1
                    if parts is not None:
                        parts.save(index, vectors)
                    elif options.precision == "int8":
                        held.append(vectors)
                    else:
                        if stream_writer is None:
                            stream_writer = JsonlWriter(
                                None, count=inputs.count, width=output_width(dim, options.precision),
                                precision=options.precision, ids=inputs.ids, metadata=metadata, stream=stream,
                            )  # fmt: skip
                        stream_writer.write(start, convert_precision(vectors, options.precision))
                    if on_chunk is not None:
                        on_chunk(index)
        finally:
            if pool is not None:
                model.stop_multi_process_pool(pool)

        metadata["dim"] = dim
        ranges = None
        if options.precision == "int8":
            ranges = int8_ranges(held if parts is None else (parts.load(index) for index in range(len(bounds))))
        writer_kwargs = dict(
            count=inputs.count, width=output_width(dim, options.precision), precision=options.precision,
            ids=inputs.ids, metadata=metadata, ranges=ranges,
        )  # fmt: skip
        if parts is None:
            if held:
                writer = JsonlWriter(None, stream=stream, **writer_kwargs)
                for (start, _), vectors in zip(bounds, held):
                    writer.write(start, convert_precision(vectors, options.precision, ranges))
        else:

            def converted() -> Iterator[tuple[int, Any]]:
                for index, (start, _) in enumerate(bounds):
                    yield start, convert_precision(parts.load(index), options.precision, ranges)

            write_output(output, options.output_format, converted, writer_kwargs=writer_kwargs)
            parts.remove()
    except KeyboardInterrupt as error:
        hint = ""
        if parts is not None:
            hint = f"; {len(done) + encoded} of {len(bounds)} chunks are saved, rerun with --resume to continue"
        raise EncodeInterrupted(f"interrupted{hint}", exit_code=EXIT_INTERRUPTED) from error

    counts = dict(sorted(inputs.modalities.items()))
    summary = {
        "model": source.reference,
        "inputs": options.inputs,
        "column": inputs.column,
        "count": inputs.count,
        "modalities": counts,
        "dim": dim,
        "output": options.output,
        "format": options.output_format,
        "precision": options.precision,
        "normalize": options.normalize,
        "task": options.task,
        "chunks": len(bounds),
        "reused_chunks": len(done),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return EncodeResult(summary, encoded_chunks=encoded, reused_chunks=len(done))


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line human summary: count, modalities, dim, precision, output and seconds."""
    modalities = ", ".join(f"{count} {name}" for name, count in summary["modalities"].items())
    reused = f", {summary['reused_chunks']} of {summary['chunks']} chunks resumed" if summary["reused_chunks"] else ""
    where = "stdout (jsonl)" if summary["output"] == "-" else f"{summary['output']} ({summary['format']})"
    return (
        f"encoded {summary['count']} inputs ({modalities}) -> {summary['dim']}-d {summary['precision']} "
        f"to {where} in {summary['seconds']:.1f} s{reused}"
    )


__all__ = [
    "EncodeInputs",
    "EncodeInterrupted",
    "EncodeOptions",
    "EncodeResult",
    "FORMATS",
    "PRECISIONS",
    "Parts",
    "convert_precision",
    "parts_folder",
    "pick_column",
    "read_inputs",
    "run_encode",
    "summary_line",
]
