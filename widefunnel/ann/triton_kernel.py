"""GPU exact int8 search: one pass of a Triton kernel (int8 tensor-core dots, a guessed bar, survivors appended),
an exact selection over the survivors, a rescan where the guess misled; and a torch fallback.

Both produce exactly what the CPU ``exact_search`` produces for the same rows (same per-row query
quantisation, same score formula ``(float32(dot) * s_item) * s_query``, same unique int64 keys: higher score
first, lower row first on ties), so the GPU and CPU paths are interchangeable and batch-invariant.

The kernel path (``kernel_keys``), for any k and any batch:

1. **A bar per query from a sample.** ``sample_rows`` takes m evenly spaced rows (1 in ``_SAMPLE_STEP``, at
   least ``_SAMPLE_MIN``; the rows are scale-sorted at build time, so the sample is stratified, as the CPU
   scan's). Their exact keys (filter and exclusion applied) are ranked in torch; the bar is the score of the
   j-th best, j = E + 3 sqrt(E) + 8 with E = k m / N the sample hits expected among the true top k (j = k when
   the sample is the whole index: then the bar is safe). About j N / m rows are expected to reach it.
2. **One pass over the index** (``_bar_scan_kernel``): a [16 queries x BN rows] tile's int8 dots on the tensor
   cores (``tl.dot``, int32 accumulate, exact), scores, the request's row bitmap and exclusion; a row whose key
   reaches its query's bar is appended to the query's buffer at a slot taken with one atomic add per (tile,
   query) and a prefix sum inside the tile. The counter goes on counting past the buffer's end.
3. **An exact selection**: a query with at least k survivors, all stored, has its exact top k among them (a row
   below the bar scores below k rows that reach it): ``torch.topk`` over its buffer, then a sort.
4. **A rescan** otherwise, so the result stays exact:
   * fewer than k survivors (the sample misled high, or the filter admits fewer than k rows): the bar drops
     (j x ``_RESCAN_GROWTH``, down to no bar at all once j passes the sample's admissible rows); without a bar
     every admissible row survives, and fewer than k is the answer, padded;
   * the buffer overflowed (the sample misled low, or many rows tie at the bar): the new bar is the k-th best
     key the buffer did store (k real rows reach it: safe), as a key (its score, and its row for the rows that
     tie it: an all-zero query ties everywhere, and then keeps about k rows, not N), and the buffer is as wide
     as the counter said (the survivors of a higher bar are a subset): that pass always succeeds.

Queries are launched in groups whose buffers stay under ``_KEY_BUDGET`` keys. Which queries share a launch,
or rescan, never changes a result: each is the exact top k of its own unique keys (batch-invariant).

CI runs the kernel on CPU through the Triton interpreter: set ``TRITON_INTERPRET=1`` before this module
(and hence ``triton``) is first imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from widefunnel.ann.index import Int8Index
from widefunnel.ann.quantize import QMAX
from widefunnel.ann.search import (
    INT64_MIN,
    decode_keys,
    int_dot,
    make_keys,
    prepare_index,
    scores_from_dot,
    select_top,
    validate_k,
)
from widefunnel.tensor_names import Step

try:  # the plugin must still load (and use the fallback) where triton is absent
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a declared dependency, but keep the fallback honest
    triton = None
    tl = None

_BM = 16  # queries per tile (tl.dot needs >= 16 rows)
_BN = 256  # index rows per tile
_WARPS = 8  # a [16 x 256] tile's scores, keys and slots over 256 threads: 16 elements each (untuned on a GPU;
# ``benchmarks/gpu_check.py --tile BN WARPS`` tries others)
_SAMPLE_STEP = 64  # the bar's sample: 1 row in this many ...
_SAMPLE_MIN = 256  # ... at least this many (all rows of a smaller index)
_RESCAN_GROWTH = 8  # a query left short rescans with its sample rank j times this (a lower bar)
_CAP_SLACK = 1024  # a buffer holds 2 x max(k, the survivors expected) + this many keys
_KEY_BUDGET = 1 << 26  # keys (int64) of one launch's buffers (512 MiB); a batch is split into groups under it
_SAMPLE_KEYS = 1 << 25  # keys of one sample ranking (queries x sample rows) before the queries are split
_FALLBACK_ROWS = 65536  # item rows per block of the fallback's scan (off the GPU, and its minimum on one)
# On a GPU, a block is as wide as two budgets allow: queries x rows int64 keys (512 MiB) and the rows' float32
# copy for the GEMM (1 GiB). Fewer, wider blocks: a large k (100,000) is merged by a few top-ks, not by one
# per 65,536 rows, and a batch of one reads a 10M-row index in a few GEMVs instead of 153.
_FALLBACK_GPU_KEYS = 1 << 26
_FALLBACK_GPU_FLOATS = 1 << 28


def quantize_rows_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of ``quantize_rows`` (bit-identical: same float32 ops, round-half-even, clip).

    The divisor is a tensor, never a Python number: CUDA torch turns ``t / 127`` into ``t * (1 / 127)``,
    which rounds differently for about 4.5 % of values (seen on an H200: the GPU's query scales then missed
    the CPU's by one bit in 2 of 32 queries)."""
    x = x.to(torch.float32)
    if x.shape[1]:
        amax = x.abs().amax(dim=1)
        scales = amax / torch.full_like(amax, QMAX)
    else:
        scales = torch.zeros(x.shape[0], device=x.device)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    codes = torch.round(x / scales[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return codes, scales


if triton is not None:

    # sizes are not specialised on (== 1, multiple of 16): one compile per (D, FILTERED), not one more for each
    # new batch size, index length or buffer width met while serving
    @triton.jit(do_not_specialize=["n_queries", "n_items", "n_mblocks", "n_words", "cap"])
    def _bar_scan_kernel(q_ptr, qs_ptr, c_ptr, cs_ptr, ex_ptr, allow_ptr, bar_ptr, bar_row_ptr, count_ptr, buf_ptr,
                         n_queries, n_items, n_mblocks, n_words, cap, D: tl.constexpr, DP: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, FILTERED: tl.constexpr):
        """One [BM queries x BN rows] tile: exact int8 dots -> scores; each admissible row whose key reaches its
        query's bar (a score above ``bar``, or equal to it at a row up to ``bar_row``: the key order) is appended
        to the query's buffer (``cap`` keys a query, at a slot from one atomic add on the query's counter per tile
        and a prefix sum in the tile; the counter counts past ``cap``, the keys there are dropped). A 1-D grid,
        query blocks fastest (the blocks of one row tile run together and share it in L2; a grid's y size stops
        at 65,535). Row offsets in int64. The queries are zero-padded to DP columns
        (tl.dot: a power of two, >= 32 for the int8 MMA); the rows are read unpadded (columns >= D masked)."""
        pid = tl.program_id(0)
        pid_m = pid % n_mblocks
        pid_n = pid // n_mblocks
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rd = tl.arange(0, DP)
        live_q = rm < n_queries
        live_n = rn < n_items
        q = tl.load(q_ptr + rm[:, None] * DP + rd[None, :], mask=live_q[:, None], other=0)
        if D == DP:  # noqa: SIM108 - a constexpr branch, resolved when the kernel compiles
            c_mask = live_n[:, None]
        else:
            c_mask = live_n[:, None] & (rd[None, :] < D)
        c = tl.load(c_ptr + rn[:, None].to(tl.int64) * D + rd[None, :], mask=c_mask, other=0)
        acc = tl.dot(q, tl.trans(c), out_dtype=tl.int32)  # int8 x int8 -> exact int32
        qs = tl.load(qs_ptr + rm, mask=live_q, other=1.0)
        cs = tl.load(cs_ptr + rn, mask=live_n, other=1.0)
        s = (acc.to(tl.float32) * cs[None, :]) * qs[:, None] + 0.0  # -0.0 keyed as +0.0, as make_keys
        bar = tl.load(bar_ptr + rm, mask=live_q, other=float("inf"))
        bar_row = tl.load(bar_row_ptr + rm, mask=live_q, other=-1)
        ex = tl.load(ex_ptr + rm, mask=live_q, other=-1)
        above = (s > bar[:, None]) | ((s == bar[:, None]) & (rn[None, :] <= bar_row[:, None]))
        keep = live_q[:, None] & live_n[None, :] & (rn[None, :].to(tl.int64) != ex[:, None]) & above
        if FILTERED:  # the row bitmap (``filters``): bit rn & 63 of word rn >> 6, an int64 view of the uint64
            word = tl.load(allow_ptr + rm[:, None].to(tl.int64) * n_words + (rn[None, :] >> 6),
                           mask=live_q[:, None] & live_n[None, :], other=0)
            keep = keep & (((word >> (rn[None, :] & 63).to(tl.int64)) & 1) != 0)
        hits = keep.to(tl.int32)
        n_hits = tl.sum(hits, axis=1)
        if tl.sum(n_hits, axis=0) > 0:  # most tiles keep nothing: no atomic, no scan, no key
            base = tl.atomic_add(count_ptr + rm, n_hits, mask=live_q & (n_hits > 0))
            slot = base[:, None] + tl.cumsum(hits, axis=1) - 1
            bits = s.to(tl.int32, bitcast=True)
            ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
            key = ordered.to(tl.int64) * 4294967296 + (4294967295 - rn[None, :].to(tl.int64))
            tl.store(buf_ptr + rm[:, None].to(tl.int64) * cap + slot, key, mask=keep & (slot < cap))


def kernel_settings() -> str:
    """The kernel's tiles and the bar's sample, for a report."""
    return (f"tiles of {_BM} queries x {_BN} rows, {_WARPS} warps; bar from 1 row in {_SAMPLE_STEP} (at least "
            f"{_SAMPLE_MIN}); rescan growth {_RESCAN_GROWTH}; buffers <= {_KEY_BUDGET:,} keys a launch")


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def sample_rows(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The rows the bars are guessed from: m evenly spaced rows of ``n`` (int64, ascending, row 0 first), m =
    max(``_SAMPLE_MIN``, n / ``_SAMPLE_STEP``), all of them for a small index."""
    m = min(n, max(_SAMPLE_MIN, n // _SAMPLE_STEP))
    return torch.arange(m, dtype=torch.int64, device=device) * n // max(m, 1)


@dataclass
class KernelTrace:
    """What one ``kernel_keys`` call did: the kernel's passes over the index (a launch per query group and
    pass), and how many queries a pass left short (fewer than k survivors) or overflowed (more than their
    buffer), each of them rescanned."""

    launches: int = 0
    passes: int = 0
    short: int = 0
    overflowed: int = 0
    survivors: list[tuple[int, int]] = field(default_factory=list)  # (query, survivors) of the first pass
    final: dict[int, int] = field(default_factory=dict)  # query -> the survivors of its last pass


@dataclass
class _Scan:
    """The kernel's inputs that do not change between passes."""

    codes: torch.Tensor  # int8 [N, d]
    scales: torch.Tensor  # float32 [N]
    qc: torch.Tensor  # int8 [B, DP], zero-padded
    qs: torch.Tensor  # float32 [B]
    exclude: torch.Tensor  # int64 [B]
    allow: torch.Tensor | None  # int64 [B, W]
    kk: int
    rows: torch.Tensor  # int64 [m]: the sampled rows (``sample_rows``) ...
    sample_codes: torch.Tensor  # ... their codes, int8 [m, d] ...
    sample_scales: torch.Tensor  # ... and scales, float32 [m], gathered once per search

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])


def _sample_keys(scan: _Scan, queries: torch.Tensor) -> torch.Tensor:
    """Exact keys of the sampled rows for ``queries`` (indices into the batch) -> int64 [q, m], INT64_MIN where a
    row is refused (the query's exclusion, its bitmap)."""
    d, rows = scan.codes.shape[1], scan.rows
    qc, qs = scan.qc[queries, :d].contiguous(), scan.qs[queries]
    scores = scores_from_dot(int_dot(qc, scan.sample_codes), scan.sample_scales, qs[:, None])
    dead = rows[None, :] == scan.exclude[queries][:, None]
    if scan.allow is not None:
        dead |= ((scan.allow[queries][:, rows >> 6] >> (rows & 63)[None, :]) & 1) == 0
    return torch.where(dead, INT64_MIN, make_keys(scores, rows.expand(len(queries), -1)))


def _first_rank(scan: _Scan, m: int) -> int:
    """The sample rank j of the first bar: the whole index sampled, k (a safe bar); else E + 3 sqrt(E) + 8 with
    E = k m / N the expected sample hits among the true top k (a guess: a pass may leave a query short)."""
    if m >= scan.n:
        return scan.kk
    expect = scan.kk * m / scan.n
    return int(expect + 3 * math.sqrt(expect) + 8)


def _bars(scan: _Scan, queries: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Each query's bar: the score of its ``ranks``-th best sampled key, -inf (no bar) where the sample holds
    fewer admissible rows. float32 [q]."""
    bars = torch.empty(len(queries), dtype=torch.float32, device=scan.qs.device)
    m = len(scan.rows)
    step = max(1, _SAMPLE_KEYS // max(1, m))
    for q0 in range(0, len(queries), step):
        sub, j = queries[q0:q0 + step], ranks[q0:q0 + step]
        top = torch.topk(_sample_keys(scan, sub), int(min(m, int(j.max()))), dim=1).values
        kth = top.gather(1, (j.clamp(max=m) - 1)[:, None])[:, 0]
        _, score, valid = decode_keys(kth)
        bars[q0:q0 + step] = torch.where(valid & (j <= m), score, -float("inf"))
    return bars


def _caps(scan: _Scan, ranks: torch.Tensor, m: int) -> torch.Tensor:
    """Buffer width per query: 2 x max(k, the rows expected at the bar of sample rank j, j N / m) + slack, at most
    N (int64 [q], on the host)."""
    expect = (ranks.cpu().double() * scan.n / max(1, m)).ceil().to(torch.int64)
    return (2 * expect.clamp(min=scan.kk) + _CAP_SLACK).clamp(max=max(1, scan.n))


def _launch(scan: _Scan, queries: torch.Tensor, bars: torch.Tensor, bar_rows: torch.Tensor, cap: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the kernel over the index for ``queries`` with their bars (a score, and the last row kept
    where a row ties it: float32 and int32 [q]) -> (buffer int64 [q, cap], survivors int64 [q] on the host;
    slots past a count are garbage)."""
    b, (n, d) = len(queries), scan.codes.shape
    dp = scan.qc.shape[1]
    counts = torch.zeros(b, dtype=torch.int32, device=scan.qs.device)
    buf = torch.empty((b, cap), dtype=torch.int64, device=scan.qs.device)
    n_mblocks = triton.cdiv(b, _BM)
    exclude = scan.exclude[queries].contiguous()
    filtered = scan.allow is not None
    words = scan.allow[queries].contiguous() if filtered else exclude  # any int64 tensor: never read unfiltered
    grid = (n_mblocks * triton.cdiv(n, _BN),)
    _bar_scan_kernel[grid](scan.qc[queries].contiguous(), scan.qs[queries].contiguous(), scan.codes, scan.scales,
                           exclude, words, bars.contiguous(), bar_rows.contiguous(), counts, buf, b, n, n_mblocks,
                           words.shape[1] if filtered else 0, cap, D=d, DP=dp, BM=_BM, BN=_BN, FILTERED=filtered,
                           num_warps=_WARPS)
    return buf, counts.to(torch.int64).cpu()


def _selected(buf: torch.Tensor, done: torch.Tensor, counts: torch.Tensor, kk: int) -> torch.Tensor:
    """The best ``kk`` keys of the stored survivors (the first ``counts`` slots) of the buffer rows ``done`` (bool,
    on the host), sorted; INT64_MIN pads a query with fewer. Only the slots some query filled are read."""
    counts = counts[done]
    width = int(counts.max()) if len(counts) else 0
    keys = buf[:, :width] if bool(done.all()) else buf[done.to(buf.device), :width]
    keys = torch.where(torch.arange(width, device=buf.device)[None, :] < counts.to(buf.device)[:, None], keys,
                       INT64_MIN)
    if width < kk:
        keys = torch.cat([keys, torch.full((len(keys), kk - width), INT64_MIN, dtype=torch.int64,
                                           device=buf.device)], dim=1)
    return select_top(keys, kk)


def kernel_keys(codes_t: torch.Tensor, scales_t: torch.Tensor, qc: torch.Tensor, qs: torch.Tensor, kk: int,
                exclude: torch.Tensor, allow: torch.Tensor | None = None, trace: KernelTrace | None = None
                ) -> torch.Tensor:
    """The kernel path (the module's docstring) for quantised queries ``qc``/``qs`` -> sorted keys [B, kk]
    (INT64_MIN pads). ``trace``: filled with what it did."""
    trace = KernelTrace() if trace is None else trace
    b, n, d = qc.shape[0], codes_t.shape[0], codes_t.shape[1]
    out = torch.full((b, kk), INT64_MIN, dtype=torch.int64, device=qc.device)
    if b == 0 or kk == 0:
        return out
    dp = max(32, _next_pow2(d))
    dev = qc.device
    rows = sample_rows(n, dev)
    m = len(rows)
    scan = _Scan(codes_t.contiguous(), scales_t.contiguous(), torch.nn.functional.pad(qc, (0, dp - d)),
                 qs.contiguous(), exclude.contiguous(), None if allow is None else allow.contiguous(), kk, rows,
                 codes_t[rows], scales_t[rows])
    # the pending queries and, per query: its bar (a score; the last row kept at a tie with it: n, every row, for
    # a score from the sample), its buffer width (on the host) and the sample rank its bar came from
    pending = torch.arange(b, device=dev)
    ranks = torch.full((b,), _first_rank(scan, m), dtype=torch.int64, device=dev)
    bars, bar_rows = _bars(scan, pending, ranks), torch.full((b,), n, dtype=torch.int32, device=dev)
    caps = _caps(scan, ranks, m)
    while len(pending):
        trace.passes += 1
        again: list[tuple[torch.Tensor, ...]] = []  # (queries, bars, bar rows, caps, ranks) of the next pass
        order = torch.argsort(caps, stable=True)  # similar widths share a launch
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * int(caps[order[end]]) <= _KEY_BUDGET:
                end += 1
            cap = int(caps[order[end - 1]])
            idx = order[start:end].to(dev)
            queries, bar, bar_row, rank = pending[idx], bars[idx], bar_rows[idx], ranks[idx]
            buf, counts = _launch(scan, queries, bar, bar_row, cap)
            trace.launches += 1
            survived = list(zip(queries.tolist(), counts.tolist()))
            if trace.passes == 1:
                trace.survivors.extend(survived)
            trace.final.update(survived)
            over = counts > cap
            short = (counts < kk) & ~torch.isinf(bar).cpu() & ~over
            done = ~over & ~short
            if bool(done.any()):
                out[queries[done.to(dev)]] = _selected(buf, done, counts, kk)
            if bool(over.any()):
                # the k-th best key the buffer did store: k real rows reach it, so a safe bar (as a key: its score,
                # and its row for the rows tying it); its survivors are a subset of this pass's, so the count
                # bounds the width
                sel = torch.nonzero(over).squeeze(1)
                kth = torch.topk(buf[sel.to(dev)], kk, dim=1).values[:, -1]
                kth_rows, kth_scores, _ = decode_keys(kth)
                again.append((queries[sel.to(dev)], kth_scores, kth_rows.to(torch.int32), counts[sel],
                              rank[sel.to(dev)]))
                trace.overflowed += len(sel)
            if bool(short.any()):  # a lower bar (none once the rank passes the sample's admissible rows)
                sel = torch.nonzero(short).squeeze(1).to(dev)
                r = rank[sel] * _RESCAN_GROWTH
                again.append((queries[sel], _bars(scan, queries[sel], r), torch.full_like(bar_row[sel], n),
                              _caps(scan, r, m), r))
                trace.short += len(sel)
            del buf
            start = end
        if not again:
            break
        pending, bars, bar_rows, caps, ranks = (torch.cat(parts) for parts in zip(*again))
    return out


def fallback_block_rows(b: int, n: int, d: int, device: torch.device) -> int:
    """Rows per block of the fallback's scan for ``b`` queries over ``n`` rows of ``d`` codes: 65,536 off the
    GPU; on one, as many as ``_FALLBACK_GPU_KEYS`` and ``_FALLBACK_GPU_FLOATS`` allow (never fewer)."""
    if device.type != "cuda":
        return _FALLBACK_ROWS
    return max(_FALLBACK_ROWS, min(n, _FALLBACK_GPU_KEYS // max(1, b), _FALLBACK_GPU_FLOATS // max(1, d)))


def _fallback_keys(codes_t: torch.Tensor, scales_t: torch.Tensor, qc: torch.Tensor, qs: torch.Tensor, kk: int,
                   exclude: torch.Tensor, block_rows: int | None = None, allow: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Device-agnostic blocked scan with a running top-k merge (same keys, so the same exact result)."""
    b, n = qc.shape[0], codes_t.shape[0]
    if block_rows is None:
        block_rows = fallback_block_rows(b, n, codes_t.shape[1], qc.device)
    best = torch.full((b, 0), INT64_MIN, dtype=torch.int64, device=qc.device)
    for r0 in range(0, n, block_rows):
        c = codes_t[r0:r0 + block_rows]
        rows = torch.arange(r0, r0 + c.shape[0], device=qc.device)
        scores = scores_from_dot(int_dot(qc, c), scales_t[r0:r0 + c.shape[0]], qs[:, None])
        dead = rows[None, :] == exclude[:, None]
        if allow is not None:
            dead |= ((allow[:, rows >> 6] >> (rows & 63)[None, :]) & 1) == 0
        keys = _block_top_keys(scores.masked_fill_(dead, -float("inf")), rows, kk)
        keys = torch.cat([best, keys], dim=1)
        best = torch.topk(keys, min(kk, keys.shape[1]), dim=1, sorted=False).values
    return select_top(best, kk)


_TIE_SLACK = 64  # a block's float top-k takes this many more rows, so ties at its k-th score are all in


def _block_top_keys(scores: torch.Tensor, rows: torch.Tensor, kk: int) -> torch.Tensor:
    """A block's float32 scores (-inf: refused) -> keys of a set of rows that holds its best ``kk`` by key.

    Keys break ties by row, so the best ``kk`` keys are among the rows scoring at least the ``kk``-th best
    score. A float ``topk`` of ``kk`` + slack rows holds all of those when no more of them tie at that score
    than the slack; keys are made for those rows only, not for the whole block (at 10M rows, 80 MB of keys per
    query). Where more tie (an all-zero query ties everywhere), the whole block is keyed, as before."""
    m = min(scores.shape[1], kk + _TIE_SLACK)
    vals, idx = torch.topk(scores, m, dim=1, sorted=False)
    if m < scores.shape[1]:
        kth = torch.topk(vals, kk, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
        # (a -inf k-th score: fewer than kk admissible rows, every one of them in the top m)
        fits = ((scores >= kth) & (kth > -float("inf"))).sum(dim=1) <= m
        if not bool(fits.all()):
            return torch.where(scores > -float("inf"), make_keys(scores, rows), INT64_MIN)
    return torch.where(vals > -float("inf"), make_keys(vals, rows[idx]), INT64_MIN)


def gpu_search(codes_t: torch.Tensor, scales_t: torch.Tensor, queries_t: torch.Tensor, k: int,
               exclude: torch.Tensor | None = None, use_kernel: bool | None = None, allow: torch.Tensor | None = None,
               trace: KernelTrace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact int8 search on torch tensors (CUDA in production) -> (rows int64 [B,k'], scores float32 [B,k']).

    ``codes_t`` int8 [N,d], ``scales_t`` float32 [N], ``queries_t`` float [B,d], ``exclude`` int64 [B] of
    *row* indices (-1 = none; map ids to rows with ``search.exclude_rows``). k' = min(k, N); rows left short
    by an exclusion are padded with row -1 / score -inf. ``use_kernel`` None = the Triton kernel (``kernel_keys``,
    any k) when triton is importable and the tensors are on CUDA (or the interpreter is on), else the torch
    fallback. ``allow``: a row bitmap per query (``filters``; int64 or uint64 [B, ceil(N / 64)]), the top-k of
    the admissible rows. ``trace``: filled with what the kernel path did (its passes, rescans).
    """
    k = validate_k(k)
    if queries_t.ndim != 2 or queries_t.shape[1] != codes_t.shape[1]:
        raise ValueError(f"query must have shape [B, {codes_t.shape[1]}], got {list(queries_t.shape)}")
    if not bool(torch.isfinite(queries_t).all()):
        raise ValueError("query contains NaN or inf")
    b, n = queries_t.shape[0], codes_t.shape[0]
    kk = min(k, n)
    if exclude is None:
        exclude = torch.full((b,), -1, dtype=torch.int64, device=queries_t.device)
    exclude = exclude.to(torch.int64).reshape(b)
    if allow is not None:
        if tuple(allow.shape) != (b, -(-n // 64)):
            raise ValueError(f"allow must be a row bitmap of shape [{b}, {-(-n // 64)}], got {list(allow.shape)}")
        allow = allow.view(torch.int64) if allow.dtype == torch.uint64 else allow.to(torch.int64)
    qc, qs = quantize_rows_torch(queries_t)
    if use_kernel is None:
        use_kernel = triton is not None and (queries_t.is_cuda or _interpreting())
    if b == 0:
        keys = torch.full((0, kk), INT64_MIN, dtype=torch.int64, device=queries_t.device)
    elif use_kernel:
        keys = kernel_keys(codes_t, scales_t, qc, qs, kk, exclude, allow, trace)
    else:
        keys = _fallback_keys(codes_t, scales_t, qc, qs, kk, exclude, allow=allow)
    rows, scores, valid = decode_keys(keys)
    return torch.where(valid, rows, -1), torch.where(valid, scores, -float("inf"))


@dataclass
class GpuIndex:
    """An ``Int8Index`` resident on one torch device, with the glue around ``gpu_search`` that a served
    request needs (item ids <-> rows on the device, the exclusion, dequantised embeddings). The
    ``widefunnel_ann`` plugin's KIND_GPU instances, the in-process funnel and ``benchmarks/gpu_check.py``
    all search through it, so the GPU check measures the code the server runs."""

    codes: torch.Tensor  # int8 [N, d]
    scales: torch.Tensor  # float32 [N]
    ids: torch.Tensor  # int64 [N]: external id of each row
    sorted_ids: torch.Tensor  # int64 [N]: ids ascending ...
    rows_by_id: torch.Tensor  # int64 [N]: ... and the row of each

    @classmethod
    def from_index(cls, index: Int8Index, device: str | torch.device) -> GpuIndex:
        prepared = prepare_index(index)

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(put(index.codes), put(index.scales), put(index.ids), put(prepared.ids_sorted),
                   put(prepared.ids_order))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def exclude_rows(self, exclude_ids: torch.Tensor) -> torch.Tensor:
        """Per-query excluded item ids (-1 = none) -> row indices (-1 = none or unknown id), on the device."""
        ex = exclude_ids.to(self.device, torch.int64).reshape(-1)
        pos = torch.searchsorted(self.sorted_ids, ex).clamp(max=len(self.sorted_ids) - 1)
        return torch.where(self.sorted_ids[pos] == ex, self.rows_by_id[pos], -1)

    def search(self, queries: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None,
               emit_embeddings: bool = False, use_kernel: bool | None = None, allow: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
        """-> CANDIDATE_ID int64 [B,k'], CANDIDATE_SCORE float32 [B,k'] (and CANDIDATE_EMB float32 [B,k',d]):
        what the CPU path returns for the same index, padded alike (id -1, score -inf, zero embedding).
        ``allow``: a row bitmap per query (``filters``), moved to the device."""
        q = torch.as_tensor(queries, device=self.device).float()
        excl = None if exclude_ids is None else self.exclude_rows(torch.as_tensor(exclude_ids))
        if allow is not None:
            allow = torch.as_tensor(allow).to(self.device)
        rows, scores = gpu_search(self.codes, self.scales, q, k, excl, use_kernel, allow)
        safe = rows.clamp(min=0)
        out = {Step.CANDIDATE_ID: torch.where(rows >= 0, self.ids[safe], -1), Step.CANDIDATE_SCORE: scores.float()}
        if emit_embeddings:
            emb = self.codes[safe].float() * self.scales[safe][..., None]
            out[Step.CANDIDATE_EMB] = emb * (rows >= 0)[..., None]  # the -1 pad gets zeros, as on CPU
        return out

    def search_dlpack(self, query: Any, k: int, exclude_ids: np.ndarray | None, emit_embeddings: bool,
                      fingerprint: int, allow: np.ndarray | None = None) -> list[tuple[str, Any]]:
        """The plugin's request path: QUERY as a numpy array (a CPU input) or a DLPack capsule (a GPU one),
        EXCLUDE_ID as numpy or None -> (output name, DLPack capsule) pairs, FINGERPRINT last; the outputs
        stay on the device for the next step."""
        import torch.utils.dlpack as dl

        q = query if isinstance(query, np.ndarray) else dl.from_dlpack(query)
        out = self.search(torch.as_tensor(q, device=self.device), k,
                          None if exclude_ids is None else torch.from_numpy(np.array(exclude_ids, np.int64)),
                          emit_embeddings, allow=None if allow is None else torch.from_numpy(allow))
        b = out[Step.CANDIDATE_ID].shape[0]
        out[Step.FINGERPRINT] = torch.full((b, 1), int(fingerprint), dtype=torch.int64, device=self.device)
        return [(name, dl.to_dlpack(t.contiguous())) for name, t in out.items()]


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
