"""``mmst train-rerank``: train a reranker (text or multimodal) and report reranking metrics.

Examples:

    # The offline demo: a cross-encoder from the packaged MiniLM on emoji-name pairs, NDCG@10 before and after
    $ mmst train-rerank

    # A VLM reads each (query, document) pair as a chat; score = logit("1") - logit("0")
    $ mmst train-rerank --model Qwen/Qwen3-VL-2B-Instruct --data pairs.jsonl --eval-split 0.1 --bf16

    # The same LM judgement through a last-token Dense head (no LM head at run time)
    $ mmst train-rerank --model ./qwen3-vl --arch pooling-dense --data labelled.parquet --loss lambda

    # The classic text cross-encoder from an encoder, on (query, document, label) rows
    $ mmst train-rerank --model microsoft/MiniLM-L12-H384-uncased --arch classifier --data qd.jsonl

    # Every option from a YAML file, one overridden; see the resolved configuration first
    $ mmst train-rerank --config examples/rerank-qwen3-vl.yaml --epochs 2 --print-config

    # Will it fit? Peak memory estimate and suggestions, without training
    $ mmst train-rerank --config examples/rerank-qwen3-vl.yaml --dry-run
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

MODEL = MODEL_PANEL
DATA = DATA_PANEL
LOSS = LOSS_PANEL
TRAINING = TRAINING_PANEL
OUTPUT = "Output"


def train_rerank(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Checkpoint or saved reranker to train: a causal LM / VLM, an encoder (BERT, MiniLM), a CrossEncoder folder (training continues), or a train-embed run folder (its text tower). Folder or Hub id. Default: the packaged all-MiniLM-L6-v2 as a classifier.", rich_help_panel=MODEL, show_default=False)] = None,
    arch: Annotated[str, typer.Option(help="logit-score (LM judgement: logit(true) - logit(false)), pooling-dense (last token + Dense initialised from the LM head), classifier (encoder + 1-label head), or auto: continue a saved reranker, logit-score for LM/VLM checkpoints, else classifier.", rich_help_panel=MODEL)] = "auto",
    true_token: Annotated[str, typer.Option(help="Answer token meaning relevant (logit-score, pooling-dense); one token, e.g. 1 or yes.", rich_help_panel=MODEL)] = "1",
    false_token: Annotated[str, typer.Option(help="Answer token meaning not relevant; one token, e.g. 0 or no.", rich_help_panel=MODEL)] = "0",
    prompt: Annotated[str | None, typer.Option(help="Instruction: a system message for chat models, a query prefix for classifiers; saved with the model. Default: keep a saved reranker's; for new LM rerankers, a judge-relevance instruction naming the answer tokens. \"\" for none.", rich_help_panel=MODEL, show_default=False)] = None,
    pair_template: Annotated[str, typer.Option(help="auto: keep a chat template that renders the 'query'/'document' roles, else fold each pair into one user message ('<Query>: ... <Document>: ...'); native: never adapt; user: always fold.", rich_help_panel=MODEL)] = "auto",
    max_pixels: MaxPixelsOption = None,
    attn_implementation: AttnImplementationOption = "auto",
    trust_remote_code: TrustRemoteCodeOption = False,
    data: Annotated[str | None, typer.Option(help="Training data: (query, document, label) rows, (query, positive, negatives...) pairs, or listwise (query, [documents], [labels]); jsonl/csv/parquet file or folder, save_to_disk folder, or Hub dataset id. Default (with no --model): the embedded emoji-name demo pairs.", rich_help_panel=DATA, show_default=False)] = None,
    data_config: DataConfigOption = None,
    split: SplitOption = None,
    columns: Annotated[str | None, typer.Option(help="Comma-separated content columns: query,document (pointwise), query,positive[,negative...] (pairs) or query,documents (listwise). Default: all but id/label columns, in order.", rich_help_panel=DATA, show_default=False)] = None,
    label_column: Annotated[str | None, typer.Option(help="Column of labels (a number per row, or a list per listwise row). Default: label, labels, score or scores.", rich_help_panel=DATA, show_default=False)] = None,
    negatives_per_positive: Annotated[int | None, typer.Option(help="Pair data: keep the first N negative columns of each row. Default: all.", rich_help_panel=DATA, show_default=False)] = None,
    media_root: MediaRootOption = None,
    eval_data: Annotated[str | None, typer.Option(help="Evaluation data (same forms as --data): each query's candidates are reranked; NDCG@10, MRR@10, MAP before and after.", rich_help_panel=DATA, show_default=False)] = None,
    eval_data_split: EvalDataSplitOption = None,
    eval_split: Annotated[float | None, typer.Option(help="Hold out this fraction of the training queries (with all their candidates) for evaluation instead.", rich_help_panel=DATA, show_default=False)] = None,
    skip_bad: SkipBadOption = False,
    allow_remote_media: AllowRemoteMediaOption = False,
    allow_outside_root: AllowOutsideRootOption = False,
    loss: Annotated[str, typer.Option(help="bce (pointwise), cmnrl (query vs positive, hard and in-batch negatives; GradCache), or the listwise lambda, listnet, plistmle. Data is reshaped to fit.", rich_help_panel=LOSS)] = "bce",
    mini_batch_size: Annotated[int, typer.Option(help="Pairs per forward pass of cmnrl and the listwise losses: lower it to save memory.", rich_help_panel=LOSS)] = 16,
    mini_batch_tokens: MiniBatchTokensOption = None,
    lora_r: Annotated[int, typer.Option(help="Train LoRA adapters of this rank instead of all weights; 0 is off. Merged before saving.", rich_help_panel=TRAINING)] = 0,
    lora_alpha: LoraAlphaOption = None,
    lora_dropout: LoraDropoutOption = 0.0,
    epochs: EpochsOption = 1.0,
    max_steps: MaxStepsOption = -1,
    batch_size: Annotated[int, typer.Option(help="Training rows per batch (per device): pairs for bce, queries for cmnrl and listwise losses.", rich_help_panel=TRAINING)] = 16,
    lr: Annotated[float, typer.Option(help="Learning rate.", rich_help_panel=TRAINING)] = 2e-5,
    warmup: WarmupOption = 0.1,
    bf16: Bf16Option = False,
    fp16: Fp16Option = False,
    seed: SeedOption = 42,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for activation memory (not with cmnrl).", rich_help_panel=TRAINING)] = False,
    fsdp: FsdpOption = None,
    fsdp_config: FsdpConfigOption = None,
    eval_steps: EvalStepsOption = None,
    save_steps: SaveStepsOption = None,
    dataloader_workers: DataloaderWorkersOption = None,
    resume: ResumeOption = False,
    force: ForceOption = False,
    report_to: ReportToOption = "none",
    output_dir: Annotated[str | None, typer.Option(help="Run folder: model/, metrics.json and checkpoints/. Default: runs/train-rerank-<time>.", rich_help_panel=OUTPUT, show_default=False)] = None,
    dry_run: DryRunOption = False,
    gpus: GpusOption = None,
    gpu_memory: GpuMemoryOption = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    print_config: PrintConfigOption = False,
) -> None:
    """Train a reranker on pointwise, pair or listwise data and report NDCG@10, MRR@10 and MAP before and after.

    With no --model and no --data it runs the offline demo: the packaged all-MiniLM-L6-v2 with a new
    head learns to find an emoji name from its shuffled words among look-alike names.
    """
    from mmst_cli.core.models.lora import LoraOptions
    from mmst_cli.core.train.rerank import TrainRerankOptions

    precision = precision_from_flags(bf16, fp16)
    options = TrainRerankOptions(
        model=model,
        arch=arch,
        true_token=true_token,
        false_token=false_token,
        prompt=prompt,
        pair_template=pair_template,
        max_pixels=max_pixels,
        trust_remote_code=trust_remote_code,
        data=data,
        data_config=data_config,
        split=split,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        label_column=label_column,
        negatives_per_positive=negatives_per_positive,
        media_root=media_root,
        eval_data=eval_data,
        eval_data_split=eval_data_split,
        eval_split=eval_split,
        skip_bad=skip_bad,
        allow_remote_media=allow_remote_media,
        allow_outside_root=allow_outside_root,
        loss=loss,
        mini_batch_size=mini_batch_size,
        mini_batch_tokens=mini_batch_tokens,
        lora=LoraOptions(r=lora_r, alpha=lora_alpha, dropout=lora_dropout),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        precision=precision,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
        attn_implementation=attn_implementation,
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
    if print_config:
        print_resolved_config(ctx)
        return
    options.validate()

    from mmst_cli.core.train.rerank import train_reranker

    result = train_reranker(
        options, progress_console=console, log=lambda line: console.print(line, markup=False, highlight=False)
    )
    emit_training_result(result.summary, as_json=json_output, title="reranking each evaluation query's candidates")
