"""The index folder ``mmst index`` writes and ``mmst search`` reads: its files and its manifest.

Every file of the folder (see docs/search.md):

- ``manifest.json``: format name and version, the kind (``dense`` or ``multi_vector``), the
  document count, vector width, the model (as given and resolved), its similarity, the build
  settings, the corpora indexed, and the size and sha256 of every other file;
- ``documents.jsonl``: one line per row, in row order: ``id``, ``corpus``, ``modality``, ``ref``
  (the media file, absolute, ``/a/b.pdf#page=3`` for a page; ``media/<sha1>.png`` relative to the
  index for media held inside a dataset; ``null`` for text) and ``text`` (the document's text;
  ``null`` for media), so search shows results without reading the corpus again;
- ``media/``: the images and audio a dataset held in its cells (no file to refer to), written once
  each, named by the SHA-1 of their bytes; absent when there were none;
- dense models: ``vectors.npy`` (float32 ``[rows, dim]``, as encoded: unit length for cosine
  models) and ``index.faiss`` (the FAISS index built over them);
- multi-vector models: ``tokens.npy`` (float32 ``[tokens, dim]``, every row's token vectors
  stacked) and ``offsets.npy`` (int64 ``[rows + 1]``: row ``i`` is ``tokens[offsets[i]:offsets[i+1]]``).

The folder is written whole under a temporary name and renamed into place
(:func:`mmst_cli.core.outputs.atomic_path`), so a reader never sees half an index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError, first_line

FORMAT = "mmst-index"
#: Bumped when the layout changes, so an older mmst never misreads a newer index.
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
DOCUMENTS = "documents.jsonl"
VECTORS = "vectors.npy"
FAISS_INDEX = "index.faiss"
TOKENS = "tokens.npy"
OFFSETS = "offsets.npy"
#: The folder of media the corpora held inside their datasets (relative ``ref`` values point here).
MEDIA = "media"

#: The files of each kind of index besides the manifest.
FILES = {"dense": (DOCUMENTS, VECTORS, FAISS_INDEX), "multi_vector": (DOCUMENTS, TOKENS, OFFSETS)}
#: The manifest fields search and ``--add`` read, with the type each must have; a manifest edited by
#: hand or written by a broken tool is refused by name here instead of failing deep inside a search.
MANIFEST_FIELDS = {"kind": str, "count": int, "dim": int, "settings": dict, "corpora": list, "files": dict}
_JSON_TYPES = {str: "a string", int: "a whole number", dict: "an object", list: "a list"}
SETTINGS_FIELDS = ("index", "quantize", "model", "model_identity", "similarity", "normalize", "dim", "pdf_dpi")


def file_digest(path: Path) -> str:
    """The sha256 of a file, read 4 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_documents(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``documents.jsonl``: one JSON object per row, in row order."""
    with path.open("w", encoding="utf8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the size and sha256 of every file of ``folder`` (``media/`` files by their relative
    path, ``media/<sha1>.png``) to ``manifest`` and write it there."""
    manifest = dict(manifest, format=FORMAT, version=FORMAT_VERSION)
    manifest["files"] = {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf8")
    return manifest


def is_stored_media(ref: str | None) -> bool:
    """Whether a document's ``ref`` names a file of the index's ``media/`` folder: the only relative
    references an index holds (corpus files are recorded absolute)."""
    return ref is not None and not Path(ref).is_absolute()


@dataclass
class IndexFolder:
    """An index folder whose manifest was read and whose files were checked against it.

    Attributes:
        path: The folder.
        manifest: ``manifest.json`` as read.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        """``dense`` or ``multi_vector``."""
        return self.manifest["kind"]

    @property
    def settings(self) -> dict[str, Any]:
        """How the index was built (see :class:`mmst_cli.core.index.build.IndexOptions`)."""
        return self.manifest["settings"]

    @property
    def count(self) -> int:
        """Documents in the index."""
        return int(self.manifest["count"])

    def damaged(self, name: str, problem: BaseException | str) -> MmstError:
        """The error for a file of the index whose size matches the manifest but whose content does
        not read (bytes changed in place): the one-line message ``open_index`` gives for a wrong size."""
        return MmstError(f"index {str(self.path)!r}: {name} does not read ({problem if isinstance(problem, str) else first_line(problem)}); the index is damaged, rebuild it")

    def documents(self) -> Iterator[dict[str, Any]]:
        """The rows of ``documents.jsonl``, in row order."""
        with (self.path / DOCUMENTS).open(encoding="utf8", errors="strict") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = json.loads(line)
                except ValueError as error:  # also UnicodeDecodeError
                    raise self.damaged(f"{DOCUMENTS} line {number}", error) from None
                if not isinstance(record, dict):
                    raise self.damaged(f"{DOCUMENTS} line {number}", "not a JSON object")
                yield record

    def media_reference(self, ref: str | None) -> str | None:
        """A document's ``ref`` as a path to open: a ``media/`` file of the index made absolute,
        any other reference (a corpus file, already absolute) unchanged."""
        return str(self.path.resolve() / ref) if is_stored_media(ref) else ref

    def media_folder(self, extra: Iterable[Path] = ()) -> Path:
        """The folder this index's media may be read from: the deepest one holding the index (its
        ``media/``), every corpus it records (a file's folder) and the ``extra`` folders, so that a
        ``documents.jsonl`` edited to name other files cannot make mmst read them."""
        import os

        folders = [self.path.resolve(), *extra]
        for corpus in self.manifest.get("corpora", []):
            location = Path(corpus)
            if location.is_absolute():  # a Hub dataset's name holds no local media
                folders.append(location if location.is_dir() or not location.suffix else location.parent)
        return Path(os.path.commonpath(folders))

    def vectors(self):
        """``vectors.npy`` as a read-only memory map (dense indexes)."""
        import numpy as np

        try:
            return np.load(self.path / VECTORS, mmap_mode="r")
        except ValueError as error:  # a header edited in place, or pickled data numpy refuses
            raise self.damaged(VECTORS, error) from None

    def token_vectors(self):
        """``(tokens, offsets)`` of a multi-vector index: the token matrix as a read-only memory map,
        and the row offsets, checked against it (one per document plus one, rising from 0 to the
        token count), so that bytes changed in place inside ``offsets.npy`` are a damaged index, not
        a failure deep inside MaxSim or an ``--add`` that writes them on."""
        import numpy as np

        loaded = {}
        for name, mmap_mode in ((TOKENS, "r"), (OFFSETS, None)):  # offsets: one small int per document
            try:
                loaded[name] = np.load(self.path / name, mmap_mode=mmap_mode)
            except ValueError as error:  # a header edited in place, or pickled data numpy refuses
                raise self.damaged(name, error) from None
        tokens, offsets = loaded[TOKENS], loaded[OFFSETS]
        if tokens.ndim != 2 or tokens.shape[1] != self.manifest["dim"]:
            raise self.damaged(TOKENS, f"shape {tokens.shape}, the manifest says {self.manifest['dim']} columns")
        rising = offsets.ndim == 1 and offsets.dtype.kind in "iu" and bool(np.all(np.diff(offsets) >= 0))
        if not rising or len(offsets) != self.count + 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
            raise self.damaged(OFFSETS, f"not {self.count + 1} rising row offsets from 0 to the {len(tokens)} token rows")
        return tokens, offsets

    def faiss_index(self):
        """``index.faiss`` as FAISS reads it (dense indexes)."""
        from mmst_cli.core.index import vector_index

        try:
            return vector_index.load(self.path / FAISS_INDEX, self.settings)
        except RuntimeError as error:  # FAISS reports an unreadable file as a C++ exception
            raise self.damaged(FAISS_INDEX, error) from None


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a manifest of the current version unusable (a missing or mistyped field), or ``None``."""
    for field, kind in MANIFEST_FIELDS.items():
        value = manifest.get(field)
        # bool is an int to Python, but never a count or a width
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"has no usable {field!r} ({_JSON_TYPES[kind]} expected, found {value!r})"
    if manifest["kind"] not in FILES:
        return f"has kind {manifest['kind']!r}, not one of {sorted(FILES)}"
    if manifest["count"] < 0 or manifest["dim"] < 1:
        return f"has count {manifest['count']} and dim {manifest['dim']}, which no index has"
    missing = [field for field in SETTINGS_FIELDS if field not in manifest["settings"]]
    return f"has no setting(s) {', '.join(map(repr, missing))}" if missing else None


def open_index(reference: str | Path, flag: str = "index") -> IndexFolder:
    """Read an index folder's manifest and check that its files are there, whole.

    Sizes are checked on every open (cheap); the sha256 digests are recorded for tools that want
    to verify a copy, and are not recomputed here (hashing a large index would dominate a search).

    Raises:
        MmstError: (exit 2) naming the folder and what is wrong with it.
    """
    path = Path(reference).expanduser()
    hint = "build one with `mmst index --model M CORPUS -o FOLDER`"
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not an index folder"
        raise MmstError(f"{flag} {str(reference)!r} {what}; {hint}")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf8"))
    except FileNotFoundError:
        raise MmstError(f"{flag} {str(reference)!r} has no {MANIFEST}, so it is not an mmst index; {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MmstError(f"{flag} {str(reference)!r}: {MANIFEST} is unreadable ({error}); rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MmstError(f"{flag} {str(reference)!r}: {MANIFEST} is not an mmst index manifest; {hint}")
    if manifest.get("version") != FORMAT_VERSION:
        raise MmstError(
            f"{flag} {str(reference)!r} has index format version {manifest.get('version')!r}, this mmst reads "
            f"version {FORMAT_VERSION}; rebuild it with this mmst"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise MmstError(f"{flag} {str(reference)!r}: {MANIFEST} {problem}; the index is damaged, rebuild it")
    for name in FILES[manifest["kind"]]:
        entry = manifest["files"].get(name)
        expected = entry.get("bytes") if isinstance(entry, dict) else None
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual is None or actual != expected:
            state = "is missing" if actual is None else f"has {actual} bytes, the manifest says {expected}"
            raise MmstError(f"{flag} {str(reference)!r}: {name} {state}; the index is damaged, rebuild it")
    return IndexFolder(path, manifest)
