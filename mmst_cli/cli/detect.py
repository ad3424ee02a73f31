"""``mmst detect``: what a model is and which inputs it can take, before any GPU hours are spent.

Examples:

    # The embedded default model (MiniLM + EfficientNet-Lite0 Router)
    $ mmst detect

    # A Hub id or a local folder, as JSON for a pipeline
    $ mmst detect openai/clip-vit-base-patch32 --json | jq .modalities

    # Which modality would each input be, and does the model take it?
    $ mmst detect ./my-clip --input photo.jpg --input "a photo of a cat" \\
        --input '{"text": "a cat", "image": "photo.jpg"}'

    # A PDF page: checked, and the size it renders at
    $ mmst detect ./my-clip -i report.pdf#page=2
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmst_cli.cli.options import JsonOption, PdfDpiOption, PdfPasswordOption, TrustRemoteCodeOption
from mmst_cli.cli.output import emit, format_bytes, format_count
from mmst_cli.core.data.documents import DEFAULT_PDF_DPI


def detect(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Local model folder or Hugging Face Hub id. Omit it for the embedded default model.",
            show_default=False,
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="An input to check: text, a media file path or URL, a PDF page (report.pdf#page=2), or a JSON object such as "
            '\'{"text": "..", "image": "a.png"}\'. Repeatable.',
            show_default=False,
        ),
    ] = None,
    pdf_dpi: PdfDpiOption = DEFAULT_PDF_DPI,
    pdf_password: PdfPasswordOption = None,
    json_output: JsonOption = False,
    trust_remote_code: TrustRemoteCodeOption = False,
) -> None:
    """Show a model's kind, modalities, modules, size, pooling, prompts and usable attention backends."""
    from mmst_cli.core.data.documents import RenderSettings
    from mmst_cli.core.models.description import inspect_model

    pdf = RenderSettings(dpi=pdf_dpi, password=pdf_password)
    report = inspect_model(model, inputs=inputs or [], trust_remote_code=trust_remote_code, pdf=pdf)
    emit(report, as_json=json_output, render=render_report)
    if any(not item["supported"] for item in report["inputs"]):
        raise typer.Exit(1)


def _mark(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def render_report(console: Console, report: dict[str, Any]) -> None:
    """Draw the detect report as Rich tables."""
    summary = Table(title=f"mmst detect: {report['model']}", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    memory = report["weights_memory_bytes"]
    rows = [
        ("kind", f"{report['kind']} ({report['class']})"),
        ("modalities", ", ".join(report["modalities"])),
        ("parameters", format_count(report["parameters"])),
        ("weights memory", f"fp32 {format_bytes(memory['fp32'])}, bf16 {format_bytes(memory['bf16'])}"),
        ("embedding dimension", report["embedding_dimension"]),
        ("labels", report["num_labels"]),
        ("max sequence length", report["max_seq_length"]),
        ("pooling", ", ".join(report["pooling"]) if report["pooling"] else None),
        ("similarity", report["similarity_fn_name"]),
        ("prompts", ", ".join(f"{k}: {v!r}" for k, v in report["prompts"].items()) or None),
    ]
    late = report.get("multi_vector")
    if late:
        pooling = late["token_pooling"]
        rows += [
            ("token vectors", f"{late['token_dimension']}-d, one per token or patch, scored by MaxSim"),
            ("query / document length", f"{late['query_length'] or 'tokenizer limit'} / {late['document_length'] or 'tokenizer limit'} tokens"),
            ("token pooling", f"{pooling['type']} (pool factor {pooling.get('pool_factor')})" if pooling else "none: every token kept"),
        ]
    if report["attention"]:
        usable = [name for name, reason in report["attention"].items() if reason is None]
        rows.append(("attention", ", ".join(usable)))
    for key, value in rows:
        if value is not None:
            summary.add_row(key, escape(str(value)))
    console.print(summary)

    support = Table(title="support", title_justify="left")
    for modality in report["supports"]:
        support.add_column(modality, justify="center")
    support.add_row(*(_mark(ok) for ok in report["supports"].values()))
    console.print(support)

    modules = Table(title="modules", title_justify="left")
    for column in ("route", "module", "architecture", "model_type", "parameters"):
        modules.add_column(column)
    for module in report["modules"]:
        modules.add_row(
            module.get("route", ""),
            module["type"],
            module.get("architecture", ""),
            module.get("model_type", ""),
            format_count(module["parameters"]),
        )
    console.print(modules)

    if report["routes"]:
        routes = Table(title="routes (all held in memory at once)", title_justify="left")
        for column in ("route", "modalities", "parameters", "fp32", "bf16"):
            routes.add_column(column)
        for name, route in report["routes"].items():
            route_memory = route["weights_memory_bytes"]
            routes.add_row(
                name,
                ", ".join(route["modalities"]),
                format_count(route["parameters"]),
                format_bytes(route_memory["fp32"]),
                format_bytes(route_memory["bf16"]),
            )
        console.print(routes)

    if report["attention"]:
        unusable = {name: reason for name, reason in report["attention"].items() if reason}
        for name, reason in unusable.items():
            console.print(f"[dim]{name}: {escape(reason)}[/dim]")

    if report["inputs"]:
        inputs = Table(title="inputs", title_justify="left")
        for column in ("input", "modality", "source", "supported", "problem or detail"):
            inputs.add_column(column)
        for item in report["inputs"]:
            inputs.add_row(
                escape(item["input"]),
                item["modality"],
                item["source"],
                _mark(item["supported"]),
                escape(item["problem"] or item["detail"] or ""),
            )
        console.print(inputs)
