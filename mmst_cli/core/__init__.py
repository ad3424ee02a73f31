"""The shared core behind every mmst command: models, data, media, metrics and training.

Modules here may import the ML stack, but only inside functions or in modules that the CLI
layer imports lazily, so that ``mmst --help`` never pays for torch.
"""
