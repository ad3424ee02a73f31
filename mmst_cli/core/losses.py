"""Build training losses from the names users type (``--loss cached-mnrl``) and their options."""

from __future__ import annotations

from dataclasses import dataclass

from mmst_cli.core.errors import MmstError

#: Loss names accepted by ``--loss``; the cached variants use GradCache.
EMBEDDING_LOSSES = ("mnrl", "cached-mnrl", "gist", "cached-gist")
#: ``--hardness-mode`` values -> Sentence Transformers' names (LLaVE-style hardness weighting).
HARDNESS_MODES = {"in-batch": "in_batch_negatives", "hard": "hard_negatives", "all": "all_negatives"}


@dataclass(frozen=True)
class LossOptions:
    """What ``--loss`` and its companion flags ask for.

    Attributes:
        name: One of :data:`EMBEDDING_LOSSES`.
        mini_batch_size: GradCache mini batch for the cached losses (memory vs. speed).
        matryoshka_dims: Wrap the loss in MatryoshkaLoss over these dimensions (largest first).
        matryoshka_weights: One weight per Matryoshka dimension; equal weights when ``None``.
        hardness_mode: One of :data:`HARDNESS_MODES`, or ``None`` for no hardness weighting.
        hardness_strength: Hardness weighting strength (LLaVE used 9 on in-batch negatives).
        gather_across_devices: Share in-batch negatives across processes in distributed training.
    """

    name: str = "cached-mnrl"
    mini_batch_size: int = 32
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
    cached = {"mini_batch_size": options.mini_batch_size}
    if options.name == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, **gather, **hardness)
    elif options.name == "cached-mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, **cached, **gather, **hardness)
    elif options.name == "gist":
        loss = losses.GISTEmbedLoss(model, guide, **gather)
    else:
        loss = losses.CachedGISTEmbedLoss(model, guide, **cached, **gather)
    if options.matryoshka_dims:
        loss = losses.MatryoshkaLoss(
            model,
            loss,
            matryoshka_dims=list(options.matryoshka_dims),
            matryoshka_weights=list(options.matryoshka_weights) or None,
        )
    return loss
