"""Build rerankers (Sentence Transformers CrossEncoders) from a checkpoint, ready to train.

Three architectures, from the heaviest per pair to the lightest head:

``logit-score``
    Any-to-Any (or text-generation) Transformer + ``LogitScore``: a causal (vision-)language model
    reads the pair as a chat and the score is ``logit(true token) - logit(false token)`` at the last
    position, right after the chat template's generation prompt. Starts from the LM's own
    judgement; the LM head's full vocabulary projection is skipped except at the last position
    (``logits_to_keep=1``).
``pooling-dense``
    Feature-extraction Transformer + ``Pooling("lasttoken")`` + ``Dense(d, 1)``: the same reading
    of the pair, but the score is one dot product with the last hidden state. The Dense row starts
    as ``W_out[true] - W_out[false]`` (the LM head's *output* embedding rows, plus the bias
    difference if the head has one): since ``logit(t) = h . W_out[t] + b[t]``, the initial score
    equals ``logit(true) - logit(false)``, the LM's own judgement, exactly. Input embedding rows
    give the same only when the checkpoint ties its input and output embeddings (Qwen3-VL-2B does,
    Qwen3-VL-8B does not), so they are used only then. No LM head, no token generation.
``classifier``
    The classic text cross-encoder: an encoder (BERT, MiniLM, ...) with a one-label
    sequence-classification head on ``[CLS] query [SEP] document [SEP]``.

Pairs reach chat models as two messages with the roles ``query`` and ``document``. Many chat
templates (Qwen's among them) allow only system/user/assistant: they raise, or silently drop the
other roles. :func:`ensure_pair_template` probes the template the way Sentence Transformers does
and, when the roles do not get through, prepends a small Jinja preamble that turns the two
messages into one user message, ``<Query>: ...\\n<Document>: ...`` (media items kept in place),
before the model's own template runs. The adapted template is saved with the model, so serving
reads pairs exactly as training did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.loading import load_model
from mmst_cli.core.models.locate import ModelSource, hub_or_local_file, locate_model

#: ``--arch`` values; ``auto`` continues a saved reranker, reads a causal LM / VLM checkpoint as
#: ``logit-score`` and anything else as ``classifier``.
ARCHITECTURES = ("auto", "logit-score", "pooling-dense", "classifier")
#: ``--pair-template``: ``auto`` keeps a chat template that carries the query/document roles and
#: adapts one that does not; ``native`` never adapts (an error if it cannot); ``user`` always does.
PAIR_TEMPLATES = ("auto", "native", "user")
#: The first line of the preamble; marks a template mmst has already adapted.
PAIR_TEMPLATE_MARKER = "{#- mmst: reranker pair template (query + document -> one user message) -#}"
#: Name of the instruction in the saved model's prompts (also its default prompt).
PROMPT_NAME = "instruction"
#: What every chat-template render of a reranker pair needs: the assistant turn is where the
#: true/false token would be generated.
CHAT_TEMPLATE_KWARGS = {"chat_template": {"add_generation_prompt": True}}

# Both preambles first collect the 'query' and 'document' messages, then rebuild one user turn.
_COLLECT_PAIR = (
    PAIR_TEMPLATE_MARKER
    + "{%- set mmst_pair = namespace(messages=[], query=none, document=none) -%}"
    "{%- for mmst_message in messages -%}"
    "{%- if mmst_message['role'] == 'query' -%}{%- set mmst_pair.query = mmst_message['content'] -%}"
    "{%- elif mmst_message['role'] == 'document' -%}{%- set mmst_pair.document = mmst_message['content'] -%}"
    "{%- else -%}{%- set mmst_pair.messages = mmst_pair.messages + [mmst_message] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if mmst_pair.query is not none and mmst_pair.document is not none -%}"
)
_STRUCTURED_PREAMBLE = (
    _COLLECT_PAIR
    + "{%- set mmst_query = [{'type': 'text', 'text': mmst_pair.query}] if mmst_pair.query is string else mmst_pair.query -%}"
    "{%- set mmst_document = [{'type': 'text', 'text': mmst_pair.document}] if mmst_pair.document is string else mmst_pair.document -%}"
    "{%- set messages = mmst_pair.messages + [{'role': 'user', 'content': [{'type': 'text', 'text': '<Query>: '}]"
    " + mmst_query + [{'type': 'text', 'text': '\\n<Document>: '}] + mmst_document}] -%}"
    "{%- endif -%}"
)
# Flat templates (content is a string) must not see the words Sentence Transformers reads as a
# sign of structured content, or the reloaded model would switch formats.
_FLAT_PREAMBLE = (
    _COLLECT_PAIR
    + "{%- set messages = mmst_pair.messages + [{'role': 'user', 'content': '<Query>: ' + mmst_pair.query"
    " + '\\n<Document>: ' + mmst_pair.document}] -%}"
    "{%- endif -%}"
)


def default_instruction(true_token: str, false_token: str) -> str:
    """The system instruction of a new LM reranker when ``--prompt`` is not given."""
    return (
        "Judge whether the Document meets the requirements based on the Query. "
        f'Note that the answer can only be "{true_token}" or "{false_token}".'
    )


@dataclass
class BuiltReranker:
    """A CrossEncoder ready to train, and what the run needs to know about it.

    Attributes:
        model: The CrossEncoder.
        description: Human-readable origin, for logs and metrics.
        arch: ``logit-score``, ``pooling-dense`` or ``classifier``.
        continued: Whether it was loaded from a saved reranker (training continues).
        attention: The attention implementation the transformers model was loaded with.
        audio_sampling_rate: The rate the model's audio feature extractor expects, if it takes audio.
        pair_template: ``native`` or ``user`` (chat models), ``None`` (classifier).
        notes: One-line remarks for the user (template adaptation, head initialisation).
    """

    model: Any
    description: str
    arch: str
    continued: bool = False
    attention: str | None = None
    audio_sampling_rate: int | None = None
    pair_template: str | None = None
    notes: list[str] = field(default_factory=list)


def reranker_arch(model) -> str:
    """The architecture of a loaded CrossEncoder, from its modules."""
    from sentence_transformers.base.modules import Dense
    from sentence_transformers.cross_encoder.modules import LogitScore

    modules = list(model)
    if any(isinstance(module, LogitScore) for module in modules):
        return "logit-score"
    if any(isinstance(module, Dense) and module.module_output_name == "scores" for module in modules):
        return "pooling-dense"
    return "classifier"


# ------------------------------------------------------------------------------------------------
# Chat templates and the query/document roles
# ------------------------------------------------------------------------------------------------


def _probe_kwargs(transformer) -> dict[str, Any]:
    """The ``apply_chat_template`` kwargs a real render uses, as Sentence Transformers probes them."""
    kwargs = dict(transformer.processing_kwargs.get("chat_template", {}))
    for key in ("padding", "truncation", "max_length", "return_tensors", "restore_suffix"):
        kwargs.pop(key, None)
    return kwargs


def _chat_template(transformer) -> str | None:
    template = getattr(transformer.processor, "chat_template", None)
    if template is None and transformer.tokenizer is not None:
        template = getattr(transformer.tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one renders pairs
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def adapted_template(template: str, message_format: str) -> str:
    """``template`` with the preamble that folds a query/document pair into one user message."""
    if template.startswith(PAIR_TEMPLATE_MARKER):
        return template
    return (_FLAT_PREAMBLE if message_format == "flat" else _STRUCTURED_PREAMBLE) + template


def _set_chat_template(transformer, template: str) -> None:
    processor = transformer.processor
    processor.chat_template = template
    tokenizer = transformer.tokenizer
    # A processor saves its tokenizer too; both write chat_template.jinja, so they must agree.
    if tokenizer is not None and tokenizer is not processor and getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template


def ensure_pair_template(transformer, mode: str, reference: str, log=print) -> str:
    """Make the chat template carry (query, document) pairs; return ``native`` or ``user``.

    Args:
        transformer: A Sentence Transformers ``Transformer`` with a chat template.
        mode: ``auto``, ``native`` or ``user`` (see :data:`PAIR_TEMPLATES`).
        reference: The model, for messages.
        log: Receives the one-line note when the template is adapted.

    Raises:
        MmstError: the model has no chat template, or ``native`` was asked for a template that
            cannot carry the roles.
    """
    template = _chat_template(transformer)
    if template is None:
        raise MmstError(
            f"model {reference!r} has no chat template, so a (query, document) pair cannot be put to it as a chat; "
            "use an instruction-tuned checkpoint or --arch classifier"
        )
    formatter = transformer.input_formatter
    kwargs = _probe_kwargs(transformer)
    if template.startswith(PAIR_TEMPLATE_MARKER):
        return "user"
    failure = formatter.pair_roles_failure(kwargs)
    if mode == "native" or (mode == "auto" and failure is None):
        if failure is not None:
            raise MmstError(
                f"--pair-template native: the chat template of {reference!r} cannot carry a query/document pair "
                f"({failure.splitlines()[0]}); use --pair-template auto or user"
            )
        return "native"
    _set_chat_template(transformer, adapted_template(template, formatter.message_format))
    still = formatter.pair_roles_failure(kwargs)
    if still is not None:
        raise MmstError(
            f"the chat template of {reference!r} could not be adapted to (query, document) pairs ({still.splitlines()[0]}); "
            "put a template that renders the 'query' and 'document' roles in the model folder (chat_template.jinja)"
        )
    if mode == "user":
        reason = "as asked (--pair-template user)"
    else:
        reason = f"its template allows no 'query'/'document' roles ({failure.splitlines()[0][:160]})"
    log(
        f"chat template: {reason}; pairs now reach the model as one user message "
        "'<Query>: ... <Document>: ...' (the adapted template is saved with the model)"
    )
    return "user"


# ------------------------------------------------------------------------------------------------
# The answer tokens and the Dense initialisation
# ------------------------------------------------------------------------------------------------


def answer_token_ids(tokenizer, true_token: str, false_token: str, reference: str) -> tuple[int, int]:
    """Vocabulary ids of the true and false answers; each must be exactly one token."""
    if tokenizer is None:
        raise MmstError(f"model {reference!r} has no tokenizer, so it cannot score answer tokens")
    ids = []
    for flag, token in (("--true-token", true_token), ("--false-token", false_token)):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise MmstError(
                f"{flag} {token!r} is {len(encoded)} tokens for the tokenizer of {reference!r}; "
                "pick an answer that is a single token (e.g. 1/0 or yes/no)"
            )
        ids.append(int(encoded[0]))
    if ids[0] == ids[1]:
        raise MmstError(f"--true-token {true_token!r} and --false-token {false_token!r} are the same token")
    return ids[0], ids[1]


def _safetensors_files(location: str) -> tuple[dict[str, str], Any]:
    """``{tensor name: file}`` of a checkpoint's safetensors weights (local folder or Hub cache)."""
    folder = Path(location)

    def fetch(name: str) -> Path | None:
        if folder.is_dir():
            return folder / name if (folder / name).is_file() else None
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(location, name))
        except Exception:  # not there, or offline and not cached: the caller falls back
            return None

    index = fetch("model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf8")).get("weight_map", {})
        return weight_map, fetch
    single = fetch("model.safetensors")
    if single is None:
        return {}, fetch
    from safetensors import safe_open

    with safe_open(str(single), "pt") as handle:
        return {name: "model.safetensors" for name in handle.keys()}, fetch


def _read_rows(location: str, suffix: str, ids: tuple[int, ...]):
    """Rows ``ids`` of the tensor whose name ends with ``suffix`` (e.g. ``lm_head.weight``), or ``None``."""
    import torch
    from safetensors import safe_open

    weight_map, fetch = _safetensors_files(location)
    names = sorted((name for name in weight_map if name == suffix or name.endswith("." + suffix)), key=len)
    if not names:
        return None
    path = fetch(weight_map[names[0]])
    if path is None:
        return None
    with safe_open(str(path), "pt") as handle:
        tensor = handle.get_slice(names[0])
        return torch.cat([tensor[index : index + 1] for index in ids]).float()


def _ties_embeddings(config) -> bool:
    for candidate in (config, getattr(config, "get_text_config", lambda: None)()):
        value = getattr(candidate, "tie_word_embeddings", None) if candidate is not None else None
        if value is not None:
            return bool(value)
    return True  # the transformers default


def answer_direction(transformer, location: str, true_id: int, false_id: int, notes: list[str]):
    """``(weight row, bias)`` such that ``row . h + bias == logit(true) - logit(false)`` for the LM.

    The LM head computes ``logit(t) = h . W_out[t] (+ b[t])`` from the final (normed) hidden state
    ``h``, which is what a feature-extraction model returns as its last hidden state. So the row is
    the difference of the *output* embeddings, read from the checkpoint's ``lm_head.weight``; the
    input embeddings are the same matrix only when the checkpoint ties them.
    """
    import torch

    config = transformer.model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(text_config, name, None) not in (None, 0, 1.0):
            notes.append(
                f"the LM applies {name} to its logits, which a linear head cannot copy: the Dense head starts "
                "from the logit difference before it"
            )
    rows = None if _ties_embeddings(config) else _read_rows(location, "lm_head.weight", (true_id, false_id))
    if rows is None:
        if not _ties_embeddings(config):
            notes.append(
                "no lm_head weights found in the checkpoint although it does not tie its embeddings; the Dense "
                "head starts from the input embeddings, so its first scores are not the LM's judgement"
            )
        embeddings = transformer.model.get_input_embeddings().weight.detach()
        rows = embeddings[[true_id, false_id]].float()
        source = "tied input/output embeddings"
    else:
        source = "the LM head (output embeddings)"
    bias_rows = None if _ties_embeddings(config) else _read_rows(location, "lm_head.bias", (true_id, false_id))
    bias = (bias_rows[0] - bias_rows[1]).reshape(1) if bias_rows is not None else torch.zeros(1)
    notes.append(f"Dense head initialised from {source}: row(true) - row(false), so it starts at the LM's judgement")
    return (rows[0] - rows[1]).unsqueeze(0).contiguous(), bias.float()


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------


def _architectures(location: str, source: ModelSource) -> list[str]:
    folder = Path(location)
    if folder.is_dir():
        config = folder / "config.json"
        return (json.loads(config.read_text(encoding="utf8")).get("architectures") or []) if config.is_file() else []
    config = hub_or_local_file(source, "config.json")
    return (json.loads(config.read_text(encoding="utf8")).get("architectures") or []) if config else []


def _transformer_location(source: ModelSource) -> str:
    """Where the transformers weights are: the folder itself, or a Sentence Transformers folder's Transformer path."""
    modules = hub_or_local_file(source, "modules.json")
    if modules is None:
        return source.location
    for entry in json.loads(modules.read_text(encoding="utf8")):
        if str(entry.get("type", "")).endswith("Transformer"):
            path = entry.get("path") or ""
            folder = Path(source.location)
            return str(folder / path) if folder.is_dir() and path else source.location
    raise MmstError(f"model {source.reference!r} has no Transformer module to build a reranker from")


def _is_generative(architectures: list[str]) -> bool:
    return any(name.endswith(("ForCausalLM", "ForConditionalGeneration")) for name in architectures)


def _transformer(
    location: str,
    task: str,
    *,
    model_kwargs: dict,
    processor_kwargs: dict,
    trust_remote_code: bool,
    reference: str,
    **extra,
):
    from sentence_transformers.base.modules import Transformer

    trust = {"trust_remote_code": trust_remote_code}
    try:
        return Transformer(
            location,
            transformer_task=task,
            model_kwargs={**model_kwargs, **trust},
            processor_kwargs={**processor_kwargs, **trust},
            config_kwargs={**extra.pop("config_kwargs", {}), **trust},
            **extra,
        )
    except (OSError, ValueError, KeyError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise MmstError(f"model {reference!r} needs custom code; pass --trust-remote-code only if you trust it") from error
        raise MmstError(f"model {reference!r} could not be loaded as a {task} model: {first}") from error


def _set_instruction(model, instruction: str | None) -> None:
    if instruction is None:
        return
    if instruction:
        model.prompts = {**model.prompts, PROMPT_NAME: instruction}
        model.default_prompt_name = PROMPT_NAME
    else:
        model.prompts = {name: text for name, text in model.prompts.items() if name != PROMPT_NAME}
        if model.default_prompt_name == PROMPT_NAME:
            model.default_prompt_name = None


def instruction_of(model) -> str | None:
    """The prompt the model applies by default (its reranking instruction), if any."""
    name = getattr(model, "default_prompt_name", None)
    return model.prompts.get(name) if name else None


def build_reranker(
    reference: str,
    *,
    arch: str = "auto",
    true_token: str = "1",
    false_token: str = "0",
    prompt: str | None = None,
    pair_template: str = "auto",
    max_pixels: int | None = None,
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
    log=print,
) -> BuiltReranker:
    """A CrossEncoder to train: a saved reranker (continued) or one of the three architectures.

    Args:
        reference: A CrossEncoder folder or Hub id (training continues), or a transformers /
            Sentence Transformers checkpoint to build ``arch`` from.
        arch: See :data:`ARCHITECTURES`.
        true_token, false_token: Single-token answers the LM archs score (``logit-score``,
            ``pooling-dense``).
        prompt: The instruction (a system message for chat models, a query prefix for the
            classifier); ``None`` keeps a saved reranker's and gives new LM rerankers
            :func:`default_instruction`; ``""`` removes it.
        pair_template: See :data:`PAIR_TEMPLATES`.
        max_pixels: Pixel budget per image for VLM processors.
        attn_implementation: ``auto``, ``sdpa``, ``eager`` or ``flash_attention_2``.
        trust_remote_code: Allow custom modelling code.
        log: Receives one-line notes for the user.
    """
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense
    from sentence_transformers.cross_encoder.modules import LogitScore
    from sentence_transformers.sentence_transformer.modules import Pooling

    from mmst_cli.core.models.checkpoints import audio_sampling_rate
    from mmst_cli.core.models.composition import resolve_attention

    if arch not in ARCHITECTURES:
        raise MmstError(f"--arch {arch!r} is unknown; use one of {', '.join(ARCHITECTURES)}")
    if pair_template not in PAIR_TEMPLATES:
        raise MmstError(f"--pair-template {pair_template!r} is unknown; use one of {', '.join(PAIR_TEMPLATES)}")
    source = locate_model(reference)
    attention = resolve_attention(attn_implementation)
    model_kwargs = {"attn_implementation": attention}
    processor_kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    notes: list[str] = []

    if source.kind == "reranker" and source.is_sentence_transformers_folder:
        model = load_model(
            source, trust_remote_code=trust_remote_code, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs or None
        )
        saved = reranker_arch(model)
        if arch not in ("auto", saved):
            raise MmstError(f"--model {reference!r} is a saved {saved} reranker; drop --arch or pass --arch {saved}")
        used_template = None
        if saved != "classifier":
            used_template = ensure_pair_template(model[0], pair_template, reference, log)
        _set_instruction(model, prompt)
        return BuiltReranker(
            model, f"{reference} ({saved}, continued)", saved, True, attention, audio_sampling_rate(model), used_template, notes
        )
    # A multi-vector model's backbone is a Transformer like an embedder's: the reranker starts from it.
    if source.kind not in ("embedder", "reranker", "multi-vector"):
        raise MmstError(f"--model {reference!r} is a {source.kind} model; train-rerank starts from a checkpoint or a reranker")

    location = _transformer_location(source)
    architectures = _architectures(location, source)
    generative = _is_generative(architectures)
    if arch == "auto":
        arch = "logit-score" if generative else "classifier"
    shared = dict(
        model_kwargs=model_kwargs, processor_kwargs=processor_kwargs, trust_remote_code=trust_remote_code, reference=reference
    )

    if arch == "classifier":
        transformer = _transformer(location, "sequence-classification", config_kwargs={"num_labels": 1}, **shared)
        model = CrossEncoder(modules=[transformer])
        _set_instruction(model, prompt)
        return BuiltReranker(model, f"{reference} (classifier)", arch, False, attention, audio_sampling_rate(model), None, notes)

    if not generative:
        notes.append(
            f"{reference!r} is not a causal LM / VLM checkpoint ({', '.join(architectures) or 'no architectures'}); "
            f"{arch} expects one"
        )
    if arch == "logit-score":
        task = "text-generation" if any(name.endswith("ForCausalLM") for name in architectures) else "any-to-any"
        transformer = _transformer(location, task, processing_kwargs=CHAT_TEMPLATE_KWARGS, **shared)
        true_id, false_id = answer_token_ids(transformer.tokenizer, true_token, false_token, reference)
        used_template = ensure_pair_template(transformer, pair_template, reference, log)
        model = CrossEncoder(modules=[transformer, LogitScore(true_token_id=true_id, false_token_id=false_id)])
    else:  # pooling-dense
        # Padded inputs: VLM batches cannot be flattened, and last-token pooling needs the mask.
        transformer = _transformer(
            location, "feature-extraction", processing_kwargs=CHAT_TEMPLATE_KWARGS, unpad_inputs=False, **shared
        )
        true_id, false_id = answer_token_ids(transformer.tokenizer, true_token, false_token, reference)
        used_template = ensure_pair_template(transformer, pair_template, reference, log)
        dimension = transformer.get_embedding_dimension()
        weight, bias = answer_direction(transformer, location, true_id, false_id, notes)
        dtype = next(transformer.model.parameters()).dtype
        head = Dense(
            dimension,
            1,
            activation_function=None,
            init_weight=weight.to(dtype),
            init_bias=bias.to(dtype),
            module_output_name="scores",
        )
        model = CrossEncoder(modules=[transformer, Pooling(dimension, pooling_mode="lasttoken"), head])
    _set_instruction(model, default_instruction(true_token, false_token) if prompt is None else prompt)
    description = f"{reference} ({arch}, true={true_token!r} false={false_token!r})"
    return BuiltReranker(model, description, arch, False, attention, audio_sampling_rate(model), used_template, notes)
