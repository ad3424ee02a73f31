"""Every command's ``--help`` is readable in an 80-column terminal: no flag name or word is cut."""

from __future__ import annotations

import re

import pytest
import typer

from mmst_cli.cli.app import app
from tests.helpers import run_mmst

COMMANDS = typer.main.get_command(app).commands


@pytest.mark.parametrize("command", [None, *sorted(COMMANDS)])
def test_help_fits_80_columns_with_every_flag_named_in_full(command):
    args = ["--help"] if command is None else [command, "--help"]
    result = run_mmst(*args, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout, "\n".join(line for line in lines if "…" in line)
    params = COMMANDS[command].params if command else typer.main.get_command(app).params
    names = [name for param in params for name in (*param.opts, *param.secondary_opts) if name.startswith("--")]
    assert names
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.stdout), name


def test_only_flags_off_by_default_lose_their_negative_form():
    from mmst_cli.cli.app import MmstCommand

    demo = typer.Typer(add_completion=False)

    @demo.command(cls=MmstCommand)
    def run(quiet: bool = False, progress: bool = True) -> None:
        """Two flags."""

    command = typer.main.get_command(demo)
    assert isinstance(command, MmstCommand)
    assert {param.name: param.secondary_opts for param in command.params} == {"quiet": [], "progress": ["--no-progress"]}
    assert all(isinstance(command, MmstCommand) for command in COMMANDS.values())
