"""Finished chunks of an ``mmst encode`` run, saved as float32 ``.npy`` parts with a manifest.

``--resume`` reuses them only when the manifest matches the new run (:data:`RESUME_KEYS`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError
from mmst_cli.core.outputs import atomic_path

#: Bumped when the parts layout changes, so an old parts folder is never misread.
MANIFEST_VERSION = 1

#: The manifest entries that must match for ``--resume`` to reuse finished parts. Precision and
#: format are not among them: parts are float32 and converted only when the output is written.
RESUME_KEYS = ("count", "fingerprint", "model", "task", "prompt", "dim", "normalize", "chunk_size", "token_pool_factor")

def parts_folder(output: Path) -> Path:
    """The hidden folder of finished chunks next to ``output``: ``.<output name>.parts``."""
    return output.parent / f".{output.name}.parts"


def _atomic_save_npy(path: Path, array) -> None:
    import numpy as np

    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        np.save(handle, array)


class Parts:
    """Finished chunks of one run, as float32 ``part-NNNNNN.npy`` files plus ``manifest.json``.

    Args:
        output: The final output file; the parts live in :func:`parts_folder` of it.
        manifest: What the parts were computed from (input count and hash, model, options).
        folder: Where the parts live instead; ``None`` (the default) for :func:`parts_folder` of
            ``output`` (a rank of a sharded run keeps its parts in a folder of its own under it).
    """

    def __init__(self, output: Path, manifest: dict[str, Any], folder: Path | None = None) -> None:
        self.folder = folder if folder is not None else parts_folder(output)
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
                    width = self.finished_width(index, rows)
                    if width is not None:
                        done[index] = width
                if len(set(done.values())) > 1:
                    raise MmstError(f"--resume: the parts in {str(self.folder)!r} disagree on the vector width; "
                                    "rerun without --resume")
        elif resume:
            log("nothing to resume (no parts folder); encoding from the start")
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / "manifest.json") as temporary:
            temporary.write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False), encoding="utf8")
        return done

    def finished_width(self, index: int, rows: int) -> int | None:
        """The vector width of chunk ``index`` when its part is complete (``rows`` float32 rows), else ``None``."""
        import numpy as np

        try:
            part = np.load(self.path(index), mmap_mode="r")
        except (OSError, ValueError):
            return None
        if part.ndim == 2 and part.shape[0] == rows and part.dtype == np.float32:
            return part.shape[1]
        return None

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


