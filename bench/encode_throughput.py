"""Encoding throughput: the ``mmst encode`` job against ``model.encode``, and image decoding vs model time.

Model: the embedded default Router (all-MiniLM-L6-v2 for text, EfficientNet-Lite0 at 128 px for
images), loaded once and shared by both sides, in one process. Inputs, written to a temporary
folder:

* ``text``: 1,000 sentences of 5 to 80 words (seeded), one per line in a ``.txt`` file;
* ``image``: the 1,061 emoji training images (96 x 96 PNG) as files in a folder;
* ``photo``: 200 larger images (640 x 480 JPEG, emoji upscaled onto a noisy background): photo-sized
  files, where decoding and resizing cost more;
* ``mixed``: a jsonl ``input`` column with 500 of the sentences and 500 emoji image paths, shuffled.

Side A is mmst's encode job in-process (``mmst_cli.core.encode.job.run_encode`` with the loaded
model: reading and checking the inputs, encoding in chunks, writing the ``.npy`` output; no model
loading, no CLI start-up). Side B is what a user writes by hand: read the inputs, ``model.encode``
(image paths are passed as strings; Sentence Transformers hands them to the image module, which
opens them), ``np.save``. For the mixed list, side B splits the inputs by modality itself (a
Router refuses a batch that mixes them), encodes each group and puts the rows back in order. Both
use batch size 32 and give the same vectors (checked).

Each side runs once to warm up, then ``--repeats`` times, alternating (A B, B A, ...); the table
shows median wall times and the throughput ratio plain time / mmst time. Target: >= 1.0.

The second table splits the plain image encoding into decoding (open, decode, convert to RGB,
resize, normalise: what the image module does per image in the main process) and the model
(``model.encode`` on images already decoded at the input size). Where decoding is a large share, decoding in
parallel workers (a DataLoader with ``num_workers``) while the model runs would help.

The third table is the evidence behind the first one, measured the same way: the padded tokens of
mmst's text calls (each modality group sorted by length, then calls of 256 inputs, the call size
mmst's encode job uses on one device, ``min(chunk_size, max(256, 8 x batch_size))``) against one
``model.encode`` call, and what unsorted calls of 256 would pad (Sentence Transformers sorts by
length only within a call); the seconds mmst's input checks take (``read_inputs``, which opens and
verifies every image) against the plain encoding; and ``encode_inputs`` with image files decoded
ahead in threads against the model decoding them, for the small emoji files and the photos (the
job decodes ahead only from ``DECODE_AHEAD_MIN_BYTES`` per file on average).

    .venv/bin/python bench/encode_throughput.py [--repeats 3]
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from pathlib import Path

from _common import (
    Row,
    Table,
    common_arguments,
    interleaved,
    machine_description,
    median,
    parse_arguments,
    print_machine,
    report_tables,
    timed,
)

BATCH_SIZE = 32
SEED = 0
TARGET = (">=", 1.0)
TEXTS = 1000
PHOTOS = 200
MIXED_TEXTS, MIXED_IMAGES = 500, 500
#: Inputs per ``model.encode`` call in mmst's encode job on one device with batch size 32.
MMST_CALL_SIZE = 256


# ------------------------------------------------------------------------------------------ inputs


def prepare_inputs(folder: Path) -> dict[str, Path]:
    """Write the text, image, photo and mixed inputs; return the path mmst encode reads for each."""
    import datasets
    import numpy as np
    from PIL import Image

    from mmst_cli.core.models.composition import EMOJI_TRAIN

    table = datasets.load_dataset("parquet", data_files=str(EMOJI_TRAIN), split="train")
    rng = random.Random(SEED)
    words = " ".join(table["caption"]).split()
    texts = [" ".join(rng.choices(words, k=rng.randint(5, 80))) for _ in range(TEXTS)]
    text_file = folder / "texts.txt"
    text_file.write_text("".join(text + "\n" for text in texts))

    images = folder / "images"
    images.mkdir()
    image_paths = []
    for index, image in enumerate(table["image"]):
        path = images / f"{index:04d}.png"
        image.convert("RGB").save(path)
        image_paths.append(str(path.resolve()))

    photos = folder / "photos"
    photos.mkdir()
    noise = np.random.default_rng(SEED)
    for index, image in enumerate(table["image"][:PHOTOS]):
        background = Image.fromarray(noise.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        background.paste(image.convert("RGB").resize((400, 400)), (120, 40))
        background.save(photos / f"{index:04d}.jpg", quality=90)

    mixed = [{"input": text} for text in texts[:MIXED_TEXTS]] + [{"input": path} for path in image_paths[:MIXED_IMAGES]]
    rng.shuffle(mixed)
    mixed_file = folder / "mixed.jsonl"
    mixed_file.write_text("".join(json.dumps(row) + "\n" for row in mixed))
    return {"text": text_file, "image": images, "photo": photos, "mixed": mixed_file}


# ------------------------------------------------------------------------------- side B: plain ST


def is_image_path(value: str) -> bool:
    return value.lower().endswith((".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tiff", ".webp"))


def plain_inputs(kind: str, source: Path) -> list[str]:
    """The inputs as a user's script would read them: lines, sorted file paths, or a jsonl column."""
    if kind == "text":
        return [line for line in source.read_text().splitlines() if line.strip()]
    if kind in ("image", "photo"):
        return sorted(str(path) for path in source.rglob("*") if is_image_path(path.name))
    return [json.loads(line)["input"] for line in source.read_text().splitlines() if line.strip()]


def plain_encode(model, kind: str, source: Path, output: Path):
    """Read, ``model.encode`` (one modality at a time for mixed inputs), ``np.save``; returns the matrix."""
    import numpy as np

    inputs = plain_inputs(kind, source)
    if kind != "mixed":
        vectors = model.encode(inputs, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)
    else:
        groups: dict[bool, list[int]] = {}
        for index, value in enumerate(inputs):
            groups.setdefault(is_image_path(value), []).append(index)
        vectors = None
        for indices in groups.values():
            encoded = model.encode([inputs[i] for i in indices], batch_size=BATCH_SIZE, convert_to_numpy=True,
                                   show_progress_bar=False)
            if vectors is None:
                vectors = np.empty((len(inputs), encoded.shape[1]), dtype=np.float32)
            vectors[indices] = encoded
    np.save(output, vectors)
    return vectors


# ---------------------------------------------------------------------------------- side A: mmst


def mmst_encode(model, source: Path, output: Path):
    """The mmst encode job in-process with the already loaded model; returns the written matrix."""
    import numpy as np
    from rich.console import Console

    from mmst_cli.core.encode.job import EncodeOptions, run_encode
    from mmst_cli.core.encode.settings import EmbeddingSettings

    options = EncodeOptions(inputs=str(source), output=str(output), embedding=EmbeddingSettings(batch_size=BATCH_SIZE))
    run_encode(options, model=model, console=Console(file=io.StringIO()), log=lambda line: None)
    return np.load(output)


# ------------------------------------------------------------------------------ decoding vs model


def decode_vs_model(model, kind: str, source: Path, repeats: int) -> Row:
    """Seconds to decode + preprocess every image, against ``model.encode`` on decoded images."""
    from PIL import Image

    image_module = next(module for module in model.modules() if hasattr(module, "image_to_tensor"))
    paths = plain_inputs(kind, source)
    size = (image_module.image_size, image_module.image_size)

    decoded = [Image.open(path).convert("RGB").resize(size) for path in paths]

    def decode():
        for start in range(0, len(paths), BATCH_SIZE):
            image_module.preprocess(paths[start : start + BATCH_SIZE])

    def encode_decoded():
        model.encode(decoded, batch_size=BATCH_SIZE, show_progress_bar=False)

    times = interleaved({"decode": lambda: timed(decode)[0], "model": lambda: timed(encode_decoded)[0]}, repeats,
                        log=False)
    decode_s, model_s = median(times["decode"]), median(times["model"])
    per_image_ms = {"decode": 1000 * decode_s / len(paths), "model": 1000 * model_s / len(paths)}
    return Row(f"{kind} ({len(paths)} files): decode vs model", decode_s, model_s, "s", decode_s / (decode_s + model_s),
               "decode share of the time", extra={"per_image_ms": per_image_ms})


# ------------------------------------------------------------------------------------- diagnosis


def padded_tokens(model, texts: list[str], call_size: int, *, sort_first: bool) -> int:
    """Tokens the text route computes (padding included) when ``texts`` go in calls of ``call_size``:
    Sentence Transformers sorts each call by length in characters and pads each batch to its
    longest text. ``sort_first`` sorts all texts that way before cutting them into calls, as mmst does."""
    tokenizer = next(module.tokenizer for module in model.modules() if getattr(module, "tokenizer", None) is not None)
    if sort_first:
        texts = sorted(texts, key=len, reverse=True)
    total = 0
    for start in range(0, len(texts), call_size):
        ordered = sorted(texts[start : start + call_size], key=len, reverse=True)
        lengths = [len(ids) for ids in tokenizer(ordered, truncation=True)["input_ids"]]
        total += sum(max(lengths[b : b + BATCH_SIZE]) * len(lengths[b : b + BATCH_SIZE])
                     for b in range(0, len(lengths), BATCH_SIZE))
    return total


def decode_ahead_vs_not(model, kind: str, paths: list[str], repeats: int) -> Row:
    """``encode_inputs`` with image files decoded ahead in threads against the model decoding them."""
    from mmst_cli.core.encode import encoding

    def run(workers):
        return timed(lambda: encoding.encode_inputs(model, paths, batch_size=BATCH_SIZE, decode_workers=workers))[0]

    threshold = encoding.DECODE_AHEAD_MIN_BYTES
    encoding.DECODE_AHEAD_MIN_BYTES = 0  # measure the mechanism on every kind, whatever its file size
    try:
        times = interleaved({"ahead": lambda: run(None), "model": lambda: run(0)}, repeats, log=False)
    finally:
        encoding.DECODE_AHEAD_MIN_BYTES = threshold
    ahead, itself = median(times["ahead"]), median(times["model"])
    mean_kib = sum(Path(path).stat().st_size for path in paths) / len(paths) / 1024
    return Row(f"{kind} ({mean_kib:.0f} KiB files): decoded ahead vs by the model", ahead, itself, "s",
               itself / ahead, "speed-up")


def diagnose(model, sources: dict[str, Path], repeats: int) -> list[Row]:
    from mmst_cli.core.encode.inputs import read_inputs

    texts = plain_inputs("text", sources["text"])
    padded_mmst = padded_tokens(model, texts, MMST_CALL_SIZE, sort_first=True)
    padded_unsorted = padded_tokens(model, texts, MMST_CALL_SIZE, sort_first=False)
    padded_one = padded_tokens(model, texts, len(texts), sort_first=False)

    paths = plain_inputs("image", sources["image"])
    checks = median([timed(lambda: read_inputs(str(sources["image"])))[0] for _ in range(repeats)])
    plain_images = median([timed(lambda: model.encode(paths, batch_size=BATCH_SIZE, show_progress_bar=False))[0]
                           for _ in range(repeats)])
    return [
        Row(f"text: padded tokens, mmst (sorted, calls of {MMST_CALL_SIZE}) vs one call", padded_mmst, padded_one,
            "tokens", padded_mmst / padded_one, "tokens, mmst / one"),
        Row(f"text: padded tokens, unsorted calls of {MMST_CALL_SIZE} vs one call", padded_unsorted, padded_one,
            "tokens", padded_unsorted / padded_one, "tokens, calls / one"),
        Row("image: mmst input checks (read_inputs) vs plain encode", checks, plain_images, "s",
            checks / plain_images, "share of plain time"),
        decode_ahead_vs_not(model, "image", paths, repeats),
        decode_ahead_vs_not(model, "photo", plain_inputs("photo", sources["photo"]), repeats),
    ]


# ---------------------------------------------------------------------------------------- driver


def compare(model, kind: str, source: Path, scratch: Path, repeats: int) -> Row:
    """Time both sides on one input kind, after a warm-up run that checks they give the same vectors."""
    import numpy as np

    count = len(plain_inputs(kind, source))
    print(f"{kind}: {count} inputs", flush=True)
    sides = {
        "mmst": lambda: mmst_encode(model, source, scratch / "mmst.npy"),
        "plain": lambda: plain_encode(model, kind, source, scratch / "plain.npy"),
    }
    warm = {name: side() for name, side in sides.items()}
    difference = float(np.abs(warm["mmst"] - warm["plain"]).max())
    if difference > 1e-5:
        raise SystemExit(f"{kind}: mmst and plain vectors differ (by up to {difference})")
    times = interleaved({name: (lambda side=side: timed(side)[0]) for name, side in sides.items()}, repeats)
    mmst, plain = median(times["mmst"]), median(times["plain"])
    return Row(f"{kind}: {count} inputs, wall time", mmst, plain, "s", plain / mmst, "plain time / mmst time", TARGET,
               extra={"runs": times, "inputs_per_s": {"mmst": count / mmst, "plain": count / plain}})


def main() -> None:
    args = parse_arguments(common_arguments(__doc__, repeats=3))
    machine = machine_description()
    print_machine(machine)

    from mmst_cli.core.models.loading import load_model
    from mmst_cli.core.models.locate import locate_model

    model = load_model(locate_model(None))
    model.eval()
    with tempfile.TemporaryDirectory(prefix="mmst-bench-encode-") as scratch_name:
        scratch = Path(scratch_name)
        sources = prepare_inputs(scratch)
        rows = [compare(model, kind, source, scratch, args.repeats) for kind, source in sources.items()]
        print("decoding vs model", flush=True)
        decode_rows = [decode_vs_model(model, kind, sources[kind], args.repeats) for kind in ("image", "photo")]
        print("diagnosis", flush=True)
        diagnosis_rows = diagnose(model, sources, args.repeats)
    settings = {"batch_size": BATCH_SIZE, "repeats": args.repeats, "threads": args.threads,
                "model": "embedded default Router", "texts": TEXTS, "photos": PHOTOS,
                "mixed": f"{MIXED_TEXTS} texts + {MIXED_IMAGES} images"}
    report_tables([
        Table("Encoding throughput", rows, ("mmst encode job", "plain model.encode")),
        Table("Image decoding (decode + resize + normalise) vs model", decode_rows, ("decode", "model")),
        Table("Where the differences come from", diagnosis_rows, ("measured", "compared with")),
    ], machine, settings, args.json_path)


if __name__ == "__main__":
    main()
