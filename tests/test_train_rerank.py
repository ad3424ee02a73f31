"""``mmst train-rerank``: the three architectures on tiny real models, every loss, data shaping,
the chat-template role adaptation, the Dense initialisation, reload, resume, detect and evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.lora import LoraOptions
from mmst_cli.core.models.loading import load_model
from mmst_cli.core.models.locate import locate_model
from mmst_cli.core.train.rerank import TrainRerankOptions, reranker_scores, reranking_metrics, train_reranker
from mmst_cli.core.train.rerank_data import load_rerank_data, split_queries, training_dataset
from mmst_cli.core.models.rerankers import PAIR_TEMPLATE_MARKER, build_reranker, reranker_arch
from mmst_cli.testing.tiny_models import QWEN2_VL_CHAT_TEMPLATE
from tests.data_factory import COLOUR_NAMES, write_colour_pairs
from tests.helpers import assert_one_line_error, run_json, run_mmst, run_mmst_process

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Qwen-style: anything but system/user/assistant raises, as the Qwen3 / Qwen3-VL templates do.
STRICT_ROLES_TEMPLATE = QWEN2_VL_CHAT_TEMPLATE.replace(
    "{%- for message in messages -%}",
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unexpected message role.') -}}{%- endif -%}",
    1,
)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path


@pytest.fixture(scope="module")
def strict_qwen(tiny_models, tmp_path_factory) -> Path:
    """The tiny Qwen2-VL with a chat template that raises on the 'query'/'document' roles."""
    path = tmp_path_factory.mktemp("strict") / "qwen2-vl-strict"
    shutil.copytree(tiny_models["qwen2-vl"], path)
    (path / "chat_template.jinja").write_text(STRICT_ROLES_TEMPLATE, encoding="utf8")
    return path


@pytest.fixture(scope="module")
def untied_qwen(tiny_models, tmp_path_factory) -> Path:
    """The tiny Qwen2-VL with an LM head that differs from its input embeddings (like Qwen3-VL-8B)."""
    from transformers import Qwen2VLForConditionalGeneration

    path = tmp_path_factory.mktemp("untied") / "qwen2-vl-untied"
    shutil.copytree(tiny_models["qwen2-vl"], path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(path))
    model.config.tie_word_embeddings = False
    model.config.get_text_config().tie_word_embeddings = False
    generator = torch.Generator().manual_seed(1)
    head = torch.randn(model.lm_head.weight.shape, generator=generator) * 0.5
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> dict[str, Path]:
    """Image data both ways: caption -> image pairs with a negative, and image -> caption labelled rows."""
    root = tmp_path_factory.mktemp("colours")
    pairs = write_colour_pairs(root, count=8, negatives=True)
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf8").splitlines()]
    image_queries = []
    for index, row in enumerate(rows):
        other = rows[(index + 1) % len(rows)]
        image_queries.append({"query": row["image"], "document": row["caption"], "label": 1})
        image_queries.append({"query": row["image"], "document": other["caption"], "label": 0})
    return {"pairs": pairs, "image_queries": _write_jsonl(root / "image-queries.jsonl", image_queries)}


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> dict[str, Path]:
    """Text rerank data in all three layouts."""
    root = tmp_path_factory.mktemp("texts")
    answers = [f"{name} things are numbered {index * 7}" for index, name in enumerate(COLOUR_NAMES[:8])]
    questions = [f"which number goes with {name}?" for name in COLOUR_NAMES[:8]]
    pairs = [
        {"query": q, "positive": answers[i], "negative_1": answers[(i + 1) % 8], "negative_2": answers[(i + 2) % 8]}
        for i, q in enumerate(questions)
    ]
    pointwise = [
        {"query": q, "document": answers[(i + shift) % 8], "label": int(shift == 0)}
        for i, q in enumerate(questions)
        for shift in (0, 3)
    ]
    listwise = [
        {"query": q, "documents": [answers[(i + 1) % 8], answers[i], answers[(i + 2) % 8]], "labels": [1, 2, 0]}
        for i, q in enumerate(questions)
    ]
    return {
        "pairs": _write_jsonl(root / "pairs.jsonl", pairs),
        "pointwise": _write_jsonl(root / "pointwise.jsonl", pointwise),
        "listwise": _write_jsonl(root / "listwise.jsonl", listwise),
    }


def _options(tmp_path, model, data, **overrides) -> TrainRerankOptions:
    values = dict(
        model=None if model is None else str(model), data=None if data is None else str(data), eval_data=str(data), max_steps=3, batch_size=4, lr=3e-3,
        warmup=0.0, output_dir=str(tmp_path / "run"), mini_batch_size=8,
    )  # fmt: skip
    values.update(overrides)
    return TrainRerankOptions(**values)


def _scores(model, data_path) -> torch.Tensor:
    return torch.tensor(reranker_scores(model, load_rerank_data(str(data_path)), batch_size=8))


def _check_trained_and_reloads(result, start_scores: torch.Tensor, data_path) -> None:
    """Scores moved with training; the saved folder reloads as a reranker with the same scores."""
    trained = _scores(result.model, data_path)
    assert not torch.allclose(trained, start_scores, atol=1e-6), "training did not change the scores"
    model_dir = Path(result.summary["model_dir"])
    source = locate_model(str(model_dir))
    assert source.kind == "reranker"
    reloaded = load_model(source, device="cpu")
    assert reranker_arch(reloaded) == result.summary["arch"]
    assert torch.allclose(_scores(reloaded, data_path), trained, atol=1e-5)
    metrics = json.loads((model_dir.parent / "metrics.json").read_text(encoding="utf8"))
    assert set(metrics) >= {"base", "final", "train", "options"}
    assert set(metrics["final"]) == {"ndcg@10", "mrr@10", "map", "accuracy@1"}


# ------------------------------------------------------------------------------------------------
# Architectures on tiny real models
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["logit-score", "pooling-dense"])
@pytest.mark.parametrize("direction", ["image-documents", "image-queries"])
def test_vlm_archs_train_on_images_and_reload(tmp_path, strict_qwen, colour_data, arch, direction):
    data = colour_data["pairs" if direction == "image-documents" else "image_queries"]
    start = _scores(build_reranker(str(strict_qwen), arch=arch, log=lambda line: None).model, data)
    lines: list[str] = []
    result = train_reranker(_options(tmp_path, strict_qwen, data, arch=arch), log=lines.append)
    summary = result.summary
    assert summary["arch"] == arch and summary["pair_template"] == "user"
    assert any(line.startswith("chat template:") and "Unexpected message role" in line for line in lines), lines
    modalities = "text -> image" if direction == "image-documents" else "image -> text"
    assert any(modalities in line for line in lines), lines
    assert summary["eval_queries"] == 8 and summary["eval_pairs"] == 16
    assert 0 <= summary["final"]["ndcg@10"] <= 1 and summary["base"].keys() == summary["final"].keys()
    _check_trained_and_reloads(result, start, data)
    saved_template = (Path(summary["model_dir"]) / "chat_template.jinja").read_text(encoding="utf8")
    assert saved_template.startswith(PAIR_TEMPLATE_MARKER)


def test_classifier_on_bert_trains_and_reloads(tmp_path, tiny_models, text_data):
    data = text_data["pointwise"]
    start = _scores(build_reranker(str(tiny_models["bert"]), arch="classifier").model, data)
    result = train_reranker(_options(tmp_path, tiny_models["bert"], data, arch="auto", max_steps=4), log=lambda line: None)
    assert result.summary["arch"] == "classifier" and result.summary["pair_template"] is None
    assert result.summary["instruction"] is None
    _check_trained_and_reloads(result, start, data)


def test_pooling_dense_starts_at_the_lm_judgement_with_an_untied_head(untied_qwen, colour_data):
    from PIL import Image

    logit = build_reranker(str(untied_qwen), arch="logit-score").model
    dense_built = build_reranker(str(untied_qwen), arch="pooling-dense")
    notes = dense_built.notes
    pairs = [
        ("a photo of the colour red", Image.new("RGB", (40, 40), (200, 10, 10))),
        ("which colour?", "a photo of the colour blue"),
        (Image.new("RGB", (40, 40), (10, 10, 200)), "blue"),
    ]
    identity = torch.nn.Identity()
    lm_scores = torch.tensor(logit.predict(pairs, activation_fn=identity))
    dense_scores = torch.tensor(dense_built.model.predict(pairs, activation_fn=identity))
    assert torch.allclose(lm_scores, dense_scores, atol=1e-4), (lm_scores, dense_scores)
    assert any("the LM head (output embeddings)" in note for note in notes), notes
    # The input embedding rows are another matrix here: they would not reproduce the LM's judgement.
    transformer = dense_built.model[0]
    true_id, false_id = (transformer.tokenizer.encode(token, add_special_tokens=False)[0] for token in ("1", "0"))
    embeddings = transformer.model.get_input_embeddings().weight.detach()
    assert not torch.allclose(dense_built.model[2].linear.weight[0], embeddings[true_id] - embeddings[false_id])


# ------------------------------------------------------------------------------------------------
# Losses and data layouts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "layout"),
    [
        ("bce", "pairs"), ("bce", "listwise"), ("cmnrl", "pointwise"),
        ("lambda", "pairs"), ("listnet", "pointwise"), ("plistmle", "listwise"),
    ],  # fmt: skip
)
def test_each_loss_trains_on_each_layout(tmp_path, tiny_models, text_data, loss, layout):
    data = text_data[layout]
    if loss == "bce" and layout == "listwise":
        rows = [json.loads(line) for line in data.read_text(encoding="utf8").splitlines()]
        binary = [dict(row, labels=[int(label == 2) for label in row["labels"]]) for row in rows]
        data = _write_jsonl(tmp_path / "binary.jsonl", binary)
    lines: list[str] = []
    result = train_reranker(
        _options(tmp_path, tiny_models["bert"], data, arch="classifier", loss=loss, eval_steps=2 if loss == "bce" else None),
        log=lines.append,
    )
    curve = [value for _, value in result.summary["train"]["loss_curve"]]
    assert len(curve) == 3 and all(torch.isfinite(torch.tensor(curve))), curve
    assert result.summary["data_layout"] == layout and result.summary["loss"] == loss
    assert any(line.startswith(f"{loss}:") for line in lines), lines


def test_dataloader_workers_train_the_same_reranker(tmp_path, tiny_models, text_data):
    # The workers build the batches (pairs through the tokenizer); the losses and weights are the same.
    results = [
        train_reranker(
            _options(tmp_path / str(workers), tiny_models["bert"], text_data["pairs"], eval_data=None, max_steps=2,
                     loss="cmnrl", dataloader_workers=workers),
            log=lambda line: None,
        )
        for workers in (0, 2)
    ]  # fmt: skip
    curves = [result.summary["train"]["loss_curve"] for result in results]
    assert len(curves[0]) == 2 and curves[1] == curves[0]
    trained = results[1].model.state_dict()
    assert all(torch.equal(trained[name], tensor) for name, tensor in results[0].model.state_dict().items())


def test_lora_on_pooling_dense_keeps_the_head_trainable_and_saves_merged(tmp_path, tiny_models, text_data):
    data = text_data["pointwise"]
    lines: list[str] = []
    result = train_reranker(
        _options(tmp_path, tiny_models["qwen2-vl"], data, arch="pooling-dense", lora=LoraOptions(r=4)), log=lines.append
    )
    trainable = int(next(line for line in lines if line.startswith("LoRA")).split(": ")[1].split()[0].replace(",", ""))
    assert 0 < trainable < sum(parameter.numel() for parameter in result.model.parameters()) / 2
    model_dir = Path(result.summary["model_dir"])
    assert not list(model_dir.rglob("adapter_config.json"))
    reloaded = load_model(locate_model(str(model_dir)), device="cpu")
    assert torch.allclose(_scores(reloaded, data), _scores(result.model, data), atol=1e-5)


def test_pair_data_expands_to_pointwise_and_lists(text_data):
    data = load_rerank_data(str(text_data["pairs"]))
    assert data.layout == "pairs" and data.num_queries == 8 and len(data.labels) == 24
    assert data.labels[:3] == [1.0, 0.0, 0.0] and data.groups[:4] == [0, 0, 0, 1]
    capped = load_rerank_data(str(text_data["pairs"]), negatives_per_positive=1)
    assert len(capped.labels) == 16
    lists = training_dataset(data, "lambda", None, log=lambda line: None)
    assert len(lists) == 8 and lists[0]["labels"] == [1.0, 0.0, 0.0] and len(lists[0]["documents"]) == 3
    contrastive = training_dataset(data, "cmnrl", 1, log=lambda line: None)
    assert contrastive.column_names == ["query", "positive", "negative_1"] and len(contrastive) == 8


def test_listwise_and_pointwise_rows_group_by_query(text_data, tmp_path):
    listwise = load_rerank_data(str(text_data["listwise"]))
    assert listwise.layout == "listwise" and listwise.num_queries == 8 and listwise.labels[:3] == [1.0, 2.0, 0.0]
    with pytest.raises(MmstError, match="--loss bce needs labels between 0 and 1"):
        training_dataset(listwise, "bce", None, log=lambda line: None)
    pointwise = load_rerank_data(str(text_data["pointwise"]))
    assert pointwise.layout == "pointwise" and pointwise.num_queries == 8 and len(pointwise.labels) == 16
    train, held_out = split_queries(pointwise, 0.25, seed=42)
    assert held_out.num_queries == 2 and train.num_queries == 6 and len(held_out.labels) == 4
    assert not {held_out.queries[0]} & set(train.queries)  # a query's candidates stay together
    mismatched = _write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "documents": ["a", "b"], "labels": [1]}])
    with pytest.raises(MmstError, match="row 1 has 2 documents but 1 labels"):
        load_rerank_data(str(mismatched))
    one_each = _write_jsonl(tmp_path / "single.jsonl", [{"query": f"q{i}", "document": "d", "label": 1} for i in range(3)])
    with pytest.raises(MmstError, match="no query .* has two documents with different labels"):
        training_dataset(load_rerank_data(str(one_each)), "listnet", None, log=lambda line: None)


def test_bad_media_is_named_or_skipped_with_labels_kept_aligned(tmp_path):
    root = tmp_path / "data"
    write_colour_pairs(root, count=4)
    rows = [{"query": f"colour {i}", "document": f"images/{i:03d}.png", "label": i % 2} for i in range(4)]
    data = _write_jsonl(root / "pointwise.jsonl", rows)
    (root / "images" / "001.png").unlink()
    with pytest.raises(MmstError, match=r"row 2, column 'document'.*file not found.*--skip-bad"):
        load_rerank_data(str(data))
    kept = load_rerank_data(str(data), skip_bad=True)
    assert kept.skipped_rows == 1 and kept.queries == ["colour 0", "colour 2", "colour 3"]
    assert kept.labels == [0.0, 0.0, 1.0] and kept.column_modalities == {"query": "text", "document": "image"}
    assert all(Path(path).is_absolute() for path in kept.documents)


def test_reranking_metrics_follow_trec_eval(text_data):
    data = load_rerank_data(str(text_data["pairs"]))  # per query: positive, then two negatives
    perfect = [3.0 if label else 0.0 for label in data.labels]
    metrics, counts = reranking_metrics(data, perfect)
    assert metrics == {"ndcg@10": 1.0, "mrr@10": 1.0, "map": 1.0, "accuracy@1": 1.0}
    assert counts == {"evaluated": 8, "skipped_no_relevant": 0}
    worst, _ = reranking_metrics(data, [-label for label in data.labels])
    assert worst["mrr@10"] == pytest.approx(1 / 3) and worst["accuracy@1"] == 0.0
    ties, _ = reranking_metrics(data, [0.0] * len(data.labels))  # ties: document id descending, as trec_eval
    assert ties["mrr@10"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------
# Chat templates, answer tokens, options
# ------------------------------------------------------------------------------------------------


def test_role_adaptation_only_when_the_template_needs_it(tiny_models, strict_qwen):
    native = build_reranker(str(tiny_models["qwen2-vl"]), log=lambda line: None)  # its ChatML takes any role
    assert native.pair_template == "native" and native.arch == "logit-score"
    with pytest.raises(MmstError, match="--pair-template native.*Unexpected message role"):
        build_reranker(str(strict_qwen), pair_template="native")
    forced = build_reranker(str(tiny_models["qwen2-vl"]), pair_template="user", prompt="Is it relevant?", log=lambda line: None)
    transformer = forced.model[0]
    messages = transformer.input_formatter.pair_to_messages(("the query", "the document"))
    rendered = transformer.processor.apply_chat_template(
        [{"role": "system", "content": [{"type": "text", "text": "Is it relevant?"}]}, *messages],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert rendered.endswith(
        "<|im_start|>user\n<Query>: the query\n<Document>: the document<|im_end|>\n<|im_start|>assistant\n"
    ), rendered
    assert forced.model.prompts["instruction"] == "Is it relevant?" and forced.model.default_prompt_name == "instruction"


def test_answer_tokens_must_be_single_tokens(tiny_models):
    with pytest.raises(MmstError, match="--true-token 'definitely relevant' is .* tokens"):
        build_reranker(str(tiny_models["qwen2-vl"]), true_token="definitely relevant", false_token="0")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"loss": "triplet"}, "use one of bce, cmnrl, lambda, listnet, plistmle"),
        ({"arch": "colbert"}, "--arch 'colbert' is unknown"),
        ({"loss": "cmnrl", "gradient_checkpointing": True}, "cannot be combined with --gradient-checkpointing"),
        ({"true_token": "1", "false_token": "1"}, "must differ"),
        ({"eval_split": 0.2}, "--eval-data and --eval-split"),
        ({"negatives_per_positive": 0}, "--negatives-per-positive must be positive"),
        ({"data": None, "eval_data": None}, "--data is required when you choose a model"),
        ({"model": None, "data": None, "eval_data": "pairs.jsonl"}, "need --data; the demo brings its own"),
    ],
)
def test_impossible_options_fail_before_any_work(tmp_path, overrides, fragment):
    model = overrides.pop("model", "unused")
    data = overrides.pop("data", "unused.jsonl")
    options = _options(tmp_path, model, data, **overrides)
    with pytest.raises(MmstError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        options.validate()


def test_example_configs_resolve():
    import yaml
    from typer.testing import CliRunner

    from mmst_cli.cli.app import app

    for name in ("rerank-qwen3-vl.yaml", "rerank-minilm-classifier.yaml"):
        result = CliRunner().invoke(app, ["train-rerank", "--config", str(EXAMPLES / name), "--print-config"])
        assert result.exit_code == 0, result.output
        resolved = yaml.safe_load(result.stdout)
        assert resolved["trust_remote_code"] is False and resolved["model"] and resolved["loss"]


# ------------------------------------------------------------------------------------------------
# Through the command line: --json, refusal, resume, detect, evaluate
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_vlm_reranker(strict_qwen, colour_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vlm-reranker")
    result = train_reranker(_options(run, strict_qwen, colour_data["pairs"], max_steps=2), log=lambda line: None)
    return Path(result.summary["model_dir"])


def test_cli_json_refusal_and_resume(tmp_path, tiny_models, text_data):
    common = ["--model", str(tiny_models["bert"]), "--data", str(text_data["pairs"]), "--eval-split", "0.25",
              "--batch-size", "4", "--save-steps", "2", "--output-dir", str(tmp_path / "run")]  # fmt: skip
    first = run_json("train-rerank", *common, "--max-steps", "2")
    assert first["arch"] == "classifier" and first["data_layout"] == "pairs" and first["eval_queries"] == 2
    assert first["base"].keys() == first["final"].keys() == {"ndcg@10", "mrr@10", "map", "accuracy@1"}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == first
    # A finished run is never overwritten; the console script in a real process says so with exit 2.
    refused = run_mmst_process("train-rerank", *common, "--max-steps", "3")
    assert_one_line_error(refused, 2, "already holds a trained model", "pass --resume")
    resumed = run_json("train-rerank", *common, "--max-steps", "3", "--resume")
    assert resumed["train"]["steps"] == 3
    assert [step for step, _ in resumed["train"]["loss_curve"]] == [1, 2, 3]


def test_bce_on_pairs_without_negatives_is_refused_with_the_fix(tmp_path, tiny_models):
    positives_only = _write_jsonl(tmp_path / "positives.jsonl", [{"query": f"q{i}", "positive": f"answer {i}"} for i in range(6)])
    common = ["--model", str(tiny_models["bert"]), "--data", str(positives_only), "--max-steps", "1", "--output-dir"]
    refused = run_mmst("train-rerank", *common, str(tmp_path / "bce"))
    assert_one_line_error(refused, 2, "every label is 1 (no negatives)", "negative columns", "--loss cmnrl")
    assert not (tmp_path / "bce").exists()
    in_batch = run_json("train-rerank", *common, str(tmp_path / "cmnrl"), "--loss", "cmnrl", "--batch-size", "3")
    assert in_batch["train"]["steps"] == 1


def test_dry_run_plans_a_vlm_reranker_on_image_documents(tmp_path, tiny_models, colour_data):
    common = ["--model", str(tiny_models["qwen2-vl"]), "--data", str(colour_data["pairs"]), "--batch-size", "6",
              "--mini-batch-size", "2", "--output-dir", str(tmp_path / "run"), "--dry-run"]  # fmt: skip
    plan = run_json("train-rerank", *common)["dry_run"]
    # bce scores the whole batch of (query, image) pairs at once, with measured activations.
    assert plan["fits"] is True and plan["samples_in_flight"] == 6
    assert plan["per_sample_activation_bytes"] > 0
    assert plan["components_bytes"]["activations"] == 6 * plan["per_sample_activation_bytes"]
    trainable = sum(p.numel() for p in load_model(locate_model(str(tiny_models["qwen2-vl"])), device="cpu").parameters())
    assert plan["components_bytes"]["optimizer"] == 8 * trainable
    # cmnrl goes mini batch by mini batch; nothing is written either way.
    cached = run_json("train-rerank", *common, "--loss", "cmnrl")["dry_run"]
    assert cached["samples_in_flight"] == 2
    assert not (tmp_path / "run").exists()


def test_detect_says_reranker(saved_vlm_reranker):
    described = run_json("detect", str(saved_vlm_reranker))
    assert described["kind"] == "reranker" and described["class"] == "CrossEncoder"
    assert [module["type"] for module in described["modules"]] == ["Transformer", "LogitScore"]


def test_evaluate_reranks_image_documents_with_the_saved_reranker(saved_vlm_reranker, tiny_models, colour_data):
    report = run_json(
        "evaluate", "--model", str(tiny_models["qwen2-vl"]), "--data", str(colour_data["pairs"]),
        "--reranker", str(saved_vlm_reranker), "--rerank-top-k", "5",
    )  # fmt: skip
    assert report["reranker"] == str(saved_vlm_reranker)
    assert [stage["name"] for stage in report["stages"]][-1] == "rerank top 5"
    assert 0 <= report["metrics"]["ndcg@10"] <= 1


# ------------------------------------------------------------------------------------------------
# The offline defaults
# ------------------------------------------------------------------------------------------------


def test_demo_files_are_the_emoji_names_task():
    import pyarrow.parquet as pq

    from mmst_cli.core.models.composition import EMOJI_EVAL, EMOJI_TRAIN
    from mmst_cli.core.train.rerank_demo import DEMO_EVAL, DEMO_QUERIES, DEMO_TRAIN, demo_rows

    names = {}
    for split, emoji, shipped in (("train", EMOJI_TRAIN, DEMO_TRAIN), ("eval", EMOJI_EVAL, DEMO_EVAL)):
        captions = pq.read_table(emoji, columns=["caption"])["caption"].to_pylist()
        rows = [json.loads(line) for line in shipped.read_text(encoding="utf8").splitlines()]
        assert rows == demo_rows(captions, DEMO_QUERIES[split])
        for row in rows:
            assert sorted(row["query"].split()) == sorted(row["positive"].split())
            assert row["positive"] not in [row[f"negative_{rank}"] for rank in range(1, 5)]
        names[split] = {row["positive"] for row in rows}
    assert not names["train"] & names["eval"]  # evaluation asks for names never trained on
    assert len(names["eval"]) == 100


def test_no_model_and_no_data_trains_the_offline_demo(tmp_path, minilm_path):
    from mmst_cli.core.train.rerank_demo import DEMO_EVAL, DEMO_TRAIN

    summary = run_json("train-rerank", "--max-steps", "2", "--output-dir", str(tmp_path / "demo"))
    assert summary["model"] == f"{minilm_path} (classifier)" and summary["arch"] == "classifier"
    assert (summary["data"], summary["eval_data"]) == (str(DEMO_TRAIN), str(DEMO_EVAL))
    assert (summary["train_queries"], summary["eval_queries"], summary["eval_pairs"]) == (256, 100, 500)
    assert summary["base"].keys() == summary["final"].keys() == {"ndcg@10", "mrr@10", "map", "accuracy@1"}
    assert summary["train"]["steps"] == 2
