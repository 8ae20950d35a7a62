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

    check(300, 64, 5, 10, True, 0)     # the brief's case: a few hundred items, d=64, k=10
    check(200, 48, 3, 1, True, 1)      # d not a power of two (zero-padded), k=1
    check(40, 16, 17, 64, True, 2)     # k > N, more queries than one tile of 16
    for k in (10, 40, 500):            # the torch fallback, incl. k > N
        check(300, 64, 5, k, False, 3)
    check(70000, 16, 5, 100, False, 4)  # the fallback over two blocks of rows
    print("KERNEL-OK")
""")


def _interpreted(script: str, marker: str, timeout: float = 300) -> None:
    """Runs ``script`` in a fresh interpreter with TRITON_INTERPRET=1; it must exit 0 and print ``marker``."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0 and marker in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_triton_kernel_and_fallback_match_exact_search():
    _interpreted(_SCRIPT, "KERNEL-OK")


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
    for k, use_kernel in ((8, True), (32, True), (8, False), (300, False)):
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
