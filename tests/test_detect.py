"""``mmst detect`` through the real CLI, on every tiny family, the packaged MiniLM and bad input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.helpers import assert_one_line_error, run_json, run_mmst, run_mmst_process

EXPECTED_MODALITIES = {
    "bert": ["text"],
    "clip": ["image", "text"],
    "siglip": ["image", "text"],
    "qwen2-vl": ["image", "message", "text", "video"],
    "wav2vec2": ["audio"],
}
EXPECTED_ARCHITECTURE = {
    "bert": "BertModel",
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
    "wav2vec2": "Wav2Vec2Model",
}


@pytest.mark.parametrize("family", sorted(EXPECTED_MODALITIES))
def test_detect_tiny_family_json(tiny_models, family):
    report = run_json("detect", str(tiny_models[family]))
    assert report["kind"] == "embedder"
    for modality in EXPECTED_MODALITIES[family]:
        assert modality in report["modalities"]
        assert report["supports"][modality] is True
    unsupported = {"text", "image", "audio", "video", "message"} - set(report["modalities"])
    assert all(report["supports"][modality] is False for modality in unsupported)
    # The combined input needs both parts and chat-message support: only the VLM has it.
    assert report["supports"]["image+text"] is (family == "qwen2-vl")
    transformer = report["modules"][0]
    assert transformer["architecture"] == EXPECTED_ARCHITECTURE[family]
    assert report["parameters"] == sum(module["parameters"] for module in report["modules"]) > 0
    assert report["weights_memory_bytes"] == {"fp32": 4 * report["parameters"], "bf16": 2 * report["parameters"]}
    assert report["embedding_dimension"] > 0
    assert report["attention"]["eager"] is None


def test_detect_packaged_minilm_table_and_json(minilm_path):
    report = run_json("detect", str(minilm_path))
    assert report["modalities"] == ["text"]
    assert report["embedding_dimension"] == 384
    assert report["parameters"] == 22_713_216  # the published size of all-MiniLM-L6-v2
    assert report["pooling"] == ["mean"]
    assert report["max_seq_length"] == 256
    assert report["similarity_fn_name"] == "cosine"
    assert report["modules"][0]["model_type"] == "bert"
    assert report["attention"]["sdpa"] is None
    assert "flash_attention_2" in report["attention"]

    table = run_mmst("detect", str(minilm_path))
    assert table.returncode == 0, table.stderr
    assert table.stdout == ""  # tables are for humans: stderr
    for fragment in ("embedder (SentenceTransformer)", "22.7M", "384", "BertModel", "mean", "eager, sdpa"):
        assert fragment in table.stderr


def test_detect_without_model_describes_the_embedded_default_router():
    report = run_json("detect")
    assert report["model"].startswith("embedded default")
    assert report["modalities"] == ["image", "text"] and report["embedding_dimension"] == 384
    routes = report["routes"]
    assert routes["text"]["modalities"] == ["text"] and routes["image"]["modalities"] == ["image"]
    # All routes live in memory at once: the model's weights are the sum of its routes.
    assert report["parameters"] == routes["text"]["parameters"] + routes["image"]["parameters"]
    assert report["weights_memory_bytes"]["fp32"] == sum(r["weights_memory_bytes"]["fp32"] for r in routes.values())
    types = {(module.get("route"), module["type"]) for module in report["modules"]}
    assert {("text", "Transformer"), ("text", "Dense"), ("image", "TimmImageEncoder"), ("image", "Dense")} <= types


def test_detect_reranker_and_multi_vector(tiny_reranker, tiny_multi_vector):
    reranker = run_json("detect", str(tiny_reranker))
    assert reranker["kind"] == "reranker" and reranker["class"] == "CrossEncoder"
    assert reranker["num_labels"] == 1
    multi = run_json("detect", str(tiny_multi_vector))
    assert multi["kind"] == "multi-vector" and multi["class"] == "MultiVectorEncoder"
    assert multi["multi_vector"] == {"token_dimension": 128, "query_length": None, "document_length": None, "token_pooling": None}
    assert reranker["multi_vector"] is None


def test_a_training_run_folder_stands_for_its_model_in_every_command(tiny_models, tiny_reranker, tmp_path):
    # evaluate and train-rerank took runs/x; detect, encode, index, search and mine wanted runs/x/model.
    import shutil

    run = tmp_path / "runs" / "x"
    shutil.copytree(tiny_models["bert"], run / "model")
    (run / "run.json").write_text("{}")
    assert run_json("detect", str(run))["kind"] == "embedder"
    (tmp_path / "texts.txt").write_text("a cat\na dog\n")
    encoded = run_json("encode", str(tmp_path / "texts.txt"), "--model", str(run), "-o", str(tmp_path / "v.npy"))
    assert encoded["model"] == str(run / "model") and encoded["count"] == 2
    reranker_run = tmp_path / "runs" / "rr"
    shutil.copytree(tiny_reranker, reranker_run / "model")
    (reranker_run / "run.json").write_text("{}")
    assert run_json("detect", str(reranker_run))["kind"] == "reranker"


def test_detect_inputs_reports_missing_files_instead_of_text(tiny_models, tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 40), "orange").save(image)
    missing = tmp_path / "dog.png"
    result = run_mmst(
        "detect", str(tiny_models["clip"]), "--json",
        "--input", str(image), "--input", str(missing), "--input", "a photo of a cat",
    )  # fmt: skip
    assert result.returncode == 1  # one input cannot be used
    inputs = {item["input"]: item for item in json.loads(result.stdout)["inputs"]}
    assert inputs[str(image)] == {
        "input": str(image), "modality": "image", "source": "file", "supported": True, "problem": None, "detail": None,
    }  # fmt: skip
    assert inputs[str(missing)]["modality"] == "image"
    assert inputs[str(missing)]["problem"] == "file not found"
    assert inputs["a photo of a cat"]["supported"] is True


def test_detect_inputs_unsupported_modality(tiny_models, tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 40)).save(image)
    result = run_mmst("detect", str(tiny_models["bert"]), "--input", str(image))
    assert result.returncode == 1
    assert "the model takes text" in result.stderr


def test_detect_errors_are_one_line_with_exit_2(tmp_path):
    # The console script in a real process: the exit status and stderr the shell sees.
    assert_one_line_error(run_mmst_process("detect", str(tmp_path / "missing")), 2, "does not exist")
    assert_one_line_error(run_mmst("detect", str(tmp_path)), 2, "neither modules.json nor config.json")
    assert_one_line_error(
        run_mmst("detect", "sentence-transformers/all-MiniLM-L6-v2"), 2, "offline", "all-MiniLM-L6-v2"
    )


def test_debug_shows_the_traceback(tmp_path):
    result = run_mmst("detect", str(tmp_path), "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
