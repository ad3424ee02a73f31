"""``mmst mine``: hard negatives for text, image and audio retrieval data, false negatives kept out.

Examples:

    # (query, positive) pairs; the positives are the corpus; 3 negatives per anchor, as triplets
    $ mmst mine --model ./embedder --data pairs.jsonl -o mined.jsonl

    # Image pages from a folder as the corpus, ranks 10-50 only, 5% below the positive, 5 at random
    $ mmst mine --model ./my-clip --data queries_pages.csv --corpus ./pages \\
        --range-min 10 --range-max 50 --relative-margin 0.05 --num-negatives 5 --sampling random -o mined.jsonl

    # A large corpus through a FAISS index (by default from 200,000 documents on)
    $ mmst mine --model ./embedder --data pairs.parquet --corpus corpus.parquet --index faiss -o mined.jsonl

    # A BEIR folder (its qrels are respected); another page of the positive's PDF is never a negative
    $ mmst mine --model ./embedder --data ./scifact --split train -o mined.jsonl
    $ mmst mine --model ./embedder --data pages.jsonl --group-column source_pdf -o mined.jsonl

    # A reranker drops candidates it judges relevant; labelled rows for train-rerank, with scores
    $ mmst mine --model ./embedder --data pairs.jsonl --reranker ./reranker --reranker-threshold 0.5 \\
        --format labeled-list --scores -o rerank.jsonl --json | jq .removed

Then: ``mmst train-embed --data mined.jsonl`` or ``mmst train-rerank --data rerank.jsonl``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from mmst_cli.cli.options import (
    DATA_PANEL,
    AllowOutsideRootOption,
    EncodeBatchSizeOption,
    JsonOption,
    MediaRootOption,
    TrustRemoteCodeOption,
)
from mmst_cli.cli.output import console, emit

MODEL = "Model"
MINING = "Mining (Sentence Transformers' names)"
FALSE_NEGATIVES = "False negatives"
OUTPUT = "Output"


def mine(
    data: Annotated[str, typer.Option(help="Pair table (anchor, positive: jsonl, csv, parquet, dataset folder or Hub id), or a BEIR / mteb folder with qrels.", rich_help_panel=DATA_PANEL, show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The jsonl file of mined rows (written whole or not at all).", rich_help_panel=OUTPUT, show_default=False)],
    corpus: Annotated[str | None, typer.Option(help="More documents to mine from: a table, a .txt file (a line each) or a folder of images / audio. Default: the positives alone.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    columns: Annotated[str | None, typer.Option(help="Pair-table columns: anchor,positive. Default: the first two.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    corpus_column: Annotated[str | None, typer.Option(help="The --corpus table's column. Default: picked as `mmst encode` picks.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    split: Annotated[str | None, typer.Option(help="Split of the data (BEIR qrels split, or dataset split). Default: train.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    data_config: Annotated[str | None, typer.Option(help="Hub configuration of the data.", rich_help_panel=DATA_PANEL, show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model folder or Hub id that ranks the candidates. Default: the embedded MiniLM + EfficientNet-Lite0 Router.", rich_help_panel=MODEL, show_default=False)] = None,
    media_root: MediaRootOption = None,
    allow_outside_root: AllowOutsideRootOption = False,
    num_negatives: Annotated[int, typer.Option(help="Negatives per anchor.", rich_help_panel=MINING)] = 3,
    range_min: Annotated[int, typer.Option(help="Skip the best-ranked candidates above this rank (they are often unlabelled positives).", rich_help_panel=MINING)] = 0,
    range_max: Annotated[int | None, typer.Option(help="Consider candidates up to this rank. Default: range-min + num-negatives (x10 with a margin or score bound) + positives.", rich_help_panel=MINING, show_default=False)] = None,
    absolute_margin: Annotated[float | None, typer.Option(help="Keep a negative only if it scores at least this much below the anchor's hardest positive.", rich_help_panel=MINING, show_default=False)] = None,
    relative_margin: Annotated[float | None, typer.Option(help="Keep a negative only if it scores at least this fraction of the positive's score below it (0.05 = 5%).", rich_help_panel=MINING, show_default=False)] = None,
    max_score: Annotated[float | None, typer.Option(help="Drop candidates scoring above this.", rich_help_panel=MINING, show_default=False)] = None,
    min_score: Annotated[float | None, typer.Option(help="Drop candidates scoring below this.", rich_help_panel=MINING, show_default=False)] = None,
    sampling: Annotated[str, typer.Option(help="top: the best remaining candidates; random: any of them (--seed).", rich_help_panel=MINING)] = "top",
    seed: Annotated[int | None, typer.Option(help="Seed of --sampling random. Default: 12.", rich_help_panel=MINING, show_default=False)] = None,
    reranker: Annotated[str | None, typer.Option(help="Rescore the candidates with this reranker and drop those it scores as relevant.", rich_help_panel=FALSE_NEGATIVES, show_default=False)] = None,
    reranker_threshold: Annotated[float | None, typer.Option(help="The --reranker score (its own activation: a probability for one-label rerankers) from which a candidate counts as relevant. Default: 0.5.", rich_help_panel=FALSE_NEGATIVES, show_default=False)] = None,
    group_column: Annotated[str | None, typer.Option(help="A column (of the data, and of a --corpus table) naming each document's group, e.g. its source PDF: documents of a positive's group are never its negatives.", rich_help_panel=FALSE_NEGATIVES, show_default=False)] = None,
    output_format: Annotated[str, typer.Option("--format", help="triplet (anchor, positive, negative_1..n) for train-embed; labeled-pair (query, document, label) or labeled-list (query, documents, labels) for train-rerank.", rich_help_panel=OUTPUT)] = "triplet",
    scores: Annotated[bool, typer.Option("--scores", help="Write the embedding scores too (a scores list, or a score per labeled pair).", rich_help_panel=OUTPUT)] = False,
    keep_incomplete: Annotated[bool, typer.Option("--keep-incomplete", help="Keep anchors that got fewer than --num-negatives negatives (labeled formats); they are dropped and counted otherwise.", rich_help_panel=OUTPUT)] = False,
    media_out: Annotated[str | None, typer.Option(help="Folder for images / audio embedded in the data or corpus (HF Image / Audio cells, bytes): each written once, named by its content hash, and referenced from the rows. Default: <output stem>-media beside the output.", rich_help_panel=OUTPUT, show_default=False)] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Where corpus embeddings are cached, keyed by model and corpus content. Default: $MMST_CACHE/mine or ~/.cache/mmst/mine.", rich_help_panel=OUTPUT, show_default=False)] = None,
    index: Annotated[str, typer.Option(help="exact: blocked exact search; faiss: an approximate FAISS index; auto: FAISS from 200,000 documents on.", rich_help_panel=MINING)] = "auto",
    batch_size: EncodeBatchSizeOption = 32,
    device: Annotated[str | None, typer.Option(help="cuda:0, cpu, ...; several, comma-separated (cuda:0,cuda:1), start one encoding process each, as in `mmst encode`. Default: chosen by Sentence Transformers.", rich_help_panel=MODEL, show_default=False)] = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    json_output: JsonOption = False,
) -> None:
    """Mine hard negatives for any modality, with false-negative rules counted in a summary."""
    from mmst_cli.core.retrieval.mining import MineOptions, run_mining

    options = MineOptions(
        model=model, data=data, output=output, corpus=corpus,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        corpus_column=corpus_column, group_column=group_column, split=split, data_config=data_config,
        media_root=media_root, allow_outside_root=allow_outside_root, num_negatives=num_negatives,
        range_min=range_min, range_max=range_max, absolute_margin=absolute_margin, relative_margin=relative_margin,
        max_score=max_score, min_score=min_score, sampling=sampling, seed=seed, reranker=reranker,
        reranker_threshold=reranker_threshold, output_format=output_format, scores=scores,
        keep_incomplete=keep_incomplete, cache_dir=cache_dir, index=index, media_out=media_out, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code,
    )  # fmt: skip
    options.validate()  # before the model loads, and before the progress display imports transformers
    from mmst_cli.core.progress import progress_bars

    with progress_bars(console) as track:
        summary = run_mining(options, track=track)
    for note in summary["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)
    emit(summary, as_json=json_output, render=render_summary)


def render_summary(console: Console, summary: dict[str, Any]) -> None:
    """What was written, and how many candidates each false-negative rule removed."""
    console.print(
        f"{summary['rows_written']} {summary['format']} rows -> {summary['output']} "
        f"({summary['anchors']} anchors, {summary['documents']} documents, corpus cache {summary['corpus_cache']})",
        markup=False, highlight=False,
    )  # fmt: skip
    if summary["rows_short_of_negatives"]:
        kept = "kept" if summary["short_rows_kept"] else "dropped"
        console.print(f"{summary['rows_short_of_negatives']} rows got fewer negatives than asked ({kept})", markup=False, highlight=False)
    removed = ", ".join(f"{rule} {count}" for rule, count in summary["removed"].items() if count)
    console.print(f"candidates removed: {removed or 'none'}", markup=False, highlight=False)
