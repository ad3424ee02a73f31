"""Small, embedded previews of what a query or document is: HTML fragments with data URIs.

Every value a results page shows becomes one fragment: text as an escaped snippet, an image (file,
data URI or decoded PIL image) as a downscaled JPEG or PNG, a PDF page rendered small, audio (file
or decoded array) as an ``<audio controls>`` player of its first seconds in Ogg Vorbis, a video's
frames (a frame list) as a strip of images, a multimodal dict as its parts. A video *file* is
named, not decoded: that needs a video backend mmst does not require.

Nothing is referenced outside the page, so it opens from disk with no server. Every file is opened
only after :func:`mmst_cli.core.data.media.confinement_problem` lets it through, as everywhere in
mmst. Every string from the data is escaped (:func:`html.escape`, attribute values quoted); a file
that cannot be read shows a one-line note in place of its preview instead of stopping the page.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmst_cli.core.data.documents import PdfPage, PdfProblem, RenderSettings, parse_page_reference, render_page
from mmst_cli.core.data.media import MULTIMODAL_KEYS, confinement_problem, string_modality

#: Longest side of an image preview, in pixels (twice the shown size, for sharp high-DPI screens).
THUMBNAIL_PIXELS = 256

#: Resolution PDF pages are rendered at for a preview: 288 x 372 px for a Letter page.
THUMBNAIL_PDF_DPI = 36

#: Seconds of audio a player holds; longer clips are cut (a page of 50 queries x 10 hits stays small).
AUDIO_SECONDS = 10

#: Characters of a text shown; the rest is cut with an ellipsis.
TEXT_CHARS = 400

#: Frames of a frame-list video shown.
VIDEO_FRAMES = 3

#: Errors that mean a media file cannot be previewed (Pillow, soundfile and PDFium raise these).
_UNREADABLE = (OSError, ValueError, RuntimeError, PdfProblem)


@dataclass(frozen=True)
class MediaAccess:
    """Where media references resolve, and which folder they must stay in.

    Attributes:
        root: Folder relative references resolve against (the data folder or ``--media-root``).
        confine_to: Folder every media file must resolve into; ``None`` (``--allow-outside-root``)
            lets every path through.
        pdf_password: Password of encrypted PDFs; ``None`` (default) for none.
    """

    root: Path
    confine_to: Path | None
    pdf_password: str | None = None


def escaped(value: Any) -> str:
    """``value`` as text safe in HTML content and in quoted attribute values."""
    return html.escape(str(value), quote=True)


def text_snippet(text: str, limit: int = TEXT_CHARS) -> str:
    """A ``<span class="text">`` of ``text``, escaped, cut to ``limit`` characters."""
    shown = text if len(text) <= limit else text[:limit].rstrip() + "…"
    return f'<span class="text">{escaped(shown)}</span>'


def note(message: str) -> str:
    """A one-line note in place of a preview (``media refused: ...``)."""
    return f'<span class="note">{escaped(message)}</span>'


def preview(value: Any, access: MediaAccess) -> str:
    """The HTML fragment that shows ``value`` (see the module docstring); never raises for bad media."""
    from PIL import Image

    if value is None:
        return ""
    if isinstance(value, str):
        return _string_preview(value, access)
    if isinstance(value, Image.Image):
        return _image_tag(value, "image")
    if isinstance(value, PdfPage):
        return _page_preview(value.path, value.number, access, value.path.name, value.settings.password)
    if isinstance(value, Mapping) and "array" in value and "sampling_rate" in value:
        return _guarded("audio", lambda: _audio_tag(value["array"], int(value["sampling_rate"])))
    if isinstance(value, Mapping) and isinstance(value.get("video"), (list, tuple)):
        return _frames_preview(value["video"], access)
    if isinstance(value, Mapping) and value and set(value) <= set(MULTIMODAL_KEYS):
        return "".join(preview(part, access) for part in value.values())
    if isinstance(value, (list, tuple)):
        return _frames_preview(value, access)
    return text_snippet(str(value))


def _string_preview(value: str, access: MediaAccess) -> str:
    modality, source = string_modality(value)
    if source == "text":
        return text_snippet(value)
    if source == "url":  # the page works offline: a remote file is named, never fetched
        return note(f"{modality} at {value} (not embedded)")
    if source == "data-uri":
        return _guarded("data URI", lambda: _image_tag(_data_uri_image(value), "image"))
    if source == "pdf":
        try:
            reference = parse_page_reference(value)
        except PdfProblem as error:
            return note(f"{value}: {error}")
        path = access.root / Path(reference.file).expanduser()
        return _page_preview(path, reference.first or 1, access, value, access.pdf_password)
    path = access.root / Path(value).expanduser()
    problem = confinement_problem(path, access.confine_to)
    if problem:
        return note(f"{value}: {problem}")
    if modality == "image":
        return _guarded(value, lambda: _image_file_tag(path))
    if modality == "audio":
        return _guarded(value, lambda: _audio_file_tag(path))
    return note(f"video {path.name} (video files are named, not decoded)")


def _guarded(label: str, make) -> str:
    """``make()``, or a note naming ``label`` when the media cannot be read."""
    from PIL import Image

    try:
        return make()
    except (*_UNREADABLE, Image.DecompressionBombError) as error:
        return note(f"{label}: cannot be previewed ({str(error).splitlines()[0] if str(error) else type(error).__name__})")


def _data_uri_image(value: str):
    from PIL import Image

    header, _, payload = value.partition(",")
    if not header.endswith(";base64"):
        raise ValueError("not a base64 data URI")
    return Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))


def _image_file_tag(path: Path) -> str:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))  # JPEGs decode at a fraction of their size
        return _image_tag(ImageOps.exif_transpose(image), "image")


def _page_preview(path: Path, number: int, access: MediaAccess, label: str, password: str | None) -> str:
    problem = confinement_problem(path, access.confine_to)
    if problem:
        return note(f"{label}: {problem}")
    settings = RenderSettings(dpi=THUMBNAIL_PDF_DPI, password=password)
    return _guarded(label, lambda: _image_tag(render_page(path, number, settings), f"page {number}", "page"))


def _image_tag(image, alt: str, kind: str = "image") -> str:
    """An ``<img class="thumb">`` of ``image`` downscaled: JPEG when opaque, PNG when it has transparency."""
    image = image.copy()  # of the current frame: the first of an animation just opened
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    transparent = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    buffer = io.BytesIO()
    if transparent:
        image.convert("RGBA").save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
        mime = "image/jpeg"
    uri = f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"
    return f'<img class="thumb {kind}" alt="{escaped(alt)}" src="{uri}">'


def _audio_file_tag(path: Path) -> str:
    import soundfile

    with soundfile.SoundFile(str(path)) as audio:
        samples = audio.read(frames=AUDIO_SECONDS * audio.samplerate, dtype="float32", always_2d=True)
        return _audio_tag(samples.mean(axis=1), audio.samplerate)


def _audio_tag(samples, sampling_rate: int) -> str:
    """An ``<audio controls>`` player of the first :data:`AUDIO_SECONDS` seconds, Ogg Vorbis, mono."""
    import numpy as np
    import soundfile

    array = np.asarray(samples, dtype="float32")
    array = array.mean(axis=1) if array.ndim == 2 else array.reshape(-1)
    array = np.clip(array[: AUDIO_SECONDS * sampling_rate], -1.0, 1.0)
    buffer = io.BytesIO()
    soundfile.write(buffer, array, sampling_rate, format="OGG", subtype="VORBIS")
    seconds = array.size / sampling_rate
    uri = f"data:audio/ogg;base64,{base64.b64encode(buffer.getvalue()).decode()}"
    return f'<audio class="player" controls preload="metadata" title="{seconds:.1f} s" src="{uri}"></audio>'


def _frames_preview(frames, access: MediaAccess) -> str:
    shown = [preview(frame, access) for frame in list(frames)[:VIDEO_FRAMES]]
    more = len(frames) - len(shown)
    return '<span class="frames">' + "".join(shown) + (note(f"+{more} frames") if more > 0 else "") + "</span>"
