"""The Matryoshka sweep as an inline SVG line chart: a metric against embedding dimension.

The same picture ``mmst evaluate --plot`` draws with matplotlib, drawn as SVG text so that the
results page stays one self-contained file with no script (dimension on a log-2 axis, one labelled
point per swept dimension).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mmst_cli.core.report.thumbnails import escaped

_WIDTH, _HEIGHT = 480, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 24, 32, 44
_INSET = 24  # keeps the end points off the axes


def sweep_chart(points: Sequence[tuple[int, float]], metric: str) -> str:
    """An ``<svg>`` of ``metric`` at each ``(dimension, value)``; empty for no points.

    The value axis spans the values rounded out to tenths (at least 0.1 wide), so small
    differences between dimensions stay visible.
    """
    points = sorted(points)
    if not points:
        return ""
    values = [value for _, value in points]
    low = math.floor(min(values) * 10) / 10
    high = max(math.ceil(max(values) * 10) / 10, low + 0.1)
    logs = [math.log2(dim) for dim, _ in points]
    span = max(logs) - min(logs) or 1.0
    plot_width, plot_height = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def x(dim: int) -> float:
        # One point sits in the middle; several spread over the width by log2 of the dimension.
        inner = plot_width - 2 * _INSET
        return _LEFT + _INSET + (inner / 2 if len(points) == 1 else (math.log2(dim) - min(logs)) / span * inner)

    def y(value: float) -> float:
        return _TOP + (high - value) / (high - low) * plot_height

    parts = [
        f'<svg class="sweep" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-label="{escaped(f"Matryoshka sweep: {metric}")}">',
        f'<text x="{_LEFT}" y="18" class="title">{escaped(f"Matryoshka sweep: {metric}")}</text>',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_height}" x2="{_LEFT + plot_width}" y2="{_TOP + plot_height}" class="axis"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_height}" class="axis"/>',
    ]
    ticks = round((high - low) * 10)
    for step in range(ticks + 1):
        value = low + step * (high - low) / ticks
        parts.append(f'<line x1="{_LEFT}" y1="{y(value):.1f}" x2="{_LEFT + plot_width}" y2="{y(value):.1f}" class="grid"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.1f}</text>')
    line = " ".join(f"{x(dim):.1f},{y(value):.1f}" for dim, value in points)
    parts.append(f'<polyline points="{line}" class="line"/>')
    for dim, value in points:
        parts.append(f'<circle cx="{x(dim):.1f}" cy="{y(value):.1f}" r="4" class="point"><title>{dim}: {value:.4f}</title></circle>')
        parts.append(f'<text x="{x(dim):.1f}" y="{y(value) - 9:.1f}" text-anchor="middle">{value:.3f}</text>')
        parts.append(f'<text x="{x(dim):.1f}" y="{_TOP + plot_height + 18}" text-anchor="middle">{dim}</text>')
    parts.append(f'<text x="{_LEFT + plot_width / 2:.1f}" y="{_HEIGHT - 6}" text-anchor="middle">embedding dimension</text>')
    parts.append("</svg>")
    return "".join(parts)
