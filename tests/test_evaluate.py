"""``mmst evaluate``: every data format, trec_eval agreement, gates, sweeps, reranking and search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmst_cli.core.retrieval.search import search
from tests.helpers import assert_one_line_error, run_json, run_mmst, run_mmst_process

TOPICS = ["cats", "dogs", "birds", "fish", "trees", "cars", "boats", "trains"]


def write_beir(folder: Path) -> Path:
    """A small text BEIR folder with graded relevance, two relevant documents for some queries,
    a query without judgements and a judgement naming an unknown document."""
    folder.mkdir(parents=True)
    corpus = [{"_id": f"doc{i}", "title": topic, "text": f"all about {topic} number {i}"} for i, topic in enumerate(TOPICS)]
    corpus += [{"_id": f"extra{i}", "title": "", "text": f"{topic} are discussed here too"} for i, topic in enumerate(TOPICS[:4])]
    queries = [{"_id": f"q{i}", "text": f"tell me about {topic}"} for i, topic in enumerate(TOPICS)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (folder / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"q{i}\tdoc{i}\t2" for i in range(7)]  # q7 has no judgements
    lines += [f"q{i}\textra{i}\t1" for i in range(4)]
    lines += ["q0\tnot-in-corpus\t1"]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_beir_folder_run_round_trip_and_per_query(tmp_path, tiny_models):
    beir = write_beir(tmp_path / "beir")
    run_file, per_query = tmp_path / "run.trec", tmp_path / "per_query.jsonl"
    report = run_json(
        "evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir), "--k", "1", "--k", "10",
        "--save-run", str(run_file), "--per-query", str(per_query),
    )  # fmt: skip
    assert report["queries"] == 8 and report["documents"] == 12
    assert report["counts"]["evaluated"] == 7  # q7 has no relevant document
    assert "1 qrels documents are not in the corpus (e.g. 'not-in-corpus'); their judgements were dropped" in report["warnings"]
    assert {"ndcg@1", "ndcg@10", "mrr@10", "recall@10", "precision@10", "map@10", "accuracy@10"} <= set(report["metrics"])
    rows = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert len(rows) == 7 and abs(np.mean([row["ndcg@10"] for row in rows]) - report["metrics"]["ndcg@10"]) < 1e-12
    # The saved ranking, scored on its own against the judgements that were kept, gives the same
    # numbers: the run file is what was scored. With the unknown document still judged (trec_eval
    # cannot know the corpus), q0 can never reach full recall.
    full_qrels = (beir / "qrels" / "test.tsv").read_text()
    kept = tmp_path / "kept.tsv"
    kept.write_text("".join(line + "\n" for line in full_qrels.splitlines() if "not-in-corpus" not in line))
    rescored = run_json("evaluate", "--run", str(run_file), "--qrels", str(kept), "--k", "1", "--k", "10")
    assert rescored["metrics"] == pytest.approx(report["metrics"], abs=1e-12)
    every_document = {"kept": kept, "with_unknown": beir / "qrels" / "test.tsv"}  # the run ranks all 12
    recall = {name: run_json("evaluate", "--run", str(run_file), "--qrels", str(path), "--k", "12")["metrics"]["recall@12"]
              for name, path in every_document.items()}  # fmt: skip
    assert recall["kept"] == 1.0 and recall["with_unknown"] < 1.0
    strict = run_mmst("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir), "--strict")
    assert_one_line_error(strict, 2, "1 qrels documents are not in the corpus", "--strict")


def test_run_scoring_agrees_with_pytrec_eval(tmp_path):
    import pytrec_eval

    # q4 has only non-relevant judgements and q5 is missing from the run: trec_eval -c scores both 0.
    qrels = {"q1": {"a": 2, "b": 1, "c": 0}, "q2": {"d": 1}, "q3": {"e": 1, "f": 3}, "q4": {"a": 0, "g": 0}, "q5": {"h": 1}}
    run = {"q1": {"a": 0.5, "b": 0.5, "c": 0.9, "x": 0.5}, "q2": {"d": 0.1, "y": 0.2}, "q3": {"g": 1.0, "f": 0.25},
           "q4": {"a": 0.5, "g": 0.25}, "unjudged": {"a": 1.0}}  # fmt: skip
    (tmp_path / "qrels.txt").write_text("".join(f"{q} 0 {d} {r}\n" for q, docs in qrels.items() for d, r in docs.items()))
    (tmp_path / "run.txt").write_text(
        "".join(f"{q} Q0 {d} 0 {s} x\n" for q, docs in run.items() for d, s in docs.items())
    )
    score = ["evaluate", "--run", str(tmp_path / "run.txt"), "--qrels", str(tmp_path / "qrels.txt"), "--k", "3"]
    report, skipping = run_json(*score), run_json(*score, "--skip-queries-without-relevant")
    assert report["counts"] == {"evaluated": 5, "without_relevant": 1, "missing_from_run": 1, "ignored_not_in_qrels": 1}
    assert skipping["counts"] == {"evaluated": 4, "without_relevant": 1, "missing_from_run": 1, "ignored_not_in_qrels": 1}
    human = run_mmst(*score).stderr
    assert ("5 queries scored (1 without a relevant document, scored 0; 1 missing from the run, scored 0; "
            "1 in the run but not the qrels, ignored)") in " ".join(human.split())  # fmt: skip
    assert "4 queries scored (1 without a relevant document, left out;" in " ".join(run_mmst(*score, "--skip-queries-without-relevant").stderr.split())
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_3", "P_3", "recall_3", "map_cut_3", "success_3"}).evaluate(run)
    assert set(reference) == {"q1", "q2", "q3", "q4"}  # pytrec_eval leaves out the query missing from the run
    for ours, theirs in [("ndcg@3", "ndcg_cut_3"), ("precision@3", "P_3"), ("recall@3", "recall_3"),
                         ("map@3", "map_cut_3"), ("accuracy@3", "success_3")]:  # fmt: skip
        expected = sum(reference[q][theirs] for q in reference) / len(qrels)
        assert report["metrics"][ours] == pytest.approx(expected, abs=1e-9), ours
        assert skipping["metrics"][ours] == pytest.approx(expected * len(qrels) / 4, abs=1e-9), ours


def test_image_corpus_schema_folder(tmp_path, tiny_models):
    folder = tmp_path / "vidore"
    (folder / "pages").mkdir(parents=True)
    corpus, queries, qrels = [], [], []
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (40, 40), colour).save(folder / "pages" / f"{i}.png")
        corpus.append({"corpus-id": i, "image": f"pages/{i}.png"})
        queries.append({"query-id": f"q{i}", "query": f"a {colour} page"})
        qrels.append({"query-id": f"q{i}", "corpus-id": i, "score": 1})
    for name, rows in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = run_json("evaluate", "--model", str(tiny_models["clip"]), "--data", str(folder))
    assert report["documents"] == 4 and report["counts"]["evaluated"] == 4
    assert 0 < report["metrics"]["ndcg@10"] <= 1
    (folder / "pages" / "2.png").unlink()
    missing = run_mmst("evaluate", "--model", str(tiny_models["clip"]), "--data", str(folder))
    assert_one_line_error(missing, 2, "row 3", "pages/2.png: file not found")


def test_video_frame_lists_as_pairs_and_as_a_schema_corpus_score_alike(tmp_path, tiny_models):
    from tests.data_factory import write_frame_clips

    pairs = write_frame_clips(tmp_path, count=4, frames=3)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    schema = {
        "corpus": [{"corpus-id": f"c{i}", "video": row["clip"]} for i, row in enumerate(rows)],
        "queries": [{"query-id": f"q{i}", "query": row["caption"]} for i, row in enumerate(rows)],
        "qrels": [{"query-id": f"q{i}", "corpus-id": f"c{i}", "score": 1} for i in range(len(rows))],
    }
    for name, part in schema.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part))
    model = str(tiny_models["qwen2-vl"])
    as_pairs = run_json("evaluate", "--model", model, "--data", str(pairs))
    as_schema = run_json("evaluate", "--model", model, "--data", str(tmp_path))
    assert as_schema["documents"] == as_pairs["documents"] == 4
    assert 0 < as_pairs["metrics"]["ndcg@10"] <= 1
    assert as_schema["metrics"] == pytest.approx(as_pairs["metrics"])


def test_pairs_sweep_plot_gate_and_reranker(tmp_path, tiny_models, tiny_reranker):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": f"about {t}", "pos": f"{t} are great", "neg": f"not {t}"}) + "\n" for t in TOPICS))
    plot = tmp_path / "sweep.png"
    swept = run_json("evaluate", "--model", str(tiny_models["bert"]), "--data", str(pairs), "--dims", "32,16,8", "--plot", str(plot))
    assert [entry["dim"] for entry in swept["dims"]] == [32, 16, 8]
    assert swept["metrics"] == swept["dims"][0]["metrics"]  # the main result is the full dimension
    assert Image.open(plot).format == "PNG"
    assert swept["documents"] == 16
    assert swept["ks"] == [1, 3, 5, 10, 100] and any(
        warning.startswith("the corpus holds 16 documents, fewer than the cut-off(s) @100: ") for warning in swept["warnings"]
    )

    ndcg = swept["metrics"]["ndcg@10"]
    passing = run_mmst("evaluate", "--model", str(tiny_models["bert"]), "--data", str(pairs), "--fail-under", f"ndcg@10={ndcg - 0.01}")
    assert passing.returncode == 0 and "pass ndcg@10" in passing.stderr
    failing = run_mmst_process("evaluate", "--model", str(tiny_models["bert"]), "--data", str(pairs), "--fail-under", f"ndcg@10={ndcg + 0.01}", "--json")
    assert failing.returncode == 1 and json.loads(failing.stdout)["passed"] is False
    unknown = run_mmst("evaluate", "--run", str(pairs), "--qrels", str(pairs), "--fail-under", "ndcg10=1")
    assert_one_line_error(unknown, 2, "ndcg10: not a computed metric", "ndcg@10")

    reranked = run_json("evaluate", "--model", str(tiny_models["bert"]), "--data", str(pairs),
                        "--reranker", str(tiny_reranker), "--rerank-top-k", "5")  # fmt: skip
    assert [stage["name"] for stage in reranked["stages"]] == ["dim 32", "rerank top 5"]
    assert reranked["metrics"] == reranked["stages"][1]["metrics"]


def test_a_text_only_reranker_is_refused_on_an_image_corpus(tmp_path, tiny_models, tiny_reranker):
    from tests.data_factory import write_colour_pairs

    # The file names hold the captions' words, so scoring paths as text would look good: never allowed.
    pairs = write_colour_pairs(tmp_path / "colours", count=4)
    refused = run_mmst("evaluate", "--model", str(tiny_models["clip"]), "--data", str(pairs), "--reranker", str(tiny_reranker))
    assert_one_line_error(refused, 2, "cannot read image inputs", "the documents of", "mmst detect")


def test_block_search_equals_brute_force():
    generator = np.random.default_rng(0)
    queries = generator.normal(size=(37, 8)).astype(np.float32)
    corpus = generator.normal(size=(101, 8)).astype(np.float32)
    for similarity in ("cosine", "dot", "euclidean"):
        scores, indices = search(queries, corpus, 7, similarity=similarity, query_block=5, corpus_block=13)
        if similarity == "cosine":
            full = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (corpus / np.linalg.norm(corpus, axis=1, keepdims=True)).T
        elif similarity == "dot":
            full = queries @ corpus.T
        else:
            full = -np.linalg.norm(queries[:, None] - corpus[None], axis=2)
        expected = np.sort(full, axis=1)[:, ::-1][:, :7]
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.take_along_axis(full, indices, axis=1), scores, rtol=1e-5, atol=1e-5)
    # The run keeps the search's arrays and builds one query's {doc: score} when it is read.
    from mmst_cli.core.retrieval.evaluation import retrieve

    query_ids, corpus_ids = [f"q{i}" for i in range(37)], [f"d{i}" for i in range(101)]
    run = retrieve(query_ids, queries, corpus_ids, corpus, k=7, similarity="dot")
    scores, indices = search(queries, corpus, 7, similarity="dot")
    assert list(run) == query_ids and len(run) == 37
    assert run["q3"] == {corpus_ids[i]: float(score) for i, score in zip(indices[3], scores[3])} and len(run["q3"]) == 7
    assert run.get("absent") is None


def test_evaluate_matches_train_embed_on_the_embedded_default(embedded_demo):
    # Same model, same data: evaluate and the demo's "before" must report the same number, and
    # evaluate on the demo's run folder (its saved model, on its evaluation pairs) its "after".
    summary = embedded_demo["summary"]
    report = run_json("evaluate")
    assert report["metrics"]["ndcg@10"] == summary["base"]["ndcg@10"]
    trained = run_json("evaluate", "--model", str(embedded_demo["run"]))
    assert trained["queries"] == report["queries"] == summary["eval_rows"]
    assert trained["metrics"]["ndcg@10"] == summary["final"]["ndcg@10"]


def write_run_and_qrels(folder: Path) -> tuple[Path, Path]:
    """A TREC run and qrels for scoring without a model: three judged queries, one never retrieved."""
    run, qrels = folder / "run.trec", folder / "qrels.txt"
    run.write_text("".join(f"q{q} Q0 d{d} {d} {1 - d / 10} x\n" for q in range(2) for d in range(6)))
    qrels.write_text("q0 0 d0 1\nq0 0 d4 2\nq1 0 d2 1\nq2 0 d1 1\n")
    return run, qrels


def test_cutoffs_main_score_and_a_table_that_fits_80_columns(tmp_path):
    run, qrels = write_run_and_qrels(tmp_path)
    score = ("evaluate", "--run", str(run), "--qrels", str(qrels))
    default = run_json(*score)
    assert default["ks"] == [1, 3, 5, 10, 100]
    assert default["main_metric"] == "ndcg@10" and default["main_score"] == default["metrics"]["ndcg@10"]
    chosen = run_json(*score, "--k", "10,1", "--k", "100", "--k", "3", "--main-metric", "Recall@3", "--fail-under", "map@100=0.1")
    assert chosen["ks"] == [1, 3, 10, 100] and set(chosen["metrics"]) == {f"{m}@{k}" for m in
        ("ndcg", "mrr", "recall", "precision", "map", "accuracy") for k in (1, 3, 10, 100)}  # fmt: skip
    assert chosen["main_metric"] == "recall@3" and chosen["main_score"] == chosen["metrics"]["recall@3"]
    assert chosen["passed"] is True
    assert run_json(*score, "--k", "5")["main_metric"] == "ndcg@5"  # without 10: the cut-off nearest it

    table = run_mmst(*score, "--k", "1,3,10", "--k", "1000", env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    lines = table.stderr.splitlines()
    assert "…" not in table.stderr and max(map(len, lines)) <= 80, table.stderr
    header = next(line for line in lines if "metric" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")][1:] == ["@1", "@3", "@10", "@1000"]
    ndcg_row = next(line for line in lines if "ndcg" in line)
    assert f"{chosen['metrics']['ndcg@10']:.4f}" in ndcg_row
    assert "main score: ndcg@10" in table.stderr
    many = run_mmst(*score, "--k", ",".join(str(k) for k in range(1, 13)), env={"COLUMNS": "80"})
    assert "…" not in many.stderr and max(map(len, many.stderr.splitlines())) <= 80, many.stderr
    assert "@12" in many.stderr

    bad_k = run_mmst(*score, "--k", "1,ten")
    assert_one_line_error(bad_k, 2, "--k takes whole numbers", "1,ten")
    # Checked before any model loads: the model named here does not exist.
    bad_main = run_mmst("evaluate", "--model", str(tmp_path / "absent"), "--main-metric", "ndcg@7")
    assert_one_line_error(bad_main, 2, "--main-metric ndcg@7: not a computed metric", "ndcg@10")


def test_depth_sets_the_documents_kept_and_saved_per_query(tmp_path, tiny_models):
    from collections import Counter

    beir, run_file = write_beir(tmp_path / "beir"), tmp_path / "run.trec"
    report = run_json("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir), "--k", "1,3",
                      "--depth", "3", "--save-run", str(run_file))  # fmt: skip
    assert report["ks"] == [1, 3]
    per_query = Counter(line.split()[0] for line in run_file.read_text().splitlines())
    assert per_query == {f"q{i}": 3 for i in range(8)}
    model = ("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir))
    assert_one_line_error(run_mmst(*model, "--depth", "50"), 2, "--k 100 exceeds --depth 50", "raise --depth")
    reranking = ("--reranker", str(tmp_path / "absent"), "--rerank-top-k", "30")  # refused before it is looked for
    assert_one_line_error(run_mmst(*model, "--k", "10", "--depth", "20", *reranking), 2, "--rerank-top-k 30 exceeds --depth 20")
    assert_one_line_error(run_mmst(*model, "--rerank-top-k", "5"), 2, "--rerank-top-k sets how many results --reranker")
    # A run is scored as it was retrieved: a --depth beside it would be ignored, so it is refused.
    scored = ("evaluate", "--run", str(run_file), "--qrels", str(beir))
    assert_one_line_error(run_mmst(*scored, "--depth", "3"), 2, "--depth sets how many documents --model's search", "drop --depth")


def test_prompts_reach_the_model_as_encode_query_applies_them(tmp_path, tiny_models):
    from sentence_transformers import SentenceTransformer

    from mmst_cli.core.retrieval.evaluation import embed_task, resolve_prompt
    from mmst_cli.core.retrieval.tasks import RetrievalTask

    model = SentenceTransformer(str(tiny_models["bert"]), prompts={"search": "search for: ", "passage": "passage: "})
    task = RetrievalTask({f"q{i}": f"about {t}" for i, t in enumerate(TOPICS)}, {"d0": "cats are great"}, {})
    query_prompt = resolve_prompt(model, "query", None, "search")
    _, with_prompt, _, documents = embed_task(model, task, query_prompt=query_prompt, document_prompt="passage: ")
    _, without, _, _ = embed_task(model, task)
    queries = list(task.queries.values())
    np.testing.assert_allclose(with_prompt, model.encode_query(queries, prompt="search for: "), atol=1e-6)
    np.testing.assert_allclose(documents, model.encode_document(["cats are great"], prompt_name="passage"), atol=1e-6)
    assert not np.allclose(with_prompt, without, atol=1e-4)  # the prompt did change the vectors

    saved = tmp_path / "with-prompts"
    model.save(str(saved))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": f"about {t}", "pos": f"{t} are great"}) + "\n" for t in TOPICS))
    evaluate = ("evaluate", "--model", str(saved), "--data", str(pairs), "--k", "1,10")
    named = run_json(*evaluate, "--query-prompt-name", "search", "--document-prompt", "passage: ")
    assert named["prompts"] == {"query": "search for: ", "document": "passage: "}
    as_text = run_json(*evaluate, "--query-prompt", "search for: ", "--document-prompt-name", "passage")
    assert as_text["metrics"] == named["metrics"]
    unknown = run_mmst(*evaluate, "--document-prompt-name", "doc")
    assert_one_line_error(unknown, 2, "--document-prompt-name 'doc'", "its prompts are document, passage, query, search")
    both = run_mmst(*evaluate, "--query-prompt", "q: ", "--query-prompt-name", "search")
    assert_one_line_error(both, 2, "--query-prompt and --query-prompt-name")


def test_mteb_results_follow_mteb_result_files(tmp_path, tiny_models):
    beir, results = write_beir(tmp_path / "scifact-mini"), tmp_path / "mteb"
    report = run_json("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir), "--k", "1,10",
                      "--mteb-results", str(results), "--task-languages", "eng-Latn,deu-Latn")  # fmt: skip
    task_file = results / "results" / "bert" / "no_revision_available" / "scifact-mini.json"
    assert report["mteb_results"] == str(task_file)
    written = json.loads(task_file.read_text())
    # mteb's TaskResult schema (mteb 2.26): required keys and their types.
    assert written["task_name"] == "scifact-mini" and written["mteb_version"] is None
    assert isinstance(written["dataset_revision"], str) and written["evaluation_time"] > 0
    assert list(written["scores"]) == ["test"] and len(written["scores"]["test"]) == 1
    entry = written["scores"]["test"][0]
    assert entry["hf_subset"] == "default" and entry["languages"] == ["eng-Latn", "deu-Latn"]
    assert entry["main_score"] == entry["ndcg_at_10"] == report["metrics"]["ndcg@10"]
    for metric, value in report["metrics"].items():
        name, k = metric.split("@")
        assert entry[f"{'hit_rate' if name == 'accuracy' else name}_at_{k}"] == value
    meta = json.loads((task_file.parent / "model_meta.json").read_text())
    assert meta["name"] == "bert" and meta["revision"] == "no_revision_available"
    assert meta["embed_dim"] == 32 and meta["n_parameters"] > 0 and meta["modalities"] == ["text"]
    assert sorted(path.name for path in task_file.parent.iterdir()) == ["model_meta.json", "scifact-mini.json"]
    try:  # mteb is not a dependency; where it is installed, its own result class must read the file
        from mteb.results import TaskResult
    except ImportError:
        TaskResult = None
    if TaskResult is not None:
        assert TaskResult.from_disk(task_file, load_historic_data=False).get_score() == entry["main_score"]

    renamed = run_json("evaluate", "--model", str(tiny_models["bert"]), "--data", str(beir), "--k", "10",
                       "--mteb-results", str(results), "--task-name", "SciFactMini", "--main-metric", "recall@10",
                       "--model-name", "my-org/tiny bert")  # fmt: skip
    assert renamed["mteb_results"] == str(results / "results" / "my-org__tiny_bert" / "no_revision_available" / "SciFactMini.json")
    assert json.loads(Path(renamed["mteb_results"]).read_text())["scores"]["test"][0]["main_score"] == renamed["metrics"]["recall@10"]
    bad_language = run_mmst("evaluate", "--model", str(tmp_path / "absent"), "--mteb-results", str(results), "--task-languages", "en")
    assert_one_line_error(bad_language, 2, "--task-languages 'en'", "eng-Latn")
    run, qrels = write_run_and_qrels(tmp_path)
    without_model = run_mmst("evaluate", "--run", str(run), "--qrels", str(qrels), "--mteb-results", str(results))
    assert_one_line_error(without_model, 2, "--mteb-results", "needs --model")
