"""``mmst mine``: hard negatives for text, images and audio, each false-negative rule counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmst_cli.core.retrieval.search import FAISS_MIN_IVF_DOCUMENTS, faiss_search, search

from tests.data_factory import write_colour_pairs, write_tone_pairs
from tests.pdf_factory import write_text_pdf
from tests.helpers import assert_one_line_error, run_json, run_mmst, run_mmst_process

FACTS = [
    ("what is a cat", "A cat is a small domesticated feline."),
    ("what is a dog", "A dog is a domesticated canine."),
    ("capital of france", "Paris is the capital of France."),
    ("capital of italy", "Rome is the capital of Italy."),
    ("how do planes fly", "Wings generate lift as air flows over them."),
    ("what is python", "Python is a programming language."),
    ("what is a cat", "Cats are felines kept as pets."),  # a second positive of the same anchor
]
EXTRA = ["Berlin is the capital of Germany.", "Helicopters use rotors.", "Java is a programming language.",
         "Wolves are wild canines.", "Madrid is the capital of Spain.", "Tigers are large felines."]  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


def negatives_of(row: dict) -> list:
    return [value for key, value in row.items() if key.startswith("negative_")]


@pytest.fixture
def facts(tmp_path) -> tuple[Path, Path]:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "answer": a}) + "\n" for q, a in FACTS), encoding="utf8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(EXTRA) + "\n", encoding="utf8")
    return pairs, corpus


def test_text_negatives_exclude_every_positive_cache_and_both_trainers(tmp_path, facts, minilm_path, tiny_models):
    pairs, corpus = facts
    cache = ["--cache-dir", str(tmp_path / "cache")]
    common = ["--model", str(minilm_path), "--data", str(pairs), "--corpus", str(corpus), *cache]
    summary = run_json("mine", *common, "--num-negatives", "2", "--scores", "-o", str(tmp_path / "mined.jsonl"))
    assert summary["index"] == "exact"
    rows = read_rows(tmp_path / "mined.jsonl")
    positives = {}
    for query, answer in FACTS:
        positives.setdefault(query, set()).add(answer)
    assert len(rows) == summary["rows_written"] == len(FACTS) and summary["corpus_cache"] == "written"
    for row in rows:
        assert len(negatives_of(row)) == 2 and not set(negatives_of(row)) & positives[row["anchor"]]
        assert row["scores"][1] >= row["scores"][2]  # the hardest first
    # Every positive ranks in the top 4 of its anchor and is removed there; "what is a cat" has two,
    # and each is the other row's false negative.
    assert summary["removed"]["relevant"] == len(FACTS)
    # MiniLM's real ranking: the hardest negative of a capital is another capital.
    france = next(row for row in rows if row["anchor"] == "capital of france")
    assert "capital" in france["negative_1"]

    # Another --num-negatives reuses the cached corpus embeddings; a margin removes and counts.
    again = run_json("mine", *common, "--num-negatives", "1", "--absolute-margin", "0.3", "--format", "labeled-list",
                     "--keep-incomplete", "--index", "faiss", "-o", str(tmp_path / "list.jsonl"))  # fmt: skip
    assert again["corpus_cache"] == "hit" and again["removed"]["absolute_margin"] > 0 and again["index"] == "faiss"
    listed = read_rows(tmp_path / "list.jsonl")
    assert all(row["labels"][0] == 1 and set(row["labels"][1:]) <= {0} for row in listed)

    trained = run_json("train-embed", "--model", str(tiny_models["bert"]), "--data", str(tmp_path / "mined.jsonl"),
                       "--max-steps", "1", "--batch-size", "4", "--output-dir", str(tmp_path / "embed"))  # fmt: skip
    assert trained["train"]["steps"] == 1
    reranked = run_json("train-rerank", "--model", str(tiny_models["bert"]), "--data", str(tmp_path / "list.jsonl"),
                        "--loss", "lambda", "--max-steps", "1", "--batch-size", "2", "--output-dir", str(tmp_path / "rerank"))  # fmt: skip
    assert reranked["train"]["steps"] == 1


def test_without_model_the_embedded_default_mines_as_in_every_command(tmp_path, facts, minilm_path, monkeypatch):
    from mmst_cli.core.models import loading
    from mmst_cli.core.models.locate import DEFAULT_MODEL_NAME, locate_model

    asked = []
    real_load_model = loading.load_model

    def load_model(source, **kwargs):  # the default Router's text route is this MiniLM; its build costs 8 s
        asked.append(source.reference)
        return real_load_model(locate_model(str(minilm_path)), **kwargs)

    monkeypatch.setattr(loading, "load_model", load_model)
    pairs, corpus = facts
    summary = run_json("mine", "--data", str(pairs), "--corpus", str(corpus), "--num-negatives", "1",
                       "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "mined.jsonl"))  # fmt: skip
    assert asked == [DEFAULT_MODEL_NAME] and summary["model"] == DEFAULT_MODEL_NAME
    assert summary["rows_written"] == len(FACTS)


def test_a_device_list_encodes_both_sides_through_one_pool(tmp_path, facts, minilm_path, monkeypatch):
    # Spawning two real workers costs 7-20 s on 2 shared cores; the pool itself (processes, order kept) is
    # tested by `mmst encode`'s test. Here the pool's calls run in process, so the wiring is what is tested:
    # one pool on the listed devices, both sides encoded through it, stopped, and the same rows.
    from sentence_transformers import SentenceTransformer

    from mmst_cli.core.encode.job import PooledModel

    calls = []
    monkeypatch.setattr(SentenceTransformer, "start_multi_process_pool", lambda self, devices: calls.append(("start", devices)) or "pool")
    monkeypatch.setattr(SentenceTransformer, "stop_multi_process_pool", lambda self, pool: calls.append(("stop", pool)))

    class InProcessPool(PooledModel):
        def encode_query(self, inputs, **kwargs):
            calls.append(("query", len(inputs)))
            return self._model.encode_query(inputs, **kwargs)

        def encode_document(self, inputs, **kwargs):
            calls.append(("document", len(inputs)))
            return self._model.encode_document(inputs, **kwargs)

    monkeypatch.setattr("mmst_cli.core.retrieval.mining.PooledModel", InProcessPool)
    pairs, corpus = facts
    common = ["--model", str(minilm_path), "--data", str(pairs), "--corpus", str(corpus), "--scores", "--cache-dir", str(tmp_path / "cache")]
    run_json("mine", *common, "--device", "cpu", "-o", str(tmp_path / "one.jsonl"))
    assert calls == []
    run_json("mine", *common, "--device", "cpu, cpu", "--cache-dir", str(tmp_path / "cache2"), "-o", str(tmp_path / "two.jsonl"))
    anchors, documents = len({q for q, _ in FACTS}), len({a for _, a in FACTS} | set(EXTRA))
    assert calls == [("start", ["cpu", "cpu"]), ("query", anchors), ("document", documents), ("stop", "pool")]
    for single, pooled in zip(read_rows(tmp_path / "one.jsonl"), read_rows(tmp_path / "two.jsonl"), strict=True):
        assert negatives_of(single) == negatives_of(pooled) and np.allclose(single["scores"], pooled["scores"], atol=1e-5)


def test_a_copy_of_the_positive_under_another_name_is_never_its_negative(tmp_path, tiny_models):
    write_colour_pairs(tmp_path, count=4)
    shutil.copy(tmp_path / "images" / "000.png", tmp_path / "images" / "copy-of-red.png")
    output = tmp_path / "mined.jsonl"
    summary = run_json("mine", "--model", str(tiny_models["clip"]), "--data", str(tmp_path / "pairs.jsonl"),
                       "--corpus", str(tmp_path / "images"), "--num-negatives", "3", "--range-max", "5",
                       "--cache-dir", str(tmp_path / "cache"), "-o", str(output))  # fmt: skip
    rows = read_rows(output)
    assert summary["documents"] == 5 and summary["removed"]["same_content_as_positive"] == 1
    red = next(row for row in rows if row["positive"] == "images/000.png")
    assert "images/copy-of-red.png" not in negatives_of(red)
    # References are written relative to the output, so the rows train as they are.
    assert all((tmp_path / value).is_file() for row in rows for value in (row["positive"], *negatives_of(row)))
    trained = run_json("train-embed", "--model", str(tiny_models["clip"]), "--data", str(output), "--max-steps", "1",
                       "--batch-size", "4", "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert trained["train"]["steps"] == 1


def test_embedded_images_are_written_once_by_content_and_the_rows_train(tmp_path, tiny_models):
    import hashlib

    import datasets
    from PIL import Image

    write_colour_pairs(tmp_path, count=4)
    pairs = read_rows(tmp_path / "pairs.jsonl")
    pictures = [(tmp_path / row["image"]).read_bytes() for row in pairs]
    Image.new("RGB", (40, 40), (128, 128, 128)).save(tmp_path / "grey.png")
    cells = lambda items: [{"bytes": item, "path": None} for item in items]  # noqa: E731
    # A save_to_disk dataset whose last row embeds the first row's picture again ...
    datasets.Dataset.from_dict(
        {"caption": [row["caption"] for row in pairs] + ["the first colour again"], "image": cells(pictures + pictures[:1])},
        features=datasets.Features({"caption": datasets.Value("string"), "image": datasets.Image()}),
    ).save_to_disk(tmp_path / "pairs_dataset")
    # ... and a parquet corpus of image structs: a copy of a positive, and a new picture.
    grey = (tmp_path / "grey.png").read_bytes()
    datasets.Dataset.from_dict(
        {"page": cells([pictures[1], grey])}, features=datasets.Features({"page": datasets.Image()})
    ).to_parquet(tmp_path / "corpus.parquet")
    output = tmp_path / "out" / "mined.jsonl"
    command = ["mine", "--model", str(tiny_models["clip"]), "--data", str(tmp_path / "pairs_dataset"), "--corpus",
               str(tmp_path / "corpus.parquet"), "--num-negatives", "2", "--cache-dir", str(tmp_path / "cache"), "-o", str(output)]  # fmt: skip
    summary = run_json(*command)
    named = {f"mined-media/{hashlib.sha1(item).hexdigest()}.png" for item in (*pictures, grey)}
    assert sorted(path.name for path in (tmp_path / "out" / "mined-media").iterdir()) == sorted(Path(n).name for n in named)
    assert summary["documents"] == 5 and summary["rows_written"] == 5
    rows = read_rows(output)
    # Each row names its own picture's file, relative to the output; the same bytes are one file.
    assert [row["positive"] for row in rows] == [f"mined-media/{hashlib.sha1(item).hexdigest()}.png" for item in pictures + pictures[:1]]
    assert all(row["positive"] not in negatives_of(row) and set(negatives_of(row)) <= named for row in rows)
    # A rerun writes nothing new; the rows train as they are.
    assert run_json(*command)["corpus_cache"] == "hit" and len(list((tmp_path / "out" / "mined-media").iterdir())) == 5
    trained = run_json("train-embed", "--model", str(tiny_models["clip"]), "--data", str(output), "--max-steps", "1",
                       "--batch-size", "4", "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert trained["train"]["steps"] == 1
    # Bytes that are no media are refused on one line naming the row, before any model loads.
    datasets.Dataset.from_dict({"caption": ["a"], "blob": [b"not media"]}).to_parquet(tmp_path / "blobs.parquet")
    refused = run_mmst("mine", "--model", str(tiny_models["clip"]), "--data", str(tmp_path / "blobs.parquet"), "-o", str(output))
    assert_one_line_error(refused, 2, "column 'blob', row 1", "neither an image nor audio")


def test_a_vidore_style_folder_with_embedded_pages_is_mined_into_files(tmp_path, tiny_models):
    """mteb / ViDoRe parts reach mining decoded: their images are written once as PNG, by content."""
    import datasets
    from PIL import Image

    folder = tmp_path / "vidore"
    folder.mkdir()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    pages = [Image.new("RGB", (32, 32), colour) for colour in colours] + [Image.new("RGB", (32, 32), colours[0])]
    datasets.Dataset.from_dict(
        {"corpus-id": [f"p{i}" for i in range(5)], "image": pages},  # p4 is p0's picture again
        features=datasets.Features({"corpus-id": datasets.Value("string"), "image": datasets.Image()}),
    ).to_parquet(folder / "corpus.parquet")
    datasets.Dataset.from_dict({"query-id": ["q0", "q1"], "query": ["the red page", "the green page"]}).to_parquet(folder / "queries.parquet")
    datasets.Dataset.from_dict({"query-id": ["q0", "q1"], "corpus-id": ["p0", "p1"], "score": [1, 1]}).to_parquet(folder / "qrels.parquet")
    output = tmp_path / "mined.jsonl"
    summary = run_json("mine", "--model", str(tiny_models["clip"]), "--data", str(folder), "--split", "train",
                       "--num-negatives", "3", "--cache-dir", str(tmp_path / "cache"), "-o", str(output))  # fmt: skip
    written = sorted((tmp_path / "mined-media").iterdir())
    assert len(written) == 4 and summary["documents"] == 4  # the repeated picture is one file and one document
    rows = read_rows(output)
    assert [row["anchor"] for row in rows] == ["the red page", "the green page"]
    for row in rows:
        assert (tmp_path / row["positive"]).is_file() and row["positive"] not in negatives_of(row)
    assert Image.open(tmp_path / rows[0]["positive"]).getpixel((0, 0)) == colours[0]


def test_pdf_pages_stay_page_references_and_a_copied_pdf_is_caught(tmp_path, tiny_models):
    write_text_pdf(tmp_path / "docs" / "report.pdf", ["alpha page", "beta page", "gamma page"])
    shutil.copy(tmp_path / "docs" / "report.pdf", tmp_path / "docs" / "copy.pdf")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"q": f"question {i}", "page": f"docs/report.pdf#page={i}"}) + "\n" for i in (1, 2, 3)))
    summary = run_json("mine", "--model", str(tiny_models["clip"]), "--data", str(tmp_path / "pairs.jsonl"),
                       "--corpus", str(tmp_path / "docs"), "--num-negatives", "2", "--range-max", "6",
                       "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "mined.jsonl"))  # fmt: skip
    # Each positive's copy in copy.pdf is caught by content; so is a second copy among the negatives.
    assert summary["removed"]["same_content_as_positive"] == 3 and summary["removed"]["same_content_as_negative"] == 3
    for row in read_rows(tmp_path / "mined.jsonl"):
        page = row["positive"].split("#")[1]
        assert row["positive"].startswith("docs/report.pdf#page=") and f"docs/copy.pdf#{page}" not in negatives_of(row)
        assert all(negative.startswith("docs/") and "#page=" in negative for negative in negatives_of(row))
    # The same PDFs as the corpus of a BEIR folder (queries.jsonl and qrels on page ids).
    (tmp_path / "docs" / "qrels").mkdir()
    (tmp_path / "docs" / "queries.jsonl").write_text('{"_id": "q1", "text": "alpha"}\n')
    (tmp_path / "docs" / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\treport.pdf#page=1\t1\n")
    run_json("mine", "--model", str(tiny_models["clip"]), "--data", str(tmp_path / "docs"), "--num-negatives", "2",
             "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "from-folder.jsonl"))  # fmt: skip
    (row,) = read_rows(tmp_path / "from-folder.jsonl")
    assert row["positive"] == "docs/report.pdf#page=1" and "docs/copy.pdf#page=1" not in negatives_of(row)
    assert all("#page=" in negative for negative in negatives_of(row))


def test_audio_copies_are_caught_by_content(tmp_path, tiny_models):
    write_tone_pairs(tmp_path, count=4, rate=16000)
    (tmp_path / "pairs.csv").write_text(
        "clip,match\n" + "".join(f"audio/{i:03d}.wav,audio/{i:03d}.wav\n" for i in range(4)), encoding="utf8"
    )
    shutil.copy(tmp_path / "audio" / "002.wav", tmp_path / "audio" / "again.wav")
    summary = run_json("mine", "--model", str(tiny_models["wav2vec2"]), "--data", str(tmp_path / "pairs.csv"),
                       "--corpus", str(tmp_path / "audio"), "--num-negatives", "2", "--range-max", "5",
                       "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "mined.jsonl"))  # fmt: skip
    assert summary["removed"]["same_content_as_positive"] == 1
    for row in read_rows(tmp_path / "mined.jsonl"):
        assert row["positive"] not in negatives_of(row)
        assert row["positive"] != "audio/002.wav" or "audio/again.wav" not in negatives_of(row)


def test_qrels_groups_and_reranker_remove_false_negatives(tmp_path, tiny_models, tiny_reranker):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    documents = {f"d{i}": f"document {i} about topic {i % 3}" for i in range(8)}
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in documents.items()))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"topic {i}"}) + "\n" for i in range(3)))
    # q0 has three relevant documents and one judged not relevant (d7), which may be a negative.
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td3\t1\nq0\td6\t2\nq0\td7\t0\nq1\td1\t1\nq2\td2\t1\n")
    common = ["--model", str(tiny_models["bert"]), "--cache-dir", str(tmp_path / "cache")]
    summary = run_json("mine", *common, "--data", str(beir), "--split", "train", "--num-negatives", "4",
                       "--range-max", "8", "-o", str(tmp_path / "beir.jsonl"))  # fmt: skip
    assert summary["rows_written"] == 5 and summary["removed"]["relevant"] == 5  # every relevant document, once per query
    relevant = {"d0", "d3", "d6"}
    for row in read_rows(tmp_path / "beir.jsonl"):
        if row["anchor"] == "topic 0":
            assert not {documents[d] for d in relevant} & set(negatives_of(row))

    pages = tmp_path / "pages.jsonl"
    pages.write_text("".join(json.dumps({"q": f"question {i}", "page": f"page {i} text", "pdf": f"file{i // 2}.pdf"}) + "\n" for i in range(6)))
    grouped = run_json("mine", *common, "--data", str(pages), "--group-column", "pdf", "--num-negatives", "4",
                       "--range-max", "6", "-o", str(tmp_path / "grouped.jsonl"))  # fmt: skip
    assert grouped["removed"]["same_group_as_positive"] == 6
    for row in read_rows(tmp_path / "grouped.jsonl"):
        sibling = int(row["positive"].split()[1]) ^ 1  # the other page of the same pdf
        assert f"page {sibling} text" not in negatives_of(row)

    # A threshold below every probability: the reranker judges every candidate relevant.
    # The human summary on stderr says the same as --json would.
    reranked = run_mmst("mine", *common, "--data", str(pages), "--reranker", str(tiny_reranker), "--reranker-threshold",
                        "0", "--format", "labeled-pair", "--keep-incomplete", "-o", str(tmp_path / "pairs.jsonl"))  # fmt: skip
    assert reranked.returncode == 0 and reranked.stdout == "", reranked.stderr
    assert "6 rows got fewer negatives than asked (kept)" in reranked.stderr
    assert "candidates removed: relevant 6, reranker " in reranked.stderr
    assert {row["label"] for row in read_rows(tmp_path / "pairs.jsonl")} == {1}


def test_bad_input_gets_one_line_and_nothing_written(tmp_path, facts, tiny_models):
    pairs, _ = facts
    output = tmp_path / "out.jsonl"
    base = ["mine", "--model", str(tiny_models["bert"]), "--data", str(pairs), "-o", str(output)]
    # The console script in a real process: refused before any model or data loads.
    assert_one_line_error(run_mmst_process(*base, "--format", "tsv"), 2, "--format must be one of triplet")
    assert_one_line_error(run_mmst(*base, "--keep-incomplete"), 2, "--keep-incomplete needs --format labeled")
    assert_one_line_error(run_mmst(*base, "--reranker-threshold", "0.9"), 2, "--reranker-threshold", "add --reranker")
    assert_one_line_error(run_mmst(*base, "--seed", "7"), 2, "--seed seeds --sampling random", "drop --seed")
    assert_one_line_error(run_mmst(*base, "--group-column", "source"), 2, "--group-column 'source'", "columns are")
    assert_one_line_error(run_mmst(*base, "--device", "cpu,"), 2, "--device 'cpu,' has an empty entry")
    assert_one_line_error(run_mmst(*base, "--range-max", "5", "--max-score", "-5"), 2, "no anchor", "got 3 negatives")
    missing = run_mmst("mine", "--model", str(tiny_models["bert"]), "--data", str(tmp_path / "nope.jsonl"), "-o", str(output))
    assert_one_line_error(missing, 2, "nope.jsonl", "does not exist")
    assert not output.exists()


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_faiss_agrees_with_exact_search(similarity):
    generator = np.random.default_rng(0)
    corpus = generator.normal(size=(FAISS_MIN_IVF_DOCUMENTS, 16)).astype(np.float32)
    queries = generator.normal(size=(40, 16)).astype(np.float32)
    exact_scores, exact_indices = search(queries, corpus, 10, similarity=similarity)
    # Every cluster probed: the inverted-file index must give exact search's ranking and scores.
    lists = int(4 * FAISS_MIN_IVF_DOCUMENTS**0.5)
    scores, indices = faiss_search(queries, corpus, 10, similarity=similarity, nprobe=lists)
    assert (indices == exact_indices).mean() > 0.99
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-4, atol=1e-4)
    # The default probes an eighth of the clusters: approximate, yet most of the top 10 is found.
    _, approximate = faiss_search(queries, corpus, 10, similarity=similarity)
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact_indices)]) > 0.5
