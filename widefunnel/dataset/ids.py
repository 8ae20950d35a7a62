"""Item ids: int64, possibly sparse and large (13-digit SKUs; anything in [0, 2^62)).

Every per-item table is indexed by a dense row 0..N-1, so memory and lookups follow the number of items, never
the largest id: `IdIndex` keeps the ids sorted and maps with a binary search (or a subtraction where the ids
happen to be contiguous, as MovieLens' are); a long lookup (a whole log) probes a hash table instead, also O(N).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_ID = 2**62  # exclusive; leaves room above the ids for sentinels and sign bits
MAX_DIGITS = 19  # len(str(MAX_ID - 1))
HASH_LOOKUP_FROM = 4096  # ids per lookup from which a hash table (built per call, O(N)) pays for itself


class IdIndex:
    """Sorted unique int64 ids <-> dense rows 0..N-1."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            raise ValueError("IdIndex needs sorted, unique ids (use IdIndex.build)")
        self.ids = ids
        self._contiguous = len(ids) > 0 and int(ids[-1]) - int(ids[0]) + 1 == len(ids)

    @classmethod
    def build(cls, ids: np.ndarray) -> tuple[IdIndex, np.ndarray, int | None]:
        """Unsorted ids -> (index, order that sorts them, position of the first duplicate or None)."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if len(dup):  # the second occurrence in file order: stable sort keeps file order among equal ids
            return cls(np.unique(sorted_ids)), order, int(order[dup + 1].min())
        return cls(sorted_ids), order, None

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids -> (int64 rows, -1 where missing; bool mask of the missing ones)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64), np.ones(len(ids), dtype=bool)
        if self._contiguous:
            rows = ids - self.ids[0]
            missing = (rows < 0) | (rows >= len(self.ids))
        elif len(ids) >= HASH_LOOKUP_FROM:  # one hash probe beats ~log2(N) cache misses per id (3-10x on a log)
            found = pc.index_in(pa.array(ids), value_set=pa.array(self.ids))
            rows = np.asarray(pc.fill_null(found, -1).to_numpy(), dtype=np.int64)
            return rows, rows < 0
        else:
            rows = np.searchsorted(self.ids, ids)
            np.minimum(rows, len(self.ids) - 1, out=rows)
            missing = self.ids[rows] != ids
        rows[missing] = -1
        return rows, missing

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(rows, dtype=np.int64)]


def first_true(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def parse_id_strings(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray | None, int | None, str]:
    """Text ids (ASCII digits only) -> (int64 ids, None, "") or (None, first bad row, why).

    Vectorised: one classification pass and one cast; a null (empty) id is bad too.
    """
    digits = pc.fill_null(pc.and_(pc.ascii_is_decimal(values), pc.less_equal(pc.binary_length(values), MAX_DIGITS)),
                          False)
    bad = first_true(~np.asarray(digits.to_numpy(zero_copy_only=False), dtype=bool))
    if bad is not None:
        return None, bad, "not an integer"
    as_uint = np.asarray(pc.cast(values, pa.uint64()).to_numpy(zero_copy_only=False), dtype=np.uint64)
    bad = first_true(as_uint >= MAX_ID)
    if bad is not None:
        return None, bad, "out of range"
    return as_uint.astype(np.int64), None, ""


def check_id_ints(values: np.ndarray) -> tuple[int | None, str]:
    """Integer ids -> (first row outside [0, 2^62), why) or (None, "")."""
    bad = first_true((values < 0) | (values >= MAX_ID))
    return (bad, "out of range") if bad is not None else (None, "")


ID_RULE = "item ids must be integers in [0, 2^62) (ASCII digits in a text file); map other ids to integers first"
