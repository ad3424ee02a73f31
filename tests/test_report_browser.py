"""The results page in a real browser: headless chromium opens it from disk, with no server and no network.

It checks what HTML alone cannot: that every thumbnail decodes (``naturalWidth > 0``), that the
screenshot shows each page's colour where its thumbnail sits (not a blank area), that the audio
player loads its clip, and that a hostile query string is shown as text and runs nothing.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile
from PIL import Image

from tests.helpers import run_json
from tests.report_pages import HOSTILE, colour_of, read_page, write_colour_pages

_THUMBNAILS = """return Array.from(document.querySelectorAll('img.thumb')).map(image => {
    const box = image.getBoundingClientRect(), hit = image.closest('li.hit');
    return {loaded: image.complete && image.naturalWidth > 0, doc: hit ? hit.dataset.docId : null,
            x: box.left + box.width / 2, y: box.top + box.height / 2, width: box.width, height: box.height};
});"""


def open_page(browser, path):
    from selenium.common.exceptions import NoAlertPresentException

    browser.get(path.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    try:
        alert = browser.switch_to.alert.text
    except NoAlertPresentException:
        alert = None
    assert alert is None, f"the page ran a script from the data: alert({alert})"


def test_evaluate_report_renders_its_thumbnails_in_chromium(tmp_path, tiny_models, browser):
    folder = write_colour_pages(tmp_path / "pages")
    page = tmp_path / "report.html"
    run_json("evaluate", "--model", str(tiny_models["clip"]), "--data", str(folder), "--k", "3", "--report", str(page))
    _, content = read_page(page)
    open_page(browser, page)
    thumbnails = browser.execute_script(_THUMBNAILS)
    expected = sum(len(query.hits) for query in content.queries)
    assert len(thumbnails) == expected >= 6 * 3 and all(item["loaded"] for item in thumbnails)
    screenshot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"), dtype=int)
    seen = 0
    for item in thumbnails:
        if item["y"] + item["height"] / 2 > screenshot.shape[0]:
            continue  # below the window
        x, y = round(item["x"]), round(item["y"])
        assert item["width"] > 20 and item["height"] > 20
        patch = screenshot[y - 5 : y + 5, x - 5 : x + 5].reshape(-1, 3)
        assert np.abs(patch - colour_of(item["doc"])).max() <= 16, (item, patch[0])
        seen += 1
    assert seen >= 9  # at least the first three queries' thumbnails are on screen, each its page's colour
    # Worst first in the rendered order; relevant hits framed green; the hostile query is shown as text.
    metrics = browser.execute_script("return Array.from(document.querySelectorAll('h2 .metric')).map(m => m.textContent)")
    values = [float(text.split()[-1]) for text in metrics]
    assert values == sorted(values) and len(values) == 6
    frames = browser.execute_script(
        "return Array.from(document.querySelectorAll('ol.hits li.hit.relevant')).map(li => getComputedStyle(li).borderTopColor)"
    )
    assert frames and set(frames) == {"rgb(42, 157, 75)"}
    shown = browser.execute_script("return document.querySelector('section[data-query-id=\"q0\"] .query-content').innerText")
    assert shown == HOSTILE
    assert browser.execute_script("return document.scripts.length") == 0


def test_report_of_pdf_pages_audio_and_text_plays_in_chromium(tmp_path, browser):
    from mmst_cli.core.report.page import ReportHit, ReportQuery, ResultsPage, write_results_page
    from mmst_cli.core.report.thumbnails import MediaAccess
    from tests.pdf_factory import write_image_pdf

    write_image_pdf(tmp_path / "doc.pdf", 2)
    soundfile.write(tmp_path / "tone.wav", np.sin(np.arange(8000 * 2) / 3).astype("float32"), 8000)
    hits = [
        ReportHit("doc.pdf#page=1", 0.9, "doc.pdf#page=1"),
        ReportHit("doc.pdf#page=2", 0.8, "doc.pdf#page=2"),
        ReportHit("tone", 0.7, "tone.wav"),
        ReportHit("note", 0.6, HOSTILE),
    ]
    queries = [ReportQuery("plain", "a search without qrels", hits), ReportQuery(HOSTILE, HOSTILE, hits[:1])]
    page = tmp_path / "search.html"
    write_results_page(page, ResultsPage(title=HOSTILE, queries=queries), MediaAccess(tmp_path, tmp_path))
    open_page(browser, page)
    assert browser.title == HOSTILE
    thumbnails = browser.execute_script(_THUMBNAILS)
    assert len(thumbnails) == 3 and all(item["loaded"] for item in thumbnails)
    duration = browser.execute_script(
        "const audio = document.querySelector('audio'); return audio.readyState >= 1 ? audio.duration"
        " : new Promise(done => audio.addEventListener('loadedmetadata', () => done(audio.duration)))"
    )
    assert abs(duration - 2.0) < 0.1
    # Without judgements: no marks, the queries in the order given.
    assert browser.execute_script("return document.querySelectorAll('li.hit.relevant, li.hit.not-relevant').length") == 0
    order = browser.execute_script("return Array.from(document.querySelectorAll('section.query')).map(s => s.dataset.queryId)")
    assert order == ["plain", HOSTILE] and browser.execute_script("return document.scripts.length") == 0
