"""What ``mmst encode`` reads: a file, folder, stdin or dataset turned into ids plus checked inputs.

Every media reference is checked (and confined) here, before any model loads, so a missing file is
an error naming its row, never text. ``datasets`` reads the tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from mmst_cli.core.data.documents import PdfProblem, RenderSettings, is_pdf_name, page_of, page_sizes
from mmst_cli.core.data.frames import is_frame_list_feature
from mmst_cli.core.data.media import (
    classify_string,
    expand_pdf,
    media_modality_of_name,
    processor_readable_image,
)
from mmst_cli.core.data import retrieval_folders
from mmst_cli.core.data.tables import (
    DATA_FILE_BUILDERS, NON_CONTENT_COLUMNS, PROBLEMS_SHOWN, cut_long_texts, cut_note, is_retrieval_folder, utf8_lines,
)
from mmst_cli.core.encode.checked_inputs import EncodeInputs, FeatureInputs, ReferenceInputs, inputs_fingerprint
from mmst_cli.core.errors import MmstError

#: Column names taken as the input, in this order, when a table has several content columns.
PREFERRED_COLUMNS = ("input", "text", "sentence", "content", "image", "audio", "path", "file")

#: Plain-text files read like stdin: one text or media path per line.
LINE_FILE_EXTENSIONS = (".txt",)

#: Media a folder input picks up (by extension, recursively), besides PDF files (each page an image).
FOLDER_MODALITIES = ("image", "audio")

@dataclass(frozen=True)
class PdfOptions:
    """How ``mmst encode`` takes PDF pages.

    Attributes:
        render: Resolution and password (``--pdf-dpi``, ``--pdf-password``).
        text: Embed each page's text layer instead of its image (``--pdf-text``); default off.
    """

    render: RenderSettings = RenderSettings()
    text: bool = False


def _check_references(
    ids: list[Any],
    values: Sequence[Any],
    labels: Callable[[int], str],
    root: Path,
    source: str,
    confine_to: Path | None,
    pdf: PdfOptions,
    skip_bad: bool,
) -> ReferenceInputs:
    """Classify every string input, one cell at a time, and make media paths absolute.

    Unlike a training column (one modality per column), each cell may be text, an image, an audio
    file or a PDF page. A string that names a media file by its extension is media: a missing or
    undecodable file is an error naming its row, never text.

    Returns:
        The inputs, with the unusable rows left out when ``skip_bad``.

    Raises:
        MmstError: listing how many rows are unusable and the first few (unless ``skip_bad``).
    """
    inputs = ReferenceInputs(source=source, ids=[])
    problems: list[str] = []
    textless = 0
    for row, value in enumerate(values):
        if not isinstance(value, str):
            kind = "no value" if value is None else f"not a text or path but {type(value).__name__}"
            problems.append(f"{labels(row)}: {kind}")
            continue
        report = classify_string(value, root, confine_to, pdf.render)
        modality, reference = str(report.modality), None
        if report.source == "url":
            problems.append(f"{labels(row)}: {value[:80]}: remote media is not downloaded by mmst encode; "
                            "download it and pass the local path")
            continue
        if report.problem:
            problems.append(f"{labels(row)}: {value[:80]}: {report.problem}")
            continue
        if report.source == "pdf":
            page = page_of(value, root, pdf.render)
            width, height = page_sizes(page.path, pdf.render.password)[page.number - 1]
            inputs.pdf_pages.append({
                "id": ids[row], "file": value.rpartition("#")[0], "page": page.number, "width_pt": width,
                "height_pt": height,
            })  # fmt: skip
            value, reference = page, f"{page.path}#page={page.number}"
            if pdf.text:
                value, modality = page.text(), "text"
                textless += not value
        elif report.source == "file":
            path = Path(value).expanduser()
            path = (path if path.is_absolute() else root / path).resolve()
            reference = str(path)
            if modality == "image":
                path = processor_readable_image(path)
            elif modality == "audio":
                inputs.audio_rows.add(len(inputs.values))
            value = str(path)
        inputs.ids.append(ids[row])
        inputs.values.append(value)
        inputs.references.append(reference)
        inputs.row_modalities.append(modality)
        inputs.modalities[modality] = inputs.modalities.get(modality, 0) + 1
        inputs.first_rows.setdefault(modality, labels(row))
    if problems:
        shown = "; ".join(problems[:PROBLEMS_SHOWN])
        more = f" and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
        if not skip_bad:
            raise MmstError(
                f"input {source!r}: {len(problems)} of {len(values)} rows are unusable ({shown}{more}); "
                "fix them, set --media-root, or pass --skip-bad to leave them out"
            )
        if not inputs.values:
            raise MmstError(f"input {source!r}: every row is unusable ({shown}{more}); nothing left to encode")
        inputs.skipped = len(problems)
        inputs.notes.append(f"left out {len(problems)} unusable row(s) of input {source!r} (--skip-bad): {shown}{more}")
    if textless:
        inputs.notes.append(
            f"{textless} of {len(inputs.pdf_pages)} PDF page(s) have no text layer (scanned?); "
            "they are embedded as empty text (--pdf-text)"
        )
    return inputs


def _reference_inputs(
    source: str,
    ids: list[Any],
    values: Sequence[Any],
    labels,
    root: Path,
    confine_to: Path | None,
    pdf: PdfOptions = PdfOptions(),
    skip_bad: bool = False,
) -> ReferenceInputs:
    if not values:
        raise MmstError(f"input {source!r} has nothing to embed (no lines, rows or files); give it at least one")
    inputs = _check_references(ids, values, labels, root, source, confine_to, pdf, skip_bad)
    inputs.values, cut = cut_long_texts(inputs.values)
    inputs.fingerprint = inputs_fingerprint(inputs.ids, inputs.values)
    if cut:
        inputs.notes.append(cut_note(cut, f"input {source!r}"))
    return inputs


def _line_inputs(
    source: str, stream: TextIO | BinaryIO, root: Path, confine_to: Path | None, pdf: PdfOptions, skip_bad: bool
) -> ReferenceInputs:
    """One input per non-blank line; ids are the 0-based positions, messages name line numbers."""
    values: list[str] = []
    line_numbers: list[int] = []
    for number, line in utf8_lines(source, stream):
        text = line.rstrip("\r\n")
        if text.strip():
            values.append(text)
            line_numbers.append(number)
    labels = lambda row: f"line {line_numbers[row]}"  # noqa: E731
    return _reference_inputs(source, list(range(len(values))), values, labels, root, confine_to, pdf, skip_bad)


def _folder_media(folder: Path) -> list[Path]:
    """Image, audio and PDF files under ``folder`` (recursive, hidden files and folders skipped), sorted."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and (media_modality_of_name(path.name) in FOLDER_MODALITIES or is_pdf_name(path.name)):
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
    confine_to: Path | None,
    pdf: PdfOptions,
    skip_bad: bool,
) -> EncodeInputs:
    import datasets

    names = list(table.column_names)
    if id_column is not None and id_column not in names:
        raise MmstError(f"input {source!r} has no column {id_column!r}; its columns are {names}; fix --id-column")
    # A BEIR / mteb corpus's ids are what its qrels and any TREC run name (row numbers would match nothing).
    id_column = id_column or next((name for name in retrieval_folders.CORPUS_ID_COLUMNS if name in names), None)
    chosen = pick_column(names, column, id_column, source)
    notes = []
    others = [name for name in _content_columns(names, id_column) if name != chosen]
    if id_column == "_id" and chosen == "text" and "title" in others:
        # What mmst evaluate embeds for a BEIR document, so an index of it holds the same vectors.
        table = retrieval_folders.join_title_and_text(table)
        others.remove("title")
    if column is None and others:
        notes.append(f"embedding column {chosen!r} (other columns: {', '.join(others)}); pick another with --column")
    ids = _scalar_ids(list(table[id_column]), id_column, source) if id_column else list(range(len(table)))
    feature = table.features[chosen]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        labels = lambda row: f"row {row + 1}, column {chosen!r}"  # noqa: E731
        inputs = _reference_inputs(source, ids, list(table[chosen]), labels, root, confine_to, pdf, skip_bad)
        inputs.column, inputs.notes = chosen, notes + inputs.notes
        return inputs
    is_bytes = isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary")
    if isinstance(feature, (datasets.Image, datasets.Audio)) or is_bytes or is_frame_list_feature(feature):
        return FeatureInputs(
            source=source,
            ids=ids,
            fingerprint=inputs_fingerprint(ids, [str(getattr(table, "_fingerprint", "")), chosen]),
            column=chosen,
            notes=notes,
            table=table.select_columns([chosen]),
            media_root=media_root,
            allow_outside_root=confine_to is None,
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
    pdf: PdfOptions = PdfOptions(),
    skip_bad: bool = False,
) -> EncodeInputs:
    """Read and check the inputs, before any model is loaded.

    Args:
        reference: ``-`` for stdin; a ``.txt`` file (one input per line); a jsonl / json / csv /
            parquet file; a PDF file (every page; ``report.pdf#page=2-5`` for some; ids are page
            ids, ``report.pdf#page=3``); a folder with ``save_to_disk`` files or data files at its
            top level (a dataset); a retrieval folder (BEIR, mteb / ViDoRe, BEIR of PDFs: its corpus,
            read as ``mmst evaluate`` reads it); any other folder (its image and audio files and
            the pages of its PDF files, recursively, sorted by relative path; ids are the relative
            paths and page ids); or a Hub dataset id.
        column: The table column to embed; ``None`` picks one with :func:`pick_column`.
        id_column: The table column of ids; ``None`` (default) for the corpus id column of a BEIR
            or mteb table (``_id``, ``corpus-id``) when it has one, else 0-based row numbers.
        split: Dataset split; ``None`` for ``train``.
        data_config: Hub dataset configuration; ``None`` for the default.
        media_root: Folder relative media paths resolve against; ``None`` for the input file's
            folder, or the current directory for stdin and Hub datasets.
        stdin: The stream ``-`` reads; ``None`` for ``sys.stdin``.
        allow_outside_root: Accept media paths that resolve outside their folder (the table's or the
            text file's folder, the folder given, the current one for stdin, or ``media_root``),
            including symlinks that point out of a folder; refused by default.
        pdf: How PDF pages are taken (rendering, password, text layer); defaults when not given.
        skip_bad: Leave unusable rows (a missing file, a bad page) out and count them, instead of failing.

    Raises:
        MmstError: for a missing input, a bad column, or unusable media (naming the row).
    """
    from mmst_cli.core.data.tables import load_table

    root_override = Path(media_root).expanduser() if media_root is not None else None
    is_table_input = reference != "-" and Path(reference).expanduser().suffix.lower() not in LINE_FILE_EXTENSIONS
    if (column is not None or id_column is not None) and not is_table_input:
        raise MmstError("--column and --id-column apply to tables (jsonl, csv, parquet, datasets), not to line inputs")

    def confined(root: Path) -> Path | None:
        return None if allow_outside_root else root

    if reference == "-":
        root = root_override or Path.cwd()
        return _line_inputs("-", stdin if stdin is not None else sys.stdin, root, confined(root), pdf, skip_bad)
    path = Path(reference).expanduser()
    if not path.exists() and path.suffix.lower() in (*DATA_FILE_BUILDERS, *LINE_FILE_EXTENSIONS):
        raise MmstError(f"input {reference!r} does not exist; check the path")
    if path.is_file() and path.suffix.lower() in LINE_FILE_EXTENSIONS:
        root = root_override or path.parent
        with path.open("rb") as stream:
            return _line_inputs(reference, stream, root, confined(root), pdf, skip_bad)
    labels = lambda row: f"file {ids[row]!r}"  # noqa: E731
    if is_pdf_name(path.name.partition("#")[0]) and not path.is_dir():
        if column is not None or id_column is not None:
            raise MmstError(f"--column and --id-column apply to tables; {reference!r} is a PDF file")
        try:
            ids = expand_pdf(path.name, path.parent, confined(path.parent), pdf.render.password)
        except PdfProblem as error:
            raise MmstError(f"input {reference!r}: {error}") from error
        return _reference_inputs(reference, ids, ids, labels, path.parent, confined(path.parent), pdf, skip_bad)
    pdf_corpus = False
    if is_retrieval_folder(path):  # a BEIR / mteb folder: its corpus, as mmst evaluate reads it
        path, pdf_corpus = retrieval_folders.corpus_input(path, reference)
        reference = str(path)
    if path.is_dir() and (pdf_corpus or not _is_dataset_folder(path)):
        if column is not None or id_column is not None:
            raise MmstError(f"--column and --id-column apply to tables; {reference!r} is a folder of media files")
        files = _folder_media(path)
        if not files:
            raise MmstError(
                f"folder {reference!r} has no image, audio or PDF files (by extension) and no dataset or data files"
            )
        ids = [
            item
            for file in files
            for item in (expand_pdf(file.as_posix(), path, confined(path), pdf.render.password)
                         if is_pdf_name(file.name) else [file.as_posix()])
        ]  # fmt: skip
        return _reference_inputs(reference, ids, ids, labels, path, confined(path), pdf, skip_bad)
    if split is not None and path.is_file():
        raise MmstError(f"--split applies to dataset folders and Hub datasets; {reference!r} is one file")
    table = load_table(reference, config=data_config, split=split)
    root = root_override or (path.parent if path.is_file() else path if path.is_dir() else Path.cwd())
    return _table_inputs(
        table, reference, column=column, id_column=id_column, root=root, media_root=root_override,
        confine_to=confined(root), pdf=pdf, skip_bad=skip_bad,
    )  # fmt: skip


