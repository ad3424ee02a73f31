"""A Sentence Transformers input module around a timm image backbone: :class:`TimmImageEncoder`.

It turns images (PIL images, file paths, ``data:image/`` URIs, ``{"image": ...}`` dicts or HWC
``uint8`` arrays) into one pooled vector per image with a timm model created with ``num_classes=0``.
It can stand alone or sit in a :class:`~sentence_transformers.base.modules.Router` route next to a
text encoder, with a ``Dense`` projection after it, and it saves as a JSON config plus
``model.safetensors``.

This file travels with the models mmst saves: it is copied, as it is, into the model folder and named
there as ``timm_image_encoder.TimmImageEncoder``, so ``SentenceTransformer(folder,
trust_remote_code=True)`` imports it from the folder in a Python without mmst (Hugging Face remote
code; see :mod:`mmst_cli.core.models.portable`). It must therefore import only the standard library,
numpy, torch, timm, Pillow and Sentence Transformers: nothing from ``mmst_cli``. mmst's own additions
(pretrained weights, one-line errors, reloading without ``trust_remote_code``) live in
:mod:`mmst_cli.core.models.timm_encoder` and :mod:`mmst_cli.core.models.portable`.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from typing import Self
except ImportError:  # Python < 3.11
    from typing_extensions import Self

import numpy as np
import timm
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from sentence_transformers.base.modules.input_module import InputModule

__all__ = ["TimmImageEncoder", "TimmImageEncoderError", "backbone_dimension"]


class TimmImageEncoderError(ValueError):
    """A configuration, saved folder or image input that :class:`TimmImageEncoder` cannot use."""


def backbone_dimension(backbone: torch.nn.Module) -> int:
    """The size of what a ``num_classes=0`` timm model returns.

    That is ``head_hidden_size`` when the model has one (e.g. MobileNetV3: ``num_features`` 960 but a
    1280-d pre-logits head), else ``num_features``.
    """
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


#: Resampling filters accepted as ``interpolation``.
_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _strip_timm_prefix(model_name: str) -> str:
    """``timm:tf_efficientnet_lite0`` -> ``tf_efficientnet_lite0``; other names are returned unchanged."""
    return model_name[len("timm:") :] if model_name.startswith("timm:") else model_name


def _create_backbone(model_name: str, timm_kwargs: Mapping[str, Any] | None) -> torch.nn.Module:
    """Create a randomly initialised timm model without a classification head; never downloads."""
    kwargs = dict(timm_kwargs or {})
    for reserved in ("pretrained", "num_classes", "pretrained_cfg_overlay", "checkpoint_path"):
        if reserved in kwargs:
            raise TimmImageEncoderError(f"timm_kwargs may not set {reserved!r}: TimmImageEncoder sets it itself")
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as error:  # timm: "Unknown model (...)"
        raise TimmImageEncoderError(f"timm model {model_name!r} could not be created: {error}") from error
    except TypeError as error:  # an argument the architecture does not take
        raise TimmImageEncoderError(f"timm model {model_name!r} rejected timm_kwargs {kwargs!r}: {error}") from error


class TimmImageEncoder(InputModule):
    """A timm image backbone as a Sentence Transformers input module for the ``image`` modality.

    ``preprocess`` opens, converts to RGB, resizes (squashes) each image to ``image_size`` x
    ``image_size``, scales pixels to [0, 1] and normalises them per channel; ``forward`` writes the
    backbone's pooled features to ``features["sentence_embedding"]``, where a following ``Dense`` or
    ``Normalize`` reads them.

    When none of the backbone's parameters require grad (a frozen backbone), :meth:`train` keeps the
    backbone in eval mode, so BatchNorm keeps its running statistics and dropout stays off: in train
    mode BatchNorm alone changed EfficientNet-Lite0 features by ~98% even with gradients off.

    Args:
        model_name: timm architecture name, e.g. ``"tf_efficientnet_lite0"``; a ``"timm:"`` prefix is
            accepted and dropped. Required.
        image_size: Side in pixels of the square the images are resized to. ``None`` (the default) takes
            the architecture's default input size from timm's ``pretrained_cfg``.
        mean: Per-channel mean subtracted from pixels scaled to [0, 1], three floats. ``None`` (the
            default) takes timm's ``pretrained_cfg`` value for the architecture.
        std: Per-channel standard deviation the centred pixels are divided by, three floats. ``None``
            (the default) takes timm's ``pretrained_cfg`` value.
        interpolation: Resampling filter for the resize: ``"bicubic"`` (the default), ``"bilinear"``,
            ``"nearest"``, ``"lanczos"``, ``"box"`` or ``"hamming"``.
        timm_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``{"drop_path_rate": 0.1}``);
            must be JSON-serialisable since they are saved. Default ``None`` (none).
    """

    config_keys: list[str] = ["model_name", "image_size", "mean", "std", "interpolation", "timm_kwargs"]
    # Always save into a sub-folder: a root-level config.json + model.safetensors would look like a
    # bare transformers checkpoint to tools that classify folders by their files.
    save_in_root: bool = False

    def __init__(
        self,
        model_name: str,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str = "bicubic",
        timm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_name = _strip_timm_prefix(model_name)
        self.timm_kwargs = dict(timm_kwargs) if timm_kwargs else None
        if interpolation not in _RESAMPLING:
            raise TimmImageEncoderError(f"interpolation {interpolation!r} is not one of {', '.join(_RESAMPLING)}")
        self.interpolation = interpolation
        self.backbone = _create_backbone(self.model_name, self.timm_kwargs)

        pretrained_cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        if image_size is None:
            image_size = int(pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        if int(image_size) < 1:
            raise TimmImageEncoderError(f"image_size must be a positive number of pixels, not {image_size!r}")
        self.image_size = int(image_size)
        self.mean = self._channel_values("mean", mean, pretrained_cfg.get("mean", (0.5, 0.5, 0.5)))
        self.std = self._channel_values("std", std, pretrained_cfg.get("std", (0.5, 0.5, 0.5)))
        if any(value == 0 for value in self.std):
            raise TimmImageEncoderError(f"std may not contain 0: {self.std}")
        # Plain tensors, not buffers: they are config (saved as JSON), not weights.
        self._mean_tensor = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_tensor = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    @staticmethod
    def _channel_values(name: str, values: Sequence[float] | None, default: Sequence[float]) -> list[float]:
        chosen = default if values is None else values
        if isinstance(chosen, (int, float)):
            chosen = [chosen] * 3
        chosen = [float(value) for value in chosen]
        if len(chosen) != 3:
            raise TimmImageEncoderError(f"{name} needs 3 values, one per RGB channel, not {len(chosen)}: {chosen}")
        return chosen

    # ----------------------------------------------------------------------------------------- inputs
    @property
    def modalities(self) -> list[str]:
        """Only ``["image"]``: a Router sends text elsewhere."""
        return ["image"]

    def _load_image(self, item: Any) -> Image.Image:
        """One input -> an RGB PIL image; bad inputs raise :class:`TimmImageEncoderError`."""
        if isinstance(item, dict):
            if set(item) != {"image"}:
                raise TimmImageEncoderError(
                    f"TimmImageEncoder only takes images; got a dict with keys {sorted(map(str, item))}"
                )
            item = item["image"]
        if isinstance(item, Image.Image):
            return item if item.mode == "RGB" else item.convert("RGB")
        if isinstance(item, (str, os.PathLike)):
            return _open_image(os.fspath(item))
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
                raise TimmImageEncoderError(
                    "TimmImageEncoder takes numpy images as uint8 arrays shaped (H, W) or (H, W, C) with C in 1, 3, 4; "
                    f"got dtype {item.dtype} shape {tuple(item.shape)}"
                )
            return Image.fromarray(item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item).convert("RGB")
        raise TimmImageEncoderError(
            "TimmImageEncoder takes PIL images, image file paths, data:image URIs or uint8 numpy arrays; "
            f"got {type(item).__name__}"
        )

    def image_to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Resize an RGB PIL image to ``image_size`` x ``image_size`` and normalise it.

        Args:
            image: An RGB PIL image of any size.

        Returns:
            A float32 tensor shaped ``(3, image_size, image_size)``: ``(x/255 - mean) / std``.
        """
        size = (self.image_size, self.image_size)
        if image.size != size:
            image = image.resize(size, resample=_RESAMPLING[self.interpolation])
        array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        return (tensor - self._mean_tensor) / self._std_tensor

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Turn a batch of images into ``{"pixel_values": (batch, 3, image_size, image_size)}``.

        Sentence Transformers hands image file paths through unopened (as ``str``); they are opened
        here, as are ``data:image/...;base64,`` URIs. http(s) URLs are refused (nothing is downloaded).

        Args:
            inputs: PIL images, file paths (``str`` or ``os.PathLike``), ``data:image`` URIs,
                ``{"image": ...}`` dicts holding one of those, or uint8 numpy arrays (H, W[, C]).
            prompt: Ignored (images take no prompt); accepted because a Router passes it. Default ``None``.
            **kwargs: Ignored (e.g. ``task``, passed by a Router).

        Returns:
            ``{"pixel_values": float32 tensor}``.

        Raises:
            TimmImageEncoderError: An input that is missing, does not decode as an image, or has an unsupported type.
        """
        if not inputs:
            return {"pixel_values": torch.empty(0, 3, self.image_size, self.image_size)}
        tensors = [self.image_to_tensor(self._load_image(item)) for item in inputs]
        return {"pixel_values": torch.stack(tensors)}

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Write the backbone's pooled features for ``features["pixel_values"]`` to ``features["sentence_embedding"]``.

        Args:
            features: Needs ``"pixel_values"`` as made by :meth:`preprocess` (moved to the model's device).
            **kwargs: Ignored.

        Returns:
            ``features`` with ``"sentence_embedding"``: a ``(batch, get_embedding_dimension())`` tensor.
        """
        pixel_values = features["pixel_values"]
        parameter = next(self.backbone.parameters(), None)
        if parameter is not None and pixel_values.dtype != parameter.dtype:
            pixel_values = pixel_values.to(parameter.dtype)
        features["sentence_embedding"] = self.backbone(pixel_values)
        return features

    def get_embedding_dimension(self) -> int:
        """Size of the pooled features (1280 for EfficientNet-Lite0)."""
        return backbone_dimension(self.backbone)

    # ---------------------------------------------------------------------------------- train / freeze
    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone parameter requires grad."""
        return not any(parameter.requires_grad for parameter in self.backbone.parameters())

    def freeze_backbone(self, frozen: bool = True) -> Self:
        """Turn gradients for all backbone parameters off (``frozen=True``, the default) or on again.

        A frozen backbone is put into eval mode at once and kept there by :meth:`train`.

        Returns:
            This module.
        """
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Self:
        """Set train mode (``mode=True``, the default) or eval mode, as ``torch.nn.Module.train``, except that
        a frozen backbone (no parameter requires grad) always stays in eval mode: BatchNorm keeps using and
        no longer updates its running statistics, and dropout / drop-path stay off.

        Returns:
            This module.
        """
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------------------- save / load
    def get_config_dict(self) -> dict[str, Any]:
        """The JSON config: ``model_name``, ``image_size``, ``mean``, ``std``, ``interpolation``, ``timm_kwargs``."""
        return {
            "model_name": self.model_name,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "timm_kwargs": self.timm_kwargs,
        }

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write ``config.json`` and the weights (``model.safetensors``, or ``pytorch_model.bin`` when
        ``safe_serialization=False``; default True) into ``output_path``.

        Args:
            output_path: Existing directory to write into.
            *args: Ignored.
            safe_serialization: Save as safetensors (default True) rather than a torch pickle.
            **kwargs: Ignored.
        """
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> Self:
        """Rebuild the module from its saved config and weights.

        Args:
            model_name_or_path: The saved model's folder (or Hub id).
            subfolder: This module's folder inside it, e.g. ``"image_0_TimmImageEncoder"``. Default ``""``.
            token: Hub token, only for a Hub id. Default ``None``.
            cache_folder: Hub cache folder. Default ``None``.
            revision: Hub revision. Default ``None``.
            local_files_only: Never contact the Hub. Default False.
            **kwargs: Ignored; Sentence Transformers passes loader options such as
                ``trust_remote_code``, ``model_kwargs``, ``init_defaults`` or ``backend``.

        Raises:
            TimmImageEncoderError: The folder has no config for this module, or a config key this version does not know.
        """
        hub_kwargs = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path=model_name_or_path, **hub_kwargs)
        location = Path(model_name_or_path, subfolder).as_posix()
        if not config:
            raise TimmImageEncoderError(f"{location}: no {cls.config_file_name} for TimmImageEncoder")
        unknown = sorted(set(config) - set(cls.config_keys))
        if unknown:
            raise TimmImageEncoderError(f"{location}/{cls.config_file_name}: unknown TimmImageEncoder config keys {unknown}")
        if "model_name" not in config:
            raise TimmImageEncoderError(f"{location}/{cls.config_file_name}: model_name is missing")
        module = cls(**config)
        # Raises on any missing or unexpected key (strict), so a config/weights mismatch cannot go unnoticed.
        cls.load_torch_weights(model_name_or_path=model_name_or_path, model=module, **hub_kwargs)
        return module


def _open_image(reference: str) -> Image.Image:
    """Open a file path or ``data:image`` URI as an RGB image; http(s) URLs are refused."""
    if reference.startswith(("http://", "https://")):
        raise TimmImageEncoderError(f"image {reference!r}: URLs are not downloaded; save the image and pass its file path")
    if reference.startswith("data:image/"):
        header, _, payload = reference.partition(",")
        if ";base64" not in header:
            raise TimmImageEncoderError(f"image data URI {reference[:40]!r}...: only base64 data URIs are supported")
        try:
            source: Any = io.BytesIO(base64.b64decode(payload, validate=True))
        except ValueError as error:
            raise TimmImageEncoderError(f"image data URI {reference[:40]!r}...: invalid base64 ({error})") from error
        shown = f"{reference[:40]}..."
    else:
        path = Path(reference)
        if not path.is_file():
            raise TimmImageEncoderError(f"image {reference!r}: file not found")
        source, shown = path, reference
    try:
        with Image.open(source) as image:
            # Upright as the camera meant it, as transformers' image processors read files; convert()
            # reads the pixels, so the file can be closed.
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise TimmImageEncoderError(f"image {shown!r}: does not decode as an image ({error.__class__.__name__})") from error
