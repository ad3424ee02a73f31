"""Where results go: output paths are checked before any work, so a bad one fails in a second.

A run folder, an embeddings file, a TREC run, per-query metrics or a plot: each is refused at
once when it names a folder where a file is wanted, sits under a file, or cannot be written (a
read-only file system, no permission). Plain Python.
"""

from __future__ import annotations

import os
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
