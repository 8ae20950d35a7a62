"""A table as a reader hands it over: typed Arrow columns under the schema, and where each row came from.

Both readers (atomic text, Parquet) normalise to the same Arrow types, so everything after them is shared:
item_id -> int64 (checked), timestamp -> float64, token -> string, token_seq -> list<string>, float -> float64,
float_seq -> list<float64>; null = missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from widefunnel.dataset.errors import DatasetError
from widefunnel.dataset.schema import Schema


@dataclass(frozen=True)
class RawTable:
    file: str  # the file, or the folder of part files
    schema: Schema  # as declared (atomic) or read from Arrow types (Parquet)
    table: pa.Table  # normalised columns, named as the schema's fields
    locate: Callable[[int], tuple[str, int]]  # row (0-based) -> (file, 1-based line) for messages
    schema_line: int | None = None  # where the schema is declared: an atomic header's line 1; Parquet: none

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def error(self, row: int, field: str | None, message: str) -> DatasetError:
        file, line = self.locate(int(row))
        return DatasetError(file, line, field, message)

    def filter(self, keep: np.ndarray) -> RawTable:
        """Keep some rows; messages still name the rows' original lines."""
        kept = np.flatnonzero(keep)
        return RawTable(self.file, self.schema, self.table.filter(pa.array(keep)),
                        lambda row: self.locate(int(kept[row])), self.schema_line)
