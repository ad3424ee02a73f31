"""What the training commands print: the resolved configuration and the before/after summary."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def print_resolved_config(ctx: typer.Context) -> None:
    """The resolved values of every option (config file, then command line), as YAML on stdout."""
    import yaml

    resolved = {
        name: value for name, value in ctx.params.items() if name not in ("config", "print_config", "json_output")
    }
    sys.stdout.write(yaml.safe_dump(resolved, sort_keys=False))


def render_training_summary(console: Console, summary: dict[str, Any], *, title: str) -> None:
    """Before/after metrics (NDCG@10 first) and the run's vital numbers, on stderr.

    Args:
        console: Where to draw.
        summary: A training command's summary (``model``, ``base``, ``final``, ``train``, ``model_dir``).
        title: What the metrics measure, e.g. "retrieval on the evaluation data".
    """
    console.print(f"model: {summary['model']}", markup=False, highlight=False)
    if summary["final"]:
        table = Table(title=title, title_justify="left")
        for column, justify in (("metric", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
            table.add_column(column, justify=justify)
        for metric, after in sorted(summary["final"].items(), key=lambda item: item[0] != "ndcg@10"):
            before = summary["base"].get(metric)
            change = f"{after - before:+.4f}" if before is not None else ""
            table.add_row(metric, f"{before:.4f}" if before is not None else "-", f"{after:.4f}", change)
        console.print(table)
    else:
        console.print("no evaluation data (pass --eval-data or --eval-split for before/after metrics)", markup=False)
    train = summary["train"]
    console.print(
        f"{train['steps']} steps, {train['epochs']} epochs in {train['runtime_s']:.0f} s "
        f"({train['samples_per_s']:.1f} samples/s, loss {summary['loss']}); model saved to {summary['model_dir']}",
        markup=False,
        highlight=False,
    )


def emit_training_result(summary: dict[str, Any], *, as_json: bool, title: str) -> None:
    """A training command's final output, from the main process only: the memory plan of a
    ``--dry-run``, or the before/after summary (``title`` says what the metrics measure)."""
    from mmst_cli.cli.memory_plan_view import emit_memory_plan
    from mmst_cli.cli.output import emit
    from mmst_cli.core.train.common import is_main_process

    if not is_main_process():
        return
    if "dry_run" in summary:
        emit_memory_plan(summary, as_json=as_json)
        return
    emit(summary, as_json=as_json, render=lambda console, summary: render_training_summary(console, summary, title=title))
