"""How ``--help`` lays out options: flag names are never cut, however narrow the terminal.

Typer draws each panel of options as a Rich table whose columns it creates without settings, so
Rich shrinks the option-name columns together with the help column and cuts long names
("--skip-queries-without-rel…") at 80 columns. While mmst draws a command's help, Typer's table
keeps every column before the type and the help text whole: the help text (and the type) wrap
instead. Imported only when help is drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.table import Table
from typer import rich_utils


class OptionTable(Table):
    """Typer's options table, except that the columns holding option names never wrap or shrink."""

    def add_row(self, *renderables, **kwargs) -> None:
        super().add_row(*renderables, **kwargs)
        # Typer's rows: [required marker,] names, short names, negative names, negative short names,
        # type, help. Rich only shrinks columns that may wrap.
        for column in self.columns[:-2]:
            column.no_wrap = True


@contextmanager
def whole_option_names() -> Iterator[None]:
    """Within this block, Typer's help tables are :class:`OptionTable`."""
    original = rich_utils.Table
    rich_utils.Table = OptionTable
    try:
        yield
    finally:
        rich_utils.Table = original
