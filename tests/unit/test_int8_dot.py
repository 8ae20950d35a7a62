"""The VNNI dot products (8 and 16 rows a call) and the row mask of ``widefunnel.ann.int8_dot``: exact
against int64 numpy over the whole int8 range, at unaligned and gapped row addresses; and the IVF scan without
them (the loop any CPU runs) answering as with them, in a process compiled for a generic CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from widefunnel.ann import int8_dot

needs_vnni = pytest.mark.skipif(not int8_dot.HAS_VNNI, reason="this CPU has no VNNI (vpdpbusd)")


@njit
def _dots8(q, codes, rows, out, bias):
    for i in range(len(rows)):
        d = codes.shape[1]
        if d == 32:
            int8_dot.dots8_32(q, codes, rows[i], out, 8 * i, bias)
        elif d == 64:
            int8_dot.dots8_64(q, codes, rows[i], out, 8 * i, bias)
        else:
            int8_dot.dots8_128(q, codes, rows[i], out, 8 * i, bias)


@njit
def _dots16(q, codes, rows, out, bias):
    for i in range(len(rows)):
        d = codes.shape[1]
        if d == 32:
            int8_dot.dots16_32(q, codes, rows[i], out, 16 * i, bias)
        elif d == 64:
            int8_dot.dots16_64(q, codes, rows[i], out, 16 * i, bias)
        else:
            int8_dot.dots16_128(q, codes, rows[i], out, 16 * i, bias)


def _forms() -> list:
    """(rows a call, kernel) for each form this CPU runs."""
    return [(8, _dots8)] + ([(16, _dots16)] if int8_dot.HAS_VNNI_512 else [])


def _check(q: np.ndarray, codes: np.ndarray, rows: list[int]) -> None:
    bias = np.int32(-128 * int(q.astype(np.int64).sum()))
    for width, kernel in _forms():
        out = np.full(width * len(rows), 12345, np.int32)
        kernel(q, codes, np.array(rows, np.int64), out, bias)
        want = np.concatenate([codes[r:r + width].astype(np.int64) @ q.astype(np.int64) for r in rows])
        np.testing.assert_array_equal(out.astype(np.int64), want, err_msg=f"{width} rows a call")


@njit
def _mask(dots, n, bound):
    return int8_dot.at_least64(dots, n, bound)


def _unaligned(codes: np.ndarray, shift: int) -> np.ndarray:
    """The same rows at an address ``shift`` bytes past an aligned one (a mapped .npy's data starts anywhere)."""
    raw = np.zeros(codes.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64 + shift
    view = raw[start:start + codes.nbytes].view(np.int8).reshape(codes.shape)
    view[:] = codes
    return view


@needs_vnni
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("shift", [0, 1, 7])
def test_eight_rows_exact_over_the_whole_range(d: int, shift: int) -> None:
    rng = np.random.default_rng(d + shift)
    codes = rng.integers(-128, 128, (61, d), dtype=np.int8)
    codes[0], codes[1], codes[2] = -128, 127, 0  # the extremes: (c + 128) spans 0..255
    codes = _unaligned(codes, shift)
    for q in (rng.integers(-128, 128, d, dtype=np.int8), np.full(d, -128, np.int8), np.full(d, 127, np.int8)):
        _check(q, codes, [0, 1, 5, 45])  # row 45 + 15 = 60: the last row of the table


@needs_vnni
@pytest.mark.parametrize("d", [32, 64])
def test_rows_with_gaps_between_them(d: int) -> None:
    """Rows d bytes wide, d + 9 bytes apart (a column slice): each row read at its own address."""
    rng = np.random.default_rng(d)
    wide = rng.integers(-128, 128, (40, d + 9), dtype=np.int8)
    _check(rng.integers(-128, 128, d, dtype=np.int8), wide[:, :d], [3, 20])


def test_row_mask_is_the_rows_at_or_above_the_bound_below_n() -> None:
    rng = np.random.default_rng(0)
    dots = rng.integers(-1000, 1000, 64, dtype=np.int32)
    dots[5] = 7
    for n in (0, 1, 6, 63, 64):
        for bound in (-(2**31), -3, 7, 8, 2**31 - 1):
            got = int(_mask(dots, n, np.int32(bound)))
            want = sum(1 << i for i in range(n) if dots[i] >= bound)
            assert got == want, (n, bound)


_FALLBACK = r"""
import json, numpy as np
from widefunnel.ann import build_index, int8_dot, ivf_search
rng = np.random.default_rng(3)
x = rng.standard_normal((6000, 32)).astype(np.float32)
index = build_index(x, np.arange(6000, dtype=np.int64) + 10, "t", ivf_lists=16, seed=0)
ids, scores = ivf_search(index, x[:5], 50, nprobe=4)
print(json.dumps({"vnni": int8_dot.HAS_VNNI, "ids": ids.tolist(), "scores": scores.tolist()}))
"""


@pytest.mark.slow
def test_ivf_scan_without_vnni_answers_as_with_it() -> None:
    """Compiled for a generic x86 CPU (``NUMBA_CPU_NAME=generic``) the scan takes its loop, not VNNI; both
    forms give the same keys (in this process: VNNI where the CPU has it)."""
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    done = subprocess.run([sys.executable, "-c", _FALLBACK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    other = json.loads(done.stdout.strip().splitlines()[-1])
    assert other["vnni"] is False
    here = subprocess.run([sys.executable, "-c", _FALLBACK], capture_output=True, text=True, timeout=600)
    assert here.returncode == 0, here.stderr[-2000:]
    mine = json.loads(here.stdout.strip().splitlines()[-1])
    assert mine["vnni"] is int8_dot.HAS_VNNI
    assert mine["ids"] == other["ids"] and mine["scores"] == other["scores"]
