"""The VNNI dot products (8 and 16 rows a call) and the row mask of ``widefunnel.ann.int8_dot``: exact
against int64 numpy over the whole int8 range, at unaligned and gapped row addresses; and the IVF scan without
them (the loop any CPU runs, or AVX2's) answering as with them, in processes compiled for those CPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from widefunnel.ann import int8_dot

needs_vnni = pytest.mark.skipif(not (int8_dot.HAS_VNNI or int8_dot.HAS_AVX2),
                                reason="this CPU has neither VNNI (vpdpbusd) nor AVX2 (vpmaddwd)")


def _caller(form):
    @njit
    def run(q, codes, rows, out, bias, width):
        for i in range(len(rows)):
            form(q, codes, rows[i], out, width * i, bias)
    return run


_vnni8, _vnni16, _madd8 = _caller(int8_dot.vnni8), _caller(int8_dot.vnni16), _caller(int8_dot.madd8)


def _forms() -> list:
    """(rows a call, kernel, its bias for q) for each form this CPU runs."""
    vnni = [(8, _vnni8, True)] + ([(16, _vnni16, True)] if int8_dot.HAS_VNNI_512 else [])
    return (vnni if int8_dot.HAS_VNNI else []) + ([(8, _madd8, False)] if int8_dot.HAS_AVX2 else [])


def _check(q: np.ndarray, codes: np.ndarray, rows: list[int]) -> None:
    for width, kernel, unsigned in _forms():
        bias = np.int32(-128 * int(q.astype(np.int64).sum())) if unsigned else np.int32(0)
        out = np.full(width * len(rows), 12345, np.int32)
        kernel(q, codes, np.array(rows, np.int64), out, bias, width)
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
ids, scores = [], []
for d in (32, 64, 128):
    x = rng.standard_normal((6000, d)).astype(np.float32)
    index = build_index(x, np.arange(6000, dtype=np.int64) + 10, "t", ivf_lists=16, seed=0)
    i, s = ivf_search(index, x[:5], 50, nprobe=4)
    ids, scores = ids + i.tolist(), scores + s.tolist()
print(json.dumps({"form": [int8_dot.HAS_VNNI, int8_dot.HAS_AVX2], "ids": ids, "scores": scores}))
"""


@pytest.mark.slow
def test_ivf_scan_answers_alike_with_another_form_of_the_dot() -> None:
    """This CPU's form of the dot (VNNI, AVX2 or the loop) and the next one down, compiled for a CPU that has
    only that (an AVX2 one without VNNI, or a generic x86 one for the plain loop): the same keys."""
    def run(**env: str) -> dict:
        done = subprocess.run([sys.executable, "-c", _FALLBACK], env=dict(os.environ, **env), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    here = run()
    assert here["form"] == [int8_dot.HAS_VNNI, int8_dot.HAS_AVX2]
    if int8_dot.HAS_VNNI and int8_dot.HAS_AVX2:
        other = run(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx2")
        assert other["form"] == [False, True]
    else:
        other = run(NUMBA_CPU_NAME="generic")
        assert other["form"] == [False, False]
    assert other["ids"] == here["ids"] and other["scores"] == here["scores"]
