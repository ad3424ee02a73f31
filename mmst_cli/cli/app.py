"""The ``mmst`` application: registers the commands and maps errors to one-line messages.

This module and the command modules import no ML library at module level, so ``mmst --help``,
``mmst --version`` and ``mmst COMMAND --help`` start instantly.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from typing import Annotated

import typer
from typer.core import TyperCommand

from mmst_cli import __version__
from mmst_cli.cli.detect import detect
from mmst_cli.cli.encode import encode
from mmst_cli.cli.evaluate import evaluate
from mmst_cli.cli.index import index
from mmst_cli.cli.mine import mine
from mmst_cli.cli.search import search
from mmst_cli.cli.train_embed import train_embed
from mmst_cli.cli.train_rerank import train_rerank
from mmst_cli.core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, MmstError, storage_failure

class MmstCommand(TyperCommand):
    """A command whose ``--help`` stays readable at 80 columns, with every flag name whole.

    Flags that are off by default have no ``--no-`` form: ``--no-allow-outside-root`` only restates
    the default, and the column Rich gives such names took so much of an 80-column terminal that
    flag names and help were cut ("--gather-across-dev…"). Flags that are on by default keep both
    forms. Option names are then drawn unshrunk (:mod:`mmst_cli.cli.help_layout`). Applied here,
    once, so every command and every new flag follow the rules; ``tests/test_help_width.py`` checks
    each command's help at 80 columns.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(param, "is_flag", False) and param.secondary_opts and param.default is False:
                param.secondary_opts = []

    def format_help(self, ctx, formatter) -> None:
        from mmst_cli.cli.help_layout import whole_option_names

        with whole_option_names():
            super().format_help(ctx, formatter)


app = typer.Typer(
    name="mmst",
    help="Train, evaluate and use multimodal (text, image, audio) embedding models and rerankers.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("detect", cls=MmstCommand, rich_help_panel="Inspect")(detect)
app.command("train-embed", cls=MmstCommand, rich_help_panel="Train")(train_embed)
app.command("train-rerank", cls=MmstCommand, rich_help_panel="Train")(train_rerank)
app.command("encode", cls=MmstCommand, rich_help_panel="Use")(encode)
app.command("index", cls=MmstCommand, rich_help_panel="Use")(index)
app.command("search", cls=MmstCommand, rich_help_panel="Use")(search)
app.command("evaluate", cls=MmstCommand, rich_help_panel="Evaluate")(evaluate)
app.command("mine", cls=MmstCommand, rich_help_panel="Train")(mine)

_QUIET_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    # datasets logs read errors that mmst reports itself as one line.
    "DATASETS_VERBOSITY": "critical",
    # Libraries' own tqdm bars (model-card widgets, encoding); mmst draws its progress with Rich.
    "TQDM_DISABLE": "1",
}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mmst {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show library logs, and a full traceback on errors. Accepted anywhere on the command line.",
        ),
    ] = False,
) -> None:
    """Train, evaluate and use multimodal (text, image, audio) embedding models and rerankers."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr)
    if not debug:
        # Weight-loading bars and Hub retry warnings would bury mmst's own output; the user's
        # own settings of these variables win.
        for name, value in _QUIET_LIBRARIES.items():
            os.environ.setdefault(name, value)
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        # Sentence Transformers warns through plain logging (model-card snippets and the like).
        logging.getLogger("sentence_transformers").setLevel(logging.ERROR)


def _hoist_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Move ``--debug`` to the front so it works after a command name too (``mmst detect X --debug``)."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    if not debug:
        return argv, False
    return ["--debug"] + [arg for arg in argv[:end] if arg != "--debug"] + argv[end:], True


try:  # Typer 0.2x ships its own copy of Click and raises that copy's exceptions.
    from typer._click import exceptions as click_exceptions
except ImportError:  # older Typer runs on Click itself
    from click import exceptions as click_exceptions

#: Click raises this (a UsageError) for a bare ``mmst``; older Click printed the help itself.
_NoArgsIsHelp = getattr(click_exceptions, "NoArgsIsHelpError", ())


def main() -> None:
    """Console-script entry point: run the app and turn every failure into one line on stderr."""
    argv, debug = _hoist_debug(sys.argv[1:])
    try:
        # Not standalone: Click's usage errors come here and print as one line, not as a box.
        status = app(args=argv, prog_name="mmst", standalone_mode=False)
    except _NoArgsIsHelp as error:
        # A bare `mmst`: Typer has printed the help already.
        sys.exit(error.exit_code)
    except click_exceptions.UsageError as error:
        command = error.ctx.command_path if error.ctx else "mmst"
        sys.stderr.write(f"Error: {error.format_message()} (see '{command} --help')\n")
        sys.exit(EXIT_USAGE)
    except click_exceptions.ClickException as error:
        sys.stderr.write(f"Error: {error.format_message()}\n")
        sys.exit(error.exit_code)
    except typer.Abort:
        sys.stderr.write("Error: aborted\n")
        sys.exit(EXIT_FAILURE)
    except MmstError as error:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"Error: {error.message}\n")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - the one place that turns bugs into a readable line
        if debug:
            traceback.print_exc()
        storage = storage_failure(error)
        if storage is not None:
            sys.stderr.write(f"Error: {storage}\n")
            sys.exit(EXIT_FAILURE)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        sys.stderr.write(
            f"Error: unexpected {type(error).__name__}: {detail} (rerun with --debug for the traceback)\n"
        )
        sys.exit(EXIT_FAILURE)
    # typer.Exit(code) and --help / --version end here in non-standalone mode.
    sys.exit(status if isinstance(status, int) else 0)
