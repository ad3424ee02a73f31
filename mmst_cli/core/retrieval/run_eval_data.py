"""The evaluation data of a training run, recorded in its run folder so ``evaluate`` scores exactly it.

``train-embed`` writes :data:`RECORD_NAME` next to ``run.json``; ``mmst evaluate --model RUN`` (a
run folder) and ``--eval-of RUN`` rebuild the same retrieval task from it. Three kinds:

``split``     ``--eval-split F``: the *row indices* of the held-out rows among the rows of ``--data``
              as loaded and checked (after ``--skip-bad``), with the seed and fraction that chose
              them, and how to load ``--data`` again (reference, config, split, columns, media options).
``data``      ``--eval-data``: how to load it again.
``embedded``  the demo's embedded emoji evaluation pairs.

Indices, not the rows: a row holds images, audio or long texts, so a copy could be as large as the
data, while indices are a few bytes a row and the data itself is what a CI job already has. Indices
do not depend on how a future ``datasets`` shuffles (the split is not recomputed), only on the data.

Whether the data is still the same is checked in two steps: the files' fingerprint (name, size,
modification time, as ``--resume`` checks) first; when it differs (a fresh checkout or a copy
changes every modification time), a digest of the rebuilt rows' content (texts, media file bytes,
decoded images and audio) must equal the one recorded at training time. Only when both differ is
the run refused, naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mmst_cli.core.data.documents import RenderSettings
from mmst_cli.core.data.tables import PairData, load_pair_data
from mmst_cli.core.errors import MmstError
from mmst_cli.core.models.locate import is_run_folder
from mmst_cli.core.retrieval.tasks import RetrievalTask, content_key, pairs_to_retrieval_task

#: The record's file name in a run folder.
RECORD_NAME = "eval_data.json"
RECORD_VERSION = 1


def files_fingerprint(reference: str | None) -> str:
    """A cheap fingerprint of local data: every file's name, size and modification time.

    Hub ids and the embedded data (``None``) are fingerprinted by their reference alone.
    """
    if reference is None:
        return "embedded"
    path = Path(reference).expanduser()
    if not path.exists():
        return f"reference:{reference}"
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def rows_digest(data: PairData) -> str:
    """A digest of the content of every row: texts, the bytes of media files (not their absolute
    paths, which change with the checkout), decoded images and audio."""
    digest = hashlib.sha256()
    for row in data.dataset:
        for column, modality in data.column_modalities.items():
            value = row[column]
            if modality != "text" and isinstance(value, str):
                digest.update(hashlib.sha256(Path(value).read_bytes()).digest())
            else:
                digest.update(content_key(value).encode())
            digest.update(b"\0")
    return digest.hexdigest()[:32]


def _local_or_reference(reference: str | None) -> str | None:
    """A local file or folder as an absolute path (evaluate may run elsewhere), else the reference."""
    if reference is None:
        return None
    path = Path(reference).expanduser()
    return str(path.resolve()) if path.exists() else reference


def eval_record(
    kind: str,
    data: PairData,
    *,
    reference: str | None,
    config: str | None,
    split: str | None,
    columns: list[str] | None,
    media: dict[str, Any],
    fraction: float | None = None,
    seed: int | None = None,
    rows: int | None = None,
    held_out: list[int] | None = None,
) -> dict[str, Any]:
    """The record of a run's evaluation data (see the module docstring).

    Args:
        kind: ``split``, ``data`` or ``embedded``.
        data: The evaluation pairs as the run scored them.
        reference, config, split, columns: How the evaluated table is loaded: ``--data`` for a
            split, ``--eval-data`` otherwise (``None`` for the embedded data).
        media: The run's media options (``media_root``, ``skip_bad``, ``allow_remote_media``,
            ``allow_outside_root``, ``pdf``; the audio rate is the evaluated model's).
        fraction, seed: ``--eval-split`` and ``--seed`` (a split only).
        rows: Rows of ``--data`` after loading and checking (a split only).
        held_out: Indices of the held-out rows among those ``rows`` (a split only).
    """
    media_root = media.get("media_root")
    return {
        "version": RECORD_VERSION,
        "kind": kind,
        "data": reference,
        "data_path": _local_or_reference(reference),
        "data_config": config,
        "split": split,
        "columns": columns,
        "media": {
            "media_root": str(Path(media_root).resolve()) if media_root else None,
            "skip_bad": bool(media.get("skip_bad")),
            "allow_remote_media": bool(media.get("allow_remote_media")),
            "allow_outside_root": bool(media.get("allow_outside_root")),
            # How PDF pages were rendered (never the password): the same pages must become the same images.
            "pdf": {"dpi": pdf.dpi, "max_pixels": pdf.max_pixels} if (pdf := media.get("pdf")) else None,
        },
        "fraction": fraction,
        "seed": seed,
        "rows": rows,
        "held_out": held_out,
        "eval_rows": len(data.dataset),
        "fingerprint": files_fingerprint(reference),
        "digest": rows_digest(data),
    }


def resolve_run_folder(model: str | None, eval_of: str | None, data: str | None) -> tuple[str | None, str | None]:
    """``evaluate``'s ``--model`` and ``--eval-of`` with a run folder given as ``--model`` resolved:
    its ``model/`` is scored, on the run's evaluation data unless ``--data`` or ``--eval-of`` says otherwise."""
    if not is_run_folder(model):
        return model, eval_of
    return str(Path(model).expanduser() / "model"), eval_of or (None if data else model)


def _run_command(folder: Path) -> str | None:
    """The command that made a run folder, from its ``run.json`` (``None`` when unreadable)."""
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def read_eval_record(run_folder: str) -> dict[str, Any]:
    """The record of ``run_folder``, or a one-line error saying why there is none."""
    folder = Path(run_folder).expanduser()
    if not is_run_folder(run_folder):
        raise MmstError(f"--eval-of {run_folder!r} is not a training run folder (one with run.json and model/); check the path")
    record = folder / RECORD_NAME
    if not record.is_file() and _run_command(folder) == "train-rerank":
        raise MmstError(
            f"run folder {run_folder!r} is a train-rerank run, and evaluate retrieves with an embedder; "
            f"pass its model as --reranker {folder / 'model'} with an embedding --model"
        )
    if not record.is_file():
        raise MmstError(
            f"run folder {run_folder!r} has no {RECORD_NAME}: the run had no evaluation data (no --eval-split or "
            "--eval-data) or was trained by an older mmst; pass --data instead"
        )
    try:
        loaded = json.loads(record.read_text(encoding="utf8"))
    except (OSError, ValueError) as error:
        raise MmstError(f"run folder {run_folder!r}: {record} is unreadable ({error}); pass --data instead") from error
    if loaded.get("version") != RECORD_VERSION or loaded.get("kind") not in ("split", "data", "embedded"):
        raise MmstError(f"run folder {run_folder!r}: {record} is not an evaluation record this mmst reads; pass --data instead")
    return loaded


def _data_location(record: dict[str, Any]) -> str:
    """The recorded absolute path when it still exists, else the reference as given (from here)."""
    absolute = record["data_path"]
    return absolute if absolute and Path(absolute).exists() else record["data"]


def load_run_eval_pairs(run_folder: str, audio_sampling_rate: int | None = None) -> PairData:
    """Rebuild the evaluation pairs a run scored (see the module docstring).

    Args:
        run_folder: A train-embed run folder with :data:`RECORD_NAME`.
        audio_sampling_rate: The evaluated model's audio rate (audio columns are decoded at it).

    Raises:
        MmstError: when there is no record, or the data changed since the run.
    """
    record = read_eval_record(run_folder)
    media = record["media"]
    media_options = dict(
        media_root=Path(media["media_root"]) if media["media_root"] else None,
        audio_sampling_rate=audio_sampling_rate,
        skip_bad=media["skip_bad"],
        allow_remote_media=media["allow_remote_media"],
        allow_outside_root=media["allow_outside_root"],
        pdf=RenderSettings(**media["pdf"]) if media.get("pdf") else RenderSettings(),
    )
    if record["kind"] == "embedded":
        from mmst_cli.core.models.composition import EMOJI_EVAL

        return load_pair_data(str(EMOJI_EVAL), columns=record["columns"], **media_options)
    location = _data_location(record)
    flag = "--data" if record["kind"] == "split" else "--eval-data"
    if not Path(location).expanduser().exists() and Path(record["data_path"] or "").is_absolute():
        raise MmstError(
            f"run folder {run_folder!r}: the run's {flag} {record['data_path']} is gone; put the data back there "
            f"(or run from where {record['data']!r} is found), or pass --data instead"
        )
    data = load_pair_data(location, config=record["data_config"], split=record["split"], columns=record["columns"], **media_options)

    def changed(why: str) -> MmstError:
        return MmstError(
            f"run folder {run_folder!r}: the run's {flag} {location} changed since the run ({why}); "
            "restore the data the run was trained on, or train again"
        )

    if record["kind"] == "split":
        if len(data.dataset) != record["rows"]:
            raise changed(f"it has {len(data.dataset)} usable rows, the run split {record['rows']}")
        data = PairData(
            data.dataset.select(record["held_out"]), data.column_modalities,
            f"{location} (held-out {record['fraction']:g}, seed {record['seed']})", notes=data.notes,
            frame_list_columns=data.frame_list_columns,
        )  # fmt: skip
    if files_fingerprint(location) != record["fingerprint"] and rows_digest(data) != record["digest"]:
        raise changed("its evaluation rows differ")
    return data


def run_eval_task(run_folder: str, audio_sampling_rate: int | None = None) -> RetrievalTask:
    """The retrieval task a run scored before and after training (see :func:`load_run_eval_pairs`)."""
    return pairs_to_retrieval_task(load_run_eval_pairs(run_folder, audio_sampling_rate))
