"""``mmst index``: embed a corpus once into a folder that ``mmst search`` searches without it.

Examples:

    # A folder of images (recursive) with a CLIP-style model: exact search below 200k documents
    $ mmst index --model ./my-clip ./photos -o photos.index

    # A table of texts (ids from its doc_id column), then every page of a folder of PDFs as images
    # (--id-column applies to every corpus of a run, and a folder refuses it: two runs)
    $ mmst index --model ./my-clip docs.jsonl --id-column doc_id -o docs.index
    $ mmst index ./reports --add -o docs.index

    # A BEIR / mteb folder: its corpus, with the ids its qrels use (then mmst search --queries it)
    $ mmst index --model ./embedder ./scifact -o scifact.index

    # Approximate search for a large corpus: HNSW, or IVF with 4096 lists, over int8 codes
    $ mmst index --model ./embedder corpus.parquet --index hnsw -o big.index
    $ mmst index --model ./embedder corpus.parquet --index ivf --lists 4096 --quantize int8 -o big.index

    # New photos since last time: only they are embedded; the model and settings must match
    $ mmst index ./photos --add -o photos.index

    # Continue an interrupted build (finished chunks are not encoded again)
    $ mmst index --model ./my-clip ./photos -o photos.index --resume

    # One shard per GPU: rank 0 builds the index once every rank is done (docs/scale.md#index)
    $ torchrun --nproc_per_node 8 -m mmst_cli index --model ./my-clip ./photos -o photos.index

Then: ``mmst search photos.index "a red dress"``. docs/search.md describes the folder.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mmst_cli.cli.options import (
    AllowOutsideRootOption,
    ChunkSizeOption,
    DecodeWorkersOption,
    EncodeBatchSizeOption,
    EncodeDeviceOption,
    EncodePromptOption,
    InputColumnOption,
    InputDataConfigOption,
    InputIdColumnOption,
    InputMediaRootOption,
    InputSplitOption,
    JsonOption,
    MatryoshkaDimOption,
    PdfDpiOption,
    PdfPasswordOption,
    PdfTextOption,
    SkipBadOption,
    TokenPoolFactorOption,
    TrustRemoteCodeOption,
)
from mmst_cli.cli.output import console, emit
from mmst_cli.core.data.documents import DEFAULT_PDF_DPI
from mmst_cli.core.encode.settings import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, CorpusReading, EmbeddingSettings

MODEL = "Model"
INDEX = "Index"


def index(
    ctx: typer.Context,
    corpora: Annotated[list[str], typer.Argument(help="One or more corpora, each in any form mmst encode reads: a folder of images, audio or PDFs, a jsonl/csv/parquet/txt file, a PDF, a save_to_disk folder, a Hub dataset, or a BEIR / mteb folder (its corpus, ids as in its qrels).", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The index folder to write (with --add: to grow).", rich_help_panel=INDEX, show_default=False)] = ...,
    add: Annotated[bool, typer.Option(help="Add the corpora's documents that the index does not hold yet (by media file, or corpus and id), embedding only those.", rich_help_panel=INDEX)] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted build: finished chunks (kept in .<index>.build/) are not encoded again; after a torchrun build whose ranks were finished alone, merges their shards and builds the index.", rich_help_panel=INDEX)] = False,
    index_type: Annotated[str | None, typer.Option("--index", help="auto, flat (exact), ivf or hnsw (approximate). Default: auto, flat below 200,000 documents, ivf from there (with --add: the index's).", rich_help_panel=INDEX, show_default=False)] = None,
    quantize: Annotated[str | None, typer.Option(help="none, int8 (FAISS scalar quantiser) or binary (one bit per dimension, Hamming distance; search re-scores with the float vectors). Default: none.", rich_help_panel=INDEX, show_default=False)] = None,
    lists: Annotated[int | None, typer.Option(help="IVF lists (k-means cells). Default: the square root of the document count.", rich_help_panel=INDEX, show_default=False)] = None,
    hnsw_m: Annotated[int | None, typer.Option(help="HNSW neighbours per node. Default: 32.", rich_help_panel=INDEX, show_default=False)] = None,
    column: InputColumnOption = None,
    id_column: InputIdColumnOption = None,
    split: InputSplitOption = None,
    data_config: InputDataConfigOption = None,
    media_root: InputMediaRootOption = None,
    allow_outside_root: AllowOutsideRootOption = False,
    skip_bad: SkipBadOption = False,
    pdf_dpi: PdfDpiOption = DEFAULT_PDF_DPI,
    pdf_password: PdfPasswordOption = None,
    pdf_text: PdfTextOption = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model folder or Hub id. Default: with --add the index's model, else the embedded MiniLM + EfficientNet-Lite0 Router.", rich_help_panel=MODEL, show_default=False)] = None,
    prompt: EncodePromptOption = None,
    batch_size: EncodeBatchSizeOption = DEFAULT_BATCH_SIZE,
    device: EncodeDeviceOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    token_pool_factor: TokenPoolFactorOption = None,
    decode_workers: DecodeWorkersOption = None,
    dim: MatryoshkaDimOption = None,
    chunk_size: ChunkSizeOption = DEFAULT_CHUNK_SIZE,
    json_output: JsonOption = False,
) -> None:
    """Embed corpora (images, audio, PDF pages, texts) into a search index folder for mmst search."""
    from mmst_cli.core.index.build import IndexOptions, run_index, summary_line

    # The reading and embedding flags are encode's too: each group takes them by name (core/encode/settings.py).
    options = IndexOptions(
        corpora=list(corpora), output=output, model=model, reading=CorpusReading.from_values(ctx.params),
        embedding=EmbeddingSettings.from_values(ctx.params), add=add, resume=resume, index=index_type,
        quantize=quantize, lists=lists, hnsw_m=hnsw_m,
    )  # fmt: skip
    summary = run_index(options, console=console, log=lambda line: console.print(line, markup=False, highlight=False))
    if summary is None:  # a rank of a launch that leaves the index to rank 0
        return
    emit(summary, as_json=json_output, render=lambda out, data: out.print(summary_line(data), markup=False, highlight=False))
