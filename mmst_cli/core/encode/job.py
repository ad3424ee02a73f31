"""The ``mmst encode`` job: texts, images, audio and PDF pages to embeddings on disk (or stdout), in chunks.

The job runs in five steps; this module runs them, the ``encode`` wing's other modules hold them:

1. :func:`~mmst_cli.core.encode.inputs.read_inputs` turns the input reference (a jsonl / csv / parquet / txt file, a PDF file, a folder of
   images, audio or PDFs, ``-`` for stdin, a ``save_to_disk`` folder or a Hub dataset) into an
   :class:`~mmst_cli.core.encode.checked_inputs.EncodeInputs`: ids plus one input per row, every media reference checked before any
   model work (a missing file is an error naming its row, never text);
2. the model is located and loaded (:mod:`mmst_cli.core.models.loading`), and the inputs are bound to it
   (:meth:`~mmst_cli.core.encode.checked_inputs.EncodeInputs.bind`: media columns of a dataset are checked by
   :func:`~mmst_cli.core.data.tables.prepare_media`, and every modality must be one the model takes);
3. rows are encoded in chunks of :attr:`EmbeddingSettings.chunk_size <mmst_cli.core.encode.settings.EmbeddingSettings.chunk_size>` rows, in input order, by
   :func:`~mmst_cli.core.encode.encoding.encode_inputs` (which groups each chunk by modality and puts the
   rows back in order), on one device or on a pool of processes (``--device cuda:0,cuda:1``);
4. each finished chunk is saved (:mod:`mmst_cli.core.encode.parts`) as a float32 ``.npy`` part in ``.<output name>.parts/`` next to the
   output, with a ``manifest.json`` of the inputs and options, so ``--resume`` skips finished chunks;
5. the parts are converted to the output precision and written (:mod:`mmst_cli.core.encode.assemble`) to a temporary file in the output's
   folder, which is then renamed onto the output (never a truncated file under the final name), and
   the parts folder is deleted. ``-o -`` streams jsonl to stdout instead, chunk by chunk, with no parts.

Under ``torchrun`` / ``accelerate launch`` (:mod:`mmst_cli.core.encode.shards`), steps 3 and 4 cover
this rank's block of rows only, its parts go to a folder of its own, and step 5 waits for every rank
and runs on rank 0, over every rank's parts.

This module imports no ML library at module level; :mod:`mmst_cli.cli.encode` imports it inside
the command.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mmst_cli.core.encode.checked_inputs import EncodeInputs
from mmst_cli.core.encode.parts import MANIFEST_VERSION, Parts
from mmst_cli.core.encode.settings import CorpusReading, EmbeddingSettings
from mmst_cli.core.encode.writers import (
    JsonlWriter,
    Writer,
    convert_precision,
    output_width,
)
from mmst_cli.core.errors import EXIT_INTERRUPTED, MmstError
from mmst_cli.core.outputs import ensure_writable_file

if TYPE_CHECKING:
    from mmst_cli.core.encode.shards import MergeStep

#: Output formats, chosen by ``--format`` or by the output's extension (``npz``: multi-vector models only).
FORMATS = ("npy", "parquet", "jsonl", "safetensors", "npz")

#: ``--precision`` values. ``int8`` and ``ubinary`` use Sentence Transformers' ``quantize_embeddings``.
PRECISIONS = ("float32", "float16", "int8", "ubinary")

#: ``--task`` values: ``encode_query`` / ``encode_document`` instead of ``encode``.
TASKS = ("query", "document")


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass
class EncodeOptions:
    """Everything ``mmst encode`` was asked to do.

    Attributes:
        inputs: A jsonl / csv / parquet / txt file, a PDF file (``report.pdf``, ``report.pdf#page=2-5``),
            a folder of images, audio or PDFs (recursive), ``-`` for stdin (one text or media path per line), a ``save_to_disk`` folder or a Hub
            dataset id. Required.
        output: The output file, or ``-`` to stream jsonl to stdout. Required.
        model: Model folder or Hub id; ``None`` (the default) for the embedded default model.
        reading: How the inputs are read (column, ids, split, media root, PDF pages); the defaults
            of :class:`~mmst_cli.core.encode.settings.CorpusReading` when not given.
        embedding: How they are embedded (prompt, dim, batches, chunks, devices); the defaults of
            :class:`~mmst_cli.core.encode.settings.EmbeddingSettings` when not given.
        task: ``query`` or ``document`` to use ``encode_query`` / ``encode_document``; ``None`` (the
            default) for plain ``encode``.
        normalize: L2-normalise the vectors (after truncation); default off.
        precision: ``float32`` (default), ``float16``, ``int8`` or ``ubinary``.
        format: ``npy``, ``parquet``, ``jsonl``, ``safetensors`` or (multi-vector models) ``npz``;
            ``None`` takes the output's extension (``-o -`` is always jsonl).
        resume: Continue an interrupted run from its parts folder; default off (start over).
    """

    inputs: str
    output: str
    model: str | None = None
    reading: CorpusReading = field(default_factory=CorpusReading)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    task: str | None = None
    normalize: bool = False
    precision: str = "float32"
    format: str | None = None
    resume: bool = False

    @property
    def to_stdout(self) -> bool:
        """Whether the output is ``-`` (jsonl on stdout)."""
        return self.output == "-"

    @property
    def output_format(self) -> str:
        """The resolved output format (valid only after :meth:`validate`)."""
        if self.to_stdout:
            return "jsonl"
        if self.format:
            return self.format
        return Path(self.output).suffix.lower().lstrip(".")

    def validate(self) -> None:
        """Check the options on their own, before any file or model is read.

        Raises:
            MmstError: (exit status 2) naming the flag to fix.
        """
        if not self.output:
            raise MmstError("-o/--output is empty; name an output file, or - for jsonl on stdout")
        if self.format is not None:
            self.format = self.format.lower().lstrip(".")
            if self.format not in FORMATS:
                raise MmstError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.to_stdout:
            if self.format not in (None, "jsonl"):
                raise MmstError(f"-o - streams jsonl; --format {self.format} needs a file output")
            if self.resume:
                raise MmstError("--resume needs a file output: -o - streams as it goes and keeps no parts")
        elif self.format is None and self.output_format not in FORMATS:
            raise MmstError(
                f"cannot tell the output format from {self.output!r}; end it in "
                f"{', '.join('.' + name for name in FORMATS)} or pass --format"
            )
        if self.precision not in PRECISIONS:
            raise MmstError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.task is not None and self.task not in TASKS:
            raise MmstError(f"--task {self.task!r} is not one of {', '.join(TASKS)}")
        self.embedding.validate()
        self.reading.validate()


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def loading_device(devices: list[str]) -> str | None:
    """Where the model loads: onto its one device, on the CPU for a pool (which copies it from the
    CPU into each worker), or where Sentence Transformers chooses when no device is given."""
    return devices[0] if len(devices) == 1 else "cpu" if devices else None


class PooledModel:
    """A model whose ``encode*`` calls go to a multi-process pool (``start_multi_process_pool``).

    :func:`~mmst_cli.core.encode.encoding.encode_inputs` calls it one modality at a time, and Sentence
    Transformers splits each call into sub-chunks for the workers and puts them back in order, so
    grouping by modality and input order both hold.
    """

    def __init__(self, model, pool) -> None:
        self._model = model
        self._pool = pool

    def encode(self, inputs, **kwargs):
        return self._model.encode(inputs, pool=self._pool, **kwargs)

    def encode_query(self, inputs, **kwargs):
        return self._model.encode_query(inputs, pool=self._pool, **kwargs)

    def encode_document(self, inputs, **kwargs):
        return self._model.encode_document(inputs, pool=self._pool, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class EncodeInterrupted(MmstError):
    """Raised (exit status 130) when the run is interrupted; finished chunks are kept for ``--resume``."""


@dataclass
class EncodeResult:
    """What a run did.

    Attributes:
        summary: The JSON-ready summary (model, inputs, count, dim, output, precision, seconds, ...);
            ``None`` on a rank of a sharded run that did not write the output.
        encoded_chunks: Chunks encoded by this run.
        reused_chunks: Finished chunks taken from an earlier run (``--resume``).
    """

    summary: dict[str, Any] | None
    encoded_chunks: int
    reused_chunks: int


#: How far from 1 a float32 vector's L2 norm may be and still count as unit length: a model that
#: normalises in bf16 or fp16 and is read back as float32 lands within about 1e-3 of it.
UNIT_LENGTH_TOLERANCE = 5e-3


def is_unit_length(vectors) -> bool:
    """Whether every row of ``vectors`` (float, before any --precision conversion) has L2 norm 1.

    Measured rather than inferred from the flags, so a model whose own Normalize module made the
    vectors unit length says so without ``--normalize``, and a ``--dim`` cut of such a model does not.
    """
    import numpy as np

    norms = np.linalg.norm(np.asarray(vectors, dtype=np.float32), axis=1)
    return bool(np.all(np.abs(norms - 1) <= UNIT_LENGTH_TOLERANCE))


def _model_identity(source) -> str:
    location = Path(source.location)
    return str(location.resolve()) if location.is_dir() else source.reference


def run_encode(
    options: EncodeOptions,
    *,
    console=None,
    show_progress: bool = True,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    model=None,
    on_chunk: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    inputs: EncodeInputs | None = None,
    merge_step: MergeStep | None = None,
) -> EncodeResult:
    """Run ``mmst encode``: read and check the inputs, encode them in chunks, write the output.

    Args:
        options: What to do; validated here.
        console: Rich console for the progress bar (stderr); ``None`` for a new stderr console.
        show_progress: Draw the progress bar; default on.
        stdin: The stream ``-`` reads; ``None`` for ``sys.stdin``.
        stdout: Where ``-o -`` writes jsonl; ``None`` for ``sys.stdout``.
        model: An already loaded model to use instead of loading ``options.model`` (tests, notebooks);
            ``options.model`` still names it in the manifest and the summary.
        on_chunk: Called with each chunk's index after it is encoded and saved (a hook for tests and
            callers that want to stop early: raising there leaves the finished parts for ``--resume``).
        log: Where notes for the user go; default: stderr.
        inputs: Inputs already read (and perhaps narrowed, as ``mmst index --add`` does) to encode
            instead of reading ``options.inputs``, which then only names them; ``None`` reads them.
        merge_step: Under a launcher: how the user writes the output once every rank is done,
            named to a rank run alone; ``None`` (the default) for ``mmst encode --merge``.

    Returns:
        An :class:`EncodeResult`.

    Raises:
        MmstError: for bad options, inputs or media (exit 2) before anything is written;
            :class:`EncodeInterrupted` (exit 130) on Ctrl-C, keeping the finished parts.
    """
    from mmst_cli.core.encode.assemble import int8_ranges, write_chunks
    from mmst_cli.core.encode.encoding import encode_inputs
    from mmst_cli.core.encode.multi_vector import (
        TokenJsonlWriter,
        TokenParts,
        check_token_output,
        encode_token_block,
        in_precision,
        is_multi_vector,
        token_pooling,
        vector_matrix,
    )
    from mmst_cli.core.encode.shards import MergeStep, ShardedRun, chunk_bounds, detect_launch, refuse_unfinished_shards
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model
    from mmst_cli.core.progress import progress_bars

    started = time.perf_counter()
    log = log or (lambda line: sys.stderr.write(line + "\n"))
    options.validate()
    embedding = options.embedding
    # torchrun / accelerate launch: this process encodes one shard of the inputs (core/encode/shards.py).
    launch = detect_launch()
    if launch is not None:
        launch.check(options)
        log = launch.logger(log)
        show_progress = show_progress and launch.rank == 0
    source = locate_model(options.model)
    inputs = inputs or options.reading.read(options.inputs, stdin=stdin)
    for note in inputs.notes:
        log(note)
    output = None if options.to_stdout else Path(options.output).expanduser()
    if output is not None and output.is_dir():
        example = Path(options.output) / "embeddings.npy"
        raise MmstError(f"-o {options.output!r} is a folder; name a file such as {example}")
    if output is not None:
        ensure_writable_file(output, "-o")
        if launch is None:
            refuse_unfinished_shards(output)

    devices = [launch.device(embedding.devices)] if launch is not None else embedding.devices
    if model is None:
        model = load_model(source, trust_remote_code=embedding.trust_remote_code, device=loading_device(devices))
    elif len(devices) == 1:
        model.to(devices[0])
    inputs.bind(model)
    multi_vector = is_multi_vector(model)
    if multi_vector:
        check_token_output(options)
    elif embedding.token_pool_factor is not None:
        raise MmstError(f"--token-pool-factor pools token vectors, but {source.reference!r} gives one vector per input; drop it")
    elif options.output_format == "npz":
        raise MmstError(f"-o {options.output!r}: npz holds multi-vector output here; {source.reference!r} gives one vector per input: write npy, safetensors, parquet or jsonl")
    model_dim = model.get_embedding_dimension()
    if embedding.dim is not None and model_dim and embedding.dim > model_dim:
        raise MmstError(f"--dim {embedding.dim} is larger than the model's embedding dimension {model_dim}")
    dim = embedding.dim or model_dim

    sharded = ShardedRun(output, launch, inputs.count, embedding.chunk_size) if launch is not None else None
    bounds = sharded.bounds if sharded is not None else chunk_bounds(0, inputs.count, embedding.chunk_size)
    manifest = {
        "version": MANIFEST_VERSION,
        "inputs": options.inputs,
        "count": inputs.count,
        "fingerprint": inputs.fingerprint,
        "model": _model_identity(source),
        "task": options.task,
        "prompt": embedding.prompt,
        "dim": embedding.dim,
        "normalize": options.normalize,
        "chunk_size": embedding.chunk_size,
        "token_pool_factor": embedding.token_pool_factor,
    }
    metadata = {
        "model": source.reference,
        "inputs": options.inputs,
        "task": options.task,
        "prompt": embedding.prompt,
        "normalize": options.normalize,
        "precision": options.precision,
    }
    if inputs.pdf_pages:
        metadata["pdf"] = {"dpi": options.reading.pdf_dpi, "text": options.reading.pdf_text, "pages": inputs.pdf_pages}
    parts = None
    done: dict[int, int] = {}
    if sharded is not None:
        facts = {
            "format": options.output_format, "precision": options.precision, "multi_vector": multi_vector,
            "metadata": metadata, "summary": _summary_of_inputs(options, source, inputs),
        }  # fmt: skip
        parts, done = sharded.open(TokenParts if multi_vector else Parts, manifest, output_facts=facts, ids=inputs.ids, log=log)
    elif output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        parts = (TokenParts if multi_vector else Parts)(output, manifest)
        done = parts.open(resume=options.resume, chunk_rows=[stop - start for start, stop in bounds], log=log)
    if done:
        dim = next(iter(done.values()))
        log(f"resuming: {len(done)} of {len(bounds)} chunks already encoded")
    unit_length = all(is_unit_length(vector_matrix(parts.load(index))) for index in done)

    stream = stdout if stdout is not None else sys.stdout
    # -o - writes each chunk as soon as it is encoded, except int8, whose ranges need every row.
    held: list[Any] = []
    stream_writer: Writer | None = None
    encoded = 0
    pool = None
    try:
        try:
            encoder = model
            if len(devices) > 1 and len(done) < len(bounds):
                pool = model.start_multi_process_pool(devices)
                encoder = PooledModel(model, pool)
            # One call per chunk and modality in a pool (it splits the work itself); smaller calls
            # here, so the bar moves.
            inner = embedding.chunk_size if pool is not None else min(embedding.chunk_size, max(256, 8 * embedding.batch_size))
            with progress_bars(console, enabled=show_progress) as track:
                advance = track("encoding", sum(stop - start for start, stop in bounds))
                advance(sum(bounds[index][1] - bounds[index][0] for index in done))
                for index, (start, stop) in enumerate(bounds):
                    if index in done:
                        continue
                    if multi_vector:
                        vectors = encode_token_block(
                            model, inputs.chunk(start, stop), task=options.task, prompt=embedding.prompt,
                            batch_size=embedding.batch_size, normalize=options.normalize, truncate_dim=embedding.dim,
                            pooling=token_pooling(embedding.token_pool_factor), on_progress=advance, pool=pool,
                        )  # fmt: skip
                    else:
                        vectors = encode_inputs(
                            encoder,
                            inputs.chunk(start, stop),
                            task=options.task,
                            prompt=embedding.prompt,
                            batch_size=embedding.batch_size,
                            chunk_size=inner,
                            normalize=options.normalize,
                            truncate_dim=embedding.dim,
                            on_progress=advance,
                            decode_workers=0 if pool is not None else embedding.decode_workers,
                        )
                    dim = vector_matrix(vectors).shape[1]
                    unit_length = unit_length and is_unit_length(vector_matrix(vectors))
                    encoded += 1
                    if parts is not None:
                        parts.save(index, vectors)
                    elif options.precision == "int8":
                        held.append(vectors)
                    else:
                        if stream_writer is None:
                            stream_writer = (TokenJsonlWriter if multi_vector else JsonlWriter)(
                                None, count=inputs.count, width=output_width(dim, options.precision),
                                precision=options.precision, ids=inputs.ids, metadata=metadata, stream=stream,
                            )  # fmt: skip
                        stream_writer.write(start, in_precision(vectors, options.precision))
                    if on_chunk is not None:
                        on_chunk(index)
        finally:
            if pool is not None:
                model.stop_multi_process_pool(pool)

        metadata["dim"] = dim
        metadata["unit_length"] = unit_length
        merged = None
        if parts is None:
            if held:
                ranges = int8_ranges(vector_matrix(block) for block in held)
                writer = (TokenJsonlWriter if multi_vector else JsonlWriter)(
                    None, stream=stream, count=inputs.count, width=output_width(dim, options.precision),
                    precision=options.precision, ids=inputs.ids, metadata=metadata, ranges=ranges,
                )  # fmt: skip
                for (start, _), vectors in zip(bounds, held):
                    writer.write(start, in_precision(vectors, options.precision, ranges))
        elif sharded is not None:
            merged = sharded.finish(dim=dim, unit_length=unit_length, log=log, step=merge_step or MergeStep())
            if merged is None:
                return EncodeResult(None, encoded_chunks=encoded, reused_chunks=len(done))
        else:
            chunks = [(start, partial(parts.load, index)) for index, (start, _) in enumerate(bounds)]
            write_chunks(output, options.output_format, chunks, precision=options.precision, ids=inputs.ids,
                         metadata=metadata, multi_vector=multi_vector)  # fmt: skip
            parts.remove()
    except KeyboardInterrupt as error:
        hint = ""
        if parts is not None:
            hint = f"; {len(done) + encoded} of {len(bounds)} chunks are saved, rerun with --resume to continue"
        raise EncodeInterrupted(f"interrupted{hint}", exit_code=EXIT_INTERRUPTED) from error

    summary = {
        **_summary_of_inputs(options, source, inputs),
        "count": inputs.count,
        "dim": dim,
        "output": options.output,
        "format": options.output_format,
        "precision": options.precision,
        "unit_length": unit_length,
        "chunks": len(bounds),
        "reused_chunks": len(done),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if merged is not None:  # the whole output's facts, and where its manifest is
        summary.update({key: merged[key] for key in ("dim", "unit_length", "world_size", "manifest")})
    return EncodeResult(summary, encoded_chunks=encoded, reused_chunks=len(done))


def _summary_of_inputs(options: EncodeOptions, source, inputs) -> dict[str, Any]:
    """The summary's facts about what was read and how it is encoded (a sharded run's merge repeats them)."""
    return {
        "model": source.reference,
        "inputs": options.inputs,
        "column": inputs.column,
        "modalities": dict(sorted(inputs.modalities.items())),
        "normalize": options.normalize,
        "task": options.task,
        "skipped": inputs.skipped,
        "pdf_pages": len(inputs.pdf_pages),
    }


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line human summary: count, modalities, dim, precision, output and seconds."""
    modalities = ", ".join(f"{count} {name}" for name, count in summary["modalities"].items())
    reused = f", {summary['reused_chunks']} of {summary['chunks']} chunks resumed" if summary["reused_chunks"] else ""
    skipped = f", {summary['skipped']} unusable rows left out" if summary["skipped"] else ""
    shards = f", merged from {summary['world_size']} shards" if "world_size" in summary else ""
    where = "stdout (jsonl)" if summary["output"] == "-" else f"{summary['output']} ({summary['format']})"
    return (
        f"encoded {summary['count']} inputs ({modalities}) -> {summary['dim']}-d {summary['precision']} "
        f"to {where} in {summary['seconds']:.1f} s{reused}{skipped}{shards}"
    )


__all__ = [
    "EncodeInterrupted",
    "EncodeOptions",
    "EncodeResult",
    "FORMATS",
    "PRECISIONS",
    "Parts",
    "convert_precision",
    "run_encode",
    "summary_line",
]
