"""Encode mixed text / image / audio inputs with one model, a modality at a time, in input order.

CLIP-style models and Routers refuse a batch that mixes modalities, and ``model.encode`` sorts by
length rather than by modality, so inputs are grouped by modality first; each group is sorted by
length, longest first, as ``model.encode`` sorts one call (so calls of ``chunk_size`` pad no more
than one call would), encoded in chunks (for the progress bar and bounded memory), and the rows are
put back in input order.

Image files of photo size are decoded ahead of the model in a small thread pool (Pillow releases
the GIL while decoding), one batch per call and a few batches ahead: the next images are ready when
a forward pass ends, instead of being decoded between passes as ``model.encode`` does. They are read exactly as
transformers' image processors read a path (``load_image``: EXIF orientation applied, RGB), so the
vectors equal ``model.encode`` on the paths. PDF pages (:class:`~mmst_cli.core.data.documents.PdfPage`)
are rendered the same way, a few batches ahead, even with no threads (then one call at a time), so a
corpus of thousands of pages never sits in memory as images.
Embeddings come back as float32 even when the model runs in bf16/fp16, so scores are computed in
float32.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from mmst_cli.core.errors import MmstError

#: ``--task`` values and the Sentence Transformers method each one uses.
TASKS = ("query", "document")

#: Calls (of one batch each) whose images are decoded while the model runs the current one.
PREFETCH_CALLS = 2
#: Mean file size from which decoding ahead pays: smaller files (icons, thumbnails) decode in less
#: time than the hand-off to a thread and the extra calls cost (measured in bench/encode_throughput.py).
DECODE_AHEAD_MIN_BYTES = 32 * 1024


def default_decode_workers() -> int:
    """Threads that decode image files ahead of the model: one per core, at most 4."""
    return min(4, os.cpu_count() or 1)


def modality_of(value: Any) -> str:
    """The modality of one prepared input (str text or media path, PIL image, audio dict, ...).

    Strings are classified by name only: inputs reach this point already checked, and opening every
    file again would cost as much as the check did.
    """
    from mmst_cli.core.data.documents import PdfPage
    from mmst_cli.core.data.media import string_modality

    if isinstance(value, str):
        return string_modality(value)[0]
    if isinstance(value, PdfPage):
        return "image"
    if isinstance(value, dict) and "array" in value:
        return "audio"
    if isinstance(value, dict) and "video" in value:
        return "video"
    if hasattr(value, "getpixel"):
        return "image"
    if isinstance(value, dict) and "role" in value:
        return "message"
    return type(value).__name__


def input_size(value: Any) -> int:
    """How big an input is, as ``model.encode`` sorts: characters of a text, samples of an audio
    clip, frames of a video given as frames; 0 for other media (alike in size)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict) and "array" in value:
        return len(value["array"])
    if isinstance(value, dict) and isinstance(value.get("video"), list):
        return len(value["video"])
    return 0


def encode_inputs(
    model,
    inputs: Sequence[Any],
    *,
    task: str | None = None,
    prompt: str | None = None,
    batch_size: int = 32,
    chunk_size: int = 1024,
    normalize: bool = False,
    truncate_dim: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    decode_workers: int | None = None,
) -> np.ndarray:
    """Embed ``inputs`` in order, grouping them by modality.

    Args:
        model: A SentenceTransformer.
        inputs: Texts, media paths, PIL images, audio dicts, ... (already validated).
        task: ``query`` or ``document`` to use the model's prompts / routes for that side; ``None``
            for plain ``encode``.
        prompt: A prompt prepended to text inputs (overrides the task's prompt).
        batch_size: Inputs per forward pass.
        chunk_size: Inputs handed to the model at a time; bounds memory and paces ``on_progress``.
        normalize: L2-normalise the embeddings.
        truncate_dim: Keep the first N dimensions (Matryoshka).
        on_progress: Called with the number of inputs just encoded.
        decode_workers: Threads decoding image files ahead of the model; ``None`` for
            :func:`default_decode_workers`, 0 to let the model decode them itself.

    Returns:
        A ``(len(inputs), dim)`` float32 array.
    """
    encode = {None: model.encode, "query": model.encode_query, "document": model.encode_document}[task]
    groups: dict[str, list[int]] = {}
    for index, value in enumerate(inputs):
        groups.setdefault(modality_of(value), []).append(index)
    workers = default_decode_workers() if decode_workers is None else decode_workers
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mmst-decode") if workers > 0 and "image" in groups else None
    output: np.ndarray | None = None
    try:
        for modality, indices in groups.items():
            indices.sort(key=lambda index: -input_size(inputs[index]))  # stable: media keep their order
            ahead = modality == "image" and _worth_decoding_ahead([inputs[i] for i in indices])
            if ahead and (pool is not None or _has_pages([inputs[i] for i in indices])):
                calls = _decoded_ahead(pool, inputs, indices, batch_size)
            else:
                calls = ((chunk, [inputs[i] for i in chunk]) for chunk in _slices(indices, chunk_size))
            for chunk, values in calls:
                vectors = encode(
                    values,
                    prompt=prompt,
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=normalize,
                    truncate_dim=truncate_dim,
                    show_progress_bar=False,
                )
                vectors = np.asarray(vectors, dtype=np.float32)
                if output is None:
                    output = np.empty((len(inputs), vectors.shape[1]), dtype=np.float32)
                output[chunk] = vectors
                if on_progress:
                    on_progress(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if output is None:
        dimension = truncate_dim or model.get_embedding_dimension() or 0
        return np.empty((0, dimension), dtype=np.float32)
    return output


def _slices(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _has_pages(values: list[Any]) -> bool:
    from mmst_cli.core.data.documents import PdfPage

    return any(isinstance(value, PdfPage) for value in values)


def _worth_decoding_ahead(values: list[Any]) -> bool:
    """Whether ``values`` hold PDF pages (rendering always pays), or are all image files, of
    :data:`DECODE_AHEAD_MIN_BYTES` or more on average."""
    from mmst_cli.core.data.media import string_modality

    if _has_pages(values):
        return True
    if not all(isinstance(value, str) and string_modality(value) == ("image", "file") for value in values):
        return False
    return sum(os.path.getsize(value) for value in values) >= DECODE_AHEAD_MIN_BYTES * len(values)


def _load_image_file(source):
    """An image file (``str``) decoded as transformers reads it, or a PDF page rendered."""
    from mmst_cli.core.data.documents import PdfPage, PdfProblem

    if isinstance(source, PdfPage):
        try:
            return source.render()
        except PdfProblem as error:  # changed since it was checked
            raise MmstError(f"PDF {str(source.path)!r}, page {source.number}: {error}; check the file") from error
    from PIL import UnidentifiedImageError
    from transformers.image_utils import load_image

    try:
        return load_image(source)
    except (UnidentifiedImageError, OSError, ValueError) as error:  # changed since it was checked
        raise MmstError(f"image {source!r} does not decode ({error.__class__.__name__}); check the file") from error


def _decoded_ahead(pool: ThreadPoolExecutor | None, inputs: Sequence[Any], indices: list[int], call_size: int):
    """Yield ``(indices, images)`` per call of ``call_size``, decoding the next calls' files in ``pool``
    (with no pool, each call's files as it comes)."""
    if pool is None:
        for chunk in _slices(indices, call_size):
            yield chunk, [_load_image_file(inputs[i]) for i in chunk]
        return
    pending: deque[tuple[list[int], list[Future]]] = deque()
    for chunk in _slices(indices, call_size):
        pending.append((chunk, [pool.submit(_load_image_file, inputs[i]) for i in chunk]))
        if len(pending) > PREFETCH_CALLS:
            ready, futures = pending.popleft()
            yield ready, [future.result() for future in futures]
    while pending:
        ready, futures = pending.popleft()
        yield ready, [future.result() for future in futures]
