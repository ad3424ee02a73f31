"""Shared helpers for the test suite: run the real ``mmst`` console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

MMST = str(Path(sys.executable).with_name("mmst"))


def run_mmst(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run ``mmst ARGS`` as a user would and return the completed process (text mode)."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run(
        [MMST, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_json(*args: str, **kwargs) -> dict[str, Any]:
    """Run ``mmst ARGS --json``, assert success and return the parsed stdout."""
    result = run_mmst(*args, "--json", **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    """Assert the process failed with ``exit_code`` and one clean ``Error:`` line naming ``fragments``."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    assert result.stdout == "", result.stdout
