"""LoRA adapters on the transformers encoders of a model, merged back before saving.

Training only low-rank adapters cuts gradient and optimiser memory to a fraction of the model's.
The saved model is always a plain, merged model: it reloads anywhere with the adapters' effect in
its weights, so there is no adapter lifecycle to get wrong (a merged adapter that silently behaves
like the base model is a known failure of hand-written scripts).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmst_cli.core.errors import MmstError


@dataclass(frozen=True)
class LoraOptions:
    """``--lora-r`` (0 turns LoRA off), ``--lora-alpha`` (scale; default 2 x r) and ``--lora-dropout``."""

    r: int = 0
    alpha: float | None = None
    dropout: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def validate(self) -> None:
        if self.r < 0:
            raise MmstError(f"--lora-r must be 0 (off) or positive, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise MmstError(f"--lora-dropout must be in [0, 1), got {self.dropout}")


def _transformer_modules(model):
    """Every Sentence Transformers Transformer module, in a Router's routes too."""
    from sentence_transformers.base.modules import Router, Transformer

    for module in model:
        routes = module.sub_modules.values() if isinstance(module, Router) else [[module]]
        for route in routes:
            for inner in route:
                if isinstance(inner, Transformer):
                    yield inner


def add_lora(model, options: LoraOptions) -> int:
    """Wrap each trainable transformers encoder in ``model`` with LoRA adapters on all linear layers.

    Frozen encoders (``--freeze``) stay untouched. Returns the number of trainable parameters.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise MmstError("--lora-r needs the 'peft' package: pip install peft") from error

    wrapped = 0
    for transformer in _transformer_modules(model):
        if not any(parameter.requires_grad for parameter in transformer.model.parameters()):
            continue
        config = LoraConfig(
            r=options.r,
            lora_alpha=options.alpha if options.alpha is not None else 2 * options.r,
            lora_dropout=options.dropout,
            target_modules="all-linear",
        )
        transformer.model = get_peft_model(transformer.model, config)
        wrapped += 1
    if wrapped == 0:
        raise MmstError("--lora-r: the model has no trainable transformers encoder to put adapters on")
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def merge_lora(model) -> None:
    """Fold every LoRA adapter into its base weights and drop the peft wrappers (before saving)."""
    from peft import PeftModel

    for transformer in _transformer_modules(model):
        if isinstance(transformer.model, PeftModel):
            transformer.model = transformer.model.merge_and_unload()
