"""The one error type of mmst.

Every expected failure (bad input, a model that cannot be found, an unusable combination of
options) is raised as :class:`MmstError`. The CLI maps it, in one place, to a one-line message on
stderr and an exit status; anything else is a bug and is reported as such.
"""

from __future__ import annotations

import errno

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


#: errno values of a disk that refuses a write: full, over quota, a file-size limit, read-only.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
#: The same failures as libraries that wrap them report them (safetensors, torch.save, pyarrow).
_STORAGE_MESSAGES = ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system")


def storage_failure(error: BaseException) -> str | None:
    """A one-line message when ``error``, or an error that caused it, is the disk refusing a write.

    Such a failure is the machine's, not the input's (exit 1), and the fix is space, not a bug
    report. Libraries that write (safetensors, torch, pyarrow, the HF trainer) wrap the ``OSError``
    in their own types, so its chain is followed and its message read.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS:
            where = f" {current.filename}" if current.filename else ""
            return f"cannot write{where}: {current.strerror}; free some space or write elsewhere"
        text = str(current)
        for message in _STORAGE_MESSAGES:
            if message in text:
                return f"cannot write: {message} ({first_line(current)[:200]}); free some space or write elsewhere"
        current = current.__cause__ or current.__context__
    return None
