"""Late-interaction (multi-vector, ColBERT / ColPali-style) training pieces for ``train-embed``.

A multi-vector model keeps one vector per token or image patch: the checkpoint's token outputs go
through a new linear projection (``--dim``, 128 by default as in ColBERT), a mask that drops padding
and skiplist tokens, and L2 normalisation; queries and documents are scored by MaxSim. Sentence
Transformers' ``MultiVectorEncoder`` holds such a pipeline and has its own trainer and losses; this
module builds the model and the loss from the same options a single-vector run takes, so the
rest of ``train-embed`` (data, checks, schedule, run folder, resume) stays one code path.
"""

from __future__ import annotations

from typing import Any

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.composition import BuiltModel, resolve_attention
from mmst_cli.core.models.loading import load_checkpoint
from mmst_cli.core.models.locate import locate_model
from mmst_cli.core.train.losses import LossOptions, gradcache_kwargs

#: Token vector size of a new projection when ``--dim`` is not given (ColBERT's).
DEFAULT_MULTI_VECTOR_DIM = 128
#: ``--loss`` values a multi-vector run takes; the cached one uses GradCache.
MULTI_VECTOR_LOSSES = ("mnrl", "cached-mnrl")
#: The projection's parameters (as the loss names them), trained at ``--head-lr``; the rest at ``--lr``.
PROJECTION_PARAMETERS = r"^model\.1\.linear\."


def wants_multi_vector(options) -> bool:
    """Whether a train-embed run trains a multi-vector model: ``--multi-vector``, or a ``--model``
    that already is one."""
    if options.multi_vector or not options.model:
        return bool(options.multi_vector)
    try:
        return locate_model(options.model).kind == "multi-vector"
    except MmstError:
        return False  # a model that cannot be found is reported when it loads, after the data is checked


def validate_multi_vector_options(options) -> None:
    """Reject the single-vector-only options of a multi-vector run before anything loads."""
    for flag, value in (
        ("--text-encoder/--image-encoder/--audio-encoder", options.text_encoder or options.image_encoder or options.audio_encoder),
        ("--pooling", options.pooling),
        ("--freeze", options.freeze),
        ("--hardness-mode", options.loss.hardness_mode),
    ):  # fmt: skip
        if value:
            raise MmstError(f"{flag} does not apply to a multi-vector run (--multi-vector); drop it")
    if options.multi_vector and not options.model:
        raise MmstError("--multi-vector needs --model: the text or vision-language checkpoint to start from")
    if options.loss.name not in MULTI_VECTOR_LOSSES:
        raise MmstError(f"--loss {options.loss.name}: a multi-vector run takes {' or '.join(MULTI_VECTOR_LOSSES)}")
    for name in ("query_length", "document_length"):
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise MmstError(f"--{name.replace('_', '-')} must be a positive number of tokens, got {value}")


def build_multi_vector_model(options) -> BuiltModel:
    """The MultiVectorEncoder a multi-vector run starts from.

    A ``--model`` that is already multi-vector is loaded as saved (``--dim`` cannot change its
    trained projection); any other checkpoint mmst can load gets a new projection to ``--dim``
    (seeded by ``--seed``) trained at ``--head-lr``. ``--query-length`` / ``--document-length`` cap
    the tokens of each side and are saved with the model.
    """
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    source = locate_model(options.model)
    model_kwargs: dict[str, Any] = {"attn_implementation": resolve_attention(options.attn_implementation)}
    processor_kwargs = {"max_pixels": options.max_pixels} if options.max_pixels else {}
    learning_rate_mapping = {}
    if source.kind == "multi-vector":
        if options.dim is not None:
            raise MmstError(f"--dim: --model {options.model!r} is already multi-vector, with a trained projection; drop --dim")
        model = load_checkpoint(
            source, trust_remote_code=options.trust_remote_code, model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs or None,
        )  # fmt: skip
    elif source.kind == "embedder":
        trust = {"trust_remote_code": options.trust_remote_code}
        transformer = Transformer(
            source.location,
            model_kwargs={**model_kwargs, **trust},
            processor_kwargs={**processor_kwargs, **trust},
            config_kwargs=trust,
        )
        hidden = transformer.get_embedding_dimension()
        with torch.random.fork_rng():  # the same --seed always starts from the same projection
            torch.manual_seed(options.seed)
            projection = Dense(
                hidden, options.dim or DEFAULT_MULTI_VECTOR_DIM, bias=False,
                activation_function=torch.nn.Identity(), module_input_name="token_embeddings",
            )  # fmt: skip
        model = MultiVectorEncoder(
            modules=[transformer, projection, MultiVectorMask(), Normalize(module_input_name="token_embeddings")]
        )
        learning_rate_mapping[PROJECTION_PARAMETERS] = options.head_lr
    else:
        raise MmstError(f"--model {options.model!r} is a {source.kind}; train a multi-vector model from an embedder or a checkpoint")
    for name in ("query_length", "document_length"):
        if getattr(options, name) is not None:
            setattr(model[0], name, getattr(options, name))
    return BuiltModel(
        model, source.reference, learning_rate_mapping=learning_rate_mapping, attention=model_kwargs["attn_implementation"]
    )


def build_multi_vector_loss(model, options: LossOptions):
    """The multi-vector counterpart of :func:`~mmst_cli.core.train.losses.build_loss`: ``mnrl`` or
    ``cached-mnrl`` (GradCache), optionally inside Matryoshka over the token vector size."""
    from sentence_transformers.multi_vector_encoder import losses

    gather = {"gather_across_devices": options.gather_across_devices}
    if options.name == "mnrl":
        loss = losses.MultiVectorMultipleNegativesRankingLoss(model, **gather)
    else:
        cached = gradcache_kwargs(
            losses.CachedMultiVectorMultipleNegativesRankingLoss, options.mini_batch_size, options.mini_batch_tokens
        )
        loss = losses.CachedMultiVectorMultipleNegativesRankingLoss(model, **cached, **gather)
    if options.matryoshka_dims:
        loss = losses.MultiVectorMatryoshkaLoss(
            model, loss, matryoshka_dims=list(options.matryoshka_dims),
            matryoshka_weights=list(options.matryoshka_weights) or None,
        )  # fmt: skip
    return loss


def trainer_classes(multi_vector: bool) -> tuple[type, type]:
    """``(Trainer, TrainingArguments)`` of Sentence Transformers for a single- or multi-vector run."""
    if multi_vector:
        from sentence_transformers import MultiVectorEncoderTrainer, MultiVectorEncoderTrainingArguments

        class MultiVectorTrainer(MultiVectorEncoderTrainer):
            def override_model_in_loss(self, loss, model):
                # The multi-vector losses score with model.similarity (MaxSim), which the DDP wrapper
                # the trainer hands them does not have; the wrapped model's own is the one to use.
                if not hasattr(model, "similarity"):
                    model.similarity = self.model.similarity
                return super().override_model_in_loss(loss, model)

        return MultiVectorTrainer, MultiVectorEncoderTrainingArguments
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    return SentenceTransformerTrainer, SentenceTransformerTrainingArguments
