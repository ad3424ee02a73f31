"""Output precision (Sentence Transformers' ``quantize_embeddings``) and the npy / jsonl / parquet /
safetensors writers of ``mmst encode``, each writing to a temporary name renamed when complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO

from mmst_cli.core.outputs import atomic_path


def convert_precision(vectors, precision: str, ranges=None):
    """Convert float32 vectors to the output precision.

    Args:
        vectors: A ``(rows, dim)`` float32 array.
        precision: ``float32`` (as is), ``float16`` (cast), ``int8`` (``quantize_embeddings`` with
            ``ranges``: per-dimension min/max, shape ``(2, dim)``) or ``ubinary`` (``quantize_embeddings``:
            one bit per dimension, ``> 0``, packed 8 to a ``uint8``: ``ceil(dim / 8)`` columns).
        ranges: Required for ``int8``: the min/max of every dimension over all the rows of the run.
    """
    import numpy as np

    if precision == "float32":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    if precision == "float16":
        return np.asarray(vectors).astype(np.float16)
    from sentence_transformers.util import quantize_embeddings

    if precision == "int8":
        return quantize_embeddings(np.asarray(vectors, dtype=np.float32), precision="int8", ranges=ranges)
    return quantize_embeddings(np.asarray(vectors, dtype=np.float32), precision="ubinary")


def output_width(dim: int, precision: str) -> int:
    """Columns of the stored matrix: ``dim``, or ``ceil(dim / 8)`` bytes for ``ubinary``."""
    return (dim + 7) // 8 if precision == "ubinary" else dim


def output_dtype(precision: str):
    """The numpy dtype stored for ``precision``."""
    import numpy as np

    return {"float32": np.float32, "float16": np.float16, "int8": np.int8, "ubinary": np.uint8}[precision]


def _jsonable_ids(ids: list[Any]) -> list[Any]:
    return [item.item() if hasattr(item, "item") else item for item in ids]


class Writer:
    """Writes rows of one output, in order, to ``path`` (or a stream, for jsonl).

    Args:
        path: The file to write (a temporary name; the caller renames it), or ``None`` with ``stream``.
        count: Total rows.
        width: Columns of the stored matrix (see :func:`output_width`).
        precision: The output precision (for dtypes).
        ids: All ids, in order.
        metadata: Run facts stored where the format has room (parquet, safetensors).
        ranges: The int8 ranges, stored in parquet metadata and as a safetensors tensor.
        stream: A text stream for jsonl (``-o -``).
    """

    def __init__(self, path: Path | None, *, count: int, width: int, precision: str, ids: list[Any],
                 metadata: dict[str, Any], ranges=None, stream: TextIO | None = None) -> None:
        self.path, self.count, self.width, self.precision = path, count, width, precision
        self.ids, self.metadata, self.ranges, self.stream = ids, metadata, ranges, stream

    def write(self, start: int, vectors) -> None:
        """Write rows ``start .. start + len(vectors)`` (already in the output precision)."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file."""

    def abort(self) -> None:
        """Release resources after a failure (the caller deletes the temporary file)."""
        self.close()


class NpyWriter(Writer):
    """``.npy``: one ``(count, width)`` matrix, row ``i`` = input ``i``; no ids (they are the input order)."""

    def __init__(self, path, **kwargs) -> None:
        import numpy as np

        super().__init__(path, **kwargs)
        self.matrix = np.lib.format.open_memmap(
            str(path), mode="w+", dtype=output_dtype(self.precision), shape=(self.count, self.width)
        )

    def write(self, start, vectors) -> None:
        self.matrix[start : start + len(vectors)] = vectors

    def close(self) -> None:
        if self.matrix is not None:
            self.matrix.flush()
            self.matrix = None


class JsonlWriter(Writer):
    """``.jsonl``: ``{"id": ..., "embedding": [...]}`` per line, in input order."""

    def __init__(self, path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.handle = self.stream if self.stream is not None else path.open("w", encoding="utf8")

    def write(self, start, vectors) -> None:
        ids = _jsonable_ids(self.ids[start : start + len(vectors)])
        lines = [
            json.dumps({"id": item, "embedding": row}, ensure_ascii=False) for item, row in zip(ids, vectors.tolist())
        ]
        self.handle.write("\n".join(lines) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None and self.stream is None:
            self.handle.close()
        self.handle = None


class ParquetWriter(Writer):
    """``.parquet``: columns ``id`` and ``embedding`` (``list<float|halffloat|int8|uint8>``); run facts
    (and int8 ranges) as JSON under the ``mmst`` key of the schema metadata."""

    def __init__(self, path, **kwargs) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path, **kwargs)
        ids = _jsonable_ids(self.ids)
        try:
            self.id_array = pa.array(ids)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            self.id_array = pa.array([str(item) for item in ids])
        value_type = pa.from_numpy_dtype(output_dtype(self.precision))
        metadata = dict(self.metadata)
        if self.ranges is not None:
            metadata["int8_ranges"] = self.ranges.tolist()
        self.schema = pa.schema(
            [("id", self.id_array.type), ("embedding", self.embedding_type(value_type))],
            metadata={"mmst": json.dumps(metadata, ensure_ascii=False)},
        )
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def embedding_type(self, value_type):
        """The arrow type of the ``embedding`` column: a list of ``value_type``."""
        import pyarrow as pa

        return pa.list_(value_type)

    def write(self, start, vectors) -> None:
        import numpy as np
        import pyarrow as pa

        vectors = np.ascontiguousarray(vectors)
        width = vectors.shape[1]
        step = max(1, (2**31 - 1) // max(width, 1) // 2)  # int32 list offsets
        for offset in range(0, len(vectors), step):
            block = vectors[offset : offset + step]
            offsets = pa.array(np.arange(0, (len(block) + 1) * width, width, dtype=np.int32))
            embedding = pa.ListArray.from_arrays(offsets, pa.array(block.reshape(-1)), type=self.schema.field("embedding").type)
            table = pa.Table.from_arrays([self.id_array.slice(start + offset, len(block)), embedding], schema=self.schema)
            self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class SafetensorsWriter(Writer):
    """``.safetensors``: tensor ``embeddings`` ``(count, width)`` (plus ``int8_ranges`` ``(2, dim)``
    float32 for int8); metadata ``ids`` (a JSON list) and the run facts as strings.

    The file is written in one go at :meth:`close` (safetensors has no appending), so the whole
    matrix is held in memory.
    """

    def __init__(self, path, **kwargs) -> None:
        import numpy as np

        super().__init__(path, **kwargs)
        self.matrix = np.empty((self.count, self.width), dtype=output_dtype(self.precision))
        self.finished = False

    def write(self, start, vectors) -> None:
        self.matrix[start : start + len(vectors)] = vectors

    def close(self) -> None:
        if self.finished or self.matrix is None:
            return
        save_safetensors(self, {"embeddings": self.matrix})
        self.finished = True

    def abort(self) -> None:
        self.matrix = None


def save_safetensors(writer: Writer, tensors: dict[str, Any]) -> None:
    """Save ``tensors`` (plus the int8 ranges) to ``writer.path``, with its ids and run facts as metadata."""
    from safetensors.numpy import save_file

    if writer.ranges is not None:
        tensors = {**tensors, "int8_ranges": writer.ranges.astype("float32")}
    metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in writer.metadata.items()}
    metadata["ids"] = json.dumps(_jsonable_ids(writer.ids), ensure_ascii=False)
    save_file(tensors, str(writer.path), metadata=metadata)


WRITERS: dict[str, type[Writer]] = {
    "npy": NpyWriter,
    "jsonl": JsonlWriter,
    "parquet": ParquetWriter,
    "safetensors": SafetensorsWriter,
}


def write_output(
    output: Path, format: str, chunks: Callable[[], Iterator[tuple[int, Any]]], *, writer_kwargs,
    writers: dict[str, type[Writer]] = WRITERS,
) -> None:
    """Write the output atomically (:func:`mmst_cli.core.outputs.atomic_path`): whole, or not at all.

    Args:
        output: The final file.
        format: A key of :data:`WRITERS`.
        chunks: Yields ``(start_row, vectors)`` in the output precision, in order.
        writer_kwargs: Passed to the writer class.
        writers: The writer class of each format; default :data:`WRITERS`.
    """
    with atomic_path(output) as temporary:
        writer = None
        try:
            writer = writers[format](temporary, **writer_kwargs)
            for start, vectors in chunks():
                writer.write(start, vectors)
            writer.close()
        except BaseException:
            if writer is not None:
                with suppress(Exception):  # the file is deleted anyway; keep the first error
                    writer.abort()
            raise


