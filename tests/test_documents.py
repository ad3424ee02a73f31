"""PDF pages as inputs: references, rendering, text layers, encode, evaluate, training data and every bad case.

PDFs are written at test time (tests/pdf_factory.py): text pages with a real text layer, picture
pages without one (as a scanner makes), and broken files. Vectors are compared with
``model.encode`` on the pages rendered by PDFium directly, so the whole path is checked.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmst_cli.core.data.documents import (
    MAX_PAGE_PIXELS,
    PageReference,
    PdfProblem,
    RenderSettings,
    page_text,
    parse_page_reference,
    render_page,
    render_size,
)
from mmst_cli.core.encode.job import EncodeOptions, run_encode
from mmst_cli.core.errors import MmstError
from tests.helpers import assert_one_line_error, grouped_options, run_json, run_mmst
from tests.pdf_factory import (
    write_empty_pdf,
    write_encrypted_pdf,
    write_image_pdf,
    write_sized_pdf,
    write_text_pdf,
)

REPORT_PAGES = ["Quarterly revenue grew\nby ten percent", "Costs fell in the third quarter", "Outlook for next year"]


@pytest.fixture(scope="module")
def clip(tiny_models):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_models["clip"]))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """docs/report.pdf (3 text pages) and docs/scans/scan.pdf (2 picture pages without text)."""
    folder = tmp_path_factory.mktemp("pdfs") / "docs"
    write_text_pdf(folder / "report.pdf", REPORT_PAGES)
    write_image_pdf(folder / "scans" / "scan.pdf", 2)
    (folder / ".hidden.pdf").write_bytes(b"not looked at")
    return folder


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def encode(model, model_path, inputs, output, **options):
    notes: list[str] = []
    job = EncodeOptions(inputs=str(inputs), output=str(output), model=str(model_path), **grouped_options(options))
    return run_encode(job, model=model, show_progress=False, log=notes.append), notes


# ------------------------------------------------------------------------------------------ core


def test_references_and_render_sizes():
    assert parse_page_reference("a/report.PDF#page=3") == PageReference("a/report.PDF", 3)
    assert parse_page_reference("report.pdf#page=2-5") == PageReference("report.pdf", 2, 5)
    assert parse_page_reference("report.pdf") == PageReference("report.pdf")
    assert parse_page_reference("photo.png") is None and parse_page_reference("a pdf about cats") is None
    for bad, fragment in (("r.pdf#page=0", "count from 1"), ("r.pdf#page=5-2", "runs backwards"), ("r.pdf#page=x", "not a page")):
        with pytest.raises(PdfProblem, match=fragment):
            parse_page_reference(bad)
    assert render_size((612, 792), RenderSettings()) == (1224, 1584)  # Letter at 144 dpi
    width, height = render_size((612, 792), RenderSettings(max_pixels=360_000))
    assert width * height <= 360_000 and abs(width / height - 612 / 792) < 0.01  # budget kept, aspect too
    with pytest.raises(PdfProblem, match="megapixel limit"):
        render_size((14_400, 14_400), RenderSettings())  # 200 x 200 inches: a bomb, not a page
    assert render_size((14_400, 14_400), RenderSettings(dpi=36)) == (7200, 7200)  # fine at a lower dpi
    assert 7200 * 7200 < MAX_PAGE_PIXELS
    with pytest.raises(MmstError, match="--pdf-dpi must be a positive number"):
        RenderSettings(dpi=0)


# ------------------------------------------------------------------------------------------ encode


def test_encode_folder_embeds_every_page_in_order_as_model_encode_on_the_renders(clip, tiny_models, docs, tmp_path):
    output = tmp_path / "pages.parquet"
    result, _ = encode(clip, tiny_models["clip"], docs, output, pdf_dpi=72)
    ids = [f"report.pdf#page={n}" for n in (1, 2, 3)] + ["scans/scan.pdf#page=1", "scans/scan.pdf#page=2"]
    table = pq.read_table(output)
    assert table["id"].to_pylist() == ids and result.summary["pdf_pages"] == 5
    pages = json.loads(table.schema.metadata[b"mmst"])["pdf"]["pages"]
    assert [(page["file"], page["page"]) for page in pages] == [(i.split("#")[0], int(i[-1])) for i in ids]
    assert pages[0]["width_pt"] == 612 and pages[3]["height_pt"] == 400
    settings = RenderSettings(dpi=72)
    expected = clip.encode([render_page(docs / id_.split("#")[0], int(id_[-1]), settings) for id_ in ids])
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), expected, atol=1e-5)
    # Rendered with no threads, one call at a time, the vectors are the same.
    one_pdf, _ = encode(clip, tiny_models["clip"], f"{docs}/report.pdf#page=2-3", tmp_path / "two.npy", pdf_dpi=72,
                        decode_workers=0, batch_size=1)  # fmt: skip
    assert one_pdf.summary["count"] == 2
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), expected[1:3], atol=1e-5)


def test_encode_text_layer_counts_scanned_pages(clip, tiny_models, docs, tmp_path):
    assert page_text(docs / "report.pdf", 1) == REPORT_PAGES[0]  # a real text layer, read back
    output = tmp_path / "text.jsonl"
    result, notes = encode(clip, tiny_models["clip"], docs, output, pdf_text=True)
    assert result.summary["modalities"] == {"text": 5}
    assert any("2 of 5 PDF page(s) have no text layer" in note for note in notes)
    vectors = np.array([json.loads(line)["embedding"] for line in output.read_text().splitlines()])
    np.testing.assert_allclose(vectors, clip.encode([*REPORT_PAGES, "", ""]), atol=1e-5)


@pytest.fixture(scope="module")
def bad_pdfs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    good = write_text_pdf(folder / "good.pdf", ["one page"])
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\nthis is not a PDF body")
    (folder / "truncated.pdf").write_bytes(good.read_bytes()[:300])
    write_encrypted_pdf(folder / "locked.pdf", "s3cret")
    write_empty_pdf(folder / "empty.pdf")
    write_sized_pdf(folder / "poster.pdf", (14_400, 14_400))
    outside = write_text_pdf(tmp_path_factory.mktemp("elsewhere") / "secret.pdf", ["private"])
    (folder / "link.pdf").symlink_to(outside)
    return folder


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("corrupt.pdf#page=1", ("corrupt.pdf#page=1", "corrupt or truncated")),
        ("truncated.pdf#page=1", ("truncated.pdf#page=1", "corrupt or truncated")),
        ("locked.pdf#page=1", ("locked.pdf#page=1", "is encrypted", "--pdf-password")),
        ("good.pdf#page=4", ("good.pdf#page=4", "page 4 is out of range: the document has 1 page(s)")),
        ("empty.pdf#page=1", ("empty.pdf#page=1", "has no pages")),
        ("poster.pdf#page=1", ("poster.pdf#page=1", "829 megapixels at 144 dpi", "--pdf-dpi")),
        ("link.pdf#page=1", ("link.pdf#page=1", "resolves outside the data folder")),
        ("good.pdf#page=1-2", ("good.pdf#page=1-2", "names several pages", "good.pdf#page=1")),
        ("good.pdf#page=0", ("good.pdf#page=0", "pages count from 1")),
    ],
)
def test_bad_pdf_pages_are_one_line_errors_naming_file_and_page(bad_pdfs, tmp_path, line, fragments):
    (tmp_path / "inputs.txt").write_text(f"a text\n{line}\n")
    result = run_mmst("encode", str(tmp_path / "inputs.txt"), "--media-root", str(bad_pdfs), "-o", str(tmp_path / "x.npy"))
    assert_one_line_error(result, 2, "line 2", *fragments)
    assert list(tmp_path.iterdir()) == [tmp_path / "inputs.txt"]


def test_skip_bad_leaves_bad_files_out_and_a_password_opens_a_locked_one(clip, tiny_models, bad_pdfs, tmp_path):
    refused = run_mmst("encode", str(bad_pdfs), "-o", str(tmp_path / "x.npy"))
    assert_one_line_error(refused, 2, "6 of 7 rows are unusable", "file 'corrupt.pdf#page=1'", "--skip-bad")
    result, notes = encode(clip, tiny_models["clip"], bad_pdfs, tmp_path / "kept.jsonl", skip_bad=True,
                           pdf_password="s3cret", pdf_dpi=36)  # fmt: skip
    kept = [json.loads(line)["id"] for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept == ["good.pdf#page=1", "locked.pdf#page=1", "poster.pdf#page=1"]  # the poster fits at 36 dpi
    assert result.summary["skipped"] == 4 and "left out 4 unusable row(s)" in notes[0]
    wrong = run_mmst("encode", f"{bad_pdfs}/locked.pdf", "--pdf-password", "nope", "-o", str(tmp_path / "x.npy"))
    assert_one_line_error(wrong, 2, "locked.pdf#page=1", "--pdf-password does not open it")
    beyond = run_mmst("encode", f"{bad_pdfs}/good.pdf#page=1-3", "-o", str(tmp_path / "x.npy"))
    assert_one_line_error(beyond, 2, "good.pdf#page=3", "page 3 is out of range: the document has 1 page(s)")


# ------------------------------------------------------------------------------------------ data columns


@pytest.fixture(scope="module")
def page_pairs(tmp_path_factory):
    """pairs.jsonl of (caption, page reference) over one 6-page picture PDF, with a negative page."""
    folder = tmp_path_factory.mktemp("page-pairs")
    write_image_pdf(folder / "catalogue.pdf", 6)
    rows = [
        {"caption": f"catalogue page {n}", "page": f"catalogue.pdf#page={n}", "negative": f"catalogue.pdf#page={n % 6 + 1}"}
        for n in range(1, 7)
    ]
    return _write_jsonl(folder / "pairs.jsonl", rows)


def test_page_references_train_and_evaluate_as_rendered_images(tiny_models, page_pairs, tmp_path):
    from mmst_cli.core.data.tables import load_pair_data

    data = load_pair_data(str(page_pairs))
    assert data.column_modalities == {"caption": "text", "page": "image", "negative": "image"}
    rendered = data.dataset["page"]
    assert all(path.endswith(".png") and "/pages/" in path for path in rendered)  # cached for epochs and reruns
    assert render_page(page_pairs.parent / "catalogue.pdf", 2).tobytes() == _pixels(rendered[1])
    # --max-pixels of the training commands is the pages' pixel budget too (aspect kept, 3:4 pages)
    from mmst_cli.core.train.embed import TrainEmbedOptions

    budget = TrainEmbedOptions(max_pixels=40_000).media_options(None)
    small = load_pair_data(str(page_pairs), **budget).dataset["page"]
    assert _size(small[0]) == (172, 229) and small[0] != rendered[0]
    summary = run_json("train-embed", "--model", str(tiny_models["clip"]), "--data", str(page_pairs), "--columns",
                       "caption,page,negative", "--eval-split", "0.5", "--max-steps", "1", "--batch-size", "2",
                       "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert summary["train_rows"] == 3 and summary["eval_rows"] == 3
    assert summary["base"]["recall@10"] == 1.0  # evaluated on page references too: 3 queries over the 6 pages


def _size(path):
    with Image.open(path) as image:
        return image.size


def _pixels(path):
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def test_rerank_data_takes_page_references(page_pairs):
    from mmst_cli.core.train.rerank_data import load_rerank_data

    data = load_rerank_data(str(page_pairs), columns=["caption", "page", "negative"])
    assert data.column_modalities["document"] == "image"
    assert all(str(document).endswith(".png") for document in data.documents)


def test_detect_says_how_a_page_is_taken(tiny_models, page_pairs):
    result = run_mmst("detect", str(tiny_models["clip"]), "-i", "catalogue.pdf#page=2", "-i", "catalogue.pdf#page=9",
                      "--pdf-dpi", "72", "--json", cwd=page_pairs.parent)  # fmt: skip
    assert result.returncode == 1  # one input cannot be used
    page, missing = json.loads(result.stdout)["inputs"]
    assert (page["modality"], page["source"], page["supported"]) == ("image", "pdf", True)
    assert page["detail"] == "page rendered at 300x400 px (72 dpi)"
    assert not missing["supported"] and "page 9 is out of range" in missing["problem"]


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_a_folder_of_pdfs_scores_pages_as_a_beir_corpus_of_their_renders(tiny_models, docs, tmp_path):
    """queries.jsonl and qrels on page ids beside corpus/ of PDFs score exactly as the same pages
    rendered to PNG files (or their text layers) listed in a corpus.jsonl."""
    ids = [f"report.pdf#page={n}" for n in (1, 2, 3)] + ["scans/scan.pdf#page=1", "scans/scan.pdf#page=2"]
    queries = ["revenue growth", "lower costs", "next year", "a striped page", "another striped page"]
    pdf_task, beir_image, beir_text = (tmp_path / name for name in ("pdfs", "beir-image", "beir-text"))
    for folder in (pdf_task, beir_image, beir_text):
        (folder / "qrels").mkdir(parents=True)
        _write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": query} for i, query in enumerate(queries)])
        qrels = "".join(f"q{i}\t{id_}\t1\n" for i, id_ in enumerate(ids))
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    shutil.copytree(docs, pdf_task / "corpus")
    renders = []
    for index, id_ in enumerate(ids):
        render_page(docs / id_.split("#")[0], int(id_[-1])).save(beir_image / f"{index}.png")
        renders.append({"_id": id_, "image": f"{index}.png"})
    _write_jsonl(beir_image / "corpus.jsonl", renders)
    _write_jsonl(beir_text / "corpus.jsonl", [{"_id": i, "text": t} for i, t in zip(ids, [*REPORT_PAGES, "", ""])])

    model = ["--model", str(tiny_models["clip"]), "--k", "3"]  # below the corpus size, which a cut-off must be
    pages = run_json("evaluate", *model, "--data", str(pdf_task))
    assert (pages["documents"], pages["warnings"]) == (5, [])
    assert pages["stages"][0]["metrics"] == run_json("evaluate", *model, "--data", str(beir_image))["stages"][0]["metrics"]
    by_text = run_json("evaluate", *model, "--data", str(pdf_task), "--pdf-text")
    assert by_text["warnings"] == ["2 of 5 PDF page(s) have no text layer (scanned?); --pdf-text scores them as empty text"]
    assert by_text["stages"][0]["metrics"] == run_json("evaluate", *model, "--data", str(beir_text))["stages"][0]["metrics"]
    (pdf_task / "corpus" / "broken.pdf").write_bytes(b"%PDF-1.4\nnot a PDF body")
    refused = run_mmst("evaluate", *model, "--data", str(pdf_task))
    assert_one_line_error(refused, 2, "1 of 6 PDF pages are unusable", "broken.pdf#page=1: is not a readable PDF", "--skip-bad")
    skipped = run_json("evaluate", *model, "--data", str(pdf_task), "--skip-bad")
    assert skipped["documents"] == 5 and skipped["warnings"][0].startswith("left out 1 unusable PDF page(s)")


def test_a_reranker_reads_pdf_pages_as_their_cached_renders(docs, tmp_path):
    from mmst_cli.core.retrieval.evaluation import rerank
    from mmst_cli.core.retrieval.tasks import load_retrieval_task

    (tmp_path / "task" / "qrels").mkdir(parents=True)
    shutil.copy(docs / "report.pdf", tmp_path / "task" / "report.pdf")  # PDFs directly in the folder
    (tmp_path / "task" / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "costs"}) + "\n")
    (tmp_path / "task" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\treport.pdf#page=2\t1\n")
    task = load_retrieval_task(str(tmp_path / "task"))
    assert list(task.corpus) == [f"report.pdf#page={n}" for n in (1, 2, 3)]

    class Recorder:
        def predict(self, pairs, **_):
            self.pairs = pairs
            return np.array([float(index) for index in range(len(pairs))])

    reranker = Recorder()
    stage = rerank(reranker, task, {"q": {page: 0.0 for page in task.corpus}}, top_k=3, ks=(10,))
    documents = [document for _, document in reranker.pairs]
    assert all(document.endswith(".png") for document in documents)
    assert _pixels(documents[1]) == render_page(tmp_path / "task" / "report.pdf", 2).tobytes()
    assert stage.metrics["ndcg@10"] == pytest.approx(1 / np.log2(3))  # the reranker put page 2 second of three
