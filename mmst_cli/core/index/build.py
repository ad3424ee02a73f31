"""Building an index folder (``mmst index``), resuming an interrupted build, and growing it (``--add``).

Each corpus is read by the encode job's own reader (every form ``mmst encode`` takes: tables,
folders, PDFs, datasets) and embedded by the encode job itself, into a staging folder beside the
index, ``.<index name>.build/``: one ``corpus-NNN`` output per corpus, whose chunks are the encode
job's resumable parts, and a ``corpus-NNN.json`` note once it is complete. ``--resume`` reuses
both, so an interrupted build encodes only what it had not finished. The index folder itself is
written whole at the end (see :mod:`mmst_cli.core.index.layout`) and the staging folder removed.

``--add`` reads the existing index, refuses another model or other settings, leaves out every
document it already holds (by media file, or by corpus and id for rows without a file), embeds
only the rest, and writes the folder again: the old vectors first, byte for byte, then the new
ones, added to the existing FAISS index without retraining.

Media a dataset holds in its cells (HF ``Image`` / ``Audio`` columns, images in a parquet) has no
file to refer to, so the index writes each item once into its own ``media/`` folder and its
documents refer to it there (``media/<sha1>.png``); ``--add`` carries the old files over.

Under ``torchrun`` / ``accelerate launch`` every rank embeds its block of each corpus through the
encode job's sharded run (:mod:`mmst_cli.core.encode.shards`) into the same staging folder; rank 0
merges each corpus once every rank is done and writes the index as one process would, and the
other ranks end when their shards are. Ranks run alone by hand leave the merge to rank 0 or to
``mmst index --resume`` in one process, which merges the finished shards it finds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmst_cli.core.encode.checked_inputs import EncodeInputs
from mmst_cli.core.encode.settings import CorpusReading, EmbeddingSettings
from mmst_cli.core.errors import EXIT_INTERRUPTED, MmstError
from mmst_cli.core.index import layout, vector_index
from mmst_cli.core.outputs import atomic_path, ensure_writable_folder

#: What a rank run alone is told to run once every rank is done.
RESUME_HINT = "mmst index --resume (the same command in one process, without RANK / WORLD_SIZE)"

#: Settings an ``--add`` must share with the index (a different value is refused, naming it).
ADD_MUST_MATCH = ("model_identity", "prompt", "dim", "pdf_dpi", "pdf_text", "token_pool_factor", "index", "quantize",
                  "lists", "hnsw_m")  # fmt: skip


@dataclass
class IndexOptions:
    """Everything ``mmst index`` was asked to do.

    Attributes:
        corpora: One or more corpora, each in any form ``mmst encode`` reads. Required.
        output: The index folder to write (or, with ``add``, to grow). Required.
        model: Model folder or Hub id; ``None`` for the index's own model with ``add``, else the
            embedded default model.
        reading: How each corpus is read, as for ``mmst encode``
            (:class:`~mmst_cli.core.encode.settings.CorpusReading`; its defaults when not given).
        embedding: How the documents are embedded, as for ``mmst encode``
            (:class:`~mmst_cli.core.encode.settings.EmbeddingSettings`; its defaults when not
            given). Its ``prompt`` replaces the model's document prompt (``None``: the model's);
            with ``add``, a ``prompt``, ``dim`` or ``token_pool_factor`` of ``None`` keeps the index's.
        add: Add the corpora's new documents to the existing index ``output``; default off.
        resume: Continue an interrupted build from its staging folder; default off (start over).
        index: ``auto`` (default: flat below 200k documents, IVF from there), ``flat``, ``ivf`` or
            ``hnsw``; ``None`` with ``add`` keeps the index's.
        quantize: ``none`` (default), ``int8`` or ``binary``; ``None`` with ``add`` keeps the index's.
        lists: IVF lists; ``None`` for ``sqrt(documents)``.
        hnsw_m: HNSW neighbours per node; ``None`` for 32.
    """

    corpora: list[str]
    output: str
    model: str | None = None
    reading: CorpusReading = field(default_factory=CorpusReading)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    add: bool = False
    resume: bool = False
    index: str | None = None
    quantize: str | None = None
    lists: int | None = None
    hnsw_m: int | None = None

    def validate(self) -> None:
        """Check the options on their own, before any file or model is read (exit 2 naming the flag)."""
        if not self.corpora:
            raise MmstError("name at least one corpus to index (a folder, a table, a PDF, a dataset)")
        if self.index is not None and self.index not in vector_index.INDEX_TYPES:
            raise MmstError(f"--index {self.index!r} is not one of {', '.join(vector_index.INDEX_TYPES)}")
        if self.quantize is not None and self.quantize not in vector_index.QUANTIZATIONS:
            raise MmstError(f"--quantize {self.quantize!r} is not one of {', '.join(vector_index.QUANTIZATIONS)}")
        for flag, value, kind in (("--lists", self.lists, "ivf"), ("--hnsw-m", self.hnsw_m, "hnsw")):
            if value is not None and value <= 0:
                raise MmstError(f"{flag} must be a positive whole number, got {value}")
            if value is not None and not self.add and self.index != kind:  # with --add, the index's type decides
                raise MmstError(f"{flag} shapes an {kind} index; add --index {kind}, or drop {flag}")
        self.embedding.validate()
        self.reading.validate()
        if not self.output.strip():  # Path("") is the current folder, which always exists
            raise MmstError("-o is empty; name the index folder to write, such as -o docs.index")
        output = Path(self.output).expanduser()
        if self.add and not output.exists():
            raise MmstError(f"--add: {self.output!r} does not exist; build it first without --add")
        if not self.add and output.exists():
            raise MmstError(f"-o {self.output!r} exists; pass --add to add documents to it, or remove it to rebuild")
        ensure_writable_folder(output, "-o")


@dataclass
class Corpus:
    """One corpus's new documents: its inputs (narrowed to what the index lacks) and their records."""

    position: int
    reference: str
    inputs: EncodeInputs
    records: list[dict[str, Any]] = field(default_factory=list)


def staging_folder(output: Path) -> Path:
    """Where a build keeps its encoded corpora until the index is written: ``.<name>.build`` beside it."""
    return output.parent / f".{output.name}.build"


def _document_key(record: dict[str, Any]) -> str:
    """What makes two documents the same: the corpus's media file, or the corpus and id of a row
    without one (text, and media held in a dataset: rows with equal bytes share one stored file
    but stay two documents)."""
    if record["ref"] and not layout.is_stored_media(record["ref"]):
        return record["ref"]
    return json.dumps([record["corpus"], record["id"]], ensure_ascii=False)


def _corpus_label(reference: str) -> str:
    path = Path(reference).expanduser()
    return str(path.resolve()) if path.exists() else reference


def _read_corpora(options: IndexOptions, known: set[str], ids: set, log) -> tuple[list[Corpus], int]:
    """Read every corpus and keep the documents the index does not hold yet.

    Returns:
        The corpora with new documents, and how many documents were already indexed.

    Raises:
        MmstError: for unreadable corpora (as ``mmst encode`` says), and for a new document whose
            id another document of the index already has.
    """
    corpora, already = [], 0
    for position, reference in enumerate(options.corpora):
        inputs = options.reading.read(reference)
        for note in inputs.notes:
            log(note)
        inputs.notes = []  # said once here; the encode job would repeat them
        label, keep, records = _corpus_label(reference), [], []
        for row, ((ref, text, modality), doc_id) in enumerate(zip(inputs.sources(), inputs.ids)):
            record = {"id": doc_id, "corpus": label, "modality": modality, "ref": ref, "text": text}
            key = _document_key(record)
            if key in known:
                already += 1
                continue
            if doc_id in ids:
                raise MmstError(
                    f"corpus {reference!r}: document id {doc_id!r} ({ref or 'row ' + str(row + 1)}) is already taken by "
                    "another document of the index; ids must be unique: index folders from their common parent, and "
                    "give tables (texts too, as jsonl or csv: row numbers repeat) an --id-column of unique ids"
                )
            known.add(key)
            ids.add(doc_id)
            keep.append(row)
            records.append(record)
        if keep:
            chosen = inputs if len(keep) == inputs.count else inputs.subset(keep)
            corpora.append(Corpus(position, reference, chosen, records))
    return corpora, already


def _store_embedded_media(corpus: Corpus, media: Path) -> None:
    """Write the images and audio a dataset corpus holds in its cells into ``media`` (the staging
    folder's, once per content, by hash; the index takes the files its records name) and point the
    corpus's records at them, so search can show them.
    Video frame lists, raw bytes columns and cells that name a file instead of holding its bytes
    keep ``ref`` ``null``."""
    from mmst_cli.core.encode.checked_inputs import FeatureInputs
    from mmst_cli.core.retrieval.mining_media import write_embedded_media

    if not isinstance(corpus.inputs, FeatureInputs) or corpus.records[0]["modality"] not in ("image", "audio"):
        return
    stored = write_embedded_media(corpus.inputs, media, readable=False, bytes_required=False)
    for record, path in zip(corpus.records, stored, strict=True):
        record["ref"] = f"{layout.MEDIA}/{Path(path).name}" if path else None


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link a media file of the old index or the staging folder into the new index (no second
    copy of its bytes); copy where the file system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def model_identity(source) -> str | None:
    """How an index finds its model again: a local folder's absolute path, a Hub id, or ``None``
    for the embedded default model."""
    from mmst_cli.core.models.locate import DEFAULT_MODEL_NAME

    location = Path(source.location)
    if source.reference == DEFAULT_MODEL_NAME:
        return None
    return str(location.resolve()) if location.is_dir() else source.reference


def _settings(options: IndexOptions, source, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The index's settings, from the options (with ``--add``: the index's, checked against what was asked).

    The similarity and whether vectors are normalised are set by :func:`_model_settings` once the model is loaded.

    Raises:
        MmstError: with ``--add``, for a model or setting other than the index's, naming it.
    """
    # Options left unset (None) take the index's value with --add; the PDF settings always have one.
    embedding = options.embedding
    asked = {"index": options.index, "quantize": options.quantize, "lists": options.lists, "hnsw_m": options.hnsw_m,
             "prompt": embedding.prompt, "dim": embedding.dim, "token_pool_factor": embedding.token_pool_factor}  # fmt: skip
    if previous is not None:
        settings = dict(previous)
        settings.update({key: value for key, value in asked.items() if value is not None})
    else:
        settings = dict(asked, index=options.index or "auto", quantize=options.quantize or "none",
                        hnsw_m=options.hnsw_m or vector_index.DEFAULT_HNSW_M, model=source.reference)  # fmt: skip
    settings.update(model_identity=model_identity(source), pdf_dpi=options.reading.pdf_dpi, pdf_text=options.reading.pdf_text)
    for key in ADD_MUST_MATCH if previous is not None else ():
        if settings.get(key) != previous.get(key):
            flag = "--model" if key == "model_identity" else "--" + key.replace("_", "-")
            raise MmstError(
                f"--add: the index was built with {key} {previous.get(key)!r}, this run has {settings.get(key)!r}; "
                f"use the index's {flag} (or build a new index)"
            )
    return settings


def _model_settings(settings: dict[str, Any], model, multi_vector: bool) -> None:
    """Add the model's similarity (``maxsim`` for multi-vector models) and whether vectors are normalised."""
    from mmst_cli.core.retrieval.search import model_similarity

    if multi_vector:
        if settings["index"] not in ("auto", "flat") or settings["quantize"] != "none":
            raise MmstError("a multi-vector model's index is searched exactly by MaxSim; drop --index and --quantize")
        settings["index"] = "flat"
    similarity = model_similarity(model)
    # Cosine models are searched by inner product on unit vectors.
    settings.update(similarity="maxsim" if multi_vector else similarity, normalize=not multi_vector and similarity == "cosine")
    if not multi_vector:  # before any encoding: FAISS has no index for some combinations
        dim = settings["dim"] or model.get_embedding_dimension() or 8
        vector_index.check_settings(similarity, "flat" if settings["index"] == "auto" else settings["index"], settings["quantize"], dim)


@dataclass
class StagedCorpus:
    """One corpus as the encode job left it in the staging folder.

    Attributes:
        vectors: A float32 matrix, or ``(tokens, lengths)`` for a multi-vector model; ``None`` on a
            rank of a launch that leaves the corpus to rank 0 (or to ``--resume``).
        encoded: Chunks this process encoded.
        reused: Chunks this process found finished.
        world_size: Processes that embedded it (1 for a single process).
    """

    vectors: Any
    encoded: int = 0
    reused: int = 0
    world_size: int = 1


def _encode_corpus(corpus: Corpus, stage: Path, options: IndexOptions, model, settings, *, multi_vector, launch,
                   console, show_progress, on_chunk, log) -> StagedCorpus:  # fmt: skip
    """Embed one corpus with the encode job (its parts make it resumable; under a launcher each rank
    embeds its shard); reuse a finished one, or merge the finished shards of an interrupted launch.
    """
    from mmst_cli.core.encode.job import EncodeOptions, run_encode
    from mmst_cli.core.encode.shards import MergeStep, has_shards, manifest_path, merge_shards

    output = stage / f"corpus-{corpus.position:03d}.{'safetensors' if multi_vector else 'npy'}"
    note = output.with_suffix(".json")
    # What a launch's shards were embedded with (every rank writes it, the same): a --resume that
    # merges them must ask for the same.
    shards_note = output.with_suffix(".shards.json")
    expected = {"fingerprint": corpus.inputs.fingerprint, "count": corpus.inputs.count, "settings": settings}
    encoded = reused = 0
    step = MergeStep(command="mmst index", flag="--resume", hint=RESUME_HINT)
    # Under a launcher finished work is reused without --resume, as mmst encode's ranks do.
    reuse = options.resume or launch is not None
    if reuse and note.exists() and json.loads(note.read_text(encoding="utf8")) == expected:
        log(f"resuming: corpus {corpus.reference!r} was already encoded")
    elif launch is None and options.resume and has_shards(output):
        if not shards_note.exists() or json.loads(shards_note.read_text(encoding="utf8")) != expected:
            raise MmstError(
                f"--resume: the shards of corpus {corpus.reference!r} in {str(stage)!r} were embedded from other "
                "documents or with other options (--model, --prompt, --dim, ...); resume with the launch's corpora "
                "and options, or drop --resume to start over"
            )
        log(f"resuming: merging the shards of corpus {corpus.reference!r}")
        merge_shards(str(output), log=log, step=step)
        _write_note(note, expected)
    else:
        if launch is not None:
            _write_note(shards_note, expected)
        # With --add, the prompt, dim and pooling the index was built with (see _settings), not only what was asked.
        embedding = replace(options.embedding, prompt=settings["prompt"], dim=settings["dim"],
                            token_pool_factor=settings["token_pool_factor"])  # fmt: skip
        job = EncodeOptions(
            inputs=corpus.reference, output=str(output), model=settings["model_identity"], reading=options.reading,
            embedding=embedding, task="document", normalize=settings["normalize"], resume=options.resume,
        )  # fmt: skip
        result = run_encode(job, model=model, inputs=corpus.inputs, console=console, show_progress=show_progress,
                            on_chunk=on_chunk, log=log, merge_step=step)  # fmt: skip
        encoded, reused = result.encoded_chunks, result.reused_chunks
        if result.summary is None:  # a rank that left the merge to rank 0 or to --resume
            return StagedCorpus(None, encoded, reused)
        _write_note(note, expected)
    if launch is not None and launch.rank != 0:
        return StagedCorpus(None, encoded, reused)
    # A merged corpus has the shards' manifest beside it, which names the world size.
    merged = manifest_path(output)
    world_size = json.loads(merged.read_text(encoding="utf8"))["world_size"] if merged.exists() else 1
    if not multi_vector:
        return StagedCorpus(np.load(output), encoded, reused, world_size)
    from safetensors.numpy import load_file

    tensors = load_file(str(output))
    return StagedCorpus((tensors["embeddings"], np.diff(tensors["offsets"])), encoded, reused, world_size)


def _write_note(note: Path, expected: dict[str, Any]) -> None:
    """Mark a corpus as completely encoded with what it was encoded from (``--resume`` compares it)."""
    with atomic_path(note) as temporary:
        temporary.write_text(json.dumps(expected), encoding="utf8")


def _write_dense(folder: Path, previous: layout.IndexFolder | None, blocks: list[np.ndarray], settings: dict[str, Any]) -> int:
    """Write ``vectors.npy`` (old rows first, unchanged) and ``index.faiss``; return the width."""
    new = np.concatenate(blocks) if blocks else None
    old = previous.vectors() if previous is not None else None
    dim = (old if old is not None else new).shape[1]
    rows = (len(old) if old is not None else 0) + (len(new) if new is not None else 0)
    matrix = np.lib.format.open_memmap(folder / layout.VECTORS, mode="w+", dtype=np.float32, shape=(rows, dim))
    if old is not None:
        matrix[: len(old)] = old
    if new is not None:
        matrix[rows - len(new) :] = new
    matrix.flush()
    if previous is None:
        settings["index"] = vector_index.resolve_type(settings["index"], rows)
        if settings["index"] == "ivf":
            settings["lists"] = min(settings["lists"] or vector_index.default_lists(rows), rows)
            settings["nprobe"] = vector_index.default_nprobe(settings["lists"])
        settings.setdefault("ef_search", vector_index.DEFAULT_EF_SEARCH)
        vector_index.check_settings(settings["similarity"], settings["index"], settings["quantize"], dim)
        index = vector_index.build(matrix, settings)
    else:
        index = previous.faiss_index()
        if new is not None:
            vector_index.add(index, new, settings)
    vector_index.save(index, folder / layout.FAISS_INDEX, settings)
    del matrix
    return dim


def _write_tokens(folder: Path, previous: layout.IndexFolder | None, blocks: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Write ``tokens.npy`` and ``offsets.npy`` (old rows first, unchanged); return the width."""
    tokens = [block[0] for block in blocks]
    lengths = [block[1] for block in blocks]
    if previous is not None:
        old_tokens, old_offsets = previous.token_vectors()
        tokens.insert(0, np.asarray(old_tokens))
        lengths.insert(0, np.diff(old_offsets))
    all_tokens = np.concatenate(tokens)
    np.save(folder / layout.TOKENS, np.ascontiguousarray(all_tokens, dtype=np.float32))
    np.save(folder / layout.OFFSETS, np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64))
    return all_tokens.shape[1]


def run_index(
    options: IndexOptions,
    *,
    console=None,
    show_progress: bool = True,
    model=None,
    on_chunk: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Run ``mmst index``: read the corpora, embed what is new, write the index folder whole.

    Under ``torchrun`` / ``accelerate launch`` each rank embeds its shard of every corpus; rank 0
    writes the index once every rank is done.

    Args:
        options: What to do; validated here.
        console / show_progress: Where and whether the encode job draws its progress bar.
        model: An already loaded model instead of loading ``options.model`` (tests).
        on_chunk: Passed to the encode job: called after each encoded chunk (tests interrupt there).
        log: Where notes for the user go; default stderr.

    Returns:
        The JSON-ready summary: index, kind, documents, added, already indexed, chunks, world size,
        seconds; ``None`` on a rank of a launch that leaves the index to rank 0 (or to ``--resume``).

    Raises:
        MmstError: for bad options, corpora, an ``--add`` mismatch (exit 2); exit 130 on Ctrl-C,
            keeping the staging folder for ``--resume``.
    """
    from mmst_cli.core.encode.multi_vector import is_multi_vector
    from mmst_cli.core.encode.shards import detect_launch, launched_by_agent, rank_group
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model

    started = time.perf_counter()
    log = log or (lambda line: sys.stderr.write(line + "\n"))
    options.validate()
    launch = detect_launch()
    output = Path(options.output).expanduser()
    previous = layout.open_index(output, "--add") if options.add else None
    reference = options.model or (previous.settings["model_identity"] if previous else None)
    source = locate_model(reference)
    settings = _settings(options, source, previous.settings if previous else None)
    known: set[str] = set()
    ids: set = set()
    if previous is not None:
        for record in previous.documents():
            known.add(_document_key(record))
            ids.add(record["id"])
    # Every rank reads every corpus (the rows decide where each shard starts); rank 0 says what it noticed.
    quiet = launch is not None and launch.rank != 0
    corpora, already = _read_corpora(options, known, ids, (lambda line: None) if quiet else log)
    if previous is not None and not corpora:
        if quiet:
            return None
        log(f"nothing to add: all {already} document(s) are in the index already; it is left as it was")
        manifest = previous.manifest
        summary = _summary(options, manifest["kind"], manifest["settings"], previous.count, manifest["dim"], [], already,
                           0, 0, started)  # fmt: skip
        return {**summary, "world_size": manifest.get("world_size", 1)}
    if model is None:  # a rank loads straight onto its own device, not all onto the first GPU
        device = launch.device(options.embedding.devices) if launch is not None else None
        model = load_model(source, trust_remote_code=options.embedding.trust_remote_code, device=device)
    multi_vector = is_multi_vector(model)
    if previous is None:
        _model_settings(settings, model, multi_vector)

    stage = staging_folder(output)
    # The ranks of a launch share the staging folder and keep what is finished in it, as mmst encode's do.
    if stage.exists() and not options.resume and launch is None:
        log(f"discarding the staging folder of an earlier unfinished build, {stage} (--resume would continue it)")
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    if not quiet:  # rank 0 writes the index, so it alone stores the media its documents refer to
        for corpus in corpora:  # before encoding binds the inputs, which decodes audio cells into arrays
            _store_embedded_media(corpus, stage / layout.MEDIA)
    staged: list[StagedCorpus] = []
    try:
        with rank_group(launch) if launch is not None else nullcontext():  # one group for every corpus's barrier
            for corpus in corpora:
                staged.append(_encode_corpus(
                    corpus, stage, options, model, settings, multi_vector=multi_vector, launch=launch, console=console,
                    show_progress=show_progress, on_chunk=on_chunk, log=log,
                ))  # fmt: skip
    except KeyboardInterrupt as error:
        raise MmstError(f"interrupted; rerun with --resume to continue from {stage}", EXIT_INTERRUPTED) from error
    if any(corpus.vectors is None for corpus in staged):
        then = "rank 0 builds the index" if launched_by_agent() else f"once every rank is done, {RESUME_HINT} builds the index"
        launch.logger(log)(f"its shards of {len(staged)} corpus(es) are done; {then}")
        return None
    blocks = [corpus.vectors for corpus in staged]
    encoded, reused = sum(corpus.encoded for corpus in staged), sum(corpus.reused for corpus in staged)
    world_size = max([corpus.world_size for corpus in staged], default=1)

    records = [record for corpus in corpora for record in corpus.records]
    count = (previous.count if previous else 0) + len(records)
    with atomic_path(output) as folder:
        folder.mkdir()
        if previous is not None and (previous.path / layout.MEDIA).is_dir():
            shutil.copytree(previous.path / layout.MEDIA, folder / layout.MEDIA, copy_function=_link_or_copy)
        for name in sorted({record["ref"] for record in records if layout.is_stored_media(record["ref"])}):
            if not (folder / name).exists():
                (folder / layout.MEDIA).mkdir(exist_ok=True)
                _link_or_copy(str(stage / name), str(folder / name))
        old_records = previous.documents() if previous else iter(())
        layout.write_documents(folder / layout.DOCUMENTS, [*old_records, *records])
        dim = _write_tokens(folder, previous, blocks) if multi_vector else _write_dense(folder, previous, blocks, settings)
        corpora_seen = list(dict.fromkeys([*(previous.manifest["corpora"] if previous else []),
                                           *(_corpus_label(corpus) for corpus in options.corpora)]))  # fmt: skip
        layout.write_manifest(folder, {
            "kind": "multi_vector" if multi_vector else "dense", "count": count, "dim": dim,
            "settings": settings, "corpora": corpora_seen, "world_size": world_size,
        })  # fmt: skip
    shutil.rmtree(stage, ignore_errors=True)
    kind = "multi_vector" if multi_vector else "dense"
    return {**_summary(options, kind, settings, count, dim, records, already, encoded, reused, started), "world_size": world_size}


def _summary(options, kind, settings, count, dim, records, already, encoded, reused, started) -> dict[str, Any]:
    modalities: dict[str, int] = {}
    for record in records:
        modalities[record["modality"]] = modalities.get(record["modality"], 0) + 1
    return {
        "index": options.output, "kind": kind, "model": settings["model"], "documents": count, "added": len(records),
        "already_indexed": already, "modalities": modalities, "dim": dim, "index_type": settings["index"],
        "quantize": settings["quantize"], "similarity": settings["similarity"], "encoded_chunks": encoded,
        "reused_chunks": reused, "seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line human summary of :func:`run_index`."""
    modalities = ", ".join(f"{count} {name}" for name, count in summary["modalities"].items()) or "none"
    kind = "exact MaxSim" if summary["kind"] == "multi_vector" else summary["index_type"]
    if summary["quantize"] != "none":
        kind += f", {summary['quantize']}"
    already = f", {summary['already_indexed']} already indexed" if summary["already_indexed"] else ""
    resumed = f", {summary['reused_chunks']} chunk(s) resumed" if summary["reused_chunks"] else ""
    return (
        f"indexed {summary['added']} new document(s) ({modalities}){already}{resumed} -> {summary['index']}: "
        f"{summary['documents']} documents, {summary['dim']}-d, {kind}, in {summary['seconds']:.1f} s"
    )


__all__ = ["IndexOptions", "run_index", "staging_folder", "summary_line"]
