"""The CLI must start instantly: help and version never import the ML stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import run_mmst_process

HEAVY_MODULES = ("torch", "transformers", "datasets", "sentence_transformers")

PROBE = """
import sys
from mmst_cli.cli.app import main
sys.argv = ["mmst", *{args!r}]
try:
    main()
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
loaded = [name for name in {heavy!r} if name in sys.modules]
print("LOADED:" + ",".join(loaded))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["detect", "--help"]])
def test_help_and_version_import_no_ml_library(args):
    code = PROBE.format(args=args, heavy=HEAVY_MODULES)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("LOADED:"), result.stdout


def test_console_script_help_and_version():
    help_result = run_mmst_process("--help")
    assert help_result.returncode == 0
    assert "detect" in help_result.stdout
    version = run_mmst_process("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("mmst ")


def test_unknown_command_is_a_usage_error():
    result = run_mmst_process("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
