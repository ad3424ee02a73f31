"""Retrieval metrics against pytrec_eval (trec_eval's own C code), and the TREC file readers.

How the reference is built (``trec_eval_reference``):

* mmst's default mean is ``trec_eval -c``'s: every qrels query counts. pytrec_eval's per-query
  output covers the queries present in both the run and the qrels (a query with only
  non-relevant judgements is there, at 0); a qrels query missing from the run scores 0, and the
  mean is over every qrels query. With ``skip_queries_without_relevant`` the reference keeps
  only the qrels queries with a relevant document.
* ``mrr@k``: trec_eval's ``recip_rank`` has no cut-off. Its value is ``1 / r`` for the first
  relevant rank ``r``, and ``r <= k`` exactly when ``1 / r >= 1 / k``, so ``recip_rank`` when it is
  at least ``1 / k`` (else 0) *is* ``recip_rank`` of the run cut at k, without re-implementing the
  ranking rule in the test (which would make the comparison partly circular).
* Scores are float32-representable: pytrec_eval-terrier 0.5.x bundles trec_eval 9.0.x, which
  holds scores as float32 (trec_eval 10 uses double); see ``test_scores_are_compared_as_float64``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import pytrec_eval

from mmst_cli.core.errors import MmstError
from mmst_cli.core.retrieval.metrics import (
    METRIC_NAMES,
    compute_metrics,
    rank_documents,
    read_qrels,
    read_trec_run,
    write_trec_run,
)

TOLERANCE = 1e-9

#: mmst metric -> the pytrec_eval measure family it must equal (mrr is derived, see above).
TREC_MEASURES = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut", "accuracy": "success"}


def trec_eval_reference(run, qrels, ks, skip_queries_without_relevant=False):
    """Per-query values and means of every metric from pytrec_eval, under the query rule asked for."""
    if skip_queries_without_relevant:
        qrels = {qid: docs for qid, docs in qrels.items() if any(rel >= 1 for rel in docs.values())}
    cut = ",".join(str(k) for k in ks)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{cut}" for m in TREC_MEASURES.values()} | {"recip_rank"})
    raw = evaluator.evaluate(run)
    keys = [f"{m}@{k}" for m in METRIC_NAMES for k in ks]
    per_query = {}
    for qid in qrels:
        if qid not in raw:  # missing from the run: trec_eval -c scores it 0
            per_query[qid] = dict.fromkeys(keys, 0.0)
            continue
        values = raw[qid]
        per_query[qid] = {f"{m}@{k}": values[f"{trec}_{k}"] for m, trec in TREC_MEASURES.items() for k in ks}
        for k in ks:
            per_query[qid][f"mrr@{k}"] = values["recip_rank"] if values["recip_rank"] >= 1 / k else 0.0
    means = {key: sum(values[key] for values in per_query.values()) / len(per_query) for key in keys}
    return per_query, means


def assert_matches_trec_eval(run, qrels, ks, skip_queries_without_relevant=False):
    result = compute_metrics(run, qrels, ks=ks, skip_queries_without_relevant=skip_queries_without_relevant)
    per_query, means = trec_eval_reference(run, qrels, ks, skip_queries_without_relevant)
    assert result.per_query.keys() == per_query.keys()
    for qid, expected in per_query.items():
        for key, value in expected.items():
            assert abs(result.per_query[qid][key] - value) <= TOLERANCE, (qid, key, result.per_query[qid][key], value)
    assert list(result.means) == list(means)
    for key, value in means.items():
        assert abs(result.means[key] - value) <= TOLERANCE, (key, result.means[key], value)
    return result


# ---------------------------------------------------------------------------------------------
# Ranking and metric definitions


def test_ties_are_broken_by_document_id_descending_as_strings():
    # "d9" > "d10" > "d1" as strings, the opposite of their numeric order.
    scores = {"d1": 0.5, "d10": 0.5, "d9": 0.5, "d2": 0.75}
    assert [doc for doc, _ in rank_documents(scores)] == ["d2", "d9", "d10", "d1"]
    assert [doc for doc, _ in rank_documents(scores, depth=2)] == ["d2", "d9"]


def test_ties_across_relevant_and_non_relevant_documents():
    run = {
        # The relevant d1 ties with two non-relevant documents that sort above it.
        "q1": {"d1": 1.0, "d5": 1.0, "d3": 1.0, "d0": 0.25},
        # The relevant z sorts first among the tied ones.
        "q2": {"a": 2.0, "z": 2.0, "m": 2.0, "b": 0.5},
        # Everything ties; graded relevant documents interleave with non-relevant ones.
        "q3": {f"doc{i}": 0.0 for i in range(12)},
    }
    qrels = {
        "q1": {"d1": 1, "d5": 0, "d3": 0, "d0": 1},
        "q2": {"z": 1, "a": 0, "b": 2},
        "q3": {"doc0": 3, "doc11": 1, "doc5": 0, "doc7": 2},
    }
    result = assert_matches_trec_eval(run, qrels, ks=(1, 2, 3, 5, 10))
    assert result.per_query["q1"]["mrr@10"] == pytest.approx(1 / 3)
    assert result.per_query["q2"]["mrr@1"] == 1.0


def test_graded_relevance_and_several_relevant_documents():
    run = {
        "q1": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5, "f": 0.4},
        "q2": {"a": 0.125, "b": 0.5, "c": 0.25, "x": 0.0625},
    }
    qrels = {
        "q1": {"a": 1, "b": 0, "c": 3, "d": 2, "f": 3, "unretrieved": 2},
        "q2": {"a": 2, "b": 2, "c": 1, "d": 3},
    }
    assert_matches_trec_eval(run, qrels, ks=(1, 3, 5, 10))


def test_cutoff_beyond_the_run_length():
    run = {"q1": {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0}}
    qrels = {"q1": {"b": 1, "e": 2, "z": 1}}
    result = assert_matches_trec_eval(run, qrels, ks=(3, 100))
    # P_k divides by k even when fewer than k documents were retrieved.
    assert result.means["precision@100"] == pytest.approx(2 / 100)
    assert result.means["recall@100"] == pytest.approx(2 / 3)


def test_queries_missing_from_the_run_score_zero_and_are_counted():
    run = {"q1": {"a": 1.0, "b": 0.5}, "q3": {}}
    qrels = {"q1": {"a": 1}, "q2": {"c": 1}, "q3": {"d": 2}}
    result = assert_matches_trec_eval(run, qrels, ks=(10,))
    assert result.num_queries == 3
    assert result.num_missing_from_run == 2
    assert result.per_query["q2"] == {key: 0.0 for key in result.means}
    assert result.means["ndcg@10"] == pytest.approx(1 / 3)


def test_run_queries_absent_from_the_qrels_are_ignored_and_counted():
    run = {"q1": {"a": 1.0}, "extra1": {"a": 1.0}, "extra2": {"b": 2.0}}
    qrels = {"q1": {"a": 1}}
    result = assert_matches_trec_eval(run, qrels, ks=(10,))
    assert result.num_ignored_not_in_qrels == 2
    assert list(result.per_query) == ["q1"]


def test_qrels_queries_without_relevant_documents_score_zero_or_are_skipped_on_request():
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}, "q3": {"c": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 0, "x": 0}, "q3": {"c": -1}, "q4": {"d": 0}}
    # trec_eval evaluates such queries at 0; q4 is also missing from the run.
    result = assert_matches_trec_eval(run, qrels, ks=(10,))
    assert result.means["ndcg@10"] == 0.25
    assert result.counts() == {"evaluated": 4, "without_relevant": 3, "missing_from_run": 1, "ignored_not_in_qrels": 0}
    raw = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    assert raw == {"q1": {"ndcg_cut_10": 1.0}, "q2": {"ndcg_cut_10": 0.0}, "q3": {"ndcg_cut_10": 0.0}}

    skipping = assert_matches_trec_eval(run, qrels, ks=(10,), skip_queries_without_relevant=True)
    assert skipping.means["ndcg@10"] == 1.0
    assert skipping.counts() == {"evaluated": 1, "without_relevant": 3, "missing_from_run": 0, "ignored_not_in_qrels": 0}


def test_random_runs_match_trec_eval():
    rng = random.Random(1234)
    for _ in range(50):
        qrels, run = {}, {}
        for q in range(rng.randint(1, 6)):
            qid = f"q{q}"
            docs = [f"d{i}" for i in rng.sample(range(40), rng.randint(1, 30))]
            # Few distinct scores, all exact in float32, so ties are frequent.
            run[qid] = {doc: rng.randint(0, 8) / 4 for doc in docs}
            judged = rng.sample(docs, rng.randint(0, len(docs))) + [f"u{i}" for i in range(rng.randint(0, 3))]
            qrels[qid] = {doc: rng.choice((-1, 0, 0, 1, 1, 2, 3)) for doc in judged}
            if not qrels[qid] or rng.random() < 0.15:
                qrels[qid][f"only-judged-{q}"] = rng.randint(1, 3)
        if rng.random() < 0.3:
            run.pop(rng.choice(list(run)))
        if rng.random() < 0.3:
            run["not-judged"] = {"d1": 1.0}
        if not any(rel >= 1 for docs in qrels.values() for rel in docs.values()):
            qrels["q0"]["forced"] = 1
        for skip in (False, True):
            assert_matches_trec_eval(run, qrels, ks=(1, 3, 5, 10, 20, 100), skip_queries_without_relevant=skip)


def test_scores_are_compared_as_float64():
    # 1 + 1e-12 and 1 are distinct doubles but the same float32.
    run = {"q": {"a": 1.0 + 1e-12, "b": 1.0}}
    qrels = {"q": {"b": 1}}
    assert compute_metrics(run, qrels, metrics="mrr").means["mrr@10"] == 0.5  # a ranks above b
    # pytrec_eval-terrier's bundled trec_eval 9.0.x ties them (float32) and puts b first: it
    # agrees with mmst once the scores are rounded to float32.
    assert pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"] == 1.0
    as_float32 = {"q": {doc: float(np.float32(score)) for doc, score in run["q"].items()}}
    assert compute_metrics(as_float32, qrels, metrics="mrr").means["mrr@10"] == 1.0


def test_result_keys_follow_the_requested_metrics_and_cutoffs():
    result = compute_metrics({"q": {"a": 1.0}}, {"q": {"a": 1}}, ks=(10, 1, 10), metrics=("map", "ndcg"))
    assert list(result.means) == ["map@1", "map@10", "ndcg@1", "ndcg@10"]
    assert list(result.per_query["q"]) == list(result.means)


@pytest.mark.parametrize(
    ("run", "qrels", "options", "fragment"),
    [
        ({"q": {"a": 1.0}}, {"q": {"a": 1}}, {"metrics": ["ndcg", "hits"]}, "unknown"),
        ({"q": {"a": 1.0}}, {"q": {"a": 1}}, {"ks": [0]}, "positive integers"),
        ({"q": {"a": 1.0}}, {"q": {"a": 1}}, {"ks": [2.5]}, "positive integers"),
        ({"q": {"a": float("nan")}}, {"q": {"a": 1}}, {}, "NaN"),
        ({"q": {"a": 1.0}}, {"q": {"a": 1.5}}, {}, "must be an integer"),
        ({"q": {"a": 1.0}}, {"q": {"a": 0}}, {}, "no query in the qrels has a relevant document"),
    ],
)
def test_bad_arguments_raise_mmst_error(run, qrels, options, fragment):
    with pytest.raises(MmstError, match=fragment):
        compute_metrics(run, qrels, **options)


# ---------------------------------------------------------------------------------------------
# TREC files


def test_run_file_round_trip_keeps_scores_and_trec_eval_order(tmp_path):
    run = {"q2": {"d1": 0.1, "d10": 0.1, "d9": 0.1, "x": 1e-17}, "q1": {"a": -3.5, "b": 1 / 3, "c": 2.0}}
    path = tmp_path / "run.txt"
    write_trec_run(run, path, tag="sys")
    assert read_trec_run(path) == run
    with path.open() as stream:
        assert pytrec_eval.parse_run(stream) == run  # an independent reader agrees
    lines = path.read_text().splitlines()
    assert lines[:4] == ["q2 Q0 d9 1 0.1 sys", "q2 Q0 d10 2 0.1 sys", "q2 Q0 d1 3 0.1 sys", "q2 Q0 x 4 1e-17 sys"]
    assert lines[4:] == ["q1 Q0 c 1 2.0 sys", "q1 Q0 b 2 0.3333333333333333 sys", "q1 Q0 a 3 -3.5 sys"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.txt"]  # no temporary file left behind


def test_writing_replaces_an_existing_run_file(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("old content\n")
    write_trec_run({"q": {"a": 1.0}}, path)
    assert path.read_text() == "q Q0 a 1 1.0 mmst\n"


def test_writing_an_id_with_whitespace_is_an_error(tmp_path):
    with pytest.raises(MmstError, match="whitespace"):
        write_trec_run({"q": {"doc one": 1.0}}, tmp_path / "run.txt")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("q1 Q0 d3 3 0.5", "expected 6 columns"),
        ("q1 Q0 d3 three 0.5 sys", "rank 'three' is not an integer"),
        ("q1 Q0 d3 3 high sys", "score 'high' is not a number"),
        ("q1 Q0 d3 3 nan sys", "NaN"),
        ("q1 Q0 d1 3 0.5 sys", "'d1' is listed twice for query 'q1'"),
    ],
)
def test_malformed_run_lines_name_file_and_line(tmp_path, bad_line, fragment):
    path = tmp_path / "run.txt"
    path.write_text(f"q1 Q0 d1 1 0.9 sys\n\nq1 Q0 d2 2 0.7 sys\n{bad_line}\n")
    with pytest.raises(MmstError, match=fragment) as error:
        read_trec_run(path)
    assert f"{path}:4:" in str(error.value)


def test_trec_and_beir_qrels_read_the_same(tmp_path):
    expected = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 d1 1\nq1 0 d2 0\n\nq2 0 d3 2\n")
    beir = tmp_path / "qrels.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n")
    headerless = tmp_path / "headerless.tsv"
    headerless.write_text("q1\td1\t1\nq1\td2\t0\nq2\td3\t2\n")
    assert read_qrels(trec) == read_qrels(beir) == read_qrels(headerless) == expected
    with trec.open() as stream:
        assert pytrec_eval.parse_qrel(line for line in stream if line.strip()) == expected  # it chokes on blank lines


@pytest.mark.parametrize(
    ("content", "where", "fragment"),
    [
        ("q1 0 d1 1\nq1 0 d2 yes\n", ":2:", "relevance 'yes' is not an integer"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0.5\n", ":3:", "relevance '0.5' is not an integer"),
        ("q1 0 d1 1\nq1 d2 1\n", ":2:", "expected 4 columns"),
        ("q1 0 d1 1\nq1 0 d1 2\n", ":2:", "judged twice"),
        ("q1 d1\n", ":1:", "found 2 columns"),
        ("query-id\tcorpus-id\tscore\n", "", "no relevance judgements"),
    ],
)
def test_malformed_qrels_are_errors(tmp_path, content, where, fragment):
    path = tmp_path / "qrels.txt"
    path.write_text(content)
    with pytest.raises(MmstError, match=fragment) as error:
        read_qrels(path)
    assert f"{path}{where}" in str(error.value)


def test_unreadable_files_are_mmst_errors(tmp_path):
    with pytest.raises(MmstError, match="file not found"):
        read_trec_run(tmp_path / "absent.txt")
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"q1 0 d1 1\nq1 0 caf\xe9 1\n")
    with pytest.raises(MmstError, match=r"latin1.txt:2: not UTF-8"):
        read_qrels(path)
