"""Result files of ``mmst evaluate``: per-query jsonl and the Matryoshka plot (matplotlib), written atomically."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmst_cli.core.outputs import atomic_path


def write_jsonl_atomically(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line."""
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def plot_matryoshka_sweep(sweep: list[dict[str, Any]], path: Path, metric: str = "ndcg@10") -> None:
    """A PNG line plot of ``metric`` against embedding dimension (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((entry["dim"], entry["metrics"][metric]) for entry in sweep)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot([d for d, _ in points], [v for _, v in points], marker="o")
    axes.set_xscale("log", base=2)
    axes.set_xticks([d for d, _ in points], [str(d) for d, _ in points])
    axes.set_xlabel("embedding dimension")
    axes.set_ylabel(metric)
    axes.set_title(f"Matryoshka sweep: {metric}")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
