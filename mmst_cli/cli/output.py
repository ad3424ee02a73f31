"""The one output helper: a human view on stderr, or JSON on stdout for pipelines."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

#: Tables, progress and logs go to stderr so that stdout stays clean for data.
console = Console(stderr=True)


def emit(data: dict[str, Any], *, as_json: bool, render: Callable[[Console, dict[str, Any]], None]) -> None:
    """Print a command's result.

    Args:
        data: JSON-ready result of the command.
        as_json: Print ``data`` as one JSON object on one line of stdout instead of the human view,
            so that ``--json`` output is JSON lines: runs append to a ``.jsonl`` log as they are.
        render: Draws the human view of ``data`` on the given (stderr) console.
    """
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        render(console, data)


def format_bytes(size: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``None`` -> ``"-"``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(count: int | None) -> str:
    """``22713216`` -> ``"22.7M"``."""
    if count is None:
        return "-"
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= threshold:
            return f"{count / threshold:.1f}{suffix}"
    return str(count)
