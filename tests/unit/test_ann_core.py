"""ANN core: quantisation, exact int8 search (exactness, batch invariance, exclusion, blocking), IVF, I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import widefunnel.ann.plan as plan_mod
import widefunnel.ann.search as search_mod
from widefunnel.ann.index import IndexLoadError, build_index, load_index, save_index
from widefunnel.ann.ivf import ivf_search
from widefunnel.ann.quantize import dequantize_rows, quantize_checked_rows, quantize_rows
from widefunnel.ann.query import search
from widefunnel.ann.search import exact_search

FP = "tower-abc123"


def _data(n: int, d: int, seed: int = 0, dup: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if dup:  # exact duplicates force score ties, so tie-breaking is exercised
        x[n // 4: n // 4 + 20] = x[0]
    return x, rng.permutation(10 * n)[:n].astype(np.int64)


def _queries(b: int, d: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, d)).astype(np.float32)


def _reference(index, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Independent brute force with the documented semantics: score (float32(dot) * s_i) * s_q (-0.0 as
    +0.0), best first, lower row first on ties, excluded id dropped, padding id -1 / score -inf."""
    qc, qs = quantize_rows(queries)
    dot = (qc.astype(np.int64) @ index.codes.astype(np.int64).T).astype(np.float32)
    scores = (dot * index.scales[None, :]) * qs[:, None] + np.float32(0.0)  # -0.0 is reported as +0.0
    n, k_out = index.count, min(k, index.count)
    ids = np.full((len(queries), k_out), -1, np.int64)
    out = np.full((len(queries), k_out), -np.inf, np.float32)
    for i in range(len(queries)):
        order = np.lexsort((np.arange(n), -scores[i]))
        if exclude is not None:
            order = order[index.ids[order] != exclude[i]]
        order = order[:k_out]
        ids[i, :len(order)], out[i, :len(order)] = index.ids[order], scores[i, order]
    return ids, out


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Bit-for-bit equality of (ids, scores)."""
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1].view(np.int32), b[1].view(np.int32))


@pytest.fixture(scope="module")
def index_20k():
    x, ids = _data(20000, 64, dup=True)
    return build_index(x, ids, FP)


@pytest.fixture(scope="module")
def ivf_index():
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((64, 32)).astype(np.float32)
    x = (centers[rng.integers(0, 64, 6000)] + 0.4 * rng.standard_normal((6000, 32))).astype(np.float32)
    q = (centers[rng.integers(0, 64, 24)] + 0.4 * rng.standard_normal((24, 32))).astype(np.float32)
    return build_index(x, np.arange(6000) * 3, FP, ivf_lists=32, seed=0), q


# ------------------------------------------------------------------------------------------- quantisation
@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 40)),
              elements=st.floats(-1e6, 1e6, width=32)))
def test_quantize_round_trip_error_is_at_most_half_a_step(x):
    codes, scales = quantize_rows(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert codes.min() >= -127 and (scales > 0).all()
    err = np.abs(dequantize_rows(codes, scales) - x)
    assert (err <= scales[:, None] * (0.5 + 1e-5) + 1e-30).all()


_F32_BIG = float(np.float32(3.4e38))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 40)),
              elements=st.floats(-_F32_BIG, _F32_BIG, width=32, allow_subnormal=True)))
def test_the_compiled_query_quantiser_is_bit_identical(x):
    """``quantize_checked_rows`` (the query path's) and ``quantize_rows`` agree bit for bit on finite rows,
    halves that round to even, subnormal and huge values included; rows holding NaN or inf are flagged."""
    halves = (np.arange(-254, 255, dtype=np.float32) / 2).reshape(1, -1)
    for rows in (x, halves, np.zeros((2, 3), np.float32), x * np.float32(1e-38)):
        want, got = quantize_rows(rows), quantize_checked_rows(rows)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1].view(np.int32), got[1].view(np.int32))
        assert got[2].all()
    bad = np.ones((4, 5), np.float32)
    bad[1, 3], bad[3, 0] = np.nan, -np.inf
    assert quantize_checked_rows(bad)[2].tolist() == [True, False, True, False]


def test_quantize_zero_rows_get_scale_one():
    codes, scales = quantize_rows(np.zeros((2, 5), np.float32))
    assert (codes == 0).all() and (scales == 1).all()


def test_quantize_is_per_row():
    x = _queries(6, 16)
    codes, scales = quantize_rows(x)
    c1, s1 = quantize_rows(x[2:3])
    assert np.array_equal(codes[2:3], c1) and np.array_equal(scales[2:3], s1)


# ----------------------------------------------------------------------------------------------- exact
def test_exact_search_recall_vs_float32_brute_force(index_20k):
    x, _ = _data(20000, 64, dup=True)
    q = _queries(20, 64)
    ids, scores = exact_search(index_20k, q, 100)
    assert ids.shape == (20, 100) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert (np.diff(scores, axis=1) <= 0).all()
    exact_rows = np.argsort(-(q @ x.T), axis=1)[:, :100]
    _, ids_by_input_row = _data(20000, 64, dup=True)
    recall = np.mean([len(set(ids[i]) & set(ids_by_input_row[exact_rows[i]])) / 100 for i in range(20)])
    assert recall >= 0.98, recall


@pytest.mark.parametrize("k", [1, 10, 100, 1000, 5000])
def test_exact_search_matches_reference_including_ties(index_20k, k):
    q = _queries(6, 64, seed=k)
    q[1] = 0.0  # every score ties
    x, _ = _data(20000, 64, dup=True)
    q[2] = x[0]  # the duplicated rows tie at the top
    assert _same(exact_search(index_20k, q, k), _reference(index_20k, q, k))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 300), d=st.integers(1, 24), b=st.integers(0, 5), k=st.integers(1, 320),
       block=st.sampled_from([1, 64, 100, 262144]), seed=st.integers(0, 2**16))
def test_exact_search_matches_reference_random_shapes(n, d, b, k, block, seed):
    x, ids = _data(n, d, seed=seed)
    index = build_index(np.round(x * 4) / 4, ids, FP)  # coarse values: plenty of ties
    q = np.round(_queries(b, d, seed=seed + 1) * 2) / 2
    excl = np.where(np.arange(b) % 2 == 0, ids[np.arange(b) % n], -1) if b else None
    assert _same(exact_search(index, q, k, exclude_ids=excl, block_rows=block), _reference(index, q, k, excl))


def test_batch_invariance_exact(index_20k):
    q = _queries(32, 64, seed=7)
    for k in (100, 4000):  # 4000 also takes the sampled-threshold path
        batch = exact_search(index_20k, q, k)
        for i in (0, 13, 31):
            alone = exact_search(index_20k, q[i:i + 1], k)
            assert _same(alone, (batch[0][i:i + 1], batch[1][i:i + 1]))
        assert _same(exact_search(index_20k, q[5:9], k), (batch[0][5:9], batch[1][5:9]))


def test_exclusion_drops_only_that_id(index_20k):
    q = _queries(4, 64, seed=9)
    top = exact_search(index_20k, q, 10)[0]
    excl = np.array([top[0, 0], -1, top[2, 5], 123456789])  # best hit, none, a mid hit, unknown id
    ids, scores = exact_search(index_20k, q, 10, exclude_ids=excl)
    assert excl[0] not in ids[0] and excl[2] not in ids[2]
    assert np.array_equal(ids[1], top[1]) and np.array_equal(ids[3], top[3])
    assert np.array_equal(ids[0, :9], top[0, 1:]) and _same((ids, scores), _reference(index_20k, q, 10, excl))


def test_k_equal_and_above_n_returns_everything():
    x, ids = _data(500, 16)
    index = build_index(x, ids, FP)
    q = _queries(3, 16)
    full = exact_search(index, q, 500)
    assert full[0].shape == (3, 500) and all(set(r) == set(ids) for r in full[0])
    assert _same(exact_search(index, q, 10_000), full)
    ex_ids, ex_scores = exact_search(index, q, 500, exclude_ids=np.array([ids[0], -1, -1]))
    assert ex_ids[0, -1] == -1 and ex_scores[0, -1] == -np.inf and ids[0] not in ex_ids[0]
    assert np.array_equal(ex_ids[1], full[0][1])


def test_blocked_equals_unblocked(index_20k):
    q = _queries(5, 64, seed=11)
    whole = exact_search(index_20k, q, 300, block_rows=10**7)
    for block in (64, 1000, 4096):
        assert _same(exact_search(index_20k, q, 300, block_rows=block), whole)


def test_float_gemm_path_is_identical(index_20k, monkeypatch):
    """Without an exact int8 GEMM (or on GPU) the integer-valued float32 GEMM must give the same bits."""
    q = _queries(8, 64, seed=12)
    wide = _queries(40, 64, seed=13)  # 40 queries at k = 2,000: the row-wise filter (16-lane masks)
    want, want_wide = exact_search(index_20k, q, 50), exact_search(index_20k, wide, 2000)
    monkeypatch.setattr(plan_mod, "int_mm_is_exact", lambda: False)
    assert _same(exact_search(index_20k, q, 50), want)
    assert _same(exact_search(index_20k, wide, 2000), want_wide)


def test_empty_batch(index_20k):
    ids, scores = exact_search(index_20k, np.zeros((0, 64), np.float32), 7)
    assert ids.shape == (0, 7) and scores.shape == (0, 7)


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "10"])
def test_bad_k_is_rejected(index_20k, k):
    with pytest.raises(ValueError, match="k must be"):
        exact_search(index_20k, _queries(1, 64), k)


@pytest.mark.parametrize("q", [np.zeros((2, 63), np.float32), np.zeros(64, np.float32),
                               np.zeros((1, 2, 64), np.float32)])
def test_bad_query_shape_is_rejected(index_20k, q):
    with pytest.raises(ValueError, match="query must have shape"):
        exact_search(index_20k, q, 5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_query_is_rejected(index_20k, bad):
    q = _queries(3, 64)
    q[1, 7] = bad
    with pytest.raises(ValueError, match=r"query rows \[1\] contain NaN or inf"):
        exact_search(index_20k, q, 5)


def test_bad_nprobe_is_rejected(ivf_index, index_20k):
    index, q = ivf_index
    for nprobe in (0, -1, 1.5):
        with pytest.raises(ValueError, match="nprobe must be"):
            search(index, q, 5, nprobe=nprobe)
    with pytest.raises(ValueError, match="nprobe must be"):
        search(index_20k, _queries(2, 64), 5, nprobe=0)  # checked even without IVF


def test_bad_exclude_ids_are_rejected(index_20k):
    with pytest.raises(ValueError, match="exclude_ids"):
        exact_search(index_20k, _queries(2, 64), 5, exclude_ids=np.array([1, 2, 3]))


# ------------------------------------------------------------------------------------------------- IVF
def test_ivf_recall_rises_with_nprobe_and_is_exact_at_l(ivf_index):
    index, q = ivf_index
    exact = exact_search(index, q, 50)
    recalls = []
    for nprobe in (1, 2, 4, 8, 16, 32):
        ids, scores = search(index, q, 50, nprobe=nprobe)
        assert (np.diff(np.where(np.isinf(scores), -3e38, scores), axis=1) <= 0).all()
        recalls.append(np.mean([len(set(ids[i]) & set(exact[0][i])) / 50 for i in range(len(q))]))
    assert all(b >= a for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[0] < 0.95 and recalls[-1] == 1.0
    assert _same(search(index, q, 50, nprobe=32), exact)
    assert _same(search(index, q, 50, nprobe=10**6), exact)  # clipped to L


def test_ivf_results_are_exact_within_probed_lists(ivf_index):
    """IVF ranks the probed lists' rows exactly like the exact scan ranks them (same keys, same scores)."""
    index, q = ivf_index
    ids, scores = ivf_search(index, q[:4], 20, nprobe=3, exclude_ids=np.array([-1, 0, -1, 3]))
    full_ids, full_scores = exact_search(index, q[:4], index.count)
    for i in range(4):
        pos = {v: j for j, v in enumerate(full_ids[i])}
        js = [pos[v] for v in ids[i] if v >= 0]
        assert js == sorted(js) and np.array_equal(full_scores[i, js], scores[i, :len(js)])


def test_batch_invariance_ivf(ivf_index):
    index, q = ivf_index
    batch = search(index, q, 30, nprobe=4)
    for i in (0, 11, 23):
        assert _same(search(index, q[i:i + 1], 30, nprobe=4), (batch[0][i:i + 1], batch[1][i:i + 1]))


def test_ivf_pads_when_probed_lists_are_short(ivf_index):
    index, q = ivf_index
    ids, scores = search(index, q[:2], 5000, nprobe=1)
    assert ids.shape == (2, 5000) and (ids[:, -1] == -1).all() and np.isneginf(scores[:, -1]).all()


def _reference_probes(index, queries: np.ndarray, nprobe: int) -> list[set[int]]:
    """Lists a query probes, by the documented rule: int8 centroid scores, lower list first on ties."""
    qc, qs = quantize_rows(queries)
    cc, cs = quantize_rows(index.ivf.centroids)
    s = ((qc.astype(np.int64) @ cc.astype(np.int64).T).astype(np.float32) * cs[None, :]) * qs[:, None]
    n_lists = len(cs)
    return [set(np.lexsort((np.arange(n_lists), -s[i]))[:nprobe].tolist()) for i in range(len(queries))]


@pytest.mark.parametrize("nprobe, k", [(1, 10), (3, 100), (7, 2000)])
def test_ivf_equals_brute_force_over_the_probed_lists(ivf_index, nprobe, k):
    """IVF = the exact ranking restricted to the rows of the lists the reference probing picks."""
    index, q = ivf_index
    excl = np.where(np.arange(len(q)) % 3 == 0, index.ids[np.arange(len(q)) * 7], -1)
    ids, scores = ivf_search(index, q, k, nprobe=nprobe, exclude_ids=excl)
    full_ids, full_scores = _reference(index, q, index.count, excl)
    list_of_row = np.repeat(np.arange(index.ivf.n_lists), np.diff(index.ivf.offsets))
    row_of_id = {v: r for r, v in enumerate(index.ids)}
    for i, probed in enumerate(_reference_probes(index, q, nprobe)):
        keep = [j for j, v in enumerate(full_ids[i]) if v >= 0 and list_of_row[row_of_id[v]] in probed][:k]
        want_ids = np.full(k, -1, np.int64)
        want_scores = np.full(k, -np.inf, np.float32)
        want_ids[:len(keep)], want_scores[:len(keep)] = full_ids[i, keep], full_scores[i, keep]
        assert _same((ids[i], scores[i]), (want_ids, want_scores)), i


def test_thread_count_does_not_change_results(index_20k, ivf_index):
    """Work is split by thread count (row segments at batch 1, query groups above): results must not move."""
    import torch

    before = torch.get_num_threads()
    q = _queries(5, 64, seed=21)
    index, qi = ivf_index
    try:
        torch.set_num_threads(1)
        one = [exact_search(index_20k, q[:b], k) for b in (1, 2, 5) for k in (7, 3000)]
        one_ivf = [search(index, qi[:b], 40, nprobe=5) for b in (1, 5)]
        torch.set_num_threads(2)
        two = [exact_search(index_20k, q[:b], k) for b in (1, 2, 5) for k in (7, 3000)]
        two_ivf = [search(index, qi[:b], 40, nprobe=5) for b in (1, 5)]
    finally:
        torch.set_num_threads(before)
    assert all(_same(a, b) for a, b in zip(one + one_ivf, two + two_ivf))


@pytest.mark.parametrize("batch, k", [(16, 3000), (2, 5000), (1, 5000)])  # the GEMM path twice; the fused GEMV
def test_a_wrong_threshold_guess_is_rescanned(index_20k, monkeypatch, batch, k):
    """Large k starts from a guessed bar; a query whose guess is too high must be rescanned, not truncated."""
    q = _queries(batch, 64, seed=22)
    want = _reference(index_20k, q, k)
    real = search_mod._starting_bars
    forced = []

    def too_high(cache, *args):
        bars, guessed = real(cache, *args)
        if cache is not index_20k.prepared.levels:  # the sample's own bars (a level down): left alone
            return bars, guessed
        assert guessed  # k of 20,000 takes the guessed path
        bars[-2:] = np.iinfo(np.int64).max  # above every key: nothing would be kept without the rescan
        forced.append(True)
        return bars, guessed

    monkeypatch.setattr(search_mod, "_starting_bars", too_high)
    assert _same(exact_search(index_20k, q, k), want)
    assert forced


def test_sample_levels_and_their_rescans_are_exact(monkeypatch):
    """A large index samples its sample too (starting bars for the sample scan); at k = 12,000 of 60,000 the
    sample's own bar is a guess. Forced too high at either level, the rescans still give the exact result."""
    x, ids = _data(60000, 16, seed=9)
    index = build_index(x, ids, FP)
    q = _queries(16, 16, seed=23)  # GEMM chunks (of 8): batches of up to 6 skip the sample bar below k = 4,096
    want = _reference(index, q, 12000)
    assert _same(exact_search(index, q, 12000), want)
    assert index.prepared.levels.sample.sample is not None
    real = search_mod._starting_bars
    for level in (index.prepared.levels, index.prepared.levels.sample):
        forced: list[bool] = []

        def too_high(cache, *args, level=level, forced=forced):
            bars, guessed = real(cache, *args)
            if cache is level:
                assert guessed
                bars[1:] = np.iinfo(np.int64).max
                forced.append(True)
            return bars, guessed

        monkeypatch.setattr(search_mod, "_starting_bars", too_high)
        assert _same(exact_search(index, q, 12000), want)
        assert forced


def test_self_excluded_item_to_item_search_is_exact():
    """Item-to-item retrieval excludes the seed, which is its own best match: a starting bar must not count
    it (a review found 126 of 4,000 k = 1 queries padded with -1 before the fix)."""
    x, ids = _data(4000, 16, seed=3)
    index = build_index(x, ids, FP)
    rows = np.arange(0, 4000, 16)  # includes rows the 1-in-16 sample holds
    for k in (1, 2, 5, 40):
        got = exact_search(index, x[rows], k, exclude_ids=ids[rows])
        assert _same(got, _reference(index, x[rows], k, ids[rows])), k
        assert (got[0] >= 0).all()


def test_the_excluded_best_row_of_the_first_group_is_not_a_bar():
    x = np.array([[1, 1]] + [[1, -1]] * 7 + [[1, 0.5]] + [[1, -1]] * 7, np.float32)
    index = build_index(x, np.arange(16, dtype=np.int64), FP)
    q = np.array([[0.0, 1.0]], np.float32)
    got = exact_search(index, q, 2, exclude_ids=np.array([0]))
    assert _same(got, _reference(index, q, 2, np.array([0]))) and got[0].tolist() == [[8, 1]]


def test_extreme_magnitudes_stay_exact():
    """Bounds must hold for tiny item scales with negative dots (no clamped 1 / s_min) and for subnormal
    scores (an absolute, not relative, rounding margin); -0.0 is reported as +0.0 and ties with it."""
    rng = np.random.default_rng(0)
    tiny = ((-np.ones(8) + 0.5 * rng.standard_normal((3000, 8))) * 1e-29).astype(np.float32)
    index = build_index(tiny, np.arange(3000, dtype=np.int64), FP)
    q = np.ones((1, 8), np.float32)
    for k in (1, 10, 100):
        assert _same(exact_search(index, q, k), _reference(index, q, k)), k
    sub = (rng.standard_normal((20000, 8)) * np.exp(rng.uniform(-1, 1, (20000, 1))) * 1e-26).astype(np.float32)
    index = build_index(sub, np.arange(20000, dtype=np.int64), FP)
    q = (rng.standard_normal((8, 8)) * 1e-20).astype(np.float32)
    for k in (1, 300, 3000):
        assert _same(exact_search(index, q, k), _reference(index, q, k)), k
    signed_zero = build_index(np.array([[-1e-30], [1e-30]], np.float32), np.arange(2, dtype=np.int64), FP)
    ids, scores = exact_search(signed_zero, np.array([[1e-20]], np.float32), 2)
    assert ids.tolist() == [[0, 1]] and not np.signbit(scores).any()


@pytest.mark.parametrize("row_scan", [True, False])
def test_both_block_filters_are_exact(index_20k, monkeypatch, row_scan):
    """Blocks are filtered row-wise (wide batches, large k) or by 8/64-row maxima: both must be exact."""
    monkeypatch.setattr(plan_mod, "_ROW_SCAN_BATCH", 1 if row_scan else 10**9)
    x, ids = _data(20000, 64, dup=True)
    q = np.concatenate([_queries(127, 64, seed=31), x[:3]])  # 130 queries, three of them stored items
    q[5] = 0.0
    excl = np.full(130, -1)
    excl[127:] = ids[:3]  # the stored items exclude themselves
    for k in (1, 100, 2500):
        got = exact_search(index_20k, q, k, exclude_ids=excl, block_rows=4096)
        assert _same(got, _reference(index_20k, q, k, excl)), k


@pytest.mark.parametrize("threads", [1, 2])
def test_row_filter_segments_compact_exactly(index_20k, monkeypatch, threads):
    """The row-wise filter splits rows between threads, each with its own reservoirs; with no starting bar
    and tiny reservoirs they fill and compact over and over, and the merged result must still be exact."""
    import torch

    monkeypatch.setattr(plan_mod, "_ROW_SCAN_BATCH", 1)
    monkeypatch.setattr(plan_mod, "_RESERVOIR_SLACK", 8)
    monkeypatch.setattr(search_mod, "_starting_bars", lambda *args: (None, False))
    x, ids = _data(20000, 64, dup=True)
    q = np.concatenate([_queries(37, 64, seed=41), x[:3]])
    excl = np.full(40, -1)
    excl[37:] = ids[:3]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in (1, 7, 300):
            got = exact_search(index_20k, q, k, exclude_ids=excl, block_rows=1024)
            assert _same(got, _reference(index_20k, q, k, excl)), k
    finally:
        torch.set_num_threads(old)


def test_sort_desc_matches_numpy():
    from widefunnel.ann.kernels import sort_desc

    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 1023, 1024, 5000, 70000):
        a = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
        if n > 3:
            a[:3] = [-(2**63), 2**63 - 1, 0]
        assert np.array_equal(sort_desc(a), np.sort(a)[::-1])
    shared = (np.int64(0x3F000000) << 32) + rng.permutation(4096).astype(np.int64)  # constant high digits
    assert np.array_equal(sort_desc(shared), np.sort(shared)[::-1])
    # few scores, many rows each: equal-score runs are ordered by their row half
    few = (rng.integers(-3, 4, 9000).astype(np.int64) << 32) + rng.integers(0, 2**32, 9000)
    assert np.array_equal(sort_desc(few), np.sort(few)[::-1])


# -------------------------------------------------------------------------------------------- index I/O
@pytest.fixture()
def saved(tmp_path, ivf_index) -> Path:
    save_index(ivf_index[0], tmp_path / "idx")
    return tmp_path / "idx"


def test_save_load_round_trip(saved, ivf_index):
    index, q = ivf_index
    loaded = load_index(saved, expected_fingerprint=FP)
    for name in ("codes", "scales", "ids"):
        assert np.array_equal(getattr(loaded, name), getattr(index, name))
    assert np.array_equal(loaded.ivf.centroids, index.ivf.centroids)
    assert np.array_equal(loaded.ivf.offsets, index.ivf.offsets)
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format"] == "widefunnel-int8-index" and manifest["format_version"] == 1
    assert manifest["count"] == 6000 and manifest["dim"] == 32 and manifest["ivf_lists"] == 32
    assert _same(search(loaded, q, 10, nprobe=4), search(index, q, 10, nprobe=4))
    assert _same(exact_search(loaded, q, 10), exact_search(index, q, 10))


def _rewrite_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_load_refuses_corrupted_file(saved):
    path = saved / "codes.npy"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexLoadError, match=r"codes\.npy: sha256 mismatch"):
        load_index(saved)


def test_load_refuses_truncated_file(saved):
    path = saved / "scales.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IndexLoadError, match=r"scales\.npy: size .* \(truncated"):
        load_index(saved)


def test_load_refuses_missing_file(saved):
    (saved / "ivf_offsets.npy").unlink()
    with pytest.raises(IndexLoadError, match=r"ivf_offsets\.npy: missing"):
        load_index(saved)


@pytest.mark.parametrize("changes, pattern", [
    ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
    ({"dim": "32"}, r"field 'dim'.*expected int, got str"),
    ({"count": True}, r"field 'count'.*expected int, got bool"),
    ({"format": "faiss"}, r"field 'format'"),
    ({"format_version": 2}, r"field 'format_version'"),
    ({"metric": "l2"}, r"field 'metric'"),
    ({"quantization": "int4"}, r"field 'quantization'"),
    ({"count": 5999}, r"ids\.npy|codes\.npy: shape"),
    ({"dim": 31}, r"codes\.npy: shape"),
    ({"ivf_lists": 0}, r"field 'files'"),
    ({"files": {}}, r"field 'files'"),
])
def test_load_refuses_bad_manifest(saved, changes, pattern):
    _rewrite_manifest(saved, **changes)
    with pytest.raises(IndexLoadError, match=pattern):
        load_index(saved)


def test_load_refuses_missing_manifest_key(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    del manifest["tower_fingerprint"]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match=r"missing key\(s\) \['tower_fingerprint'\]"):
        load_index(saved)


def test_load_refuses_invalid_json(saved):
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(IndexLoadError, match="not valid JSON"):
        load_index(saved)


def test_load_refuses_fingerprint_mismatch(saved):
    with pytest.raises(IndexLoadError, match=r"tower_fingerprint.*'tower-abc123' does not match .*'other'"):
        load_index(saved, expected_fingerprint="other")


def test_load_refuses_duplicate_ids(tmp_path):
    x, ids = _data(100, 8)
    index = build_index(x, ids, FP)
    index.ids[5] = index.ids[6]  # corrupt in memory, then save with valid checksums
    save_index(index, tmp_path)
    with pytest.raises(IndexLoadError, match=r"ids\.npy: duplicate ids"):
        load_index(tmp_path)


def test_load_refuses_pickled_array(tmp_path):
    x, ids = _data(50, 8)
    save_index(build_index(x, ids, FP), tmp_path)
    with open(tmp_path / "ids.npy", "wb") as f:
        np.save(f, np.array([object()] * 50), allow_pickle=True)
    from widefunnel.ann.index import _sha256

    entry = {"sha256": _sha256(tmp_path / "ids.npy"), "bytes": (tmp_path / "ids.npy").stat().st_size}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["ids.npy"] = entry
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match=r"ids\.npy: not a plain \.npy array"):
        load_index(tmp_path)


def test_build_rejects_bad_input():
    x, ids = _data(10, 4)
    with pytest.raises(ValueError, match="duplicate ids"):
        build_index(x, np.zeros(10, np.int64), FP)
    with pytest.raises(ValueError, match="NaN or inf"):
        build_index(np.full((10, 4), np.nan, np.float32), ids, FP)
    with pytest.raises(ValueError, match="ids must be >= 0"):
        build_index(x, ids - 10**6, FP)
    with pytest.raises(ValueError, match="metric"):
        build_index(x, ids, FP, metric="cosine")


def test_dequantized_lookup_by_id_and_zero_for_padding():
    from widefunnel.ann.quantize import dequantize_rows
    from widefunnel.ann.search import dequantized

    x = np.random.default_rng(3).standard_normal((50, 8)).astype(np.float32)
    index = build_index(x, np.arange(100, 150, dtype=np.int64), "fp")
    got = dequantized(index, np.array([[100, 149, -1]], np.int64))
    row = {int(i): r for r, i in enumerate(index.ids)}
    want = dequantize_rows(index.codes, index.scales)
    np.testing.assert_array_equal(got[0, 0], want[row[100]])
    np.testing.assert_array_equal(got[0, 1], want[row[149]])
    assert got.shape == (1, 3, 8) and (got[0, 2] == 0).all()


@pytest.mark.parametrize("ids", [np.arange(1, 3001), np.random.default_rng(1).permutation(3000) + 1,
                                 np.sort(np.random.default_rng(2).choice(2**40, 3000, replace=False))])
def test_rows_of_answers_alike_from_the_dense_table_and_the_sorted_ids(ids):
    from widefunnel.ann.prepared import PreparedIndex

    rng = np.random.default_rng(0)
    ids = ids.astype(np.int64)
    asked = np.concatenate([ids[rng.integers(0, len(ids), 500)], [-1, 0, int(ids.max()) + 1, 2**50]])
    table = PreparedIndex.id_lookup(ids)
    assert (table is None) == (ids.max() > 10**6)  # sparse ids keep the sorted lookup
    row = {int(i): r for r, i in enumerate(ids)}
    want = [row.get(int(i), -1) for i in asked]
    for lookup in (table, None):
        prepared = PreparedIndex(None, None, ids, lookup)
        np.testing.assert_array_equal(prepared.rows_of(asked), want)


def test_the_mapped_item_rows_answer_as_the_built_lookup(tmp_path):
    """An ANN step maps the build's `item_rows` (0 where an id has no row) instead of building its own table:
    every id, present, absent, negative or past the table, gets the same row (or -1); a map that sends an id to
    another row is refused, naming the file."""
    from widefunnel.ann.index import IndexLoadError, build_index, item_rows, load_row_map
    from widefunnel.ann.prepared import PreparedIndex
    from widefunnel.ann.search import prepare_index

    rng = np.random.default_rng(3)
    ids = np.sort(rng.choice(np.arange(1, 5000), 1200, replace=False)).astype(np.int64)
    x = rng.standard_normal((len(ids), 8)).astype(np.float32)
    index = build_index(x, ids, "ab", ivf_lists=4)
    path = tmp_path / "item_rows.npy"
    np.save(path, item_rows(index, 5000))
    load_row_map(index, path)
    asked = np.concatenate([ids, np.setdiff1d(np.arange(5000), ids)[:300], [-1, 5000, 2**40]])
    built = PreparedIndex(None, None, index.ids, PreparedIndex.id_lookup(index.ids))
    np.testing.assert_array_equal(prepare_index(index).rows_of(asked), built.rows_of(asked))
    assert prepare_index(index).row_of_id is index.row_map  # mapped, not a copy

    wrong = item_rows(index, 5000)
    wrong[ids[5]], wrong[ids[6]] = wrong[ids[6]], wrong[ids[5]]
    np.save(path, wrong)
    with pytest.raises(IndexLoadError, match="item_rows.npy.*not its row"):
        load_row_map(build_index(x, ids, "ab"), path)
    np.save(path, item_rows(index, 5000)[:100])
    with pytest.raises(IndexLoadError, match="do not cover"):
        load_row_map(build_index(x, ids, "ab"), path)


def test_row_order_is_the_lexsort_by_list_descending_scale_and_row():
    """The index's row order, one stable sort of an int64 key, equals the lexsort it replaced, ties included
    (scales drawn from a few values, a subnormal among them)."""
    from widefunnel.ann.index import _row_order

    rng = np.random.default_rng(0)
    scales = rng.choice(np.array([0.5, 0.25, 1e-40, 3.0, 7.1], np.float32), 20000)
    lists = rng.integers(0, 50, 20000)
    np.testing.assert_array_equal(_row_order(scales, lists), np.lexsort((np.arange(20000), -scales, lists)))
    np.testing.assert_array_equal(_row_order(scales, None), np.lexsort((np.arange(20000), -scales)))
