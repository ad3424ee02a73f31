"""Multi-vector (late-interaction) models: exact MaxSim evaluation, equal to Sentence Transformers'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_json, run_mmst

TOPICS = ["cats", "dogs", "birds", "fish", "trees", "cars", "boats", "trains", "clouds", "rivers"]


def write_judged_beir(folder: Path) -> Path:
    """A text BEIR folder where every query has exactly one relevant document (so mmst's mean and
    Sentence Transformers' count the same queries) among distractors; half the relevant documents
    share no topic word with their query, so a tiny random model ranks some of them low."""
    folder.mkdir(parents=True)
    corpus = [{"_id": f"doc{i}", "title": "", "text": f"a page about {topic if i % 2 else 'something'}, number {i}"} for i, topic in enumerate(TOPICS)]
    corpus += [{"_id": f"other{i}", "title": "", "text": f"{topic} and {TOPICS[i - 1]} side by side"} for i, topic in enumerate(TOPICS)]
    queries = [{"_id": f"q{i}", "text": f"what do you know about {topic}?"} for i, topic in enumerate(TOPICS)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (folder / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\tdoc{i}\t1" for i in range(len(TOPICS))]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_maxsim_evaluation_equals_sentence_transformers_evaluator(tmp_path, tiny_multi_vector):
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator

    from mmst_cli.core.retrieval.tasks import load_retrieval_task

    beir = write_judged_beir(tmp_path / "beir")
    per_query = tmp_path / "per_query.jsonl"
    report = run_json("evaluate", "--model", str(tiny_multi_vector), "--data", str(beir), "--k", "1,10",
                      "--per-query", str(per_query))  # fmt: skip
    assert report["similarity"] == "maxsim" and report["counts"]["evaluated"] == len(TOPICS)
    assert report["token_vectors"]["document_tokens"] > 2 * len(TOPICS)  # several vectors per document

    task = load_retrieval_task(str(beir))
    evaluator = MultiVectorInformationRetrievalEvaluator(
        task.queries, task.corpus, {qid: set(docs) for qid, docs in task.qrels.items()},
        ndcg_at_k=[1, 10], mrr_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[10], map_at_k=[10],
        write_csv=False,
    )  # fmt: skip
    expected = evaluator(MultiVectorEncoder(str(tiny_multi_vector)))
    for metric in ("ndcg@1", "ndcg@10", "mrr@10", "recall@10", "accuracy@1"):
        assert report["metrics"][metric] == pytest.approx(expected[f"maxsim_{metric}"], abs=1e-9), metric
    assert 0 < report["metrics"]["ndcg@10"] < 1  # the tiny random model ranks some queries imperfectly
    assert len(per_query.read_text().splitlines()) == len(TOPICS)

    pooled = run_json("evaluate", "--model", str(tiny_multi_vector), "--data", str(beir), "--token-pool-factor", "2")
    assert pooled["token_vectors"]["token_pool_factor"] == 2
    assert pooled["token_vectors"]["document_tokens"] < report["token_vectors"]["document_tokens"]


def test_matryoshka_sweep_scores_each_dim_as_sentence_transformers_truncate_dim_does(tmp_path, tiny_multi_vector):
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

    from mmst_cli.core.retrieval.tasks import load_retrieval_task

    beir = write_judged_beir(tmp_path / "beir")
    plot = tmp_path / "sweep.png"
    # Pooling comes before truncation in Sentence Transformers' encode: the sweep must keep that order.
    report = run_json("evaluate", "--model", str(tiny_multi_vector), "--data", str(beir), "--k", "10",
                      "--dims", "128,16,4", "--token-pool-factor", "2", "--plot", str(plot))  # fmt: skip
    assert [entry["dim"] for entry in report["dims"]] == [128, 16, 4]
    assert report["metrics"] == report["dims"][0]["metrics"]  # the main stage is the largest dimension
    assert plot.read_bytes().startswith(b"\x89PNG")

    task = load_retrieval_task(str(beir))
    model = MultiVectorEncoder(str(tiny_multi_vector))
    for entry in report["dims"]:
        evaluator = MultiVectorInformationRetrievalEvaluator(
            task.queries, task.corpus, {qid: set(docs) for qid, docs in task.qrels.items()}, ndcg_at_k=[10],
            truncate_dim=entry["dim"], token_pooling=HierarchicalTokenPooling(pool_factor=2), write_csv=False,
        )  # fmt: skip
        expected = next(value for key, value in evaluator(model).items() if key.endswith("ndcg@10"))
        assert entry["metrics"]["ndcg@10"] == pytest.approx(expected, abs=1e-9), entry["dim"]
    assert len({entry["metrics"]["ndcg@10"] for entry in report["dims"]}) > 1  # truncation changed the rankings


def test_chunked_maxsim_search_equals_scoring_the_whole_corpus_at_once(tiny_multi_vector):
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.util import maxsim

    from mmst_cli.core.retrieval.maxsim import maxsim_search

    model = MultiVectorEncoder(str(tiny_multi_vector))
    queries = [f"about {topic}" for topic in TOPICS[:4]]
    corpus = [f"{topic} here, and {other} there" for topic in TOPICS for other in TOPICS[:2]]
    [(scores, indices)], _ = maxsim_search(model, queries, corpus, 5, corpus_chunk=3, chunk_elements=5000)
    whole = maxsim(model.encode_query(queries), model.encode_document(corpus))
    top = torch.topk(whole, 5, dim=1)
    assert scores == pytest.approx(top.values.numpy(), abs=1e-5)
    assert (indices == top.indices.numpy()).all()


def test_multi_vector_only_options_are_refused_where_they_do_not_apply(tmp_path, tiny_models, tiny_multi_vector):
    beir = write_judged_beir(tmp_path / "beir")
    single = run_mmst("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir), "--token-pool-factor", "2")
    assert_one_line_error(single, 2, "--token-pool-factor", "one vector per input")
    swept = run_mmst("evaluate", "--model", str(tiny_multi_vector), "--data", str(beir), "--dims", "16,256")
    assert_one_line_error(swept, 2, "--dims [256]", "token vector size 128")
    low = run_mmst("evaluate", "--model", str(tiny_multi_vector), "--data", str(beir), "--token-pool-factor", "0.5")
    assert_one_line_error(low, 2, "--token-pool-factor", "at least 1")
    npz = run_mmst("encode", str(beir / "queries.jsonl"), "--model", str(tiny_models["bert"]), "--column", "text", "-o", str(tmp_path / "q.npz"))
    assert_one_line_error(npz, 2, "npz holds multi-vector output", "one vector per input")


def test_train_embed_multi_vector_from_a_text_checkpoint_then_resume_evaluate_and_rerank(tmp_path, tiny_models):
    from safetensors import safe_open

    from tests.data_factory import write_text_pairs

    data = write_text_pairs(tmp_path / "data", 16)
    common = ["train-embed", "--model", str(tiny_models["bert"]), "--multi-vector", "--dim", "24",
              "--query-length", "12", "--document-length", "20", "--data", str(data), "--eval-split", "0.25",
              "--batch-size", "4", "--mini-batch-size", "2", "--save-steps", "2", "--output-dir", str(tmp_path / "run")]  # fmt: skip
    first = run_json(*common, "--max-steps", "2")
    assert first["loss"] == "cached-mnrl" and first["train"]["steps"] == 2
    assert 0 < first["base"]["ndcg@10"] <= 1 and 0 < first["final"]["ndcg@10"] <= 1
    model_dir = Path(first["model_dir"])
    modules = [module["type"] for module in json.loads((model_dir / "modules.json").read_text())]
    assert any("MultiVectorMask" in kind for kind in modules)
    detected = run_json("detect", str(model_dir))["multi_vector"]
    assert (detected["token_dimension"], detected["query_length"], detected["document_length"]) == (24, 12, 20)
    with safe_open(str(next((model_dir).glob("1_Dense/*.safetensors"))), "pt") as weights:
        assert weights.get_tensor("linear.weight").shape[0] == 24  # the --dim projection
    resumed = run_json(*common, "--max-steps", "4", "--resume")
    assert resumed["train"]["steps"] == 4
    # The saved model is a MultiVectorEncoder that evaluate scores with the same MaxSim as training did.
    again = run_json("evaluate", "--model", str(tmp_path / "run"), "--k", "10")
    assert again["similarity"] == "maxsim"
    assert again["metrics"]["ndcg@10"] == pytest.approx(resumed["final"]["ndcg@10"], abs=1e-9)
    # A reranker starts from the multi-vector model's backbone, and reranks its MaxSim first stage.
    reranker = run_json("train-rerank", "--model", str(tmp_path / "run"), "--data", str(data), "--loss", "cmnrl",
                        "--max-steps", "1", "--batch-size", "4", "--output-dir", str(tmp_path / "rerank"))  # fmt: skip
    staged = run_json("evaluate", "--model", str(tmp_path / "run"), "--k", "10",
                      "--reranker", reranker["model_dir"], "--rerank-top-k", "4")  # fmt: skip
    assert [stage["name"] for stage in staged["stages"]] == ["maxsim", "rerank top 4"]
    assert staged["stages"][0]["metrics"] == again["metrics"]


def test_train_embed_multi_vector_from_a_vision_language_checkpoint_on_text_to_image_pairs(tmp_path, tiny_models):
    from tests.data_factory import write_colour_pairs

    data = write_colour_pairs(tmp_path / "data", count=8)
    trained = run_json("train-embed", "--model", str(tiny_models["qwen2-vl"]), "--multi-vector", "--dim", "16",
                       "--data", str(data), "--eval-split", "0.5", "--loss", "mnrl", "--batch-size", "4",
                       "--max-steps", "1", "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert trained["train"]["steps"] == 1 and 0 < trained["final"]["ndcg@10"] <= 1
    planned = run_json("train-embed", "--model", str(tiny_models["qwen2-vl"]), "--multi-vector", "--dim", "16",
                       "--data", str(data), "--batch-size", "4", "--mini-batch-size", "2", "--dry-run",
                       "--output-dir", str(tmp_path / "planned"))["dry_run"]  # fmt: skip
    assert planned["samples_in_flight"] == 2 and planned["per_sample_activation_bytes"] > 0
    # GradCache keeps a 16-d vector (and its gradient) per token of each caption and image, not one per input.
    one_vector_per_input = 2 * 4 * 4 * 2 * 16
    gradcache = planned["components_bytes"]["gradcache_buffers"]
    assert gradcache > 4 * one_vector_per_input and gradcache % (2 * 4 * 4 * 16) == 0
    assert not (tmp_path / "planned").exists()  # a plan writes nothing
    detected = run_json("detect", trained["model_dir"])
    assert detected["multi_vector"]["token_dimension"] == 16 and "image" in detected["modalities"]
    # The saved model reloads and MaxSim-scores its page images exactly as training's evaluation did.
    again = run_json("evaluate", "--model", str(tmp_path / "run"), "--k", "10")
    assert again["similarity"] == "maxsim" and again["counts"]["evaluated"] == trained["eval_rows"]
    assert again["token_vectors"]["tokens_per_document"] > 1  # one vector per visual token, not one per image
    assert again["metrics"]["ndcg@10"] == pytest.approx(trained["final"]["ndcg@10"], abs=1e-9)


def test_multi_vector_lora_trains_adapters_and_saves_them_merged(tmp_path, tiny_models):
    import torch
    from sentence_transformers import MultiVectorEncoder
    from transformers import AutoModel

    from tests.data_factory import write_text_pairs

    data = write_text_pairs(tmp_path / "data", 8)
    result = run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--multi-vector", "--dim", "16",
                      "--data", str(data), "--loss", "mnrl", "--lora-r", "4", "--batch-size", "4", "--max-steps", "2",
                      "--lr", "1e-2", "--output-dir", str(tmp_path / "run"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    trainable = int(next(line for line in result.stderr.splitlines() if "LoRA r=4" in line).split(": ")[1].split()[0].replace(",", ""))
    model_dir = Path(json.loads(result.stdout)["model_dir"])
    assert not list(model_dir.rglob("adapter_config.json"))  # merged: a plain model, no adapter lifecycle
    trained = MultiVectorEncoder(str(model_dir))
    assert 0 < trainable < sum(parameter.numel() for parameter in trained.parameters()) / 2
    # The adapters' effect is folded into the saved encoder's own weights, under their own names.
    saved = dict(trained[0].model.named_parameters())
    base = dict(AutoModel.from_pretrained(str(tiny_models["bert"])).named_parameters())
    assert saved.keys() == base.keys()
    assert any(not torch.equal(saved[name], base[name]) for name in base)


def test_multi_vector_training_refuses_single_vector_only_options(tmp_path, tiny_models, tiny_multi_vector):
    from tests.data_factory import write_text_pairs

    data = write_text_pairs(tmp_path / "data", 8)
    gist = run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--multi-vector", "--loss", "gist", "--data", str(data))
    assert_one_line_error(gist, 2, "--loss gist", "mnrl or cached-mnrl")
    lengths = run_mmst("train-embed", "--model", str(tiny_models["bert"]), "--query-length", "8", "--data", str(data))
    assert_one_line_error(lengths, 2, "--query-length", "--multi-vector")
    redim = run_mmst("train-embed", "--model", str(tiny_multi_vector), "--dim", "8", "--data", str(data), "--max-steps", "1")
    assert_one_line_error(redim, 2, "--dim", "already multi-vector")


def test_encode_writes_ragged_token_vectors_resumably_in_every_layout(tmp_path, tiny_multi_vector):
    import numpy as np
    import pyarrow.parquet as pq
    from sentence_transformers import MultiVectorEncoder
    from safetensors.numpy import load_file

    from mmst_cli.core.encode.job import EncodeOptions, run_encode
    from mmst_cli.core.encode.settings import EmbeddingSettings
    from mmst_cli.core.encode.parts import parts_folder

    texts = [f"{topic} are discussed here, {'at length ' * index}" for index, topic in enumerate(TOPICS[:5])]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n")
    model = MultiVectorEncoder(str(tiny_multi_vector))
    expected = [tokens.numpy() for tokens in model.encode_document(texts)]
    assert len({len(tokens) for tokens in expected}) > 1  # ragged: rows differ in length

    class Interrupt(Exception):
        pass

    def stop_after_first(index):
        raise Interrupt

    output = tmp_path / "tokens.safetensors"
    job = dict(inputs=str(source), output=str(output), model=str(tiny_multi_vector), task="document",
               embedding=EmbeddingSettings(chunk_size=2))  # fmt: skip
    with pytest.raises(Interrupt):
        run_encode(EncodeOptions(**job), model=model, show_progress=False, on_chunk=stop_after_first, log=print)
    assert sorted(p.name for p in parts_folder(output).iterdir()) == ["manifest.json", "part-000000.npz"]
    resumed = run_encode(EncodeOptions(**job, resume=True), model=model, show_progress=False, log=print)
    assert (resumed.reused_chunks, resumed.encoded_chunks) == (1, 2)
    stored = load_file(str(output))
    offsets = stored["offsets"]
    assert offsets[0] == 0 and offsets[-1] == len(stored["embeddings"]) and len(offsets) == len(texts) + 1
    for row, tokens in enumerate(expected):
        np.testing.assert_allclose(stored["embeddings"][offsets[row] : offsets[row + 1]], tokens, atol=1e-6)

    run_json("encode", str(source), "--model", str(tiny_multi_vector), "--task", "document", "-o", str(tmp_path / "t.parquet"))
    nested = pq.read_table(tmp_path / "t.parquet").column("embedding").to_pylist()
    run_json("encode", str(source), "--model", str(tiny_multi_vector), "--task", "document", "-o", str(tmp_path / "t.jsonl"))
    lines = [json.loads(line)["embedding"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    for row, tokens in enumerate(expected):
        np.testing.assert_allclose(np.array(nested[row]), tokens, atol=1e-6)
        np.testing.assert_allclose(np.array(lines[row]), tokens, atol=1e-6)

    # npz: the safetensors arrays, with string ids and run facts that load without pickle.
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"doc-{row}", "text": text}) + "\n" for row, text in enumerate(texts)))
    run_json("encode", str(rows), "--model", str(tiny_multi_vector), "--task", "document", "--column", "text",
             "--id-column", "id", "-o", str(tmp_path / "t.npz"))  # fmt: skip
    with np.load(tmp_path / "t.npz", allow_pickle=False) as npz:
        assert npz["ids"].tolist() == [f"doc-{row}" for row in range(len(texts))]
        assert npz["offsets"].tolist() == offsets.tolist() and json.loads(str(npz["metadata"]))["task"] == "document"
        np.testing.assert_allclose(npz["embeddings"], stored["embeddings"], atol=1e-6)

    pooled = tmp_path / "pooled.safetensors"
    run_json("encode", str(source), "--model", str(tiny_multi_vector), "--task", "document", "--token-pool-factor", "2", "-o", str(pooled))
    assert len(load_file(str(pooled))["embeddings"]) < len(stored["embeddings"])
    npy = run_mmst("encode", str(source), "--model", str(tiny_multi_vector), "-o", str(tmp_path / "t.npy"))
    assert_one_line_error(npy, 2, "npy cannot hold", "safetensors")


def test_encode_on_two_devices_writes_the_same_token_vectors_as_one_bit_for_bit(tmp_path, tiny_multi_vector):
    import numpy as np
    from sentence_transformers import MultiVectorEncoder

    from mmst_cli.core.encode.job import EncodeOptions, run_encode
    from mmst_cli.core.encode.settings import EmbeddingSettings

    source = tmp_path / "texts.txt"
    source.write_text("".join(f"{topic} {'and more ' * (index % 4)}here\n" for index, topic in enumerate(TOPICS)))
    model = MultiVectorEncoder(str(tiny_multi_vector))
    stored = {}
    for devices in ("cpu", "cpu,cpu"):
        output = tmp_path / f"{devices.replace(',', '-')}.npz"
        job = EncodeOptions(inputs=str(source), output=str(output), model=str(tiny_multi_vector), task="document",
                            embedding=EmbeddingSettings(device=devices, batch_size=3, chunk_size=6))  # fmt: skip
        run_encode(job, model=model, show_progress=False, log=print)
        with np.load(output, allow_pickle=False) as npz:
            stored[devices] = {name: npz[name] for name in ("embeddings", "offsets", "ids")}
    # Batches of rows padded to different lengths: a pool that batched differently would differ in the last bits.
    for name in ("embeddings", "offsets", "ids"):
        assert np.array_equal(stored["cpu"][name], stored["cpu,cpu"][name]), name
