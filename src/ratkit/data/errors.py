"""The single exception type of ``ratkit.data``.

Every bad-input case (missing or corrupt file, unknown dataset name, bad split, ...)
raises :class:`DataError`, so callers (the CLI in particular) can catch one type and
print its message as-is: it is always one line naming the file, directory or dataset
and what was expected.
"""

from __future__ import annotations


class DataError(Exception):
    """Bad dataset input; the message is one line: ``<file or name>: <what was expected>``."""

    def __init__(self, message: str) -> None:
        # Messages may embed text of wrapped exceptions (unpickling, scipy); keep them
        # on one line so logs and CLI output stay grep-able.
        super().__init__(" ".join(str(message).split()))
