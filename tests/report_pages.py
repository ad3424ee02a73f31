"""Reading results pages back in tests: the queries, hits and thumbnails an HTML report holds."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


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
