"""A search's plan: every choice the scan makes, made once per call, before any row is read.

A search used to decide as it went: the entry point validated and quantised, each level of the scan measured
its filter, chose GEMV or GEMM or a compacted copy and its starting bars, and the values travelled as 9 to 16
loose arguments between ``search.py``, ``filters.py`` and ``kernels.py``. Here ``plan_search`` builds one
``SearchPlan`` (the query batch, its bitmap, the chunks, IVF's probes) and a ``ScanPlan`` per chunk and level
(path, bars, block sizes); the stages (``search.scan``, ``ivf.scan_lists``) only read them. The choices pick
how fast a scan runs, never what it returns: every path is exact, so results are bit-for-bit those of any
other plan.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import torch

from widefunnel.ann import filters, kernels
from widefunnel.ann.index import Int8Index
from widefunnel.ann.prepared import CHUNK, IvfTables, PreparedIndex, SampledTable
from widefunnel.ann.quantize import QMAX, quantize_checked_rows, quantize_rows

MAX_BLOCK_ROWS = 262144  # default cap on item rows per scan block (``exact_search(block_rows=)``)
_BLOCK_ELEMS = 1 << 19  # item rows x queries of one int32 score block (2 MiB)
_GEMV_MAX_BATCH: int | None = None  # batches this small scan with the fused GEMV (``search._gemv_scan``), a pass
# per query; wider ones take one GEMM per block. None: by the GEMM this host runs (``gemv_max_batch``)
_GEMV_MAX_BATCH_INT8 = 1  # with torch's int8 GEMM (a host with VNNI; `bench_wide.py crossover`, 1M x 32, 2 threads,
# k = 100 / 10,000, GEMV vs GEMM ms): batch 1 2.5 / 2.7 vs 3.1 / 3.2, batch 2 4.0 / 4.7 vs 2.8 / 3.7, batch 8
# 14.8 / 17.4 vs 4.2 / 6.9
_GEMV_MAX_BATCH_FLOAT = 6  # with the exact float32 GEMM (the AVX2 host without VNNI, 2026-11-24: 1M x 64,
# batch 4 10.0 vs 14.9 ms, batch 6 15.4 vs 21.2, batch 8 18.4 vs 16.1)
_GEMV_BAR_K = 4096  # the fused GEMV starts from a sample bar only from this k on: below it the bar's scan costs
# more than the keys it spares (1M x 64, batch 1, no bar vs bar: k = 100 3.5 vs 4.2 ms, 1,000 3.8 vs 4.4, 4,000
# 4.9 vs 5.0, 6,000 5.5 vs 5.2, 10,000 6.4 vs 5.1; at 50 % and 10 % admitted alike; d = 32 alike)
_SPARSE_FILTER = 0.05  # a filter admitting less than this share of the rows scans only those (``search._gemv_scan``)
WALK_FILTER = 0.25  # the fused GEMV reads only the admissible rows of a filter admitting less than this share;
# a denser one is streamed (every row read, the bitmap checked for rows that beat the bar): see ``ivf_scan``
_COMPACT_FILTER = 0.6  # a GEMM batch whose filters together admit less than this share scans a copy of those rows
_COMPACT_BYTES = 256 << 20  # ... unless the copy would be larger (a 10M x 32 index at 60 %: 192 MB)
_ROW_SCAN_BATCH = 16  # batches this wide filter their blocks row-wise (see ``search._scan_table``)
_RESERVOIR_SLACK = 1024  # a reservoir holds max(2k, k + slack) keys before it is compacted to k
_RESERVOIR_KEYS = 1 << 25  # query rows x reservoir width, int64 (256 MiB) before the batch is split
_LIST_READ_COST = 3  # a row read from memory costs about 3 of its scorings from cache (10M x 32, 2 threads:
# 29 GB/s streamed from memory against 81 GB/s scored in cache)


# ----------------------------------------------------------------------------------------------- validation
def validate_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def validate_nprobe(nprobe: int) -> int:
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise ValueError(f"nprobe must be an integer >= 1, got {nprobe!r}")
    return int(nprobe)


def invalid_query_rows(queries: np.ndarray) -> np.ndarray:
    """Indices of rows holding NaN/inf, so a caller can reject single requests before batching them."""
    q = np.asarray(queries)
    if q.ndim < 1 or q.shape[0] == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(~np.isfinite(q.reshape(q.shape[0], -1)).all(axis=1))


def validate_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """-> contiguous float32 [B, dim]; ValueError naming ``query`` on a wrong rank/dim/dtype. Values are checked
    where they are quantised (``quantize_queries``), in the same pass."""
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query must have shape [B, {dim}], got {list(q.shape)}")
    if q.dtype != np.float32:
        if not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)):
            raise ValueError(f"query must be a float array, got dtype {q.dtype}")
        with np.errstate(over="ignore"):
            q = q.astype(np.float32)
    return np.ascontiguousarray(q)


def quantize_queries(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float32 queries -> (codes, scales); ValueError naming ``query`` rows holding NaN or inf."""
    codes, scales, finite = quantize_checked_rows(q)
    if not finite.all():
        raise ValueError(f"query rows {np.flatnonzero(~finite)[:8].tolist()} contain NaN or inf "
                         "(after float32 conversion)")
    return codes, scales


def excluded_rows(prepared: PreparedIndex, exclude_ids: np.ndarray | None, batch: int) -> np.ndarray:
    """Map per-query excluded item ids (-1 = none) to row indices (-1 = none / unknown id)."""
    if exclude_ids is None:
        return np.full(batch, -1, np.int64)
    ex = np.asarray(exclude_ids)
    if ex.size != batch or ex.ndim > 2 or not np.issubdtype(ex.dtype, np.integer):
        raise ValueError(f"exclude_ids must be an integer array of shape [{batch}], "
                         f"got {ex.dtype} {list(ex.shape)}")
    return prepared.rows_of(ex.reshape(batch))


# ------------------------------------------------------------------------------ which GEMM, which threads
@functools.cache
def int_mm_is_exact() -> bool:
    """Self-test ``torch._int_mm`` on worst-case operands at several shapes.

    On CPUs without VNNI, int8 GEMM kernels may saturate 16-bit pair sums; if any probe disagrees with an
    exact reference we use the (slower) exact float32 path instead. Cached: runs once per process.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    rng = np.random.default_rng(0)
    try:
        shapes = ((1, 64, 64), (2, 67, 8), (17, 1000, 128), (32, 4096, 64), (256, 130, 1024), (5, 9, 1024))
        for m, n, d in shapes:
            pats = [np.full((1, d), QMAX), np.full((1, d), -QMAX), np.resize([QMAX, -QMAX], (1, d))]
            q = np.concatenate(pats + [rng.integers(-QMAX, QMAX + 1, (m, d))])[:m].astype(np.int8)
            c = np.concatenate(pats + [rng.integers(-QMAX, QMAX + 1, (n, d))])[:n].astype(np.int8)
            got = torch._int_mm(torch.from_numpy(q), torch.from_numpy(c).T).numpy()
            if not np.array_equal(got, q.astype(np.int64) @ c.astype(np.int64).T):
                return False
    except RuntimeError:
        return False
    return True


@functools.cache
def int_mm_is_fast() -> bool:
    """Whether ``torch._int_mm`` beats the exact float32 GEMM on a block of the scan's shape here (once per
    process). With AVX-512 VNNI it runs at ~270 GOP/s; on an AVX2-only host oneDNN's int8 path measured 3 to 4
    GOP/s against 28 to 93 GFLOP/s for sgemm, so there the scan takes the float32 path (exact all the same)."""
    if not int_mm_is_exact():
        return False
    rng = np.random.default_rng(1)
    c = torch.from_numpy(rng.integers(-QMAX, QMAX + 1, (8192, 64)).astype(np.int8))
    q_t = torch.from_numpy(rng.integers(-QMAX, QMAX + 1, (64, 32)).astype(np.int8))

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return best(lambda: torch._int_mm(c, q_t)) <= best(lambda: c.float() @ q_t.float())


def use_int_mm(t: torch.Tensor) -> bool:
    """Whether a GEMM over ``t`` runs torch's int8 one (else the exact float32 one)."""
    # d < 8: oneDNN misreads c.T strides
    return t.device.type == "cpu" and t.shape[1] >= 8 and int_mm_is_fast()  # fast implies exact


def gemv_max_batch(codes: torch.Tensor) -> int:
    """The widest batch the fused GEMV scans (a pass per query) before one GEMM per block over ``codes`` pays:
    1 where that GEMM is torch's int8 one (``use_int_mm``), 6 on its exact float32 fallback
    (``_GEMV_MAX_BATCH_*``)."""
    if _GEMV_MAX_BATCH is not None:
        return _GEMV_MAX_BATCH
    return _GEMV_MAX_BATCH_INT8 if use_int_mm(codes) else _GEMV_MAX_BATCH_FLOAT


def kernel_threads() -> int:
    """Kernel threads = torch's (OMP_NUM_THREADS in a Triton stub), so numba never oversubscribes the cores."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


# ------------------------------------------------------------------------------------------- memory bounds
def reservoir_width(kk: int) -> int:
    """max(2k, k + slack) keys, padded to an odd number of 64-byte lines: with a stride that is a multiple of
    4 KiB every reservoir's tail maps to one cache set, and appends to many reservoirs evict each other."""
    lines = -(-max(2 * kk, kk + _RESERVOIR_SLACK) // 8)
    return 8 * (lines | 1)


def query_chunk(batch: int, kk: int, per_query: int = 1) -> int:
    """Largest query chunk whose reservoirs (b x ``per_query`` x width int64: a reservoir per thread) stay
    under the memory cap. Only the cap splits a batch: cut into chunks of batch / threads queries (as this once
    did), a batch of 8 took the per-query GEMV in two chunks of 4 instead of one GEMM (1M x 32, k = 10,000: 31
    vs 11 ms)."""
    b = max(1, batch)
    while b > 1 and b * per_query * reservoir_width(kk) > _RESERVOIR_KEYS:
        b = (b + 1) // 2
    return b


def scan_block_rows(n: int, b: int, block_rows: int = MAX_BLOCK_ROWS) -> int:
    """Item rows per block of a scan of ``n`` rows for ``b`` queries: an int32 block of about
    ``_BLOCK_ELEMS``, at most ``block_rows``, a multiple of 64."""
    rows = min(block_rows, max(CHUNK, _BLOCK_ELEMS // b), -(-n // CHUNK) * CHUNK)
    return max(CHUNK, rows // CHUNK * CHUNK)


@functools.lru_cache(maxsize=64)
def _spans(n: int, rows: int, n_seg: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The fused GEMV's spans of ``n`` rows as IVF lists -> (offsets, each query's "probes": all of them);
    cached, being the same for every request of a shape. Shared: never written (left writable, since numba
    compiles a read-only array argument as another type, which ``kernels.warm_up`` would not have compiled)."""
    span = max(CHUNK, min(rows, -(-n // (8 * n_seg * CHUNK)) * CHUNK))
    offsets = np.append(np.arange(0, n, span, dtype=np.int64), np.int64(n))
    probes = np.tile(np.arange(len(offsets) - 1, dtype=np.int64), (b, 1))
    return offsets, probes


def positions_in(rows: np.ndarray, excl: np.ndarray) -> np.ndarray:
    """Each query's excluded row (-1: none) -> its position in ``rows`` (ascending), -1 where it is not there."""
    pos = np.minimum(np.searchsorted(rows, excl), len(rows) - 1)
    return np.where((excl >= 0) & (rows[pos] == excl), pos, -1)


# --------------------------------------------------------------------------------------------- preparation
def prepare_index(index: Int8Index) -> PreparedIndex:
    """The index's search-time form (``PreparedIndex``), built once (torch views, id lookup, 64-row scale
    bounds, row samples, int8 centroids), and the int8 GEMM self-test and kernel compiles run, so the first
    request is not slow. Idempotent; a server calls it right after ``load_index``."""
    if index.prepared is not None:
        return index.prepared
    codes = np.asarray(index.codes)
    ids = np.ascontiguousarray(index.ids, dtype=np.int64)
    ivf = None
    if index.ivf is not None:
        ccodes, cscales = quantize_rows(index.ivf.centroids)
        offsets = np.ascontiguousarray(index.ivf.offsets, dtype=np.int64)
        if offsets[-1] < len(ids):  # rows added after the build: list L, the tail (``IvfTables``)
            offsets = np.append(offsets, np.int64(len(ids)))
        ivf = IvfTables(ccodes, cscales, offsets)
    prepared = PreparedIndex(SampledTable.of(codes, np.ascontiguousarray(index.scales, dtype=np.float32)), codes,
                             ids, PreparedIndex.id_lookup(ids) if index.row_map is None else index.row_map, ivf)
    int_mm_is_fast()
    kernels.warm_up()
    index.prepared = prepared
    return prepared


# ------------------------------------------------------------------------------------------------ the plans
@dataclass(frozen=True)
class BarPlan:
    """Where a scan's starting bars come from: the scan of its table's row sample (``plan``, ``bar_only``),
    whose j-th best key per query is the bar. ``guessed``: j was scaled from k (a statistical guess, so a query
    it leaves short is rescanned); else j = k and the bar is safe."""

    plan: ScanPlan
    guessed: bool


@dataclass(frozen=True)
class ScanPlan:
    """One exact scan of one row table (a level of ``SampledTable``) for a batch of queries, decided up front
    (the rules that were ``scan_keys``' own; ``search.scan`` runs it). ``path``: "gemv" (the fused GEMV, query
    by query: a small batch or a sparse filter), "gemm" (one GEMM per block, ``gemm`` "int8" or "float32") or
    "compacted" (the batch's filters admit few rows: scan a copy of ``union``, planned when it is made)."""

    levels: SampledTable
    qc: torch.Tensor  # int8 [b, d] query codes (torch: the GEMM's operand; ``.numpy()`` for the GEMV)
    qs: np.ndarray  # float32 [b] query scales
    excl: np.ndarray  # int64 [b]: each query's excluded row of this table (-1: none)
    allow: np.ndarray  # uint64 [b, W] row bitmap, [b, 0] for none
    k: int  # the k asked of this table (the copy of a compacted scan is asked the same)
    kk: int  # min(k, rows): the keys kept per query
    path: Literal["gemv", "gemm", "compacted"]
    gemm: Literal["int8", "float32"]
    estimate: bool  # take starting bars from ``bars`` (a compacted plan: whether its copy's scan may)
    bars: BarPlan | None  # None: the first block gives safe bars (or the GEMV's own rising bar)
    union: np.ndarray | None  # "compacted": the rows (int64, ascending) some query of the batch admits
    bar_only: bool  # keep only the kk-th key per query (a sample scan for the level above)
    row_scan: bool  # the GEMM path filters its blocks row-wise (wide batches)
    walk: bool  # the GEMV reads only admissible rows (a sparse filter), else streams them all
    block_rows: int  # item rows per GEMM block
    max_block_rows: int  # the caller's cap on a block, for the plans of a copy or a rescan
    n_seg: int  # reservoirs (row segments, one per thread) per query
    width: int  # keys per reservoir
    spans: tuple[np.ndarray, np.ndarray] | None  # "gemv": (row span offsets, each query's spans), cached


@dataclass(frozen=True)
class SharedLists:
    """A query chunk's probes turned list-major (``kernels.ivf_scan_shared``): each probed list once, with the
    chunk's queries that probe it, and the lists cut into ``n_seg`` runs of about equal cost."""

    lists: np.ndarray  # int64 [U]: the distinct probed lists, ascending (rows in address order)
    list_ptr: np.ndarray  # int64 [U + 1]: list j's queries are list_queries[list_ptr[j]:list_ptr[j + 1]]
    list_queries: np.ndarray  # int64: query indices within the chunk
    segments: np.ndarray  # int64 [n_seg + 1]: work item s scans lists[segments[s]:segments[s + 1]]


@dataclass(frozen=True)
class IvfPlan:
    """IVF over a query batch: the probed lists per query and how each query's reservoirs split them."""

    probes: np.ndarray  # int64 [B, nprobe], or [B, nprobe + 1] ending with the tail list L
    walk: bool
    n_seg: int
    width: int
    shared: tuple[SharedLists, ...] | None = None  # per query chunk, when the lists are streamed (not walked)


def shared_lists(probes: np.ndarray, list_rows: np.ndarray, n_seg: int) -> SharedLists:
    """List-major form of ``probes`` [b, P] (distinct lists per row): a list costs its rows once to read and
    once per query to score (``_LIST_READ_COST`` scorings to read one), and the runs split that cost evenly."""
    width = probes.shape[1]
    flat = probes.reshape(-1)
    order = np.argsort(flat, kind="stable")  # by list, then by query
    lists, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    cost = np.cumsum(list_rows[lists] * (_LIST_READ_COST + counts))
    cuts = np.searchsorted(cost, cost[-1] * np.arange(1, n_seg) / n_seg, side="right") if len(cost) else \
        np.zeros(n_seg - 1, np.int64)
    return SharedLists(lists.astype(np.int64), np.append(starts, len(flat)).astype(np.int64),
                       (order // max(1, width)).astype(np.int64),
                       np.concatenate([[0], cuts, [len(lists)]]).astype(np.int64))


@dataclass(frozen=True)
class SearchPlan:
    """One search call: the validated, quantised batch, its bitmap and its chunks (reservoir memory cap), with
    a ``ScanPlan`` per chunk for the exact scan or an ``IvfPlan`` for IVF."""

    prepared: PreparedIndex
    qc: torch.Tensor  # int8 [B, d]
    qs: np.ndarray  # float32 [B]
    excl: np.ndarray  # int64 [B]
    allow: np.ndarray  # uint64 [B, W] / [B, 0]
    k_out: int  # min(k, N)
    chunks: tuple[slice, ...]  # query chunks, scanned one after another (none for an empty batch)
    scans: tuple[ScanPlan, ...]  # the exact scan: one per chunk; empty for IVF
    ivf: IvfPlan | None


def plan_search(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
                nprobe: int | None = None, allow: np.ndarray | None = None, block_rows: int = MAX_BLOCK_ROWS
                ) -> SearchPlan:
    """The plan of one search: exact when ``nprobe`` is None, the index has no IVF or ``nprobe`` covers every
    list (then the exact scan is what IVF would return), else IVF over ``nprobe`` lists. ValueError naming
    the argument on any invalid input, in the order the callers always checked them. An index with rows
    added after the build probes its tail too (list L, every query), so IVF never misses a new item."""
    prepared = prepare_index(index)
    ivf = prepared.ivf
    if nprobe is not None:
        nprobe = validate_nprobe(nprobe)
    if nprobe is None or ivf is None or nprobe >= len(ivf.centroid_scales):
        ivf = None
    k = validate_k(k)
    q = validate_queries(queries, prepared.codes.shape[1])
    batch, n = q.shape[0], prepared.codes.shape[0]
    excl = excluded_rows(prepared, exclude_ids, batch)
    codes, qs = quantize_queries(q)
    qc = torch.from_numpy(codes)
    if ivf is None and (not isinstance(block_rows, (int, np.integer)) or block_rows < 1):
        raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    allow = filters.check_allow(allow, batch, n)
    k_out = min(k, n)
    threads = kernel_threads()
    if ivf is not None:
        probes = (kernels.probe(codes, qs, ivf.centroid_codes, ivf.centroid_scales, nprobe)
                  if batch else np.zeros((0, nprobe), np.int64))
        if ivf.has_tail:
            probes = np.concatenate([probes, np.full((batch, 1), len(ivf.centroid_scales), np.int64)], axis=1)
        probes = np.ascontiguousarray(probes)
        walk = filters.admitted_share(allow) < WALK_FILTER
        # walked: a query's admissible rows are its own, so each query walks its lists (in n_seg runs);
        # streamed: each list is read once for the queries probing it, the lists cut in a run per thread
        n_seg = max(1, min(threads // max(1, batch), probes.shape[1])) if walk else threads
        chunks = _chunks(batch, k_out, n_seg)
        list_rows = np.diff(ivf.offsets)
        shared = None if walk else tuple(shared_lists(probes[sl], list_rows, n_seg) for sl in chunks)
        plan = IvfPlan(probes, walk, n_seg, reservoir_width(k_out), shared)
        return SearchPlan(prepared, qc, qs, excl, allow, k_out, chunks, (), plan)
    chunks = _chunks(batch, k_out, threads)  # a query may hold a reservoir per thread
    scans = tuple(plan_scan(prepared.levels, qc[sl], qs[sl], excl[sl], allow[sl], k_out, block_rows)
                  for sl in chunks)
    return SearchPlan(prepared, qc, qs, excl, allow, k_out, chunks, scans, None)


def _chunks(batch: int, k_out: int, per_query: int) -> tuple[slice, ...]:
    step = query_chunk(batch, k_out, per_query)
    return tuple(slice(b0, b0 + step) for b0 in range(0, batch, step))


def plan_scan(levels: SampledTable, qc: torch.Tensor, qs: np.ndarray, excl: np.ndarray, allow: np.ndarray, k: int,
              max_block_rows: int, estimate: bool = True, bar_only: bool = False) -> ScanPlan:
    """The exact scan of ``levels``' table for these queries -> its plan (and, recursively, its sample's for the
    starting bars). ``estimate``: starting bars from the sample may be taken; ``bar_only``: only the kk-th key
    per query is wanted (a sample scan). Also re-plans a rescan (``rescan``) and plans a compacted copy (``copied``)."""
    threads = kernel_threads()
    table = levels.table
    b, n = qc.shape[0], table.codes_t.shape[0]
    kk = min(k, n)
    # a sparse filter's scan reads only its admissible rows: a bar from the row sample would cost more than it saves
    share = filters.admitted_share(allow)
    sparse = share < _SPARSE_FILTER
    gemv_batch = gemv_max_batch(table.codes_t)
    gemm = "int8" if use_int_mm(table.codes_t) else "float32"
    union, bars = None, None
    if b > gemv_batch and share < _COMPACT_FILTER and not bar_only:
        rows = filters.union_rows(allow, n)
        # sparse filters walk their own rows query by query: copied only when the batch shares them (a union
        # at most half their sum), so the copy's one GEMM replaces b walks
        small = len(rows) < _COMPACT_FILTER * n and len(rows) * table.codes_t.shape[1] <= _COMPACT_BYTES
        if small and len(rows) and (not sparse or 2 * len(rows) <= b * share * n):
            union = rows
    if union is not None:
        path = "compacted"
    else:
        estimate = estimate and not sparse and (b > gemv_batch or kk >= _GEMV_BAR_K)
        bars = _bar_plan(levels, qc, qs, excl, allow, kk, max_block_rows) if estimate else None
        path = "gemv" if b <= gemv_batch or sparse else "gemm"
    rows_per_block = scan_block_rows(n, b, max_block_rows)
    spans = _spans(n, rows_per_block, threads, b) if path == "gemv" else None
    return ScanPlan(levels, qc, qs, excl, allow, k, kk, path, gemm, estimate, bars, union, bar_only,
                    b >= _ROW_SCAN_BATCH, share < WALK_FILTER, rows_per_block, max_block_rows, threads,
                    reservoir_width(kk), spans)


def _bar_plan(levels: SampledTable, qc: torch.Tensor, qs: np.ndarray, excl: np.ndarray, allow: np.ndarray,
              kk: int, max_block_rows: int) -> BarPlan | None:
    """Starting bars from a scan of the 1-in-16 row sample (rows are scale-sorted, so it is stratified), or
    None where there is no sample or it is too small for k. Without a bar the first rows all survive until k
    are seen.

    * small k: the k-th best sampled score. Any k real rows bound the k-th best from below, so the bar is
      safe (never above the true k-th score); the excluded row is excluded from the sample too.
    * large k (>= 32 expected sample hits): the score that k rows (+3 sigma) of the whole index are expected
      to beat; tighter, but only a guess: a query that ends with fewer than k keys above it is rescanned. A
      dense filter guesses from its admissible sample rows as if they were the index (the sample is a
      stratified 1-in-16 of the rows, so about the same share of it is admissible); a query whose filter the
      sample misrepresents, or which admits fewer than k rows, is rescanned the same way.
    """
    sample = levels.sample
    if sample is None:
        return None
    m, n = sample.table.codes_t.shape[0], levels.table.codes_t.shape[0]
    expect = kk * m / n
    j = int(expect + 3 * expect**0.5 + 8)
    guessed = expect >= 32 and j <= m // 2
    if not guessed:
        j = kk
    if j > m // 2:
        return None
    rows = levels.sample_rows
    # a guessed (large) j is worth the sample's own starting bars; for a small one they cost more than they save
    plan = plan_scan(sample, qc, qs, positions_in(rows, excl), filters.subset(allow, rows), j, max_block_rows,
                     estimate=guessed, bar_only=True)
    return BarPlan(plan, guessed)


def rescan(plan: ScanPlan, queries: np.ndarray) -> ScanPlan:
    """The plan for redoing ``queries`` (indices into the plan's batch) without a guessed bar: theirs misled."""
    return plan_scan(plan.levels, plan.qc[torch.from_numpy(queries)], plan.qs[queries], plan.excl[queries],
                     plan.allow[queries], plan.k, plan.max_block_rows, False, plan.bar_only)


def copied(plan: ScanPlan) -> ScanPlan:
    """A compacted scan's copy of the rows ``plan.union`` (in their order), and its plan: the same queries, their
    exclusions and bitmaps mapped onto the copy's rows. Made when the stage scans it, not with the plan: a
    batch's chunks would otherwise hold a copy each (up to ``_COMPACT_BYTES``) at once."""
    table, union = plan.levels.table, plan.union
    # torch: a threaded gather
    copy = SampledTable.of(table.codes_t.index_select(0, torch.from_numpy(union)).numpy(), table.scales[union])
    excl, allow = positions_in(union, plan.excl), filters.subset(plan.allow, union)
    return plan_scan(copy, plan.qc, plan.qs, excl, allow, plan.k, plan.max_block_rows, plan.estimate)
