"""Option and argument types shared by several commands, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON object on stdout (for pipelines) instead of a table on stderr."),
]

TrustRemoteCodeOption = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Run custom modelling code from the model's repository. Off by default: only for code you trust.",
    ),
]
