"""Small, easy, real-file datasets for training tests: coloured images, tones and texts with captions."""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

COLOUR_NAMES = (
    "red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure",
    "blue", "indigo", "violet", "purple", "magenta", "pink", "rose", "crimson",
)  # fmt: skip


def write_colour_pairs(folder: Path, count: int = 16, *, negatives: bool = False) -> Path:
    """Write ``count`` (caption, image path) pairs as ``pairs.jsonl`` with PNGs in ``images/``.

    Each image is a distinct hue with a stripe pattern, so even a random tiny model can tell them
    apart and a few steps of training visibly lower the loss. Paths are relative to the jsonl file.
    """
    from PIL import Image, ImageDraw

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = COLOUR_NAMES[index % len(COLOUR_NAMES)] + ("" if index < len(COLOUR_NAMES) else f" {index}")
        red, green, blue = (round(255 * c) for c in colorsys.hsv_to_rgb(index / count, 0.9, 0.9))
        image = Image.new("RGB", (40, 40), (red, green, blue))
        draw = ImageDraw.Draw(image)
        for offset in range(0, 40, 4 + index % 5):
            draw.line([(offset, 0), (0, offset)], fill=(255 - red, 255 - green, 255 - blue))
        relative = f"images/{index:03d}.png"
        image.save(folder / relative)
        row = {"caption": f"a photo of the colour {name}", "image": relative}
        if negatives:
            row["negative"] = f"images/{(index + 1) % count:03d}.png"
        rows.append(row)
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path


def write_text_pairs(folder: Path, count: int = 16) -> Path:
    """Write ``count`` (question, answer) text pairs as ``text.jsonl``."""
    rows = [
        {"query": f"what is fact number {index} about {COLOUR_NAMES[index % 16]}?",
         "answer": f"fact {index}: {COLOUR_NAMES[index % 16]} things are numbered {index * 7}"}
        for index in range(count)
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "text.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path


def write_tone_pairs(folder: Path, count: int = 8, rate: int = 8000) -> Path:
    """Write ``count`` (caption, wav path) pairs; clips are sine tones at ``rate`` Hz, to be resampled."""
    import numpy as np
    import soundfile

    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        frequency = 220 * (index + 1)
        samples = np.sin(2 * math.pi * frequency * np.arange(rate // 2) / rate).astype("float32")
        relative = f"audio/{index:03d}.wav"
        soundfile.write(folder / relative, samples, rate)
        rows.append({"caption": f"a tone of {frequency} hertz", "audio": relative})
    path = folder / "tones.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path


def write_frame_clips(folder: Path, count: int = 8, frames: int = 4) -> Path:
    """Write ``count`` (caption, frame list) pairs as ``clips.jsonl``: each clip is a square moving
    across a coloured background, its frames PNGs in ``clips/NNN/``, listed relative to the jsonl."""
    from PIL import Image, ImageDraw

    rows = []
    for index in range(count):
        name = COLOUR_NAMES[index % len(COLOUR_NAMES)]
        background = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(index / count, 0.9, 0.9))
        clip = folder / "clips" / f"{index:03d}"
        clip.mkdir(parents=True, exist_ok=True)
        paths = []
        for frame in range(frames):
            image = Image.new("RGB", (32, 32), background)
            offset = 4 + frame * 6
            ImageDraw.Draw(image).rectangle([offset, offset, offset + 8, offset + 8], fill=(255, 255, 255))
            image.save(clip / f"{frame}.png")
            paths.append(f"clips/{index:03d}/{frame}.png")
        rows.append({"caption": f"a white square sliding over {name}", "clip": paths})
    path = folder / "clips.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path
