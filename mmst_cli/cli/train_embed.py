"""``mmst train-embed``: finetune a text / image / audio embedding model on pairs.

Examples:

    # The offline demo: MiniLM + EfficientNet-Lite0 on emoji captions, NDCG@10 before and after
    $ mmst train-embed

    # Finetune a saved or Hub model on your pairs, holding out 10% for evaluation
    $ mmst train-embed --model ./my-clip --data pairs.jsonl --eval-split 0.1 --output-dir runs/clip

    # Compose a Router: MiniLM for text, SigLIP for images, 512-d, frozen vision tower
    $ mmst train-embed --text-encoder sentence-transformers/all-MiniLM-L6-v2 \\
        --image-encoder google/siglip-base-patch16-224 --dim 512 --freeze image --data pairs.parquet

    # Every option from a YAML file, one overridden; see the resolved configuration first
    $ mmst train-embed --config examples/demo.yaml --epochs 2 --print-config

    # A ColBERT-style late-interaction model from MiniLM: 128-d token vectors, short queries
    $ mmst train-embed --model sentence-transformers/all-MiniLM-L6-v2 --multi-vector --dim 128 \\
        --query-length 32 --document-length 256 --data pairs.jsonl --eval-split 0.1

    # Will it fit? Peak memory estimate and suggestions, without training
    $ mmst train-embed --config examples/qwen3-vl-embedding-vdr.yaml --dry-run
"""

from __future__ import annotations

from typing import Annotated

import typer

from mmst_cli.cli.options import (
    DATA_PANEL,
    MODEL_PANEL,
    TRAINING_PANEL,
    AllowOutsideRootOption,
    AllowRemoteMediaOption,
    AttnImplementationOption,
    Bf16Option,
    ConfigOption,
    DataConfigOption,
    DataloaderWorkersOption,
    DryRunOption,
    EpochsOption,
    EvalDataSplitOption,
    EvalStepsOption,
    ForceOption,
    Fp16Option,
    FsdpConfigOption,
    FsdpOption,
    GpuMemoryOption,
    GpusOption,
    JsonOption,
    LOSS_PANEL,
    LoraAlphaOption,
    LoraDropoutOption,
    MaxPixelsOption,
    MaxStepsOption,
    MediaRootOption,
    MiniBatchTokensOption,
    PrintConfigOption,
    ReportToOption,
    ResumeOption,
    SaveStepsOption,
    SeedOption,
    SkipBadOption,
    SplitOption,
    TrustRemoteCodeOption,
    WarmupOption,
    precision_from_flags,
)
from mmst_cli.cli.output import console
from mmst_cli.cli.training_view import emit_training_result, print_resolved_config
from mmst_cli.core.errors import MmstError

MODEL = MODEL_PANEL
DATA = DATA_PANEL
LOSS = LOSS_PANEL
TRAINING = TRAINING_PANEL
OUTPUT = "Output"


def _number_list(value: str | None, flag: str, kind: type = int) -> tuple:
    """``"384,256"`` -> ``(384, 256)``; ``kind`` is ``int`` or ``float``."""
    if not value:
        return ()
    try:
        return tuple(kind(item) for item in value.split(",") if item.strip())
    except ValueError as error:
        noun = "whole numbers" if kind is int else "numbers"
        raise MmstError(f"{flag} takes comma-separated {noun}, got {value!r}") from error


def _prompts(value: str | None) -> str | dict[str, str] | None:
    """A JSON object maps columns to prompts; any other string is one prompt for every column."""
    if value is None or not value.strip().startswith("{"):
        return value
    import json

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise MmstError(f"--prompts looks like JSON but does not parse: {error.msg}") from error
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise MmstError('--prompts JSON must map column names to prompt strings, e.g. {"query": "query: "}')
    return parsed


def _chosen_options(ctx: typer.Context) -> set[str]:
    """Options the user set, on the command line or in a ``--config`` file (not left at their default)."""
    # By name: recent Typer releases carry their own copy of Click, with its own ParameterSource enum.
    return {name for name in ctx.params if ctx.get_parameter_source(name).name != "DEFAULT"}


def train_embed(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Model folder or Hub id to finetune. Default: the embedded MiniLM + EfficientNet-Lite0 Router.", rich_help_panel=MODEL, show_default=False)] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Compose a Router: text encoder (folder or Hub id).", rich_help_panel=MODEL, show_default=False)] = None,
    image_encoder: Annotated[str | None, typer.Option(help="Compose a Router: image encoder (folder, Hub id, or timm:NAME\\[@weights-file]).", rich_help_panel=MODEL, show_default=False)] = None,
    audio_encoder: Annotated[str | None, typer.Option(help="Compose a Router: audio encoder (folder or Hub id, e.g. wav2vec2).", rich_help_panel=MODEL, show_default=False)] = None,
    dim: Annotated[int | None, typer.Option(help="Shared embedding dimension of a composed Router (default: the text encoder's), or the token vector size of a new --multi-vector projection (default 128).", rich_help_panel=MODEL, show_default=False)] = None,
    multi_vector: Annotated[bool, typer.Option("--multi-vector", help="Train a late-interaction (ColBERT / ColPali-style) model from --model: one vector per token or patch, scored by MaxSim. Implied by a --model that is one.", rich_help_panel=MODEL)] = False,
    query_length: Annotated[int | None, typer.Option(help="Multi-vector: tokens kept per query (saved with the model). Default: the tokenizer's limit.", rich_help_panel=MODEL, show_default=False)] = None,
    document_length: Annotated[int | None, typer.Option(help="Multi-vector: tokens kept per document text (saved with the model). Default: the tokenizer's limit.", rich_help_panel=MODEL, show_default=False)] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels of a timm image encoder. Default: the architecture's.", rich_help_panel=MODEL, show_default=False)] = None,
    max_pixels: MaxPixelsOption = None,
    freeze: Annotated[list[str] | None, typer.Option(help="Do not train this tower of a composed Router: text, image or audio. Repeatable.", rich_help_panel=MODEL, show_default=False)] = None,
    pooling: Annotated[str | None, typer.Option(help="Override the pooling of --model: mean, cls, max, lasttoken, ...", rich_help_panel=MODEL, show_default=False)] = None,
    attn_implementation: AttnImplementationOption = "auto",
    trust_remote_code: TrustRemoteCodeOption = False,
    data: Annotated[str | None, typer.Option(help="Training pairs: jsonl/csv/parquet file or folder, save_to_disk folder, or Hub dataset id. Default: the embedded emoji data.", rich_help_panel=DATA, show_default=False)] = None,
    data_config: DataConfigOption = None,
    split: SplitOption = None,
    columns: Annotated[str | None, typer.Option(help="Comma-separated columns: anchor,positive[,negative...]. Default: all but id/label columns, in order.", rich_help_panel=DATA, show_default=False)] = None,
    media_root: MediaRootOption = None,
    eval_data: Annotated[str | None, typer.Option(help="Evaluation pairs (same forms as --data), scored as retrieval: NDCG@10 before, during and after.", rich_help_panel=DATA, show_default=False)] = None,
    eval_data_split: EvalDataSplitOption = None,
    eval_split: Annotated[float | None, typer.Option(help="Hold out this fraction of --data for evaluation instead.", rich_help_panel=DATA, show_default=False)] = None,
    skip_bad: SkipBadOption = False,
    allow_remote_media: AllowRemoteMediaOption = False,
    allow_outside_root: AllowOutsideRootOption = False,
    loss: Annotated[str, typer.Option(help="mnrl, cached-mnrl (GradCache), gist or cached-gist (guided by a frozen copy of the start model).", rich_help_panel=LOSS)] = "cached-mnrl",
    mini_batch_size: Annotated[int, typer.Option(help="GradCache mini batch of the cached losses: lower it to save memory.", rich_help_panel=LOSS)] = 32,
    mini_batch_tokens: MiniBatchTokensOption = None,
    matryoshka_dims: Annotated[str | None, typer.Option(help="Wrap the loss in MatryoshkaLoss over these comma-separated dimensions, e.g. 384,256,128,64.", rich_help_panel=LOSS, show_default=False)] = None,
    matryoshka_weights: Annotated[str | None, typer.Option(help="One comma-separated weight per Matryoshka dimension. Default: equal.", rich_help_panel=LOSS, show_default=False)] = None,
    hardness_mode: Annotated[str | None, typer.Option(help="LLaVE-style hardness weighting of negatives: in-batch, hard or all.", rich_help_panel=LOSS, show_default=False)] = None,
    hardness_strength: Annotated[float, typer.Option(help="Strength of the hardness weighting (LLaVE used 9).", rich_help_panel=LOSS)] = 0.0,
    gather_across_devices: Annotated[bool, typer.Option(help="Share in-batch negatives across processes. Always on with more than one process.", rich_help_panel=LOSS)] = False,
    lora_r: Annotated[int, typer.Option(help="Train LoRA adapters of this rank on the transformers encoders instead of all weights; 0 is off. Merged before saving.", rich_help_panel=TRAINING)] = 0,
    lora_alpha: LoraAlphaOption = None,
    lora_dropout: LoraDropoutOption = 0.0,
    epochs: EpochsOption = 1.0,
    max_steps: MaxStepsOption = -1,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch (per device): the in-batch negatives of each anchor.", rich_help_panel=TRAINING)] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate of the pretrained encoders.", rich_help_panel=TRAINING)] = 2e-5,
    head_lr: Annotated[float, typer.Option(help="Learning rate of new projection heads (a composed Router's, a --multi-vector projection).", rich_help_panel=TRAINING)] = 2e-3,
    warmup: WarmupOption = 0.1,
    bf16: Bf16Option = False,
    fp16: Fp16Option = False,
    seed: SeedOption = 42,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for activation memory (not with cached losses).", rich_help_panel=TRAINING)] = False,
    batch_sampler: Annotated[str | None, typer.Option(help="no-duplicates, no-duplicates-hashed or default. Default: no-duplicates, hashed when the data has media.", rich_help_panel=TRAINING, show_default=False)] = None,
    prompts: Annotated[str | None, typer.Option(help='A prompt for every column, or a JSON object per column, e.g. {"query": "query: "}.', rich_help_panel=TRAINING, show_default=False)] = None,
    fsdp: FsdpOption = None,
    fsdp_config: FsdpConfigOption = None,
    eval_steps: EvalStepsOption = None,
    save_steps: SaveStepsOption = None,
    dataloader_workers: DataloaderWorkersOption = None,
    resume: ResumeOption = False,
    force: ForceOption = False,
    report_to: ReportToOption = "none",
    output_dir: Annotated[str | None, typer.Option(help="Run folder: model/, metrics.json and checkpoints/. Default: runs/train-embed-<time>.", rich_help_panel=OUTPUT, show_default=False)] = None,
    dry_run: DryRunOption = False,
    gpus: GpusOption = None,
    gpu_memory: GpuMemoryOption = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    print_config: PrintConfigOption = False,
) -> None:
    """Finetune an embedding model on (anchor, positive[, negatives]) pairs and report NDCG@10 before and after.

    With no --model and no --data it runs the offline demo, whose schedule is --loss mnrl --epochs 3
    --batch-size 64 wherever the command line or --config does not set them.
    """
    from mmst_cli.core.models.lora import LoraOptions
    from mmst_cli.core.train.losses import LossOptions
    from mmst_cli.core.train.embed import TrainEmbedOptions, with_demo_recipe

    precision = precision_from_flags(bf16, fp16)
    options = TrainEmbedOptions(
        model=model,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        audio_encoder=audio_encoder,
        image_size=image_size,
        max_pixels=max_pixels,
        dim=dim,
        multi_vector=multi_vector,
        query_length=query_length,
        document_length=document_length,
        pooling=pooling,
        freeze=tuple(freeze or ()),
        trust_remote_code=trust_remote_code,
        data=data,
        data_config=data_config,
        split=split,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        media_root=media_root,
        eval_data=eval_data,
        eval_data_split=eval_data_split,
        eval_split=eval_split,
        skip_bad=skip_bad,
        allow_remote_media=allow_remote_media,
        allow_outside_root=allow_outside_root,
        loss=LossOptions(
            name=loss,
            mini_batch_size=mini_batch_size,
            mini_batch_tokens=mini_batch_tokens,
            matryoshka_dims=_number_list(matryoshka_dims, "--matryoshka-dims"),
            matryoshka_weights=_number_list(matryoshka_weights, "--matryoshka-weights", float),
            hardness_mode=hardness_mode,
            hardness_strength=hardness_strength,
            gather_across_devices=gather_across_devices,
        ),
        lora=LoraOptions(r=lora_r, alpha=lora_alpha, dropout=lora_dropout),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        warmup=warmup,
        precision=precision,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
        attn_implementation=attn_implementation,
        batch_sampler=batch_sampler,
        prompts=_prompts(prompts),
        eval_steps=eval_steps,
        save_steps=save_steps,
        dataloader_workers=dataloader_workers,
        output_dir=output_dir,
        resume=resume,
        force=force,
        report_to=report_to,
        dry_run=dry_run,
        gpus=gpus,
        gpu_memory=gpu_memory,
        fsdp=fsdp,
        fsdp_config=fsdp_config,
    )
    options, applied = with_demo_recipe(options, chosen=_chosen_options(ctx))
    ctx.params.update(applied)
    if print_config:
        print_resolved_config(ctx)
        return
    options.validate()

    from mmst_cli.core.train.embed import train_embedding_model

    result = train_embedding_model(
        options, progress_console=console, log=lambda line: console.print(line, markup=False, highlight=False)
    )
    emit_training_result(result.summary, as_json=json_output, title="retrieval on the evaluation data")
