"""``mmst search --report``: the results page of a search (:mod:`mmst_cli.core.report.page`).

A search has no judgements, so every query is shown in the order given, with its top k hits, their
scores and no relevance marks. A hit shows what the index stored: its text, or its media file (a
corpus file, or a file of the index's ``media/`` folder for media a dataset held in its cells).
The index never needs its corpus again, so a corpus file that is gone since indexing shows a
one-line note in its place instead of stopping the page.

Media are read only inside the folder the index records for them: the deepest folder that holds
the index itself, every corpus it records and the media queries given (``--allow-outside-root``
lifts this), so a ``documents.jsonl`` edited to name other files cannot put them on the page.
"""

from __future__ import annotations

from pathlib import Path

from mmst_cli.core.data.media import string_modality
from mmst_cli.core.index.layout import IndexFolder
from mmst_cli.core.index.searching import SearchOutcome
from mmst_cli.core.report.page import ReportHit, ReportQuery, ResultsPage, write_results_page
from mmst_cli.core.report.thumbnails import MediaAccess


def write_search_page(
    path: Path, outcome: SearchOutcome, index: IndexFolder, *, k: int, max_queries: int, allow_outside_root: bool = False
) -> dict[str, int]:
    """Write the results page of ``mmst search`` (see the module docstring).

    Args:
        path: The HTML file to write.
        outcome: What :func:`mmst_cli.core.index.searching.search_index` returned.
        index: The index searched: its settings are shown and its recorded corpora bound the media read.
        k: Documents returned per query, for the page's settings.
        max_queries: Most queries drawn (the first ones, in the order given).
        allow_outside_root: Read media wherever they are; default off (see the module docstring).

    Returns:
        What :func:`~mmst_cli.core.report.page.write_results_page` returns.
    """
    queries = [
        ReportQuery(result.query_id, result.query, hits=[
            ReportHit(str(hit.doc_id), hit.score, hit.text if hit.text is not None else hit.ref, rank=rank)
            for rank, hit in enumerate(result.hits, start=1)
        ])
        for result in outcome.results
    ]  # fmt: skip
    settings = {
        "index": str(index.path),
        "model": index.settings["model"],
        "documents": index.count,
        "queries": len(queries),
        "shown per query": f"top {k}, queries in the order given (no judgements, so no relevance marks)",
    }
    page = ResultsPage(title=f"mmst search: {index.path.name}", queries=queries, settings=settings, max_queries=max_queries)
    confine_to = None if allow_outside_root else media_folder(index, [result.query for result in outcome.results])
    return write_results_page(path, page, MediaAccess(Path.cwd(), confine_to))


def media_folder(index: IndexFolder, query_labels: list[str]) -> Path:
    """The deepest folder holding the index, every corpus it records and every media query."""
    queries = [Path(label.rpartition("#page=")[0] or label).expanduser().resolve().parent
               for label in query_labels if string_modality(label)[1] in ("file", "pdf")]  # fmt: skip
    return index.media_folder(queries)
