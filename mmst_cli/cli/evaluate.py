"""``mmst evaluate``: retrieval scores you can trust and compare, equal to trec_eval's.

Examples:

    # The embedded default model on the embedded emoji evaluation pairs
    $ mmst evaluate

    # A finetuned model on a BEIR folder, chosen cut-offs, as JSON for jq
    $ mmst evaluate --model runs/x/model --data ./scifact --k 1,10 --k 100 --json | jq .main_score

    # With the prompts the model was trained with, 100 documents kept per query, as mteb results
    $ mmst evaluate --model runs/x/model --data ./scifact --query-prompt "query: " --depth 100 \\
        --mteb-results ./mteb-results --task-name SciFact

    # A ViDoRe-style Hub dataset, retrieve-then-rerank, per-query results to find the failures
    $ mmst evaluate --model ./embedder --data vidore/docvqa_test_subsampled_beir \\
        --reranker ./reranker --rerank-top-k 50 --per-query failures.jsonl

    # Matryoshka sweep with a plot; a CI gate that exits 1 below the threshold
    $ mmst evaluate --model ./m --data pairs.parquet --dims 768,512,256,64 --plot sweep.png
    $ mmst evaluate --model ./m --data pairs.parquet --fail-under ndcg@10=0.85

    # A folder of PDFs with queries.jsonl and qrels/test.tsv on page ids (report.pdf#page=3)
    $ mmst evaluate --model ./page-retriever --data ./reports

    # A multi-vector (ColBERT / ColPali-style) model by exact MaxSim; what pooling tokens by 2 costs
    $ mmst evaluate --model ./colbert --data ./scifact
    $ mmst evaluate --model ./colbert --data ./scifact --token-pool-factor 2
    $ mmst evaluate --model ./colbert --data ./scifact --dims 128,64,32 --plot sweep.png

    # The results page: worst queries first, their top 10 as thumbnails, relevant ones marked
    $ mmst evaluate --model ./m --data ./vidore-folder --report report.html

    # Score an existing ranking, no model (the mean is trec_eval -c's; or skip unjudgeable queries)
    $ mmst evaluate --run run.trec --qrels qrels.tsv
    $ mmst evaluate --run run.trec --qrels qrels.tsv --skip-queries-without-relevant
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
    EncodeBatchSizeOption,
    JsonOption,
    MediaRootOption,
    PdfDpiOption,
    PdfPasswordOption,
    PdfTextOption,
    ReportOption,
    ReportQueriesOption,
    SkipBadOption,
    TokenPoolFactorOption,
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
    model: Annotated[str | None, typer.Option(help="Embedding model folder or Hub id, or a train-embed run folder: its model, on the run's evaluation data unless --data is given. Default: the embedded default model.", rich_help_panel=MODEL, show_default=False)] = None,
    reranker: Annotated[str | None, typer.Option(help="Rerank each query's first-stage results with this reranker; both stages are reported.", rich_help_panel=MODEL, show_default=False)] = None,
    rerank_top_k: Annotated[int | None, typer.Option(help="How many first-stage results the reranker re-scores (at most --depth). Default: 100.", rich_help_panel=MODEL, show_default=False)] = None,
    depth: Annotated[int | None, typer.Option(help="Documents --model's search retrieves per query, scored and written by --save-run (at least the largest --k). Default: 1000.", rich_help_panel=MODEL, show_default=False)] = None,
    query_prompt: Annotated[str | None, typer.Option(help="Text put before every query, instead of the model's query prompt (\"\" for none).", rich_help_panel=MODEL, show_default=False)] = None,
    document_prompt: Annotated[str | None, typer.Option(help="Text put before every document, instead of the model's document prompt.", rich_help_panel=MODEL, show_default=False)] = None,
    query_prompt_name: Annotated[str | None, typer.Option(help="Use the model's prompt of this name for queries (see `mmst detect MODEL`).", rich_help_panel=MODEL, show_default=False)] = None,
    document_prompt_name: Annotated[str | None, typer.Option(help="Use the model's prompt of this name for documents.", rich_help_panel=MODEL, show_default=False)] = None,
    batch_size: EncodeBatchSizeOption = 32,
    token_pool_factor: TokenPoolFactorOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    data: Annotated[str | None, typer.Option(help="BEIR folder, corpus/queries/qrels dataset (Hub id or folder), or pair data. Default: the embedded emoji evaluation pairs.", rich_help_panel=DATA, show_default=False)] = None,
    split: Annotated[str | None, typer.Option(help="Split (BEIR qrels or dataset). Default: test for corpus/queries/qrels data, train for pairs.", rich_help_panel=DATA, show_default=False)] = None,
    data_config: Annotated[str | None, typer.Option(help="Hub configuration of pair data.", rich_help_panel=DATA, show_default=False)] = None,
    columns: Annotated[str | None, typer.Option(help="Pair data columns: query,positive[,negative...].", rich_help_panel=DATA, show_default=False)] = None,
    eval_of: Annotated[str | None, typer.Option(help="Score on the evaluation data of this train-embed run folder (its --eval-split rows, --eval-data or demo pairs), e.g. with the base --model.", rich_help_panel=DATA, show_default=False)] = None,
    media_root: MediaRootOption = None,
    skip_bad: SkipBadOption = False,
    allow_remote_media: AllowRemoteMediaOption = False,
    allow_outside_root: AllowOutsideRootOption = False,
    pdf_dpi: PdfDpiOption = DEFAULT_PDF_DPI,
    pdf_password: PdfPasswordOption = None,
    pdf_text: PdfTextOption = False,
    strict: Annotated[bool, typer.Option(help="Fail when qrels name queries or documents that do not exist (default: warn with counts).", rich_help_panel=DATA)] = False,
    run: Annotated[str | None, typer.Option(help="Score this TREC run file instead of a model (needs --qrels).", rich_help_panel=DATA, show_default=False)] = None,
    qrels: Annotated[str | None, typer.Option(help="Relevance judgements for --run: TREC qrels, BEIR tsv, or a BEIR / mteb folder (its qrels of --split).", rich_help_panel=DATA, show_default=False)] = None,
    k: Annotated[list[str] | None, typer.Option("--k", help="Metric cut-offs: repeat or comma-separate (--k 1,10 --k 100). Default: 1,3,5,10,100.", rich_help_panel=METRICS, show_default=False)] = None,
    main_metric: Annotated[str | None, typer.Option(help="The metric reported as main_score (and plotted by --plot). Default: ndcg@10.", rich_help_panel=METRICS, show_default=False)] = None,
    skip_queries_without_relevant: Annotated[bool, typer.Option("--skip-queries-without-relevant", help="Leave qrels queries without a relevant document out of the means (default: they score 0, as in trec_eval -c and mteb).", rich_help_panel=METRICS)] = False,
    dims: Annotated[str | None, typer.Option(help="Matryoshka sweep: comma-separated dimensions (of the embedding, or of each token vector of a multi-vector model), one result table each; one encoding.", rich_help_panel=METRICS, show_default=False)] = None,
    fail_under: Annotated[list[str] | None, typer.Option(help="METRIC=VALUE, e.g. ndcg@10=0.85: exit 1 when the metric is below. Repeatable.", rich_help_panel=METRICS, show_default=False)] = None,
    save_run: Annotated[str | None, typer.Option(help="Write the scored ranking (--depth documents per query) as a TREC run file.", rich_help_panel=OUTPUT, show_default=False)] = None,
    per_query: Annotated[str | None, typer.Option(help="Write per-query metrics as jsonl.", rich_help_panel=OUTPUT, show_default=False)] = None,
    plot: Annotated[str | None, typer.Option(help="With --dims: write a PNG of the main metric against dimension.", rich_help_panel=OUTPUT, show_default=False)] = None,
    report: ReportOption = None,
    report_queries: ReportQueriesOption = 50,
    mteb_results: Annotated[str | None, typer.Option(help="Write the scores as mteb result files below this folder (results/MODEL/REVISION/TASK.json).", rich_help_panel=OUTPUT, show_default=False)] = None,
    model_name: Annotated[str | None, typer.Option(help="Model name in --mteb-results. Default: the Hub id, or the model (or run) folder's name.", rich_help_panel=OUTPUT, show_default=False)] = None,
    task_name: Annotated[str | None, typer.Option(help="Task name in --mteb-results. Default: the name of --data.", rich_help_panel=OUTPUT, show_default=False)] = None,
    task_languages: Annotated[str, typer.Option(help="Languages of the data in --mteb-results, comma-separated ISO codes.", rich_help_panel=OUTPUT)] = "eng-Latn",
    json_output: JsonOption = False,
) -> None:
    """Score retrieval (and reranking): NDCG, MRR, Recall, Precision, MAP and accuracy at k, trec_eval-exact."""
    from mmst_cli.core.data.documents import RenderSettings
    from mmst_cli.core.retrieval.evaluation import DEFAULT_CUTOFFS, EvaluateOptions, run_evaluation
    from mmst_cli.core.retrieval.reports import write_jsonl_atomically
    from mmst_cli.core.progress import progress_bars
    from mmst_cli.core.retrieval.run_eval_data import resolve_run_folder

    model, eval_of = resolve_run_folder(model, eval_of, data)
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
        ks=_whole_numbers("--k", k, sort=True) or DEFAULT_CUTOFFS,
        main_metric=main_metric,
        skip_queries_without_relevant=skip_queries_without_relevant,
        dims=_whole_numbers("--dims", [dims] if dims else []),
        reranker=reranker,
        rerank_top_k=rerank_top_k,
        depth=depth,
        query_prompt=query_prompt,
        document_prompt=document_prompt,
        query_prompt_name=query_prompt_name,
        document_prompt_name=document_prompt_name,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
        fail_under=tuple(fail_under or ()),
        mteb_results=mteb_results,
        model_name=model_name,
        task_name=task_name,
        task_languages=tuple(item.strip() for item in task_languages.split(",") if item.strip()),
        pdf=RenderSettings(dpi=pdf_dpi, password=pdf_password),
        pdf_text=pdf_text,
        eval_of=eval_of,
        token_pool_factor=token_pool_factor,
    )
    options.validate()
    if plot and not options.dims:
        raise MmstError("--plot draws a Matryoshka sweep: add --dims")
    if report_queries <= 0:
        raise MmstError(f"--report-queries must be positive, got {report_queries}")
    from mmst_cli.core.outputs import ensure_writable_file, ensure_writable_folder

    if mteb_results:
        ensure_writable_folder(Path(mteb_results).expanduser(), "--mteb-results")
    for flag, value in (("--save-run", save_run), ("--per-query", per_query), ("--plot", plot), ("--report", report)):
        if value:
            ensure_writable_file(Path(value), flag)  # before the model loads
    with progress_bars(console) as track:
        results, main, task = run_evaluation(options, track=track)
    if save_run:
        from mmst_cli.core.retrieval.metrics import write_trec_run

        write_trec_run(main.run, Path(save_run))
    if per_query:
        write_jsonl_atomically(Path(per_query), ({"query_id": qid, **values} for qid, values in main.per_query.items()))
    if plot:
        from mmst_cli.core.retrieval.reports import plot_matryoshka_sweep

        plot_matryoshka_sweep(results["dims"], Path(plot), metric=results["main_metric"])
    if report:
        from mmst_cli.core.report.evaluation_page import write_evaluation_page
        from mmst_cli.core.report.page import results_page_line

        drawn = write_evaluation_page(Path(report), results, main, task, options, max_queries=report_queries)
        results["results_page"] = {"path": report, **drawn}
        console.print(results_page_line(report, drawn), markup=False, highlight=False)
    for warning in results.get("warnings", []):
        console.print(f"warning: {warning}", markup=False, highlight=False)
    emit(results, as_json=json_output, render=render_report)
    if not results["passed"]:
        raise typer.Exit(EXIT_FAILURE)


def _whole_numbers(flag: str, values: list[str] | None, *, sort: bool = False) -> tuple[int, ...]:
    """Whole numbers from repeated and comma-separated option values (``["1,10", "100"]``)."""
    items = [item.strip() for value in values or [] for item in value.split(",") if item.strip()]
    try:
        numbers = tuple(int(item) for item in items)
    except ValueError:
        raise MmstError(f"{flag} takes whole numbers, repeated or comma-separated (e.g. {flag} 1,10), got {', '.join(values or [])!r}") from None
    return tuple(sorted(set(numbers))) if sort else numbers


#: Characters a table needs per cut-off column: "0.1234" plus padding and a rule.
_CELL_WIDTH = 9


def render_report(console: Console, report: dict[str, Any]) -> None:
    """Metrics per stage (and per dimension) as tables on stderr, then the --fail-under verdicts.

    Each table has the metrics as rows and the cut-offs as columns; when the cut-offs do not fit
    the console's width, they continue in a second table, so no cell is ever cut.
    """
    source = report.get("model") or report.get("run")
    data = report.get("data") or report.get("qrels")
    console.print(f"{source} on {data}", markup=False, highlight=False)
    if "queries" in report:
        console.print(f"{report['queries']} queries, {report['documents']} documents", markup=False, highlight=False)
    console.print(_counted(report["counts"], report["queries_without_relevant"]), markup=False, highlight=False)
    if "token_vectors" in report:
        tokens = report["token_vectors"]
        console.print(
            f"{tokens['document_tokens']} document token vectors ({tokens['tokens_per_document']:.1f} per document)",
            markup=False, highlight=False,
        )  # fmt: skip
    from mmst_cli.core.retrieval.reports import stage_metrics

    for name, metrics in stage_metrics(report):
        for table in _metric_tables(name, metrics, console.width):
            console.print(table)
    console.print(f"main score: {report['main_metric']} {report['main_score']:.4f}", markup=False, highlight=False)
    for metric, check in report["fail_under"].items():
        verdict = "[green]pass[/green]" if check["passed"] else "[red]FAIL[/red]"
        console.print(f"{verdict} {metric} {check['value']:.4f} (threshold {check['threshold']})")


def _counted(counts: dict[str, int], without_relevant: str) -> str:
    """What the means are over, e.g. ``3 queries scored (1 without a relevant document, scored 0; ...)``."""
    notes = [
        f"{counts[key]} {label}"
        for key, label in (
            ("without_relevant", f"without a relevant document, {without_relevant}"),
            ("missing_from_run", "missing from the run, scored 0"),
            ("ignored_not_in_qrels", "in the run but not the qrels, ignored"),
        )
        if counts.get(key)
    ]
    return f"{counts.get('evaluated', 0)} queries scored" + (f" ({'; '.join(notes)})" if notes else "")


def _metric_tables(title: str, metrics: dict[str, float], width: int) -> list[Table]:
    """Tables of ``metric@k`` values, metrics as rows and as many cut-offs per table as fit."""
    names = list(dict.fromkeys(key.split("@")[0] for key in metrics))
    cutoffs = list(dict.fromkeys(key.split("@")[1] for key in metrics))
    label_width = max(map(len, names)) + 4  # padding, rules and the table's left edge
    per_table = max(1, (width - label_width) // max(_CELL_WIDTH, max(len(k) for k in cutoffs) + 4))
    tables = []
    for start in range(0, len(cutoffs), per_table):
        table = Table(title=title if start == 0 else None, title_justify="left")
        table.add_column("metric", no_wrap=True)
        chunk = cutoffs[start : start + per_table]
        for k in chunk:
            table.add_column(f"@{k}", justify="right", no_wrap=True)
        for name in names:
            table.add_row(name, *(f"{metrics[f'{name}@{k}']:.4f}" for k in chunk))
        tables.append(table)
    return tables
