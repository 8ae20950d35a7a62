"""IVF with a tail: rows appended after the build (``items add``) belong to no list, and every IVF search scans
them besides its probed lists, so a new item is never missed while the lists wait for a rebuild."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_ann_filters import _reference as brute_force

from widefunnel.ann import filters
from widefunnel.ann.index import IndexLoadError, Int8Index, IvfLists, build_index, load_index, save_index
from widefunnel.ann.ivf import ivf_search
from widefunnel.ann.plan import plan_search
from widefunnel.ann.quantize import quantize_checked_rows, quantize_rows
from widefunnel.ann.query import search
from widefunnel.ann.search import exact_search
from widefunnel.sharding import merge_topk, split_index

FP = "tower-tail"
D, N0, ADD, L = 16, 3000, 200, 8


def _grow(index: Int8Index, x: np.ndarray, ids: np.ndarray) -> Int8Index:
    """``index`` with rows for ``x`` appended as ``items add`` does: quantised like ``build_index``, the IVF
    centroids and offsets left as built (so the new rows are the tail)."""
    codes, scales, _ = quantize_checked_rows(np.ascontiguousarray(x, np.float32))
    manifest = dict(index.manifest, count=index.count + len(x))
    ivf = IvfLists(centroids=index.ivf.centroids.copy(), offsets=index.ivf.offsets.copy())
    return Int8Index(codes=np.ascontiguousarray(np.concatenate([index.codes, codes])),
                     scales=np.concatenate([index.scales, scales]),
                     ids=np.concatenate([index.ids, np.asarray(ids, np.int64)]), manifest=manifest, ivf=ivf)


@pytest.fixture(scope="module")
def grown() -> tuple[Int8Index, np.ndarray, np.ndarray]:
    """(index with a 200-row tail, the tail's embeddings, queries)."""
    rng = np.random.default_rng(0)
    all_ids = rng.permutation(10 * (N0 + ADD))[:N0 + ADD].astype(np.int64)
    base = build_index(rng.standard_normal((N0, D)).astype(np.float32), all_ids[:N0], FP, ivf_lists=L)
    new = rng.standard_normal((ADD, D)).astype(np.float32)
    new *= 8 / np.linalg.norm(new, axis=1, keepdims=True)  # longer than any base row: each is its own best match
    index = _grow(base, new, all_ids[N0:])
    assert index.ivf.tail_start == N0 and index.count == N0 + ADD
    return index, new, rng.standard_normal((9, D)).astype(np.float32)


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Bit-for-bit equality of (ids, scores)."""
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1].view(np.int32), b[1].view(np.int32))


def _probed(index: Int8Index, queries: np.ndarray, nprobe: int) -> list[np.ndarray]:
    """Rows each query may return, by the documented rule: its ``nprobe`` best lists (int8 centroid scores,
    lower list first on ties) and the tail."""
    qc, qs = quantize_rows(queries)
    cc, cs = quantize_rows(index.ivf.centroids)
    s = ((qc.astype(np.int64) @ cc.astype(np.int64).T).astype(np.float32) * cs[None, :]) * qs[:, None]
    offs, tail = index.ivf.offsets, np.arange(index.ivf.tail_start, index.count)
    out = []
    for i in range(len(queries)):
        lists = np.lexsort((np.arange(len(cs)), -s[i]))[:nprobe]
        out.append(np.concatenate([np.arange(offs[j], offs[j + 1]) for j in lists] + [tail]))
    return out


def _reference(index: Int8Index, queries: np.ndarray, k: int, rows: list[np.ndarray] | None = None,
               mask: np.ndarray | None = None, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The filters' brute force (as ``exact_search`` scores, lower row first on ties) over ``rows`` (per query;
    None: all) the ``mask`` admits (None: all), the excluded id dropped."""
    admitted = np.ones((len(queries), index.count), bool) if mask is None else mask
    return brute_force(index, queries, k, admitted, exclude, rows)


def test_probing_every_list_is_the_exact_search_over_all_rows(grown):
    index, new, q = grown
    queries = np.concatenate([q, new[:3]])
    for k in (10, N0 + ADD):
        want = exact_search(index, queries, k)
        assert _same(want, _reference(index, queries, k))
        assert _same(ivf_search(index, queries, k, nprobe=L), want)


def test_a_tail_item_is_found_with_one_probe(grown):
    index, new, _ = grown
    tail_ids = index.ids[N0:N0 + 20]
    assert np.array_equal(exact_search(index, new[:20], 1)[0][:, 0], tail_ids)  # each is its own best match
    ids, _ = ivf_search(index, new[:20], 5, nprobe=1)
    assert np.array_equal(ids[:, 0], tail_ids)
    # the probed lists alone (no tail) never hold it: only scanning the tail finds it
    lists_only = [r[r < N0] for r in _probed(index, new[:20], 1)]
    assert not np.isin(tail_ids, _reference(index, new[:20], 5, rows=lists_only)[0]).any()


@pytest.mark.parametrize("nprobe, k", [(1, 10), (3, 100), (5, 2000)])
def test_ivf_with_a_tail_is_brute_force_over_the_probed_lists_and_the_tail(grown, nprobe, k):
    index, new, q = grown
    queries = np.concatenate([q, new[:4]])
    excl = np.where(np.arange(len(queries)) % 3 == 0, index.ids[np.arange(len(queries)) * 211], -1)
    excl[-1] = index.ids[N0 + 3]  # the tail row the last query equals
    plan = plan_search(index, queries, k, excl, nprobe)
    assert plan.ivf.probes.shape == (len(queries), nprobe + 1) and (plan.ivf.probes[:, -1] == L).all()
    got = ivf_search(index, queries, k, nprobe=nprobe, exclude_ids=excl)
    assert _same(got, _reference(index, queries, k, rows=_probed(index, queries, nprobe), exclude=excl))
    for i in (0, len(queries) - 1):  # batch invariant: a query alone gets its row of the batch
        alone = ivf_search(index, queries[i:i + 1], k, nprobe=nprobe, exclude_ids=excl[i:i + 1])
        assert _same(alone, (got[0][i:i + 1], got[1][i:i + 1]))


@pytest.mark.parametrize("share", [0.1, 0.6])  # the bitmap walk and the streamed scan
def test_filters_and_exclusions_apply_to_tail_rows(grown, share):
    index, new, q = grown
    queries = np.concatenate([q[:3], new[:5]])
    rng = np.random.default_rng(int(share * 10))
    mask = rng.random((len(queries), index.count)) < share
    mask[3:, N0:N0 + 5] = True  # the tail rows the queries equal are admissible ...
    excl = np.full(len(queries), -1, np.int64)
    excl[3:5] = index.ids[N0:N0 + 2]  # ... but two are excluded
    allow = filters.pack_rows(mask)
    for nprobe in (1, 4):
        got = ivf_search(index, queries, 50, nprobe=nprobe, exclude_ids=excl, allow=allow)
        want = _reference(index, queries, 50, rows=_probed(index, queries, nprobe), mask=mask, exclude=excl)
        assert _same(got, want)
        assert not (got[0][3:5] == excl[3:5, None]).any()
        assert np.array_equal(got[0][5:, 0], index.ids[N0 + 2:N0 + 5])
    only_tail = np.zeros_like(mask)
    only_tail[:, N0:] = True
    ids, _ = ivf_search(index, queries, ADD + 5, nprobe=1, allow=filters.pack_rows(only_tail))
    assert np.isin(ids[:, :ADD], index.ids[N0:]).all() and (ids[:, ADD:] == -1).all()


def test_an_index_with_a_tail_saves_and_loads(grown, tmp_path: Path):
    index, new, q = grown
    save_index(index, tmp_path)
    loaded = load_index(tmp_path, FP)
    assert loaded.count == N0 + ADD and loaded.ivf.tail_start == N0
    for nprobe in (1, L):
        assert _same(search(loaded, q, 20, nprobe=nprobe), search(index, q, 20, nprobe=nprobe))


def test_offsets_past_the_rows_are_refused_by_name(grown, tmp_path: Path):
    index, _, _ = grown
    bad = IvfLists(centroids=index.ivf.centroids, offsets=np.append(index.ivf.offsets[:-1], index.count + 1))
    save_index(Int8Index(index.codes, index.scales, index.ids, dict(index.manifest), bad), tmp_path)
    with pytest.raises(IndexLoadError, match=r"ivf_offsets\.npy: must start at 0, end at or below count=3200"):
        load_index(tmp_path)


def test_shards_of_an_index_with_a_tail_merge_to_its_ivf_answer(grown):
    """A shard's clipped offsets end at its part of the tail, which it scans as its own tail: the shards'
    probed rows together are the whole index's."""
    index, new, q = grown
    queries = np.concatenate([q[:4], new[:2]])
    want = search(index, queries, 30, nprobe=2)
    for shards in (2, 3):
        parts = split_index(index, shards)
        got = [search(p.index, queries, 30, nprobe=2) for p in parts]
        merged = merge_topk([g[0] for g in got], [g[1] for g in got], 30)
        assert _same((merged.ids, merged.scores), want), shards
