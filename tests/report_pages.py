"""Results pages in tests: colour-page data to evaluate, and reading a page back (queries, hits, thumbnails)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

COLOURS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "purple": (128, 0, 128), "orange": (255, 140, 0)}  # fmt: skip
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def write_colour_pages(folder: Path) -> Path:
    """A ViDoRe-style folder: one flat-colour page image per colour, a query naming it, one relevant
    page each; the first query is a hostile string and the ids are hostile too."""
    from PIL import Image

    (folder / "pages").mkdir(parents=True)
    corpus, queries, qrels = [], [], []
    for index, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (90, 60), rgb).save(folder / "pages" / f"{index}.png")
        doc_id = f"p{index}" if index else 'p0"<b>'
        corpus.append({"corpus-id": doc_id, "image": f"pages/{index}.png"})
        queries.append({"query-id": f"q{index}", "query": HOSTILE if index == 0 else f"a {name} page"})
        qrels.append({"query-id": f"q{index}", "corpus-id": doc_id, "score": 1})
    for name, rows in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def colour_of(doc_id: str) -> tuple[int, int, int]:
    index = 0 if doc_id.startswith("p0") else int(doc_id[1:])
    return list(COLOURS.values())[index]


@dataclass
class PageHit:
    doc_id: str
    marks: set[str]
    missed: bool
    images: list[str] = field(default_factory=list)


@dataclass
class PageQuery:
    query_id: str
    hits: list[PageHit] = field(default_factory=list)
    text: str = ""


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.queries: list[PageQuery] = []
        self.tags: list[str] = []
        self._list = ""
        self._in_query_content = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        classes = set((attributes.get("class") or "").split())
        if tag == "section" and "query" in classes:
            self.queries.append(PageQuery(attributes["data-query-id"]))
        elif tag == "ol":
            self._list = attributes.get("class") or ""
        elif tag == "li" and "hit" in classes:
            self.queries[-1].hits.append(PageHit(attributes["data-doc-id"], classes - {"hit"}, self._list == "missed"))
        elif tag == "div":
            self._in_query_content = "query-content" in classes
        elif tag in ("img", "audio") and self.queries and self.queries[-1].hits and not self._in_query_content:
            self.queries[-1].hits[-1].images.append(attributes["src"])

    def handle_data(self, data):
        if self._in_query_content:
            self.queries[-1].text += data


def read_page(path: Path) -> tuple[str, _Reader]:
    """The page's HTML and what it holds (queries in page order, their hits, every tag seen)."""
    text = path.read_text(encoding="utf8")
    reader = _Reader()
    reader.feed(text)
    return text, reader


def data_uri_image(uri: str):
    """The PIL image a ``data:image/...;base64,`` URI holds."""
    from PIL import Image

    header, _, payload = uri.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    return Image.open(io.BytesIO(base64.b64decode(payload)))
