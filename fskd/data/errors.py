"""Errors raised for malformed input files."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file and, where known, the record.

    ``DataFormatError(message)`` with a single argument is accepted too, so that a DataLoader worker can re-raise
    the error in the main process as the same type (it rebuilds exceptions from their message). ``reason`` is the
    message without the file and record, for callers that re-raise it with more context.
    """

    def __init__(self, path: str | os.PathLike, message: str | None = None, key: object | None = None) -> None:
        if message is None:
            self.path, self.key, self.reason = None, None, str(path)
            super().__init__(str(path))
            return
        self.path = os.fspath(path)
        self.key = key
        self.reason = message
        where = self.path if key is None else f"{self.path} (record {key})"
        super().__init__(f"{where}: {message}")
