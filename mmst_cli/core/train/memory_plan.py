"""Estimate a training run's peak memory before it starts (``--dry-run``), and say what would fit.

The estimate adds up, for the device the run would use:

- **what is already resident** once the model and data are loaded: on a CPU, the process's current
  memory (libraries, weights, data); on a GPU, the weights plus the CUDA context;
- **gradients** (4 bytes per trainable parameter) and **AdamW state** (8 bytes per trainable
  parameter): frozen towers and LoRA shrink both;
- **activations**, measured rather than guessed: one forward pass per column of the largest of a
  few sample rows, in train mode and the run's precision, counting every tensor autograd saves for
  the backward pass (parameters excluded). They scale with the samples in flight: the batch for
  plain losses, the GradCache mini batch for cached ones, and every column (anchor, positive,
  negatives) of each sample. Every Router route is in memory at once, since its weights are.
- **forward buffers**: the same pass also tracks every tensor alive during the forward (a
  ``TorchDispatchMode``), so the peak beyond the saved activations is known: the intermediates a
  layer frees before the next one runs, and every activation of a frozen tower (nothing is saved
  for it, but it still runs). Only one column is in its forward pass at a time, so the largest
  column's excess counts, times the samples in flight.
- **GradCache buffers** of a cached loss: every embedding of the batch and its gradient, in
  float32; a multi-vector model's embedding is one vector per token or image patch.

With ``gpus`` the plan also spreads the run over that many GPUs under DDP and under FSDP and
finds the smallest setup that fits (:mod:`.gpu_plan`).

``bench/memory_plan.py`` compares the estimate with measured peaks (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mmst_cli.core.train.gpu_plan import CUDA_OVERHEAD_BYTES

#: Rows sampled to find the largest inputs (longest texts, biggest images) of each column.
SAMPLE_ROWS = 8
#: The tasks of a multi-vector model's sides: its forward masks (and may expand queries) by them.
RETRIEVAL_TASKS = ("query", "document")


@dataclass
class MemoryPlan:
    """A peak-memory estimate and what to change when it does not fit.

    Attributes:
        device: ``cpu`` or ``cuda:N``.
        components: Bytes per part (resident, gradients, optimizer, activations, GradCache buffers).
        available: Bytes the device has for this run.
        samples_in_flight: Samples whose activations are alive at once.
        suggestions: Changes that would make it fit, most effective first (empty when it fits).
        gpu_plan: Per-GPU memory for ``--gpus N`` under DDP and FSDP (:func:`.gpu_plan.plan_gpus`);
            when the GPUs' memory is known, whether the run fits is decided there.
    """

    device: str
    components: dict[str, int]
    available: int
    samples_in_flight: int
    per_sample_activation_bytes: int
    per_sample_forward_bytes: int = 0
    suggestions: list[str] = field(default_factory=list)
    gpu_plan: dict[str, Any] | None = None

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def fits(self) -> bool:
        if self.gpu_plan and self.gpu_plan["fits"] is not None:
            return self.gpu_plan["fits"]
        return self.total <= self.available

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "components_bytes": self.components,
            "total_bytes": self.total,
            "available_bytes": self.available,
            "fits": self.fits,
            "samples_in_flight": self.samples_in_flight,
            "per_sample_activation_bytes": self.per_sample_activation_bytes,
            "per_sample_forward_bytes": self.per_sample_forward_bytes,
            "suggestions": self.suggestions,
            "gpus": self.gpu_plan,
        }


def _process_rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def _available(device: str) -> int:
    import psutil
    import torch

    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return int(psutil.virtual_memory().available + _process_rss())


class _LiveBytes:
    """Bytes of tensors alive during a forward pass, and their peak (parameters excluded).

    Tensor storages are counted once, when an operation first returns them, and released when the
    last tensor returned on them is collected.
    """

    def __init__(self, excluded: set[int]) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        self.excluded = excluded
        self.references: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                output = func(*args, **(kwargs or {}))
                tracker.track(output)
                return output

        self.mode = Mode()

    def track(self, output) -> None:
        import weakref

        import torch
        from torch.utils._pytree import tree_flatten

        for tensor in tree_flatten(output)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            pointer = storage.data_ptr()
            if pointer == 0 or pointer in self.excluded:
                continue
            if pointer not in self.references:
                self.references[pointer] = 0
                self.sizes[pointer] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self.references[pointer] += 1
            weakref.finalize(tensor, self.release, pointer)

    def release(self, pointer: int) -> None:
        self.references[pointer] -= 1
        if not self.references[pointer]:
            del self.references[pointer]
            self.live -= self.sizes.pop(pointer)


def _activation_bytes(model, value, task: str | None, precision: str, embedding_output: str | None) -> tuple[int, int, int]:
    """``(saved, forward peak, embedding values)``: bytes autograd keeps for the backward pass of
    one input, the most bytes alive at once during its forward pass (both without parameters), and
    how many values the ``embedding_output`` it yields holds (0 when ``None``)."""
    import contextlib

    import torch

    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    seen: set[int] = set()
    saved = 0

    def pack(tensor):
        nonlocal saved
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameters and pointer not in seen:
            seen.add(pointer)
            saved += storage.nbytes()
        return tensor

    device = model.device
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision in ("bf16", "fp16")
        else contextlib.nullcontext()
    )
    features = model.preprocess([value], task=task)
    features = {key: item.to(device) if hasattr(item, "to") else item for key, item in features.items()}
    # The inputs exist before the pass and are counted in what is resident; views of them are not new memory.
    inputs = {item.untyped_storage().data_ptr() for item in features.values() if isinstance(item, torch.Tensor)}
    live = _LiveBytes(parameters | inputs)
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast, live.mode:
            # A multi-vector model's forward takes the side's task as its encode passes it; a
            # Router's modality task only chose the preprocessing.
            output = model(features, task=task) if task in RETRIEVAL_TASKS else model(features)
        embedding_values = output[embedding_output].numel() if embedding_output else 0
        del output
    finally:
        model.train(was_training)
    return saved, max(saved, live.peak), embedding_values


def _largest_rows(dataset, column: str) -> list[Any]:
    """The largest of a few sample values of ``column``: the longest text, clip or video."""
    from mmst_cli.core.encode.encoding import input_size

    values = [dataset[index][column] for index in range(min(SAMPLE_ROWS, len(dataset)))]
    return sorted(values, key=lambda value: -input_size(value))[:1]


def sample_inputs(data, *, is_router: bool, multi_vector: bool = False) -> list[tuple[Any, str | None]]:
    """One input per column of a pair dataset, the largest of a few rows, with its task: the
    modality for a Router; for a multi-vector model ``query`` for the first column and ``document``
    for the rest, as its trainer assigns them (each side has its own length)."""

    def task(position: int, modality: str) -> str | None:
        if multi_vector:
            return RETRIEVAL_TASKS[min(position, 1)]
        return modality if is_router else None

    return [
        (_largest_rows(data.dataset, column)[0], task(position, modality))
        for position, (column, modality) in enumerate(data.column_modalities.items())
    ]


def gpu_plan_options(options) -> dict[str, Any]:
    """:func:`plan_training_memory`'s GPU arguments from a run's ``--gpus``, ``--gpu-memory`` (GiB) and ``--fsdp``."""
    memory = int(options.gpu_memory * 2**30) if options.gpu_memory else None
    return {"gpus": options.gpus, "gpu_memory": memory, "fsdp": bool(options.fsdp)}


def plan_training_memory(model, inputs: list[tuple[Any, str | None]], *, batch_size: int, mini_batch_size: int | None,
                         precision: str, modalities: Iterable[str] = (), gradient_checkpointing: bool = False,
                         gradcache_output: str | None = None, gpus: int | None = None,
                         gpu_memory: int | None = None, fsdp: bool = False) -> MemoryPlan:  # fmt: skip
    """Estimate the peak memory of training ``model`` (see the module docstring).

    Args:
        model: The model as training would start it (frozen towers frozen, LoRA applied).
        inputs: What one training sample sends through the model, one forward each, with the
            Router task (``None`` for no Router): anchor, positive and negatives for an embedder
            (:func:`sample_inputs`), a (query, document) pair for a reranker.
        batch_size: Samples per step (per device).
        mini_batch_size: Samples per forward pass of a cached or listwise loss; ``None`` when the
            whole batch goes through at once.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        modalities: The data's modalities; images or videos for a VLM make a lower
            ``--max-pixels`` one of the suggestions.
        gradient_checkpointing: Activations are recomputed; only about one layer's stay alive.
        gradcache_output: The model output a GradCache loss keeps, with its gradient, for every
            input of the batch: ``sentence_embedding``, or ``token_embeddings`` for a multi-vector
            model (one vector per token, so long documents and images weigh more); ``None``
            without GradCache.
        gpus: Also plan per-GPU memory for this many GPUs under DDP and FSDP (``None``: not).
        gpu_memory: Bytes each of those GPUs has. Default: this machine's GPU's free memory;
            unknown (no fit verdict for the GPUs) on a machine without one.
        fsdp: The run shards with FSDP, so its fit is the FSDP one.
    """
    import torch

    # Plan on the device the trainer would train on.
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    device = str(model.device)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    per_sample = 0
    forward_excess = 0
    embedding_values = 0
    for value, task in inputs:
        saved, peak, values = _activation_bytes(model, value, task, precision, gradcache_output)
        per_sample += saved
        forward_excess = max(forward_excess, peak - saved)
        embedding_values += values
    if gradient_checkpointing:
        # Only layer inputs stay alive between layers; a rough third of the activations.
        per_sample //= 3
    in_flight = min(batch_size, mini_batch_size) if mini_batch_size else batch_size
    components = {
        "resident": weights + CUDA_OVERHEAD_BYTES if device.startswith("cuda") else _process_rss(),
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,
        "activations": per_sample * in_flight,
        "forward_buffers": forward_excess * in_flight,
    }
    if gradcache_output:
        components["gradcache_buffers"] = 2 * 4 * batch_size * embedding_values
    plan = MemoryPlan(device, components, _available(device), in_flight, per_sample, forward_excess)
    if gpus:
        from mmst_cli.core.train.fsdp import layer_classes_to_wrap
        from mmst_cli.core.train.gpu_plan import ModelFigures, largest_gathered_unit, plan_gpus

        figures = ModelFigures(
            weight_bytes=weights,
            trainable=trainable,
            largest_unit_bytes=largest_gathered_unit(model, layer_classes_to_wrap(model)),
            activation_bytes=per_sample,
            forward_bytes=forward_excess,
            in_flight=in_flight,
            gradcache_bytes=components.get("gradcache_buffers", 0),
        )
        if gpu_memory is None and device.startswith("cuda"):
            gpu_memory = plan.available
        plan.gpu_plan = plan_gpus(figures, gpus, gpu_memory, chosen="fsdp" if fsdp else "ddp", cached_loss=bool(mini_batch_size))
    if plan.fits:
        return plan
    if plan.gpu_plan and plan.gpu_plan["fits"] is not None:  # the verdict is the GPUs': so is the advice
        smallest = plan.gpu_plan["smallest_fit"]
        size = f"{plan.gpu_plan['gpu_memory_bytes'] / 2**30:.3g} GiB"
        plan.suggestions = (
            [f"{smallest['flags']} (the smallest setup that fits {size} GPUs)"]
            if smallest
            else [f"nothing up to 64 GPUs of {size} fits; lower --batch-size or --max-pixels, or use --bf16"]
        )
        return plan
    visual = bool({"image", "video"} & set(modalities)) and model.supports("message")
    plan.suggestions = _suggestions(plan, mini_batch_size, precision, gradient_checkpointing, visual)
    return plan


def _suggestions(
    plan: MemoryPlan, mini_batch_size, precision: str, checkpointing: bool, has_visual_tokens: bool
) -> list[str]:
    over = plan.total - plan.available
    suggestions = []
    activations = plan.components["activations"]
    per_sample = plan.per_sample_activation_bytes + plan.per_sample_forward_bytes
    if per_sample:
        scaled = activations + plan.components["forward_buffers"]
        fitting = max(1, (plan.available - (plan.total - scaled)) // per_sample)
        if fitting < plan.samples_in_flight:
            action = "--mini-batch-size" if mini_batch_size else "--loss cached-mnrl --mini-batch-size"
            suggestions.append(f"{action} {fitting} (activations for {fitting} samples at a time fit)")
    if not checkpointing and not mini_batch_size and activations > over:
        suggestions.append("--gradient-checkpointing (keeps about a third of the activations)")
    optimizer_and_gradients = plan.components["gradients"] + plan.components["optimizer"]
    if optimizer_and_gradients > over:
        suggestions.append(f"--lora-r 16 (gradients and optimizer state shrink from {optimizer_and_gradients / 2**30:.1f} GiB to a few percent)")
    if precision == "fp32" and plan.device.startswith("cuda"):
        suggestions.append("--bf16 (halves activations)")
    if has_visual_tokens:
        suggestions.append("a lower --max-pixels (fewer visual tokens per image or frame)")
    return suggestions
