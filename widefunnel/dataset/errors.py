"""The one error a malformed dataset raises: it names the file, the line and the field, so it can be fixed."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset refused before anything is written.

    `line` is 1-based (an atomic file's header is line 1; in Parquet, the row within its part file, from 1);
    None where the fault is not on one line (a missing file, a schema). `field` is None where no field is at fault.
    """

    def __init__(self, file: str, line: int | None, field: str | None, message: str):
        self.file, self.line, self.field, self.reason = str(file), line, field, message
        where = [self.file]
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}")


class DatasetConfigError(ValueError):
    """A `[dataset]` config key is wrong; the message names the key."""
