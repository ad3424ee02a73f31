"""mmst: a command-line toolkit for multimodal embedding and reranker workflows.

The package is split in two layers:

- ``mmst_cli.cli``: thin Typer command modules (argument parsing, output).
- ``mmst_cli.core``: everything that loads models, inspects them, builds data, trains and scores.

Nothing at import time of this package touches torch, transformers, datasets or
sentence_transformers, so ``mmst --help`` stays instant.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmst")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
