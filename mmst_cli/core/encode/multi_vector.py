"""Token vectors of multi-vector (late-interaction) models, and their ragged on-disk layout.

A multi-vector model (Sentence Transformers' ``MultiVectorEncoder``) gives each input its own
number of vectors (one per token or image patch). ``mmst encode`` keeps them as a
:class:`TokenBlock`: every row's vectors stacked in one flat ``[tokens, dim]`` matrix plus each
row's vector count, so a chunk is two arrays whatever its rows' lengths. The output layouts:

- safetensors: tensors ``embeddings`` ``[tokens, dim]`` and ``offsets`` ``[rows + 1]`` (int64: row
  ``i`` is ``embeddings[offsets[i]:offsets[i + 1]]``); metadata ``ids`` and the run facts;
- npz: the same ``embeddings`` and ``offsets`` arrays, ``ids`` and ``metadata`` (the run facts as a
  JSON string), none of which needs pickle to load;
- parquet: columns ``id`` and ``embedding`` (``list<list<float>>``, one inner list per vector);
- jsonl: ``{"id": ..., "embedding": [[...], ...]}`` per line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmst_cli.core.encode.encoding import modality_of
from mmst_cli.core.encode.parts import Parts
from mmst_cli.core.errors import MmstError
from mmst_cli.core.encode.writers import (
    JsonlWriter,
    ParquetWriter,
    Writer,
    _jsonable_ids,
    convert_precision,
    output_dtype,
    save_safetensors,
)


@dataclass
class TokenBlock:
    """The token vectors of consecutive rows: ``tokens`` ``[sum(lengths), dim]``, ``lengths`` ``[rows]``."""

    tokens: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self) -> list[np.ndarray]:
        """Each row's ``[length, dim]`` vectors."""
        return np.split(self.tokens, np.cumsum(self.lengths)[:-1])


def is_multi_vector(model) -> bool:
    """Whether ``model`` is a Sentence Transformers ``MultiVectorEncoder``."""
    from sentence_transformers import MultiVectorEncoder

    return isinstance(model, MultiVectorEncoder)


def token_pooling(pool_factor: float | None):
    """A ``HierarchicalTokenPooling`` keeping about ``1 / pool_factor`` of each document's tokens,
    or ``None`` (the model's own pooling, if any) when ``pool_factor`` is ``None``."""
    if pool_factor is None:
        return None
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

    return HierarchicalTokenPooling(pool_factor=pool_factor)


def encode_tokens(
    model, inputs: Sequence[Any], *, task: str | None, prompt: str | None, batch_size: int, pooling=None,
    normalize: bool = False, truncate_dim: int | None = None, pool=None,
) -> list:
    """Token vectors (float32 CPU tensors ``[tokens, dim]``) of each input, in input order.

    Inputs are grouped by modality (as :func:`~mmst_cli.core.encode.encoding.encode_inputs` does:
    routers refuse mixed batches); PDF pages are rendered to cached image files.

    Args:
        model: A MultiVectorEncoder.
        inputs: Texts, media paths, images, ... (already validated).
        task: ``query`` or ``document``: the side whose prompt, length and route are used; ``None``
            for plain ``encode``.
        prompt: Replaces the model's prompt for that side; ``None`` keeps it.
        batch_size: Inputs per forward pass.
        pooling: A token pooling module (see :func:`token_pooling`), or ``None`` for the model's own.
        normalize: L2-normalise each vector (the model's own Normalize usually already has).
        truncate_dim: Keep the first N dimensions of each vector (then normalised by the model).
        pool: A multi-process pool (``model.start_multi_process_pool``) to encode in, or ``None``
            for this process. Its workers get the batches one call here would make, so the vectors
            are the same, bit for bit.
    """
    from mmst_cli.core.data.documents import PdfPage
    from mmst_cli.core.data.media import page_image_file

    encode = {None: model.encode, "query": model.encode_query, "document": model.encode_document}[task]
    groups: dict[str, list[int]] = {}
    for index, value in enumerate(inputs):
        groups.setdefault(modality_of(value), []).append(index)
    output: list = [None] * len(inputs)
    for indices in groups.values():
        values = [str(page_image_file(v)) if isinstance(v, PdfPage) else v for v in (inputs[i] for i in indices)]
        in_pool = {}
        if pool is not None:
            # A batch's padding changes its vectors in the last bits, so workers must get the batches
            # one call makes: its length order (computed as encode computes it, ties included), cut
            # into one batch per worker task (a worker re-sorts only within its task).
            order = np.argsort([-model._input_length(value) for value in values])
            values, indices = [values[i] for i in order], [indices[i] for i in order]
            in_pool = {"pool": pool, "chunk_size": batch_size}
        vectors = encode(
            values, prompt=prompt, batch_size=batch_size, show_progress_bar=False, token_pooling=pooling,
            normalize_embeddings=normalize, truncate_dim=truncate_dim, **in_pool,
        )  # fmt: skip
        for index, tokens in zip(indices, vectors):
            output[index] = tokens.float().cpu()
    return output


def encode_token_block(model, inputs: Sequence[Any], *, on_progress=None, pooling=None, **kwargs) -> TokenBlock:
    """:func:`encode_tokens` of ``inputs`` as one :class:`TokenBlock` (``kwargs`` as there)."""
    rows = encode_tokens(model, inputs, pooling=pooling, **kwargs)
    if on_progress:
        on_progress(len(inputs))
    lengths = np.array([row.shape[0] for row in rows], dtype=np.int64)
    tokens = np.concatenate([row.numpy() for row in rows]) if rows else np.empty((0, 0), dtype=np.float32)
    return TokenBlock(np.ascontiguousarray(tokens, dtype=np.float32), lengths)


class TokenParts(Parts):
    """Finished chunks of a multi-vector run: ``part-NNNNNN.npz`` holding ``tokens`` and ``lengths``."""

    def path(self, index: int):
        return self.folder / f"part-{index:06d}.npz"

    def finished_width(self, index: int, rows: int) -> int | None:
        try:
            with np.load(self.path(index)) as part:
                tokens, lengths = part["tokens"], part["lengths"]
        except (OSError, ValueError, KeyError):
            return None
        if len(lengths) == rows and tokens.ndim == 2 and int(lengths.sum()) == len(tokens) and tokens.dtype == np.float32:
            return tokens.shape[1]
        return None

    def save(self, index: int, vectors: TokenBlock) -> None:
        from mmst_cli.core.outputs import atomic_path

        with atomic_path(self.path(index)) as temporary, temporary.open("wb") as handle:
            np.savez(handle, tokens=vectors.tokens, lengths=vectors.lengths)

    def load(self, index: int) -> TokenBlock:
        with np.load(self.path(index)) as part:
            return TokenBlock(part["tokens"], part["lengths"])


class TokenSafetensorsWriter(Writer):
    """safetensors: ``embeddings`` ``[tokens, width]`` and ``offsets`` ``[rows + 1]`` (see the module).

    Written in one go at :meth:`close` (by :meth:`save`), as single-vector safetensors output is.
    """

    def __init__(self, path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.blocks: list[TokenBlock] | None = []

    def write(self, start, vectors: TokenBlock) -> None:
        self.blocks.append(vectors)

    def close(self) -> None:
        if self.blocks is None:
            return
        blocks = self.blocks or [TokenBlock(np.zeros((0, self.width), output_dtype(self.precision)), np.zeros(0, np.int64))]
        lengths = np.concatenate([block.lengths for block in blocks])
        self.save({
            "embeddings": np.ascontiguousarray(np.concatenate([block.tokens for block in blocks])),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        })  # fmt: skip
        self.blocks = None

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        """Write ``arrays`` (plus the ids and run facts) to the file."""
        save_safetensors(self, arrays)

    def abort(self) -> None:
        self.blocks = None


class TokenNpzWriter(TokenSafetensorsWriter):
    """npz: the safetensors arrays plus ``ids`` and ``metadata``; ``np.load(allow_pickle=False)`` reads it.

    ``ids`` is an int64 array for row-number ids and a fixed-width unicode array otherwise (ids of
    other types are written as text), so no object array, which would need pickle, is stored.
    """

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        ids = np.asarray(_jsonable_ids(self.ids))
        if ids.dtype.kind not in "iU":
            ids = np.array([str(item) for item in self.ids], dtype=str)
        if self.ranges is not None:
            arrays = {**arrays, "int8_ranges": self.ranges.astype(np.float32)}
        metadata = np.array(json.dumps(self.metadata, ensure_ascii=False))
        # A file handle, not a name: np.savez would add ".npz" to the temporary file's name.
        with open(self.path, "wb") as handle:
            np.savez(handle, **arrays, ids=ids, metadata=metadata)


class TokenParquetWriter(ParquetWriter):
    """parquet: ``embedding`` is ``list<list<value>>``, one inner list per token vector."""

    def embedding_type(self, value_type):
        import pyarrow as pa

        return pa.list_(pa.list_(value_type))

    def write(self, start, vectors: TokenBlock) -> None:
        import pyarrow as pa

        nested = self.schema.field("embedding").type
        width = vectors.tokens.shape[1]
        # int32 offsets: a chunk holds far fewer than 2**31 values (4096 rows x 1000 tokens x 128).
        inner_offsets = pa.array(np.arange(0, (len(vectors.tokens) + 1) * width, width, dtype=np.int32))
        inner = pa.ListArray.from_arrays(inner_offsets, pa.array(np.ascontiguousarray(vectors.tokens).reshape(-1)), type=nested.value_type)
        outer_offsets = pa.array(np.concatenate([[0], np.cumsum(vectors.lengths)]).astype(np.int32))
        embedding = pa.ListArray.from_arrays(outer_offsets, inner, type=nested)
        table = pa.Table.from_arrays([self.id_array.slice(start, len(vectors)), embedding], schema=self.schema)
        self.writer.write_table(table)


class TokenJsonlWriter(JsonlWriter):
    """jsonl: ``{"id": ..., "embedding": [[...], ...]}`` per line."""

    def write(self, start, vectors: TokenBlock) -> None:
        ids = _jsonable_ids(self.ids[start : start + len(vectors)])
        lines = [
            json.dumps({"id": item, "embedding": row.tolist()}, ensure_ascii=False) for item, row in zip(ids, vectors.rows())
        ]
        self.handle.write("\n".join(lines) + "\n")
        self.handle.flush()


#: Writers of multi-vector output, by format (``npy`` holds one matrix and has no room for offsets).
TOKEN_WRITERS = {
    "safetensors": TokenSafetensorsWriter, "npz": TokenNpzWriter, "parquet": TokenParquetWriter, "jsonl": TokenJsonlWriter,
}


def vector_matrix(vectors) -> np.ndarray:
    """The ``[vectors, dim]`` matrix of a chunk: a single-vector chunk itself, a :class:`TokenBlock`'s tokens."""
    return vectors.tokens if isinstance(vectors, TokenBlock) else vectors


def in_precision(vectors, precision: str, ranges=None):
    """:func:`~mmst_cli.core.encode.writers.convert_precision` of a chunk of either kind."""
    if isinstance(vectors, TokenBlock):
        return TokenBlock(convert_precision(vectors.tokens, precision, ranges), vectors.lengths)
    return convert_precision(vectors, precision, ranges)


def check_token_output(options) -> None:
    """Refuse what multi-vector output cannot do: one ``npy`` matrix."""
    if options.output_format not in TOKEN_WRITERS:
        raise MmstError(
            f"-o {options.output!r}: a multi-vector model gives a different number of vectors per input, which "
            f"{options.output_format} cannot hold; write {', '.join(TOKEN_WRITERS)} (a flat matrix plus offsets)"
        )
