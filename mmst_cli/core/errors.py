"""The one error type of mmst.

Every expected failure (bad input, a model that cannot be found, an unusable combination of
options) is raised as :class:`MmstError`. The CLI maps it, in one place, to a one-line message on
stderr and an exit status; anything else is a bug and is reported as such.
"""

from __future__ import annotations

#: Bad usage or bad input: the user has to change the command or the data.
EXIT_USAGE = 2
#: The command was fine but the work failed while running.
EXIT_FAILURE = 1
#: Stopped by Ctrl-C (SIGINT), as shells report it (128 + 2).
EXIT_INTERRUPTED = 130


class MmstError(Exception):
    """An expected failure with a message meant for the user.

    Args:
        message: One line that names the input (file, row, column or flag) and says how to fix it.
        exit_code: Process exit status; :data:`EXIT_USAGE` (2, the default) for bad usage or
            input, :data:`EXIT_FAILURE` (1) for failures at run time.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__
