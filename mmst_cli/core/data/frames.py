"""Videos given as lists of frame images: check every frame, then hand each list on as one video.

A frame-list column holds, per row, image paths or HF ``Image`` cells. Every frame passes the same
confinement gate and decode check as any image (:mod:`mmst_cli.core.data.media`), all frames of a
video must share one size, and :func:`frames_as_videos` turns each list into ``{"video": [frames]}``,
the input Sentence Transformers' video-capable processors take. ``datasets`` does the decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmst_cli.core.data.media import classify_string, verify_image


def is_frame_list_feature(feature) -> bool:
    """A list of image paths or of HF images: one video given as its frames."""
    import datasets

    if not isinstance(feature, (datasets.List, datasets.LargeList)):
        return False
    inner = feature.feature
    return isinstance(inner, datasets.Image) or (
        isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string")
    )


def _frame_source(frame, root: Path, confine_to: Path | None) -> tuple[Any, str | None]:
    """Where one frame's pixels are (a path or a bytes stream), or why the frame is unusable."""
    import io

    if isinstance(frame, dict):  # an undecoded HF Image cell
        if frame.get("bytes"):
            return io.BytesIO(frame["bytes"]), None
        frame = frame.get("path")
    if not isinstance(frame, str):
        return None, f"{frame!r:.40} is not an image file name"
    report = classify_string(frame, root, confine_to)
    if report.modality != "image":
        return None, f"{frame!r:.60} is not an image file name"
    if report.source != "file":
        return None, f"{frame!r:.60}: frames must be local image files"
    if report.problem:
        return None, f"{frame}: {report.problem}"
    return root / Path(frame).expanduser(), None


def frame_list_problems(table, column: str, root: Path, confine_to: Path | None) -> list[tuple[int, str, str]]:
    """Check every frame of every video in a frame-list column: it decodes, and all are one size."""
    import datasets

    if isinstance(table.features[column].feature, datasets.Image):
        table = table.cast_column(column, datasets.List(datasets.Image(decode=False)))
    problems = []
    for row, frames in enumerate(table[column]):
        if not frames:
            problems.append((row, "[]", "a video needs at least one frame"))
            continue
        sizes: list[tuple[int, int]] = []
        for number, frame in enumerate(frames, start=1):
            source, problem = _frame_source(frame, root, confine_to)
            if problem is None:
                size, problem = verify_image(source)
                if size is not None:
                    sizes.append(size)
            if problem:
                problems.append((row, f"frame {number}", problem))
                break
        else:
            if len(set(sizes)) > 1:
                first, other = sizes[0], next(size for size in sizes if size != sizes[0])
                problems.append((
                    row,
                    f"{len(frames)} frames",
                    f"frames differ in size ({first[0]}x{first[1]} and {other[0]}x{other[1]}); "
                    "give every frame of a video one size",
                ))
    return problems


def frames_as_videos(table, frame_columns: list[str], root: Path):
    """Turn each frame list into ``{"video": [frames]}`` with RGB frames (one array per video)."""
    import datasets

    features = table.features.copy()
    for column in frame_columns:
        if isinstance(features[column].feature, datasets.Image):
            table = table.cast_column(column, datasets.List(datasets.Image(decode=False)))
        features[column] = {"video": datasets.List(datasets.Image(mode="RGB"))}

    def absolute(frame):
        if isinstance(frame, dict) and frame.get("bytes"):
            return frame
        path = frame["path"] if isinstance(frame, dict) else frame
        return str((root / Path(path).expanduser()).resolve())

    def wrap(batch):
        for column in frame_columns:
            batch[column] = [{"video": [absolute(frame) for frame in frames]} for frames in batch[column]]
        return batch

    return table.map(wrap, batched=True, features=features, desc="collecting video frames")
