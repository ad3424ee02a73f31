"""Loading saved models (folders or Hub ids) with the Sentence Transformers class of their archetype,
and walking their modules (a Router's routes included).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError, first_line
from mmst_cli.core.models.locate import ModelSource
from mmst_cli.core.models.portable import load_with_mmst_modules, names_mmst_modules


def _names_mmst_modules(source: ModelSource) -> bool:
    """Whether a saved model lists one of mmst's own module classes (always assumed for Hub models)."""
    folder = Path(source.location)
    if not folder.is_dir():
        return source.is_sentence_transformers_folder
    return names_mmst_modules(folder)


def load_checkpoint(source: ModelSource, *, trust_remote_code: bool = False, device: str | None = None, **kwargs: Any):
    """Load a saved model (a folder or a Hub id) with the Sentence Transformers class of its archetype.

    Args:
        source: The result of :func:`~mmst_cli.core.models.locate.locate_model`, not the embedded
            default (which is built, not loaded: see :func:`~mmst_cli.core.models.loading.load_model`).
        trust_remote_code: Allow custom modelling code from the model's repository. Off by default.
        device: ``cpu``, ``cuda``, ...; ``None`` lets Sentence Transformers choose.
        **kwargs: Passed on to the model class (``model_kwargs``, ``processor_kwargs``, ...).

    Raises:
        MmstError: (exit status 2) when the folder or checkpoint cannot be loaded, with the
            library's first line of explanation.
    """
    import sentence_transformers as st

    model_class = getattr(st, source.archetype)
    try:
        if _names_mmst_modules(source):
            # mmst's own modules (the timm image encoder) load by class, without trusting any other code.
            return load_with_mmst_modules(
                source.location, model_class, trust_remote_code=trust_remote_code, device=device, **kwargs
            )
        return model_class(source.location, trust_remote_code=trust_remote_code, device=device, **kwargs)
    except pickle.UnpicklingError as error:
        # torch.load(weights_only=True) refused a pickle that holds more than tensors: it stays unread.
        raise MmstError(
            f"model {source.reference!r}: its weights are a pickle holding more than tensors, which mmst never "
            "unpickles; use a copy of the model saved as safetensors"
        ) from error
    except (OSError, ValueError, KeyError, ImportError) as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise MmstError(
                f"model {source.reference!r} needs custom code from its repository; "
                "pass --trust-remote-code only if you trust that code"
            ) from error
        raise MmstError(f"model {source.reference!r} could not be loaded: {first_line(error)}") from error


def iter_modules(model):
    """Every module of a loaded model, with a Router's route modules in place of the Router."""
    from sentence_transformers.base.modules import Router

    for module in model:
        if isinstance(module, Router):
            for route in module.sub_modules.values():
                yield from route
        else:
            yield module


def audio_sampling_rate(modules) -> int | None:
    """The sampling rate the first audio feature extractor among ``modules`` expects, if any.

    Args:
        modules: A loaded model or any iterable of its modules (Router routes are searched too).
    """
    for module in iter_modules(modules) if hasattr(modules, "modalities") else modules:
        processor = getattr(module, "processor", None)
        extractor = getattr(processor, "feature_extractor", processor)
        rate = getattr(extractor, "sampling_rate", None)
        if rate:
            return int(rate)
    return None


