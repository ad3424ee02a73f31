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
from mmst_cli.core.models import timm_image_encoder as portable_module_source
from mmst_cli.core.models.portable import load_with_mmst_modules, save_model
from mmst_cli.core.models.timm_encoder import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_MODEL_NAME,
    EFFICIENTNET_LITE0_STD,
    TimmImageEncoder,
    efficientnet_lite0_encoder,
    timm_image_encoder,
)
from mmst_cli.core.models.timm_image_encoder import TimmImageEncoderError
from mmst_cli.core.models.timm_weights import efficientnet_lite0_weights_path, load_timm_weights
from tests.helpers import run_json

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
    return efficientnet_lite0_encoder(image_size=96).eval()


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
    with pytest.raises(TimmImageEncoderError, match="file not found"):
        encoder.preprocess([str(tmp_path / "missing.jpg")])
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(TimmImageEncoderError, match="does not decode as an image"):
        encoder.preprocess([str(tmp_path / "fake.jpg")])
    with pytest.raises(TimmImageEncoderError, match="not downloaded"):
        encoder.preprocess(["https://example.com/cat.jpg"])
    # Built the mmst way, a bad configuration is a one-line MmstError.
    with pytest.raises(MmstError, match="std may not contain 0"):
        timm_image_encoder(TINY_TIMM, image_size=32, std=0.0)


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
#: Loads a model folder with plain Sentence Transformers in a Python where ``import mmst_cli`` fails.
PLAIN_SENTENCE_TRANSFORMERS = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sentence_transformers import SentenceTransformer

    try:
        import mmst_cli
    except ImportError:
        pass
    else:
        raise SystemExit("mmst_cli is importable here: the check would prove nothing")
    folder, text, image, out = sys.argv[1:5]
    model = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    image_module = model[0].sub_modules["image"][0]
    assert type(image_module).__module__.startswith("transformers_modules."), type(image_module).__module__
    np.save(out, np.concatenate([model.encode([text]), model.encode([image])]))
    """
)


def _encode_each(model, *inputs) -> np.ndarray:
    """One row per input, one call each (a Router does not take mixed-modality batches)."""
    return np.concatenate([model.encode([item]) for item in inputs])


def test_a_composed_router_loads_with_plain_sentence_transformers_where_mmst_is_not_installed(tmp_path, minilm_path):
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    from mmst_cli.core.models.composition import compose_router
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model

    built = compose_router(
        text_encoder=str(minilm_path), image_encoder="timm:tf_efficientnet_lite0", audio_encoder=None, dim=32,
        image_size=64,
    )  # fmt: skip
    folder = tmp_path / "model"
    assert save_model(built.model, folder) == ["timm_image_encoder.TimmImageEncoder"]
    # The module's code travels as the package's own file, named the Hugging Face remote-code way.
    assert (folder / "timm_image_encoder.py").read_bytes() == open(portable_module_source.__file__, "rb").read()
    router_types = json.loads((folder / "router_config.json").read_text())["types"]
    assert router_types["image_0_TimmImageEncoder"] == "timm_image_encoder.TimmImageEncoder"
    assert not any("mmst" in reference for reference in router_types.values())
    with pytest.raises(ValueError, match="trust_remote_code"):  # Sentence Transformers asks for trust...
        SentenceTransformer(str(folder), device="cpu")

    # ... while mmst needs none: `mmst encode` on a text and an image.
    text, image = "a red circle on a white background", tmp_path / "image.png"
    _images()[0].save(image)
    (tmp_path / "inputs.txt").write_text(f"{text}\n{image.name}\n", encoding="utf-8")
    run_json("encode", str(tmp_path / "inputs.txt"), "--model", str(folder), "-o", str(tmp_path / "mmst.safetensors"))
    expected = load_file(str(tmp_path / "mmst.safetensors"))["embeddings"]
    assert expected.shape == (2, 32)
    built.model.to("cpu")
    np.testing.assert_allclose(expected, _encode_each(built.model, text, str(image)), atol=1e-6)

    # The subprocess sees a stand-in `mmst_cli` package, first on its path, whose import fails.
    shadow = tmp_path / "without-mmst" / "mmst_cli"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('mmst is not installed here')\n")
    out = tmp_path / "plain.npy"
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_SENTENCE_TRANSFORMERS, str(folder), text, str(image), str(out)],
        env=dict(os.environ, PYTHONPATH=str(shadow.parent), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf")),
        cwd=tmp_path,  # `python -c` puts the working folder first on the path: not the checkout
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.max(np.abs(np.load(out) - expected)) < 1e-6

    # A folder saved by an earlier mmst names the class by its old package path: mmst still loads it.
    (folder / "timm_image_encoder.py").unlink()
    router_types["image_0_TimmImageEncoder"] = "mmst_cli.core.timm_encoder.TimmImageEncoder"
    config = json.loads((folder / "router_config.json").read_text())
    (folder / "router_config.json").write_text(json.dumps({**config, "types": router_types}))
    earlier = load_model(locate_model(str(folder)), device="cpu")
    assert not earlier.trust_remote_code
    np.testing.assert_allclose(_encode_each(earlier, text, str(image)), expected, atol=1e-6)


def test_standalone_encoder_round_trip_in_process(tmp_path):
    from sentence_transformers import SentenceTransformer

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
    reloaded = load_with_mmst_modules(tmp_path, device="cpu")  # as Sentence Transformers wrote it
    assert isinstance(reloaded[0], TimmImageEncoder)
    assert np.array_equal(reloaded.encode(images), expected)

    # As mmst saves it: the module listed in modules.json is named file.Class, its file beside it.
    portable = tmp_path / "portable"
    assert save_model(model, portable) == ["timm_image_encoder.TimmImageEncoder"]
    assert json.loads((portable / "modules.json").read_text())[0]["type"] == "timm_image_encoder.TimmImageEncoder"
    assert (portable / "timm_image_encoder.py").is_file()
    assert np.array_equal(load_with_mmst_modules(portable, device="cpu").encode(images), expected)


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
