"""Allow ``python -m mmst_cli``, e.g. under ``torchrun`` or ``accelerate launch``."""

from mmst_cli.cli.app import main

if __name__ == "__main__":
    main()
