"""Symmetric per-row int8 quantisation shared by items and queries.

Every row gets its own scale, so quantising a query never looks at the other rows of its batch: that is the
first half of the batch-invariance argument (the second is the exact integer dot product in ``search``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

QMAX = 127  # symmetric range [-127, 127]; -128 is never produced


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N,d] -> (codes int8 [N,d], scales float32 [N]); symmetric per-row, scale = max|x_i|/127.

    All-zero rows get scale 1 (codes 0) so a scale is never 0 and dequantisation never divides by it.
    The arithmetic is elementwise float32 per row, hence a row's codes do not depend on its neighbours.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize_rows expects a 2-D [N, d] array, got shape {x.shape}")
    amax = np.max(np.abs(x), axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    scales = (amax / np.float32(QMAX)).astype(np.float32)
    scales[scales == 0] = 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        codes = np.rint(x / scales[:, None])
    codes = np.clip(codes, -QMAX, QMAX).astype(np.int8)
    return codes, scales


@njit(nogil=True, cache=True)
def _quantize_into(x, codes, scales, finite):
    qmax = np.float32(QMAX)
    for i in range(x.shape[0]):
        amax = np.float32(0)
        ok = True
        for j in range(x.shape[1]):
            v = x[i, j]
            ok &= np.isfinite(v)
            amax = max(amax, abs(v))
        finite[i] = ok
        if not ok:
            continue
        s = amax / qmax
        if s == 0:
            s = np.float32(1)
        scales[i] = s
        for j in range(x.shape[1]):
            codes[i, j] = np.int8(min(max(np.rint(x[i, j] / s), -qmax), qmax))


def quantize_checked_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``quantize_rows`` in one compiled pass that also checks the values -> (codes, scales, finite bool [N]).
    Bit-identical on finite rows (the same float32 division, round-half-even and clip); a row holding NaN or
    inf is only flagged (its codes and scale are undefined). The query path's: at batch 1, numpy's dozen
    small calls and the separate finiteness check cost ~40 us warm, several times that with cold caches."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    codes, scales, finite = np.empty(x.shape, np.int8), np.empty(x.shape[0], np.float32), np.empty(x.shape[0], bool)
    _quantize_into(x, codes, scales, finite)
    return codes, scales, finite


def dequantize_rows(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(codes int8 [N,d], scales float32 [N]) -> float32 [N,d]; inverse of ``quantize_rows`` up to scale/2."""
    return np.asarray(codes, dtype=np.float32) * np.asarray(scales, dtype=np.float32)[:, None]
