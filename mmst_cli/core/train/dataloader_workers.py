"""Decode and preprocess training media in DataLoader worker processes, off the training loop.

Sentence Transformers' data collator turns each batch of raw cells into model inputs with
``model.preprocess``: image paths, video frame lists and video files are decoded there, and the
processor resizes, normalises and tokenises. HF image cells decode when a row is read from the
dataset, and audio clips (kept as references in training data: :mod:`mmst_cli.core.data.audio`)
decode in the collator through :class:`WorkerPreprocess`. All of it happens wherever the
DataLoader fetches batches, so with ``--dataloader-workers N`` (N > 0) it runs in N worker
processes while the training process computes the previous step; the workers persist across
epochs and each keeps :data:`PREFETCH_BATCHES` batches ready.

The data checks before training are untouched (confinement, unreadable or undecodable files,
sizes, PDF pages rendered once into the media cache): workers only read what passed them.

Workers started with ``spawn`` or ``forkserver`` (macOS and Windows, and Linux from Python 3.14)
receive the collator pickled. Its ``preprocess_fn`` would be the model's bound method, and
pickling that would send every weight to every worker; :class:`WorkerPreprocess` pickles a copy
of the model whose parameters and buffers live on the meta device instead: the modules,
processors and tokenizers preprocessing reads, and no weights. Under ``fork`` nothing is pickled.
Only batch indices go to a worker and only finished tensors come back: no cell of the data is
ever unpickled.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
from typing import Any

from mmst_cli.core.data.audio import DecodedAudio, is_audio_reference, lazy_decoder
from mmst_cli.core.errors import EXIT_FAILURE, MmstError, first_line

#: Batches each worker prepares ahead (PyTorch's default): enough to hide a slow batch without
#: holding many decoded batches in memory.
PREFETCH_BATCHES = 2

#: The most workers the default starts: decoding and resizing rarely needs more, and each worker
#: holds its own copy of the processors.
MAX_DEFAULT_WORKERS = 4


def usable_cpu_cores() -> int:
    """CPU cores this process may run on (its affinity, where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_dataloader_workers(cores: int | None = None) -> int:
    """Workers when ``--dataloader-workers`` is not given: ``min(4, cores - 1)``, and none on two
    cores or fewer. There a worker took the demo's wait for data from 2 % (12 % with two torch
    threads) of a step to under 0.3 %, yet no step got faster beyond the noise of a shared machine
    (docs/benchmarks.md), so a small machine keeps training in one process.

    Args:
        cores: CPU cores to plan for; default: :func:`usable_cpu_cores`.
    """
    cores = usable_cpu_cores() if cores is None else cores
    if cores <= 2:
        return 0
    return min(MAX_DEFAULT_WORKERS, cores - 1)


def dataloader_arguments(workers: int | None) -> dict[str, Any]:
    """``TrainingArguments`` keywords for ``workers`` DataLoader processes (``None``: the default)."""
    workers = default_dataloader_workers() if workers is None else workers
    return {
        "dataloader_num_workers": workers,
        # Starting workers anew each epoch would re-import and re-copy the processors every time.
        "dataloader_persistent_workers": workers > 0,
        "dataloader_prefetch_factor": PREFETCH_BATCHES if workers > 0 else None,
    }


def weightless_copy(model):
    """A deep copy of ``model`` whose parameters and buffers are empty tensors on the meta device.

    It preprocesses exactly as ``model`` does (same modules, processors, tokenizers and settings)
    and costs no weight memory; its forward is not meant to run, and nothing in a worker runs it.
    """
    import torch
    from torch.nn.utils import parametrize

    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(tensor, device="meta")
        if isinstance(tensor, torch.nn.Parameter):
            empty = torch.nn.Parameter(empty, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = empty  # deepcopy takes these instead of copying the weights
    weightless = copy.deepcopy(model, memo)
    for module in list(weightless.modules()):
        # Parametrized modules (weight norm in wav2vec2's positional convolution) refuse to be
        # pickled, and hooks are often local functions, which cannot be: neither takes part in
        # preprocessing. Each parametrized tensor becomes a plain meta parameter of the copy (on
        # meta tensors computing it costs nothing). Not with remove_parametrizations: it edits the
        # parametrized class, which the copy shares with the model being trained.
        if parametrize.is_parametrized(module):
            values = {name: parametrization() for name, parametrization in module.parametrizations.items()}
            module.__class__ = type(module).__bases__[0]
            del module._modules["parametrizations"]
            for name, value in values.items():
                module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        for name, value in vars(module).items():
            if name.endswith("hooks") and isinstance(value, dict):
                value.clear()
    return weightless


class WorkerPreprocess:
    """The collator's ``preprocess_fn`` in training: decodes audio references, then ``model.preprocess``;
    pickles without the model's weights (see the module docstring).

    Args:
        model: The model being trained; in this process calls go straight to its ``preprocess``.
        audio: Decodes the audio references of the training rows (``None``: the data has none).
    """

    def __init__(self, model, audio: DecodedAudio | None = None) -> None:
        self.model = model
        self.audio = audio

    def __call__(self, inputs: list, **kwargs):
        if self.audio is not None and inputs and is_audio_reference(inputs[0]):
            inputs = [self.audio.decode(cell) for cell in inputs]
        return self.model.preprocess(inputs, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled here rather than by the caller, so that a model that cannot be sent to a worker
        # is a one-line error naming the way out instead of a traceback from inside the DataLoader.
        try:
            model = pickle.dumps(weightless_copy(self.model))
        except Exception as error:
            raise MmstError(
                f"--dataloader-workers: the model cannot be sent to worker processes started with "
                f"{multiprocessing.get_start_method()!r} ({first_line(error)}); pass --dataloader-workers 0",
                EXIT_FAILURE,
            ) from error
        return {"model": model, "audio": self.audio}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = pickle.loads(state["model"])  # the bytes __getstate__ made in the training process
        self.audio = state["audio"]


def training_rows(dataset) -> tuple[Any, DecodedAudio | None]:
    """The rows to hand the trainer, and the decoder of their audio (``None`` without lazy audio).

    Audio stays undecoded in these rows and :class:`WorkerPreprocess` decodes it per batch: the
    batch sampler reads every row once to hash it for duplicate checks, which would otherwise
    decode every clip in the training process before the first step.
    """
    decoder = lazy_decoder(dataset)
    return (dataset, None) if decoder is None else (dataset.with_format(None), decoder)


def preprocess_in_workers(trainer, audio: DecodedAudio | None = None) -> None:
    """Give ``trainer``'s collator a :class:`WorkerPreprocess` (needed with workers or lazy audio)."""
    if audio is not None or trainer.args.dataloader_num_workers > 0:
        trainer.data_collator.preprocess_fn = WorkerPreprocess(trainer.model, audio)
