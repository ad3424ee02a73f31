"""A train-embed run folder used by the other commands: ``evaluate`` scores the run's own evaluation
data, ``train-rerank`` starts a reranker from its text tower."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.data_factory import write_colour_pairs
from tests.helpers import assert_one_line_error, run_json, run_mmst


@pytest.fixture(scope="module")
def router_run(tiny_models, tmp_path_factory) -> dict:
    """A 4-step Router run (tiny BERT text, tiny CLIP image) with --eval-split 0.5 on 16 colour pairs,
    and the Router it started from (composed the same way, seeded), saved as the base."""
    from mmst_cli.core.models.composition import compose_router

    root = tmp_path_factory.mktemp("router-run")
    data = write_colour_pairs(root / "data", count=16)
    towers = {"text_encoder": str(tiny_models["bert"]), "image_encoder": str(tiny_models["clip"]), "dim": 16}
    summary = run_json(
        "train-embed", "--text-encoder", towers["text_encoder"], "--image-encoder", towers["image_encoder"],
        "--dim", "16", "--data", str(data), "--eval-split", "0.5", "--max-steps", "4", "--batch-size", "8",
        "--warmup", "0", "--head-lr", "0.05", "--output-dir", str(root / "run"),
        "--prompts", '{"caption": "a query: "}',
    )  # fmt: skip
    compose_router(text_encoder=towers["text_encoder"], image_encoder=towers["image_encoder"], audio_encoder=None, dim=16, seed=42).model.save(
        str(root / "base")
    )
    return {"run": root / "run", "data": data, "base": root / "base", "summary": summary}


def _assert_same_metrics(reported: dict, expected: dict) -> None:
    assert expected and set(expected) <= set(reported), (reported, expected)
    for metric, value in expected.items():
        assert reported[metric] == pytest.approx(value, abs=1e-6), metric


def test_evaluate_scores_a_run_on_exactly_its_held_out_split(router_run):
    run = router_run["run"]
    record = json.loads((run / "eval_data.json").read_text())
    assert record["kind"] == "split" and record["seed"] == 42 and record["rows"] == 16 and len(record["held_out"]) == 8
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"] != metrics["base"]  # training moved the model: the comparisons below can tell them apart

    after = run_json("evaluate", "--model", str(run))
    assert after["queries"] == 8 and "held-out 0.5" in after["data"]
    _assert_same_metrics(after["metrics"], metrics["final"])
    # The run trained and scored with its --prompts; the saved model keeps them, the base takes them by flag.
    assert json.loads((run / "model" / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "a query: "
    before = run_json("evaluate", "--eval-of", str(run), "--model", str(router_run["base"]), "--query-prompt", "a query: ")
    _assert_same_metrics(before["metrics"], metrics["base"])


def test_a_copied_checkout_is_accepted_and_changed_data_refused(router_run, tmp_path):
    run, data = router_run["run"], router_run["data"]
    # New modification times, same content (a fresh CI checkout): the rows' digest vouches for them.
    os.utime(data, (1, 1))
    again = run_json("evaluate", "--model", str(run))
    _assert_same_metrics(again["metrics"], json.loads((run / "metrics.json").read_text())["final"])

    original = data.read_text()
    try:
        lines = original.splitlines()
        data.write_text("\n".join(line.replace("a photo of", "an image of") for line in lines) + "\n")
        result = run_mmst("evaluate", "--model", str(run))
        assert_one_line_error(result, 2, str(data), "changed since the run", "restore the data")
        data.write_text("\n".join(lines[:-1]) + "\n")
        assert_one_line_error(run_mmst("evaluate", "--model", str(run)), 2, "15 usable rows, the run split 16")
    finally:
        data.write_text(original)

    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("eval_data.json", "checkpoints"))
    assert_one_line_error(run_mmst("evaluate", "--model", str(bare)), 2, "has no eval_data.json", "pass --data")
    assert_one_line_error(run_mmst("evaluate", "--eval-of", str(run), "--data", str(data)), 2, "--eval-of", "drop --data")


def test_eval_data_runs_record_their_reference(tiny_models, tmp_path):
    data = write_colour_pairs(tmp_path / "data", count=6)
    run_json(
        "train-embed", "--model", str(tiny_models["clip"]), "--data", str(data), "--eval-data", str(data),
        "--max-steps", "1", "--batch-size", "4", "--output-dir", str(tmp_path / "run"),
    )  # fmt: skip
    record = json.loads((tmp_path / "run" / "eval_data.json").read_text())
    assert record["kind"] == "data" and record["data_path"] == str(Path(data).resolve()) and record["held_out"] is None
    before = run_json("evaluate", "--eval-of", str(tmp_path / "run"), "--model", str(tiny_models["clip"]))
    _assert_same_metrics(before["metrics"], json.loads((tmp_path / "run" / "metrics.json").read_text())["base"])


def _rerank_pairs(folder: Path) -> Path:
    rows = [{"query": f"what colour is thing {i}?", "positive": f"thing {i} is colour {i}", "negative": f"thing {i + 1} is round"}
            for i in range(8)]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path


def test_train_rerank_starts_from_the_text_tower_of_a_run(router_run, tiny_models, tmp_path):
    from mmst_cli.core.models.composition import compose_router

    data = _rerank_pairs(tmp_path / "data")
    common = ["--data", str(data), "--eval-split", "0.25", "--max-steps", "1", "--batch-size", "4"]
    for name, reference in (("run", router_run["run"]), ("saved", router_run["run"] / "model")):
        summary = run_json("train-rerank", "--model", str(reference), *common, "--output-dir", str(tmp_path / name))
        assert summary["arch"] == "classifier" and summary["model"].startswith(str(router_run["run"] / "model" / "text_0_Transformer"))

    # A reranker run is not something evaluate retrieves with: it says where the reranker goes.
    assert_one_line_error(run_mmst("evaluate", "--model", str(tmp_path / "run")), 2, "is a reranker")
    refused = run_mmst("evaluate", "--eval-of", str(tmp_path / "run"), "--model", str(router_run["base"]))
    assert_one_line_error(refused, 2, "is a train-rerank run", f"--reranker {tmp_path / 'run' / 'model'}")

    image_only = tmp_path / "image-only"
    compose_router(text_encoder=None, image_encoder=str(tiny_models["clip"]), audio_encoder=None, dim=16).model.save(str(image_only))
    refused = run_mmst("train-rerank", "--model", str(image_only), *common, "--output-dir", str(tmp_path / "refused"))
    assert_one_line_error(refused, 2, str(image_only), "no text tower (routes: image)", "--text-encoder")
    assert not (tmp_path / "refused").exists()
