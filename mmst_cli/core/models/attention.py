"""Which attention implementations a transformers model can use on this machine."""

from __future__ import annotations

import importlib.util

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


def flash_attention_unavailable_reason() -> str | None:
    """Why flash_attention_2 cannot run here, or ``None`` when the package and a CUDA device exist."""
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install 'mmst[flash]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def attention_support(transformers_model) -> dict[str, str | None]:
    """Map each attention implementation to ``None`` (usable) or the reason it is not.

    Args:
        transformers_model: A ``transformers.PreTrainedModel``; its class flags say which
            implementations the architecture has.
    """
    import torch

    support: dict[str, str | None] = {"eager": None}
    if not getattr(transformers_model, "_supports_sdpa", False):
        support["sdpa"] = f"{type(transformers_model).__name__} has no sdpa attention"
    elif not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        support["sdpa"] = "this torch has no scaled_dot_product_attention"
    else:
        support["sdpa"] = None
    if not getattr(transformers_model, "_supports_flash_attn", False):
        support["flash_attention_2"] = f"{type(transformers_model).__name__} has no flash attention"
    else:
        support["flash_attention_2"] = flash_attention_unavailable_reason()
    return support
