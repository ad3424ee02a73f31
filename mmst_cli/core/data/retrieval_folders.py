"""How the corpus of a retrieval folder reads (its parts are found by ``core/data/tables.py``).

``mmst evaluate`` reads a retrieval folder as a whole task (``core/retrieval/tasks.py``);
``mmst encode``, ``mmst index`` and ``mmst mine --corpus`` read only its corpus. Both take the
corpus from here, with the same ids and the same document texts, so an index built from a folder
holds the very documents ``evaluate`` scores, and a TREC run searched from it scores against the
folder's qrels.

- **BEIR**: ``corpus.jsonl`` (ids in ``_id``; a document's text is its ``title`` and ``text``
  joined by a space), ``queries.jsonl``, ``qrels/<split>.tsv``.
- **BEIR of PDFs**: PDF files in place of ``corpus.jsonl``, in ``corpus/`` or in the folder itself;
  ids are page ids relative to that folder.
- **mteb / ViDoRe**: ``corpus``, ``queries`` and ``qrels`` as data files or ``save_to_disk``
  sub-folders; corpus ids in ``corpus-id``.
"""

from __future__ import annotations

from pathlib import Path

from mmst_cli.core.data.documents import pdf_files
from mmst_cli.core.data.tables import find_part
from mmst_cli.core.errors import MmstError

#: The id column of a corpus table, by format: BEIR's ``_id``, mteb / ViDoRe's ``corpus-id``.
CORPUS_ID_COLUMNS = ("_id", "corpus-id")


def pdf_corpus_folder(folder: Path) -> Path | None:
    """Where the PDFs of a BEIR folder without ``corpus.jsonl`` are: ``corpus/``, else the folder itself."""
    if (folder / "corpus").is_dir() and pdf_files(folder / "corpus"):
        return folder / "corpus"
    return folder if any(path.suffix.lower() == ".pdf" for path in folder.iterdir() if path.is_file()) else None


def corpus_input(folder: Path, reference: str) -> tuple[Path, bool]:
    """The corpus of a retrieval folder, as ``mmst encode`` and ``mmst index`` read it.

    Args:
        folder: A folder :func:`mmst_cli.core.data.tables.is_retrieval_folder` accepts.
        reference: The folder as the user named it, for messages.

    Returns:
        Its ``corpus`` file or sub-folder, or the folder of its PDFs; and whether that is a folder
        of PDFs (read as media files, though the folder itself may hold data files).

    Raises:
        MmstError: (exit 2) the folder has no corpus.
    """
    part = find_part(folder, "corpus")
    if part is not None and not (part.is_dir() and pdf_files(part)):
        return part, False
    pdfs = pdf_corpus_folder(folder)
    if pdfs is None:
        raise MmstError(
            f"input {reference!r} is a retrieval folder without a corpus; give it corpus.jsonl (BEIR), a corpus "
            "file or folder (mteb), or PDF files, or name the corpus itself"
        )
    return pdfs, True


def join_title_and_text(table):
    """BEIR's convention: a document with a ``title`` is its title and text joined by a space.

    Args:
        table: A ``datasets.Dataset`` of a corpus; returned as it is without both columns.
    """
    if "text" not in table.column_names or "title" not in table.column_names:
        return table
    return table.map(lambda row: {"text": f"{row['title']} {row['text']}".strip() if row["title"] else row["text"]})
