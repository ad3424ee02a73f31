"""PDF pages as media: page references, page lists, rendering and text layers (pypdfium2).

A reference names a page of a PDF file, 1-based as PDF viewers count: ``report.pdf#page=3``.
Where a PDF expands into its pages (an ``mmst encode`` input, a corpus of PDFs), ``#page=2-5``
names a range and a bare ``report.pdf`` every page; the ids are always one page each.

A page is rendered when it is needed, at ``dpi`` (default 144) and within a pixel budget when one
is given, aspect ratio kept. Its text layer is the text PDFium extracts (empty for scanned pages).

PDFium is not thread-safe, so every call into it holds one lock; ctypes lets other threads run
during each call, so a page renders while the model runs on the previous batch. Documents stay
open in a small cache, so rendering page after page of one file parses it once.

This module reads files but never decides which files may be read: callers pass every file through
:func:`mmst_cli.core.data.media.confinement_problem`, the one gate, before it comes here.
"""

from __future__ import annotations

import atexit
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from mmst_cli.core.errors import MmstError

PDF_EXTENSIONS = (".pdf",)

#: Rendering resolution when none is asked for: 1224 x 1584 px for a Letter page, sharp enough for 10 pt text.
DEFAULT_PDF_DPI = 144

#: Pages larger than this at the asked resolution are refused as a "bomb", whatever the pixel
#: budget: Pillow's own decompression-bomb limit (89 megapixels), 2.6x a Letter page at 600 dpi.
MAX_PAGE_PIXELS = 89_478_485

_POINTS_PER_INCH = 72
_REFERENCE = re.compile(r"^(?P<file>.+\.pdf)(?:#page=(?P<pages>.*))?$", re.IGNORECASE | re.DOTALL)
_PAGES = re.compile(r"^(?P<first>\d+)(?:-(?P<last>\d+))?$")
_OPEN_DOCUMENTS = 8

_lock = threading.RLock()
_documents: OrderedDict[tuple[str, str | None], object] = OrderedDict()


class PdfProblem(ValueError):
    """Why a PDF file, a page or a reference cannot be used: one line, without the file name."""


@dataclass(frozen=True)
class RenderSettings:
    """How pages become images.

    Attributes:
        dpi: Resolution (``--pdf-dpi``); default :data:`DEFAULT_PDF_DPI`.
        max_pixels: Pixel budget per page (``--max-pixels``): larger pages are rendered smaller,
            aspect kept; ``None`` (default) for none.
        password: Password of encrypted PDFs (``--pdf-password``); ``None`` (default) for none.
    """

    dpi: float = DEFAULT_PDF_DPI
    max_pixels: int | None = None
    password: str | None = field(default=None, repr=False)  # never in messages or manifests

    def __post_init__(self) -> None:
        if not self.dpi > 0:
            raise MmstError(f"--pdf-dpi must be a positive number, got {self.dpi:g}")


@dataclass(frozen=True)
class PageReference:
    """A parsed reference: a PDF file and which of its pages.

    Attributes:
        file: The file name as written (relative to its folder, or absolute).
        first: First page, 1-based; ``None`` for every page.
        last: Last page of a range (inclusive); ``None`` for one page or every page.
    """

    file: str
    first: int | None = None
    last: int | None = None

    @property
    def is_one_page(self) -> bool:
        """Whether the reference names exactly one page (``#page=3``)."""
        return self.first is not None and self.last is None


@dataclass(frozen=True)
class PdfPage:
    """One page of a PDF file, checked, to be rendered or read when it is needed.

    Attributes:
        path: The PDF file, absolute.
        number: The page, 1-based.
        settings: How it renders.
    """

    path: Path
    number: int
    settings: RenderSettings = RenderSettings()

    def render(self):
        """The page as an RGB PIL image (see :func:`render_page`)."""
        return render_page(self.path, self.number, self.settings)

    def text(self) -> str:
        """The page's text layer (see :func:`page_text`)."""
        return page_text(self.path, self.number, self.settings.password)


def page_of(value: str, root: Path, settings: RenderSettings) -> PdfPage:
    """The page a one-page reference (``report.pdf#page=3``, already checked) names, its file resolved against ``root``."""
    reference = parse_page_reference(value)
    return PdfPage((root / Path(reference.file).expanduser()).resolve(), reference.first, settings)


def pdf_files(folder: Path) -> list[Path]:
    """PDF files under ``folder`` (recursive, hidden files and folders skipped), relative, sorted by path."""
    found = [
        path.relative_to(folder)
        for path in folder.rglob("*")
        if path.is_file() and is_pdf_name(path.name)
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]  # fmt: skip
    return sorted(found, key=lambda path: path.as_posix())


def page_id(file: str, number: int) -> str:
    """The id of a page: ``report.pdf#page=3``."""
    return f"{file}#page={number}"


def is_pdf_name(name: str) -> bool:
    """Whether a file name ends in ``.pdf`` (any case)."""
    return name.lower().endswith(PDF_EXTENSIONS)


def parse_page_reference(value: str) -> PageReference | None:
    """Read ``report.pdf``, ``report.pdf#page=3`` or ``report.pdf#page=2-5``; ``None`` for anything else.

    Raises:
        PdfProblem: for a PDF reference whose page part is not a page or a range of pages.
    """
    match = _REFERENCE.match(value)
    if match is None:
        return None
    file, pages = match["file"], match["pages"]
    if pages is None:
        return PageReference(file)
    numbers = _PAGES.match(pages.strip())
    if numbers is None:
        raise PdfProblem(f"'#page={pages}' is not a page; write {file}#page=3 (pages count from 1) or #page=2-5")
    first = int(numbers["first"])
    last = int(numbers["last"]) if numbers["last"] is not None else None
    if first < 1 or (last is not None and last < 1):
        raise PdfProblem(f"'#page={pages}': pages count from 1, as PDF viewers number them")
    if last is not None and last < first:
        raise PdfProblem(f"'#page={pages}' runs backwards; write #page={last}-{first}")
    return PageReference(file, first, last)


def _document(path: Path, password: str | None):
    """The open document (from the cache); the caller holds :data:`_lock`."""
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    if not _documents:
        # Registered after pypdfium2's own exit hook, so it runs first: pypdfium2 complains about
        # documents still open when its hook runs.
        atexit.register(close_documents)
    key = (str(path), password)
    if key in _documents:
        _documents.move_to_end(key)
        return _documents[key]
    # Loaded here rather than by PdfDocument(path), which reports a file without pages with
    # whatever error PDFium last set (an earlier file's "password required", say).
    secret = None if password is None else (password + "\0").encode("utf-8")
    handle = pdfium_c.FPDF_LoadDocument((str(path) + "\0").encode("utf-8", "surrogateescape"), secret)
    if not handle:
        raise PdfProblem(_open_problem(pdfium_c.FPDF_GetLastError(), password))
    document = pypdfium2.PdfDocument(handle)
    if len(document) == 0:
        document.close()
        raise PdfProblem("has no pages")
    _documents[key] = document
    while len(_documents) > _OPEN_DOCUMENTS:
        _documents.popitem(last=False)[1].close()
    return document


def close_documents() -> None:
    """Close every cached document (at exit, and when a caller wants its files released)."""
    with _lock:
        while _documents:
            _documents.popitem()[1].close()


def _open_problem(code: int, password: str | None) -> str:
    import pypdfium2.raw as pdfium_c

    if code == pdfium_c.FPDF_ERR_PASSWORD:
        if password is None:
            return "is encrypted; pass its password with --pdf-password, or decrypt it first (qpdf --decrypt)"
        return "is encrypted and --pdf-password does not open it; check the password"
    if code == pdfium_c.FPDF_ERR_SECURITY:
        return "is encrypted with a scheme PDFium does not support; decrypt it first (qpdf --decrypt)"
    if code == pdfium_c.FPDF_ERR_FORMAT:
        return "is not a readable PDF (corrupt or truncated); re-export or repair it (qpdf in.pdf out.pdf)"
    return f"cannot be read as a PDF (PDFium error {code})"


def page_sizes(path: Path, password: str | None = None) -> list[tuple[float, float]]:
    """Width and height, in points (1/72 inch), of every page of a PDF file, in order.

    Raises:
        PdfProblem: the file is missing, not a PDF, corrupt or truncated, encrypted without the
            right password, or has no pages.
    """
    if not path.is_file():
        raise PdfProblem("is a directory, not a file" if path.is_dir() else "file not found")
    with _lock:
        document = _document(path, password)
        return [document.get_page_size(index) for index in range(len(document))]


def page_numbers(reference: PageReference, count: int) -> list[int]:
    """The pages a reference names in a document of ``count`` pages, 1-based, in order.

    Raises:
        PdfProblem: a page beyond the last one.
    """
    if reference.first is None:
        return list(range(1, count + 1))
    last = reference.last if reference.last is not None else reference.first
    if last > count:
        raise PdfProblem(f"page {last} is out of range: the document has {count} page(s)")
    return list(range(reference.first, last + 1))


def render_scale(size: tuple[float, float], settings: RenderSettings) -> float:
    """Pixels per point for a page of ``size`` points: ``dpi`` / 72, shrunk into ``max_pixels``.

    Raises:
        PdfProblem: the page would exceed :data:`MAX_PAGE_PIXELS` at ``dpi`` (a 'bomb'), or has no area.
    """
    scale = settings.dpi / _POINTS_PER_INCH
    width, height = size[0] * scale, size[1] * scale
    if width < 1 or height < 1:
        raise PdfProblem(f"page is {size[0]:g} x {size[1]:g} pt, which renders to no pixels; remove the page")
    if width * height > MAX_PAGE_PIXELS:
        raise PdfProblem(
            f"page is {size[0]:g} x {size[1]:g} pt, {width * height / 1e6:.0f} megapixels at {settings.dpi:g} dpi, "
            f"over the {MAX_PAGE_PIXELS / 1e6:.0f}-megapixel limit (a decompression bomb?); lower --pdf-dpi or "
            "remove the page"
        )
    if settings.max_pixels and _pixels(size, scale) > settings.max_pixels:
        scale *= math.sqrt(settings.max_pixels / (width * height))
        while _pixels(size, scale) > settings.max_pixels and _pixels(size, scale) > 1:
            scale *= 0.99  # PDFium rounds each side up, which can add a row or a column
    return scale


def _pixels(size: tuple[float, float], scale: float) -> int:
    width, height = render_size_at(size, scale)
    return width * height


def render_size_at(size: tuple[float, float], scale: float) -> tuple[int, int]:
    """The bitmap PDFium renders a page of ``size`` points into at ``scale``: each side rounded up."""
    return math.ceil(size[0] * scale), math.ceil(size[1] * scale)


def render_size(size: tuple[float, float], settings: RenderSettings) -> tuple[int, int]:
    """The pixel size a page of ``size`` points renders at (see :func:`render_scale`), aspect kept."""
    return render_size_at(size, render_scale(size, settings))


def render_page(path: Path, number: int, settings: RenderSettings = RenderSettings()):
    """Render one page (1-based) of a PDF file as an RGB PIL image at :func:`render_size`.

    Raises:
        PdfProblem: the file or page cannot be used (see :func:`page_sizes`, :func:`render_size`).
    """
    sizes = page_sizes(path, settings.password)
    page_numbers(PageReference(str(path), number), len(sizes))
    scale = render_scale(sizes[number - 1], settings)
    with _lock:
        page = _document(path, settings.password)[number - 1]
        try:
            bitmap = page.render(scale=scale, may_draw_forms=False)
            try:
                image = bitmap.to_pil()  # PIL copies PDFium's BGR buffer into RGB
            finally:
                bitmap.close()  # now, not when the garbage collector gets to it: pages are large
        finally:
            page.close()
    return image


def page_text(path: Path, number: int, password: str | None = None) -> str:
    """The text layer of one page (1-based): PDFium's extracted text, ``""`` for a scanned page.

    Raises:
        PdfProblem: the file or page cannot be used (see :func:`page_sizes`).
    """
    count = len(page_sizes(path, password))
    page_numbers(PageReference(str(path), number), count)
    with _lock:
        page = _document(path, password)[number - 1]
        try:
            text_page = page.get_textpage()
            try:
                text = text_page.get_text_bounded()
            finally:
                text_page.close()
        finally:
            page.close()
    return text.replace("\r\n", "\n").strip()
