"""Embedded media written out as files, so that ``mmst mine``'s rows and ``mmst index``'s documents can name it.

Mined rows reference media (paths relative to the output) rather than carry bytes, so a table or
dataset that embeds its images or audio (HF ``Image`` / ``Audio`` cells with bytes, or a binary
column) has each item written once into a media folder beside the output, named by the SHA-1 of
its bytes: the same picture in two rows (or two runs) is one file, and the file's name is its
content hash, which is also what tells mined documents apart
(:func:`mmst_cli.core.retrieval.mining_data.content_hash`).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError

#: The file extension of each format Pillow (images) or soundfile (audio) recognises in the bytes.
IMAGE_FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff", "WEBP": ".webp"}
AUDIO_FORMAT_EXTENSIONS = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3"}


def media_extension(data: bytes) -> str | None:
    """The extension of the image or audio format of ``data`` (sniffed, not taken from a name), or ``None``."""
    import soundfile
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return IMAGE_FORMAT_EXTENSIONS.get(image.format or "")
    except (UnidentifiedImageError, OSError):
        pass
    try:
        return AUDIO_FORMAT_EXTENSIONS.get(soundfile.info(io.BytesIO(data)).format)
    except (RuntimeError, soundfile.LibsndfileError):
        return None


def _cell_bytes(cell: Any) -> bytes | None:
    """The bytes of an undecoded HF Image / Audio cell (``{"bytes", "path"}``) or of a binary cell."""
    if isinstance(cell, dict):
        return cell.get("bytes")
    return cell if isinstance(cell, (bytes, bytearray)) else None


def write_embedded_media(inputs: Any, folder: Path, *, readable: bool = True, bytes_required: bool = True) -> list[str | None]:
    """Write each media item of a dataset column once into ``folder``; return the checked file paths.

    Args:
        inputs: :class:`~mmst_cli.core.encode.checked_inputs.FeatureInputs` of an Image, Audio or binary column.
        folder: Where the files go (created when missing); each is named ``<sha1 of its bytes><ext>``,
            written to a temporary name and renamed, and left alone when it is already there. The
            names are hashes, so nothing is written outside ``folder``.
        readable: Return, for an image a model's processor cannot read (TIFF, BMP, ...), its
            converted copy in the media cache, as :func:`~mmst_cli.core.encode.inputs.read_inputs`
            gives media paths (default); ``False`` returns the file written in ``folder`` (an
            index keeps its media inside its own folder).
        bytes_required: Refuse a cell that holds no bytes (default); ``False`` gives ``None`` for
            its row instead (a cell naming a file on disk: an index keeps such rows by id).

    Returns:
        One absolute path per row, in row order (``None`` for a row without bytes when allowed).

    Raises:
        MmstError: naming the row, for a video frame list, a cell without bytes, or bytes that are
            neither an image nor audio mmst reads.
    """
    import datasets

    table, column = inputs.table, inputs.column
    feature = table.features[column]
    where = f"{inputs.source!r}, column {column!r}"
    if isinstance(feature, datasets.Image):
        table = table.cast_column(column, datasets.Image(decode=False))
    elif isinstance(feature, datasets.Audio):
        table = table.cast_column(column, datasets.Audio(decode=False))
    elif not (isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary")):
        raise MmstError(f"{where} holds video frames; only images and audio are written out as files, so give video as file paths")
    paths: list[str | None] = []
    for row, cell in enumerate(table[column]):
        data = _cell_bytes(cell)
        if not data and not bytes_required:
            paths.append(None)
            continue
        if not data:
            raise MmstError(
                f"{where}, row {row + 1}: the cell holds no bytes; give media that lives in files as file paths in a text column"
            )
        extension = media_extension(data)
        if extension is None:
            raise MmstError(f"{where}, row {row + 1}: the bytes are neither an image nor audio mmst reads (png, jpeg, wav, flac, ...)")
        paths.append(_store(data, extension, folder, f"{where}, row {row + 1}", readable=readable))
    return paths


def write_decoded_media(value: Any, folder: Path, where: str) -> str:
    """Write one decoded image (PIL) or audio clip (``{"array", "sampling_rate"}``) into ``folder``.

    BEIR and mteb / ViDoRe folders reach mining already decoded, so their media is encoded again,
    as PNG or WAV (lossless, and the same pixels or samples always give the same bytes, so the
    same item is one file and one document however often it appears).

    Args:
        value: The decoded item.
        folder: Where the file goes, named ``<sha1 of its bytes><ext>`` (see :func:`write_embedded_media`).
        where: The item's place in the data, for messages.

    Returns:
        The checked file path.
    """
    import numpy as np
    import soundfile
    from PIL import Image

    buffer = io.BytesIO()
    if isinstance(value, Image.Image):
        value.save(buffer, format="PNG")
        extension = ".png"
    elif isinstance(value, dict) and "array" in value and "sampling_rate" in value:
        soundfile.write(buffer, np.asarray(value["array"], dtype="float32"), int(value["sampling_rate"]), format="WAV")
        extension = ".wav"
    else:
        raise MmstError(f"{where}: {type(value).__name__} media cannot be written as a file; give images or audio")
    return _store(buffer.getvalue(), extension, folder, where)


def _store(data: bytes, extension: str, folder: Path, where: str, *, readable: bool = True) -> str:
    """``data`` as ``folder/<sha1><extension>`` (written atomically once), passed through mmst's media checks."""
    from mmst_cli.core.data.media import classify_string, processor_readable_image
    from mmst_cli.core.outputs import atomic_path

    if folder.exists() and not folder.is_dir():
        raise MmstError(f"--media-out {folder}: it is a file; name a folder for the embedded media")
    path = (folder / (hashlib.sha1(data).hexdigest() + extension)).resolve()
    if not path.is_file():
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
    report = classify_string(str(path))  # the checks every media path passes (it decodes, audio is long enough)
    if report.problem:
        raise MmstError(f"{where}: {report.problem}")
    return str(processor_readable_image(path) if readable and report.modality == "image" else path)
