"""Fetch http(s) media referenced by data, only when the user opts in (``--allow-remote-media``).

Downloads have a timeout, a size cap and a content-type check, land in a content-addressed cache
(``$MMST_CACHE`` or ``~/.cache/mmst/media``) under a temporary name first, and are decoded like
local files before use. Each failure is reported for its row.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from mmst_cli.core.data.media import check_media_file, media_cache_dir, media_modality_of_name
from mmst_cli.core.outputs import atomic_path

#: Seconds to wait for a server before giving up on one URL.
TIMEOUT_S = 30
#: Largest download accepted for one media file.
MAX_BYTES = 64 * 2**20
_CHUNK = 2**16


class RemoteMediaError(Exception):
    """One URL could not be used; the message says why."""


def fetch_media(url: str, cache_dir: Path | None = None) -> Path:
    """Download one media URL (or reuse the cached copy) and return its local path.

    Raises:
        RemoteMediaError: on a network error, a timeout, a wrong content type, a file above
            :data:`MAX_BYTES`, or content that does not decode.
    """
    modality = media_modality_of_name(urlparse(url).path)
    if modality is None:
        raise RemoteMediaError("the URL does not name an image, audio or video file")
    cache_dir = cache_dir or media_cache_dir()
    suffix = Path(urlparse(url).path).suffix.lower()
    target = cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:32] + suffix)
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        _download(url, modality, temporary)
        problem = check_media_file(temporary, modality)
        if problem is not None:
            raise RemoteMediaError(problem)
    return target


def _download(url: str, modality: str, destination: Path) -> None:
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mmst"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            content_type = response.headers.get_content_type()
            if not content_type.startswith(f"{modality}/") and content_type != "application/octet-stream":
                raise RemoteMediaError(f"the server sent {content_type}, not {modality}")
            declared = response.headers.get("Content-Length")
            if declared and int(declared) > MAX_BYTES:
                raise RemoteMediaError(f"{int(declared)} bytes is over the {MAX_BYTES} byte limit")
            received = 0
            with destination.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    received += len(chunk)
                    if received > MAX_BYTES:
                        raise RemoteMediaError(f"more than the {MAX_BYTES} byte limit")
                    out.write(chunk)
    except urllib.error.HTTPError as error:
        raise RemoteMediaError(f"HTTP {error.code}") from error
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise RemoteMediaError(f"download failed ({getattr(error, 'reason', error)})") from error
