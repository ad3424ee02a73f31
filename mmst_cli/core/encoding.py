"""Encode mixed text / image / audio inputs with one model, a modality at a time, in input order.

CLIP-style models and Routers refuse a batch that mixes modalities, and ``model.encode`` sorts by
length rather than by modality, so inputs are grouped by modality first; each group is encoded in
chunks (for the progress bar and bounded memory) and the rows are put back in input order.
Embeddings come back as float32 even when the model runs in bf16/fp16, so scores are computed in
float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: ``--task`` values and the Sentence Transformers method each one uses.
TASKS = ("query", "document")


def modality_of(value: Any) -> str:
    """The modality of one prepared input (str text or media path, PIL image, audio dict, ...)."""
    from mmst_cli.core.media import classify_string

    if isinstance(value, str):
        return str(classify_string(value).modality)
    if isinstance(value, dict) and "array" in value:
        return "audio"
    if isinstance(value, dict) and "video" in value:
        return "video"
    if hasattr(value, "getpixel"):
        return "image"
    if isinstance(value, dict) and "role" in value:
        return "message"
    return type(value).__name__


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

    Returns:
        A ``(len(inputs), dim)`` float32 array.
    """
    encode = {None: model.encode, "query": model.encode_query, "document": model.encode_document}[task]
    groups: dict[str, list[int]] = {}
    for index, value in enumerate(inputs):
        groups.setdefault(modality_of(value), []).append(index)
    output: np.ndarray | None = None
    for indices in groups.values():
        for start in range(0, len(indices), chunk_size):
            chunk = indices[start : start + chunk_size]
            vectors = encode(
                [inputs[i] for i in chunk],
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
    if output is None:
        dimension = truncate_dim or model.get_embedding_dimension() or 0
        return np.empty((0, dimension), dtype=np.float32)
    return output
