"""The search-time form of an ``Int8Index``: what every scan reads, built once when the index is loaded.

Typed, so the exact scan, IVF and the GPU glue name what they read (``prepared.ids_sorted``) rather than
agreeing on dictionary keys. Pure data and its construction (``plan.prepare_index`` builds it); a search's
plan is in ``plan.py``, the scans in ``search.py`` / ``ivf.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

CHUNK = 64  # rows per upper-bound chunk (the kernels use >> 6 for it)
SAMPLE_STEP = 16  # starting bars come from a strided 1-in-16 row sample
MIN_SAMPLED = 1600  # a row table this large gets a sample (of >= 100 rows)


@dataclass(frozen=True)
class RowTable:
    """What the blocked scan needs of a set of scale-sorted rows: codes, scales and per-64-row-chunk scale
    bounds (float64: the integer bound is computed in float64 with a relative margin)."""

    codes_t: torch.Tensor  # int8 [n, d], a view of the codes
    scales: np.ndarray  # float32 [n]
    inv_smax: np.ndarray  # float64 [n / 64]: 1 / the chunk's largest scale
    inv_smin: np.ndarray  # float64 [n / 64]: 1 / its smallest
    smax: np.ndarray
    smin: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.codes_t.shape[0])

    @classmethod
    def of(cls, codes: np.ndarray, scales: np.ndarray) -> RowTable:
        starts = np.arange(0, len(scales), CHUNK)
        # float64: 1 / (the smallest float32 subnormal) is finite, so no clamp (a clamped 1 / s_min would lift
        # the bound u / s_min of a negative u above the truth); scales are > 0 (a zero row gets scale 1)
        smax, smin = np.maximum.reduceat(scales, starts), np.minimum.reduceat(scales, starts)
        return cls(torch.from_numpy(np.ascontiguousarray(codes)), np.ascontiguousarray(scales, dtype=np.float32),
                   1 / smax.astype(np.float64), 1 / smin.astype(np.float64), smax.astype(np.float64),
                   smin.astype(np.float64))


@dataclass(frozen=True)
class SampledTable:
    """A row table with its strided 1-in-16 row sample, itself sampled, down to ~100 rows: each level's scan
    takes its starting bars from the next level's (``plan._bar_plan``), so a sample scan is cheap too."""

    table: RowTable
    sample: SampledTable | None = None
    sample_rows: np.ndarray | None = None  # int64: the sample's rows in ``table``

    @classmethod
    def of(cls, codes: np.ndarray, scales: np.ndarray) -> SampledTable:
        n = len(scales)
        if n < MIN_SAMPLED:
            return cls(RowTable.of(codes, scales))
        rows = np.unique(np.linspace(0, n - 1, n // SAMPLE_STEP).astype(np.int64))
        return cls(RowTable.of(codes, scales), cls.of(codes[rows], scales[rows]), rows)


@dataclass(frozen=True)
class IvfTables:
    """IVF's probe and scan inputs: int8-quantised centroids (ranked with the item scan's exact formula) and
    each list's row range. Rows added after the build (``IvfLists.tail_start``..N) are one more list, L, with
    no centroid: never ranked, every query scans it (``plan.plan_search`` appends it to the probes)."""

    centroid_codes: np.ndarray  # int8 [L, d]
    centroid_scales: np.ndarray  # float32 [L]
    offsets: np.ndarray  # int64 [L + 1], or [L + 2] with a tail (list L)

    @property
    def has_tail(self) -> bool:
        return len(self.offsets) > len(self.centroid_scales) + 1


@dataclass(frozen=True)
class PreparedIndex:
    levels: SampledTable  # the full row table and its samples
    codes: np.ndarray  # int8 [N, d], a plain ndarray (slicing an np.memmap costs microseconds per slice)
    ids: np.ndarray  # int64 [N], contiguous
    # int32 by id: -1 where no row (`id_lookup`), or the build's mapped `item_rows` (0 where no row,
    # `index.load_row_map`; `rows_of` checks each hit against ``ids``); None for sparse ids
    row_of_id: np.ndarray | None
    ivf: IvfTables | None = None

    @classmethod
    def id_lookup(cls, ids: np.ndarray) -> np.ndarray | None:
        """The row of each id as one int32 table, where ids are dense (internal ids 1..N): 4 bytes an item
        instead of a sorted copy and its order (16); None for sparse ids (``ids_sorted`` serves them)."""
        if len(ids) == 0 or len(ids) >= 2**31 or int(ids.min()) < 0 or int(ids.max()) > 2 * len(ids) + 1024:
            return None
        table = np.full(int(ids.max()) + 1, -1, np.int32)
        table[ids] = np.arange(len(ids), dtype=np.int32)
        return table

    @property
    def table(self) -> RowTable:
        return self.levels.table

    @cached_property
    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.ids, kind="stable")
        return self.ids[order], order

    @property
    def ids_sorted(self) -> np.ndarray:
        """The ids ascending (made on first use: sparse ids, the GPU glue) ..."""
        return self._sorted[0]

    @property
    def ids_order(self) -> np.ndarray:
        """... and the row of each."""
        return self._sorted[1]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Item ids (any shape, -1 = none) -> rows (-1 = none or unknown id)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.row_of_id is not None:
            inside = (ids >= 0) & (ids < len(self.row_of_id))
            rows = np.clip(self.row_of_id[np.where(inside, ids, 0)], -1, len(self.ids) - 1).astype(np.int64)
            hit = inside & (rows >= 0) & (self.ids[np.maximum(rows, 0)] == ids)
            return np.where(hit, rows, -1)
        pos = np.minimum(np.searchsorted(self.ids_sorted, ids), len(self.ids_sorted) - 1)
        hit = (self.ids_sorted[pos] == ids) & (ids >= 0)
        return np.where(hit, self.ids_order[pos], -1).astype(np.int64)
