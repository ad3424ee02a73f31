"""Decide which modality an input reference is, and check that media files really exist and decode.

Sentence Transformers treats a string as a media file only when the file exists; a missing path
silently becomes *text*. mmst never lets that happen: a string that names a media file by its
extension is a media reference, and a missing or undecodable file is reported as a problem.

This module imports no ML library at module level.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mmst_cli.core.data.documents import (
    PdfPage,
    PdfProblem,
    RenderSettings,
    page_id,
    page_numbers,
    page_of,
    page_sizes,
    parse_page_reference,
    render_size,
)
from mmst_cli.core.errors import first_line
from mmst_cli.core.outputs import atomic_path

# The same extension lists Sentence Transformers uses to recognise media paths and URLs.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".wmv", ".flv", ".mkv")
AUDIO_EXTENSIONS = (".mp3", ".wav", ".ogg", ".flac", ".aac")
MEDIA_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS, "video": VIDEO_EXTENSIONS}

#: Pillow formats and modes of image files that transformers' decoder (torchvision) reads as
#: they are; :func:`processor_readable_image` converts every other image file.
PROCESSOR_READABLE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF"})
PROCESSOR_READABLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})

#: Start of the problem reported for a media path that escapes its data folder.
OUTSIDE_ROOT_PROBLEM = "resolves outside the data folder (pass --allow-outside-root to allow it):"

#: Keys of a multimodal dict input such as ``{"text": "a cat", "image": "cat.png"}``.
MULTIMODAL_KEYS = ("text", "image", "audio", "video")


@dataclass(frozen=True)
class InputReport:
    """What one input would be treated as.

    Attributes:
        value: The input as given.
        modality: ``text``, ``image``, ``audio``, ``video``, ``message``, or a sorted tuple such as
            ``("image", "text")`` for a multimodal dict.
        source: ``text``, ``file``, ``pdf`` (a page of a PDF file, ``report.pdf#page=3``), ``url``,
            ``data-uri``, ``message`` or ``dict``.
        problem: Why the input cannot be used (``file not found``, ``does not decode as an image``,
            ...), or ``None`` when it is fine.
        detail: What mmst will make of a usable input, where there is more to say (the size a PDF
            page renders at), or ``None``.
    """

    value: str
    modality: str | tuple[str, ...]
    source: str
    problem: str | None = None
    detail: str | None = None


def media_cache_dir() -> Path:
    """Where downloaded media is kept: ``$MMST_CACHE/media`` or ``~/.cache/mmst/media``."""
    root = os.environ.get("MMST_CACHE") or Path.home() / ".cache" / "mmst"
    return Path(root) / "media"


def confinement_problem(path: Path, confine_to: Path | None) -> str | None:
    """The one gate every local media reference passes before mmst reads it, whatever its source.

    String cells, text-file and stdin lines, files found in a folder, HF ``Image`` / ``Audio`` cells
    that hold a path, and video frames all come here. The path is resolved with symlinks followed,
    so a link inside the folder that points outside it is refused like ``../..`` or an absolute path
    elsewhere. Files mmst downloaded itself (``--allow-remote-media``) live in its media cache and pass.

    Args:
        path: The file as it will be opened (already joined to its folder when relative).
        confine_to: The folder media must stay in; ``None`` (``--allow-outside-root``) lets all through.

    Returns:
        Why the path is refused, or ``None``.
    """
    if confine_to is None:
        return None
    resolved = path.expanduser().resolve()
    if resolved.is_relative_to(confine_to.resolve()) or resolved.is_relative_to(media_cache_dir().resolve()):
        return None
    return f"{OUTSIDE_ROOT_PROBLEM} {confine_to}"


def media_modality_of_name(name: str) -> str | None:
    """Return the media modality implied by a file name or URL path's extension, or ``None``."""
    lowered = name.lower()
    for modality, extensions in MEDIA_EXTENSIONS.items():
        if lowered.endswith(extensions):
            return modality
    return None


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://")) and " " not in text


def check_media_file(path: Path, modality: str) -> str | None:
    """Return a short description of what is wrong with a local media file, or ``None`` if it is usable.

    Images are opened and verified with Pillow and audio headers are read with soundfile; video
    files are only checked for existence (decoding them needs an optional video backend).
    """
    if not path.exists():
        return "file not found"
    if path.is_dir():
        return "is a directory, not a file"
    if path.stat().st_size == 0:
        return "file is empty"
    if modality == "image":
        return verify_image(path)[1]
    elif modality == "audio":
        import soundfile

        try:
            info = soundfile.info(str(path))
        except (RuntimeError, soundfile.LibsndfileError) as error:
            return f"does not decode as audio ({str(error).splitlines()[0]})"
        return audio_length_problem(info.frames, info.samplerate)
    return None


#: Shortest audio clip mmst accepts. Speech and audio encoders look at 25 ms windows: wav2vec2,
#: HuBERT and WavLM need 400 samples at 16 kHz before their convolutions give one frame (a shorter
#: clip is a crash inside the model), and Whisper's and CLAP's spectrograms use 25 ms windows.
MIN_AUDIO_SECONDS = 0.025


def audio_length_problem(samples: int, sampling_rate: int) -> str | None:
    """Why a clip of ``samples`` at ``sampling_rate`` is too short for an audio model, or ``None``."""
    if samples == 0:
        return "audio clip has no samples"
    if samples < MIN_AUDIO_SECONDS * sampling_rate:
        return (
            f"audio clip is {samples} sample(s) ({1000 * samples / sampling_rate:.2g} ms) long; audio models "
            f"need at least {MIN_AUDIO_SECONDS * 1000:.0f} ms; drop it or pad it with silence"
        )
    return None


def verify_image(source) -> tuple[tuple[int, int] | None, str | None]:
    """Decode an image file or stream with Pillow, so that a file that passes cannot fail later.

    ``Image.verify`` alone passes a truncated JPEG that the model's decoder then rejects, so the
    pixels are decoded; JPEGs are decoded at a reduced scale (``Image.draft``), which reads every
    byte at a fraction of the cost.

    Returns:
        ``(width, height)`` and ``None`` for a usable image, or ``None`` and why it is not: it does
        not decode, or it is larger than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            size = image.size
            image.draft("RGB", (64, 64))
            image.load()
    except Image.DecompressionBombError as error:
        return None, f"is too large to decode safely ({first_line(error)}); shrink it"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as error:
        return None, f"does not decode as an image ({first_line(error)})"
    return size, None


def processor_readable_image(path: Path, pdf: RenderSettings = RenderSettings()) -> Path:
    """The image file a model's processor can read: ``path`` itself, or an 8-bit RGB PNG copy of it.

    transformers reads image paths with torchvision's decoder, which knows only JPEG, PNG, WebP
    and GIF, returns 16 bits for 16-bit PNGs and every frame of an animated GIF. Any other image
    (TIFF, BMP, 16-bit, float or animated files) is converted once with Pillow, upright (EXIF
    orientation applied) and first frame only, into ``converted/`` in the media cache, named by
    a hash of the file's bytes so that reruns reuse it. ``path`` must have passed
    :func:`verify_image`.

    A PDF page (``/data/report.pdf#page=3``, checked by :func:`classify_string`) is rendered as
    ``pdf`` says by :func:`page_image_file`.
    """
    from PIL import Image

    if string_modality(path.name)[1] == "pdf":
        return page_image_file(page_of(path.name, path.parent, pdf))

    with Image.open(path) as image:
        readable = (
            image.format in PROCESSOR_READABLE_FORMATS
            and getattr(image, "n_frames", 1) == 1
            and image.mode in PROCESSOR_READABLE_MODES
        )
    if readable:
        return path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    converted = media_cache_dir() / "converted" / f"{digest}.png"
    if not converted.exists():
        with atomic_path(converted) as temporary:
            _as_8bit_rgb(path).save(temporary, format="PNG")
    return converted


def page_image_file(page: PdfPage) -> Path:
    """A PDF page rendered into a PNG file in ``pages/`` of the media cache, for readers that take
    image files (trainers, rerankers); named by a hash of the file's path, size, modification time,
    the page and how it renders, so that every epoch and rerun reuses it."""
    stat = page.path.stat()
    settings = page.settings
    key = json.dumps([str(page.path), stat.st_size, stat.st_mtime_ns, page.number, settings.dpi, settings.max_pixels])
    rendered = media_cache_dir() / "pages" / f"{hashlib.sha256(key.encode()).hexdigest()}.png"
    if not rendered.exists():
        image = page.render()
        with atomic_path(rendered) as temporary:
            image.save(temporary, format="PNG", compress_level=1)  # fast; pages are re-read, not shipped
    return rendered


def _as_8bit_rgb(path: Path):
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):  # Pillow's RGB conversion would clip 16-bit values at 255
            image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), mode="L")
        return image.convert("RGB")


def string_modality(value: str) -> tuple[str, str]:
    """The modality and source (``text``, ``file``, ``pdf``, ``url``, ``data-uri``) a string names, by name only.

    A PDF page reference (``report.pdf#page=3``) is an image: the page, rendered. A bare
    ``report.pdf`` stays text, as a query that ends in a file name should.
    """
    if value.startswith("data:image/"):
        return "image", "data-uri"
    if _is_url(value):
        modality = media_modality_of_name(urlparse(value).path)
        return (modality, "url") if modality else ("text", "text")
    modality = media_modality_of_name(value)
    if modality is None and _is_pdf_reference(value):
        return "image", "pdf"
    return (modality, "file") if modality else ("text", "text")


def _is_pdf_reference(value: str) -> bool:
    try:
        reference = parse_page_reference(value)
    except PdfProblem:  # a page reference with a malformed page part: classify_string names it
        return True
    return reference is not None and reference.first is not None


def classify_string(
    value: str, root: Path | None = None, confine_to: Path | None = None, pdf: RenderSettings = RenderSettings()
) -> InputReport:
    """Classify one string input: plain text, a media file path, a PDF page, a media URL or a data URI.

    Args:
        value: The string as a user would pass it to ``model.encode``.
        root: Folder that relative paths are resolved against; the current directory when ``None``.
        confine_to: When set, a media path that resolves outside this folder (``../../etc/passwd``,
            an absolute path elsewhere, a symlink out) is refused: see :func:`confinement_problem`.
        pdf: How PDF pages render (resolution, pixel budget, password); the defaults when not given.
    """
    modality, source = string_modality(value)
    if source not in ("file", "pdf"):
        return InputReport(value, modality, source)
    try:
        reference = parse_page_reference(value) if source == "pdf" else None
    except PdfProblem as error:
        return InputReport(value, modality, source, str(error))
    path = Path(reference.file if reference else value).expanduser()
    if root is not None and not path.is_absolute():
        path = root / path
    problem = confinement_problem(path, confine_to)
    if reference is None:
        return InputReport(value, modality, source, problem or check_media_file(path, modality))
    if problem:
        return InputReport(value, modality, source, problem)
    if not reference.is_one_page:
        example = f"{reference.file}#page={reference.first or 1}"
        return InputReport(value, modality, source, f"names several pages; an input is one page, such as {example}")
    try:
        sizes = page_sizes(path, pdf.password)
        number = page_numbers(reference, len(sizes))[0]
        width, height = render_size(sizes[number - 1], pdf)
    except PdfProblem as error:
        return InputReport(value, modality, source, str(error))
    return InputReport(value, modality, source, detail=f"page rendered at {width}x{height} px ({pdf.dpi:g} dpi)")


def classify_input(value: str, root: Path | None = None, pdf: RenderSettings = RenderSettings()) -> InputReport:
    """Classify a command-line input, which may also be a JSON object.

    A JSON object with ``role`` and ``content`` is a chat message; one with keys among
    ``text``/``image``/``audio``/``video`` is a multimodal input whose modality is the sorted tuple
    of its keys (its media values are checked like single inputs). Anything else is a string.
    """
    stripped = value.strip()
    if stripped.startswith("{"):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return _classify_dict(value, parsed, root, pdf)
    return classify_string(value, root, pdf=pdf)


def _classify_dict(value: str, parsed: dict, root: Path | None, pdf: RenderSettings) -> InputReport:
    if "role" in parsed and "content" in parsed:
        return InputReport(value, "message", "message")
    unknown = sorted(set(parsed) - set(MULTIMODAL_KEYS))
    if unknown or not parsed:
        return InputReport(
            value, "text", "dict", f"unknown keys {unknown}; use {', '.join(MULTIMODAL_KEYS)} or role/content"
        )
    problems = []
    for key, item in parsed.items():
        if key == "text":
            continue
        report = classify_string(str(item), root, pdf=pdf)
        if report.modality != key:
            problems.append(f"{key}: {item!r} is not a {key} file name or URL")
        elif report.problem:
            problems.append(f"{key}: {report.problem}")
    modality = tuple(sorted(parsed))
    if len(modality) == 1:
        modality = modality[0]
    return InputReport(value, modality, "dict", "; ".join(problems) or None)


def expand_pdf(reference: str, folder: Path, confine_to: Path | None, password: str | None = None) -> list[str]:
    """The page ids a PDF reference names: every page of ``report.pdf``, or ``report.pdf#page=2-5``'s.

    Ids are relative to ``folder`` as written (``sub/report.pdf#page=3``). A file that cannot be
    opened gives the id of its first page, and a range past its end the id of its last page, so
    that checking that id names the problem.
    """
    parsed = parse_page_reference(reference)
    path = folder / Path(parsed.file).expanduser()
    if confinement_problem(path, confine_to) is None:  # opening a file outside the folder is the gate's call
        try:
            return [page_id(parsed.file, number) for number in page_numbers(parsed, len(page_sizes(path, password)))]
        except PdfProblem:
            pass
    return [page_id(parsed.file, parsed.last or parsed.first or 1)]
