"""Shared helpers for the test suite: run ``mmst`` in this process, or as a real console script.

``run_mmst`` calls the same entry point the console script calls (``mmst_cli.cli.app.main``) in the
test process, with its own argv, stdin, stdout, stderr, working folder and environment. That skips
the 5-10 s of importing torch and transformers that each subprocess pays, which made up most of the
suite's time. ``run_mmst_process`` runs the installed ``mmst`` script in a subprocess; each command
keeps tests that use it where the process boundary matters: exit statuses as the shell sees them,
signals, start-up imports, stdout purity and pipes (docs/testing.md lists them).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MMST = str(Path(sys.executable).with_name("mmst"))


@dataclass
class MmstResult:
    """What one ``mmst`` run left: its exit status and everything it wrote (like ``CompletedProcess``)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@contextmanager
def _environment(cwd: Path | None, env: dict | None):
    previous_cwd = os.getcwd()
    previous_env = dict(os.environ)
    os.environ.update(env or {})
    os.environ["HF_HUB_OFFLINE"] = "1"
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(previous_cwd)
        os.environ.clear()
        os.environ.update(previous_env)


def run_mmst(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | bytes | None = None) -> MmstResult:
    """Run ``mmst ARGS`` in this process, as the console script would, and return what it left."""
    from mmst_cli.cli.app import main

    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")  # has .buffer, like a real stdout
    stderr = io.StringIO()
    # Bytes come through .buffer, as from a real pipe; text is already decoded.
    stdin = io.TextIOWrapper(io.BytesIO(input), encoding="utf-8") if isinstance(input, bytes) else io.StringIO(input or "")
    streams = sys.argv, sys.stdin, sys.stdout, sys.stderr
    sys.argv, sys.stdin, sys.stdout, sys.stderr = [MMST, *args], stdin, stdout, stderr
    try:
        with _environment(cwd, env):
            main()
        returncode = 0
    except SystemExit as exit_:
        code = exit_.code
        returncode = code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv, sys.stdin, sys.stdout, sys.stderr = streams
    stdout.flush()
    return MmstResult(list(args), returncode, stdout.buffer.getvalue().decode("utf-8"), stderr.getvalue())


def run_mmst_process(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
                     input: str | None = None):  # fmt: skip
    """Run the installed ``mmst ARGS`` in a subprocess as a user would; return the completed process (text)."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run(
        [MMST, *args], cwd=cwd, env=full_env, input=input, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def run_torchrun(*args: str, processes: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc_per_node PROCESSES -m mmst_cli ARGS`` on the CPU (gloo), one thread
    per process, as a user launches distributed training; return the completed process (text)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return subprocess.run(
        [str(torchrun), "--nproc_per_node", str(processes), "-m", "mmst_cli", *args], capture_output=True, text=True,
        timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), check=False,
    )  # fmt: skip


def run_json(*args: str, **kwargs) -> dict[str, Any]:
    """Run ``mmst ARGS --json`` in process, assert success and return the parsed stdout."""
    result = run_mmst(*args, "--json", **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    """Assert the run failed with ``exit_code`` and one clean ``Error:`` line naming ``fragments``."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    assert result.stdout == "", result.stdout


def grouped_options(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword options of ``EncodeOptions`` / ``IndexOptions`` given flat (``chunk_size=2, column="text"``),
    as those take them: the reading ones gathered into ``reading``, the embedding ones into ``embedding``."""
    from mmst_cli.core.encode.settings import CorpusReading, EmbeddingSettings

    grouped = CorpusReading.field_names() | EmbeddingSettings.field_names()
    return {
        **{name: value for name, value in options.items() if name not in grouped},
        "reading": CorpusReading.from_values(options),
        "embedding": EmbeddingSettings.from_values(options),
    }
