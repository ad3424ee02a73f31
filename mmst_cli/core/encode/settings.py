"""How a corpus is read and how it is embedded: the options ``mmst encode`` and ``mmst index`` share.

Both commands read corpora in every form ``mmst encode`` takes and embed them with the encode job,
so what they are told about reading (columns, ids, split, media root, PDF pages) is one
:class:`CorpusReading`, and what they are told about embedding (prompt, dim, batches, chunks,
devices) one :class:`EmbeddingSettings`; :class:`~mmst_cli.core.encode.job.EncodeOptions` and
:class:`~mmst_cli.core.index.build.IndexOptions` each hold one of both, and they are checked here,
once. A new input or embedding option is a field here (and a flag of each command).

This module imports no ML library at module level: the commands take their defaults from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mmst_cli.core.data.documents import DEFAULT_PDF_DPI, RenderSettings
from mmst_cli.core.errors import MmstError

if TYPE_CHECKING:
    from mmst_cli.core.encode.checked_inputs import EncodeInputs

#: Inputs per forward pass.
DEFAULT_BATCH_SIZE = 32

#: Rows encoded (and saved as one resumable part) at a time.
DEFAULT_CHUNK_SIZE = 4096


def split_devices(device: str | None) -> list[str]:
    """``--device`` (``cuda:0``, or several: ``cuda:0,cuda:1``, ``cpu,cpu``) split on commas; empty when ``None``."""
    return [item.strip() for item in device.split(",")] if device else []


def check_devices(device: str | None) -> None:
    """Refuse a ``--device`` list with an empty entry (``cuda:0,``), before any model loads."""
    if device is not None and (not device.strip() or not all(split_devices(device))):
        raise MmstError(f"--device {device!r} has an empty entry; write e.g. cuda:0,cuda:1 or cpu,cpu")


class _FlagGroup:
    """A group of options that commands fill from their flags of the same names."""

    @classmethod
    def field_names(cls) -> set[str]:
        """The names of the group's fields (the commands' parameters that fill them)."""
        return {item.name for item in fields(cls)}

    @classmethod
    def from_values(cls, values: Mapping[str, Any]):
        """The group from the entries of ``values`` named as its fields (a command's parameters,
        ``ctx.params``); fields ``values`` does not name keep their defaults."""
        return cls(**{name: values[name] for name in cls.field_names() if name in values})


@dataclass
class CorpusReading(_FlagGroup):
    """How a corpus is read: which column holds the inputs and which the ids, where media is, how
    PDF pages are taken. Every form :func:`~mmst_cli.core.encode.inputs.read_inputs` reads.

    Attributes:
        column: The table column to embed; ``None`` (the default) picks one (see
            :func:`~mmst_cli.core.encode.inputs.pick_column`).
        id_column: The table column whose values become the ids; ``None`` (the default) uses the
            0-based row number. Folders always use relative paths, line inputs the 0-based position.
        split: Dataset split to read; ``None`` (the default) for ``train``.
        data_config: Hub dataset configuration; ``None`` (the default) for the default one.
        media_root: Folder relative media paths resolve against; ``None`` (the default) for the
            input file's folder (the current directory for stdin and Hub datasets).
        allow_outside_root: Accept media paths that resolve outside their folder (a table's, a text
            file's, a folder input's, the current one for stdin, or ``media_root``), symlinks out of
            a folder included; ``False`` (the default) refuses them.
        skip_bad: Leave unusable rows (missing files, bad pages) out and count them; default off (fail).
        pdf_dpi: Resolution PDF pages render at; default 144.
        pdf_password: Password of encrypted PDF files; ``None`` (the default) for none.
        pdf_text: Embed PDF pages' text layers instead of their images; default off.
    """

    column: str | None = None
    id_column: str | None = None
    split: str | None = None
    data_config: str | None = None
    media_root: str | None = None
    allow_outside_root: bool = False
    skip_bad: bool = False
    pdf_dpi: float = DEFAULT_PDF_DPI
    pdf_password: str | None = None
    pdf_text: bool = False

    def validate(self) -> None:
        """Check the reading options on their own, before any input is read (exit 2 naming the flag)."""
        if self.media_root is not None and not Path(self.media_root).expanduser().is_dir():
            raise MmstError(f"--media-root {self.media_root!r} is not a folder")

    def read(self, reference: str, *, stdin: TextIO | None = None) -> EncodeInputs:
        """Read and check the corpus ``reference`` (see :func:`~mmst_cli.core.encode.inputs.read_inputs`),
        before any model loads; ``stdin`` is the stream ``-`` reads (``None``: ``sys.stdin``).

        Raises:
            MmstError: for a missing input, a bad column, or unusable media (naming the row).
        """
        from mmst_cli.core.encode.inputs import PdfOptions, read_inputs

        return read_inputs(
            reference, column=self.column, id_column=self.id_column, split=self.split, data_config=self.data_config,
            media_root=self.media_root, stdin=stdin, allow_outside_root=self.allow_outside_root,
            pdf=PdfOptions(RenderSettings(dpi=self.pdf_dpi, password=self.pdf_password), text=self.pdf_text),
            skip_bad=self.skip_bad,
        )  # fmt: skip


@dataclass
class EmbeddingSettings(_FlagGroup):
    """How inputs are embedded: what text goes before them, how wide the vectors are, in what
    batches and chunks, on which devices.

    Attributes:
        prompt: Text prepended to every text input (overrides the task's prompt); ``None`` (the
            default) for none.
        dim: Keep the first ``dim`` dimensions (Matryoshka truncation); ``None`` (the default) keeps all.
        token_pool_factor: Multi-vector models: keep about 1 / factor of each document's token
            vectors (``HierarchicalTokenPooling``); ``None`` (the default) for the model's own pooling.
        batch_size: Inputs per forward pass; default 32.
        chunk_size: Rows encoded and saved as one resumable part at a time; default 4096.
        device: ``None`` (the default) lets Sentence Transformers choose; one device (``cuda:0``,
            ``cpu``) runs in this process; several, comma-separated (``cuda:0,cuda:1`` or
            ``cpu,cpu``), start one encoding process per entry.
        decode_workers: Threads decoding image files ahead of the model; ``None`` (the default) for
            one per core, at most 4; 0 leaves decoding to the model. Unused with several devices
            (each encoding process decodes its own inputs).
        trust_remote_code: Run custom modelling code from the model's repository; default off.
    """

    prompt: str | None = None
    dim: int | None = None
    token_pool_factor: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    device: str | None = None
    decode_workers: int | None = None
    trust_remote_code: bool = False

    @property
    def devices(self) -> list[str]:
        """``device`` split on commas; empty when not given."""
        return split_devices(self.device)

    def validate(self) -> None:
        """Check the embedding options on their own, before any model loads (exit 2 naming the flag)."""
        for flag, value in (("--batch-size", self.batch_size), ("--chunk-size", self.chunk_size), ("--dim", self.dim)):
            if value is not None and value <= 0:
                raise MmstError(f"{flag} must be a positive whole number, got {value}")
        if self.decode_workers is not None and self.decode_workers < 0:
            raise MmstError(f"--decode-workers must be 0 or more, got {self.decode_workers}")
        check_devices(self.device)
        if self.token_pool_factor is not None and self.token_pool_factor < 1:
            raise MmstError(f"--token-pool-factor must be at least 1 (1 keeps every token, 2 about half), got {self.token_pool_factor}")


__all__ = ["CorpusReading", "DEFAULT_BATCH_SIZE", "DEFAULT_CHUNK_SIZE", "EmbeddingSettings", "check_devices", "split_devices"]
