"""Filters inside the scan (issue 18, core): the exact top-k of the admissible rows, for any selectivity,
batch size and k, on the exact (GEMV, GEMM + offer, row-scan paths) and the IVF scan."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel.ann import filters
from widefunnel.ann import plan as plan_mod
from widefunnel.ann.index import build_index
from widefunnel.ann.ivf import ivf_search
from widefunnel.ann.quantize import quantize_rows
from widefunnel.ann.search import exact_search

FP = "tower-filters"


def _reference(index, queries, k, mask, exclude=None, rows_subset=None):
    """Brute force over the admissible rows (``mask`` [B, N] in row order), documented tie rule."""
    qc, qs = quantize_rows(queries)
    dot = (qc.astype(np.int64) @ index.codes.astype(np.int64).T).astype(np.float32)
    scores = (dot * index.scales[None, :]) * qs[:, None] + np.float32(0.0)
    n, k_out = index.count, min(k, index.count)
    ids = np.full((len(queries), k_out), -1, np.int64)
    out = np.full((len(queries), k_out), -np.inf, np.float32)
    for i in range(len(queries)):
        order = np.lexsort((np.arange(n), -scores[i]))
        keep = mask[i, order]
        if rows_subset is not None:
            keep &= np.isin(order, rows_subset[i])
        if exclude is not None:
            keep &= index.ids[order] != exclude[i]
        order = order[keep][:k_out]
        ids[i, :len(order)], out[i, :len(order)] = index.ids[order], scores[i, order]
    return ids, out


def _same(a, b) -> bool:
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1].view(np.int32), b[1].view(np.int32))


@pytest.fixture(scope="module")
def index_12k():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12000, 32)).astype(np.float32)
    x[100:130] = x[7]  # ties
    return build_index(x, rng.permutation(10**6)[:12000].astype(np.int64), FP)


def _mask(b: int, n: int, share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random((b, n)) < share
    if b > 1:
        mask[1, :] = False  # a query whose filter matches nothing: a padded empty list, not an error
    if b > 2:
        mask[2, ::64] = True  # one admissible row per chunk
    return mask


@pytest.mark.parametrize("gemv_max_batch", [1, 6])  # the threshold with an int8 GEMM / the float32 one
@pytest.mark.parametrize("batch", [1, 5, 9, 40])  # GEMV; GEMV or GEMM + offer (a sparse filter: GEMV); row scan
@pytest.mark.parametrize("share", [0.5, 0.1, 0.01, 0.001])
@pytest.mark.parametrize("k", [10, 500])
def test_filtered_exact_search_is_the_exact_top_k_of_the_admissible_rows(index_12k, monkeypatch, gemv_max_batch,
                                                                         batch, share, k):
    monkeypatch.setattr(plan_mod, "_GEMV_MAX_BATCH", gemv_max_batch)
    rng = np.random.default_rng(batch)
    q = rng.standard_normal((batch, 32)).astype(np.float32)
    mask = _mask(batch, index_12k.count, share, seed=int(share * 1000) + k)
    exclude = np.where(np.arange(batch) % 2 == 0, index_12k.ids[np.argmax(mask, axis=1)], -1)
    got = exact_search(index_12k, q, k, exclude, allow=filters.pack_rows(mask))
    assert _same(got, _reference(index_12k, q, k, mask, exclude))
    if batch > 1:
        assert (got[0][1] == -1).all()  # nothing admissible: all padding


@pytest.mark.parametrize("batch", [1, 9, 40])
@pytest.mark.parametrize("share", [0.003, 0.06, 0.2, 0.55])  # a GEMM batch scans a copy of the rows it admits
@pytest.mark.parametrize("k", [10, 500, 3000])
def test_a_filter_shared_by_the_batch_scans_a_copy_of_its_rows_and_stays_exact(index_12k, batch, share, k):
    n = index_12k.count
    rng = np.random.default_rng(batch + k)
    q = rng.standard_normal((batch, 32)).astype(np.float32)
    q[-1] = index_12k.codes[7]  # a query on the tied rows 7 and 100..129
    shared = rng.random(n) < share
    shared[[7, 100, 101, 129]] = True
    mask = np.tile(shared, (batch, 1))
    mask[0, rng.choice(np.flatnonzero(shared), 20, replace=False)] = False  # per-query exclusions ...
    if batch > 2:
        mask[1] = False  # ... one query admitting nothing ...
        mask[2] = shared & (np.arange(n) < n // 3)  # ... and one a subset, of the first rows only
    exclude = np.where(np.arange(batch) % 2 == 0, index_12k.ids[np.argmax(mask, axis=1)], -1)
    got = exact_search(index_12k, q, k, exclude, allow=filters.pack_rows(mask))
    assert _same(got, _reference(index_12k, q, k, mask, exclude))
    alone = exact_search(index_12k, q[-1:], k, exclude[-1:], allow=filters.pack_rows(mask[-1:]))
    assert _same((got[0][-1:], got[1][-1:]), alone)  # batch-invariant
    nothing = exact_search(index_12k, q, k, allow=filters.pack_rows(np.zeros_like(mask)))
    assert (nothing[0] == -1).all() and nothing[0].shape == (batch, min(k, n))  # no query admits a row


# >= 32 expected sample hits: the scan starts from a guessed bar (batches of up to 6 only from k = 4,096 on)
@pytest.mark.parametrize("k", [1000, 3000, 5000])
def test_a_guessed_bar_under_a_dense_filter_stays_exact_when_the_sample_misleads(index_12k, k):
    from widefunnel.ann.search import prepare_index

    n = index_12k.count
    sample = prepare_index(index_12k).levels.sample_rows
    rng = np.random.default_rng(k)
    q = rng.standard_normal((8, 32)).astype(np.float32)
    mask = rng.random((8, n)) < 0.5  # rows 0, 1: plain dense filters
    mask[2] = rng.random(n) < 0.1
    mask[2, sample] = True  # the sample over-represents the filter: the guess is too high, rescanned
    mask[3] = True
    mask[3, sample] = False  # no admissible sample row: no bar at all
    mask[4] = False
    mask[4, rng.choice(n, k // 2, replace=False)] = True  # fewer admissible rows than k
    mask[5] = np.arange(n) < n // 3  # the first rows only (the table is sorted by scale)
    mask[6] = np.arange(n) >= n // 2
    got = exact_search(index_12k, q, k, allow=filters.pack_rows(mask))
    assert _same(got, _reference(index_12k, q, k, mask))
    for i in (2, 4, 6):  # and batch-invariant
        alone = exact_search(index_12k, q[i:i + 1], k, allow=filters.pack_rows(mask[i:i + 1]))
        assert _same((got[0][i:i + 1], got[1][i:i + 1]), alone)


def test_a_filter_is_batch_invariant(index_12k):
    q = np.random.default_rng(0).standard_normal((24, 32)).astype(np.float32)
    mask = _mask(24, index_12k.count, 0.1, seed=3)
    whole = exact_search(index_12k, q, 50, allow=filters.pack_rows(mask))
    for i in (0, 2, 17):
        alone = exact_search(index_12k, q[i:i + 1], 50, allow=filters.pack_rows(mask[i:i + 1]))
        assert _same((whole[0][i:i + 1], whole[1][i:i + 1]), alone)


def test_an_all_admitting_filter_equals_no_filter(index_12k):
    q = np.random.default_rng(1).standard_normal((20, 32)).astype(np.float32)
    full = filters.pack_rows(np.ones((20, index_12k.count), bool))
    assert _same(exact_search(index_12k, q, 3000, allow=full), exact_search(index_12k, q, 3000))


def test_ivf_filtered_is_the_top_k_of_the_probed_lists_admissible_rows():
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((32, 16)).astype(np.float32)
    x = (centers[rng.integers(0, 32, 4000)] + 0.4 * rng.standard_normal((4000, 16))).astype(np.float32)
    index = build_index(x, np.arange(4000) * 3, FP, ivf_lists=16, seed=0)
    q = (centers[rng.integers(0, 32, 6)] + 0.4 * rng.standard_normal((6, 16))).astype(np.float32)
    mask = _mask(6, index.count, 0.2, seed=9)
    got = ivf_search(index, q, 40, nprobe=3, allow=filters.pack_rows(mask))
    # the probed lists' rows: what the unfiltered IVF search can return at k = N
    probed = [np.flatnonzero(np.isin(index.ids, row[row >= 0])) for row in ivf_search(index, q, index.count, 3)[0]]
    assert _same(got, _reference(index, q, 40, mask, rows_subset=probed))


def test_bitmaps_pack_and_refuse_by_name():
    mask = np.random.default_rng(0).random((3, 130)) < 0.5
    packed = filters.pack_rows(mask)
    assert packed.shape == (3, 3) and packed.dtype == np.uint64
    assert np.array_equal(filters.unpack_rows(packed, 130), mask)
    rows = np.array([0, 5, 64, 129])
    assert np.array_equal(filters.unpack_rows(filters.subset(packed, rows), 4), mask[:, rows])
    with pytest.raises(ValueError, match="allow"):
        exact_search(build_index(np.ones((130, 4), np.float32), np.arange(130), FP), np.ones((3, 4), np.float32), 5,
                     allow=packed[:, :2])


def _movielens_like(row_ids: np.ndarray):
    """Genres a, b, c and release years by id (40: no genre, unknown year), as a MovieLens build writes them."""
    from widefunnel.field_filters import genre_year_fields

    years = np.zeros(51, np.int64)
    years[[10, 20, 30, 50]] = [1990, 2001, 1995, 1980]
    return genre_year_fields({10: ("a",), 20: ("b",), 30: ("a", "c"), 40: (), 50: ("c",)}, years, ("a", "b", "c"),
                             51)


def _tokens(**modes) -> np.ndarray:
    """{"any": codes, "none": codes} of the genre field (slot 0) -> one packed FIELD_TOKENS row [1, T]."""
    from widefunnel.field_filters import ANY_OF, NONE_OF, pack_token

    parts = [pack_token(0, {"any": ANY_OF, "none": NONE_OF}[m], np.asarray(c)) for m, c in modes.items()]
    return np.concatenate(parts)[None] if parts else np.full((1, 1), -1, np.int64)


def _ranges(low: float = -np.inf, high: float = np.inf) -> np.ndarray:
    return np.array([[low, high]], np.float32)


def test_request_filters_become_the_admissible_rows():
    """MovieLens' genre and year are field filters like any other: any of / none of a genre, an inclusive year
    range that an unknown year (0, stored as NaN) never matches, exclusions beside them."""
    from widefunnel.ann.filters import RowFields, request_bitmap

    row_ids = np.array([30, 10, 50, 20, 40])  # an index's row order
    rows = RowFields(_movielens_like(row_ids), row_ids)

    def rows_of(x):
        return np.vectorize(lambda i: int(np.flatnonzero(row_ids == i)[0]) if i in row_ids else -1)(x)

    def admitted(exclude_ids=None, tokens=None, ranges=None):
        allow = request_bitmap(5, rows_of, exclude_ids, rows, tokens, ranges)
        return None if allow is None else set(row_ids[filters.unpack_rows(allow, 5)[0]].tolist())

    assert admitted() is None and admitted(exclude_ids=np.array([[-1]])) is None  # nothing to filter
    assert admitted(tokens=_tokens(), ranges=_ranges()) is None  # every side open: no filter either
    assert admitted(tokens=_tokens(any=[1])) == {10, 30}
    assert admitted(tokens=_tokens(any=[1, 2], none=[3])) == {10, 20}
    assert admitted(ranges=_ranges(1985, 2000)) == {10, 30}  # unknown year (40) does not match a range
    assert admitted(ranges=_ranges(high=1990)) == {10, 50}  # nor an open one
    assert admitted(ranges=_ranges(), exclude_ids=np.array([[50, 99, -1]])) == {10, 20, 30, 40}
    with pytest.raises(ValueError, match="no item fields table"):
        request_bitmap(5, rows_of, None, None, _tokens(any=[1]), None)


def test_a_head_filter_ands_the_request_with_the_taken_down_rows(tmp_path):
    from widefunnel.ann.filters import HeadFilter

    row_ids = np.array([30, 10, 50, 20, 40])
    _movielens_like(row_ids).save(tmp_path / "fields")
    taken = [np.zeros(0, np.int64)]

    def rows_of(x):
        return np.vectorize(lambda i: int(np.flatnonzero(row_ids == i)[0]) if i in row_ids else -1)(x)

    head = HeadFilter(row_ids, rows_of, tmp_path / "fields", lambda: taken[0])
    assert head.allow(2) is None  # nothing filtered, nothing taken down: the unfiltered scan
    taken[0] = np.array([10])
    assert set(row_ids[filters.unpack_rows(head.allow(2), 5)[1]].tolist()) == {20, 30, 40, 50}
    allow = head.allow(1, field_tokens=_tokens(any=[1]))
    assert set(row_ids[filters.unpack_rows(allow, 5)[0]].tolist()) == {30}  # genre "a" less the taken-down 10
    old = HeadFilter(row_ids, rows_of, tmp_path / "absent", lambda: taken[0])  # a build without fields
    assert set(row_ids[filters.unpack_rows(old.allow(1, exclude_ids=np.array([[50]])), 5)[0]].tolist()) == {20, 30, 40}
    with pytest.raises(ValueError, match="no item fields table"):
        old.allow(1, field_tokens=_tokens(any=[1]))


def test_filter_validation_names_the_field():
    from widefunnel.field_filters import genre_year_fields
    from widefunnel.validation import RequestError, RequestLimits, validate_filters

    limits = RequestLimits(np.arange(1, 10), 0.5, 10, 100, np.ones(4, np.float32), 100, 1000, 3)
    schema = genre_year_fields({1: ("Comedy",)}, np.zeros(2), ("Comedy", "Drama"), 2).schema()
    ok = validate_filters(limits, schema, 2, {"include_genre": np.array([[b"Drama", b"Drama"], [b"Comedy", b"Drama"]],
                                                                         object)})
    assert [sorted(r[r >= 0].tolist()) for r in ok.field_tokens] == [[2, 2], [1, 2]]  # slot 0, any of: the codes
    assert (ok.exclude_ids == -1).all()
    for tensors, field in (({"include_genre": np.array([[b"Opera"]] * 2, object)}, "include_genre: unknown value"),
                           ({"exclude_item_id": np.ones((2, 4), np.int64)}, "exclude_item_id"),
                           ({"exclude_item_id": np.full((2, 1), -3)}, "exclude_item_id"),
                           ({"min_year": np.full((2, 1), 2000, np.float32),
                             "max_year": np.full((2, 1), 1990, np.float32)}, "min_year, max_year: empty range")):
        with pytest.raises(RequestError, match=field):
            validate_filters(limits, schema, 2, tensors)


@pytest.mark.parametrize("n", [1, 64, 65, 130, 5000])
def test_union_rows_lists_the_rows_some_query_admits(n):
    rng = np.random.default_rng(n)
    for share in (0.0, 0.01, 0.5, 1.0):
        mask = rng.random((3, n)) < share
        allow = filters.pack_rows(mask)
        if n % 64:
            allow[:, -1] |= np.uint64(1) << np.uint64(63)  # bits past the last row are ignored
        assert np.array_equal(filters.union_rows(allow, n), np.flatnonzero(mask.any(axis=0)))
        assert np.array_equal(filters.union_rows(allow[:1], n), np.flatnonzero(mask[0]))
