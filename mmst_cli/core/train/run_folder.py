"""A training run owns its output folder: one run at a time, and ``--resume`` only from a matching run.

:func:`owned_run_folder` wraps a run. It refuses a folder that holds a finished model (unless
resuming), takes a lock file naming the process that holds the folder (a second run fails at once;
a lock left by a dead process on this host is taken over), and records what the run trains with in
``run.json``. ``--resume`` compares that record with the new options and data and refuses a
mismatch, naming what differs, unless ``--force``; it continues from the newest intact checkpoint
(:func:`latest_intact_checkpoint`: one cut short by a crash or a full disk is skipped with a
warning). When a run fails before it saved anything, the
folder it created is removed again, so a bad input leaves no empty run behind.

Plain Python; the Sentence Transformers trainer does the checkpointing itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from mmst_cli.core.errors import MmstError
from mmst_cli.core.outputs import atomic_path, ensure_writable_folder
from mmst_cli.core.retrieval.run_eval_data import files_fingerprint

LOCK_NAME = ".mmst-run.lock"
RECORD_NAME = "run.json"

#: Options that steer a run without changing what it learns from, so they may differ on ``--resume``.
#: The length (``max_steps``, ``epochs``) may grow: that is how a finished run is trained further.
RESUMABLE_CHANGES = {
    "output_dir", "resume", "force", "dry_run", "gpus", "gpu_memory", "report_to", "save_steps", "eval_steps",
    "max_steps", "epochs", "dataloader_workers",
}


def run_record(options) -> dict[str, Any]:
    """What a run trains with: its options (less :data:`RESUMABLE_CHANGES`) and data fingerprints."""
    record = {
        "command": options.command,
        "options": {key: value for key, value in options.as_json().items() if key not in RESUMABLE_CHANGES},
        # The --fsdp-config file's content counts too: a resume must shard as the checkpoints were.
        "data_files": {key: files_fingerprint(getattr(options, key, None)) for key in ("data", "eval_data", "fsdp_config")},
    }
    return json.loads(json.dumps(record))  # as it reads back from run.json: tuples become lists


def _flag(key: str, inner: str | None = None) -> str:
    """``("loss", "name")`` -> ``--loss``; ``("lora", "r")`` -> ``--lora-r``; ``("lr",)`` -> ``--lr``."""
    name = key if inner in (None, "name") else (f"{key}_{inner}" if key == "lora" else inner)
    return "--" + name.replace("_", "-")


def record_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`run_record` values, e.g. ``--lr 2e-05 -> 0.0001``."""
    differences = []
    for key in sorted(set(saved["options"]) | set(current["options"])):
        old, new = saved["options"].get(key), current["options"].get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            for inner in sorted(set(old) | set(new)):
                if old.get(inner) != new.get(inner):
                    differences.append(f"{_flag(key, inner)} {old.get(inner)!r} -> {new.get(inner)!r}")
        elif old != new:
            differences.append(f"{_flag(key)} {old!r} -> {new!r}")
    for key, old in saved["data_files"].items():
        if current["data_files"].get(key) != old:
            differences.append(f"the files of --{key.replace('_', '-')} changed since the run started")
    return differences


def _lock_holder(lock: Path) -> dict[str, Any]:
    try:
        return json.loads(lock.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return {}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _take_lock(output_dir: Path, command: str) -> Path:
    """Create the lock file atomically; refuse when a live run holds it, take over a dead one's."""
    lock = output_dir / LOCK_NAME
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": datetime.now().isoformat(timespec="seconds")}
    for _attempt in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _lock_holder(lock)
            same_host = other.get("host") == holder["host"]
            if same_host and isinstance(other.get("pid"), int) and not _process_alive(other["pid"]):
                lock.unlink(missing_ok=True)  # left by a run that died (SIGKILL, power loss)
                continue
            raise MmstError(
                f"--output-dir {output_dir} is in use by mmst {other.get('command', '?')} "
                f"(pid {other.get('pid', '?')} on {other.get('host', '?')}, since {other.get('started', '?')}); "
                f"wait for it, choose another --output-dir, or delete {lock} if that run is gone"
            ) from None
        with os.fdopen(descriptor, "w", encoding="utf8") as stream:
            json.dump(holder, stream)
        return lock
    raise MmstError(f"--output-dir {output_dir}: could not take the lock {lock}; try again")


def _check_resume(output_dir: Path, current: dict[str, Any], force: bool) -> None:
    record = output_dir / RECORD_NAME
    if force:
        return
    if not record.is_file():
        raise MmstError(
            f"--resume: {output_dir} has no {RECORD_NAME}, so mmst cannot tell whether it was trained with these "
            "options and data; pass --force to continue anyway"
        )
    try:
        saved = json.loads(record.read_text(encoding="utf8"))
    except (OSError, ValueError) as error:
        raise MmstError(f"--resume: {record} is unreadable ({error}); pass --force to continue anyway") from error
    differences = record_differences(saved, current)
    if differences:
        raise MmstError(
            f"--resume: {output_dir} was started with other settings ({'; '.join(differences)}); "
            "pass the run's own options, choose another --output-dir, or add --force to continue anyway"
        )


def _holds_only_bookkeeping(folder: Path) -> bool:
    return all(path.name in (LOCK_NAME, RECORD_NAME) for path in folder.rglob("*") if path.is_file())


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from (a file cut short by a crash or a full
    disk), or ``None``. Cheap: headers and zip directories are read, not the tensors."""
    import zipfile

    if not (checkpoint / "trainer_state.json").is_file():
        return "trainer_state.json is missing"
    for path in sorted(checkpoint.rglob("*")):
        name = path.relative_to(checkpoint).as_posix()
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf8"))
            elif path.suffix == ".safetensors":
                with path.open("rb") as handle:
                    header_size = int.from_bytes(handle.read(8), "little")
                    header = json.loads(handle.read(header_size))
                data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
                if path.stat().st_size < 8 + header_size + data_end:
                    return f"{name} is truncated"
            elif path.suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(path).close()  # torch.save writes a zip; its directory is at the end
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            return f"{name} is unreadable or cut short ({error.__class__.__name__})"
    return None


def latest_intact_checkpoint(checkpoints: Path) -> tuple[Path, list[str]]:
    """The newest checkpoint that :func:`checkpoint_problem` passes, and a note per newer broken one.

    Raises:
        MmstError: when there is no checkpoint, or none is intact (naming the newest and why).
    """
    found = sorted(
        (path for path in checkpoints.glob("checkpoint-*") if path.is_dir() and path.name[11:].isdigit()),
        key=lambda path: int(path.name[11:]),
        reverse=True,
    )
    if not found:
        raise MmstError(f"--resume: {checkpoints} has no checkpoint to continue from")
    skipped = []
    for checkpoint in found:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint.name} is not intact ({problem})")
    raise MmstError(
        f"--resume: no intact checkpoint in {checkpoints} ({'; '.join(skipped[:3])}); "
        "delete the broken ones and rerun, or start again in another --output-dir"
    )


@contextmanager
def owned_run_folder(options, *, main_process: bool = True) -> Iterator[Path]:
    """Own ``options``' output folder for the length of a run; yields the folder.

    Args:
        options: A training command's options (``resolved_output_dir``, ``resume``, ``force``,
            ``command``, ``as_json``, ``data``, ``eval_data``).
        main_process: Only the main process of a distributed run takes the lock and writes; the
            others check ``--resume`` the same way and share the folder.

    Raises:
        MmstError: for a finished run without ``--resume``, a folder in use, or a mismatched resume.
    """
    output_dir = options.resolved_output_dir()
    if (output_dir / "model").exists() and not options.resume:
        raise MmstError(f"{output_dir / 'model'} already holds a trained model; choose another --output-dir or pass --resume")
    checkpoints = output_dir / "checkpoints"
    if options.resume:
        latest_intact_checkpoint(checkpoints)  # fails now, before any model loads, when none is usable
    if not options.resume and checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*")):
        raise MmstError(
            f"{checkpoints} holds the checkpoints of an unfinished run; pass --resume to continue it "
            "or choose another --output-dir"
        )
    ensure_writable_folder(output_dir, "--output-dir")
    current = run_record(options)
    if options.resume:
        _check_resume(output_dir, current, options.force)
    if not main_process:
        yield output_dir
        return
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(output_dir, options.command)
    try:
        if not options.resume:
            with atomic_path(output_dir / RECORD_NAME) as pending:
                pending.write_text(json.dumps(current, indent=2) + "\n", encoding="utf8")
        yield output_dir
    except BaseException:
        lock.unlink(missing_ok=True)
        if created and _holds_only_bookkeeping(output_dir):
            shutil.rmtree(output_dir, ignore_errors=True)  # a run that saved nothing leaves nothing
        raise
    lock.unlink(missing_ok=True)
