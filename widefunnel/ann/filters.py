"""Per-query row filters for the scans: a bitmap over an index's rows (bit ``row & 63`` of uint64 word
``row >> 6``), checked inside the scan, so a filtered search returns the exact top-k of the admissible rows
for any selectivity (never an over-fetch cut short). A word is one 64-row chunk of the scan's scale bounds,
so a chunk with no admissible row costs one load. ``[B, 0]`` means "no filter".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from widefunnel import field_filters
from widefunnel.ann import kernels


def no_filter(batch: int) -> np.ndarray:
    return np.zeros((batch, 0), np.uint64)


def words(rows: int) -> int:
    return -(-rows // 64)


def pack_rows(mask: np.ndarray) -> np.ndarray:
    """bool [B, N] (True = admissible row) -> uint64 bitmap [B, ceil(N / 64)]."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a row mask must be [B, N], got shape {list(mask.shape)}")
    b, n = mask.shape
    packed = np.packbits(mask, axis=1, bitorder="little")
    out = np.zeros((b, words(n) * 8), np.uint8)
    out[:, :packed.shape[1]] = packed
    return out.view("<u8").astype(np.uint64, copy=False)


def unpack_rows(allow: np.ndarray, rows: int) -> np.ndarray:
    """uint64 bitmap [B, W] -> bool [B, rows]."""
    return np.unpackbits(np.ascontiguousarray(allow).view(np.uint8), axis=1, bitorder="little")[:, :rows].astype(bool)


def check_allow(allow: np.ndarray | None, batch: int, rows: int) -> np.ndarray:
    """-> a contiguous uint64 [batch, ceil(rows / 64)] bitmap (or [batch, 0] for None); ValueError naming
    ``allow`` on a wrong shape or dtype. Bits past the last row are ignored."""
    if allow is None:
        return no_filter(batch)
    a = np.asarray(allow)
    if a.dtype != np.uint64 or a.shape != (batch, words(rows)):
        raise ValueError(f"allow must be a uint64 row bitmap of shape [{batch}, {words(rows)}], "
                         f"got {a.dtype} {list(a.shape)}")
    return np.ascontiguousarray(a)


def admitted_share(allow: np.ndarray, sample_words: int = 4096) -> float:
    """The share of admissible rows (1.0 for no filter), estimated from up to ``sample_words`` evenly spread
    words per query: it only picks a scan strategy, never what the scan returns."""
    if allow.shape[1] == 0 or allow.shape[0] == 0:
        return 1.0
    step = max(1, allow.shape[1] // sample_words)
    words_ = np.ascontiguousarray(allow[:, ::step])
    return kernels.bit_count(words_) / (64 * words_.size)


def union_rows(allow: np.ndarray, rows: int) -> np.ndarray:
    """The rows (int64, ascending) that at least one query of a filtered batch admits."""
    union = allow[0] if len(allow) == 1 else np.bitwise_or.reduce(allow, axis=0)
    return kernels.set_rows(np.ascontiguousarray(union), rows)


def subset(allow: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The bitmap of a row subset (the scan's 1-in-16 sample): bit i = bit ``rows[i]`` of ``allow``."""
    if allow.shape[1] == 0:
        return no_filter(allow.shape[0])
    out = np.empty((allow.shape[0], words(len(rows))), np.uint64)
    kernels.subset_bits(np.ascontiguousarray(allow), np.ascontiguousarray(rows, dtype=np.int64), out)
    return out


def blocked_bits(n_rows: int, rows: np.ndarray) -> np.ndarray | None:
    """Rows never admissible (e.g. taken-down items; -1 = not in this index) -> the packed bitmap [1, W] of the
    other rows, or None when no row is blocked."""
    rows = np.asarray(rows, np.int64)
    rows = rows[rows >= 0]
    if rows.size == 0:
        return None
    mask = np.ones((1, n_rows), bool)
    mask[0, rows] = False
    return pack_rows(mask)


def restrict(allow: np.ndarray | None, keep: np.ndarray | None, batch: int) -> np.ndarray | None:
    """A request's bitmap [B, W] (or None: everything) AND a standing bitmap [1, W] (or None: nothing blocked)."""
    if keep is None:
        return allow
    if allow is None:
        return np.repeat(keep, batch, axis=0)
    return allow & keep


class StandingBlock:
    """Rows never admissible while ``ids()`` lists their items (taken-down items, ``takedowns.TakedownWatch``):
    the packed bitmap [1, W] of the other rows, recomputed only when ``ids()`` returns a new array."""

    def __init__(self, ids, n_rows: int, rows_of):
        self._ids, self._n_rows, self._rows_of = ids, n_rows, rows_of
        self._for: np.ndarray | None = None
        self._bits: np.ndarray | None = None

    def bits(self) -> np.ndarray | None:
        ids = self._ids()
        if ids is not self._for:
            self._for = ids
            self._bits = blocked_bits(self._n_rows, self._rows_of(ids)) if ids.size else None
        return self._bits


def request_bitmap(n_rows: int, rows_of_ids, exclude_ids: np.ndarray | None, fields: RowFields | None = None,
                   field_tokens: np.ndarray | None = None, field_ranges: np.ndarray | None = None
                   ) -> np.ndarray | None:
    """Per-query filters (exclusion ids [B, E] with -1 pads; ``field_filters``' packed FIELD_TOKENS [B, T] and
    FIELD_RANGES [B, 2F]) -> a row bitmap [B, W] over ``n_rows`` rows, or None when no query filters anything
    (the unfiltered scan runs). ``rows_of_ids`` maps ids to rows (-1 = not in this index). Field filters need
    ``fields``: ValueError when one meets an index without that table."""
    given = [a for a in (exclude_ids, field_tokens, field_ranges) if a is not None]
    if not given:
        return None
    batch = len(given[0])
    by_field = field_filters.filtering(field_tokens, field_ranges)
    if by_field.any() and fields is None:
        raise ValueError("field filters: this index has no item fields table (a build before them); rebuild it")
    excl = None if exclude_ids is None else rows_of_ids(np.asarray(exclude_ids, np.int64).reshape(batch, -1))
    if not by_field.any() and (excl is None or not (excl >= 0).any()):
        return None
    masks = np.ones((batch, n_rows), bool)
    field_masks: dict[tuple[bytes, bytes], np.ndarray] = {}
    for i in range(batch):
        if fields is not None and by_field[i]:
            tokens = field_tokens[i] if field_tokens is not None else np.zeros(0, np.int64)
            ranges = None if field_ranges is None else field_ranges[i]
            key = (tokens.tobytes(), b"" if ranges is None else ranges.tobytes())
            if key not in field_masks:  # a client repeats one filter for every seed: one mask per distinct row
                field_masks[key] = fields.mask(tokens, ranges)
            masks[i] &= field_masks[key]
        if excl is not None:
            masks[i, excl[i][excl[i] >= 0]] = False
    return pack_rows(masks)


@dataclass(frozen=True)
class RowFields:
    """A build's ``field_filters.ItemFields`` seen from one index: ``row_ids`` (internal id per row) turns its
    mask over internal ids into a mask over rows (ids past the table: never admitted by a field filter)."""

    fields: field_filters.ItemFields
    row_ids: np.ndarray  # int64 [N]

    @cached_property
    def _gather(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(the id each row reads, clipped into the table; the rows inside it, None when all are)."""
        inside = self.row_ids < self.fields.table_size
        if inside.all():
            return self.row_ids, None
        return np.where(inside, self.row_ids, 0), inside

    def mask(self, tokens: np.ndarray, ranges: np.ndarray | None) -> np.ndarray:
        ids, inside = self._gather
        by_row = field_filters.id_mask(self.fields, tokens, ranges)[ids]
        return by_row if inside is None else by_row & inside


class HeadFilter:
    """What one head's scan admits: a request's filters (``request_bitmap``) AND the standing block of
    taken-down items (``StandingBlock``). One owner for the ANN step and ``InProcessFunnel``, so both filter
    alike. ``row_ids``: the index's item id per row; ``rows_of``: ids -> rows (-1 = not in this index);
    ``fields``: the build's item fields file (``layout.ITEM_FIELDS``; None or absent: a build without
    filterable fields, where only exclusions work); ``takedown_ids``: returns the taken-down ids
    (``takedowns.TakedownWatch.ids``)."""

    def __init__(self, row_ids: np.ndarray, rows_of, fields: Path | str | None, takedown_ids):
        self.n_rows, self.rows_of = len(row_ids), rows_of
        self.fields = (RowFields(field_filters.ItemFields.load(fields), np.asarray(row_ids, np.int64))
                       if fields is not None and Path(fields).exists() else None)
        self.blocked = StandingBlock(takedown_ids, self.n_rows, rows_of)

    def allow(self, batch: int, exclude_ids: np.ndarray | None = None, field_tokens: np.ndarray | None = None,
              field_ranges: np.ndarray | None = None) -> np.ndarray | None:
        """The row bitmap [batch, W] a scan applies, or None when nothing is filtered or blocked (arguments as
        ``request_bitmap``'s). ValueError when a field filter meets a build without the fields table."""
        return restrict(request_bitmap(self.n_rows, self.rows_of, exclude_ids, self.fields, field_tokens,
                                       field_ranges), self.blocked.bits(), batch)
