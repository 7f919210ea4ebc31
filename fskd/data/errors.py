"""Errors raised for malformed input files."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file and, where known, the record."""

    def __init__(self, path: str | os.PathLike, message: str, key: object | None = None) -> None:
        self.path = os.fspath(path)
        self.key = key
        where = self.path if key is None else f"{self.path} (record {key})"
        super().__init__(f"{where}: {message}")
