"""Option and argument types shared by several commands, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON object on stdout (for pipelines) instead of a table on stderr."),
]

TrustRemoteCodeOption = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Run custom modelling code from the model's repository. Off by default: only for code you trust.",
    ),
]


def _load_config_file(ctx: typer.Context, _param, value: str | None) -> str | None:
    """Read a YAML file into the command's defaults, so that flags given on the command line win."""
    if not value:
        return value
    from pathlib import Path

    import yaml

    path = Path(value).expanduser()
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf8")) or {}
    except OSError as error:
        raise typer.BadParameter(f"cannot read {value!r}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise typer.BadParameter(f"{value!r} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(loaded, dict):
        raise typer.BadParameter(f"{value!r} must hold a mapping of option names to values")
    known = {param.name for param in ctx.command.params}
    defaults = {}
    for key, item in loaded.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known or name in ("config", "print_config"):
            raise typer.BadParameter(f"{value!r}: unknown option {key!r}")
        if name in _INPUT_PATHS and isinstance(item, str):
            item = _relative_to_config(item, path.parent)
        defaults[name] = ",".join(map(str, item)) if isinstance(item, list) and name in _COMMA_LISTS else item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


#: Options naming inputs that may be local paths; in a config file they resolve against its folder.
_INPUT_PATHS = {"model", "text_encoder", "image_encoder", "audio_encoder", "data", "eval_data", "media_root", "fsdp_config"}


def _relative_to_config(reference: str, folder) -> str:
    """A relative path that exists beside the config file, made absolute; anything else (a Hub id,
    an absolute path, a path that exists nowhere) as written. ``--output-dir`` is not an input and
    stays relative to the working folder, so one config serves runs started anywhere."""
    from pathlib import Path

    candidate = Path(reference).expanduser()
    if candidate.is_absolute() or not (folder / candidate).exists():
        return reference
    return str((folder / candidate).resolve())


# Options typed as one comma-separated string on the command line may be YAML lists in a config.
_COMMA_LISTS = {"columns", "matryoshka_dims", "matryoshka_weights"}

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="YAML file of option values (keys as the flags, without dashes or with); flags on the command line win. Relative input paths in it resolve against its folder.",
        callback=_load_config_file,
        is_eager=True,
        show_default=False,
    ),
]

PrintConfigOption = Annotated[
    bool,
    typer.Option("--print-config", help="Print the resolved configuration as YAML on stdout and exit."),
]


DATA_PANEL = "Data"
MODEL_PANEL = "Model"
TRAINING_PANEL = "Training"
LOSS_PANEL = "Loss"

MediaRootOption = Annotated[
    str | None,
    typer.Option(
        help="Folder that relative media paths resolve against. Default: the data file's folder.",
        rich_help_panel=DATA_PANEL,
        show_default=False,
    ),
]
SkipBadOption = Annotated[
    bool,
    typer.Option(
        help="Drop rows whose media is missing or does not decode (and count them) instead of failing.",
        rich_help_panel=DATA_PANEL,
    ),
]
AllowRemoteMediaOption = Annotated[
    bool,
    typer.Option(
        help="Download http(s) media in the data (timeout, size cap, content-type check); refused otherwise.",
        rich_help_panel=DATA_PANEL,
    ),
]
AllowOutsideRootOption = Annotated[
    bool,
    typer.Option(
        help="Accept media paths (in cells, lines, HF Image/Audio cells, folders' symlinks) that resolve outside the data folder or --media-root; refused otherwise.",
        rich_help_panel=DATA_PANEL,
    ),
]

# PDF pages (report.pdf#page=3, or every page of a PDF or of a folder of PDFs) in encode and evaluate.
PdfDpiOption = Annotated[
    float,
    typer.Option(help="Resolution PDF pages are rendered at, in dots per inch.", rich_help_panel=DATA_PANEL),
]
PdfPasswordOption = Annotated[
    str | None,
    typer.Option(
        help="Password of encrypted PDF files (or set MMST_PDF_PASSWORD, which ps does not show).",
        envvar="MMST_PDF_PASSWORD",
        rich_help_panel=DATA_PANEL,
        show_default=False,
        show_envvar=False,
    ),
]
PdfTextOption = Annotated[
    bool,
    typer.Option(
        help="Take PDF pages by their text layer (empty for scanned pages, which are counted) instead of as rendered images.",
        rich_help_panel=DATA_PANEL,
    ),
]


# What encode and index read: every input form of mmst encode (tables, folders, PDFs, datasets);
# core/encode/settings.CorpusReading, with --allow-outside-root, --skip-bad and the --pdf-* flags above.
INPUT_PANEL = "Input"
InputColumnOption = Annotated[
    str | None,
    typer.Option("--column", "-c", help="Table column to embed. Default: the only content column, else the first of input, text, sentence, content, image, audio, path, file.", rich_help_panel=INPUT_PANEL, show_default=False),
]
InputIdColumnOption = Annotated[
    str | None,
    typer.Option(help="Table column of ids. Default: a BEIR / mteb corpus's own (_id, corpus-id), else the 0-based row number (folders: relative paths; line inputs: 0-based position).", rich_help_panel=INPUT_PANEL, show_default=False),
]
InputSplitOption = Annotated[
    str | None,
    typer.Option(help="Split of a dataset folder or Hub dataset. Default: train.", rich_help_panel=INPUT_PANEL, show_default=False),
]
InputDataConfigOption = Annotated[
    str | None, typer.Option(help="Hub dataset configuration.", rich_help_panel=INPUT_PANEL, show_default=False)
]
InputMediaRootOption = Annotated[
    str | None,
    typer.Option(help="Folder that relative media paths resolve against. Default: the input file's folder (stdin, Hub: the current folder).", rich_help_panel=INPUT_PANEL, show_default=False),
]
# How encode and index embed (core/encode/settings.EmbeddingSettings); the batch size also in evaluate and mine.
EncodeBatchSizeOption = Annotated[int, typer.Option(help="Inputs per forward pass.", rich_help_panel=MODEL_PANEL)]
EncodePromptOption = Annotated[
    str | None,
    typer.Option(help="Text prepended to every text input (overrides the task's prompt).", rich_help_panel=MODEL_PANEL, show_default=False),
]
EncodeDeviceOption = Annotated[
    str | None,
    typer.Option(help="cuda:0, cpu, ...; several, comma-separated (cuda:0,cuda:1 or cpu,cpu), start one encoding process each. Default: chosen by Sentence Transformers.", rich_help_panel=MODEL_PANEL, show_default=False),
]
DecodeWorkersOption = Annotated[
    int | None,
    typer.Option(help="Threads decoding image files ahead of the model (hides decoding behind the forward pass; helps most for large photos and on GPUs); 0 lets the model decode them. Default: one per core, at most 4.", rich_help_panel=MODEL_PANEL, show_default=False),
]
OUTPUT_PANEL = "Output"
MatryoshkaDimOption = Annotated[
    int | None,
    typer.Option(help="Keep the first N dimensions (Matryoshka truncation). Default: all.", rich_help_panel=OUTPUT_PANEL, show_default=False),
]
ChunkSizeOption = Annotated[
    int, typer.Option(help="Rows encoded and saved as one resumable part at a time.", rich_help_panel=OUTPUT_PANEL)
]


DataConfigOption = Annotated[
    str | None, typer.Option(help="Hub dataset configuration.", rich_help_panel=DATA_PANEL, show_default=False)
]
SplitOption = Annotated[
    str | None, typer.Option(help="Split to train on. Default: train.", rich_help_panel=DATA_PANEL, show_default=False)
]
EvalDataSplitOption = Annotated[
    str | None,
    typer.Option(help="Split of --eval-data to read. Default: train.", rich_help_panel=DATA_PANEL, show_default=False),
]

# encode and evaluate: what a multi-vector model's document token vectors are pooled to.
TokenPoolFactorOption = Annotated[
    float | None,
    typer.Option(
        help="Multi-vector models: merge similar document token vectors, keeping about 1/FACTOR of them (2: half). Default: the model's own pooling.",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]

# evaluate and search: the HTML results page (core/report).
ReportOption = Annotated[
    str | None,
    typer.Option(
        help="Write a self-contained HTML page of the results: per query the top results as thumbnails (evaluate: with metrics, relevant ones marked, worst queries first).",
        rich_help_panel="Output",
        show_default=False,
    ),
]
ReportQueriesOption = Annotated[
    int,
    typer.Option(help="Queries drawn on the --report page (the rest are counted).", rich_help_panel="Output"),
]

# Options that train-embed and train-rerank share, with the same meaning and default.
MaxPixelsOption = Annotated[
    int | None,
    typer.Option(
        help="Pixel budget per image for VLM image processors (Qwen2-VL family), e.g. 360000 for 600x600.",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
AttnImplementationOption = Annotated[
    str,
    typer.Option(
        help="auto (flash_attention_2 when installed and on CUDA, else sdpa), sdpa, eager or flash_attention_2.",
        rich_help_panel=MODEL_PANEL,
    ),
]
MiniBatchTokensOption = Annotated[
    int | None,
    typer.Option(
        help="GradCache token budget: pack each mini batch up to this many non-padding tokens instead of "
        "--mini-batch-size rows (steadier memory on mixed lengths). Needs a loss that supports it.",
        rich_help_panel=LOSS_PANEL,
        show_default=False,
    ),
]
LoraAlphaOption = Annotated[
    float | None,
    typer.Option(help="LoRA scale. Default: 2 x --lora-r.", rich_help_panel=TRAINING_PANEL, show_default=False),
]
LoraDropoutOption = Annotated[float, typer.Option(help="Dropout on the LoRA path.", rich_help_panel=TRAINING_PANEL)]
EpochsOption = Annotated[float, typer.Option(help="Training epochs.", rich_help_panel=TRAINING_PANEL)]
MaxStepsOption = Annotated[
    int,
    typer.Option(
        help="Stop after this many optimiser steps (overrides --epochs); -1 for no limit.", rich_help_panel=TRAINING_PANEL
    ),
]
WarmupOption = Annotated[
    float, typer.Option(help="Fraction of steps for linear learning-rate warm-up.", rich_help_panel=TRAINING_PANEL)
]
Bf16Option = Annotated[bool, typer.Option(help="Train in bfloat16 mixed precision.", rich_help_panel=TRAINING_PANEL)]
Fp16Option = Annotated[
    bool, typer.Option(help="Train in float16 mixed precision (CUDA).", rich_help_panel=TRAINING_PANEL)
]
SeedOption = Annotated[
    int, typer.Option(help="Random seed for initialisation, shuffling and splits.", rich_help_panel=TRAINING_PANEL)
]
EvalStepsOption = Annotated[
    int | None,
    typer.Option(help="Also evaluate every N steps during training.", rich_help_panel=TRAINING_PANEL, show_default=False),
]
SaveStepsOption = Annotated[
    int | None,
    typer.Option(
        help="Save a resumable checkpoint every N steps. Default: 500.", rich_help_panel=TRAINING_PANEL, show_default=False
    ),
]
DataloaderWorkersOption = Annotated[
    int | None,
    typer.Option(
        "--dataloader-workers",
        help="Processes that decode the media of the next batches and run the model's processor on them while "
        "the model trains; 0 does it in the training process. Default: min(4, CPU cores - 1), 0 on 2 cores or fewer.",
        rich_help_panel=TRAINING_PANEL,
        show_default=False,
    ),
]
ResumeOption = Annotated[
    bool, typer.Option(help="Continue from the latest checkpoint in --output-dir.", rich_help_panel=TRAINING_PANEL)
]
ForceOption = Annotated[
    bool,
    typer.Option(
        help="With --resume: continue even though the options or data differ from those the run started with (run.json).",
        rich_help_panel=TRAINING_PANEL,
    ),
]
ReportToOption = Annotated[str, typer.Option(help="none or tensorboard.", rich_help_panel=TRAINING_PANEL)]
FsdpOption = Annotated[
    str | None,
    typer.Option(
        help="Shard weights, gradients and optimizer state across the processes of a torchrun / accelerate launch "
        "(FSDP2, one transformer layer at a time): full_shard (least memory) or shard_grad_op.",
        rich_help_panel=TRAINING_PANEL,
        show_default=False,
    ),
]
FsdpConfigOption = Annotated[
    str | None,
    typer.Option(
        help="JSON file of the Trainer's fsdp_config keys (cpu_offload, activation_checkpointing, ...) for --fsdp; they win over mmst's.",
        rich_help_panel=TRAINING_PANEL,
        show_default=False,
    ),
]
GpusOption = Annotated[
    int | None,
    typer.Option(
        help="With --dry-run: also plan per-GPU memory for this many GPUs, under DDP and under FSDP, and find the smallest setup that fits.",
        rich_help_panel="Output",
        show_default=False,
    ),
]
GpuMemoryOption = Annotated[
    float | None,
    typer.Option(
        help="With --gpus: memory of each GPU in GiB, e.g. 80. Default: this machine's GPU's free memory (none: no fit verdict).",
        rich_help_panel="Output",
        show_default=False,
    ),
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        help="Estimate peak memory (weights, gradients, optimizer, measured activations) against the device and "
        "suggest what fits, without training. Exit 1 when it does not fit.",
        rich_help_panel="Output",
    ),
]


def precision_from_flags(bf16: bool, fp16: bool) -> str:
    """``--bf16`` / ``--fp16`` -> ``bf16``, ``fp16`` or ``fp32``; both at once is a usage error."""
    from mmst_cli.core.errors import MmstError

    if bf16 and fp16:
        raise MmstError("--bf16 and --fp16 exclude each other; pick one")
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"
