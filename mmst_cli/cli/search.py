"""``mmst search``: the top documents of an ``mmst index`` folder for text, image, audio or page queries.

Examples:

    # A caption: a table of the 10 best documents on stderr
    $ mmst search photos.index "a red dress"

    # Query by example: an image, an audio clip or a PDF page
    $ mmst search photos.index -i query.jpg -k 5
    $ mmst search pages.index -i report.pdf#page=3

    # A queries file (jsonl/csv/parquet with an id column, id<TAB>text tsv, BEIR folder) as a TREC run
    $ mmst search docs.index --queries queries.jsonl -k 100 --trec run.trec
    $ mmst evaluate --run run.trec --qrels qrels.tsv

    # A BEIR folder indexed whole (mmst index ./scifact): its queries, scored against its qrels
    $ mmst search scifact.index --queries ./scifact -k 100 --trec run.trec
    $ mmst evaluate --run run.trec --qrels ./scifact

    # An HTML page of the first 20 queries' hits as thumbnails (opens offline, no script)
    $ mmst search photos.index --queries queries.jsonl --report results.html --report-queries 20

    # JSON lines for other tools; rerank the top 50 with a cross-encoder; show where the time goes
    $ mmst search docs.index "how do magnets work" --reranker ./my-reranker --json --timing | jq .results[0]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmst_cli.cli.options import (
    MODEL_PANEL,
    AllowOutsideRootOption,
    ReportOption,
    ReportQueriesOption,
    TrustRemoteCodeOption,
)
from mmst_cli.cli.output import console

QUERIES = "Queries"
SEARCH = "Search"
OUTPUT = "Output"

#: Characters of a text document shown in the table.
SNIPPET_CHARS = 90


def _shown_reference(ref: str) -> str:
    """A media reference as the table shows it: relative to the current folder when it lies below it
    (shorter, and what a user would type); ``--json`` keeps the absolute reference."""
    try:
        return str(Path(ref).relative_to(Path.cwd()))
    except ValueError:
        return ref


def _snippet(hit) -> str:
    if hit.text is None:
        return _shown_reference(hit.ref) if hit.ref else f"({hit.modality} held in the corpus's dataset)"
    text = " ".join(hit.text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _print_tables(results) -> None:
    from rich.table import Table

    for result in results:
        table = Table(title=f"{result.query_id}: {result.query}", title_justify="left", expand=False)
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("id", overflow="fold")
        table.add_column("document", overflow="fold")
        for rank, hit in enumerate(result.hits, start=1):
            table.add_row(str(rank), f"{hit.score:.4f}", str(hit.doc_id), _snippet(hit))
        console.print(table)


def _timing_line(timing: dict[str, float]) -> str:
    per_query = lambda seconds: 1000 * seconds / max(1, timing["queries"])  # noqa: E731
    rerank = f", rerank {per_query(timing['rerank']):.1f} ms" if timing["rerank"] else ""
    return (
        f"timing: {timing['queries']} quer{'y' if timing['queries'] == 1 else 'ies'}; model, index and documents "
        f"loaded (and warmed up) in {timing['load']:.2f} s; per query: encode {per_query(timing['encode']):.1f} ms, "
        f"search {per_query(timing['search']):.2f} ms{rerank}"
    )


def search(
    index: Annotated[str, typer.Argument(help="An index folder written by mmst index.", show_default=False)],
    queries: Annotated[list[str] | None, typer.Argument(help="Text queries (ids q1, q2, ...).", show_default=False)] = None,
    media: Annotated[list[str] | None, typer.Option("--input", "-i", help="A media query: an image, audio file or PDF page (doc.pdf#page=2); repeat for several.", rich_help_panel=QUERIES, show_default=False)] = None,
    queries_file: Annotated[str | None, typer.Option("--queries", help="A queries file: jsonl/csv/parquet (ids from _id, query-id, query_id, qid or id; the query column, else as mmst encode picks), id<TAB>text tsv, txt (one per line) or a BEIR / mteb folder.", rich_help_panel=QUERIES, show_default=False)] = None,
    allow_outside_root: AllowOutsideRootOption = False,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Documents returned per query.", rich_help_panel=SEARCH)] = 10,
    reranker: Annotated[str | None, typer.Option(help="A reranker (CrossEncoder) folder or Hub id that re-scores each query's top --rerank-top-k documents.", rich_help_panel=SEARCH, show_default=False)] = None,
    rerank_top_k: Annotated[int | None, typer.Option(help="First-stage documents the reranker re-scores per query, at least -k (as in mmst evaluate). Default: 50, or -k when larger.", rich_help_panel=SEARCH, show_default=False)] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF indexes: lists visited per query (all of them: exact). Default: the index's.", rich_help_panel=SEARCH, show_default=False)] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW indexes: candidates kept while searching. Default: the index's (64).", rich_help_panel=SEARCH, show_default=False)] = None,
    rescore: Annotated[int | None, typer.Option(help="Quantised indexes: fetch N x k candidates and re-score them with the float vectors; 1 for none. Default: 4 for binary, 1 otherwise.", rich_help_panel=SEARCH, show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="The index's model, if it has moved. Default: the model the index records.", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Queries per forward pass.", rich_help_panel=MODEL_PANEL)] = 32,
    device: Annotated[str | None, typer.Option(help="cuda:0, cpu, ... Default: chosen by Sentence Transformers.", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON line per query on stdout instead of tables on stderr.", rich_help_panel=OUTPUT)] = False,
    trec: Annotated[str | None, typer.Option(help="Also write the results as a TREC run file.", rich_help_panel=OUTPUT, show_default=False)] = None,
    timing: Annotated[bool, typer.Option(help="Print the query latency, encoding and search per query (also in --json lines), after one untimed warm-up query.", rich_help_panel=OUTPUT)] = False,
    report: ReportOption = None,
    report_queries: ReportQueriesOption = 50,
) -> None:
    """Search an index folder with text, image, audio or PDF page queries; print the top k."""
    import json
    import sys
    from pathlib import Path

    from mmst_cli.core.errors import MmstError
    from mmst_cli.core.index.layout import open_index
    from mmst_cli.core.outputs import ensure_writable_file

    if k <= 0:
        raise MmstError(f"-k must be a positive whole number, got {k}")
    if report_queries <= 0:
        raise MmstError(f"--report-queries must be positive, got {report_queries}")
    for flag, value in (("--trec", trec), ("--report", report)):
        if value is not None:
            ensure_writable_file(Path(value).expanduser(), flag)
    opened = open_index(index)

    from mmst_cli.core.index.searching import as_run, read_queries, search_index

    asked = read_queries(list(queries or []), list(media or []), queries_file, allow_outside_root=allow_outside_root)
    for note in asked.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    outcome = search_index(
        opened, asked, k=k, model=model, reranker=reranker, rerank_top_k=rerank_top_k, nprobe=nprobe, ef_search=ef_search,
        rescore=rescore, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code, warm_up=timing,
    )  # fmt: skip
    if trec is not None:
        from mmst_cli.core.retrieval.metrics import write_trec_run

        write_trec_run(as_run(outcome.results), Path(trec).expanduser())
    if report is not None:
        from mmst_cli.core.report.page import results_page_line
        from mmst_cli.core.report.search_page import write_search_page

        drawn = write_search_page(Path(report).expanduser(), outcome, opened, k=k, max_queries=report_queries,
                                  allow_outside_root=allow_outside_root)  # fmt: skip
    if json_output:
        for result in outcome.results:
            line = {
                "query_id": result.query_id, "query": result.query,
                "results": [
                    {"rank": rank, "id": hit.doc_id, "score": hit.score, "modality": hit.modality, "ref": hit.ref, "text": hit.text}
                    for rank, hit in enumerate(result.hits, start=1)
                ],
            }  # fmt: skip
            if timing:
                line["timing"] = outcome.timing
            if report is not None:
                line["results_page"] = report
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        _print_tables(outcome.results)
    if timing:
        console.print(_timing_line(outcome.timing), markup=False, highlight=False)
    if report is not None:
        console.print(results_page_line(report, drawn), markup=False, highlight=False)
