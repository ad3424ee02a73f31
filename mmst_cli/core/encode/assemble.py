"""The output of ``mmst encode`` assembled from finished float32 chunks, in input order.

One run's parts (:mod:`mmst_cli.core.encode.parts`) and the shards of every rank of a
``torchrun`` launch (:mod:`mmst_cli.core.encode.shards`) end the same way: the chunks are converted
to the output precision (int8 ranges over every row of the run) and written by the format's writer
to a temporary file that is renamed onto the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mmst_cli.core.encode.multi_vector import TOKEN_WRITERS, in_precision, vector_matrix
from mmst_cli.core.encode.writers import WRITERS, output_width, write_output

#: A finished chunk: its first row in the output, and a function that loads its float32 vectors.
StoredChunk = tuple[int, Callable[[], Any]]


def int8_ranges(blocks: Iterable[Any]) -> Any:
    """Per-dimension ``(2, dim)`` min/max over every row of ``blocks`` (float32 arrays), as
    ``quantize_embeddings`` computes them from the whole matrix, without holding it in memory."""
    import numpy as np

    minimum = maximum = None
    for block in blocks:
        low, high = np.min(block, axis=0), np.max(block, axis=0)
        minimum = low if minimum is None else np.minimum(minimum, low)
        maximum = high if maximum is None else np.maximum(maximum, high)
    return np.vstack((minimum, maximum)).astype(np.float32)


def write_chunks(
    output: Path, format: str, chunks: Sequence[StoredChunk], *, precision: str, ids: list[Any],
    metadata: dict[str, Any], multi_vector: bool,
) -> None:
    """Write ``output`` from finished chunks, whole or not at all.

    Args:
        output: The final file.
        format: ``npy``, ``parquet``, ``jsonl`` or ``safetensors``.
        chunks: Every chunk of the output, in row order (see :data:`StoredChunk`).
        precision: The output precision; int8 ranges are taken over all chunks first.
        ids: One id per output row.
        metadata: The run facts stored with the output; must hold ``dim``.
        multi_vector: Whether the chunks are token blocks of a multi-vector model.
    """
    ranges = int8_ranges(vector_matrix(load()) for _, load in chunks) if precision == "int8" else None
    writer_kwargs = dict(
        count=len(ids), width=output_width(metadata["dim"], precision), precision=precision, ids=ids,
        metadata=metadata, ranges=ranges,
    )  # fmt: skip

    def converted() -> Iterator[tuple[int, Any]]:
        for start, load in chunks:
            yield start, in_precision(load(), precision, ranges)

    write_output(output, format, converted, writer_kwargs=writer_kwargs, writers=TOKEN_WRITERS if multi_vector else WRITERS)
