"""External item ids (the catalogue's int64 ids: sparse, up to 2^62) <-> internal ids (dense 1..N).

Every table inside the funnel (tower buffers, ANN rows, reranker codes, scorer features) is indexed by internal id,
so memory and gathers follow the number of items, never the largest id. External ids exist only at the client
edges: preprocess maps what a request names in, quota_merge and the ANN's CANDIDATE_ITEM_ID map answers out, and
takedowns (kept in external ids) are mapped where they are applied. One table per version (`layout.ITEM_IDS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from widefunnel.arrays import load_table
from widefunnel.layout import ITEM_IDS

NONE = -1  # an internal id without an item (padding row 0, gaps) and the answer for an unknown external id


class ItemIds:
    """``external[internal]``: int64 [T] (T = the tables' size), NONE where no item has that internal id.

    A build numbers its items in ascending external-id order, so the table is usually its own sorted index: then
    lookups search it in place and a loaded table is only mapped (every step process of a version shares its
    pages). A table grown out of order by ``items add`` keeps a sorted copy and each entry's internal id."""

    def __init__(self, external: np.ndarray):
        self.external = external if isinstance(external, np.memmap) else np.asarray(external, np.int64)
        present = self.external != NONE
        first = int(np.argmax(present)) if present.any() else len(self.external)
        dense = bool(present[first:].all())
        self._first = first
        self.identity = dense and bool((self.external[first:] == np.arange(first, len(self.external))).all())
        if dense and bool((np.diff(self.external[first:]) > 0).all()):
            self._sorted, self._internal = self.external[first:], None  # row r of _sorted is internal id first + r
        else:
            present = np.flatnonzero(present)
            order = np.argsort(self.external[present], kind="stable")
            self._sorted, self._internal = self.external[present][order], present[order]

    @classmethod
    def of_items(cls, internal: np.ndarray, external: np.ndarray, size: int) -> ItemIds:
        table = np.full(size, NONE, np.int64)
        table[np.asarray(internal, np.int64)] = np.asarray(external, np.int64)
        return cls(table)

    @classmethod
    def load(cls, folder: str | Path) -> ItemIds | None:
        """The table in a version folder, mapped read-only; None when absent (a build from before external ids:
        identity)."""
        path = Path(folder) / ITEM_IDS
        if not path.is_file():
            return None
        table = load_table(path)  # the rows this version lists, where it grew the build's table
        if table.dtype != np.int64 or table.ndim != 1:
            raise ValueError(f"{path}: int64 [T] expected, found {table.dtype} {list(table.shape)}")
        return cls(table)

    def save(self, folder: str | Path) -> None:
        with open(Path(folder) / ITEM_IDS, "wb") as f:
            np.save(f, np.asarray(self.external))

    def to_internal(self, external: np.ndarray) -> np.ndarray:
        """External ids -> internal ids; negatives (pads) stay as they are, unknown ids become NONE."""
        external = np.asarray(external, np.int64)
        if self.identity:
            known = (external >= 0) & (external < len(self.external))
            known[known] &= self.external[external[known]] != NONE
            return np.where(known | (external < 0), external, NONE)
        if len(self._sorted) == 0:
            return np.where(external < 0, external, NONE)
        pos = np.minimum(np.searchsorted(self._sorted, external), len(self._sorted) - 1)
        found = self._sorted[pos] == external
        internal = pos + self._first if self._internal is None else self._internal[pos]
        return np.where(found, internal, np.where(external < 0, external, NONE))

    def to_external(self, internal: np.ndarray) -> np.ndarray:
        """Internal ids -> external ids; negatives (the ANN's and the merge's pads) stay as they are."""
        internal = np.asarray(internal, np.int64)
        if self.identity:
            return internal
        inside = (internal >= 0) & (internal < len(self.external))
        out = internal.copy()
        out[inside] = self.external[internal[inside]]
        return out


def internal_takedowns(ids: ItemIds | None, external: np.ndarray) -> np.ndarray:
    """Taken-down external ids -> the sorted internal ids this version knows (the others are not in it)."""
    if ids is None:
        return external
    internal = ids.to_internal(external)
    return np.sort(internal[internal != NONE])


class InternalTakedowns:
    """``takedown_ids()`` (external, ``takedowns.TakedownWatch.ids``) as this version's internal ids, mapped only
    when the list changes: the same array object comes back while it does not (``filters.StandingBlock`` keys
    on identity)."""

    def __init__(self, ids: ItemIds | None, takedown_ids):
        self._ids, self._source = ids, takedown_ids
        self._external: np.ndarray | None = None
        self._internal = np.zeros(0, np.int64)

    def __call__(self) -> np.ndarray:
        external = self._source()
        if external is not self._external:
            self._external, self._internal = external, internal_takedowns(self._ids, external)
        return self._internal
