"""The results page: one self-contained HTML file that shows what a model retrieves, worst first.

The entry point is :func:`write_results_page` with a :class:`ResultsPage`: a title, settings, metric
tables, an optional Matryoshka sweep and a list of :class:`ReportQuery`, each with its
:class:`ReportHit` list. ``mmst evaluate --report`` fills it from an evaluation
(:mod:`mmst_cli.core.report.evaluation_page`).

Contract for other callers (``mmst search --report``):

- ``ReportQuery.content`` and ``ReportHit.content`` are what to show, as mmst holds inputs: a text,
  a media reference (an image, audio or video path, or a PDF page ``report.pdf#page=3``), resolved
  against :attr:`MediaAccess.root` and refused outside :attr:`MediaAccess.confine_to` by the same
  gate as every media read (:func:`mmst_cli.core.data.media.confinement_problem`), or a loaded value
  (PIL image, ``{"array", "sampling_rate"}`` audio, :class:`~mmst_cli.core.data.documents.PdfPage`,
  ``{"video": frames}``, a multimodal dict); ``None`` shows the id alone.
- ``ReportQuery.metric`` is the query's value of :attr:`ResultsPage.metric_name`, or ``None`` when the
  query has no judgements. Queries with a metric come first, worst first (ties keep the given
  order); queries without one follow in the order given. A search without qrels therefore passes
  ``metric=None`` and ``relevant=None`` everywhere: no relevance marks, the queries as given.
- ``ReportHit.relevant`` is ``True`` / ``False`` from judgements, ``None`` when unknown; ``rank`` is the
  1-based rank in the whole ranking (``None`` for a relevant document not retrieved at all).
  ``ReportQuery.missed`` lists relevant documents outside the shown hits.
- At most :attr:`ResultsPage.max_queries` queries are drawn; the page counts the rest, with
  ``total_queries`` when the caller passed only a selection (see :func:`worst_first`).

Every string from the data is escaped; the page carries a Content-Security-Policy that allows no
script and no network at all, so even a mistake in escaping could not run code or fetch anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmst_cli.core.outputs import atomic_path
from mmst_cli.core.report.chart import sweep_chart
from mmst_cli.core.report.thumbnails import MediaAccess, escaped, note, preview

#: Queries a page shows by default (``--report-queries``).
DEFAULT_REPORT_QUERIES = 50

#: Relevant documents missed by the shown hits that are listed per query.
MISSED_SHOWN = 10

#: No script, no network, no external style: only inline CSS and data-URI images and audio.
_POLICY = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class ReportHit:
    """One document shown for a query (see the module docstring for each field's contract)."""

    doc_id: str
    score: float | None
    content: Any = None
    relevant: bool | None = None
    rank: int | None = None


@dataclass(frozen=True)
class ReportQuery:
    """One query with its top hits and the relevant documents they missed."""

    query_id: str
    content: Any
    hits: Sequence[ReportHit] = ()
    metric: float | None = None
    missed: Sequence[ReportHit] = ()


@dataclass(frozen=True)
class ResultsPage:
    """Everything the page shows.

    Attributes:
        title: The page's heading and ``<title>``.
        queries: The queries, in any order (see :func:`worst_first`).
        settings: Label -> value, shown as a list under the title (model, data, k, ...).
        metric_tables: ``(stage name, {"ndcg@10": value, ...})`` per table, metrics as rows.
        metric_name: The per-query metric the queries are ordered by, e.g. ``ndcg@10``; ``None``
            when there are no judgements.
        sweep: ``(dimension, value of metric_name)`` per swept dimension; empty for no chart.
        max_queries: Most queries drawn; default :data:`DEFAULT_REPORT_QUERIES`.
        total_queries: How many queries there were when ``queries`` is a selection of them;
            ``None`` (default) for ``len(queries)``.
    """

    title: str
    queries: Sequence[ReportQuery]
    settings: Mapping[str, Any] = field(default_factory=dict)
    metric_tables: Sequence[tuple[str, Mapping[str, float]]] = ()
    metric_name: str | None = None
    sweep: Sequence[tuple[int, float]] = ()
    max_queries: int = DEFAULT_REPORT_QUERIES
    total_queries: int | None = None


def worst_first(queries: Sequence[ReportQuery]) -> list[ReportQuery]:
    """Queries with a metric, lowest first (a stable sort: ties keep their order), then those without."""
    return sorted(queries, key=lambda query: (query.metric is None, query.metric or 0.0))


def write_results_page(path: Path, page: ResultsPage, access: MediaAccess) -> dict[str, int]:
    """Write ``page`` as one HTML file at ``path``, atomically.

    Args:
        path: The file to write.
        page: What to show.
        access: Where media references resolve and the folder they must stay in.

    Returns:
        ``queries_shown`` and ``queries_not_shown``.
    """
    shown = worst_first(page.queries)[: page.max_queries]
    total = page.total_queries if page.total_queries is not None else len(page.queries)
    body = [f"<h1>{escaped(page.title)}</h1>", _settings(page.settings)]
    if page.metric_tables:
        body.append('<div class="tables">' + "".join(_metric_table(name, metrics) for name, metrics in page.metric_tables) + "</div>")
    if page.sweep and page.metric_name:
        body.append(f'<figure>{sweep_chart(page.sweep, page.metric_name)}</figure>')
    order = f", worst {escaped(page.metric_name)} first" if page.metric_name else ""
    rest = f"; {total - len(shown)} more not shown (raise --report-queries to see them)" if total > len(shown) else ""
    body.append(f'<p class="summary">{len(shown)} of {total} queries{order}{rest}.</p>')
    previews: dict[str, str] = {}  # a document met under several queries is encoded once
    body += [_query_section(query, page.metric_name, access, previews) for query in shown]
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escaped(page.title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    with atomic_path(path) as temporary:
        temporary.write_text(document, encoding="utf8")
    return {"queries_shown": len(shown), "queries_not_shown": total - len(shown)}


def results_page_line(path: str, drawn: dict[str, int]) -> str:
    """The one line a command prints after writing a page: where it is and how many queries it shows."""
    rest = f", {drawn['queries_not_shown']} more not shown" if drawn["queries_not_shown"] else ""
    return f"results page: {path} ({drawn['queries_shown']} queries drawn{rest})"


def _settings(settings: Mapping[str, Any]) -> str:
    rows = "".join(f"<dt>{escaped(label)}</dt><dd>{escaped(value)}</dd>" for label, value in settings.items() if value is not None)
    return f'<dl class="settings">{rows}</dl>' if rows else ""


def _metric_table(name: str, metrics: Mapping[str, float]) -> str:
    """Metrics as rows, cut-offs as columns, as ``mmst evaluate`` prints them."""
    names = list(dict.fromkeys(key.split("@")[0] for key in metrics))
    cutoffs = list(dict.fromkeys(key.split("@")[1] for key in metrics))
    head = "".join(f"<th>@{escaped(k)}</th>" for k in cutoffs)
    rows = "".join(
        f"<tr><th>{escaped(metric)}</th>"
        + "".join(f"<td>{metrics[f'{metric}@{k}']:.4f}</td>" if f"{metric}@{k}" in metrics else "<td></td>" for k in cutoffs)
        + "</tr>"
        for metric in names
    )
    return f'<table class="metrics"><caption>{escaped(name)}</caption><tr><th>metric</th>{head}</tr>{rows}</table>'


def _query_section(query: ReportQuery, metric_name: str | None, access: MediaAccess, previews: dict[str, str]) -> str:
    value = "" if query.metric is None or metric_name is None else f'<span class="metric">{escaped(metric_name)} {query.metric:.4f}</span>'
    hits = "".join(_hit(hit, access, previews) for hit in query.hits) or '<li class="empty">nothing retrieved</li>'
    parts = [
        f'<section class="query" data-query-id="{escaped(query.query_id)}">',
        f'<h2><span class="qid">{escaped(query.query_id)}</span> {value}</h2>',
        f'<div class="query-content">{preview(query.content, access)}</div>',
        f'<ol class="hits">{hits}</ol>',
    ]
    if query.missed:
        listed = "".join(_hit(hit, access, previews) for hit in query.missed[:MISSED_SHOWN])
        more = len(query.missed) - MISSED_SHOWN
        parts.append(
            f'<h3>Relevant documents not in the top {len(query.hits)}</h3><ol class="missed">{listed}</ol>'
            + (f"<p>{more} more.</p>" if more > 0 else "")
        )
    parts.append("</section>")
    return "\n".join(parts)


def _hit(hit: ReportHit, access: MediaAccess, previews: dict[str, str]) -> str:
    if hit.doc_id not in previews:
        previews[hit.doc_id] = preview(hit.content, access)
    mark = {True: ("relevant", "✓ relevant"), False: ("not-relevant", "not relevant"), None: ("unjudged", "")}[hit.relevant]
    rank = f"#{hit.rank}" if hit.rank is not None else "not retrieved"
    score = f" · {hit.score:.4f}" if hit.score is not None else ""
    label = f'<span class="mark">{mark[1]}</span>' if mark[1] else ""
    return (
        f'<li class="hit {mark[0]}" data-doc-id="{escaped(hit.doc_id)}">'
        f'<div class="media">{previews[hit.doc_id] or note("(no preview)")}</div>'
        f'<div class="caption"><span class="rank">{rank}</span>{score} {label}<br>'
        f'<span class="doc-id">{escaped(hit.doc_id)}</span></div></li>'
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.1em;margin:.2em 0}h3{font-size:.95em;color:#a33}
dl.settings{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{font-weight:600}dd{margin:0}
div.tables{display:flex;flex-wrap:wrap;gap:0 1.5em}table.metrics{border-collapse:collapse;margin:.8em 0}table.metrics caption{text-align:left;font-weight:600}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:.15em .6em;text-align:right}
section.query{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em;margin:1em 0}
.metric{font-weight:400;color:#555;margin-left:.8em}.qid{font-family:monospace}
.query-content{margin:.3em 0 .6em}
ol.hits,ol.missed{list-style:none;display:flex;flex-wrap:wrap;gap:.6em;padding:0;margin:0}
li.hit{width:150px;border:3px solid #ddd;border-radius:6px;padding:4px;background:#fff;overflow:hidden}
li.hit.relevant{border-color:#2a9d4b}ol.missed li.hit{border-style:dashed;border-color:#c44}
.mark{color:#2a9d4b;font-weight:600}.not-relevant .mark{color:#888;font-weight:400}
img.thumb{max-width:128px;max-height:128px;display:block;margin:auto}
.query-content img.thumb{max-width:192px;max-height:192px;margin:0}
audio.player{width:140px}.frames{display:flex;gap:2px}.frames img.thumb{max-width:46px}
.text{display:block;white-space:pre-wrap;overflow-wrap:anywhere;max-height:9em;overflow:hidden}
.note{color:#a60;font-style:italic;overflow-wrap:anywhere}.caption{font-size:.85em;color:#444;margin-top:.3em}
.doc-id{font-family:monospace;overflow-wrap:anywhere}
svg.sweep text{font:12px system-ui,sans-serif;fill:#333}svg.sweep .title{font-weight:600}
svg.sweep .axis{stroke:#333}svg.sweep .grid{stroke:#e4e4e4}
svg.sweep .line{fill:none;stroke:#2364aa;stroke-width:2}svg.sweep .point{fill:#2364aa}
"""
