"""Per-query row filters for the scans: a bitmap over an index's rows (bit ``row & 63`` of uint64 word
``row >> 6``), checked inside the scan, so a filtered search returns the exact top-k of the admissible rows
for any selectivity (never an over-fetch cut short). A word is one 64-row chunk of the scan's scale bounds,
so a chunk with no admissible row costs one load. ``[B, 0]`` means "no filter".
"""

from __future__ import annotations

import numpy as np


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


def subset(allow: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The bitmap of a row subset (the scan's 1-in-16 sample): bit i = bit ``rows[i]`` of ``allow``."""
    if allow.shape[1] == 0:
        return no_filter(allow.shape[0])
    bits = (allow[:, rows >> 6] >> (rows & 63).astype(np.uint64)) & np.uint64(1)
    return pack_rows(bits.astype(bool))
