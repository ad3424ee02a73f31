"""``mmst evaluate --report``: the HTML results page, read back as HTML (tests/test_report_browser.py opens it in a browser)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import soundfile
from PIL import Image

from mmst_cli.core.data.media import OUTSIDE_ROOT_PROBLEM
from tests.helpers import assert_one_line_error, run_json, run_mmst
from tests.report_pages import colour_of, data_uri_image, read_page, write_colour_pages


def test_evaluate_report_shows_worst_queries_first_with_their_pages_and_marks(tmp_path, tiny_models):
    folder = write_colour_pages(tmp_path / "pages")
    page, per_query = tmp_path / "out" / "report.html", tmp_path / "per_query.jsonl"
    result = run_json(
        "evaluate", "--model", str(tiny_models["clip"]), "--data", str(folder), "--k", "1,3", "--dims", "16,8",
        "--per-query", str(per_query), "--report", str(page), "--report-queries", "4",
    )  # fmt: skip
    html, content = read_page(page)
    scores = {row["query_id"]: row["ndcg@3"] for row in map(json.loads, per_query.read_text().splitlines())}
    expected_order = sorted(scores, key=lambda qid: (scores[qid], qid))[:4]
    assert [query.query_id for query in content.queries] == expected_order
    assert "4 of 6 queries, worst ndcg@3 first; 2 more not shown" in html
    qrels = {f"q{index}": (f"p{index}" if index else 'p0"<b>') for index in range(6)}
    for query in content.queries:
        top, missed = [hit for hit in query.hits if not hit.missed], [hit for hit in query.hits if hit.missed]
        assert len(top) == 3  # the cut-off of the main metric, ndcg@3
        for hit in top:
            assert hit.marks == ({"relevant"} if hit.doc_id == qrels[query.query_id] else {"not-relevant"})
        # The relevant page is either among the top 3 or listed below them.
        assert [hit.doc_id for hit in missed] == ([] if any("relevant" in hit.marks for hit in top) else [qrels[query.query_id]])
        for hit in query.hits:  # each thumbnail is the page itself, downscaled and embedded
            (uri,) = hit.images
            thumbnail = data_uri_image(uri).convert("RGB")
            assert max(thumbnail.size) <= 256
            assert np.abs(np.asarray(thumbnail, dtype=int)[10, 10] - colour_of(hit.doc_id)).max() <= 12
    # Untrusted strings are text: no tag from the data survives, and the page allows no script.
    assert "<script" not in html and "onerror=alert" not in html.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert 'data-doc-id="p0&quot;&lt;b&gt;"' in html and "script-src" not in html and "default-src 'none'" in html
    assert not {"script", "b", "iframe", "object"} & set(content.tags)
    # The Matryoshka sweep is drawn as SVG, one point per dimension, and the JSON stays on stdout.
    assert html.count('<circle ') == 2 and "Matryoshka sweep: ndcg@3" in html
    assert [entry["dim"] for entry in result["dims"]] == [16, 8]
    assert result["results_page"] == {"path": str(page), "queries_shown": 4, "queries_not_shown": 2}


def test_report_of_a_reranked_multi_vector_evaluation(tmp_path, tiny_multi_vector, tiny_reranker):
    pairs = tmp_path / "pairs.jsonl"
    topics = ["cats", "dogs", "birds", "fish", "trees", "cars", "boats", "trains", "bikes", "clocks", "roses", "hills"]
    pairs.write_text("".join(json.dumps({"q": f"about {t}", "pos": f"{t} are great"}) + "\n" for t in topics))
    page = tmp_path / "report.html"
    result = run_json(
        "evaluate", "--model", str(tiny_multi_vector), "--data", str(pairs), "--reranker", str(tiny_reranker),
        "--rerank-top-k", "5", "--report", str(page),
    )  # fmt: skip
    html, content = read_page(page)
    assert [stage["name"] for stage in result["stages"]] == ["maxsim", "rerank top 5"]
    assert "top 10 of rerank top 5 (the cut-off of ndcg@10)" in html
    assert len(content.queries) == 12 and "12 of 12 queries" in html
    for query in content.queries:
        top = [hit for hit in query.hits if not hit.missed]
        assert len(top) == 5  # the reranker scored five per query
        assert query.text.startswith("about ")
    assert "cats are great" in html  # documents show as text snippets


def test_report_of_a_run_file_previews_document_ids_that_name_media_in_its_folder(tmp_path):
    (tmp_path / "pages").mkdir()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "pages" / "a.png")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "outside.png")
    run_folder = tmp_path / "runs"
    run_folder.mkdir()
    (run_folder / "pages").symlink_to(tmp_path / "pages")
    (run_folder / "run.trec").write_text("q1 Q0 pages/a.png 1 2.0 x\nq1 Q0 ../outside.png 2 1.0 x\nq1 Q0 doc7 3 0.5 x\n")
    (run_folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tpages/a.png\t1\nq1\tdoc9\t1\n")
    page = tmp_path / "report.html"
    args = ["evaluate", "--run", str(run_folder / "run.trec"), "--qrels", str(run_folder / "qrels.tsv"), "--report", str(page)]
    run_json(*args)
    html, content = read_page(page)
    (query,) = content.queries
    hits = {hit.doc_id: hit for hit in query.hits}
    # The symlinked folder resolves outside the run's folder: refused like ../outside.png.
    assert hits["pages/a.png"].images == [] and hits["../outside.png"].images == []
    assert html.count(OUTSIDE_ROOT_PROBLEM) == 2 and "(no preview)" in html  # doc7 is an id, not media
    assert hits["doc9"].missed and "not retrieved" in html
    run_json(*args, "--media-root", str(tmp_path))  # the real pages folder: previewed; ../ still refused
    _, content = read_page(page)
    assert {hit.doc_id: len(hit.images) for hit in content.queries[0].hits} == {"pages/a.png": 1, "../outside.png": 0, "doc7": 0, "doc9": 0}
    assert data_uri_image(content.queries[0].hits[0].images[0]).convert("RGB").getpixel((5, 5))[2] > 240


def test_previews_of_every_kind_keep_to_the_data_folder(tmp_path):
    from mmst_cli.core.data.documents import PdfPage, RenderSettings
    from mmst_cli.core.report.thumbnails import AUDIO_SECONDS, MediaAccess, preview
    from tests.pdf_factory import write_image_pdf

    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGBA", (600, 300), (0, 200, 0, 128)).save(root / "wide.png")
    write_image_pdf(root / "doc.pdf", 2)
    rate = 8000
    soundfile.write(root / "long.wav", np.sin(np.arange(rate * 15) / 5).astype("float32"), rate)
    (tmp_path / "secret.png").write_bytes((root / "wide.png").read_bytes())
    access = MediaAccess(root, root)

    def uris(fragment: str) -> list[str]:
        return [part.split('"')[0] for part in fragment.split('src="')[1:]]

    (png,) = uris(preview("wide.png", access))
    assert data_uri_image(png).format == "PNG" and data_uri_image(png).size == (256, 128)  # transparency kept
    (page,) = uris(preview("doc.pdf#page=2", access))
    assert data_uri_image(page).size == (150, 200)  # 300 x 400 pt at 36 dpi
    assert uris(preview(PdfPage(root / "doc.pdf", 1, RenderSettings()), access))
    (audio,) = uris(preview("long.wav", access))
    decoded, decoded_rate = soundfile.read(io.BytesIO(base64.b64decode(audio.split(",", 1)[1])))
    assert audio.startswith("data:audio/ogg;base64,") and len(decoded) == AUDIO_SECONDS * decoded_rate
    assert 'class="player"' in preview({"array": np.zeros(800, dtype="float32"), "sampling_rate": 8000}, access)
    assert len(uris(preview({"video": ["wide.png"] * 5}, access))) == 3 and "+2 frames" in preview({"video": ["wide.png"] * 5}, access)
    assert len(uris(preview({"text": "a caption", "image": Image.new("RGB", (9, 9))}, access))) == 1
    assert data_uri_image(uris(preview(png, access))[0]).size == (256, 128)  # a data URI is decoded and re-encoded
    # Refused, never read: outside the folder (absolute, ../, an https URL), missing, undecodable, video files.
    for value in (str(tmp_path / "secret.png"), "../secret.png"):
        assert OUTSIDE_ROOT_PROBLEM in preview(value, access) and not uris(preview(value, access))
        assert uris(preview(value, MediaAccess(root, None)))  # --allow-outside-root
    assert "not embedded" in preview("https://example.com/cat.png", access)
    (root / "broken.png").write_bytes(b"not a png")
    for value, expected in (("gone.png", "cannot be previewed"), ("broken.png", "cannot be previewed"), ("clip.mp4", "video clip.mp4")):
        assert expected in preview(value, access) and not uris(preview(value, access))
    assert preview("a <b>bold</b> claim", access) == '<span class="text">a &lt;b&gt;bold&lt;/b&gt; claim</span>'


def test_report_options_are_checked_before_the_model_loads(tmp_path):
    assert_one_line_error(run_mmst("evaluate", "--model", "nowhere", "--report", str(tmp_path)), 2, "--report", "is a folder")
    assert_one_line_error(run_mmst("evaluate", "--model", "nowhere", "--report", "r.html", "--report-queries", "0"), 2, "--report-queries must be positive")


def test_report_of_a_pdf_corpus_shows_its_pages_rendered_small(tmp_path, tiny_models):
    from tests.pdf_factory import write_image_pdf

    folder = tmp_path / "reports"
    write_image_pdf(folder / "scan.pdf", 3)
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"page {i}"}) + "\n" for i in (1, 2)))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tscan.pdf#page=1\t1\nq2\tscan.pdf#page=2\t1\n")
    page = tmp_path / "pdf.html"
    run_json("evaluate", "--model", str(tiny_models["clip"]), "--data", str(folder), "--report", str(page))
    _, content = read_page(page)
    hits = [hit for query in content.queries for hit in query.hits if not hit.missed]
    assert len(hits) == 6 and {hit.doc_id for hit in hits} == {f"scan.pdf#page={n}" for n in (1, 2, 3)}
    assert {data_uri_image(hit.images[0]).size for hit in hits} == {(150, 200)}  # 300 x 400 pt at 36 dpi
