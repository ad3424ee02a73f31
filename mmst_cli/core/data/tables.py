"""Load training and evaluation data, pick its columns, and make every media reference safe to use.

Data can be a local jsonl / json / csv / parquet file, a folder of such files, a folder written by
``datasets.save_to_disk``, or a Hugging Face Hub dataset id. Columns keep their names; their order
is what the losses see (anchor, positive, then hard negatives).

Every media reference is checked before any model work: a path that does not exist, escapes its
root, or does not decode is reported with its row and column, and never silently becomes text.
Relative paths resolve against the data file's folder, or ``media_root`` when given. Audio is
decoded and resampled to the model's rate (:mod:`mmst_cli.core.data.audio`), because bare feature
extractors take arrays at their own rate and resample nothing.

A video is a video file path, or a list of frames: image paths (a jsonl list) or an HF
``List(Image())`` column. Frame lists need no video decoder; they reach the model as
``{"video": [frame, ...]}``, the form Sentence Transformers reads as one video, with every frame
checked and of one size (video processors stack the frames into one array).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, BinaryIO, TextIO

from mmst_cli.core.data.audio import prepare_audio_columns
from mmst_cli.core.data.documents import RenderSettings
from mmst_cli.core.data.frames import frame_list_problems, frames_as_videos, is_frame_list_feature
from mmst_cli.core.data.media import (
    check_media_file,
    classify_string,
    confinement_problem,
    processor_readable_image,
    verify_image,
)
from mmst_cli.core.errors import MmstError, first_line

#: File extension -> the ``datasets`` builder that reads it.
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

#: Column names that are identifiers or labels, never texts or media to embed.
NON_CONTENT_COLUMNS = ("id", "label", "score", "labels", "scores")

_WITH_ARTICLE = {"image": "an image", "audio": "an audio", "video": "a video"}

#: How many failing rows an error message lists before summarising the rest.
PROBLEMS_SHOWN = 3

#: Texts longer than this are cut before they reach the tokenizer, which builds every token of a
#: text before the model keeps its first max_seq_length: one 50 MB cell took 11 GiB and 2.5 minutes.
#: A million characters is far beyond any embedder's context (32k tokens are about 150k characters),
#: so the cut never changes what the model sees.
MAX_TEXT_CHARS = 1_000_000


@dataclass
class PairData:
    """A dataset ready for contrastive training or retrieval evaluation.

    Attributes:
        dataset: A ``datasets.Dataset`` with only the used columns, in order: anchor, positive,
            then negatives. Image columns hold PIL images (HF Image feature) or absolute paths;
            audio columns hold ``{"array", "sampling_rate"}`` at the model's rate.
        column_modalities: Column name -> ``text``, ``image``, ``audio`` or ``video``. Video
            columns hold file paths, or ``{"video": [PIL frames]}`` for frame lists.
        source: Where the data came from, for messages and metrics.
        skipped_rows: Rows dropped because of bad media (only with ``skip_bad``).
        frame_list_columns: Video columns given as frame lists (they need no video decoder).
    """

    dataset: Any
    column_modalities: dict[str, str]
    source: str
    skipped_rows: int = 0
    notes: list[str] = field(default_factory=list)
    frame_list_columns: list[str] = field(default_factory=list)

    @property
    def media_columns(self) -> list[str]:
        return [column for column, modality in self.column_modalities.items() if modality != "text"]


#: The parts of a retrieval folder (:mod:`mmst_cli.core.data.retrieval_folders` reads its corpus).
RETRIEVAL_PARTS = ("corpus", "queries", "qrels")


def find_part(folder: Path, name: str) -> Path | None:
    """``corpus``, ``queries`` or ``qrels`` as a file with a data extension or a sub-folder."""
    for extension in DATA_FILE_BUILDERS:
        if (folder / f"{name}{extension}").is_file():
            return folder / f"{name}{extension}"
    return folder / name if (folder / name).is_dir() else None


def is_retrieval_folder(path: Path) -> bool:
    """Whether ``path`` is a folder laid out as a retrieval task, or meant to be one (any part there)."""
    return path.is_dir() and any(find_part(path, name) for name in RETRIEVAL_PARTS)


def load_table(reference: str, *, config: str | None = None, split: str | None = None):
    """Read one split of a dataset from a file, a folder or the Hub.

    Args:
        reference: A data file (.jsonl, .json, .csv, .parquet), a folder of such files, a
            ``save_to_disk`` folder, or a Hub dataset id.
        config: Hub dataset configuration name (``--data-config``); ``None`` for the default.
        split: Split to read; ``train`` when ``None``.

    Returns:
        A ``datasets.Dataset``.
    """
    import datasets

    split = split or "train"
    path = Path(reference).expanduser()
    try:
        if path.is_file():
            builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise MmstError(
                    f"data file {reference!r}: unknown format {path.suffix!r}; use one of "
                    f"{', '.join(DATA_FILE_BUILDERS)} or a dataset folder"
                )
            if path.stat().st_size == 0:
                raise MmstError(f"data file {reference!r} is empty")
            if path.suffix.lower() == ".jsonl":
                _check_jsonl_lines(path, reference)
            table = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir():
            if any((path / name).exists() for name in ("dataset_dict.json", "state.json", "dataset_info.json")):
                table = datasets.load_from_disk(str(path))
                if isinstance(table, datasets.DatasetDict):
                    if split not in table:
                        raise MmstError(f"data folder {reference!r} has no split {split!r}; it has {sorted(table)}")
                    table = table[split]
            else:
                if is_retrieval_folder(path):  # datasets would read its parts as one table of mixed rows
                    raise MmstError(
                        f"data {reference!r} is a retrieval folder (corpus, queries, qrels), not a table of rows; "
                        f"mmst evaluate, mine, encode and index read it whole, and mmst mine --data {reference} "
                        "-o pairs.jsonl turns it into training rows"
                    )
                table = datasets.load_dataset(str(path), split=split)
        elif (
            reference.startswith((".", "/", "~"))
            or reference.count("/") > 1
            or path.suffix.lower() in DATA_FILE_BUILDERS  # a file name, never a Hub dataset id
        ):
            raise MmstError(f"data {reference!r} does not exist (looked in {Path.cwd()}); check the path")
        else:
            table = datasets.load_dataset(reference, config, split=split)
    except MmstError:
        raise
    except (ConnectionError, OSError) as error:
        if path.is_dir():
            raise MmstError(
                f"data folder {reference!r} holds nothing mmst can read ({first_line(error)}); give a .jsonl, .csv or "
                ".parquet file, a folder of them, a save_to_disk folder, or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"
            ) from error
        raise MmstError(
            f"data {reference!r} is not a local file or folder and could not be loaded from the Hugging Face Hub "
            f"({first_line(error)})"
        ) from error
    except ValueError as error:  # unknown split or config, malformed files
        raise MmstError(f"data {reference!r} could not be read: {first_line(error)}") from error
    except Exception as error:  # datasets wraps parse errors of json/csv/parquet in its own types
        if type(error).__module__.startswith(("datasets", "pyarrow")):
            raise MmstError(f"data {reference!r} could not be read: {first_line(error)}") from error
        raise
    if len(table) == 0:
        raise MmstError(f"data {reference!r} (split {split!r}) has no rows")
    return table


def _check_jsonl_lines(path: Path, reference: str) -> None:
    """Name the first line that is not a JSON object; the datasets reader only gives a byte offset."""
    with path.open(encoding="utf8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise MmstError(f"data file {reference!r}, line {number}: not valid JSON ({error.msg}); fix that line") from error
            if not isinstance(row, dict):
                raise MmstError(f"data file {reference!r}, line {number}: expected a JSON object with named columns")


def select_columns(table, columns: list[str] | None, source: str):
    """Keep and order the columns used for training: anchor, positive, then negatives.

    Args:
        table: A ``datasets.Dataset``.
        columns: Column names in order; ``None`` takes every column except identifiers and labels
            (``id``, ``*_id``, ``label``, ``score``), in the dataset's order.
        source: The data reference, for messages.
    """
    existing = list(table.column_names)
    if columns is None:
        columns = [
            name for name in existing if name.lower() not in NON_CONTENT_COLUMNS and not name.lower().endswith("_id")
        ]
    missing = [name for name in columns if name not in existing]
    if missing:
        raise MmstError(f"data {source!r} has no column {missing[0]!r}; its columns are {existing}; fix --columns")
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise MmstError(f"--columns names {repeated[0]!r} twice; each column of {source!r} can take one place (anchor, positive, negatives)")
    if len(columns) < 2:
        raise MmstError(
            f"data {source!r} needs at least two columns (anchor, positive), found {columns}; pass --columns"
        )
    return table.select_columns(columns)


def _string_column_modality(
    values: list[Any], root: Path, remote_failures: dict[str, str], confine_to: Path | None, pdf: RenderSettings
) -> tuple[str, list[tuple[int, str, str]]]:
    """Classify a string column; return its modality and (row, value, problem) for unusable rows.

    ``remote_failures`` maps URLs that were fetched and failed to the reason; paths that resolve
    outside ``confine_to`` are problems.
    """
    modalities: dict[str, int] = {}
    reports = []
    for value in values:
        report = classify_string(value, root, confine_to, pdf) if isinstance(value, str) else None
        reports.append(report)
        modality = report.modality if report else "text"
        modalities[modality] = modalities.get(modality, 0) + 1
    media = [m for m in modalities if m != "text"]
    empty = [(row, "null", "empty cell; fill it or drop the row") for row, value in enumerate(values) if value is None]
    if not media:
        return "text", empty
    # A media column where a few cells are plain text would silently train on file names as text.
    modality = max(media, key=lambda m: modalities[m])
    problems = empty
    for row, (value, report) in enumerate(zip(values, reports)):
        if value is None:
            continue
        if report is None or report.modality != modality:
            problems.append((row, repr(value)[:80], f"not {_WITH_ARTICLE[modality]} file name"))
        elif report.source == "url":
            reason = remote_failures.get(value, "remote media is refused without --allow-remote-media")
            problems.append((row, value, reason))
        elif report.problem:
            problems.append((row, value, report.problem))
    return modality, problems


def _binary_column_modality(first_cells: list) -> str | None:
    """Tell raw media bytes apart by trying to open the first cell as an image, then as audio."""
    import io

    import soundfile
    from PIL import Image, UnidentifiedImageError

    if not first_cells or first_cells[0] is None:
        return None
    try:
        with Image.open(io.BytesIO(first_cells[0])):
            return "image"
    except (UnidentifiedImageError, OSError):
        pass
    try:
        soundfile.info(io.BytesIO(first_cells[0]))
        return "audio"
    except (RuntimeError, soundfile.LibsndfileError):
        return None


def _feature_path_problem(cell: dict, modality: str, confine_to: Path | None) -> str | None:
    """Why the file an undecoded HF Image / Audio cell without bytes points to is unusable.

    ``datasets`` opens such a path as it stands, relative to the working folder, so it is checked so.
    """
    if not cell.get("path"):
        return "no bytes and no path"
    path = Path(cell["path"])
    return confinement_problem(path, confine_to) or check_media_file(path, modality)


def _audio_feature_problems(table, column: str, confine_to: Path | None) -> list[tuple[int, str, str]]:
    """Check the paths of an undecoded HF Audio column (decoding happens later, at the model's rate)."""
    problems = []
    for row, cell in enumerate(table[column]):
        if cell is not None and cell.get("bytes"):
            continue  # decoded (and checked) at the model's rate later
        problem = "no audio" if cell is None else _feature_path_problem(cell, "audio", confine_to)
        if problem:
            problems.append((row, str((cell or {}).get("path") or "None"), problem))
    return problems


def _image_feature_problems(table, column: str, confine_to: Path | None) -> list[tuple[int, str, str]]:
    """Decode-check every image of an HF Image column without keeping the pixels."""
    import io

    problems = []
    raw = table.cast_column(column, type(table.features[column])(decode=False))[column]
    for row, cell in enumerate(raw):
        if cell is None:
            problems.append((row, "None", "no image"))
            continue
        if cell.get("bytes"):
            _, problem = verify_image(io.BytesIO(cell["bytes"]))
        else:  # a path: confined, then verified by check_media_file
            problem = _feature_path_problem(cell, "image", confine_to)
        if problem:
            problems.append((row, str(cell.get("path") or "<bytes>"), problem))
    return problems


def media_folder(source: str, media_root: Path | None = None) -> Path:
    """The folder relative media paths of data ``source`` resolve against, and stay in: ``media_root``
    when given, else the data file's folder, the data folder, or the working folder (Hub data)."""
    path = Path(source).expanduser()
    return media_root or (path.parent if path.is_file() else path if path.is_dir() else Path.cwd())


def prepare_media(
    table,
    source: str,
    *,
    media_root: Path | None = None,
    audio_sampling_rate: int | None = None,
    skip_bad: bool = False,
    allow_remote_media: bool = False,
    allow_outside_root: bool = False,
    pdf: RenderSettings = RenderSettings(),
    lazy_audio: bool = False,
) -> PairData:
    """Find each column's modality, check every media reference, and make paths absolute.

    Args:
        table: A ``datasets.Dataset`` with the selected columns.
        source: The data reference; relative media paths resolve against its folder.
        media_root: Folder that relative media paths resolve against instead (``--media-root``).
        audio_sampling_rate: The model's audio rate; audio columns are decoded and resampled to it.
        skip_bad: Drop rows with unusable media or empty cells (and count them) instead of failing.
        allow_remote_media: Download http(s) media (:mod:`mmst_cli.core.data.remote_media`); refused otherwise.
        allow_outside_root: Accept media paths outside the data folder / ``media_root`` (absolute
            paths elsewhere, ``../..``); refused otherwise.
        pdf: How PDF pages (``report.pdf#page=3``) render: resolution and pixel budget (``--max-pixels``).
        lazy_audio: Keep audio as references decoded whenever rows are read (in DataLoader
            workers, for training) instead of storing decoded arrays; see :mod:`mmst_cli.core.data.audio`.

    Raises:
        MmstError: listing how many rows failed and the first few, when ``skip_bad`` is off.
    """
    import datasets

    root = media_folder(source, media_root)
    confine_to = None if allow_outside_root else root
    column_modalities: dict[str, str] = {}
    frame_columns: list[str] = []
    bad_rows: dict[int, str] = {}

    for column in table.column_names:
        feature = table.features[column]
        if isinstance(feature, datasets.Image):
            column_modalities[column] = "image"
            problems = _image_feature_problems(table, column, confine_to)
        elif isinstance(feature, datasets.Audio):
            column_modalities[column] = "audio"
            # Decoded with soundfile below: datasets' own audio decoding needs an optional backend.
            table = table.cast_column(column, datasets.Audio(decode=False))
            problems = _audio_feature_problems(table, column, confine_to)
        elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            remote_failures: dict[str, str] = {}
            if allow_remote_media:
                table, remote_failures = _fetch_remote_column(table, column)
            modality, problems = _string_column_modality(table[column], root, remote_failures, confine_to, pdf)
            column_modalities[column] = modality
        elif is_frame_list_feature(feature):
            column_modalities[column] = "video"
            frame_columns.append(column)
            problems = frame_list_problems(table, column, root, confine_to)
        elif isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
            modality = _binary_column_modality(table[column][:1])
            if modality is None:
                raise MmstError(
                    f"data {source!r}: column {column!r} holds bytes that are neither an image nor audio"
                )
            column_modalities[column] = modality
            # Raw bytes become HF features: images are then checked like any Image column, and
            # audio is decoded below.
            if modality == "image":
                table = table.cast_column(column, datasets.Image())
                problems = _image_feature_problems(table, column, confine_to)
            else:
                table = table.cast_column(column, datasets.Audio(decode=False))
                problems = []
        else:
            raise MmstError(
                f"data {source!r}: column {column!r} has type {feature}, which is neither text nor media; "
                "pick other columns with --columns"
            )
        for row, value, problem in problems:
            bad_rows.setdefault(row, f"row {row + 1}, column {column!r}: {value}: {problem}")

    skipped = 0
    if bad_rows:
        if not skip_bad:
            shown = "; ".join(bad_rows[row] for row in sorted(bad_rows)[:PROBLEMS_SHOWN])
            raise MmstError(
                f"data {source!r}: {len(bad_rows)} of {len(table)} rows are unusable ({shown}); "
                "fix them, set --media-root, or pass --skip-bad to drop them"
            )
        keep = [row for row in range(len(table)) if row not in bad_rows]
        if not keep:
            raise MmstError(f"data {source!r}: every row is unusable; nothing left to train on")
        table = table.select(keep)
        skipped = len(bad_rows)

    table = _absolutise_paths(table, column_modalities, root, pdf)
    table, notes = _cut_long_text_columns(table, column_modalities)
    if frame_columns:
        table = frames_as_videos(table, frame_columns, root)
    if "audio" in column_modalities.values():
        if audio_sampling_rate is None:
            raise MmstError(f"data {source!r} has audio columns but the model takes no audio")
        audio_columns = [column for column, modality in column_modalities.items() if modality == "audio"]
        table = prepare_audio_columns(table, audio_columns, root, audio_sampling_rate, source, lazy=lazy_audio)
    return PairData(table, column_modalities, source, skipped, notes=notes, frame_list_columns=frame_columns)


def cut_long_texts(values: list[Any]) -> tuple[list[Any], int]:
    """``values`` with every string longer than :data:`MAX_TEXT_CHARS` cut to it, and how many were cut."""
    cut = sum(1 for value in values if isinstance(value, str) and len(value) > MAX_TEXT_CHARS)
    if not cut:
        return values, 0
    return [value[:MAX_TEXT_CHARS] if isinstance(value, str) else value for value in values], cut


def cut_note(cut: int, where: str) -> str:
    """The note that says texts were cut (see :data:`MAX_TEXT_CHARS`)."""
    return (
        f"{cut} text(s) in {where} are longer than {MAX_TEXT_CHARS:,} characters and were cut to that "
        "length before tokenising (the model reads only its first max_seq_length tokens anyway)"
    )


def _cut_long_text_columns(table, column_modalities: dict[str, str]):
    """Cut over-long texts in the text columns of ``table``; returns the table and the notes."""
    notes = []
    for column, modality in column_modalities.items():
        if modality != "text" or not any(isinstance(v, str) and len(v) > MAX_TEXT_CHARS for v in table[column]):
            continue
        _, cut = cut_long_texts(table[column])
        table = table.map(lambda batch, c=column: {c: cut_long_texts(batch[c])[0]}, batched=True, desc="cutting long texts")
        notes.append(cut_note(cut, f"column {column!r}"))
    return table, notes


def _fetch_remote_column(table, column: str):
    """Replace media URLs in ``column`` by downloaded local paths; return failures by URL."""
    from mmst_cli.core.data.media import classify_string
    from mmst_cli.core.data.remote_media import RemoteMediaError, fetch_media

    urls = {value for value in table[column] if isinstance(value, str) and classify_string(value).source == "url"}
    if not urls:
        return table, {}
    local: dict[str, str] = {}
    failures: dict[str, str] = {}
    for url in sorted(urls):
        try:
            local[url] = str(fetch_media(url))
        except RemoteMediaError as error:
            failures[url] = f"download refused or failed: {error}"

    def substitute(batch):
        batch[column] = [local.get(value, value) for value in batch[column]]
        return batch

    return table.map(substitute, batched=True, desc="fetching remote media"), failures


def _absolutise_paths(table, column_modalities: dict[str, str], root: Path, pdf: RenderSettings):
    import datasets

    path_columns = [
        column
        for column, modality in column_modalities.items()
        if modality in ("image", "video") and isinstance(table.features[column], datasets.Value)
    ]
    if not path_columns:
        return table

    def absolute(batch):
        for column in path_columns:
            paths = [(root / Path(value).expanduser()).resolve() for value in batch[column]]
            if column_modalities[column] == "image":
                paths = [processor_readable_image(path, pdf) for path in paths]
            batch[column] = [str(path) for path in paths]
        return batch

    return table.map(absolute, batched=True, desc="resolving media paths")


def load_pair_data(
    reference: str,
    *,
    config: str | None = None,
    split: str | None = None,
    columns: list[str] | None = None,
    media_root: Path | None = None,
    audio_sampling_rate: int | None = None,
    skip_bad: bool = False,
    allow_remote_media: bool = False,
    allow_outside_root: bool = False,
    pdf: RenderSettings = RenderSettings(),
    lazy_audio: bool = False,
) -> PairData:
    """Load (anchor, positive[, negatives...]) data and validate its media: see the module docstring."""
    table = load_table(reference, config=config, split=split)
    table = select_columns(table, columns, reference)
    return prepare_media(
        table,
        reference,
        media_root=media_root,
        audio_sampling_rate=audio_sampling_rate,
        skip_bad=skip_bad,
        allow_remote_media=allow_remote_media,
        allow_outside_root=allow_outside_root,
        pdf=pdf,
        lazy_audio=lazy_audio,
    )


def split_off_eval(data: PairData, fraction: float, seed: int) -> tuple[PairData, PairData]:
    """Hold out ``fraction`` of the rows as evaluation data (``--eval-split``)."""
    if not 0 < fraction < 1:
        raise MmstError(f"--eval-split must be between 0 and 1 (exclusive), got {fraction}")
    parts = data.dataset.train_test_split(test_size=fraction, seed=seed)
    if len(parts["test"]) == 0 or len(parts["train"]) == 0:
        raise MmstError(f"--eval-split {fraction} leaves an empty split of {len(data.dataset)} rows")
    train = PairData(
        parts["train"], data.column_modalities, data.source, data.skipped_rows, notes=data.notes,
        frame_list_columns=data.frame_list_columns,
    )  # fmt: skip
    held_out = PairData(
        parts["test"], data.column_modalities, f"{data.source} (held-out {fraction:g})",
        frame_list_columns=data.frame_list_columns,
    )  # fmt: skip
    return train, held_out


def utf8_lines(source: str, stream: TextIO | BinaryIO) -> Iterator[tuple[int, str]]:
    """Numbered lines of a text or binary stream (``input SOURCE`` in messages), decoded one at a
    time so that a line that is not UTF-8 is named exactly."""
    for number, line in enumerate(getattr(stream, "buffer", stream), start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf8")
            except UnicodeDecodeError as error:
                raise MmstError(
                    f"input {source!r}: line {number} is not UTF-8 text (byte {line[error.start]:#04x} at "
                    f"position {error.start + 1}); convert the file first, e.g. iconv -f latin1 -t utf-8"
                ) from error
        yield number, line
