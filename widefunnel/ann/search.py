"""Exact int8 maximum-inner-product search, batch-invariant by construction.

Why the results cannot depend on the rest of the batch:
  * each query row is quantised with its own scale (``quantize_rows``);
  * the int8 x int8 dot product is computed exactly (int32 GEMM, or float32 GEMM on integer-valued operands,
    which is exact because every partial sum is an integer below 2**24 for d <= 1024), so the kernel, its
    blocking and its summation order cannot change a single bit;
  * the score is the elementwise ``(float32(dot) * item_scale) * query_scale``;
  * ranking uses unique int64 keys ``(orderable score bits << 32) | (2**32 - 1 - row)``: best score first,
    lower row first on ties (-0.0 counts as +0.0), so every top-k below is a pure function of one query's
    own scores.

The scan is blocked (bounded memory: one int32 [R x b] block of about 2 MiB, a [b x max(2k, k + slack)]
key reservoir per query chunk). Per block, one int8 GEMM (items-major) gives exact dot products; a compiled
kernel (``kernels.py``) then offers each query's rows to its reservoir: a row can only enter the top-k if
its dot reaches an integer bound derived from the query's current k-th key and the scale range of its rows
(rows are sorted by scale at build time, so the bound is tight). Batches under 16 skip whole 64-row chunks
and 8-row groups on their max dot; from 16 queries on, each thread takes the rows its core's GEMM thread
wrote, tests each row's slice of queries at once and pulls the surviving pairs out of 16-lane compare
masks. A batch of one skips the GEMM: a fused int8 GEMV + filter reads each row once.
Each query's first bar comes from a scan of a strided 1-in-16 row sample (itself sampled, so for large k
that scan starts from a bar too): for small k its k-th best score (a safe lower bound), for large k a
statistical guess; a query whose guess proves too high is rescanned without it, so the result is always
exact. The fused GEMV of a small batch skips the sample below k = 4,096 (its running k-th key rises fast
enough on its own). Without a sample bar, the first block's 8-row group maxima (or, for a narrow block, its rows' exact
scores) give a safe one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from widefunnel.ann import filters, kernels
from widefunnel.ann.index import Int8Index
from widefunnel.ann.prepared import CHUNK, IvfTables, PreparedIndex, RowTable, SampledTable
from widefunnel.ann.quantize import QMAX, quantize_checked_rows, quantize_rows

INT64_MIN = -(2**63)  # "empty" key; decodes to a NaN score, never produced by a real (row, score)
_LOW32 = 0xFFFFFFFF
MAX_BLOCK_ROWS = 262144  # default cap on item rows per scan block (``exact_search(block_rows=)``)
_BLOCK_ELEMS = 1 << 19  # item rows x queries of one int32 score block (2 MiB)
_GEMV_MAX_BATCH: int | None = None  # batches this small scan with the fused GEMV (``_gemv_scan``), a pass per
# query; wider ones take one GEMM per block. None: by the GEMM this host runs (``gemv_max_batch``)
_GEMV_MAX_BATCH_INT8 = 1  # with torch's int8 GEMM (a host with VNNI; `bench_wide.py crossover`, 1M x 32, 2 threads,
# k = 100 / 10,000, GEMV vs GEMM ms): batch 1 2.5 / 2.7 vs 3.1 / 3.2, batch 2 4.0 / 4.7 vs 2.8 / 3.7, batch 8
# 14.8 / 17.4 vs 4.2 / 6.9
_GEMV_MAX_BATCH_FLOAT = 6  # with the exact float32 GEMM (the AVX2 host without VNNI, 2026-11-24: 1M x 64,
# batch 4 10.0 vs 14.9 ms, batch 6 15.4 vs 21.2, batch 8 18.4 vs 16.1)
_GEMV_BAR_K = 4096  # the fused GEMV starts from a sample bar only from this k on: below it the bar's scan costs
# more than the keys it spares (1M x 64, batch 1, no bar vs bar: k = 100 3.5 vs 4.2 ms, 1,000 3.8 vs 4.4, 4,000
# 4.9 vs 5.0, 6,000 5.5 vs 5.2, 10,000 6.4 vs 5.1; at 50 % and 10 % admitted alike; d = 32 alike)
_SPARSE_FILTER = 0.05  # a filter admitting less than this share of the rows scans only those (``_gemv_scan``)
WALK_FILTER = 0.25  # the fused GEMV reads only the admissible rows of a filter admitting less than this share;
# a denser one is streamed (every row read, the bitmap checked for rows that beat the bar): see ``ivf_scan``
_COMPACT_FILTER = 0.6  # a GEMM batch whose filters together admit less than this share scans a copy of those rows
_COMPACT_BYTES = 256 << 20  # ... unless the copy would be larger (a 10M x 32 index at 60 %: 192 MB)
_ROW_SCAN_BATCH = 16  # batches this wide filter their blocks row-wise (see ``_scan_table``)
_RESERVOIR_SLACK = 1024  # a reservoir holds max(2k, k + slack) keys before it is compacted to k
_RESERVOIR_KEYS = 1 << 25  # query rows x reservoir width, int64 (256 MiB) before the batch is split


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


def exclude_rows(index: Int8Index, exclude_ids: np.ndarray | None, batch: int) -> np.ndarray:
    """Map per-query excluded item ids (-1 = none) to row indices (-1 = none / unknown id)."""
    if exclude_ids is None:
        return np.full(batch, -1, np.int64)
    ex = np.asarray(exclude_ids)
    if ex.size != batch or ex.ndim > 2 or not np.issubdtype(ex.dtype, np.integer):
        raise ValueError(f"exclude_ids must be an integer array of shape [{batch}], "
                         f"got {ex.dtype} {list(ex.shape)}")
    return prepare_index(index).rows_of(ex.reshape(batch))


def dequantized(index: Int8Index, ids: np.ndarray) -> np.ndarray:
    """Dequantised embeddings of result ids (any shape) -> float32 [..., d]; the -1 pad gets zeros."""
    ids = np.asarray(ids)
    rows = prepare_index(index).rows_of(ids)
    safe = np.maximum(rows, 0)
    out = index.codes[safe].astype(np.float32) * index.scales[safe][..., None]
    out[rows < 0] = 0.0
    return out


# ----------------------------------------------------------------------------------------- exact dot product
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


def gemv_max_batch(codes: torch.Tensor) -> int:
    """The widest batch the fused GEMV scans (a pass per query) before one GEMM per block over ``codes`` pays:
    1 where that GEMM is torch's int8 one (``_use_int_mm``, as ``item_dot`` decides), 6 on its exact float32
    fallback (``_GEMV_MAX_BATCH_*``)."""
    if _GEMV_MAX_BATCH is not None:
        return _GEMV_MAX_BATCH
    return _GEMV_MAX_BATCH_INT8 if _use_int_mm(codes) else _GEMV_MAX_BATCH_FLOAT


def _use_int_mm(t: torch.Tensor) -> bool:
    # d < 8: oneDNN misreads c.T strides
    return t.device.type == "cpu" and t.shape[1] >= 8 and int_mm_is_fast()  # fast implies exact


def int_dot(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """int8 [b,d] x int8 [R,d] -> exact dot products [b,R] (int32 on CPU, else integer-valued float32)."""
    if _use_int_mm(q):
        return torch._int_mm(q, c.T)
    # every product and partial sum is an integer < 2**24: exact in float32 (and TF32) in any summation
    # order; "+ 0.0" turns a -0.0 (an all-zero sum's sign depends on the order) into +0.0, like the int path
    return (q.float() @ c.float().T).add_(0.0)


def item_dot(c: torch.Tensor, q_t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """int8 items [R,d] x int8 queries^T [d,b] -> exact dot products [R,b]: the scan's GEMM. Items-major is
    the layout oneDNN's int8 GEMM runs fastest in here (3x at batch 256); same exactness rules as int_dot.
    ``out``: an int32 [R,b] buffer the scan reuses for every block (see ``dot_buffer``)."""
    if _use_int_mm(c):
        return torch._int_mm(c, q_t) if out is None else torch._int_mm(c, q_t, out=out)
    return (c.float() @ q_t.float()).add_(0.0)


def dot_buffer(rows: int, b: int) -> torch.Tensor:
    """One int32 block for all of a scan's GEMMs (``_int_mm(..., out=)``), instead of a fresh 2 MiB output
    per block that the allocator may return to the OS and fault in again (at batch 256: 488 per search)."""
    return torch.empty((rows, b), dtype=torch.int32)


def scores_from_dot(dot: torch.Tensor, item_scales: torch.Tensor, query_scales: torch.Tensor) -> torch.Tensor:
    """The one score formula everything uses (CPU, IVF, GPU kernel): (float32(dot) * s_item) * s_query.
    (The explicit cast is exact, |dot| < 2**24, and ~2.5x faster than torch's mixed-dtype multiply.)"""
    return (dot.to(torch.float32) * item_scales) * query_scales


# ------------------------------------------------------------------------------------------------- sort keys
def make_keys(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float32 scores + int64 rows -> unique int64 keys; larger key = better (higher score, lower row).
    -0.0 is keyed as +0.0 (``+ 0.0``): one score, so they tie and the lower row wins."""
    bits = (scores + 0.0).contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return ordered.to(torch.int64) * (1 << 32) + (_LOW32 - rows)


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (rows int64, scores float32, valid bool); empty keys (INT64_MIN) are invalid."""
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    scores = bits.contiguous().view(torch.float32)
    rows = _LOW32 - (keys & _LOW32)
    return rows, scores, keys != INT64_MIN


def select_top(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Best ``k`` keys per row, sorted best first (keys are unique, so the result is fully determined)."""
    if keys.shape[1] > k:
        keys = torch.topk(keys, k, dim=1, sorted=False).values
    return torch.sort(keys, dim=1, descending=True).values


def keys_to_results(index: Int8Index, keys: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys -> (ids int64, scores float32) numpy, padding with id -1 / score -inf."""
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    return kernels.decode(np.ascontiguousarray(keys), prepare_index(index).ids)


# --------------------------------------------------------------------------------------------- preparation
def prepare_index(index: Int8Index) -> PreparedIndex:
    """The index's search-time form (``PreparedIndex``), built once (torch views, id lookup, 64-row scale
    bounds, row samples, int8 centroids), and the int8 GEMM self-test and kernel compiles run, so the first
    request is not slow. Idempotent; a server calls it right after ``load_index``."""
    if index.prepared is not None:
        return index.prepared
    codes = np.asarray(index.codes)
    order = np.argsort(index.ids, kind="stable")
    ivf = None
    if index.ivf is not None:
        ccodes, cscales = quantize_rows(index.ivf.centroids)
        ivf = IvfTables(ccodes, cscales, np.ascontiguousarray(index.ivf.offsets, dtype=np.int64))
    prepared = PreparedIndex(SampledTable.of(codes, np.ascontiguousarray(index.scales, dtype=np.float32)), codes,
                             np.ascontiguousarray(index.ids, dtype=np.int64), index.ids[order], order, ivf)
    int_mm_is_fast()
    kernels.warm_up()
    index.prepared = prepared
    return prepared


# ------------------------------------------------------------------------------------------------ exact scan
def kernel_threads() -> int:
    """Kernel threads = torch's (OMP_NUM_THREADS in a Triton stub), so numba never oversubscribes the cores."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def _reservoir_width(kk: int) -> int:
    """max(2k, k + slack) keys, padded to an odd number of 64-byte lines: with a stride that is a multiple of
    4 KiB every reservoir's tail maps to one cache set, and appends to many reservoirs evict each other."""
    lines = -(-max(2 * kk, kk + _RESERVOIR_SLACK) // 8)
    return 8 * (lines | 1)


def reservoirs(n: int, kk: int, kth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` empty reservoirs for the kernels: (keys [n, width], fill [n], bars [n]; INT64_MIN = no bar)."""
    bars = np.full(n, INT64_MIN, np.int64) if kth is None else kth
    return np.empty((n, _reservoir_width(kk)), np.int64), np.zeros(n, np.int64), bars


def query_chunk(batch: int, kk: int, per_query: int = 1) -> int:
    """Largest query chunk whose reservoirs (b x ``per_query`` x width int64: a reservoir per thread) stay
    under the memory cap. Only the cap splits a batch: cut into chunks of batch / threads queries (as this once
    did), a batch of 8 took the per-query GEMV in two chunks of 4 instead of one GEMM (1M x 32, k = 10,000: 31
    vs 11 ms)."""
    b = max(1, batch)
    while b > 1 and b * per_query * _reservoir_width(kk) > _RESERVOIR_KEYS:
        b = (b + 1) // 2
    return b


def scan_block_rows(n: int, b: int, block_rows: int = MAX_BLOCK_ROWS) -> int:
    """Item rows per block of a scan of ``n`` rows for ``b`` queries: an int32 block of about
    ``_BLOCK_ELEMS``, at most ``block_rows``, a multiple of 64."""
    rows = min(block_rows, max(CHUNK, _BLOCK_ELEMS // b), -(-n // CHUNK) * CHUNK)
    return max(CHUNK, rows // CHUNK * CHUNK)


@functools.lru_cache(maxsize=64)
def _spans(n: int, rows: int, n_seg: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """``_gemv_scan``'s spans of ``n`` rows as IVF lists -> (offsets, each query's "probes": all of them);
    cached, being the same for every request of a shape. Shared: never written (left writable, since numba
    compiles a read-only array argument as another type, which ``kernels.warm_up`` would not have compiled)."""
    span = max(CHUNK, min(rows, -(-n // (8 * n_seg * CHUNK)) * CHUNK))
    offsets = np.append(np.arange(0, n, span, dtype=np.int64), np.int64(n))
    probes = np.tile(np.arange(len(offsets) - 1, dtype=np.int64), (b, 1))
    return offsets, probes


def _gemv_scan(table: RowTable, qc: torch.Tensor, qs: np.ndarray, excl: np.ndarray, allow: np.ndarray, kk: int,
               buf: np.ndarray, fill: np.ndarray, kth: np.ndarray, rows: int, n_seg: int, walk: bool) -> None:
    """Tiny batches: score the table's rows with IVF's compiled GEMV + filter (``kernels.ivf_scan``), query by
    query, the rows cut into spans it treats as lists (at least 8 per thread, at most ``rows`` long). At
    batch 1 the int8 GEMM is a memory-bound GEMV whose output block is then read again; fused, the scan runs
    at about the streaming bandwidth (1M x 128: 4.4 vs 8.0 ms per query, measured)."""
    offsets, probes = _spans(table.rows, rows, n_seg, qc.shape[0])
    kernels.ivf_scan(qc.numpy(), qs, probes, offsets, table.codes_t.numpy(), table.scales, table.inv_smax,
                     table.inv_smin, excl, allow, walk, buf, fill, kth, kk, n_seg)


def _scan_table(table: RowTable, qc: torch.Tensor, qs: np.ndarray, excl: np.ndarray, allow: np.ndarray, kk: int,
                kth: np.ndarray, block_rows: int, gemv: bool, bar_only: bool = False, share: float = 1.0
                ) -> np.ndarray:
    """Blocked scan of a row table -> sorted best keys [b, kk] (INT64_MIN pads), or with ``bar_only`` just
    the kk-th best [b, 1]. ``kth``: each query's starting bar (INT64_MIN, or a guessed key); only keys above
    it are kept. ``gemv``: scan with the fused GEMV, query by query (``scan_keys`` decides: a small batch or a
    sparse filter), else one GEMM per block. ``share``: about the share of rows ``allow`` admits
    (``filters.admitted_share``)."""
    codes_t = table.codes_t
    n, b = codes_t.shape[0], qc.shape[0]
    threads = numba.get_num_threads()
    # every filter splits the rows between the threads as the GEMM does, so each thread reads the rows its
    # own core wrote (split by queries, half of every row came from the other core's cache: up to 3x slower
    # in phases on this VM). Per thread reservoirs, merged by ``finish``. Batches of 16 and more filter
    # row-wise: measured on 1M x 64 (medians of 244 interleaved calls), batch 32 / k = 100 21.8 vs 24.5 ms
    # for the pass-1/pass-2 filter (26.8 split by queries), batch 64 30.4 vs 38.0; batch 16 and below even.
    n_groups, n_seg = 1, threads
    row_scan = b >= _ROW_SCAN_BATCH
    buf, fill, kth = reservoirs(b * n_seg, kk, np.repeat(kth, n_seg))
    rows = scan_block_rows(n, b, block_rows)
    # the fused int8 GEMV + filter reads each row once and writes no dot block; under a sparse filter it reads
    # only the admissible rows, which beats a GEMM over all of them at any batch
    if gemv:
        _gemv_scan(table, qc, qs, excl, allow, kk, buf, fill, kth, rows, n_seg, share < WALK_FILTER)
        return _collect(buf, fill, kk, n_seg, bar_only)
    qt = qc.T.contiguous()
    out = dot_buffer(rows, b)
    maxima = None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        dot = item_dot(codes_t[r0:r1], qt, out[:r1 - r0]).numpy()
        if maxima is None:  # int32, or float32 on the exact-float fallback
            maxima = np.empty((rows // 8, b), dot.dtype), np.empty((rows // CHUNK, b), dot.dtype)
        first = r0 == 0 and bool((kth == INT64_MIN).any())  # no bar yet: a safe one from the first block
        # cheap: from its 8-row groups' maxima (not when filtered: a group's max may be a refused row)
        by_groups = first and (r1 - r0) // 8 > kk and allow.shape[1] == 0
        if not row_scan or by_groups:
            kernels.block_maxima(dot, *maxima)
        if first:
            bars = np.full(b, INT64_MIN, np.int64)
            if by_groups:
                kernels.group_bars(maxima[0], r0, r1 - r0, table.smin, table.smax, qs, excl, kk, bars)
            else:  # a narrow block (wide batch) or a filtered scan: from its admissible rows' exact scores
                kernels.row_bars(dot, r0, table.scales, qs, excl, allow, kk, bars)
            kth = np.maximum(kth, np.repeat(bars, n_seg))
        if row_scan:
            kernels.block_rows_scan(dot, r0, table.inv_smax, table.inv_smin, table.scales, qs, excl, allow, buf,
                                    fill, kth, kk, n_groups, n_seg)
        else:
            kernels.block_offer(dot, *maxima, r0, table.inv_smax, table.inv_smin, table.scales, qs, excl, allow,
                                buf, fill, kth, kk, n_groups, n_seg)
    return _collect(buf, fill, kk, n_seg, bar_only)


def _collect(buf: np.ndarray, fill: np.ndarray, kk: int, n_seg: int, bar_only: bool) -> np.ndarray:
    """A scan's reservoirs (``n_seg`` per query) -> sorted best keys [b, kk], or just the kk-th [b, 1]."""
    if bar_only:
        return kernels.kth_keys(buf, fill, kk, n_seg)[:, None]
    return kernels.finish(buf, fill, kk, kk, n_seg)


def _starting_bars(levels: SampledTable, qc: torch.Tensor, qs: np.ndarray, excl: np.ndarray, allow: np.ndarray,
                   kk: int, block_rows: int) -> tuple[np.ndarray | None, bool]:
    """A starting bar per query from a scan of the 1-in-16 row sample (rows are scale-sorted, so the sample is
    stratified) -> (bar keys or None, guessed). Without a bar the first rows all survive until k are seen.

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
        return None, False
    m, n = sample.table.rows, levels.table.rows
    expect = kk * m / n
    j = int(expect + 3 * expect**0.5 + 8)
    guessed = expect >= 32 and j <= m // 2
    if not guessed:
        j = kk
    if j > m // 2:
        return None, False
    rows = levels.sample_rows
    sample_excl = _positions_in(rows, excl)
    # a guessed (large) j is worth the sample's own starting bars; for a small one they cost more than they save
    keys = scan_keys(sample, qc, torch.from_numpy(qs), torch.from_numpy(sample_excl), j, block_rows,
                     estimate=guessed, bar_only=True, allow=filters.subset(allow, rows)).numpy()
    _, score, valid = decode_keys(torch.from_numpy(keys[:, -1]))
    bars = make_keys(score, torch.full(score.shape, _LOW32, dtype=torch.int64)).numpy()
    return np.where(valid.numpy(), bars, INT64_MIN), guessed


def scan_keys(levels: SampledTable, qc: torch.Tensor, qs: torch.Tensor, excl: torch.Tensor, k: int,
              block_rows: int, estimate: bool = True, bar_only: bool = False, allow: np.ndarray | None = None
              ) -> torch.Tensor:
    """Exact scan over all rows -> sorted keys [b, min(k, N)] (CPU tensors); with ``bar_only`` only the
    last of them [b, 1] (a starting bar for the level above). ``allow``: a row bitmap per query
    (``filters``); the keys are then the best of the admissible rows, INT64_MIN-padded."""
    kernel_threads()
    table = levels.table
    kk = min(k, table.rows)
    qs_np, excl_np = qs.numpy(), excl.numpy()
    allow = filters.no_filter(qc.shape[0]) if allow is None else allow
    # a sparse filter's scan reads only its admissible rows: a bar from the row sample would cost more than it saves
    share = filters.admitted_share(allow)
    sparse = share < _SPARSE_FILTER
    b, n = qc.shape[0], table.rows
    gemv_batch = gemv_max_batch(table.codes_t)
    if b > gemv_batch and share < _COMPACT_FILTER and not bar_only:
        union = filters.union_rows(allow, n)
        # sparse filters walk their own rows query by query: copied only when the batch shares them (a union
        # at most half their sum), so the copy's one GEMM replaces b walks
        small = len(union) < _COMPACT_FILTER * n and len(union) * table.codes_t.shape[1] <= _COMPACT_BYTES
        if small and len(union) and (not sparse or 2 * len(union) <= b * share * n):
            return _compacted_scan(levels, union, qc, qs, excl, k, block_rows, estimate, allow)
    estimate = estimate and not sparse and (b > gemv_batch or kk >= _GEMV_BAR_K)
    bars, guessed = (_starting_bars(levels, qc, qs_np, excl_np, allow, kk, block_rows) if estimate
                     else (None, False))
    kth = np.full(qc.shape[0], INT64_MIN, np.int64) if bars is None else bars
    gemv = b <= gemv_batch or sparse
    keys = torch.from_numpy(_scan_table(table, qc, qs_np, excl_np, allow, kk, kth, block_rows, gemv, bar_only, share))
    short = torch.nonzero(keys[:, -1] == INT64_MIN).squeeze(1) if guessed else None
    if short is not None and short.numel():  # the guess was too high for these queries: redo them without one
        keys[short] = scan_keys(levels, qc[short], qs[short], excl[short], k, block_rows, False, bar_only,
                                allow[short.numpy()])
    return keys


def _positions_in(rows: np.ndarray, excl: np.ndarray) -> np.ndarray:
    """Each query's excluded row (-1: none) -> its position in ``rows`` (ascending), -1 where it is not there."""
    pos = np.minimum(np.searchsorted(rows, excl), len(rows) - 1)
    return np.where((excl >= 0) & (rows[pos] == excl), pos, -1)


def _compacted_scan(levels: SampledTable, union: np.ndarray, qc: torch.Tensor, qs: torch.Tensor, excl: torch.Tensor,
                    k: int, block_rows: int, estimate: bool, allow: np.ndarray) -> torch.Tensor:
    """``scan_keys`` over a copy of the rows some query of the batch admits (``union``, ascending). A filter
    shared by the batch, as a genre or a release window is, may admit 0.1 to 60 % of the rows, and a batch's
    GEMM over all of them costs what the unfiltered scan does; the copy costs a gather of the admitted rows.
    (A batch of one or a few walks its bitmap instead, reading only admissible rows: there a copy was even.)
    The copy keeps the rows' order, so its keys map back to the keys the full scan makes, ties included."""
    table = levels.table
    rows = torch.from_numpy(union)
    sub = SampledTable.of(table.codes_t.index_select(0, rows).numpy(), table.scales[union])  # torch: threaded
    keys = scan_keys(sub, qc, qs, torch.from_numpy(_positions_in(union, excl.numpy())), k, block_rows, estimate,
                     allow=filters.subset(allow, union))
    sub_rows, scores, valid = decode_keys(keys)
    keys = torch.where(valid, make_keys(scores, rows[sub_rows.clamp(0, len(union) - 1)]), INT64_MIN)
    width = min(k, table.rows)  # the full table's k': fewer admissible rows than k pad with INT64_MIN
    if keys.shape[1] < width:
        keys = torch.cat([keys, torch.full((keys.shape[0], width - keys.shape[1]), INT64_MIN, dtype=torch.int64)], 1)
    return keys


def prepare_queries(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    k = validate_k(k)
    q = validate_queries(queries, index.dim)
    excl = exclude_rows(index, exclude_ids, q.shape[0])
    qc, qs = quantize_queries(q)
    return torch.from_numpy(qc), torch.from_numpy(qs), torch.from_numpy(excl), k


def empty_results(batch: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((batch, k), -1, np.int64), np.full((batch, k), -np.inf, np.float32)


def exact_search(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
                 block_rows: int = MAX_BLOCK_ROWS, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """queries float32 [B,d] -> (ids int64 [B,k'], scores float32 [B,k']) best first, k' = min(k, N).

    A row whose exclusion leaves fewer than k' items is padded with id -1 / score -inf, so the output shape
    (like every value in it) never depends on the other queries of the batch. ``block_rows`` caps the item
    rows per block (rounded to a multiple of 64); the result does not depend on it. ``allow``: a uint64 row
    bitmap per query (``filters.pack_rows``): the result is then the exact top-k of the admissible rows,
    padded when fewer are admissible.
    """
    qc, qs, excl, k = prepare_queries(index, queries, k, exclude_ids)
    if not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    batch, k_out = qc.shape[0], min(k, index.count)
    allow = filters.check_allow(allow, batch, index.count)
    levels = prepare_index(index).levels
    step = query_chunk(batch, k_out, kernel_threads())  # a query may hold a reservoir per thread
    return scan_in_chunks(index, batch, k_out, step,
                          lambda sl: scan_keys(levels, qc[sl], qs[sl], excl[sl], k_out, block_rows, allow=allow[sl]))


def scan_in_chunks(index: Int8Index, batch: int, k_out: int, step: int,
                   scan: Callable[[slice], torch.Tensor | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The driver every CPU scan (exact, IVF) runs: ``scan(queries)`` -> sorted keys for ``step`` queries at
    a time (bounded memory: one chunk's reservoirs), decoded into (ids, scores) [batch, k_out]."""
    if step >= batch > 0:  # one chunk: its decoded arrays are the result (no second 12 bytes x B x k copy)
        return keys_to_results(index, scan(slice(0, batch)))
    ids, scores = empty_results(batch, k_out)
    for b0 in range(0, batch, step):
        sl = slice(b0, b0 + step)
        ids[sl], scores[sl] = keys_to_results(index, scan(sl))
    return ids, scores
