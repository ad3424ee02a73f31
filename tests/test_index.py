"""``mmst index`` and ``mmst search``: image and text corpora, exact and approximate indexes, ``--add``,
resume, multi-vector MaxSim, rerankers, and the one-line errors.

Most tests run in process on tiny models loaded once; two run the real console script.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmst_cli.core.errors import MmstError
from mmst_cli.core.index import layout, vector_index
from mmst_cli.core.index.build import IndexOptions, run_index, staging_folder
from mmst_cli.core.index.searching import read_queries, search_index
from tests.data_factory import write_colour_pairs
from tests.helpers import assert_one_line_error, grouped_options, run_json, run_mmst, run_mmst_process
from tests.pdf_factory import write_text_pdf

TEXTS = {
    "cake": "A recipe for a rich chocolate cake baked in the oven.",
    "stocks": "Stock markets fell sharply after the interest rate decision.",
    "football": "The football match ended in a draw after extra time.",
    "python": "Python is a popular programming language for data science.",
    "cat": "The cat slept all afternoon on the warm windowsill.",
}


@pytest.fixture(scope="module")
def clip(tiny_models):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_models["clip"]))


@pytest.fixture()
def photos(tmp_path):
    """A folder of 6 distinct PNGs (000.png ... 005.png)."""
    write_colour_pairs(tmp_path / "colours", count=6)
    return tmp_path / "colours" / "images"


def build(model, model_path, corpora, output, **options):
    notes: list[str] = []
    on_chunk = options.pop("on_chunk", None)
    job = IndexOptions(corpora=[str(c) for c in corpora], output=str(output), model=str(model_path), **grouped_options(options))
    return run_index(job, model=model, show_progress=False, on_chunk=on_chunk, log=notes.append), notes


def test_image_index_cli_finds_the_query_image_and_works_after_the_corpus_is_gone(tiny_models, photos, tmp_path):
    index = tmp_path / "photos.index"
    summary = run_json("index", "--model", str(tiny_models["clip"]), str(photos), "-o", str(index))
    assert (summary["documents"], summary["added"], summary["index_type"], summary["kind"]) == (6, 6, "flat", "dense")
    assert sorted(path.name for path in index.iterdir()) == ["documents.jsonl", "index.faiss", "manifest.json", "vectors.npy"]
    assert not staging_folder(index).exists()
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["settings"]["similarity"] == "cosine"
    assert manifest["files"]["vectors.npy"]["sha256"] == layout.file_digest(index / "vectors.npy")

    query = tmp_path / "query.png"
    shutil.copy(photos / "002.png", query)
    shutil.rmtree(photos.parent)  # search reads only the index (and the query)
    result = run_mmst("search", str(index), "-i", str(query), "a colourful photo", "-k", "3", "--json", "--timing")
    assert result.returncode == 0, result.stderr
    by_text, by_image = [json.loads(line) for line in result.stdout.splitlines()]  # texts first, then -i
    assert by_image["results"][0]["id"] == "002.png" and by_image["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert by_image["results"][0]["ref"].endswith("colours/images/002.png") and by_image["results"][0]["modality"] == "image"
    assert by_text["query_id"] == "q1" and by_image["query_id"] == "q2" and len(by_text["results"]) == 3
    assert "timing: 2 queries" in result.stderr and set(by_text["timing"]) >= {"encode", "search"}
    table = run_mmst("search", str(index), "a colourful photo", "-k", "2")
    assert table.returncode == 0 and table.stdout == "", table.stderr
    assert "q1: a colourful photo" in table.stderr and table.stderr.count(".png") == 4  # id and file of 2 hits


def test_text_index_finds_the_matching_document_and_writes_a_trec_run_and_reranks(minilm_path, tiny_reranker, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"doc_id": key, "text": text}) + "\n" for key, text in TEXTS.items()))
    index = tmp_path / "docs.index"
    run_json("index", "--model", str(minilm_path), str(corpus), "--id-column", "doc_id", "-o", str(index))
    queries = tmp_path / "queries.tsv"
    queries.write_text("bake\thow do I bake a dessert\ncode\twhich language do programmers write\n")
    run = tmp_path / "run.trec"
    result = run_mmst("search", str(index), "--queries", str(queries), "-k", "2", "--trec", str(run), "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["query_id"], line["results"][0]["id"]) for line in lines] == [("bake", "cake"), ("code", "python")]
    assert lines[0]["results"][0]["text"] == TEXTS["cake"] and lines[0]["results"][0]["ref"] is None
    assert run.read_text().splitlines()[0].split()[:4] == ["bake", "Q0", "cake", "1"]

    from sentence_transformers import CrossEncoder
    import torch

    reranked = run_mmst("search", str(index), "how do I bake a dessert", "--reranker", str(tiny_reranker), "--rerank-top-k", "5",
                        "-k", "5", "--json")  # fmt: skip
    assert reranked.returncode == 0, reranked.stderr
    hits = json.loads(reranked.stdout)["results"]
    expected = CrossEncoder(str(tiny_reranker)).predict(
        [("how do I bake a dessert", TEXTS[hit["id"]]) for hit in hits], activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose([hit["score"] for hit in hits], expected, rtol=1e-4, atol=1e-5)
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)

    # PDF pages by their text layer: the page reference and its text are kept.
    write_text_pdf(tmp_path / "pdfs" / "report.pdf", [TEXTS["stocks"], TEXTS["football"], TEXTS["cat"]])
    run_json("index", "--model", str(minilm_path), str(tmp_path / "pdfs"), "--pdf-text", "-o", str(tmp_path / "pages.index"))
    page = run_mmst("search", str(tmp_path / "pages.index"), "a sleepy kitten", "-k", "1", "--json")
    top = json.loads(page.stdout)["results"][0]
    assert (top["id"], top["text"].split()) == ("report.pdf#page=3", TEXTS["cat"].split())
    assert top["ref"] == f"{(tmp_path / 'pdfs' / 'report.pdf').resolve()}#page=3"


def _retrieval_folder(folder, kind):
    """A BEIR folder of titled texts, or of PDF pages (in corpus/), or an mteb folder of texts, with
    one query per document."""
    keys = list(TEXTS)
    queries = [f"{TEXTS[key]} ({key})" for key in keys]
    folder.joinpath("qrels").mkdir(parents=True)
    if kind == "mteb":  # corpus, queries and qrels tables with mteb's column names
        folder.joinpath("qrels").rmdir()
        doc_ids = [f"doc-{key}" for key in keys]
        for part, rows in (
            ("corpus", [{"corpus-id": doc_id, "text": TEXTS[key]} for doc_id, key in zip(doc_ids, keys)]),
            ("queries", [{"query-id": f"q-{key}", "query": query} for key, query in zip(keys, queries)]),
            ("qrels", [{"query-id": f"q-{key}", "corpus-id": doc_id, "score": 1} for key, doc_id in zip(keys, doc_ids)]),
        ):
            folder.joinpath(f"{part}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return doc_ids
    if kind == "beir-pdf":
        write_text_pdf(folder / "corpus" / "2024" / "report.pdf", [TEXTS[key] for key in keys])
        doc_ids = [f"2024/report.pdf#page={number}" for number in range(1, len(keys) + 1)]
    else:
        doc_ids = [f"doc-{key}" for key in keys]
        folder.joinpath("corpus.jsonl").write_text("".join(
            json.dumps({"_id": doc_id, "title": key, "text": TEXTS[key]}) + "\n" for doc_id, key in zip(doc_ids, keys)
        ))  # fmt: skip
    folder.joinpath("queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q-{key}", "text": query}) + "\n" for key, query in zip(keys, queries)
    ))  # fmt: skip
    folder.joinpath("qrels", "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{key}\t{doc_id}\t1\n" for key, doc_id in zip(keys, doc_ids))
    )
    return doc_ids


@pytest.mark.parametrize(("kind", "model"), [("beir", "bert"), ("beir-pdf", "clip"), ("beir", "multi-vector"), ("mteb", "bert")])
def test_a_retrieval_folder_indexed_and_searched_scores_as_evaluate_scores_it(kind, model, tiny_models, tiny_multi_vector, tmp_path):
    # index takes the folder's corpus with its own ids (and BEIR's title + text), search takes its
    # queries, and the TREC run scores against its qrels exactly as evaluate scores the model.
    folder = tmp_path / "beir"
    doc_ids = _retrieval_folder(folder, kind)
    model_path = str(tiny_multi_vector if model == "multi-vector" else tiny_models[model])
    index, run = tmp_path / "beir.index", tmp_path / "run.trec"
    run_json("index", "--model", model_path, str(folder), "-o", str(index))
    documents = [json.loads(line) for line in (index / "documents.jsonl").read_text().splitlines()]
    assert [document["id"] for document in documents] == doc_ids
    if kind == "beir":
        assert documents[0]["text"] == f"cake {TEXTS['cake']}"
    searched = run_mmst("search", str(index), "--queries", str(folder), "-k", "5", "--trec", str(run))
    assert searched.returncode == 0, searched.stderr
    from_run = run_json("evaluate", "--run", str(run), "--qrels", str(folder), "--k", "1,5")
    from_model = run_json("evaluate", "--model", model_path, "--data", str(folder), "--k", "1,5")
    assert from_run["warnings"] == [] and from_run["metrics"]["recall@5"] == 1.0
    assert from_run["metrics"] == pytest.approx(from_model["metrics"], abs=1e-6)


def test_a_run_that_shares_no_ids_with_the_qrels_is_scored_with_a_warning(tmp_path):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 1 1 0.9 mmst\n")  # row numbers where the qrels name documents
    printed = run_mmst("evaluate", "--run", str(run), "--qrels", str(qrels), "--json")
    assert printed.stdout.count("\n") == 1  # one JSON line, as every --json prints
    result = json.loads(printed.stdout)
    assert result["main_score"] == 0.0 and "no document of the run is judged in the qrels (run: '1'" in result["warnings"][0]
    run.write_text("1 Q0 d1 1 0.9 mmst\n")
    assert "no query of the run is in the qrels" in run_json("evaluate", "--run", str(run), "--qrels", str(qrels))["warnings"][0]
    assert_one_line_error(run_mmst("evaluate", "--run", str(tmp_path), "--qrels", str(qrels)), 2, "--run ", "is a folder; name the file itself")


def test_ivf_with_every_list_probed_and_rescored_quantised_indexes_equal_flat():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 20, 1000)] + 0.3 * rng.normal(size=(1000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(1000, 50, replace=False)] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    base = {"similarity": "cosine", "lists": 8, "hnsw_m": 16, "nprobe": 1, "ef_search": 64}

    def top(index_type, quantize, **search):
        settings = dict(base, index=index_type, quantize=quantize)
        return vector_index.search(vector_index.build(vectors, settings), queries, 10, settings, vectors=vectors, **search)

    exact_scores, exact_rows = top("flat", "none")
    np.testing.assert_allclose(exact_scores[:, 0], (queries @ vectors[exact_rows[:, 0]].T).diagonal(), rtol=1e-5)
    scores, rows = top("ivf", "none", nprobe=8)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)
    few_rows = top("ivf", "none")[1]  # 1 of 8 lists: approximate, still mostly right
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few_rows, exact_rows)]) > 0.5
    # Quantised codes, with every row re-scored by its float vector: exactly the flat ranking.
    for quantize in ("int8", "binary"):
        scores, rows = top("flat", quantize, rescore=100)
        np.testing.assert_array_equal(rows, exact_rows)
        np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)
    hnsw_rows = top("hnsw", "none")[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_rows, exact_rows)]) > 0.9


def test_add_embeds_only_new_files_keeps_old_vectors_byte_identical_and_refuses_other_settings(
    clip, tiny_models, photos, tmp_path, monkeypatch
):
    newer = tmp_path / "newer"
    newer.mkdir()
    for name in ("004.png", "005.png"):
        shutil.move(photos / name, newer / name)
    index = tmp_path / "photos.index"
    build(clip, tiny_models["clip"], [photos], index)
    old_vectors = np.load(index / "vectors.npy")
    for name in ("004.png", "005.png"):
        shutil.move(newer / name, photos / name)

    encoded = []
    original = clip.encode
    monkeypatch.setattr(clip, "encode", lambda inputs, **kw: encoded.extend(inputs) or original(inputs, **kw))
    summary, _ = build(clip, tiny_models["clip"], [photos], index, add=True)
    assert (summary["added"], summary["already_indexed"], summary["documents"]) == (2, 4, 6)
    assert sorted(str(item).rsplit("/", 1)[-1] for item in encoded) == ["004.png", "005.png"]
    vectors = np.load(index / "vectors.npy")
    assert vectors[:4].tobytes() == old_vectors.tobytes()
    opened = layout.open_index(index)
    assert [record["id"] for record in opened.documents()] == [f"00{n}.png" for n in range(6)]
    outcome = search_index(opened, read_queries([], [str(photos / "005.png")], None), k=1, model=clip)
    assert outcome.results[0].hits[0].doc_id == "005.png"

    again, notes = build(clip, tiny_models["clip"], [photos], index, add=True)
    assert again["added"] == 0 and any("nothing to add" in note for note in notes)
    assert_one_line_error(run_mmst("index", str(photos), "--add", "--quantize", "int8", "-o", str(index)), 2, "quantize 'none'")
    other = run_mmst("index", "--model", str(tiny_models["siglip"]), str(photos), "--add", "-o", str(index))
    assert_one_line_error(other, 2, "--add: the index was built with model_identity", "--model")
    assert_one_line_error(run_mmst("index", str(photos), "-o", str(index)), 2, "exists; pass --add")


def test_an_interrupted_build_resumes_without_encoding_finished_chunks(clip, tiny_models, photos, tmp_path):
    index = tmp_path / "photos.index"

    def stop_after_first(chunk):
        raise KeyboardInterrupt

    with pytest.raises(MmstError, match="--resume"):
        build(clip, tiny_models["clip"], [photos], index, chunk_size=2, on_chunk=stop_after_first)
    assert not index.exists() and staging_folder(index).exists()
    summary, notes = build(clip, tiny_models["clip"], [photos], index, chunk_size=2, resume=True)
    assert (summary["reused_chunks"], summary["encoded_chunks"], summary["documents"]) == (1, 2, 6)
    assert any("resuming: 1 of 3 chunks" in note for note in notes) and not staging_folder(index).exists()
    expected = clip.encode([str(path) for path in sorted(photos.iterdir())], normalize_embeddings=True)
    np.testing.assert_allclose(np.load(index / "vectors.npy"), expected, atol=1e-5)


def test_multi_vector_index_is_searched_by_exact_maxsim(tiny_multi_vector, tmp_path):
    from sentence_transformers import MultiVectorEncoder

    from mmst_cli.core.retrieval.maxsim import maxsim_search

    model = MultiVectorEncoder(str(tiny_multi_vector))
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(TEXTS.values()) + "\n")
    index = tmp_path / "tokens.index"
    summary, _ = build(model, tiny_multi_vector, [corpus], index)
    assert summary["kind"] == "multi_vector"
    assert sorted(path.name for path in index.iterdir()) == ["documents.jsonl", "manifest.json", "offsets.npy", "tokens.npy"]
    outcome = search_index(layout.open_index(index), read_queries(["a dessert", "the markets"], [], None), k=3, model=model)
    [(scores, rows)], _ = maxsim_search(model, ["a dessert", "the markets"], list(TEXTS.values()), 3)
    assert [[hit.doc_id for hit in result.hits] for result in outcome.results] == rows.tolist()
    np.testing.assert_allclose([[hit.score for hit in result.hits] for result in outcome.results], scores, rtol=1e-5)
    with pytest.raises(MmstError, match="exactly by MaxSim"):
        build(model, tiny_multi_vector, [corpus], tmp_path / "x.index", index="hnsw")


def test_a_multi_vector_index_whose_tokens_or_offsets_changed_in_place_is_refused_naming_the_file(tiny_multi_vector, tmp_path):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(TEXTS.values()) + "\n")
    index = tmp_path / "tokens.index"
    run_json("index", "--model", str(tiny_multi_vector), str(corpus), "-o", str(index))
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new", "text": "A new document about the weather."}) + "\n")
    offsets_bytes = (index / "offsets.npy").stat().st_size
    # The header (numpy no longer reads the file), and the last offset (it reads, but points past the tokens).
    for name, at in (("tokens.npy", 0), ("offsets.npy", 0), ("offsets.npy", offsets_bytes - 8)):
        damaged = tmp_path / f"damaged-{name[:-4]}-{at}.index"
        shutil.copytree(index, damaged)
        with (damaged / name).open("r+b") as handle:
            handle.seek(at)
            handle.write(b"X" * 8)
        assert (damaged / name).stat().st_size == (index / name).stat().st_size
        assert_one_line_error(run_mmst("search", str(damaged), "cake"), 2, f"': {name} does not read", "rebuild it")
        add = run_mmst("index", str(more), "--id-column", "id", "--add", "-o", str(damaged))
        assert_one_line_error(add, 2, f"': {name} does not read", "rebuild it")
        assert json.loads((damaged / "manifest.json").read_text())["count"] == len(TEXTS)  # left as it was


def test_bad_index_folders_and_queries_are_one_line_errors(tiny_models, photos, tmp_path):
    index = tmp_path / "photos.index"
    run_json("index", "--model", str(tiny_models["clip"]), str(photos), "-o", str(index))
    not_an_index = tmp_path / "plain"
    not_an_index.mkdir()
    assert_one_line_error(run_mmst("search", str(not_an_index), "red"), 2, "no manifest.json", "mmst index")
    assert_one_line_error(run_mmst("search", str(index), "  "), 2, "query 1 is empty")
    assert_one_line_error(run_mmst("search", str(index)), 2, "give a query")
    assert_one_line_error(run_mmst("search", str(index), "-i", "notes.txt"), 2, "-i 'notes.txt'")
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(run_mmst("search", str(index), "--queries", str(tmp_path / "empty.txt")), 2, "empty.txt' has nothing to embed")
    assert_one_line_error(run_mmst("search", str(index), "--queries", str(not_an_index)), 2, "folder without queries.jsonl")
    (tmp_path / "two.jsonl").write_text('{"a": "red", "b": "blue"}\n')
    assert_one_line_error(run_mmst("search", str(index), "--queries", str(tmp_path / "two.jsonl")), 2, "no 'query' column", "id<TAB>text")
    shutil.copy(photos / "001.png", tmp_path / "001.png")
    (tmp_path / "pairs.jsonl").write_text('{"image": "001.png", "query": "a red square"}\n')  # the query, not its image
    searched = run_mmst("search", str(index), "--queries", str(tmp_path / "pairs.jsonl"), "-k", "1", "--json")
    assert json.loads(searched.stdout)["query"] == "a red square", searched.stderr
    (tmp_path / "blank.jsonl").write_text('{"id": "q7", "text": " "}\n')
    assert_one_line_error(run_mmst("search", str(index), "--queries", str(tmp_path / "blank.jsonl")), 2, "query 'q7' is empty")
    assert_one_line_error(run_mmst("index", str(photos), "-o", ""), 2, "-o is empty")
    assert_one_line_error(run_mmst("index", str(photos), "-o", str(tmp_path / "x"), "--lists", "4"), 2, "add --index ivf")
    assert_one_line_error(run_mmst("index", str(photos), "-o", str(tmp_path / "x"), "--index", "ivf", "--hnsw-m", "8"), 2,
                          "--hnsw-m shapes an hnsw index")  # fmt: skip
    for name in ("documents.jsonl", "vectors.npy", "index.faiss"):  # bytes changed in place: sizes still match
        damaged = tmp_path / f"damaged-{name}.index"
        shutil.copytree(index, damaged)
        with (damaged / name).open("r+b") as handle:
            handle.write(b"X" * 8)
        assert_one_line_error(run_mmst("search", str(damaged), "red"), 2, f"{name}", "does not read", "rebuild it")
    with (index / "vectors.npy").open("ab") as handle:
        handle.write(b"\0")
    assert_one_line_error(run_mmst("search", str(index), "red"), 2, "vectors.npy has", "damaged")


def test_search_refuses_another_model_of_the_same_width_and_a_rerank_cut_below_k(clip, tiny_models, tiny_reranker, photos, tmp_path):
    import copy

    import torch

    index = tmp_path / "photos.index"
    build(clip, tiny_models["clip"], [photos], index)
    moved = tmp_path / "moved-clip"
    shutil.copytree(tiny_models["clip"], moved)
    assert run_mmst("search", str(index), "red", "--model", str(moved), "--json").returncode == 0  # the same model, moved
    other = copy.deepcopy(clip)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    other.save(str(tmp_path / "other"))
    assert_one_line_error(run_mmst("search", str(index), "red", "--model", str(tmp_path / "other")), 2,
                          "embeds the index's document '000.png' differently", "pass the model it was built with")  # fmt: skip
    cut = run_mmst("search", str(index), "red", "--reranker", str(tiny_reranker), "--rerank-top-k", "2", "-k", "3")
    assert_one_line_error(cut, 2, "--rerank-top-k 2 is below -k 3")
    assert_one_line_error(run_mmst("search", str(index), "red", "--rerank-top-k", "20"), 2, "add --reranker or drop it")
    for flag, value, fragment in (("--nprobe", "4", "--nprobe sets how many IVF lists"), ("--ef-search", "8", "but index"),
                                  ("--rescore", "2", "holds float vectors"), ("--nprobe", "0", "positive whole number")):  # fmt: skip
        assert_one_line_error(run_mmst("search", str(index), "red", flag, value), 2, fragment)  # a flat float index
    not_a_reranker = run_mmst("search", str(index), "red", "--reranker", str(tiny_models["clip"]))
    assert_one_line_error(not_a_reranker, 2, "is not a reranker (mmst detect says kind 'embedder')", "CrossEncoder")


def test_the_moved_model_check_reads_no_document_media_outside_the_index_folder(clip, tiny_models, photos, tmp_path):
    import tempfile
    from pathlib import Path

    from PIL import Image

    from mmst_cli.core.index.searching import check_moved_model

    build(clip, tiny_models["clip"], [photos], tmp_path / "photos.index")
    index = layout.open_index(str(tmp_path / "photos.index"))
    documents = [dict(record, ref=index.media_reference(record["ref"])) for record in index.documents()]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    # A documents.jsonl edited to name another image: inside the index's folder it is read, and differs...
    noise.save(tmp_path / "inside.png")
    with pytest.raises(MmstError, match="embeds the index's document '000.png' differently"):
        check_moved_model(index, clip, [dict(documents[0], ref=str(tmp_path / "inside.png")), *documents[1:]], 8)
    # ...outside it, it is never read: the next document is checked instead, and matches.
    with tempfile.TemporaryDirectory() as elsewhere:
        noise.save(Path(elsewhere) / "outside.png")
        check_moved_model(index, clip, [dict(documents[0], ref=str(Path(elsewhere) / "outside.png")), *documents[1:]], 8)


def test_cli_processes_exit_2_with_one_line(tmp_path):
    index = run_mmst_process("index", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.index"))
    assert_one_line_error(index, 2, "missing.jsonl")
    assert not (tmp_path / "x.index").exists()
    search = run_mmst_process("search", str(tmp_path / "missing.index"), "a red dress")
    assert_one_line_error(search, 2, "missing.index", "does not exist")


def test_search_report_shows_each_querys_hits_as_thumbnails_in_the_order_given_without_marks(clip, tiny_models, photos, tmp_path):
    from PIL import Image

    from tests.report_pages import data_uri_image, read_page

    index = tmp_path / "photos.index"
    build(clip, tiny_models["clip"], [photos], index)
    query = tmp_path / "query.png"
    shutil.copy(photos / "002.png", query)
    colours = {path.name: np.asarray(Image.open(path).convert("RGB"), dtype=float).mean(axis=(0, 1)) for path in photos.iterdir()}
    (photos / "005.png").unlink()  # gone since indexing: the page notes it, the search goes on
    page = tmp_path / "out" / "search.html"
    result = run_mmst("search", str(index), "a colourful photo", "-i", str(query), "-k", "6", "--json", "--report", str(page))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(line["results_page"] == str(page) for line in lines)
    html, content = read_page(page)
    assert [query.query_id for query in content.queries] == ["q1", "q2"] and "2 of 2 queries." in html
    for line, shown in zip(lines, content.queries):
        assert [hit.doc_id for hit in shown.hits] == [hit["id"] for hit in line["results"]]
        for hit in shown.hits:
            assert hit.marks == {"unjudged"} and not hit.missed
            if hit.doc_id == "005.png":
                assert hit.images == []
                continue
            (uri,) = hit.images  # the indexed file itself, embedded (40 px: below the thumbnail size)
            thumbnail = data_uri_image(uri).convert("RGB")
            assert thumbnail.size == (40, 40)
            assert np.abs(np.asarray(thumbnail, dtype=float).mean(axis=(0, 1)) - colours[hit.doc_id]).max() < 8
    assert html.count("005.png: cannot be previewed") == 2  # once per query: the corpus file is gone


def test_media_held_in_a_parquet_is_written_into_the_index_once_and_search_shows_it(clip, tiny_models, photos, tmp_path):
    import hashlib

    import datasets

    from tests.report_pages import read_page

    pictures = [(photos / f"00{n}.png").read_bytes() for n in range(4)]
    stored = [f"media/{hashlib.sha1(picture).hexdigest()}.png" for picture in pictures]

    def parquet(name, ids, items):
        features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
        cells = [{"bytes": item, "path": None} for item in items]
        datasets.Dataset.from_dict({"id": ids, "image": cells}, features=features).to_parquet(tmp_path / name)
        return tmp_path / name

    index = tmp_path / "held.index"
    first = parquet("a.parquet", ["a", "b", "c"], [pictures[0], pictures[1], pictures[0]])  # c repeats a's picture
    build(clip, tiny_models["clip"], [first], index, column="image", id_column="id")
    records = list(layout.open_index(index).documents())
    assert [(record["id"], record["ref"]) for record in records] == [("a", stored[0]), ("b", stored[1]), ("c", stored[0])]
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["files"][stored[0]]["sha256"] == hashlib.sha256(pictures[0]).hexdigest()

    second = parquet("b.parquet", ["d"], [pictures[3]])
    summary, _ = build(clip, tiny_models["clip"], [first, second], index, column="image", id_column="id", add=True)
    assert (summary["added"], summary["already_indexed"]) == (1, 3)  # the rows of a.parquet by corpus and id
    assert sorted(f"media/{path.name}" for path in (index / "media").iterdir()) == sorted({stored[0], stored[1], stored[3]})
    assert set(json.loads((index / "manifest.json").read_text())["files"]) >= {stored[0], stored[1], stored[3]}

    # A cell that names a file instead of holding its bytes keeps ref null, as before: no copy, no error.
    named = tmp_path / "named.parquet"
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_dict({"id": ["e"], "image": [str(photos / "004.png")]}, features=features).to_parquet(named)
    build(clip, tiny_models["clip"], [named], index, column="image", id_column="id", add=True)
    assert [record["ref"] for record in layout.open_index(index).documents()][-1] is None

    page = tmp_path / "held.html"
    result = run_mmst("search", str(index), "-i", str(photos / "003.png"), "-k", "1", "--json", "--report", str(page))
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["results"][0]
    assert (top["id"], top["ref"]) == ("d", str(index.resolve() / stored[3])) and top["modality"] == "image"
    assert len(read_page(page)[1].queries[0].hits[0].images) == 1


def test_search_report_path_errors_are_one_line_before_the_model_loads(tiny_models, photos, tmp_path):
    index = tmp_path / "photos.index"
    run_json("index", "--model", str(tiny_models["clip"]), str(photos), "-o", str(index))
    # --model nowhere: the model would fail to load, so the report check must come first
    assert_one_line_error(run_mmst("search", str(index), "red", "--model", "nowhere", "--report", str(tmp_path)), 2, "--report", "is a folder")
    zero = run_mmst("search", str(index), "red", "--model", "nowhere", "--report", "r.html", "--report-queries", "0")
    assert_one_line_error(zero, 2, "--report-queries must be positive")


def test_audio_held_in_a_parquet_is_stored_as_written_before_encoding_decodes_it(tiny_models, tmp_path):
    import hashlib
    import io

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile

    clips = []
    for period in (3, 5):
        buffer = io.BytesIO()
        soundfile.write(buffer, np.sin(np.arange(8000) / period).astype("float32"), 8000, format="WAV")
        clips.append(buffer.getvalue())
    # Written by hand: datasets' own Audio writer needs torchcodec.
    features = datasets.Features({"id": datasets.Value("string"), "audio": datasets.Audio()})
    cells = pa.array([{"bytes": clip, "path": None} for clip in clips], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"id": ["low", "high"], "audio": cells})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features.to_dict()}})}),
                   tmp_path / "clips.parquet")  # fmt: skip
    index = tmp_path / "clips.index"
    run_json("index", "--model", str(tiny_models["wav2vec2"]), str(tmp_path / "clips.parquet"), "--column", "audio",
             "--id-column", "id", "-o", str(index))  # fmt: skip
    stored = index / "media" / f"{hashlib.sha1(clips[1]).hexdigest()}.wav"
    assert stored.read_bytes() == clips[1]  # the cell's own bytes, not the model-rate decoded array
    page = tmp_path / "clips.html"
    result = run_mmst("search", str(index), "-i", str(stored), "-k", "2", "--json", "--report", str(page))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["ref"] == str(stored.resolve())
    assert page.read_text().count("<audio ") == 3  # the query and both hits


def _valid_manifest() -> dict:
    settings = {"index": "flat", "quantize": "none", "model": "m", "model_identity": "/m", "similarity": "cosine",
                "normalize": True, "dim": None, "pdf_dpi": 144.0}  # fmt: skip
    return {"kind": "dense", "count": 1, "dim": 4, "settings": settings, "corpora": ["/c.jsonl"]}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.pop("settings"), "no usable 'settings' (an object expected, found None)"),
        (lambda m: m.update(count="x"), "no usable 'count'"),
        (lambda m: m.update(dim=True), "no usable 'dim'"),
        (lambda m: m.update(kind="sparse"), "kind 'sparse'"),
        (lambda m: m.update(count=-1), "count -1"),
        (lambda m: m["settings"].pop("similarity"), "no setting(s) 'similarity'"),
        (lambda m: m["files"].update({"vectors.npy": 5}), "vectors.npy has"),
    ],
)
def test_an_edited_manifest_is_refused_by_field_before_any_search(tmp_path, edit, expected):
    """A manifest of the right version with a field removed or mistyped is named, not a KeyError mid-search."""
    index = tmp_path / "x.index"
    index.mkdir()
    for name in layout.FILES["dense"]:
        (index / name).write_bytes(b"0123")
    manifest = layout.write_manifest(index, _valid_manifest())
    edit(manifest)
    (index / layout.MANIFEST).write_text(json.dumps(manifest))
    assert_one_line_error(run_mmst("search", str(index), "red"), 2, expected)
