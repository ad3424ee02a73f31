"""Fully sharded data parallel training (``--fsdp``): the Trainer arguments and what mmst adds to them.

Under FSDP every process keeps only its shard of the weights, gradients and optimizer state and
gathers a layer's full weights just while it runs. The Transformers Trainer does the sharding
through accelerate (FSDP2, ``torch.distributed.fsdp.fully_shard``); this module

- turns ``--fsdp`` / ``--fsdp-config`` into the Trainer's ``fsdp`` and ``fsdp_config`` arguments, with
  auto-wrap of the transformer layer classes the model itself names (every inner transformers
  model's ``_no_split_modules``, so a Router's towers are wrapped layer by layer too) and full
  state dicts on save;
- gives the Sentence Transformers trainers two things they lack under FSDP
  (:func:`fully_sharded_trainer`): a CPU launch that really shards (accelerate 1.16 selects FSDP
  only for accelerator devices and would quietly train a CPU launch with plain DDP; torch's FSDP2
  itself runs on CPU with gloo), and checkpoints and final models written from the gathered full
  weights (their ``_save`` writes the model's own, sharded, parameters and ignores the full state
  dict the Trainer gathered, which fails on the sharded tensors);
- gathers the full weights for the final save (:func:`gathered_weights`), so the saved model is the
  one an unsharded run would save.

GradCache losses (``cached-mnrl``, ``cmnrl``, the listwise losses) work unchanged under FSDP2: their
extra no-grad forward and the per-mini-batch backward passes gather and free each layer's weights
like any other pass (the conflict other GradCache users hit is FSDP1's flattened parameters, which
the loss's own reference to the unwrapped model cannot use).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError

#: ``--fsdp`` values -> FSDP2's ``reshard_after_forward``: ``full_shard`` frees each layer's gathered
#: weights after its forward (least memory), ``shard_grad_op`` keeps them until the backward
#: (parameters whole during the step, one all-gather fewer).
SHARDING_STRATEGIES = {"full_shard": True, "shard_grad_op": False}


def validate_fsdp(options, *, distributed_launch: bool) -> None:
    """Reject ``--fsdp`` values and combinations that cannot run, before any model loads.

    Args:
        options: The run's options (``fsdp``, ``fsdp_config``, ``lora``, ``gradient_checkpointing``, ``dry_run``).
        distributed_launch: Whether torchrun or accelerate launched this process (FSDP needs it,
            even for one process).
    """
    if options.fsdp is None:
        if options.fsdp_config:
            raise MmstError("--fsdp-config tunes --fsdp; add --fsdp full_shard (or shard_grad_op)")
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not options.dry_run:
            # accelerate would shard behind the trainer's back, and the saves would fail on the shards.
            raise MmstError(
                "this accelerate launch turns on FSDP (distributed_type: FSDP); add --fsdp full_shard "
                "(or shard_grad_op) so mmst shards, saves and resumes the full weights"
            )
        return
    if options.fsdp == "hybrid_shard":
        raise MmstError(
            "--fsdp hybrid_shard exists only in FSDP1, which transformers 5 deprecates; use full_shard, "
            "or replicate across nodes with an accelerate config (parallelism_config dp_replicate_size)"
        )
    if options.fsdp not in SHARDING_STRATEGIES:
        raise MmstError(f"--fsdp {options.fsdp!r} is unknown; use one of {', '.join(SHARDING_STRATEGIES)}")
    if options.fsdp_config:
        given = read_fsdp_config(options.fsdp_config)
        if int(given.get("version", given.get("fsdp_version", 2))) != 2:
            raise MmstError(f"--fsdp-config {options.fsdp_config}: mmst trains with FSDP2 only; drop \"version\"")
        if given.get("state_dict_type", given.get("fsdp_state_dict_type", "FULL_STATE_DICT")) != "FULL_STATE_DICT":
            raise MmstError(
                f"--fsdp-config {options.fsdp_config}: mmst saves full state dicts (loadable models and checkpoints); "
                "drop \"state_dict_type\""
            )
    if options.lora.enabled:
        raise MmstError("--fsdp with --lora-r is not supported yet: LoRA alone shrinks gradients and optimizer state; drop one")
    if options.gradient_checkpointing:
        raise MmstError(
            '--fsdp with --gradient-checkpointing gathers every layer twice; put {"activation_checkpointing": true} '
            "in an --fsdp-config file instead"
        )
    if not distributed_launch and not options.dry_run:
        raise MmstError(
            "--fsdp shards across processes: launch with torchrun --nproc_per_node N -m mmst_cli ... "
            "(N=1 on a single GPU) or accelerate launch"
        )


def read_fsdp_config(path: str) -> dict[str, Any]:
    """The JSON object of an ``--fsdp-config`` file (the Trainer's ``fsdp_config`` keys)."""
    file = Path(path).expanduser()
    try:
        loaded = json.loads(file.read_text(encoding="utf8"))
    except OSError as error:
        raise MmstError(f"--fsdp-config {path}: cannot read it ({error.strerror}); name a JSON file of fsdp_config keys") from error
    except ValueError as error:
        raise MmstError(f"--fsdp-config {path} is not valid JSON ({error}); see docs/train-embed.md for an example") from error
    if not isinstance(loaded, dict):
        raise MmstError(f"--fsdp-config {path} must hold a JSON object of fsdp_config keys, e.g. {{\"cpu_offload\": true}}")
    return loaded


def layer_classes_to_wrap(model) -> list[str]:
    """The transformer layer classes to shard one by one: every inner transformers model's
    ``_no_split_modules`` (the blocks it must keep whole), sorted; empty when none names any."""
    from transformers import PreTrainedModel

    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            names.update(getattr(module, "_no_split_modules", None) or ())
    present = {type(module).__name__ for module in model.modules()}
    return sorted(names & present)


def check_fsdp_model(options, model) -> None:
    """Refuse ``--fsdp`` for a model FSDP2 cannot shard, as soon as it is built: one with scalar
    parameters (CLIP's and SigLIP's logit scale)."""
    if options.fsdp is None:
        return
    scalars = [name for name, parameter in model.named_parameters() if parameter.dim() == 0]
    if scalars:
        raise MmstError(
            f"--fsdp cannot shard this model: FSDP2 refuses scalar parameters ({', '.join(scalars[:3])}), which "
            "CLIP / SigLIP-style dual encoders have; these fit one GPU, so drop --fsdp and train with DDP"
        )


def fsdp_training_arguments(options, model) -> dict[str, Any]:
    """The Trainer's ``fsdp`` / ``fsdp_config`` for ``--fsdp`` (empty without it).

    mmst's choices: FSDP2, auto-wrap of :func:`layer_classes_to_wrap`, full state dicts (a
    checkpoint and the final model are ordinary, unsharded folders) and the strategy's
    ``reshard_after_forward``. Keys in ``--fsdp-config`` win (with or without accelerate's
    ``fsdp_`` prefix), except the two mmst relies on, which :func:`validate_fsdp` checks.
    """
    if options.fsdp is None:
        return {}
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": SHARDING_STRATEGIES[options.fsdp],
        "state_dict_type": "FULL_STATE_DICT",
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    }
    layers = layer_classes_to_wrap(model)
    if layers:
        config["transformer_layer_cls_to_wrap"] = layers
    if options.fsdp_config:  # checked by validate_fsdp
        given = read_fsdp_config(options.fsdp_config)
        config.update({key.removeprefix("fsdp_"): value for key, value in given.items()})
    return {"fsdp": True, "fsdp_config": config}


def fully_sharded_trainer(trainer_class: type) -> type:
    """``trainer_class`` (a Sentence Transformers or Cross Encoder trainer) made to train and save
    under FSDP; see the module docstring for the two gaps it closes."""

    class FullyShardedTrainer(trainer_class):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            from accelerate.state import PartialState
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            state = self.accelerator.state
            if self.args.fsdp_plugin_args and not self.is_fsdp_enabled and state.distributed_type == DistributedType.MULTI_CPU:
                # What accelerate does when it picks FSDP for GPUs; the process-wide state is updated
                # too, as every later AcceleratorState() copies its distributed type from there.
                state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
                state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
                self.is_fsdp_enabled = True

        def _prepare_for_training(self, *args, **kwargs):
            with _no_final_norm_unit():
                return super()._prepare_for_training(*args, **kwargs)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            # Sentence Transformers' override reloads a saved model into the unwrapped one; under FSDP
            # the Trainer resumes the sharded model from the checkpoint's FSDP weights instead.
            if model is None or not self.is_fsdp_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint)
            from transformers import Trainer

            return Trainer._load_from_checkpoint(self, resume_from_checkpoint, model)

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if not self.is_fsdp_enabled or checkpoint is None:
                return super()._load_optimizer_and_scheduler(checkpoint)
            with _optimizer_state_may_lack_unused_parameters():
                return super()._load_optimizer_and_scheduler(checkpoint)

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            if not self.is_fsdp_enabled or state_dict is None:
                return super()._save(output_dir, state_dict=state_dict)
            if not self.args.should_save:  # every process gathered the weights; the main one writes them
                return None
            with full_weights_in_place(self.model, state_dict):
                return super()._save(output_dir, state_dict=state_dict)

    FullyShardedTrainer.__name__ = FullyShardedTrainer.__qualname__ = f"FullySharded{trainer_class.__name__}"
    return FullyShardedTrainer


@contextmanager
def _no_final_norm_unit() -> Iterator[None]:
    """While accelerate shards the model: it looks among the model's direct children for a causal
    LM's final norm to shard together with the LM head, and in a Sentence Transformers pipeline
    finds its ``Normalize`` step, which holds no weights and cannot be sharded on its own
    ("object layout differs"). A pipeline has no LM head to group it with, so none is looked for."""
    from accelerate.utils import fsdp_utils

    find = fsdp_utils._find_final_norm
    fsdp_utils._find_final_norm = lambda model: None
    try:
        yield
    finally:
        fsdp_utils._find_final_norm = find


@contextmanager
def _optimizer_state_may_lack_unused_parameters() -> Iterator[None]:
    """Resume FSDP optimizer state that has no entry for a parameter the loss never reached (BERT's
    pooler under mean pooling, CLIP's unused logit scale): AdamW creates a parameter's state at its
    first gradient, so such a parameter starting afresh is what the uninterrupted run does too.
    accelerate loads with torch's strict default, which refuses; strictness is relaxed for this
    load only."""
    import dataclasses

    from accelerate.utils import fsdp_utils

    strict = fsdp_utils._prepare_sd_options
    fsdp_utils._prepare_sd_options = lambda plugin: dataclasses.replace(strict(plugin), strict=False)
    try:
        yield
    finally:
        fsdp_utils._prepare_sd_options = strict


#: The hooks FSDP2 drives a sharded module with: gather before each forward, free after it, put
#: the shards back before ``state_dict()``.
_FSDP_HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks", "_state_dict_pre_hooks")


@contextmanager
def full_weights_in_place(model, state_dict: dict[str, Any]) -> Iterator[None]:
    """Within the block ``model`` is a plain module holding the full tensors of ``state_dict`` (as
    gathered from the shards): its own ``save`` writes whole weights, and the forward passes a save
    may run (the model card's usage example) need no other process. FSDP's hooks, which would
    gather from the other processes or put the shards back, are held back meanwhile; the shards
    and hooks return afterwards."""
    import torch

    swapped = []
    held = {(module, table): getattr(module, table) for module in model.modules() for table in _FSDP_HOOK_TABLES}
    try:
        for (module, table), hooks in held.items():
            setattr(module, table, type(hooks)())
        for name, tensor in state_dict.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            if leaf in owner._parameters:
                registry, value = owner._parameters, torch.nn.Parameter(tensor, requires_grad=False)
            elif leaf in owner._buffers:
                registry, value = owner._buffers, tensor
            else:
                continue
            swapped.append((registry, leaf, registry[leaf]))
            registry[leaf] = value
        yield
    finally:
        for registry, leaf, original in reversed(swapped):
            registry[leaf] = original
        for (module, table), hooks in held.items():
            setattr(module, table, hooks)


def gathered_weights(trainer) -> dict[str, Any] | None:
    """The full state dict of a trainer's model after FSDP training (on the main process; every
    process must call it, as the shards are gathered collectively), or ``None`` without FSDP."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    return trainer.accelerator.get_state_dict(trainer.model)


def sharding_summary(trainer) -> dict[str, Any] | None:
    """How an FSDP run was sharded, for ``metrics.json`` (``None`` without FSDP): processes, the
    layer classes wrapped one by one, and how many parameters are held as shards."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    from torch.distributed.tensor import DTensor

    plugin = trainer.accelerator.state.fsdp_plugin
    parameters = list(trainer.model.parameters())
    return {
        "processes": trainer.accelerator.num_processes,
        "reshard_after_forward": plugin.reshard_after_forward,
        "layers_wrapped": sorted(plugin.transformer_cls_names_to_wrap or []),
        "parameters": len(parameters),
        "sharded_parameters": sum(isinstance(parameter, DTensor) for parameter in parameters),
    }
