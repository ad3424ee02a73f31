"""The command-line layer: one small module per command, over :mod:`mmst_cli.core`."""
