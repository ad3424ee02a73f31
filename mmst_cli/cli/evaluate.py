"""``mmst evaluate``: retrieval scores you can trust and compare, equal to trec_eval's.

Examples:

    # The embedded default model on the embedded emoji evaluation pairs
    $ mmst evaluate

    # A finetuned model on a BEIR folder, several cut-offs, as JSON for jq
    $ mmst evaluate --model runs/x/model --data ./scifact --k 10 --k 100 --json | jq '.metrics["ndcg@10"]'

    # A ViDoRe-style Hub dataset, retrieve-then-rerank, per-query results to find the failures
    $ mmst evaluate --model ./embedder --data vidore/docvqa_test_subsampled_beir \\
        --reranker ./reranker --rerank-top-k 50 --per-query failures.jsonl

    # Matryoshka sweep with a plot; a CI gate that exits 1 below the threshold
    $ mmst evaluate --model ./m --data pairs.parquet --dims 768,512,256,64 --plot sweep.png
    $ mmst evaluate --model ./m --data pairs.parquet --fail-under ndcg@10=0.85

    # A folder of PDFs with queries.jsonl and qrels/test.tsv on page ids (report.pdf#page=3)
    $ mmst evaluate --model ./page-retriever --data ./reports

    # Score an existing ranking, no model
    $ mmst evaluate --run run.trec --qrels qrels.tsv
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mmst_cli.cli.options import (
    DATA_PANEL,
    AllowOutsideRootOption,
    AllowRemoteMediaOption,
    JsonOption,
    MediaRootOption,
    PdfDpiOption,
    PdfPasswordOption,
    PdfTextOption,
    SkipBadOption,
    TrustRemoteCodeOption,
)
from mmst_cli.cli.output import console, emit
from mmst_cli.core.data.documents import DEFAULT_PDF_DPI
from mmst_cli.core.errors import EXIT_FAILURE, MmstError

MODEL = "Model"
DATA = DATA_PANEL
METRICS = "Metrics"
OUTPUT = "Output"


def evaluate(
    model: Annotated[str | None, typer.Option(help="Embedding model folder or Hub id. Default: the embedded default model.", rich_help_panel=MODEL, show_default=False)] = None,
    reranker: Annotated[str | None, typer.Option(help="Rerank each query's first-stage results with this reranker; both stages are reported.", rich_help_panel=MODEL, show_default=False)] = None,
    rerank_top_k: Annotated[int, typer.Option(help="How many first-stage results the reranker re-scores.", rich_help_panel=MODEL)] = 100,
    batch_size: Annotated[int, typer.Option(help="Inputs per forward pass.", rich_help_panel=MODEL)] = 32,
    trust_remote_code: TrustRemoteCodeOption = False,
    data: Annotated[str | None, typer.Option(help="BEIR folder, corpus/queries/qrels dataset (Hub id or folder), or pair data. Default: the embedded emoji evaluation pairs.", rich_help_panel=DATA, show_default=False)] = None,
    split: Annotated[str | None, typer.Option(help="Split (BEIR qrels or dataset). Default: test for corpus/queries/qrels data, train for pairs.", rich_help_panel=DATA, show_default=False)] = None,
    data_config: Annotated[str | None, typer.Option(help="Hub configuration of pair data.", rich_help_panel=DATA, show_default=False)] = None,
    columns: Annotated[str | None, typer.Option(help="Pair data columns: query,positive[,negative...].", rich_help_panel=DATA, show_default=False)] = None,
    media_root: MediaRootOption = None,
    skip_bad: SkipBadOption = False,
    allow_remote_media: AllowRemoteMediaOption = False,
    allow_outside_root: AllowOutsideRootOption = False,
    pdf_dpi: PdfDpiOption = DEFAULT_PDF_DPI,
    pdf_password: PdfPasswordOption = None,
    pdf_text: PdfTextOption = False,
    strict: Annotated[bool, typer.Option(help="Fail when qrels name queries or documents that do not exist (default: warn with counts).", rich_help_panel=DATA)] = False,
    run: Annotated[str | None, typer.Option(help="Score this TREC run file instead of a model (needs --qrels).", rich_help_panel=DATA, show_default=False)] = None,
    qrels: Annotated[str | None, typer.Option(help="Relevance judgements for --run: TREC qrels or BEIR tsv.", rich_help_panel=DATA, show_default=False)] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Metric cut-off; repeatable. Default: 10.", rich_help_panel=METRICS, show_default=False)] = None,
    dims: Annotated[str | None, typer.Option(help="Matryoshka sweep: comma-separated dimensions, one result row each.", rich_help_panel=METRICS, show_default=False)] = None,
    fail_under: Annotated[list[str] | None, typer.Option(help="METRIC=VALUE, e.g. ndcg@10=0.85: exit 1 when the metric is below. Repeatable.", rich_help_panel=METRICS, show_default=False)] = None,
    save_run: Annotated[str | None, typer.Option(help="Write the scored ranking as a TREC run file.", rich_help_panel=OUTPUT, show_default=False)] = None,
    per_query: Annotated[str | None, typer.Option(help="Write per-query metrics as jsonl.", rich_help_panel=OUTPUT, show_default=False)] = None,
    plot: Annotated[str | None, typer.Option(help="With --dims: write a PNG of NDCG@10 against dimension.", rich_help_panel=OUTPUT, show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Score retrieval (and reranking): NDCG, MRR, Recall, Precision, MAP and accuracy at k, trec_eval-exact."""
    from mmst_cli.core.data.documents import RenderSettings
    from mmst_cli.core.retrieval.evaluation import EvaluateOptions, run_evaluation
    from mmst_cli.core.retrieval.reports import write_jsonl_atomically
    from mmst_cli.core.progress import progress_bars

    options = EvaluateOptions(
        model=model,
        data=data,
        split=split,
        data_config=data_config,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        media_root=media_root,
        skip_bad=skip_bad,
        allow_remote_media=allow_remote_media,
        allow_outside_root=allow_outside_root,
        strict=strict,
        run=run,
        qrels=qrels,
        ks=tuple(k or (10,)),
        dims=_dims(dims),
        reranker=reranker,
        rerank_top_k=rerank_top_k,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
        fail_under=tuple(fail_under or ()),
        pdf=RenderSettings(dpi=pdf_dpi, password=pdf_password),
        pdf_text=pdf_text,
    )
    options.validate()
    if plot and not options.dims:
        raise MmstError("--plot draws a Matryoshka sweep: add --dims")
    from mmst_cli.core.outputs import ensure_writable_file

    for flag, value in (("--save-run", save_run), ("--per-query", per_query), ("--plot", plot)):
        if value:
            ensure_writable_file(Path(value), flag)  # before the model loads
    with progress_bars(console) as track:
        report, main = run_evaluation(options, track=track)
    if save_run:
        from mmst_cli.core.retrieval.metrics import write_trec_run

        write_trec_run(main.run, Path(save_run))
    if per_query:
        write_jsonl_atomically(Path(per_query), ({"query_id": qid, **values} for qid, values in main.per_query.items()))
    if plot:
        from mmst_cli.core.retrieval.reports import plot_matryoshka_sweep

        plot_matryoshka_sweep(report["dims"], Path(plot), metric=f"ndcg@{options.ks[0]}")
    for warning in report.get("warnings", []):
        console.print(f"warning: {warning}", markup=False, highlight=False)
    emit(report, as_json=json_output, render=render_report)
    if not report["passed"]:
        raise typer.Exit(EXIT_FAILURE)


def _dims(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(item) for item in value.split(",") if item.strip())
    except ValueError as error:
        raise MmstError(f"--dims takes comma-separated whole numbers, got {value!r}") from error


def render_report(console: Console, report: dict[str, Any]) -> None:
    """Metrics per stage (and per dimension) as tables on stderr, then the --fail-under verdicts."""
    source = report.get("model") or report.get("run")
    data = report.get("data") or report.get("qrels")
    console.print(f"{source} on {data}", markup=False, highlight=False)
    if "queries" in report:
        counts = report["counts"]
        console.print(
            f"{report['queries']} queries, {report['documents']} documents; "
            f"{counts.get('evaluated', '?')} queries scored", markup=False, highlight=False,
        )  # fmt: skip
    rows = [(stage["name"], stage["metrics"]) for stage in report["stages"]]
    if "dims" in report:
        rows = [(f"dim {entry['dim']}", entry["metrics"]) for entry in report["dims"]] + rows[1:]
    metrics = list(rows[0][1])
    table = Table(title="retrieval", title_justify="left")
    table.add_column("stage")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, values in rows:
        table.add_row(name, *(f"{values[metric]:.4f}" for metric in metrics))
    console.print(table)
    for metric, check in report["fail_under"].items():
        verdict = "[green]pass[/green]" if check["passed"] else "[red]FAIL[/red]"
        console.print(f"{verdict} {metric} {check['value']:.4f} (threshold {check['threshold']})")
