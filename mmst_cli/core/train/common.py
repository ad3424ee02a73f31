"""What every mmst training command shares: run options, trainer arguments, the run folder, progress.

``train-embed`` and ``train-rerank`` differ in models, data shapes, losses and metrics; the
schedule, precision, checkpoints, resume, distributed launch, progress display and the atomic
writing of the final model and ``metrics.json`` are the same and live here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mmst_cli.core.data.documents import RenderSettings
from mmst_cli.core.data.tables import PairData
from mmst_cli.core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, MmstError
from mmst_cli.core.models.lora import LoraOptions
from mmst_cli.core.models.portable import save_model
from mmst_cli.core.outputs import atomic_path, existing_ancestor
from mmst_cli.core.train.dataloader_workers import dataloader_arguments
from mmst_cli.core.train.fsdp import fsdp_training_arguments, full_weights_in_place, sharding_summary, validate_fsdp
from mmst_cli.core.train.run_folder import latest_intact_checkpoint, owned_run_folder

PRECISIONS = ("fp32", "bf16", "fp16")
REPORT_TARGETS = ("none", "tensorboard")
#: Checkpoint interval when --save-steps is not given (the transformers default).
DEFAULT_SAVE_STEPS = 500


@dataclass
class TrainingOptions:
    """The options every training command has; commands subclass it with their own.

    Attributes mirror the flags: ``epochs``, ``max_steps`` (overrides epochs when > 0),
    ``batch_size`` (per device), ``lr``, ``warmup`` (fraction of steps), ``precision`` (fp32, bf16,
    fp16), ``seed``, ``gradient_checkpointing``, ``attn_implementation``, ``lora``, ``eval_steps``,
    ``save_steps``, ``output_dir``, ``resume``, ``force`` (resume even when the options or data differ
    from the run's start), ``report_to``, ``dry_run`` (plan memory instead of
    training), ``gpus`` and ``gpu_memory`` (GiB each: the GPUs ``--dry-run`` also plans for),
    ``fsdp`` (a sharding strategy, see :mod:`mmst_cli.core.train.fsdp`) and ``fsdp_config`` (a JSON
    file of the Trainer's ``fsdp_config`` keys); the data, ``data`` (``data_config``,
    ``split``, ``columns``) and ``eval_data`` (``eval_data_split``) or an ``eval_split`` fraction;
    and the data-safety switches ``media_root``, ``skip_bad``, ``allow_remote_media`` and
    ``allow_outside_root``.
    """

    trust_remote_code: bool = False
    data: str | None = None
    data_config: str | None = None
    split: str | None = None
    columns: list[str] | None = None
    eval_data: str | None = None
    eval_data_split: str | None = None
    eval_split: float | None = None
    media_root: str | None = None
    skip_bad: bool = False
    allow_remote_media: bool = False
    allow_outside_root: bool = False
    lora: LoraOptions = field(default_factory=LoraOptions)
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 2e-5
    warmup: float = 0.1
    precision: str = "fp32"
    seed: int = 42
    gradient_checkpointing: bool = False
    attn_implementation: str = "auto"
    eval_steps: int | None = None
    save_steps: int | None = None
    output_dir: str | None = None
    resume: bool = False
    force: bool = False
    report_to: str = "none"
    dry_run: bool = False
    gpus: int | None = None
    gpu_memory: float | None = None
    fsdp: str | None = None
    fsdp_config: str | None = None
    #: Processes that decode and preprocess media for training (``--dataloader-workers``); ``None``
    #: takes :func:`~mmst_cli.core.train.dataloader_workers.default_dataloader_workers`.
    dataloader_workers: int | None = None

    #: Names the default run folder: ``runs/<command>-<time>``.
    command = "train"

    def validate_schedule(self) -> None:
        """Reject bad values of the shared options before any model or data is loaded."""
        for name in ("batch_size", "epochs", "lr"):
            if getattr(self, name) <= 0:
                raise MmstError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("eval_steps", "save_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise MmstError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.dataloader_workers is not None and self.dataloader_workers < 0:
            raise MmstError(
                f"--dataloader-workers must be 0 (load in the training process) or more, got {self.dataloader_workers}"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            # transformers reads 0 as "use --epochs" and would train; -1 is the "off" default.
            raise MmstError(f"--max-steps must be a positive number of steps, got {self.max_steps}")
        if not 0 <= self.warmup < 1:
            raise MmstError(f"--warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.precision not in PRECISIONS:
            raise MmstError(f"precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
        if self.report_to not in REPORT_TARGETS:
            raise MmstError(f"--report-to {self.report_to!r} is unknown; use one of {', '.join(REPORT_TARGETS)}")
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise MmstError("--report-to tensorboard needs the 'tensorboard' package: pip install tensorboard")
        self.lora.validate()
        if self.force and not self.resume:
            raise MmstError("--force only applies to --resume (continue a run started with other settings)")
        if self.lora.enabled and self.resume:
            raise MmstError("--resume is not supported with --lora-r yet: checkpoints hold adapters only")
        if self.gpus is not None and (self.gpus <= 0 or not self.dry_run):
            raise MmstError(f"--gpus plans a --dry-run for that many GPUs; give a positive number with --dry-run, got {self.gpus}")
        if self.gpu_memory is not None and (self.gpu_memory <= 0 or self.gpus is None):
            raise MmstError(f"--gpu-memory is the GiB of each GPU --gpus plans for; give a positive number with --gpus, got {self.gpu_memory}")
        validate_fsdp(self, distributed_launch=distributed_launch())

    def media_options(self, audio_sampling_rate: int | None) -> dict[str, Any]:
        """How the data loaders treat media (see :func:`mmst_cli.core.data.tables.prepare_media`)."""
        return {
            "media_root": Path(self.media_root).expanduser() if self.media_root else None,
            "audio_sampling_rate": audio_sampling_rate,
            "skip_bad": self.skip_bad,
            "allow_remote_media": self.allow_remote_media,
            "allow_outside_root": self.allow_outside_root,
            # PDF pages render within the image budget both training commands take as --max-pixels.
            "pdf": RenderSettings(max_pixels=getattr(self, "max_pixels", None)),
        }

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        return Path("runs") / datetime.now().strftime(f"{self.command}-%Y%m%d-%H%M%S")

    def as_json(self) -> dict[str, Any]:
        """Every option as JSON-ready data, for ``metrics.json``."""
        values = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def world_size() -> int:
    """Number of processes in this launch (``torchrun`` / ``accelerate launch`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed_launch() -> bool:
    """Whether ``torchrun`` / ``accelerate launch`` started this process (they set LOCAL_RANK), even a launch of one."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_train_and_eval(options: TrainingOptions, load: Callable[..., Any], split_off: Callable[..., Any]):
    """Read ``--data`` and its evaluation part: ``--eval-data``, an ``--eval-split`` hold-out, or none.

    Args:
        options: The run's options.
        load: Reads one dataset: ``load(reference, config=..., split=...)``.
        split_off: Holds out a fraction: ``split_off(train, fraction, seed) -> (train, held_out)``.
    """
    train = load(options.data, config=options.data_config, split=options.split)
    if options.eval_data:
        return train, load(options.eval_data, config=options.data_config, split=options.eval_data_split)
    if options.eval_split:
        return split_off(train, options.eval_split, options.seed)
    return train, None


def planned_steps(options: TrainingOptions, rows: int) -> int:
    """Optimiser steps the run will take (``max_steps``, or epochs over ``rows``)."""
    if options.max_steps > 0:
        return options.max_steps
    per_epoch = max(1, math.ceil(rows / (options.batch_size * world_size())))
    return max(1, math.ceil(options.epochs * per_epoch))


def _precision_placement(precision: str) -> dict[str, Any]:
    """Where bf16 runs: transformers refuses bf16 without a bf16-capable accelerator unless told to
    train on the CPU, which is what a machine without one does anyway (with CPU autocast). A CUDA
    GPU without bf16 (before Ampere) is refused rather than silently left idle."""
    if precision != "bf16":
        return {}
    from transformers.utils import is_torch_bf16_gpu_available

    if is_torch_bf16_gpu_available():
        return {}
    if has_cuda():
        import torch

        raise MmstError(f"--bf16: {torch.cuda.get_device_name()} has no bfloat16 support; use --fp16")
    return {"use_cpu": True}


def _cpu_launch_placement() -> dict[str, Any]:
    """A distributed launch on CPUs must say it trains on the CPU: otherwise accelerate sees no
    accelerator, treats every process as a run of its own (each on its share of the data, with
    nothing averaging their gradients) and the Trainer neither wraps DDP nor allows FSDP."""
    return {"use_cpu": True} if distributed_launch() and not has_cuda() else {}


def common_training_arguments(options: TrainingOptions, checkpoints: Path, *, rows: int, has_eval: bool, model) -> dict[str, Any]:
    """Keyword arguments for a Sentence Transformers / Cross Encoder ``TrainingArguments``
    (``model``, as it will train, names the layers ``--fsdp`` shards one by one)."""
    eval_steps = options.eval_steps if has_eval else None
    # Passed only when asked for: transformers warns about the old name whenever it is set.
    checkpointing = {"gradient_checkpointing": True} if options.gradient_checkpointing else {}
    return dict(
        **checkpointing,
        **{**_precision_placement(options.precision), **_cpu_launch_placement()},
        **fsdp_training_arguments(options, model),
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        learning_rate=options.lr,
        warmup_steps=options.warmup,  # a float below 1 is a ratio of the total steps
        bf16=options.precision == "bf16",
        fp16=options.precision == "fp16",
        seed=options.seed,
        data_seed=options.seed,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=options.save_steps or DEFAULT_SAVE_STEPS,
        save_total_limit=2,
        # About 20 loss readings per run, for metrics.json's loss curve.
        logging_steps=max(1, planned_steps(options, rows) // 20),
        report_to=options.report_to,
        disable_tqdm=True,
        dataloader_pin_memory=has_cuda(),
        **dataloader_arguments(options.dataloader_workers),
        dataloader_drop_last=world_size() > 1,
        # NCCL needs GPUs; a CPU launch under torchrun / accelerate uses gloo.
        ddp_backend=None if has_cuda() or world_size() == 1 else "gloo",
    )


def run_in_owned_folder(options: TrainingOptions, train: Callable[..., Any], *, progress_console, log) -> Any:
    """Validate ``options``, then run ``train(options, output_dir, progress_console, log)`` in a folder it owns.

    Only the main process logs. ``--dry-run`` plans without writing, so it needs no folder of its own.
    """
    options.validate()
    if not is_main_process():
        log = silent
    if options.dry_run:
        return train(options, options.resolved_output_dir(), progress_console, log)
    with owned_run_folder(options, main_process=is_main_process()) as output_dir:
        result = train(options, output_dir, progress_console, log)
    leave_process_group()
    return result


def leave_process_group() -> None:
    """Destroy the launch's process group (if the trainer made one) once this process's run succeeded.

    Left to the interpreter's exit, gloo's worker threads can outlive it and kill a finished process
    with SIGABRT ("terminate called without an active exception", pytorch/pytorch#190489), which
    torchrun reports as a failed launch. Not after a failure: the other processes may still be in a
    collective, and destroying the group then can hang them.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ensure_disk_space(folder: Path, model, flag: str = "--output-dir") -> None:
    """Refuse to start when ``folder``'s disk cannot hold a checkpoint (weights + Adam state, ~4x)."""
    needed = 4 * sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    free = shutil.disk_usage(existing_ancestor(folder)).free
    if free < needed:
        raise MmstError(
            f"{flag} {folder} has {free / 2**30:.1f} GiB free, but a checkpoint of this model needs about "
            f"{needed / 2**30:.1f} GiB; free some space or choose another folder",
            EXIT_FAILURE,
        )


def video_files_decodable() -> bool:
    """Whether transformers' video processors can read video files here (as they choose a decoder)."""
    try:
        from transformers.utils.import_utils import is_torchcodec_usable
        from transformers.video_utils import is_torchvision_video_decoding_available
    except ImportError:  # a transformers without these checks: only an importable torchcodec can tell
        return importlib.util.find_spec("torchcodec") is not None
    return is_torchcodec_usable(decode="video") or is_torchvision_video_decoding_available()


def check_modalities(model, data: PairData) -> None:
    """Every data column must hold a modality the model takes (and video files need a decoder)."""
    for column, modality in data.column_modalities.items():
        holds_files = column not in data.frame_list_columns
        if modality == "video" and holds_files and not video_files_decodable():
            raise MmstError(
                f"data {data.source!r}: column {column!r} holds video files, but transformers cannot decode video "
                "here (it needs torchcodec and FFmpeg's libraries: pip install torchcodec); "
                "or give each video as a list of frame images"
            )
        if not model.supports(modality):
            raise MmstError(
                f"data {data.source!r}: column {column!r} holds {modality}, but the model takes "
                f"{', '.join(str(m) for m in model.modalities)}; choose another model or --columns"
            )


def train_with_progress(
    trainer, options: TrainingOptions, console=None, log: Callable[[str], None] | None = None
) -> tuple[Any, float]:
    """Run ``trainer.train`` with mmst's progress bar; returns the train output and seconds taken.

    ``--resume`` continues from the newest intact checkpoint; newer broken ones are named in ``log``.
    Ctrl-C (in a single-process run) finishes the current step, saves a resumable checkpoint and
    raises :class:`MmstError` with exit status 130; a second Ctrl-C stops at once. An out-of-memory
    error becomes a one-line :class:`MmstError` (exit 1) with what to lower.
    """
    from transformers.trainer_callback import PrinterCallback

    from mmst_cli.core.progress import RichProgressCallback

    resume_from = None
    if options.resume:
        checkpoint, skipped = latest_intact_checkpoint(Path(trainer.args.output_dir))
        for note in skipped:
            (log or silent)(f"warning: {note}; resuming from {checkpoint.name}")
        resume_from = str(checkpoint)

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts on stdout, which is for --json
    trainer.add_callback(RichProgressCallback(console))
    stopper = _CheckpointOnInterrupt()
    trainer.add_callback(stopper)
    started = time.perf_counter()
    try:
        with stopper.handling_sigint(enabled=world_size() == 1):
            output = trainer.train(resume_from_checkpoint=resume_from)
    except (RuntimeError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "out of memory" in message.lower():
            raise MmstError(
                f"out of memory while training ({message}); lower --batch-size or --mini-batch-size, "
                "or use --bf16", EXIT_FAILURE
            ) from error
        raise
    if stopper.requested:
        raise MmstError(
            f"interrupted at step {trainer.state.global_step}: checkpoint saved in {trainer.args.output_dir}; "
            "run the same command with --resume to continue",
            EXIT_INTERRUPTED,
        )
    return output, time.perf_counter() - started


class _CheckpointOnInterrupt(TrainerCallback):
    """Turns the first SIGINT into "save a checkpoint after this step, then stop".

    Distributed runs keep the default behaviour (every rank would have to agree on the step), and
    resume from the last ``--save-steps`` checkpoint instead.
    """

    def __init__(self) -> None:
        self.requested = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    @contextmanager
    def handling_sigint(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            sys.stderr.write("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)\n")

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def train_summary(trainer, output, runtime: float) -> dict[str, Any]:
    """Steps, epochs, time, throughput and the loss curve of a finished run (and its sharding under FSDP)."""
    sharding = sharding_summary(trainer)
    return {
        **({"fsdp": sharding} if sharding else {}),
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 4),
        "runtime_s": round(runtime, 2),
        "samples_per_s": round(output.metrics.get("train_samples_per_second", 0.0), 3),
        "mean_loss": round(float(output.training_loss), 6),
        "loss_curve": [
            [entry["step"], round(float(entry["loss"]), 6)] for entry in trainer.state.log_history if "loss" in entry
        ],
    }


def save_run(model, model_dir: Path, output_dir: Path, summary: dict[str, Any], full_weights: dict[str, Any] | None = None) -> None:
    """Write the model (loadable without mmst: :func:`save_model`) and ``metrics.json`` under temporary
    names, then rename (main process only). ``full_weights``: the state dict gathered from an FSDP
    run's shards (:func:`mmst_cli.core.train.fsdp.gathered_weights`), saved in place of the shards."""
    if not is_main_process():
        return
    # A full disk mid-save leaves neither a half-written model nor its temporary folder.
    with atomic_path(model_dir) as temporary:
        if full_weights is None:
            save_model(model, temporary)
        else:
            with full_weights_in_place(model, full_weights):
                save_model(model, temporary)
    with atomic_path(output_dir / "metrics.json") as pending:
        pending.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf8")


def silent(_line: str) -> None:
    """The log of processes other than the main one."""
