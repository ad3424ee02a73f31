"""Second-stage reranking: load a ``--reranker`` that reads every modality it will score, and score
``(query, document)`` pairs with it. ``mmst evaluate``, ``mmst search`` and ``mmst mine`` share it.

Sentence Transformers' ``CrossEncoder.predict`` does the scoring; this module adds the modality
check (a text-only reranker handed images would score their file paths as text) and raw scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from mmst_cli.core.encode.encoding import modality_of
from mmst_cli.core.errors import MmstError
from mmst_cli.core.progress import Tracker, no_progress


def predict_pairs(reranker, pairs: list[tuple[Any, Any]], *, batch_size: int = 32, track: Tracker = no_progress) -> list[float]:
    """A reranker's raw score of each ``(query, document)`` pair, 1024 pairs per call."""
    import torch

    advance = track("reranking", len(pairs))
    scores: list[float] = []
    for start in range(0, len(pairs), 1024):
        chunk = pairs[start : start + 1024]
        # Raw scores: a sigmoid saturates to exactly 1.0 in float32 for confident pairs and makes ties.
        predicted = reranker.predict(
            chunk, batch_size=batch_size, activation_fn=torch.nn.Identity(), convert_to_numpy=True,
            show_progress_bar=False,
        )  # fmt: skip
        scores.extend(np.asarray(predicted, dtype=np.float32).reshape(len(chunk), -1)[:, 0].tolist())
        advance(len(chunk))
    return scores


def load_reranker_for(reference: str, sides: Mapping[str, Iterable[Any]], source: str, *, trust_remote_code: bool = False):
    """Load ``--reranker`` and make sure it reads every modality of the inputs it will score.

    A text-only reranker handed image documents would score their file paths as text.

    Args:
        reference: The reranker's folder or Hub id.
        sides: Side name (``queries``, ``documents``, ...) -> the inputs of that side.
        source: The data's name, for the message.
        trust_remote_code: Passed to the loader. Default ``False``.
    """
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model

    located = locate_model(reference)
    if located.kind != "reranker":
        raise MmstError(
            f"--reranker {reference!r} is not a reranker (mmst detect says kind {located.kind!r}); give a CrossEncoder "
            "folder or Hub id, such as the model mmst train-rerank saves"
        )
    reranker = load_model(located, trust_remote_code=trust_remote_code)
    for side, values in sides.items():
        unreadable = sorted(m for m in {modality_of(value) for value in values} if not reranker.supports(m))
        if unreadable:
            raise MmstError(
                f"--reranker {reference!r} cannot read {' or '.join(unreadable)} inputs, but the {side} of "
                f"{source!r} hold them; choose a reranker that takes them (`mmst detect MODEL` shows what a model takes)"
            )
    return reranker
