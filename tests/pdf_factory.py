"""PDF files written at test time: pages with a real text layer, scanned-like image pages, and broken files.

Text pages are built with PDFium (pypdfium2's raw API: a standard font and a text object per line),
so their text layer is real PDF text that PDFium then extracts; image pages are Pillow's PDF writer,
which stores each page as a picture with no text, as a scanner does. The encrypted file is written
by hand with the PDF standard security handler (RC4, 40-bit, revision 2), which needs no library.
"""

from __future__ import annotations

import colorsys
import ctypes
import hashlib
import struct
from pathlib import Path

LETTER = (612.0, 792.0)


def write_text_pdf(path: Path, pages: list[str], size: tuple[float, float] = LETTER) -> Path:
    """A PDF with one page per string, each line of it set in 12 pt Helvetica from the top left."""
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    document = pypdfium2.PdfDocument.new()
    for text in pages:
        page = document.new_page(*size)
        for number, line in enumerate(text.splitlines()):
            item = pdfium_c.FPDFPageObj_NewTextObj(document, b"Helvetica", 12.0)
            encoded = ctypes.create_string_buffer((line + "\0").encode("utf-16-le"))
            pdfium_c.FPDFText_SetText(item, ctypes.cast(encoded, ctypes.POINTER(pdfium_c.FPDF_WCHAR)))
            pdfium_c.FPDFPageObj_Transform(item, 1, 0, 0, 1, 72, size[1] - 72 - 16 * number)
            pdfium_c.FPDFPage_InsertObject(page, item)
        pdfium_c.FPDFPage_GenerateContent(page)
        page.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(str(path))
    document.close()
    return path


def write_image_pdf(
    path: Path, count: int, size: tuple[int, int] = (300, 400), first_hue: float = 0.0, dpi: float = 72
) -> Path:
    """A PDF of ``count`` picture pages (no text layer), each a distinct hue with a stripe pattern,
    ``size`` pixels scanned at ``dpi`` (at 72 a pixel is a point, so a page is ``size`` points)."""
    from PIL import Image, ImageDraw

    pages = []
    for index in range(count):
        red, green, blue = (round(255 * c) for c in colorsys.hsv_to_rgb((first_hue + index / count) % 1, 0.9, 0.9))
        image = Image.new("RGB", size, (red, green, blue))
        draw = ImageDraw.Draw(image)
        for offset in range(0, size[0] + size[1], 8 + 3 * index):
            draw.line([(offset, 0), (0, offset)], fill=(255 - red, 255 - green, 255 - blue), width=3)
        pages.append(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    pages[0].save(path, save_all=True, append_images=pages[1:], resolution=dpi)
    return path


def write_empty_pdf(path: Path) -> Path:
    """A valid PDF with no pages."""
    import pypdfium2

    document = pypdfium2.PdfDocument.new()
    document.save(str(path))
    document.close()
    return path


def write_sized_pdf(path: Path, size: tuple[float, float]) -> Path:
    """A PDF of one blank page of ``size`` points (a poster-sized 'bomb', a sliver, ...)."""
    import pypdfium2

    document = pypdfium2.PdfDocument.new()
    document.new_page(*size).close()
    document.save(str(path))
    document.close()
    return path


_PASSWORD_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    i = j = 0
    out = bytearray()
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def write_encrypted_pdf(path: Path, password: str) -> Path:
    """A one-page PDF that opens only with ``password`` (standard security handler, RC4 40-bit).

    The page has no content stream or strings, so nothing but the /O and /U entries is encrypted.
    """
    padded = (password.encode("latin-1") + _PASSWORD_PAD)[:32]
    permissions = -4
    file_id = hashlib.md5(path.name.encode()).digest()
    owner = _rc4(hashlib.md5(padded).digest()[:5], padded)  # the owner password is the user password
    key = hashlib.md5(padded + owner + struct.pack("<i", permissions) + file_id).digest()[:5]
    user = _rc4(key, _PASSWORD_PAD)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <" + owner.hex().encode() + b"> /U <" + user.hex().encode()
        + b"> /P " + str(permissions).encode() + b" >>",
    ]  # fmt: skip
    body = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, item in enumerate(objects, start=1):
        offsets.append(len(body))
        body += b"%d 0 obj\n" % number + item + b"\nendobj\n"
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    body += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    identifier = file_id.hex().encode()
    body += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\n" % (len(objects) + 1, identifier, identifier)
    body += b"startxref\n%d\n%%%%EOF\n" % xref
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(body))
    return path
