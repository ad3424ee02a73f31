"""The human view of a ``--dry-run`` memory plan, shared by the training commands."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mmst_cli.cli.output import emit, format_bytes
from mmst_cli.core.errors import EXIT_FAILURE


def render_memory_plan(console: Console, summary: dict[str, Any]) -> None:
    """Components, total against the device, and the suggestions when it does not fit."""
    plan = summary["dry_run"]
    console.print(f"model: {summary['model']}", markup=False, highlight=False)
    table = Table(title=f"estimated peak memory on {plan['device']}", title_justify="left")
    table.add_column("part")
    table.add_column("memory", justify="right")
    for part, size in plan["components_bytes"].items():
        table.add_row(part.replace("_", " "), format_bytes(size))
    table.add_row("[bold]total[/bold]", f"[bold]{format_bytes(plan['total_bytes'])}[/bold]")
    table.add_row("available", format_bytes(plan["available_bytes"]))
    console.print(table)
    console.print(
        f"activations: {format_bytes(plan['per_sample_activation_bytes'])} per sample kept for the backward pass "
        f"(+ {format_bytes(plan['per_sample_forward_bytes'])} during a forward), "
        f"{plan['samples_in_flight']} samples at once",
        markup=False,
        highlight=False,
    )
    if plan.get("gpus"):
        _render_gpu_plan(console, plan["gpus"])
    if plan["fits"]:
        console.print("[green]fits[/green]")
        return
    console.print("[red]does not fit[/red]; try:")
    for suggestion in plan["suggestions"]:
        console.print(f"  {suggestion}", markup=False, highlight=False)


def _render_gpu_plan(console: Console, gpus: dict[str, Any]) -> None:
    """Per-GPU parts under DDP and FSDP side by side, and the smallest setup that fits."""
    per_gpu = gpus["per_gpu"]
    memory = gpus["gpu_memory_bytes"]
    table = Table(title=f"per GPU, {gpus['gpus']} GPUs" + (f" of {format_bytes(memory)}" if memory else ""), title_justify="left")
    table.add_column("part")
    for strategy in per_gpu:
        table.add_column(strategy.upper() + (" (this run)" if strategy == gpus["strategy"] else ""), justify="right")
    parts = dict.fromkeys(part for plan in per_gpu.values() for part in plan["components_bytes"])
    for part in parts:
        table.add_row(part.replace("_", " "), *(format_bytes(plan["components_bytes"].get(part, 0)) for plan in per_gpu.values()))
    table.add_row("[bold]total[/bold]", *(f"[bold]{format_bytes(plan['total_bytes'])}[/bold]" for plan in per_gpu.values()))
    if memory:
        table.add_row("fits", *("yes" if plan["fits"] else "no" for plan in per_gpu.values()))
    console.print(table)
    if memory is None:
        console.print("no GPU here: add --gpu-memory GIB for a verdict and the smallest setup that fits", markup=False, highlight=False)
    elif gpus["smallest_fit"]:
        console.print(f"smallest setup that fits: {gpus['smallest_fit']['flags']}", markup=False, highlight=False)


def emit_memory_plan(summary: dict[str, Any], *, as_json: bool) -> None:
    """Print a ``--dry-run`` plan (JSON or table); exit 1 when it does not fit, for launchers."""
    emit(summary, as_json=as_json, render=render_memory_plan)
    if not summary["dry_run"]["fits"]:
        raise typer.Exit(EXIT_FAILURE)
