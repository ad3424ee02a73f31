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


def test_chunked_maxsim_search_equals_scoring_the_whole_corpus_at_once(tiny_multi_vector):
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.util import maxsim

    from mmst_cli.core.retrieval.maxsim import maxsim_search

    model = MultiVectorEncoder(str(tiny_multi_vector))
    queries = [f"about {topic}" for topic in TOPICS[:4]]
    corpus = [f"{topic} here, and {other} there" for topic in TOPICS for other in TOPICS[:2]]
    scores, indices, _ = maxsim_search(model, queries, corpus, 5, corpus_chunk=3, chunk_elements=5000)
    whole = maxsim(model.encode_query(queries), model.encode_document(corpus))
    top = torch.topk(whole, 5, dim=1)
    assert scores == pytest.approx(top.values.numpy(), abs=1e-5)
    assert (indices == top.indices.numpy()).all()


def test_multi_vector_only_options_are_refused_where_they_do_not_apply(tmp_path, tiny_models, tiny_multi_vector):
    beir = write_judged_beir(tmp_path / "beir")
    single = run_mmst("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir), "--token-pool-factor", "2")
    assert_one_line_error(single, 2, "--token-pool-factor", "one vector per input")
    swept = run_mmst("evaluate", "--model", str(tiny_multi_vector), "--data", str(beir), "--dims", "16")
    assert_one_line_error(swept, 2, "--dims", "multi-vector")
    low = run_mmst("evaluate", "--model", str(tiny_multi_vector), "--data", str(beir), "--token-pool-factor", "0.5")
    assert_one_line_error(low, 2, "--token-pool-factor", "at least 1")
