"""Build training losses from the names users type (``--loss cached-mnrl``) and their options."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from mmst_cli.core.errors import MmstError

#: Loss names accepted by ``--loss``; the cached variants use GradCache.
EMBEDDING_LOSSES = ("mnrl", "cached-mnrl", "gist", "cached-gist")
#: ``--hardness-mode`` values -> Sentence Transformers' names (LLaVE-style hardness weighting).
HARDNESS_MODES = {"in-batch": "in_batch_negatives", "hard": "hard_negatives", "all": "all_negatives"}


def validate_token_budget(mini_batch_tokens: int | None) -> None:
    """Reject a non-positive ``--mini-batch-tokens`` before anything loads."""
    if mini_batch_tokens is not None and mini_batch_tokens <= 0:
        raise MmstError(f"--mini-batch-tokens must be a positive number of tokens, got {mini_batch_tokens}")


def gradcache_kwargs(loss_class, mini_batch_size: int, mini_batch_tokens: int | None) -> dict:
    """The mini-batch arguments of a GradCache loss, with the token budget only where the loss takes one.

    Sentence Transformers added ``mini_batch_num_tokens`` in 5.7, and only to some losses (in 6.3
    not to the CrossEncoder ones), so this asks the installed class rather than a version number.
    """
    kwargs = {"mini_batch_size": mini_batch_size}
    if mini_batch_tokens is None:
        return kwargs
    if "mini_batch_num_tokens" not in inspect.signature(loss_class.__init__).parameters:
        from sentence_transformers import __version__

        raise MmstError(
            f"--mini-batch-tokens: {loss_class.__name__} in the installed sentence-transformers {__version__} "
            "has no token budget; use --mini-batch-size instead"
        )
    return {**kwargs, "mini_batch_num_tokens": mini_batch_tokens}


@dataclass(frozen=True)
class LossOptions:
    """What ``--loss`` and its companion flags ask for.

    Attributes:
        name: One of :data:`EMBEDDING_LOSSES`.
        mini_batch_size: GradCache mini batch for the cached losses (memory vs. speed).
        mini_batch_tokens: GradCache token budget: pack each mini batch up to this many non-padding
            tokens instead of ``mini_batch_size`` rows (``None``: off). Needs Sentence Transformers 5.7+.
        matryoshka_dims: Wrap the loss in MatryoshkaLoss over these dimensions (largest first).
        matryoshka_weights: One weight per Matryoshka dimension; equal weights when ``None``.
        hardness_mode: One of :data:`HARDNESS_MODES`, or ``None`` for no hardness weighting.
        hardness_strength: Hardness weighting strength (LLaVE used 9 on in-batch negatives).
        gather_across_devices: Share in-batch negatives across processes in distributed training.
    """

    name: str = "cached-mnrl"
    mini_batch_size: int = 32
    mini_batch_tokens: int | None = None
    matryoshka_dims: tuple[int, ...] = ()
    matryoshka_weights: tuple[float, ...] = ()
    hardness_mode: str | None = None
    hardness_strength: float = 0.0
    gather_across_devices: bool = False

    def validate(self, *, gradient_checkpointing: bool = False, embedding_dimension: int | None = None) -> None:
        """Reject combinations that cannot work, with a message that says what to change."""
        if self.name not in EMBEDDING_LOSSES:
            raise MmstError(f"--loss {self.name!r} is not a loss mmst knows; use one of {', '.join(EMBEDDING_LOSSES)}")
        if self.mini_batch_size <= 0:
            raise MmstError(f"--mini-batch-size must be positive, got {self.mini_batch_size}")
        if self.mini_batch_tokens is not None and not self.name.startswith("cached-"):
            raise MmstError(
                f"--mini-batch-tokens budgets GradCache mini batches, which --loss {self.name} does not use; "
                f"use --loss cached-{self.name} or drop --mini-batch-tokens"
            )
        validate_token_budget(self.mini_batch_tokens)
        if self.name.startswith("cached-") and gradient_checkpointing:
            raise MmstError(
                f"--loss {self.name} (GradCache) cannot be combined with --gradient-checkpointing; "
                "drop one (GradCache already bounds activation memory through --mini-batch-size)"
            )
        if self.hardness_mode is not None:
            if self.hardness_mode not in HARDNESS_MODES:
                raise MmstError(
                    f"--hardness-mode {self.hardness_mode!r} is unknown; use one of {', '.join(HARDNESS_MODES)}"
                )
            if "gist" in self.name:
                raise MmstError("--hardness-mode works with mnrl and cached-mnrl only, not with the GIST losses")
            if self.hardness_strength <= 0:
                raise MmstError("--hardness-mode needs a positive --hardness-strength (LLaVE used 9)")
        if any(dim <= 0 for dim in self.matryoshka_dims):
            raise MmstError(f"--matryoshka-dims must be positive, got {list(self.matryoshka_dims)}")
        if embedding_dimension and any(dim > embedding_dimension for dim in self.matryoshka_dims):
            raise MmstError(
                f"--matryoshka-dims {list(self.matryoshka_dims)} exceed the model's embedding dimension "
                f"{embedding_dimension}"
            )
        if self.matryoshka_weights and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise MmstError("--matryoshka-weights needs exactly one weight per --matryoshka-dims entry")


def build_loss(model, options: LossOptions, guide=None):
    """Instantiate the loss for ``model``.

    Args:
        model: The SentenceTransformer being trained.
        options: Validated :class:`LossOptions`.
        guide: The guide model of the GIST losses; must read the same inputs as ``model``.
    """
    from sentence_transformers.sentence_transformer import losses

    hardness = {}
    if options.hardness_mode is not None:
        hardness = {
            "hardness_mode": HARDNESS_MODES[options.hardness_mode],
            "hardness_strength": options.hardness_strength,
        }
    gather = {"gather_across_devices": options.gather_across_devices}
    if options.name == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, **gather, **hardness)
    elif options.name == "cached-mnrl":
        cached = gradcache_kwargs(losses.CachedMultipleNegativesRankingLoss, options.mini_batch_size, options.mini_batch_tokens)
        loss = losses.CachedMultipleNegativesRankingLoss(model, **cached, **gather, **hardness)
    elif options.name == "gist":
        loss = losses.GISTEmbedLoss(model, guide, **gather)
    else:
        cached = gradcache_kwargs(losses.CachedGISTEmbedLoss, options.mini_batch_size, options.mini_batch_tokens)
        loss = losses.CachedGISTEmbedLoss(model, guide, **cached, **gather)
    if options.matryoshka_dims:
        loss = losses.MatryoshkaLoss(
            model,
            loss,
            matryoshka_dims=list(options.matryoshka_dims),
            matryoshka_weights=list(options.matryoshka_weights) or None,
        )
    return loss
