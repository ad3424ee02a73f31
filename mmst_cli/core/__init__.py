"""The shared core behind every mmst command, in one sub-package per stage of the workflow.

From the ground up (each wing may import only the wings below it; see docs/architecture.md):

- :mod:`~mmst_cli.core.errors`, :mod:`~mmst_cli.core.progress` and :mod:`~mmst_cli.core.outputs`:
  the one error type, the progress display and the output-path checks, which everything stands on;
- :mod:`~mmst_cli.core.data`: tables, columns and media references (read, checked, confined);
- :mod:`~mmst_cli.core.models`: finding, loading, composing and describing models;
- :mod:`~mmst_cli.core.encode`: inputs to embeddings, in memory or as an ``mmst encode`` job;
- :mod:`~mmst_cli.core.retrieval`: retrieval tasks, exact search, metrics and evaluation;
- :mod:`~mmst_cli.core.index`: search index folders (``mmst index`` / ``mmst search``);
- :mod:`~mmst_cli.core.train`: the training commands' shared run logic, losses and the planner.

Modules here may import the ML stack, but only inside functions or in modules that the CLI
layer imports lazily, so that ``mmst --help`` never pays for torch. ``tests/test_layout.py``
checks the direction of every import.
"""
