"""Where results go: output paths are checked before any work, and written whole or not at all.

A run folder, an embeddings file, a TREC run, per-query metrics or a plot: each is refused at
once when it names a folder where a file is wanted, sits under a file, or cannot be written (a
read-only file system, no permission). Every file or folder mmst writes goes through
:func:`atomic_path`: a temporary name beside it, renamed when complete and removed when the
writing fails (a full disk, Ctrl-C), so no half-written result or stray temporary is left. Plain Python.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmst_cli.core.errors import MmstError


def existing_ancestor(path: Path) -> Path:
    """The nearest path on the way up from ``path`` that exists (``path`` itself if it does)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def ensure_writable_folder(folder: Path, flag: str) -> None:
    """Check, without creating anything, that ``folder`` can be created and written to."""
    existing = existing_ancestor(folder)
    if not existing.is_dir():
        raise MmstError(f"{flag} {folder}: {existing} is a file, not a folder; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MmstError(f"{flag} {folder} is not writable ({existing} denies writing); choose another folder")


def ensure_writable_file(path: Path, flag: str) -> None:
    """Check, without creating anything, that the file ``path`` can be written (its folder made)."""
    if path.is_dir():
        raise MmstError(f"{flag} {path} is a folder; name a file in it, such as {path / 'results'}{path.suffix or ''}")
    ensure_writable_folder(path.parent, flag)


def temporary_sibling(path: Path) -> Path:
    """A name beside ``path`` that no other run or call uses: ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The block may write a file or a folder there. On any failure (including Ctrl-C) the temporary
    is removed and ``path`` is left as it was. ``path``'s folder is created when missing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        if temporary.is_dir() and path.is_dir():
            # os.replace cannot put a folder over a non-empty one: move the old one aside first, so
            # that an interruption leaves the old folder or the new one under the name, never none.
            aside = temporary_sibling(path)
            os.replace(path, aside)
            try:
                os.replace(temporary, path)
            except BaseException:
                os.replace(aside, path)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
