"""``mmst encode``: texts, images and audio to embeddings, as data for other tools.

Examples:

    # A jsonl/csv/parquet file: the "text" (or only) column, ids from the "doc_id" column
    $ mmst encode corpus.jsonl --id-column doc_id -o corpus.parquet

    # A folder of images (recursive; ids are the relative paths) with a CLIP model, int8
    $ mmst encode ./photos --model ./my-clip --precision int8 -o photos.safetensors

    # Texts and media paths mixed in one column: grouped by modality, written in input order
    $ mmst encode mixed.csv --column input --normalize --dim 256 -o mixed.npy

    # Queries from stdin, streamed as jsonl to another tool (stdout holds only the jsonl)
    $ cut -f2 queries.tsv | mmst encode - --task query -o - | jq -c '{id, n: (.embedding | length)}'

    # Every page of every PDF under ./docs (ids: report.pdf#page=3), as images at 144 dpi
    $ mmst encode ./docs --model ./my-page-retriever -o pages.parquet

    # Some pages of one PDF, by their text layer
    $ mmst encode report.pdf#page=2-5 --pdf-text -o pages.npy

    # A multi-vector (ColBERT / ColPali-style) model: a flat token matrix plus row offsets
    $ mmst encode ./docs --model ./colqwen --task document --token-pool-factor 2 -o pages.safetensors
    $ mmst encode ./docs --model ./colqwen --task document --device cuda:0,cuda:1 -o pages.npz

    # A Hub dataset split on two GPUs; continue it after an interruption
    $ mmst encode user/dataset --split test --column image --device cuda:0,cuda:1 -o test.npy --resume

    # Sharded over 8 GPUs (one shard per rank, rank 0 writes the output); after rerunning a dead rank alone:
    $ torchrun --nproc_per_node 8 -m mmst_cli encode ./photos --model ./my-clip -o photos.parquet
    $ RANK=3 WORLD_SIZE=8 mmst encode ./photos --model ./my-clip -o photos.parquet && mmst encode --merge -o photos.parquet
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
from mmst_cli.core.errors import MmstError

MODEL = "Model"
OUTPUT = "Output"


def encode(
    ctx: typer.Context,
    inputs: Annotated[str | None, typer.Argument(help="jsonl/csv/parquet/txt file, PDF file (report.pdf, report.pdf#page=2-5), folder of images, audio or PDFs, save_to_disk folder, BEIR / mteb folder (its corpus), Hub dataset id, or - for stdin (one text or media path per line). Not needed with --merge.", show_default=False)] = None,
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
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model folder or Hub id. Default: the embedded MiniLM + EfficientNet-Lite0 Router.", rich_help_panel=MODEL, show_default=False)] = None,
    task: Annotated[str | None, typer.Option(help="query or document: use the model's encode_query / encode_document (their prompts and routes). Default: plain encode.", rich_help_panel=MODEL, show_default=False)] = None,
    prompt: EncodePromptOption = None,
    batch_size: EncodeBatchSizeOption = DEFAULT_BATCH_SIZE,
    device: EncodeDeviceOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    token_pool_factor: TokenPoolFactorOption = None,
    decode_workers: DecodeWorkersOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Output file: .npy, .parquet, .jsonl, .safetensors or (multi-vector models) .npz (or see --format); - streams jsonl to stdout.", rich_help_panel=OUTPUT, show_default=False)] = ...,
    output_format: Annotated[str | None, typer.Option("--format", help="npy, parquet, jsonl, safetensors or npz (multi-vector models). Default: the output's extension.", rich_help_panel=OUTPUT, show_default=False)] = None,
    dim: MatryoshkaDimOption = None,
    normalize: Annotated[bool, typer.Option(help="L2-normalise the vectors (after --dim).", rich_help_panel=OUTPUT)] = False,
    precision: Annotated[str, typer.Option(help="float32, float16 (cast), int8 (per-dimension ranges over this run) or ubinary (1 bit per dimension, packed into bytes).", rich_help_panel=OUTPUT)] = "float32",
    chunk_size: ChunkSizeOption = DEFAULT_CHUNK_SIZE,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run: finished chunks (kept in .<output>.parts/) are not recomputed. Under torchrun / accelerate launch, finished shards are always reused.", rich_help_panel=OUTPUT)] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Write -o from the finished shards of a run under torchrun / accelerate launch (after a rank was run again alone); takes no INPUTS and loads no model; the run's own settings apply.", rich_help_panel=OUTPUT)] = False,
    json_output: JsonOption = False,
) -> None:
    """Embed texts, images, audio and PDF pages with one model and write the vectors in input order."""
    if json_output and output == "-":
        raise MmstError("--json prints the summary on stdout, which -o - fills with embeddings; drop one of them")

    import os
    import sys

    from mmst_cli.core.encode.job import EncodeOptions, run_encode, summary_line

    def show(summary) -> None:
        emit(summary, as_json=json_output, render=lambda out, s: out.print(summary_line(s), markup=False, highlight=False))

    if merge:
        show(_merge(inputs, output))
        return
    if inputs is None:
        raise MmstError("Missing argument 'INPUTS': name a file, folder, dataset or - for stdin; only --merge takes none (see 'mmst encode --help')")

    # The reading and embedding flags are index's too: each group takes them by name (core/encode/settings.py).
    options = EncodeOptions(
        inputs=inputs, output=output, model=model, reading=CorpusReading.from_values(ctx.params),
        embedding=EmbeddingSettings.from_values(ctx.params), task=task, normalize=normalize, precision=precision,
        format=output_format, resume=resume,
    )  # fmt: skip
    options.validate()
    try:
        result = run_encode(
            options, console=console, log=lambda line: console.print(line, markup=False, highlight=False)
        )
    except BrokenPipeError:
        # The reader of `-o -` went away (`| head`): stop quietly, as shell tools do on SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None
    if result.summary is not None:  # None on the ranks of a sharded run that leave the output to rank 0
        show(result.summary)


def _merge(inputs: str | None, output: str) -> dict:
    """``--merge``: the output of a sharded run from its finished shards, in this one process."""
    from mmst_cli.core.encode.shards import detect_launch, merge_shards

    if inputs is not None:
        raise MmstError(f"--merge writes -o from its shards and reads no INPUTS; drop {inputs!r}")
    if output == "-":
        raise MmstError("--merge needs the output file the sharded run wrote its shards for, not -")
    if detect_launch() is not None:
        raise MmstError("--merge runs in one process; run it without torchrun / accelerate launch")
    return merge_shards(output, log=lambda line: console.print(line, markup=False, highlight=False))
