"""Per-GPU memory of a run spread over N GPUs, under DDP and under FSDP, and the smallest setup that fits.

``--dry-run --gpus N`` extends the one-device plan (:mod:`.memory_plan`), whose parts are measured
on this machine, to N GPUs with the arithmetic of each strategy:

- **DDP** keeps everything whole on every GPU: weights, gradients, AdamW state, plus the gradient
  buckets it all-reduces (one more copy of the gradients when N > 1).
- **FSDP** (``--fsdp full_shard``) divides weights, gradients and AdamW state by N and gathers one
  wrapped layer at a time, twice over (the one running and the one prefetched).

Activations, forward buffers and GradCache buffers do not divide: each GPU runs its own
``--batch-size`` (per device). Each GPU also holds a CUDA context and allocator slack.

The smallest setup that fits is searched over GPU counts (1, 2, 4, ... up to 64), DDP before
FSDP, then a smaller GradCache mini batch, and only then LoRA (whose trainable share is assumed to be
:data:`LORA_TRAINABLE_SHARE` of the weights: rank 16 on the attention and MLP projections of
common transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: What a CUDA context and the caching allocator's slack take on a GPU.
CUDA_OVERHEAD_BYTES = 600 * 2**20
#: Share of the parameters LoRA trains, for planning (rank 16 adapters: about 1-2% of a transformer).
LORA_TRAINABLE_SHARE = 0.02
#: The most GPUs the search for a fitting setup considers.
MAX_GPUS = 64
STRATEGIES = ("ddp", "fsdp")


@dataclass
class ModelFigures:
    """What the arithmetic needs from the model and the measured one-device plan.

    Attributes:
        weight_bytes: All parameters in their dtype.
        trainable: Trainable parameter count (gradients: 4 bytes each, AdamW state: 8).
        largest_unit_bytes: The biggest block FSDP gathers at once (a wrapped layer, or what is left
            in the root); the whole model when nothing is wrapped.
        activation_bytes: Per sample kept for the backward pass, and ``forward_bytes`` beyond that
            during a forward (both measured).
        in_flight: Samples whose activations are alive at once (batch, or GradCache mini batch).
        gradcache_bytes: GradCache's embedding buffers for the batch (0 without GradCache).
    """

    weight_bytes: int
    trainable: int
    largest_unit_bytes: int
    activation_bytes: int
    forward_bytes: int
    in_flight: int
    gradcache_bytes: int = 0


def per_gpu_components(figures: ModelFigures, strategy: str, gpus: int, *, in_flight: int | None = None,
                       lora: bool = False) -> dict[str, int]:  # fmt: skip
    """Bytes per part on each GPU of ``gpus`` under ``strategy`` (``ddp`` or ``fsdp``).

    Args:
        figures: The model's figures.
        strategy: ``ddp`` (everything whole) or ``fsdp`` (full_shard: weights, gradients and
            optimizer state divided by ``gpus``).
        gpus: GPUs the run spreads over.
        in_flight: Samples in flight, when a smaller GradCache mini batch is tried. Default: the run's.
        lora: Plan with LoRA adapters (:data:`LORA_TRAINABLE_SHARE` trainable) instead of all weights.
    """
    trainable = int(figures.weight_bytes / 4 * LORA_TRAINABLE_SHARE) if lora else figures.trainable
    shards = gpus if strategy == "fsdp" else 1
    samples = figures.in_flight if in_flight is None else in_flight
    components = {
        "weights": figures.weight_bytes // shards,
        "gradients": 4 * trainable // shards,
        "optimizer": 8 * trainable // shards,
        "activations": figures.activation_bytes * samples,
        "forward_buffers": figures.forward_bytes * samples,
        "cuda_context": CUDA_OVERHEAD_BYTES,
    }
    if figures.gradcache_bytes:
        components["gradcache_buffers"] = figures.gradcache_bytes
    if strategy == "ddp" and gpus > 1:
        components["gradient_buckets"] = 4 * trainable
    if strategy == "fsdp":
        components["gathered_layers"] = 2 * figures.largest_unit_bytes
    return components


def _fitting_mini_batch(figures: ModelFigures, strategy: str, gpus: int, gpu_memory: int, lora: bool) -> int:
    """The most samples in flight whose activations fit beside the rest (0 when none does)."""
    per_sample = figures.activation_bytes + figures.forward_bytes
    fixed = sum(per_gpu_components(figures, strategy, gpus, in_flight=0, lora=lora).values())
    if not per_sample:
        return figures.in_flight if fixed <= gpu_memory else 0
    return int(min(figures.in_flight, max(0, (gpu_memory - fixed) // per_sample)))


def smallest_fitting_setup(figures: ModelFigures, gpu_memory: int, *, max_gpus: int = MAX_GPUS) -> dict[str, Any] | None:
    """The cheapest setup whose per-GPU total fits ``gpu_memory`` bytes, or ``None``.

    Cheapest: all weights trained before LoRA (which changes what is learnt, so it comes only when
    no number of GPUs up to ``max_gpus`` fits otherwise); then fewest GPUs; then DDP before FSDP;
    then the run's samples in flight before a smaller GradCache mini batch.
    """
    for lora in (False, True):
        gpus = 1
        while gpus <= max_gpus:
            for strategy in STRATEGIES:
                if sum(per_gpu_components(figures, strategy, gpus, lora=lora).values()) <= gpu_memory:
                    return {"gpus": gpus, "strategy": strategy, "mini_batch_size": None, "lora": lora}
            for strategy in STRATEGIES:
                mini_batch = _fitting_mini_batch(figures, strategy, gpus, gpu_memory, lora)
                if mini_batch >= 1:
                    return {"gpus": gpus, "strategy": strategy, "mini_batch_size": mini_batch, "lora": lora}
            gpus *= 2
    return None


def setup_flags(setup: dict[str, Any], *, cached_loss: bool) -> str:
    """The command line of a :func:`smallest_fitting_setup`, e.g. ``torchrun --nproc_per_node 4 ... --fsdp full_shard``."""
    flags = [f"torchrun --nproc_per_node {setup['gpus']} -m mmst_cli ..." if setup["gpus"] > 1 else "mmst ..."]
    if setup["strategy"] == "fsdp":
        if setup["gpus"] == 1:
            flags = ["torchrun --nproc_per_node 1 -m mmst_cli ..."]
        flags.append("--fsdp full_shard")
    if setup["mini_batch_size"]:
        flags.append(("" if cached_loss else "--loss cached-mnrl ") + f"--mini-batch-size {setup['mini_batch_size']}")
    if setup["lora"]:
        flags.append("--lora-r 16")
    return " ".join(flags)


def plan_gpus(figures: ModelFigures, gpus: int, gpu_memory: int | None, *, chosen: str, cached_loss: bool) -> dict[str, Any]:
    """Per-GPU totals for ``gpus`` GPUs under each strategy, whether the ``chosen`` one fits
    ``gpu_memory`` (``None`` when the GPUs' memory is unknown), and the smallest setup that fits."""
    per_gpu = {}
    for strategy in STRATEGIES:
        components = per_gpu_components(figures, strategy, gpus)
        total = sum(components.values())
        per_gpu[strategy] = {
            "components_bytes": components,
            "total_bytes": total,
            "fits": None if gpu_memory is None else total <= gpu_memory,
        }
    smallest = smallest_fitting_setup(figures, gpu_memory) if gpu_memory is not None else None
    return {
        "gpus": gpus,
        "gpu_memory_bytes": gpu_memory,
        "strategy": chosen,
        "per_gpu": per_gpu,
        "fits": per_gpu[chosen]["fits"],
        "smallest_fit": {**smallest, "flags": setup_flags(smallest, cached_loss=cached_loss)} if smallest else None,
    }


def largest_gathered_unit(model, layer_classes: list[str]) -> int:
    """Bytes of the biggest block FSDP gathers at once: an instance of ``layer_classes``, or the
    parameters outside every such instance (gathered by the root); the whole model without any."""
    units = [module for module in model.modules() if type(module).__name__ in layer_classes]
    wrapped = {id(parameter) for unit in units for parameter in unit.parameters()}
    sizes = [sum(p.numel() * p.element_size() for p in unit.parameters()) for unit in units]
    rest = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in wrapped)
    return max([rest, *sizes])
