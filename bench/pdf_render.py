"""PDF page rendering: mmst's path (PDFium via pypdfium2) against poppler's ``pdftoppm``, and rendering vs the model.

Corpus, written to a temporary folder: ``--pages`` pages (default 300) in PDFs of 30 pages, four
text PDFs for every picture PDF: text pages are Letter pages of 45 lines of 12 pt Helvetica (real
PDF text, as a report has), picture pages are Letter pages holding a 1275 x 1650 px image (a page
scanned at 150 dpi, stored as JPEG, as a scanner makes).

Table 1, rendering at ``--dpi`` (default 144, mmst's default), each side a fresh process:

* side A, mmst: the ``mmst encode`` path without a model: ``read_inputs`` on the folder (finds the
  PDFs, opens and checks every page, the confinement gate) and then
  :func:`mmst_cli.core.encode.encoding.encode_inputs` with a stand-in model whose ``encode`` returns
  zeros, so every page is rendered exactly as encode renders it (decode-ahead threads, PDFium
  behind one lock) into a PIL image, and dropped;
* side B, poppler: ``pdftoppm -r DPI file.pdf prefix`` for every file, one after another (what
  pdf2image runs), writing PPM files (uncompressed, its fastest output) to a temporary folder.

Pages per second are the pages over the wall time (side A includes starting Python and the
checks). Peak memory: side A reports its own ``VmHWM``; side B's is ``VmHWM`` of each ``pdftoppm``
process read from ``/proc`` every 2 ms while it runs (the largest of them). Sides alternate (A B,
B A, ...) over ``--repeats`` runs after one warm-up each. Target: mmst's pages/s at least 0.8 of
pdftoppm's.

Table 2, rendering vs the model: the embedded default model (EfficientNet-Lite0 image route)
encodes the pages with ``encode_inputs`` from the PDF pages (rendered ahead in threads while the
model runs) and from the same pages already rendered in memory, alternating. The first row is the
CPU time per page (all threads of the process) of rendering alone against the model's on
pre-rendered pages: below 1, one spare core renders faster than the model consumes, so rendering
is not the bottleneck of encoding on CPU (target <= 1). The second row, wall-clock speed from the
PDFs against pre-rendered, shows how much of the rendering the machine actually hid: on a machine
with no idle core (other jobs, or torch using every core) nothing can hide it (information only).

    .venv/bin/python bench/pdf_render.py [--pages 300] [--dpi 144] [--repeats 3]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import (
    HIDDEN,
    REPO_ROOT,
    Row,
    Table,
    bench_env,
    common_arguments,
    interleaved,
    machine_description,
    median,
    parse_arguments,
    print_machine,
    report_tables,
    run_self_child,
)

PAGES_PER_FILE = 30
LINES_PER_PAGE = 45
RENDER_TARGET = (">=", 0.8)
BOTTLENECK_TARGET = ("<=", 1.0)
WORDS = "the quarterly report shows revenue growth across regions while costs fell and margins improved".split()


def write_corpus(folder: Path, pages: int) -> list[Path]:
    """PDFs of :data:`PAGES_PER_FILE` pages, every fifth file of picture pages, the rest text."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.pdf_factory import write_image_pdf, write_text_pdf

    files = []
    for index, start in enumerate(range(0, pages, PAGES_PER_FILE)):
        count = min(PAGES_PER_FILE, pages - start)
        path = folder / f"doc{index:03d}.pdf"
        if index % 5 == 4:
            write_image_pdf(path, count, size=(1275, 1650), first_hue=index / 7, dpi=150)  # Letter at 150 dpi
        else:
            texts = [
                "\n".join(" ".join(WORDS[(page + line + word) % len(WORDS)] for word in range(11))
                          for line in range(LINES_PER_PAGE))
                for page in range(count)
            ]  # fmt: skip
            write_text_pdf(path, texts)
        files.append(path)
    return files


class _Zeros:
    """A stand-in model: takes rendered pages and returns zero vectors, so only rendering is timed."""

    def encode(self, values, **_):
        import numpy as np

        assert all(hasattr(value, "getpixel") for value in values)  # rendered images, as a model gets them
        return np.zeros((len(values), 1), dtype=np.float32)

    encode_query = encode_document = encode

    def get_embedding_dimension(self):
        return 1


def child_render(folder: str, dpi: float) -> dict:
    """Side A: mmst's checks and rendering of every page, no model."""
    sys.path.insert(0, str(REPO_ROOT))
    from _common import peak_rss_mib

    from mmst_cli.core.data.documents import RenderSettings
    from mmst_cli.core.encode.encoding import encode_inputs
    from mmst_cli.core.encode.inputs import PdfOptions, read_inputs

    started = time.perf_counter()
    inputs = read_inputs(folder, pdf=PdfOptions(RenderSettings(dpi=dpi)))
    encode_inputs(_Zeros(), inputs.chunk(0, inputs.count))
    return {"seconds": time.perf_counter() - started, "pages": inputs.count, "peak_rss_mib": peak_rss_mib()}


def child_encode(folder: str, dpi: float, repeats: int) -> dict:
    """Table 2: the default model on the pages, rendered ahead from the PDFs vs already rendered."""
    sys.path.insert(0, str(REPO_ROOT))
    from mmst_cli.core.data.documents import RenderSettings
    from mmst_cli.core.encode.encoding import encode_inputs
    from mmst_cli.core.encode.inputs import PdfOptions, read_inputs
    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model

    model = load_model(locate_model(None))
    pages = read_inputs(folder, pdf=PdfOptions(RenderSettings(dpi=dpi))).chunk(0, 10**9)
    [page.render() for page in pages[:8]]  # warm-up: opens the files
    render_cpu = min(_measured(lambda: [page.render() for page in pages])["cpu"] for _ in range(repeats))
    rendered = [page.render() for page in pages]
    encode_inputs(model, rendered[:32])  # warm-up
    runs = interleaved({
        "from PDF": lambda: _measured(lambda: encode_inputs(model, pages)),
        "pre-rendered": lambda: _measured(lambda: encode_inputs(model, rendered)),
    }, repeats)  # fmt: skip
    return {
        "pages": len(pages),
        "render_cpu": render_cpu,
        **{f"{name} {key}": median([run[key] for run in values]) for name, values in runs.items() for key in ("wall", "cpu")},
    }


def _measured(function) -> dict[str, float]:
    """Wall and CPU seconds (every thread of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def run_pdftoppm(files: list[Path], dpi: float, scratch: Path) -> dict:
    """Side B: pdftoppm on each file in turn; wall time and the largest VmHWM, read while it runs."""
    peak_kib = 0
    started = time.perf_counter()
    for index, path in enumerate(files):
        process = subprocess.Popen(["pdftoppm", "-r", f"{dpi:g}", str(path), str(scratch / f"p{index}")])
        peak = [0]
        watcher = threading.Thread(target=_watch_peak, args=(process, peak))
        watcher.start()
        process.wait()
        watcher.join()
        if process.returncode != 0:
            raise RuntimeError(f"pdftoppm failed on {path} with exit status {process.returncode}")
        peak_kib = max(peak_kib, peak[0])
    seconds = time.perf_counter() - started
    for page in scratch.glob("p*"):
        page.unlink()
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024}


def _watch_peak(process: subprocess.Popen, peak: list[int]) -> None:
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.002)


def main() -> None:
    parser = common_arguments(__doc__, repeats=3)
    parser.add_argument("--pages", type=int, default=300, help="pages in the corpus (default 300)")
    parser.add_argument("--dpi", type=float, default=144, help="rendering resolution of both sides (default 144)")
    parser.add_argument("--child", choices=("render", "encode"), help=HIDDEN)
    parser.add_argument("--folder", help=HIDDEN)
    args = parse_arguments(parser)
    if args.child == "render":
        print(json.dumps(child_render(args.folder, args.dpi)))
        return
    if args.child == "encode":
        print(json.dumps(child_encode(args.folder, args.dpi, args.repeats)))
        return
    if shutil.which("pdftoppm") is None:
        raise SystemExit("pdftoppm is not installed: apt-get install poppler-utils")
    machine = machine_description()
    machine["pdftoppm"] = subprocess.run(["pdftoppm", "-v"], capture_output=True, text=True).stderr.split("\n")[0]
    print_machine(machine)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        files = write_corpus(scratch / "pdfs", args.pages)
        (scratch / "out").mkdir()
        common = ["--dpi", str(args.dpi), "--folder", str(scratch / "pdfs"), "--threads", str(args.threads)]
        sides = {
            "mmst": lambda: run_self_child(__file__, ["--child", "render", *common], env=bench_env()).json(),
            "pdftoppm": lambda: run_pdftoppm(files, args.dpi, scratch / "out"),
        }
        for side in sides.values():  # warm-up: page cache, .pyc files
            side()
        runs = interleaved(sides, args.repeats)
        encoded = run_self_child(__file__, ["--child", "encode", *common, "--repeats", str(args.repeats)]).json()
    mmst_rate = args.pages / median([run["seconds"] for run in runs["mmst"]])
    poppler_rate = args.pages / median([run["seconds"] for run in runs["pdftoppm"]])
    mmst_peak = max(run["peak_rss_mib"] for run in runs["mmst"])
    poppler_peak = max(run["peak_rss_mib"] for run in runs["pdftoppm"])
    pages = encoded["pages"]
    render_ms, model_ms = (1000 * encoded[key] / pages for key in ("render_cpu", "pre-rendered cpu"))
    from_pdf, pre_rendered = encoded["from PDF wall"], encoded["pre-rendered wall"]
    tables = [
        Table(f"rendering {args.pages} pages at {args.dpi:g} dpi (median of {args.repeats})", [
            Row("pages/s", mmst_rate, poppler_rate, "pages/s", mmst_rate / poppler_rate, "mmst / pdftoppm speed",
                RENDER_TARGET, extra={"runs": runs}),
            Row("peak RSS (mmst: whole Python process)", mmst_peak, poppler_peak, "MiB", mmst_peak / poppler_peak,
                "mmst / pdftoppm"),
        ], ("mmst (pypdfium2)", "pdftoppm")),
        Table("rendering vs the embedded default model on the same pages", [
            Row("CPU per page: rendering vs model", render_ms, model_ms, "ms", render_ms / model_ms,
                "rendering / model CPU", BOTTLENECK_TARGET, extra=encoded),
            Row("encoding speed: from the PDFs (rendered ahead) vs pre-rendered", pages / from_pdf, pages / pre_rendered,
                "pages/s", pre_rendered / from_pdf, "from-PDF / pre-rendered speed"),
        ], ("rendering / from PDFs", "model / pre-rendered")),
    ]  # fmt: skip
    report_tables(tables, machine, {"pages": args.pages, "dpi": args.dpi, "repeats": args.repeats,
                                    "threads": args.threads}, args.json_path)  # fmt: skip


if __name__ == "__main__":
    main()
