#!/usr/bin/env python3
"""Build the offline (caption -> image) demo dataset from Noto Color Emoji.

Every single-codepoint emoji that the font has a colour glyph for, and that
Python's ``unicodedata`` can name, becomes one row:

* ``caption``: the Unicode character name, lowercased
  (U+1F601 -> "grinning face with smiling eyes");
* ``image``: the glyph rendered with Pillow, centred on a white square and
  resized to ``--size`` x ``--size`` RGB, stored as PNG bytes.

Codepoints that only make sense inside sequences are left out: ASCII keycap
bases (``#``, ``*``, ``0``-``9``), skin-tone modifiers, regional indicators,
variation selectors, tag characters, ZWJ and other format/combining marks.

The rows are split deterministically: a ``random.Random`` with a fixed seed
shuffles the sorted codepoints, the first ``--eval-count`` go to ``eval`` and
the rest to ``train`` (each split keeps that shuffled order).  The result does
not depend on ``PYTHONHASHSEED``; it does depend on the font file and on the
Unicode version of the running Python's ``unicodedata`` (which decides which
of the font's newest emoji have a name).

Output: ``train.parquet`` and ``eval.parquet`` (columns ``caption``, ``image``)
written with Hugging Face ``datasets`` so that
``datasets.load_dataset("parquet", data_files=...)`` decodes ``image`` to PIL.

Usage (from the repository root)::

    apt-get install fonts-noto-color-emoji
    python scripts/build_emoji_dataset.py
    python scripts/build_emoji_dataset.py --size 64 --eval-count 200 --out /tmp/emoji
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import unicodedata
from pathlib import Path

import datasets
from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
DEFAULT_OUT = REPO_ROOT / "mmst_cli" / "assets" / "emoji"

# Noto Color Emoji is a bitmap (CBDT) font whose only strike is 109 ppem;
# FreeType refuses to load it at any other size.
FONT_PIXEL_SIZE = 109
SPLIT_SEED = 0
WHITE = (255, 255, 255, 255)

# General categories of codepoints that are never a standalone emoji:
# format controls (ZWJ, tags), nonspacing/enclosing marks (variation
# selectors, the keycap combiner), modifier symbols (skin tones), spaces,
# controls and private use.
SKIPPED_CATEGORIES = {"Cf", "Mn", "Me", "Sk", "Zs", "Cc", "Co"}
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F1FF + 1)  # only meaningful in pairs (flags)


def is_candidate(cp: int) -> bool:
    """True if ``cp`` may stand alone as an emoji and has a Unicode name."""
    ch = chr(cp)
    if cp < 0x80:  # ASCII: keycap bases (#, *, 0-9) and space
        return False
    if cp in REGIONAL_INDICATORS:
        return False
    if unicodedata.category(ch) in SKIPPED_CATEGORIES:
        return False
    return unicodedata.name(ch, None) is not None


def has_glyph(font: ImageFont.FreeTypeFont, ch: str) -> bool:
    """True if the font maps ``ch`` to a non-empty glyph.

    Characters missing from the font's cmap fall back to ``.notdef``, which in
    Noto Color Emoji has no bitmap, so its bounding box is empty.  (For this
    font the result matches fontTools' ``getBestCmap()`` exactly, minus the
    zero-width ZWJ and tag glyphs, which are skipped anyway.)
    """
    left, top, right, bottom = font.getbbox(ch)
    return right > left and bottom > top


def render(font: ImageFont.FreeTypeFont, ch: str, size: int) -> Image.Image | None:
    """Render ``ch`` centred on a white ``size`` x ``size`` RGB square.

    The glyph is drawn in colour onto a transparent canvas with room to spare
    (so nothing is clipped), cropped to its visible pixels, and placed in the
    middle of a white square whose side is the larger of the font's glyph cell
    (136 x 128 here) and the visible extent.  Glyphs keep their size relative
    to that cell, so e.g. "black small square" stays smaller than
    "black large square".  The square is then downscaled with LANCZOS.
    Returns None if nothing visible was drawn.
    """
    _, _, cell_w, cell_h = font.getbbox(ch)
    canvas = Image.new("RGBA", (2 * cell_w, 2 * cell_h), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (cell_w // 2, cell_h // 2), ch, font=font, embedded_color=True
    )
    visible = canvas.getchannel("A").getbbox()
    if visible is None:
        return None
    glyph = canvas.crop(visible)

    side = max(cell_w, cell_h, glyph.width, glyph.height)
    square = Image.new("RGBA", (side, side), WHITE)
    offset = ((side - glyph.width) // 2, (side - glyph.height) // 2)
    square.alpha_composite(glyph, dest=offset)
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def build_rows(font_path: str, size: int) -> dict[int, tuple[str, bytes]]:
    """Map codepoint -> (caption, PNG bytes) for every usable emoji in the font."""
    font = ImageFont.truetype(
        font_path, FONT_PIXEL_SIZE, layout_engine=ImageFont.Layout.BASIC
    )
    rows: dict[int, tuple[str, bytes]] = {}
    for cp in range(0x110000):
        if not is_candidate(cp):
            continue
        ch = chr(cp)
        if not has_glyph(font, ch):
            continue
        image = render(font, ch, size)
        if image is None:  # blank glyph
            continue
        rows[cp] = (unicodedata.name(ch).lower(), png_bytes(image))
    return rows


def split_codepoints(codepoints: list[int], eval_count: int) -> tuple[list[int], list[int]]:
    """Fixed-seed shuffle of the sorted codepoints -> (train, eval)."""
    order = sorted(codepoints)
    random.Random(SPLIT_SEED).shuffle(order)
    return order[eval_count:], order[:eval_count]


def write_parquet(rows: list[tuple[str, bytes]], path: Path) -> int:
    """Write rows atomically as an HF-datasets parquet file; return its size."""
    ds = datasets.Dataset.from_dict(
        {
            "caption": [caption for caption, _ in rows],
            "image": [{"bytes": data, "path": None} for _, data in rows],
        }
    ).cast_column("image", datasets.Image())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.to_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Render Noto Color Emoji glyphs into a (caption -> image) parquet dataset."
    )
    parser.add_argument("--font", default=DEFAULT_FONT, help="path to NotoColorEmoji.ttf (default: %(default)s)")
    parser.add_argument("--size", type=int, default=96, help="output image side in pixels (default: %(default)s)")
    parser.add_argument("--eval-count", type=int, default=300, help="rows in eval.parquet (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: <repo>/mmst_cli/assets/emoji)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.size < 1:
        sys.exit("--size must be positive")
    if not Path(args.font).is_file():
        sys.exit(f"font not found: {args.font} (apt-get install fonts-noto-color-emoji)")

    datasets.disable_progress_bars()
    rows = build_rows(args.font, args.size)
    if not 0 < args.eval_count < len(rows):
        sys.exit(f"--eval-count must be between 1 and {len(rows) - 1} (found {len(rows)} emoji)")
    train_cps, eval_cps = split_codepoints(list(rows), args.eval_count)

    args.out.mkdir(parents=True, exist_ok=True)
    train_bytes = write_parquet([rows[cp] for cp in train_cps], args.out / "train.parquet")
    eval_bytes = write_parquet([rows[cp] for cp in eval_cps], args.out / "eval.parquet")

    print(
        f"emoji dataset: {len(rows)} pairs (train {len(train_cps)}, eval {len(eval_cps)}), "
        f"{args.size}x{args.size} PNG, Unicode {unicodedata.unidata_version}; "
        f"train.parquet {train_bytes:,} B, eval.parquet {eval_bytes:,} B -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
