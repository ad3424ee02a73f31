"""Describe a loaded model: what it takes, how big it is and how it embeds or scores.

:func:`describe_model` returns plain JSON-ready data; rendering it is the CLI's business.
"""

from __future__ import annotations

from typing import Any

from mmst_cli.core.data.documents import RenderSettings
from mmst_cli.core.data.media import classify_input
from mmst_cli.core.models.attention import attention_support
from mmst_cli.core.models.loading import load_model
from mmst_cli.core.models.locate import ModelSource, locate_model

#: Modalities reported in the support matrix; the tuple is the combined (image, text) input.
SUPPORT_MATRIX_MODALITIES: tuple[str | tuple[str, ...], ...] = (
    "text",
    "image",
    "audio",
    "video",
    "message",
    ("image", "text"),
)


def modality_label(modality: str | tuple[str, ...]) -> str:
    """``"image"`` -> ``"image"``; ``("image", "text")`` -> ``"image+text"``."""
    return modality if isinstance(modality, str) else "+".join(modality)


def _parameter_count(modules) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:  # tied weights count once
                seen.add(id(parameter))
                total += parameter.numel()
    return total


def _weights_memory(parameters: int) -> dict[str, int]:
    return {"fp32": parameters * 4, "bf16": parameters * 2}


def _describe_module(module) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(module).__name__, "parameters": _parameter_count([module])}
    hf_model = getattr(module, "auto_model", None)
    if hf_model is not None:
        config = hf_model.config
        info["architecture"] = (getattr(config, "architectures", None) or [type(hf_model).__name__])[0]
        info["model_type"] = config.model_type
        info["attention"] = attention_support(hf_model)
    pooling_mode = getattr(module, "pooling_mode", None)
    if pooling_mode is not None:
        info["pooling_mode"] = pooling_mode if isinstance(pooling_mode, str) else list(pooling_mode)
    return info


def _routes(model) -> dict[str, list] | None:
    from sentence_transformers.base.modules import Router

    first = model[0]
    if isinstance(first, Router):
        return {name: list(route) for name, route in first.sub_modules.items()}
    return None


def _safe(getter, default=None):
    # Some properties raise for models they do not apply to (a Router has no single tokenizer, ...).
    try:
        return getter()
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return default


def describe_model(model, source: ModelSource) -> dict[str, Any]:
    """Return everything ``mmst detect`` reports about a loaded model.

    Args:
        model: A loaded SentenceTransformer, CrossEncoder, MultiVectorEncoder or SparseEncoder.
        source: Where it came from (:func:`mmst_cli.core.models.locate.locate_model`).

    Returns:
        A JSON-ready dict: kind, modalities, support matrix, modules (per route for a Router),
        parameter count, weight memory in fp32/bf16, embedding dimension, max sequence length,
        pooling, prompts, similarity function and usable attention implementations.
    """
    modules = list(model)
    routes = _routes(model)
    described_modules: list[dict[str, Any]] = []
    route_summaries: dict[str, Any] = {}
    if routes is None:
        described_modules = [_describe_module(module) for module in modules]
    else:
        for name, route_modules in routes.items():
            route_info = [dict(_describe_module(module), route=name) for module in route_modules]
            described_modules.extend(route_info)
            parameters = _parameter_count(route_modules)
            route_summaries[name] = {
                "modalities": [modality_label(m) for m in getattr(route_modules[0], "modalities", ["text"])],
                "parameters": parameters,
                "weights_memory_bytes": _weights_memory(parameters),
            }
        described_modules.extend(_describe_module(module) for module in modules[1:])

    parameters = _parameter_count(modules)
    pooling_modes = sorted({str(m["pooling_mode"]) for m in described_modules if "pooling_mode" in m})
    attention = _combined_attention(described_modules)
    return {
        "model": source.reference,
        "location": source.location,
        "kind": source.kind,
        "class": type(model).__name__,
        "modalities": [modality_label(m) for m in model.modalities],
        "supports": {modality_label(m): bool(model.supports(m)) for m in SUPPORT_MATRIX_MODALITIES},
        "modules": described_modules,
        "routes": route_summaries or None,
        "parameters": parameters,
        "weights_memory_bytes": _weights_memory(parameters),
        "embedding_dimension": _safe(model.get_embedding_dimension) if hasattr(model, "get_embedding_dimension") else None,
        "num_labels": getattr(model, "num_labels", None) if source.kind == "reranker" else None,
        "max_seq_length": _safe(lambda: model.max_seq_length),
        "pooling": pooling_modes or None,
        "prompts": dict(getattr(model, "prompts", None) or {}),
        "similarity_fn_name": _safe(lambda: model.similarity_fn_name) if source.kind != "reranker" else None,
        "attention": attention,
        "multi_vector": _late_interaction(model) if source.kind == "multi-vector" else None,
    }


def _late_interaction(model) -> dict[str, Any]:
    """A multi-vector model's token vector size, per-side token caps and default token pooling.

    The lengths live on the Transformer module (``None``: the tokenizer's limit); pooling is the
    model's default ``token_pooling`` (``None``: every token is kept).
    """
    transformer = model[0]
    pooling = getattr(model, "token_pooling", None)
    return {
        "token_dimension": _safe(model.get_embedding_dimension),
        "query_length": getattr(transformer, "query_length", None),
        "document_length": getattr(transformer, "document_length", None),
        "token_pooling": None if pooling is None else {
            "type": type(pooling).__name__, **{key: getattr(pooling, key, None) for key in getattr(pooling, "config_keys", [])}
        },
    }


def _combined_attention(described_modules: list[dict[str, Any]]) -> dict[str, str | None] | None:
    """An implementation is usable for the model only when every transformers module can use it."""
    per_module = [m["attention"] for m in described_modules if "attention" in m]
    if not per_module:
        return None
    combined: dict[str, str | None] = {}
    for name in per_module[0]:
        reasons = [support[name] for support in per_module if support.get(name)]
        combined[name] = reasons[0] if reasons else None
    return combined


def check_inputs(model, inputs: list[str], pdf: RenderSettings = RenderSettings()) -> list[dict[str, Any]]:
    """Say, for each command-line input, which modality it is and whether ``model`` can take it.

    A media path that does not exist is reported as ``file not found`` rather than being taken as
    text, which is what Sentence Transformers would silently do.
    """
    reports = []
    for value in inputs:
        report = classify_input(value, pdf=pdf)
        supported = report.problem is None and bool(model.supports(report.modality))
        problem = report.problem
        if problem is None and not supported:
            problem = f"the model takes {', '.join(modality_label(m) for m in model.modalities)}"
        reports.append(
            {
                "input": value,
                "modality": modality_label(report.modality),
                "source": report.source,
                "supported": supported,
                "problem": problem,
                "detail": report.detail,
            }
        )
    return reports


def inspect_model(
    reference: str | None, *, inputs: list[str], trust_remote_code: bool = False, pdf: RenderSettings = RenderSettings()
) -> dict[str, Any]:
    """Locate, load (on CPU) and describe a model, and check ``inputs`` against it (``mmst detect``).

    Args:
        reference: Local folder or Hub id; ``None`` for the embedded default model.
        inputs: Inputs to classify against the model; may be empty.
        trust_remote_code: Allow custom modelling code from the model's repository.
    """
    source = locate_model(reference)
    model = load_model(source, trust_remote_code=trust_remote_code, device="cpu")
    report = describe_model(model, source)
    report["inputs"] = check_inputs(model, inputs, pdf)
    return report
