"""Audio in pair data: decode and resample to the model's rate, checked before any model work.

Bare feature extractors take arrays at their own rate and resample nothing, so audio cells reach
the model as ``{"array", "sampling_rate"}`` at the model's rate. Every clip is decoded once while
the data is checked (a clip that does not decode or is too short stops the run, naming it); then
either the decoded arrays are stored in the table (``lazy=False``), or the table keeps a reference
to each clip (``{"bytes", "path"}``, as an undecoded HF ``Audio`` cell) and decodes it whenever a
row is read (:class:`DecodedAudio` as the table's transform). Training uses the lazy form so that
DataLoader workers do the decoding and nothing decoded is written to the dataset cache.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmst_cli.core.data.media import audio_length_problem
from mmst_cli.core.errors import MmstError, first_line


def decode_audio(source, sampling_rate: int):
    """Read an audio file (a path or a file-like object) as mono float32 at ``sampling_rate``."""
    import numpy as np
    import soundfile
    from scipy.signal import resample_poly

    samples, rate = soundfile.read(source if not isinstance(source, Path) else str(source), dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    if rate != sampling_rate:
        from math import gcd

        divisor = gcd(rate, sampling_rate)
        samples = resample_poly(samples, sampling_rate // divisor, rate // divisor).astype(np.float32)
    return samples


def is_audio_reference(cell: Any) -> bool:
    """Whether ``cell`` is an undecoded clip as the lazy form stores it (``{"bytes", "path"}``)."""
    return isinstance(cell, dict) and set(cell) == {"bytes", "path"}


def _reference(cell: Any, root: Path) -> dict[str, Any]:
    """An audio cell as ``{"bytes", "path"}``; file paths made absolute (a path string resolves
    against ``root``, an HF ``Audio`` cell's path against the working folder, as ``datasets`` reads it)."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return {"bytes": cell["bytes"], "path": cell.get("path")}
        return {"bytes": None, "path": str(Path(cell["path"]).resolve())}
    return {"bytes": None, "path": str((root / Path(cell).expanduser()).resolve())}


def _shown(cell: dict[str, Any]) -> str:
    return cell.get("path") or "<bytes>"


@dataclass(frozen=True)
class DecodedAudio:
    """Decodes the audio columns of a batch of rows: a ``datasets`` transform (picklable, so
    spawned DataLoader workers can run it).

    Attributes:
        columns: The audio columns; their cells are references (see :func:`is_audio_reference`).
        sampling_rate: The model's rate; every clip is resampled to it.
    """

    columns: tuple[str, ...]
    sampling_rate: int

    def decode(self, cell: dict[str, Any]) -> dict[str, Any]:
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else Path(cell["path"])
        return {"array": decode_audio(source, self.sampling_rate), "sampling_rate": self.sampling_rate}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        for column in self.columns:
            if column in batch:
                batch[column] = [self.decode(cell) for cell in batch[column]]
        return batch


def lazy_decoder(table) -> DecodedAudio | None:
    """The decoder of a table whose audio decodes when read (``lazy=True``), else ``None``."""
    transform = table.format["format_kwargs"].get("transform") if table.format["type"] == "custom" else None
    return transform if isinstance(transform, DecodedAudio) else None


def decode_into_table(table):
    """``table`` with lazily decoded audio decoded once and stored, for data that is read several
    times (evaluation data is fingerprinted, then scored); other tables as they are."""
    decoder = lazy_decoder(table)
    if decoder is None:
        return table
    table = table.with_format(None)
    features = table.features.copy()
    for column in decoder.columns:
        features[column] = _decoded_feature()
    return table.map(decoder, batched=True, batch_size=64, features=features, desc="decoding audio")


def _decoded_feature() -> dict[str, Any]:
    """How a decoded clip is stored in a table."""
    import datasets

    return {"array": datasets.Sequence(datasets.Value("float32")), "sampling_rate": datasets.Value("int64")}


def _checked(decoder: DecodedAudio, cell: dict[str, Any], column: str, source: str) -> dict[str, Any]:
    """Decode one clip as training will; stop on one that does not decode or is too short."""
    import soundfile

    try:
        decoded = decoder.decode(cell)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise MmstError(f"data {source!r}: column {column!r}: audio does not decode ({first_line(error)})") from error
    problem = audio_length_problem(decoded["array"].size, decoder.sampling_rate)
    if problem:
        raise MmstError(f"data {source!r}: column {column!r}: {_shown(cell)}: {problem}")
    return decoded


def prepare_audio_columns(table, columns: list[str], root: Path, sampling_rate: int, source: str, *, lazy: bool):
    """Check every clip of ``columns`` and return the table with them decoded, or decoding when read.

    Args:
        table: A ``datasets.Dataset`` whose audio columns hold file paths or undecoded HF ``Audio`` cells.
        columns: The audio columns.
        root: The folder relative audio paths resolve against.
        sampling_rate: The model's audio rate.
        source: The data reference, for messages.
        lazy: Keep references and decode whenever rows are read (:class:`DecodedAudio`), instead
            of storing the decoded arrays in the table.
    """
    import datasets

    features = table.features.copy()
    for column in columns:
        features[column] = datasets.Audio(decode=False)
    table = table.map(
        lambda batch: {column: [_reference(cell, root) for cell in batch[column]] for column in columns},
        batched=True, features=features, desc="locating audio",
    )  # fmt: skip
    decoder = DecodedAudio(tuple(columns), sampling_rate)
    if lazy:
        for column in columns:
            for cell in table[column]:
                _checked(decoder, cell, column, source)
        return table.with_transform(decoder)

    def decode(batch):
        return {column: [_checked(decoder, cell, column, source) for cell in batch[column]] for column in columns}

    for column in columns:
        features[column] = _decoded_feature()
    return table.map(decode, batched=True, batch_size=64, features=features, desc="decoding audio")
