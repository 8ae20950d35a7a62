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

Every choice above (GEMV or GEMM or a compacted copy, the bars' sample scan, block sizes, query chunks) is
made once per call by ``plan.plan_search``; the stages here (``scan``, ``_starting_bars``, ``_scan_table``,
``_compacted_scan``) read the plan and return keys.
"""

from __future__ import annotations

import numpy as np
import torch

from widefunnel.ann import kernels
from widefunnel.ann.index import Int8Index
from widefunnel.ann.plan import MAX_BLOCK_ROWS as MAX_BLOCK_ROWS
from widefunnel.ann.plan import WALK_FILTER as WALK_FILTER
from widefunnel.ann.plan import ScanPlan, SearchPlan, copied, excluded_rows, plan_search, rescan, use_int_mm
from widefunnel.ann.plan import gemv_max_batch as gemv_max_batch
from widefunnel.ann.plan import int_mm_is_exact as int_mm_is_exact
from widefunnel.ann.plan import invalid_query_rows as invalid_query_rows
from widefunnel.ann.plan import kernel_threads as kernel_threads
from widefunnel.ann.plan import prepare_index as prepare_index
from widefunnel.ann.plan import quantize_queries as quantize_queries
from widefunnel.ann.plan import query_chunk as query_chunk
from widefunnel.ann.plan import scan_block_rows as scan_block_rows
from widefunnel.ann.plan import validate_k as validate_k
from widefunnel.ann.plan import validate_nprobe as validate_nprobe
from widefunnel.ann.plan import validate_queries as validate_queries
from widefunnel.ann.prepared import CHUNK, SampledTable

INT64_MIN = -(2**63)  # "empty" key; decodes to a NaN score, never produced by a real (row, score)
_LOW32 = 0xFFFFFFFF


def exclude_rows(index: Int8Index, exclude_ids: np.ndarray | None, batch: int) -> np.ndarray:
    """Map per-query excluded item ids (-1 = none) to row indices (-1 = none / unknown id)."""
    return excluded_rows(prepare_index(index), exclude_ids, batch)


def dequantized(index: Int8Index, ids: np.ndarray) -> np.ndarray:
    """Dequantised embeddings of result ids (any shape) -> float32 [..., d]; the -1 pad gets zeros."""
    ids = np.asarray(ids)
    rows = prepare_index(index).rows_of(ids)
    safe = np.maximum(rows, 0)
    out = index.codes[safe].astype(np.float32) * index.scales[safe][..., None]
    out[rows < 0] = 0.0
    return out


# ----------------------------------------------------------------------------------------- exact dot product
def int_dot(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """int8 [b,d] x int8 [R,d] -> exact dot products [b,R] (int32 on CPU, else integer-valued float32)."""
    if use_int_mm(q):
        return torch._int_mm(q, c.T)
    # every product and partial sum is an integer < 2**24: exact in float32 (and TF32) in any summation
    # order; "+ 0.0" turns a -0.0 (an all-zero sum's sign depends on the order) into +0.0, like the int path
    return (q.float() @ c.float().T).add_(0.0)


def item_dot(c: torch.Tensor, q_t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """int8 items [R,d] x int8 queries^T [d,b] -> exact dot products [R,b]: the scan's GEMM. Items-major is
    the layout oneDNN's int8 GEMM runs fastest in here (3x at batch 256); same exactness rules as int_dot.
    ``out``: an int32 [R,b] buffer the scan reuses for every block (see ``dot_buffer``)."""
    if use_int_mm(c):
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


# ------------------------------------------------------------------------------------------------ exact scan
def exact_search(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
                 block_rows: int = MAX_BLOCK_ROWS, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """queries float32 [B,d] -> (ids int64 [B,k'], scores float32 [B,k']) best first, k' = min(k, N).

    A row whose exclusion leaves fewer than k' items is padded with id -1 / score -inf, so the output shape
    (like every value in it) never depends on the other queries of the batch. ``block_rows`` caps the item
    rows per block (rounded to a multiple of 64); the result does not depend on it. ``allow``: a uint64 row
    bitmap per query (``filters.pack_rows``): the result is then the exact top-k of the admissible rows,
    padded when fewer are admissible.
    """
    return run(plan_search(index, queries, k, exclude_ids, allow=allow, block_rows=block_rows))


def run(plan: SearchPlan) -> tuple[np.ndarray, np.ndarray]:
    """An exact ``SearchPlan`` -> (ids, scores) [B, k']: each chunk's scan, decoded (bounded memory: one
    chunk's reservoirs at a time)."""
    ids = plan.prepared.ids
    if len(plan.chunks) == 1:  # one chunk: its decoded arrays are the result (no second 12 bytes x B x k copy)
        return kernels.decode(np.ascontiguousarray(scan(plan.scans[0]).numpy()), ids)
    out_ids, out_scores = empty_results(len(plan.qs), plan.k_out)
    for sl, chunk in zip(plan.chunks, plan.scans):
        out_ids[sl], out_scores[sl] = kernels.decode(np.ascontiguousarray(scan(chunk).numpy()), ids)
    return out_ids, out_scores


def empty_results(batch: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((batch, k), -1, np.int64), np.full((batch, k), -np.inf, np.float32)


def reservoirs(n: int, width: int, kth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` empty reservoirs of ``width`` keys (``plan.reservoir_width``) for the kernels: (keys [n, width],
    fill [n], bars [n]; INT64_MIN = no bar)."""
    bars = np.full(n, INT64_MIN, np.int64) if kth is None else kth
    return np.empty((n, width), np.int64), np.zeros(n, np.int64), bars


def scan(plan: ScanPlan) -> torch.Tensor:
    """Run a ``ScanPlan`` -> sorted keys [b, kk] (CPU tensor, INT64_MIN pads), or with ``bar_only`` only the
    kk-th of them [b, 1]: starting bars, the table's scan, then a rescan of the queries a guessed bar left
    short."""
    if plan.path == "compacted":
        return _compacted_scan(plan)
    bars, guessed = _starting_bars(plan.levels, plan) if plan.estimate else (None, False)
    kth = np.full(len(plan.qs), INT64_MIN, np.int64) if bars is None else bars
    keys = torch.from_numpy(_scan_table(plan, kth))
    short = torch.nonzero(keys[:, -1] == INT64_MIN).squeeze(1) if guessed else None
    if short is not None and short.numel():  # the guess was too high for these queries: redo them without one
        keys[short] = scan(rescan(plan, short.numpy()))
    return keys


def _starting_bars(levels: SampledTable, plan: ScanPlan) -> tuple[np.ndarray | None, bool]:
    """A starting bar per query from the scan of ``levels``' row sample that ``plan.bars`` plans -> (bar keys or
    None, guessed); see ``plan._bar_plan`` for why the bar is safe, or a guess."""
    if plan.bars is None:
        return None, False
    keys = scan(plan.bars.plan).numpy()
    _, score, valid = decode_keys(torch.from_numpy(keys[:, -1]))
    bars = make_keys(score, torch.full(score.shape, _LOW32, dtype=torch.int64)).numpy()
    return np.where(valid.numpy(), bars, INT64_MIN), plan.bars.guessed


def _scan_table(plan: ScanPlan, kth: np.ndarray) -> np.ndarray:
    """Blocked scan of the plan's row table -> sorted best keys [b, kk] (INT64_MIN pads), or with ``bar_only``
    just the kk-th best [b, 1]. ``kth``: each query's starting bar (INT64_MIN, or a guessed key); only keys
    above it are kept."""
    table, qc, qs, excl, allow = plan.levels.table, plan.qc, plan.qs, plan.excl, plan.allow
    kk, n_seg = plan.kk, plan.n_seg
    codes_t = table.codes_t
    n, b = codes_t.shape[0], qc.shape[0]
    # every filter splits the rows between the threads as the GEMM does, so each thread reads the rows its
    # own core wrote (split by queries, half of every row came from the other core's cache: up to 3x slower
    # in phases on this VM). Per thread reservoirs, merged by ``finish``. Batches of 16 and more filter
    # row-wise: measured on 1M x 64 (medians of 244 interleaved calls), batch 32 / k = 100 21.8 vs 24.5 ms
    # for the pass-1/pass-2 filter (26.8 split by queries), batch 64 30.4 vs 38.0; batch 16 and below even.
    n_groups = 1
    buf, fill, kth = reservoirs(b * n_seg, plan.width, np.repeat(kth, n_seg))
    # the fused int8 GEMV + filter reads each row once and writes no dot block; under a sparse filter it reads
    # only the admissible rows, which beats a GEMM over all of them at any batch
    if plan.path == "gemv":
        _gemv_scan(plan, buf, fill, kth)
        return _collect(buf, fill, kk, n_seg, plan.bar_only)
    rows = plan.block_rows
    qt = qc.T.contiguous()
    out = dot_buffer(rows, b)
    maxima = None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        block = codes_t[r0:r1]
        if plan.gemm == "int8":
            dot = torch._int_mm(block, qt, out=out[:r1 - r0]).numpy()
        else:  # exact: see ``int_dot``
            dot = (block.float() @ qt.float()).add_(0.0).numpy()
        if maxima is None:  # int32, or float32 on the exact-float fallback
            maxima = np.empty((rows // 8, b), dot.dtype), np.empty((rows // CHUNK, b), dot.dtype)
        first = r0 == 0 and bool((kth == INT64_MIN).any())  # no bar yet: a safe one from the first block
        # cheap: from its 8-row groups' maxima (not when filtered: a group's max may be a refused row)
        by_groups = first and (r1 - r0) // 8 > kk and allow.shape[1] == 0
        if not plan.row_scan or by_groups:
            kernels.block_maxima(dot, *maxima)
        if first:
            bars = np.full(b, INT64_MIN, np.int64)
            if by_groups:
                kernels.group_bars(maxima[0], r0, r1 - r0, table.smin, table.smax, qs, excl, kk, bars)
            else:  # a narrow block (wide batch) or a filtered scan: from its admissible rows' exact scores
                kernels.row_bars(dot, r0, table.scales, qs, excl, allow, kk, bars)
            kth = np.maximum(kth, np.repeat(bars, n_seg))
        if plan.row_scan:
            kernels.block_rows_scan(dot, r0, table.inv_smax, table.inv_smin, table.scales, qs, excl, allow, buf,
                                    fill, kth, kk, n_groups, n_seg)
        else:
            kernels.block_offer(dot, *maxima, r0, table.inv_smax, table.inv_smin, table.scales, qs, excl, allow,
                                buf, fill, kth, kk, n_groups, n_seg)
    return _collect(buf, fill, kk, n_seg, plan.bar_only)


def _gemv_scan(plan: ScanPlan, buf: np.ndarray, fill: np.ndarray, kth: np.ndarray) -> None:
    """Tiny batches: score the table's rows with IVF's compiled GEMV + filter (``kernels.ivf_scan``), query by
    query, the rows cut into the plan's spans, which it treats as lists (at least 8 per thread, at most a
    block long). At batch 1 the int8 GEMM is a memory-bound GEMV whose output block is then read again; fused,
    the scan runs at about the streaming bandwidth (1M x 128: 4.4 vs 8.0 ms per query, measured)."""
    table = plan.levels.table
    offsets, probes = plan.spans
    kernels.ivf_scan(plan.qc.numpy(), plan.qs, probes, offsets, table.codes_t.numpy(), table.scales, table.inv_smax,
                     table.inv_smin, plan.excl, plan.allow, plan.walk, buf, fill, kth, plan.kk, plan.n_seg)


def _collect(buf: np.ndarray, fill: np.ndarray, kk: int, n_seg: int, bar_only: bool) -> np.ndarray:
    """A scan's reservoirs (``n_seg`` per query) -> sorted best keys [b, kk], or just the kk-th [b, 1]."""
    if bar_only:
        return kernels.kth_keys(buf, fill, kk, n_seg)[:, None]
    return kernels.finish(buf, fill, kk, kk, n_seg)


def _compacted_scan(plan: ScanPlan) -> torch.Tensor:
    """The scan of a copy of the rows some query of the batch admits (``plan.union``, ascending). A filter
    shared by the batch, as a genre or a release window is, may admit 0.1 to 60 % of the rows, and a batch's
    GEMM over all of them costs what the unfiltered scan does; the copy costs a gather of the admitted rows.
    (A batch of one or a few walks its bitmap instead, reading only admissible rows: there a copy was even.)
    The copy keeps the rows' order, so its keys map back to the keys the full scan makes, ties included."""
    union = plan.union
    rows = torch.from_numpy(union)
    keys = scan(copied(plan))
    sub_rows, scores, valid = decode_keys(keys)
    keys = torch.where(valid, make_keys(scores, rows[sub_rows.clamp(0, len(union) - 1)]), INT64_MIN)
    width = plan.kk  # the full table's k': fewer admissible rows than k pad with INT64_MIN
    if keys.shape[1] < width:
        keys = torch.cat([keys, torch.full((keys.shape[0], width - keys.shape[1]), INT64_MIN, dtype=torch.int64)], 1)
    return keys
