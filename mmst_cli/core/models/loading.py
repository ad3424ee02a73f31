"""Load any model a command is given: a saved model, a Hub id, or the embedded default.

The one entry point the commands use: the default is composed from packaged weights
(:mod:`mmst_cli.core.models.composition`), everything else is a checkpoint
(:mod:`mmst_cli.core.models.checkpoints`). Keeping this apart lets composition load its
encoders as checkpoints without importing itself back.
"""

from __future__ import annotations

from typing import Any

from mmst_cli.core.models.checkpoints import load_checkpoint
from mmst_cli.core.models.locate import DEFAULT_MODEL_NAME, ModelSource


def load_model(source: ModelSource, *, trust_remote_code: bool = False, device: str | None = None, **kwargs: Any):
    """Load a located model with the Sentence Transformers class that matches its archetype.

    Args:
        source: The result of :func:`~mmst_cli.core.models.locate_model`.
        trust_remote_code: Allow custom modelling code from the model's repository. Off by default.
        device: ``cpu``, ``cuda``, ...; ``None`` lets Sentence Transformers choose.
        **kwargs: Passed on to the model class (``model_kwargs``, ``processor_kwargs``, ...).

    Raises:
        MmstError: (exit status 2) when the folder or checkpoint cannot be loaded.
    """
    if source.reference == DEFAULT_MODEL_NAME:
        from mmst_cli.core.models.composition import build_default_model

        model = build_default_model().model
        return model.to(device) if device else model
    return load_checkpoint(source, trust_remote_code=trust_remote_code, device=device, **kwargs)
