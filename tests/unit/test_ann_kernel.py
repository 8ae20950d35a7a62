"""The Triton GPU kernel (on CPU via the Triton interpreter) and its torch fallback vs the CPU exact search.

``TRITON_INTERPRET=1`` only takes effect if it is set before ``triton`` is first imported, so every check runs
in a fresh interpreter process; this pytest process never imports triton.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent("""
    import os, sys
    assert "triton" not in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    import torch
    from widefunnel.ann.index import build_index
    from widefunnel.ann.search import exact_search, exclude_rows
    from widefunnel.ann.triton_kernel import gpu_search, quantize_rows_torch
    from widefunnel.ann.quantize import quantize_rows

    def check(n, d, b, k, use_kernel, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, d)).astype(np.float32)
        x[10:14] = x[0]  # ties
        index = build_index(x, np.arange(n) * 7 + 3, "fp")
        q = rng.standard_normal((b, d)).astype(np.float32)
        q[1] = 0.0  # ties everywhere
        ex_ids = np.full(b, -1)
        ex_ids[0] = exact_search(index, q[:1], 1)[0][0, 0]  # exclude query 0's best hit
        ex_ids[2] = index.ids[5]
        want_ids, want_scores = exact_search(index, q, k, exclude_ids=ex_ids)
        rows, scores = gpu_search(torch.from_numpy(index.codes), torch.from_numpy(index.scales),
                                  torch.from_numpy(q), k, torch.from_numpy(exclude_rows(index, ex_ids, b)),
                                  use_kernel=use_kernel)
        rows, scores = rows.numpy(), scores.numpy()
        got_ids = np.where(rows >= 0, index.ids[np.maximum(rows, 0)], -1)
        assert np.array_equal(got_ids, want_ids), (n, d, k, use_kernel)
        assert np.array_equal(scores.view(np.int32), want_scores.view(np.int32)), (n, d, k, use_kernel)

    x = np.random.default_rng(0).standard_normal((33, 20)).astype(np.float32)
    codes, scales = quantize_rows_torch(torch.from_numpy(x))
    want_codes, want_scales = quantize_rows(x)
    assert np.array_equal(codes.numpy(), want_codes) and np.array_equal(scales.numpy(), want_scales)

    check(300, 64, 5, 10, True, 0)     # a few hundred items, d=64, k=10
    check(200, 48, 3, 1, True, 1)      # d not a power of two (the queries zero-padded, the rows masked), k=1
    check(40, 16, 17, 64, True, 2)     # k > N, more queries than one tile of 16, N under one row tile
    for k in (10, 40, 500):            # the kernel at any k (incl. k > N), and the torch fallback
        check(300, 32, 5, k, True, 3)
        check(300, 64, 5, k, False, 3)
    check(70000, 16, 5, 100, False, 4)  # the fallback over two blocks of rows
    print("KERNEL-OK")
""")


# The kernel's one pass, bar and rescan (issue 31), each case against the CPU int8 path key for key: ids and
# float32 score bits, padding included. ``kernel_keys``' trace says which way each case went, so a case meant to
# force a rescan fails if it stops doing so.
_CASES = textwrap.dedent("""
    import os, sys
    assert "triton" not in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    import torch
    from widefunnel.ann import filters
    from widefunnel.ann import triton_kernel as tk
    from widefunnel.ann.index import Int8Index, build_index
    from widefunnel.ann.quantize import quantize_rows
    from widefunnel.ann.search import exact_search, exclude_rows

    def index_of(x, order=None):
        # order None: build_index's (scale-sorted) rows; else the rows exactly as given (a crafted layout)
        n = len(x)
        if order is None:
            return build_index(x, np.arange(n) * 5 + 2, "fp")
        codes, scales = quantize_rows(x)
        return Int8Index(codes=codes, scales=scales, ids=np.arange(n) * 5 + 2,
                         manifest={"dim": x.shape[1], "count": n, "tower_fingerprint": "fp"})

    def check(index, q, k, ex_ids=None, mask=None, label=""):
        # GPU kernel = CPU int8 path, key for key -> the kernel's trace
        b = len(q)
        allow = None if mask is None else filters.pack_rows(mask)
        want_ids, want_scores = exact_search(index, q, k, exclude_ids=ex_ids, allow=allow)
        ex = torch.from_numpy(exclude_rows(index, ex_ids, b))
        codes, scales = torch.from_numpy(index.codes), torch.from_numpy(index.scales)
        a = None if allow is None else torch.from_numpy(allow.view(np.int64))
        trace = tk.KernelTrace()
        rows, scores = tk.gpu_search(codes, scales, torch.from_numpy(q), k, ex, use_kernel=True, allow=a,
                                     trace=trace)
        rows, scores = rows.numpy(), scores.numpy()
        got_ids = np.where(rows >= 0, index.ids[np.maximum(rows, 0)], -1)
        assert got_ids.shape == want_ids.shape, (label, got_ids.shape, want_ids.shape)
        bad = ~((got_ids == want_ids) & (scores.view(np.int32) == want_scores.view(np.int32))).all(axis=1)
        assert not bad.any(), (label, k, np.flatnonzero(bad))
        if os.environ.get("SHOW_TRACE"):
            print(label, k, trace)
        return trace, got_ids

    rng = np.random.default_rng(31)
    d = 32

    # ties: 40 copies of one row at the top (broken by row, lower first), rows 10-13 copies of row 0, an all-zero
    # query (every score ties at 0: its buffer overflows, the rescan keeps every row)
    n = 2000
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[10:14] = x[0]
    u = rng.standard_normal(d).astype(np.float32)
    x[500:540] = 3 * u
    index = index_of(x)
    q = np.stack([u, np.zeros(d, np.float32), x[0], rng.standard_normal(d).astype(np.float32)])
    for k in (1, 10, 39, 40, 41, 100):
        trace, _ = check(index, q, k, label="ties")
    trace, _ = check(index, q[1:2], 10, label="all zero")
    # the rescan's bar is a key (score and row): the tied rows past the 10th stored one are not kept again
    assert trace.overflowed == 1 and trace.passes == 2 and 10 <= trace.final[0] <= 100, trace

    # short blocks: N not a multiple of the 256-row tile (and under one tile), every k up to and past N
    for n in (40, 257, 1000, 3001):
        xs = rng.standard_normal((n, d)).astype(np.float32)
        idx = index_of(xs)
        qs_ = rng.standard_normal((3, d)).astype(np.float32)
        ex_ids = np.array([idx.ids[n - 1], -1, idx.ids[0]])  # the last row (in the short tile) and the first
        for k in sorted({1, 7, n // 2, n - 2, n - 1, n, n + 5}):
            check(idx, qs_, k, ex_ids, label=f"short block n={n}")

    # filters (the bitmap): a selectivity per query, one admitting nothing, exclusions of admitted rows
    n, b = 3000, 18
    x = rng.standard_normal((n, d)).astype(np.float32)
    index = index_of(x)
    q = rng.standard_normal((b, d)).astype(np.float32)
    mask = rng.random((b, n)) < np.linspace(0.002, 0.9, b)[:, None]
    mask[3] = False
    ex_ids = np.where(np.arange(b) % 2 == 0, index.ids[np.argmax(mask, axis=1)], -1)
    for k in (1, 10, 300, 2000):
        trace, got = check(index, q, k, ex_ids, mask, label="filtered")
        assert (got[3] == -1).all()

    # k larger than the survivors: the filter admits exactly the sampled rows (so the bar is a real score), fewer
    # than k: the first pass leaves the query short, the rescan without a bar keeps all of them, padded
    sampled = tk.sample_rows(n).numpy()
    only = np.zeros((2, n), bool)
    only[:, sampled] = True
    k = len(sampled) + 44
    trace, got = check(index, q[:2], k, mask=only, label="k > admissible")
    assert trace.short == 2 and trace.passes == 2, trace
    assert ((got >= 0).sum(axis=1) == len(sampled)).all()

    # a misleading sample. The rows are laid out (not scale-sorted) so that the sampled ones score worst for
    # queries near u: the bar is far too low, the buffer overflows, the rescan from the k-th stored key is exact.
    # Then the sampled rows score best: the bar is too high, too few survive, the bar drops and the query rescans.
    m = len(sampled)
    base = rng.standard_normal((n, d)).astype(np.float32)
    u = rng.standard_normal(d).astype(np.float32)
    by_score = np.argsort(base @ u)
    near_u = (u + 0.05 * rng.standard_normal((4, d))).astype(np.float32)
    others = np.setdiff1d(np.arange(n), sampled)
    for label, first, ks, counter in (("sample = worst rows", by_score[:m], (1, 10, 100), "overflowed"),
                                      ("sample = best rows", by_score[::-1][:m], (1000, 1500), "short")):
        layout = np.empty_like(base)
        layout[sampled] = base[first]
        layout[others] = base[np.setdiff1d(by_score, first, assume_unique=True)]
        crafted = index_of(layout, order="as given")
        for k in ks:
            trace, _ = check(crafted, near_u, k, label=label)
            assert getattr(trace, counter) == len(near_u) and trace.passes >= 2, (label, k, trace)

    # batch invariance: each query alone equals its row of the batch (20 queries: two query tiles), with
    # exclusions and filters; and a buffer budget so small that every query is launched alone
    b = 20
    q = rng.standard_normal((b, d)).astype(np.float32)
    q[7] = q[3]
    mask = rng.random((b, n)) < 0.4
    ex_ids = np.where(np.arange(b) % 3 == 0, index.ids[rng.integers(0, n, b)], -1)
    for k in (5, 700):
        _, batch = check(index, q, k, ex_ids, mask, label="batch")
        for i in (0, 3, 7, 16, 19):
            _, alone = check(index, q[i:i + 1], k, ex_ids[i:i + 1], mask[i:i + 1], label="alone")
            assert np.array_equal(alone[0], batch[i]), (k, i)
    tk._KEY_BUDGET = 2000
    trace, _ = check(index, q, 5, ex_ids, mask, label="small budget")
    assert trace.launches >= b, trace
    print("CASES-OK")
""")


def _interpreted(script: str, marker: str, timeout: float = 300) -> None:
    """Runs ``script`` in a fresh interpreter with TRITON_INTERPRET=1; it must exit 0 and print ``marker``."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0 and marker in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_triton_kernel_and_fallback_match_exact_search():
    _interpreted(_SCRIPT, "KERNEL-OK")


def test_one_pass_bar_and_rescan_equal_the_cpu_path_in_every_case():
    """Issue 31: ties, filters, short blocks, misleading samples (both ways), k past the survivors, k = 1, k near
    N, batch invariance, small buffer budgets; each equal to the CPU int8 path key for key."""
    _interpreted(_CASES, "CASES-OK")


def test_gpu_search_validates_inputs():
    script = textwrap.dedent("""
        import torch
        from widefunnel.ann.triton_kernel import gpu_search
        codes, scales = torch.zeros((10, 8), dtype=torch.int8), torch.ones(10)
        for bad_k in (0, -1):
            try:
                gpu_search(codes, scales, torch.zeros((1, 8)), bad_k)
            except ValueError as e:
                assert "k must be" in str(e)
            else:
                raise AssertionError("k accepted")
        bad = ((torch.zeros((1, 7)), "query must have shape"), (torch.full((1, 8), float("nan")), "NaN"))
        for q, msg in bad:
            try:
                gpu_search(codes, scales, q, 3)
            except ValueError as e:
                assert msg in str(e), e
            else:
                raise AssertionError("query accepted")
        print("VALIDATE-OK")
    """)
    _interpreted(script, "VALIDATE-OK", timeout=120)


_FILTERED = textwrap.dedent("""
    import os, sys
    assert "triton" not in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    import torch
    from widefunnel.ann import filters
    from widefunnel.ann.index import build_index
    from widefunnel.ann.search import exact_search, exclude_rows
    from widefunnel.ann.triton_kernel import gpu_search

    rng = np.random.default_rng(4)
    n, d, b = 700, 32, 18
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[10:14] = x[0]
    index = build_index(x, np.arange(n) * 5 + 1, "fp")
    q = rng.standard_normal((b, d)).astype(np.float32)
    mask = rng.random((b, n)) < np.linspace(0.002, 0.6, b)[:, None]  # a selectivity per query
    mask[3] = False  # matches nothing: all padding
    ex_ids = np.where(np.arange(b) % 2 == 0, index.ids[np.argmax(mask, axis=1)], -1)
    allow = filters.pack_rows(mask)
    for k, use_kernel in ((8, True), (32, True), (300, True), (8, False), (300, False)):
        want_ids, want_scores = exact_search(index, q, k, exclude_ids=ex_ids, allow=allow)
        rows, scores = gpu_search(torch.from_numpy(index.codes), torch.from_numpy(index.scales), torch.from_numpy(q),
                                  k, torch.from_numpy(exclude_rows(index, ex_ids, b)), use_kernel=use_kernel,
                                  allow=torch.from_numpy(allow))
        rows, scores = rows.numpy(), scores.numpy()
        got_ids = np.where(rows >= 0, index.ids[np.maximum(rows, 0)], -1)
        assert np.array_equal(got_ids, want_ids), (k, use_kernel)
        assert np.array_equal(scores.view(np.int32), want_scores.view(np.int32)), (k, use_kernel)
        assert (got_ids[3] == -1).all()
    print("FILTERED-OK")
""")


def test_filtered_kernel_and_fallback_match_the_filtered_cpu_scan():
    """Issue 18 in the GPU kernel: the row bitmap is applied inside the tile, exact against the CPU scan."""
    _interpreted(_FILTERED, "FILTERED-OK")


def test_a_blocks_float_top_k_keeps_every_row_the_exact_keys_need():
    """The fallback keys only a block's float top k + slack: ties at the k-th score, refused rows and short
    blocks give the same best keys as keying every row."""
    script = textwrap.dedent("""
        import numpy as np
        import torch
        from widefunnel.ann.search import INT64_MIN, make_keys, select_top
        from widefunnel.ann.triton_kernel import _TIE_SLACK, _block_top_keys

        rng = np.random.default_rng(3)
        scores = torch.from_numpy(rng.integers(-40, 40, (6, 3000)).astype(np.float32) / 8)  # many ties
        scores[1] = 0.0  # ties everywhere: the whole block is keyed
        scores[2, 100:] = -float("inf")  # fewer admissible rows than k
        scores[3, rng.choice(3000, 2000, replace=False)] = -float("inf")
        scores[4, :] = 1.0
        scores[4, 500:500 + _TIE_SLACK + 5] = 2.0  # more ties above the k-th score than the slack
        rows = torch.arange(7, 3007)
        for k in (1, 10, 150, 2990, 3000):
            want = select_top(torch.where(scores > -float("inf"), make_keys(scores, rows), INT64_MIN), k)
            got = select_top(_block_top_keys(scores.clone(), rows, k), k)
            assert torch.equal(got, want), k
        print("BLOCK-OK")
    """)
    _interpreted(script, "BLOCK-OK")
