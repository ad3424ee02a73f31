"""Models that travel: saved so that plain Sentence Transformers loads them, reloaded by mmst without trust.

A model with one of mmst's own modules (the timm image encoder) names that module's class in
``modules.json`` or a Router's ``router_config.json``. Sentence Transformers 6 imports such a class
only with ``trust_remote_code=True``, and then, Hugging Face remote-code style, from a ``file.Class``
reference whose ``file.py`` sits in the model folder. So :func:`save_model` copies the module's
source file (which imports nothing from mmst) into the folder and names the class ``file.Class``:
``SentenceTransformer(folder, trust_remote_code=True)`` then works where mmst is not installed.

mmst itself never needs ``trust_remote_code`` for these folders: :func:`load_with_mmst_modules`
hands Sentence Transformers the classes mmst already imported, for today's references and for those
that folders saved by earlier versions hold (``mmst_cli.core...TimmImageEncoder``).

Light at import time: the module classes (torch, timm) are imported when a model is loaded.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmst_cli.core.errors import MmstError

#: mmst's own module classes that travel with saved models: the reference a saved model names
#: (``file.Class``) -> the package module whose file is copied into the folder as ``file.py``.
PORTABLE_MODULES = {"timm_image_encoder.TimmImageEncoder": "mmst_cli.core.models.timm_image_encoder"}
#: References that folders saved by earlier versions of mmst hold -> today's reference.
EARLIER_REFERENCES = {
    "mmst_cli.core.models.timm_encoder.TimmImageEncoder": "timm_image_encoder.TimmImageEncoder",
    "mmst_cli.core.timm_encoder.TimmImageEncoder": "timm_image_encoder.TimmImageEncoder",
}


def _class_name(reference: str) -> str:
    return reference.rpartition(".")[2]


def _own_references() -> dict[str, str]:
    """The dotted path of each portable class in the package -> its portable reference.

    Sentence Transformers writes that path (e.g. into the trainer's checkpoints) until
    :func:`make_portable` rewrites it.
    """
    return {f"{module}.{_class_name(reference)}": reference for reference, module in PORTABLE_MODULES.items()}


def _mmst_references() -> dict[str, str]:
    """Every reference to one of mmst's module classes (portable, own, earlier) -> its portable reference."""
    return {**{reference: reference for reference in PORTABLE_MODULES}, **_own_references(), **EARLIER_REFERENCES}


def portable_references(model) -> list[str]:
    """The portable references of mmst's module classes that a model in memory holds (Router routes included).

    Non-empty means its saved folder needs ``trust_remote_code=True`` outside mmst.
    """
    own = _own_references()
    held = {f"{type(module).__module__}.{type(module).__name__}" for module in model.modules()}
    return sorted(own[name] for name in held if name in own)


def mmst_module_classes() -> dict[str, type]:
    """Every reference to one of mmst's module classes -> the class (imported now); see :func:`load_with_mmst_modules`."""
    classes = {}
    for reference, portable in _mmst_references().items():
        module = importlib.import_module(PORTABLE_MODULES[portable])
        classes[reference] = getattr(module, _class_name(portable))
    return classes


def _module_listings(folder: Path) -> Iterator[tuple[Path, Any, list[tuple[dict, str]]]]:
    """Each ``modules.json`` / ``router_config.json`` of a saved model, parsed, with its type slots.

    A slot is ``(holder, key)``, so that ``holder[key]`` is one module's class reference.
    """
    listings = [folder / "modules.json", *sorted(folder.rglob("router_config.json"))]
    for path in listings:
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # the loader reports an unreadable listing with its own message
        if isinstance(config, list):
            slots = [(entry, "type") for entry in config if isinstance(entry, dict) and "type" in entry]
        elif isinstance(config, dict) and isinstance(config.get("types"), dict):
            slots = [(config["types"], key) for key in config["types"]]
        else:
            slots = []
        yield path, config, slots


def names_mmst_modules(folder: str | os.PathLike) -> bool:
    """Whether a saved model folder names one of mmst's own module classes, under any of its references."""
    references = _mmst_references()
    return any(
        holder[key] in references for _, _, slots in _module_listings(Path(folder)) for holder, key in slots
    )


def make_portable(folder: str | os.PathLike) -> list[str]:
    """Make a saved model folder load with plain Sentence Transformers and ``trust_remote_code=True``.

    Rewrites every reference to one of mmst's module classes in ``modules.json`` and the Routers'
    ``router_config.json`` to its ``file.Class`` form, and copies each such class's source file into
    the folder's root, where Sentence Transformers (through transformers' dynamic module loader)
    looks for it. A folder without mmst's modules is left as it is.

    Args:
        folder: A model folder written by ``model.save``.

    Returns:
        The portable references the folder now names (empty when it needs no custom code).
    """
    folder = Path(folder)
    references = _mmst_references()
    named: set[str] = set()
    for path, config, slots in _module_listings(folder):
        changed = False
        for holder, key in slots:
            portable = references.get(holder[key])
            if portable is not None:
                changed |= holder[key] != portable
                holder[key] = portable
                named.add(portable)
        if changed:
            path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf8")
    for reference in sorted(named):
        source = Path(importlib.import_module(PORTABLE_MODULES[reference]).__file__)
        shutil.copyfile(source, folder / f"{reference.partition('.')[0]}.py")
    return sorted(named)


def save_model(model, folder: str | os.PathLike) -> list[str]:
    """Save a Sentence Transformers model so that it loads with or without mmst (see :func:`make_portable`).

    Args:
        model: Any Sentence Transformers model (``SentenceTransformer``, ``CrossEncoder``, ...).
        folder: Where to write it (created when missing).

    Returns:
        The custom module references the folder names, as :func:`make_portable`.
    """
    model.save(os.fspath(folder))
    return make_portable(folder)


def load_with_mmst_modules(model_name_or_path: str | os.PathLike, model_class: type | None = None, **kwargs: Any):
    """Load a saved Sentence Transformers model that contains mmst's own modules, without ``trust_remote_code``.

    Sentence Transformers 6 refuses to import any module class outside ``sentence_transformers.*``
    unless ``trust_remote_code=True`` (which would also trust any other custom code the folder names).
    ``SentenceTransformer.__init__`` has no public parameter for known classes, but the classmethod
    ``_load_with_module_classes`` (used by ST's own trainer to reload checkpoints) resolves the listed
    references to the given classes, in ``modules.json`` and in Router sub-modules, while every other
    reference still goes through the usual ``trust_remote_code`` gate. The copy of the module's file
    in a portable folder is not imported: mmst's installed class is used.

    Args:
        model_name_or_path: The saved model folder.
        model_class: ``SentenceTransformer`` (the default, ``None``), or another Sentence Transformers model
            class such as ``SparseEncoder``.
        **kwargs: Passed on to the model class, e.g. ``device="cpu"``; ``trust_remote_code`` stays False
            unless given.

    Returns:
        The loaded model.
    """
    if model_class is None:
        from sentence_transformers import SentenceTransformer

        model_class = SentenceTransformer
    loader = getattr(model_class, "_load_with_module_classes", None)
    if loader is None:  # pragma: no cover - only on a Sentence Transformers without this classmethod
        raise MmstError(
            f"this Sentence Transformers version has no {model_class.__name__}._load_with_module_classes; "
            "mmst needs sentence-transformers>=6.2 to reload models with its own modules"
        )
    return loader(os.fspath(model_name_or_path), mmst_module_classes(), **kwargs)
