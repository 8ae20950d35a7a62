"""Exact int8 maximum-inner-product search, batch-invariant by construction.

Why the results cannot depend on the rest of the batch:
  * each query row is quantised with its own scale (``quantize_rows``);
  * the int8 x int8 dot product is computed exactly (int32 GEMM, or float32 GEMM on integer-valued operands,
    which is exact because every partial sum is an integer below 2**24 for d <= 1024), so the kernel, its
    blocking and its summation order cannot change a single bit;
  * the score is the elementwise ``(float32(dot) * item_scale) * query_scale``;
  * ranking uses unique int64 keys ``(orderable score bits << 32) | (2**32 - 1 - row)``: best score first,
    lower row first on ties, so every top-k below is a pure function of one query's own scores.

The scan is blocked (bounded memory: one int32 [b x R] block, a [b x (2k + slack)] key reservoir per query
chunk). Per block, one int8 GEMM gives exact dot products; a row can only enter a query's top-k if its dot
reaches an integer bound derived from the query's current k-th score and the scale range of its 64-row chunk
(rows are sorted by scale at build time, so the bound is tight); whole chunks are skipped on their max dot.
Surviving rows are scored exactly, keyed and appended to the reservoir, which a partial top-k compacts. The
first threshold comes either from a small dense first block (small k, then blocks grow x4) or, for large k,
from a strided row sample; a query whose sampled guess proves too high is rescanned safely, so the result is
always exact.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from widefunnel.ann.index import Int8Index
from widefunnel.ann.quantize import QMAX, quantize_rows

CHUNK = 64  # rows per upper-bound block (the code below uses >> 6 / & 63 for it)
INT64_MIN = -(2**63)  # "empty" key; decodes to a NaN score, never produced by a real (row, score)
_LOW32 = 0xFFFFFFFF
_BLOCK_ELEMS = 1 << 22  # query rows x item rows of one int32 score block (16 MiB)
_DENSE_FRACTION = 0.3  # share of qualifying chunks above which a block is filtered without gathering
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
    """-> float32 [B, dim]; ValueError naming ``query`` on wrong rank/dim/dtype or non-finite values."""
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query must have shape [B, {dim}], got {list(q.shape)}")
    if not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)):
        raise ValueError(f"query must be a float array, got dtype {q.dtype}")
    with np.errstate(over="ignore"):
        q = q.astype(np.float32, copy=False)
    bad = invalid_query_rows(q)
    if len(bad):
        raise ValueError(f"query rows {bad[:8].tolist()} contain NaN or inf (after float32 conversion)")
    return np.ascontiguousarray(q)


def exclude_rows(index: Int8Index, exclude_ids: np.ndarray | None, batch: int) -> np.ndarray:
    """Map per-query excluded item ids (-1 = none) to row indices (-1 = none / unknown id)."""
    if exclude_ids is None:
        return np.full(batch, -1, np.int64)
    ex = np.asarray(exclude_ids)
    if ex.size != batch or ex.ndim > 2 or not np.issubdtype(ex.dtype, np.integer):
        raise ValueError(f"exclude_ids must be an integer array of shape [{batch}], "
                         f"got {ex.dtype} {list(ex.shape)}")
    ex = ex.reshape(batch).astype(np.int64)
    srt, order = index.cache["ids_sorted"], index.cache["ids_order"]
    pos = np.minimum(np.searchsorted(srt, ex), len(srt) - 1)
    hit = (srt[pos] == ex) & (ex >= 0)
    return np.where(hit, order[pos], -1).astype(np.int64)


def dequantized(index: Int8Index, ids: np.ndarray) -> np.ndarray:
    """Dequantised embeddings of result ids (any shape) -> float32 [..., d]; the -1 pad gets zeros."""
    ids = np.asarray(ids)
    prepare_index(index)  # the id lookup lives in the search caches (already built by load_index)
    rows = exclude_rows(index, ids.reshape(-1), ids.size).reshape(ids.shape)
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


def int_dot(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """int8 [b,d] x int8 [R,d] -> exact dot products [b,R] (int32 on CPU, else integer-valued float32)."""
    if q.device.type == "cpu" and q.shape[1] >= 8 and int_mm_is_exact():  # d < 8: oneDNN misreads c.T strides
        return torch._int_mm(q, c.T)
    # every product and partial sum is an integer < 2**24: exact in float32 (and TF32) in any summation
    # order; "+ 0.0" turns a -0.0 (an all-zero sum's sign depends on the order) into +0.0, like the int path
    return (q.float() @ c.float().T).add_(0.0)


def scores_from_dot(dot: torch.Tensor, item_scales: torch.Tensor, query_scales: torch.Tensor) -> torch.Tensor:
    """The one score formula everything uses (CPU, IVF, GPU kernel): (float32(dot) * s_item) * s_query.
    (The explicit cast is exact, |dot| < 2**24, and ~2.5x faster than torch's mixed-dtype multiply.)"""
    return (dot.to(torch.float32) * item_scales) * query_scales


# ------------------------------------------------------------------------------------------------- sort keys
def make_keys(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float32 scores + int64 rows -> unique int64 keys; larger key = better (higher score, lower row)."""
    bits = scores.contiguous().view(torch.int32)
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


def keys_to_results(index: Int8Index, keys: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys -> (ids int64, scores float32) numpy, padding with id -1 / score -inf."""
    rows, scores, valid = decode_keys(keys)
    rows, scores, valid = rows.numpy(), scores.numpy(), valid.numpy()
    ids = np.where(valid, index.ids[np.where(valid, rows, 0)], -1).astype(np.int64)
    return ids, np.where(valid, scores, -np.inf).astype(np.float32)


# ------------------------------------------------------------------------------------------ prepared caches
def prepare_index(index: Int8Index) -> dict:
    """Build the search-time caches once (torch views, id lookup, 64-row scale bounds, int8 centroids) and run
    the int8 GEMM self-test, so the first request is not slow. Idempotent; ``load_index`` calls it."""
    cache = index.cache
    if cache.get("ready"):
        return cache
    n = index.count
    scales = np.ascontiguousarray(index.scales, dtype=np.float32)
    starts = np.arange(0, n, CHUNK)
    # plain ndarray views: slicing an np.memmap (a loaded index) costs microseconds of Python per slice
    cache["codes_np"], cache["scales_np"] = np.asarray(index.codes), scales
    cache["codes_t"] = torch.from_numpy(cache["codes_np"])
    cache["scales_t"] = torch.from_numpy(scales)
    with np.errstate(divide="ignore", over="ignore"):  # clamp: a subnormal scale must not give an inf bound
        smax, smin = np.maximum.reduceat(scales, starts), np.minimum.reduceat(scales, starts)
        cache["chunk_inv_smax_t"] = torch.from_numpy(np.minimum(1 / smax, 1e30))
        cache["chunk_inv_smin_t"] = torch.from_numpy(np.minimum(1 / smin, 1e30))
    cache["scales_pad_t"] = torch.from_numpy(np.concatenate([scales, np.ones(-n % CHUNK, np.float32)]))
    order = np.argsort(index.ids, kind="stable")
    cache["ids_order"], cache["ids_sorted"] = order, index.ids[order]
    sample = np.unique(np.linspace(0, n - 1, max(1, min(n, n // 16))).astype(np.int64))
    cache["sample_codes_t"] = torch.from_numpy(np.ascontiguousarray(index.codes[sample]))
    cache["sample_scales_t"] = torch.from_numpy(scales[sample])
    if index.ivf is not None:
        ccodes, cscales = quantize_rows(index.ivf.centroids)
        cache["centroid_codes_t"] = torch.from_numpy(ccodes)
        cache["centroid_scales_t"] = torch.from_numpy(cscales)
    int_mm_is_exact()
    cache["ready"] = True
    return cache


# ------------------------------------------------------------------------------------------------ exact scan
def _block_rows(batch: int, block_rows: int) -> int:
    rows = min(block_rows, max(1, _BLOCK_ELEMS // max(batch, 1)))
    return max(CHUNK, rows // CHUNK * CHUNK)


def _query_chunk(batch: int, kk: int) -> int:
    """Largest query-chunk whose reservoir (b x (2k + slack) int64) stays under the memory cap."""
    b = batch
    while b > 1 and b * (2 * kk + _Reservoir.SLACK) > _RESERVOIR_KEYS:
        b = (b + 1) // 2
    return b


def _query_bounds(thr: torch.Tensor, qs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u+, u-) with u a conservative lower bound of dot * s_item for any row that can still beat ``thr``.

    final = fl(fl(dot * s_i) * s_q) > thr needs dot * s_i > (thr / s_q)(1 - ~2**-23); the 2e-6 relative (and
    1e-30 absolute) margin also absorbs the float32 rounding of the per-chunk bounds computed from u.
    """
    u = thr.double() / qs.double()
    u = torch.where(torch.isfinite(u), u - u.abs() * 2e-6 - 1e-30, u).float()
    return u.clamp(min=0), u.clamp(max=0)


class _Reservoir:
    """Per-query buffer of candidate keys, compacted to the best k with a partial (unsorted) top-k.

    ``thr`` is the query's current k-th best score: later rows (higher row index, so they lose ties) must
    beat it strictly. A row's buffer is compacted when it holds more than 2k keys; a block that would
    overflow the ``SLACK`` margin (adversarial score orders only) takes a per-query merge path instead.
    """

    SLACK = 4096

    def __init__(self, b: int, kk: int, qs: torch.Tensor, thr: torch.Tensor, excl: torch.Tensor,
                 width: int = 0):
        self.kk, self.qs = kk, qs
        self.excl_sorted = np.sort(excl.numpy()[excl.numpy() >= 0])
        self.cap = max(2 * kk + self.SLACK, width)
        self.buf = torch.full((b, self.cap), INT64_MIN, dtype=torch.int64)
        self.fill = torch.zeros(b, dtype=torch.int64)
        self.thr = thr.clone()
        self.u_pos, self.u_neg = _query_bounds(self.thr, qs)

    def excluded_in(self, r0: int, r1: int) -> bool:
        """Whether any query excludes a row in [r0, r1) (host-side, no tensor op per block)."""
        i = int(np.searchsorted(self.excl_sorted, r0))
        return i < len(self.excl_sorted) and self.excl_sorted[i] < r1

    def seed(self, keys: torch.Tensor) -> None:
        """Take a whole first block (every row a candidate) and derive the first thresholds from it."""
        self.buf[:, :keys.shape[1]] = keys
        self.fill[:] = keys.shape[1]
        self.compact(torch.arange(keys.shape[0]))

    def add(self, qb: torch.Tensor, keys: torch.Tensor) -> None:
        if qb.numel() == 0:
            return
        cnt = torch.bincount(qb, minlength=self.buf.shape[0])
        over = self.fill + cnt > self.cap
        if bool(over.any()):
            keep = ~over[qb]
            for row in torch.nonzero(over).squeeze(1).tolist():
                self._merge_row(row, keys[qb == row])
            qb, keys, cnt = qb[keep], keys[keep], torch.where(over, 0, cnt)
        first = torch.cumsum(cnt, 0) - cnt
        pos = self.fill[qb] + torch.arange(qb.numel()) - first[qb]
        self.buf[qb, pos] = keys
        self.fill += cnt
        full = torch.nonzero(self.fill > 2 * self.kk).squeeze(1)
        if full.numel():
            self.compact(full)

    def _merge_row(self, row: int, keys: torch.Tensor) -> None:
        both = torch.cat([self.buf[row, :int(self.fill[row])], keys])
        self.buf[row] = INT64_MIN
        best = torch.topk(both, min(self.kk, both.numel()), sorted=False).values
        self.buf[row, :best.numel()] = best
        self.fill[row] = best.numel()
        self._set_threshold(torch.tensor([row]), best[None].min(dim=1).values)

    def compact(self, rows: torch.Tensor) -> None:
        width = int(self.fill[rows].max())
        sub = self.buf[rows, :width]
        best = torch.topk(sub, min(self.kk, width), dim=1, sorted=False).values
        self.buf[rows, :width] = INT64_MIN
        self.buf[rows, :best.shape[1]] = best
        self.fill[rows] = best.shape[1]
        self._set_threshold(rows, best.min(dim=1).values)

    def _set_threshold(self, rows: torch.Tensor, kth: torch.Tensor) -> None:
        _, score, valid = decode_keys(kth)  # thresholds only ever rise (an empty k-th key says nothing)
        self.thr[rows] = torch.maximum(self.thr[rows], torch.where(valid, score, torch.tensor(-float("inf"))))
        self.u_pos[rows], self.u_neg[rows] = _query_bounds(self.thr[rows], self.qs[rows])

    def result(self, k_out: int) -> torch.Tensor:
        return select_top(self.buf[:, :max(int(self.fill.max()), k_out)], k_out)


def _pad_to_chunks(dot: torch.Tensor) -> torch.Tensor:
    """Pad the (last, partial) block to whole 64-row chunks with a value below any real dot product."""
    extra = -dot.shape[1] % CHUNK
    if not extra:
        return dot
    low = torch.iinfo(dot.dtype).min if not dot.dtype.is_floating_point else -float("inf")
    return torch.cat([dot, torch.full((dot.shape[0], extra), low, dtype=dot.dtype)], dim=1)


def _dot_thresholds(res: _Reservoir, cache: dict, c0: int, nc: int, dtype: torch.dtype) -> torch.Tensor:
    """Per (query, 64-row chunk) integer bound T: a row can only beat the query's threshold if dot >= T.

    dot * s_i > u with s_i in [smin, smax] of the chunk gives dot > u / smax (u >= 0) or u / smin (u < 0); one
    of u+ / u- is zero, so T = floor(u+ * (1/smax) + u- * (1/smin)). Comparing raw int32 dot products against
    T avoids any float pass over the whole block.
    """
    t = torch.outer(res.u_pos, cache["chunk_inv_smax_t"][c0:c0 + nc])
    t.addr_(res.u_neg, cache["chunk_inv_smin_t"][c0:c0 + nc])
    return t.floor_().clamp_(-(2.0**30), 2.0**30).to(dtype)


def _mask_positions(hit: torch.Tensor) -> torch.Tensor:
    """Flat positions of a sparse bool [M, 64] mask, scanning it as int64 words (8x fewer elements) first."""
    words = torch.nonzero(hit.view(torch.int64).view(-1)).squeeze(1)
    wi, bit = torch.nonzero(hit.view(-1, 8).index_select(0, words), as_tuple=True)
    return words[wi] * 8 + bit


def _sparse_block(dot: torch.Tensor, r0: int, cache: dict, qs: torch.Tensor, excl: torch.Tensor,
                  res: _Reservoir) -> None:
    """Thresholded phase: only 64-row chunks whose max dot reaches the query's bound T are looked into, and
    inside them only rows with dot >= T are scored exactly and offered to the reservoir."""
    r = dot.shape[1]
    dot = _pad_to_chunks(dot)
    b, nc, c0 = dot.shape[0], dot.shape[1] // CHUNK, r0 // CHUNK
    d3 = dot.view(b, nc, CHUNK)
    bound = _dot_thresholds(res, cache, c0, nc, dot.dtype)
    cand = d3.amax(dim=2) >= bound
    bi, ci = torch.nonzero(cand, as_tuple=True)
    if bi.numel() == 0:
        return
    if bi.numel() > _DENSE_FRACTION * cand.numel():  # large k: most chunks qualify, skip the gather
        g, gbound = d3.view(b * nc, CHUNK), bound.view(-1)
        pos = _mask_positions(g >= gbound[:, None])
        m = pos >> 6  # CHUNK == 64
        qb, rows = m // nc, (m % nc << 6) + (pos & (CHUNK - 1)) + r0
    else:
        flat = bi * nc + ci
        g = d3.view(b * nc, CHUNK).index_select(0, flat)
        pos = _mask_positions(g >= bound.view(-1).index_select(0, flat)[:, None])
        m = pos >> 6
        qb, rows = bi[m], (ci[m] << 6) + (pos & (CHUNK - 1)) + r0
    s = scores_from_dot(g.view(-1)[pos], cache["scales_pad_t"][rows], qs[qb])
    keep = s > res.thr[qb]
    if dot.shape[1] != r or res.excluded_in(r0, r0 + r):
        keep &= (rows < r0 + r) & (rows != excl[qb])
    if not bool(keep.all()):  # rare: the integer bound is tight (but e.g. a zero query ties everywhere)
        qb, rows, s = qb[keep], rows[keep], s[keep]
    res.add(qb, make_keys(s, rows))


def _block_keys(dot: torch.Tensor, r0: int, cache: dict, qs: torch.Tensor, excl: torch.Tensor
                ) -> torch.Tensor:
    """Keys of every (query, row) of a block; excluded rows get the empty key."""
    r = dot.shape[1]
    s = scores_from_dot(dot, cache["scales_t"][r0:r0 + r], qs[:, None])
    keys = make_keys(s, torch.arange(r0, r0 + r))
    hit = torch.nonzero((excl >= r0) & (excl < r0 + r)).squeeze(1)
    if hit.numel():
        keys[hit, excl[hit] - r0] = INT64_MIN
    return keys


def _schedule(n: int, kk: int, batch: int, block: int, ramp: bool) -> list[tuple[int, int]]:
    """Row blocks (64-aligned starts). With ``ramp``: a first block of >= k rows scored densely (it seeds
    every threshold; up to 4096 rows while the batch is small, fewer blocks = less per-op overhead), then
    blocks that quadruple the rows seen, up to ``block`` rows, so loose early thresholds see small blocks."""
    if not ramp:
        return [(r0, min(n, r0 + block)) for r0 in range(0, n, block)]
    first = min(n, -(-max(kk, CHUNK, min(4096, 2**17 // max(batch, 1))) // CHUNK) * CHUNK)
    out, r0 = [(0, first)], first
    while r0 < n:
        r1 = min(n, r0 + min(block, 3 * r0))
        out.append((r0, r1))
        r0 = r1
    return out


def _estimate_thresholds(cache: dict, qc: torch.Tensor, qs: torch.Tensor, kk: int) -> torch.Tensor | None:
    """Guess each query's final k-th score from a strided row sample (rows are scale-sorted, so the sample is
    stratified): a score that ~1.5 k rows are expected to beat. Only a guess: a query that ends with fewer
    than k keys above it is rescanned with the safe schedule. None when k is too small for a useful sample."""
    n, m = cache["codes_t"].shape[0], cache["sample_codes_t"].shape[0]
    step = max(1, int(m * kk / (256 * n)))  # thin the sample down to ~256 expected hits
    m = -(-m // step)
    expect = kk * m / n
    j = int(expect * 1.25 + 4 * expect**0.5 + 8)
    if expect < 32 or j > m // 2:
        return None
    codes = cache["sample_codes_t"][::step].contiguous()
    scales = cache["sample_scales_t"][::step].contiguous()
    s = scores_from_dot(int_dot(qc, codes), scales, qs[:, None])
    return torch.topk(s, j, dim=1, sorted=False).values.amin(dim=1)


def scan_keys(cache: dict, qc: torch.Tensor, qs: torch.Tensor, excl: torch.Tensor, k: int,
              block_rows: int, estimate: bool = True) -> torch.Tensor:
    """Core blocked scan over all rows -> sorted keys [b, min(k, N)] (CPU tensors)."""
    codes_t = cache["codes_t"]
    n, b = codes_t.shape[0], qc.shape[0]
    kk = min(k, n)
    guess = _estimate_thresholds(cache, qc, qs, kk) if estimate else None
    sched = _schedule(n, kk, b, _block_rows(b, block_rows), ramp=guess is None)
    if guess is None:
        r0, r1 = sched.pop(0)
        res = _Reservoir(b, kk, qs, torch.full((b,), -float("inf")), excl, width=r1 - r0)
        res.seed(_block_keys(int_dot(qc, codes_t[r0:r1]), r0, cache, qs, excl))
    else:
        res = _Reservoir(b, kk, qs, guess, excl)
    for r0, r1 in sched:
        _sparse_block(int_dot(qc, codes_t[r0:r1]), r0, cache, qs, excl, res)
    keys = res.result(kk)
    short = torch.nonzero(keys[:, -1] == INT64_MIN).squeeze(1)
    if guess is not None and short.numel():  # the guess was too high for these queries: redo them safely
        keys[short] = scan_keys(cache, qc[short], qs[short], excl[short], k, block_rows, estimate=False)
    return keys


def _prepare_queries(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    k = validate_k(k)
    q = validate_queries(queries, index.dim)
    prepare_index(index)
    excl = exclude_rows(index, exclude_ids, q.shape[0])
    qc, qs = quantize_rows(q)
    return torch.from_numpy(qc), torch.from_numpy(qs), torch.from_numpy(excl), k


def _empty(batch: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((batch, k), -1, np.int64), np.full((batch, k), -np.inf, np.float32)


def exact_search(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
                 block_rows: int = 262144) -> tuple[np.ndarray, np.ndarray]:
    """queries float32 [B,d] -> (ids int64 [B,k'], scores float32 [B,k']) best first, k' = min(k, N).

    A row whose exclusion leaves fewer than k' items is padded with id -1 / score -inf, so the output shape
    (like every value in it) never depends on the other queries of the batch. ``block_rows`` caps the item
    rows per block (rounded to a multiple of 64); the result does not depend on it.
    """
    qc, qs, excl, k = _prepare_queries(index, queries, k, exclude_ids)
    if not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    batch, k_out = qc.shape[0], min(k, index.count)
    ids, scores = _empty(batch, k_out)
    step = max(1, _query_chunk(batch, k_out))
    for b0 in range(0, batch, step):
        sl = slice(b0, b0 + step)
        keys = scan_keys(index.cache, qc[sl], qs[sl], excl[sl], k_out, block_rows)
        ids[sl], scores[sl] = keys_to_results(index, keys)
    return ids, scores


def search(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
           nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact scan when ``nprobe`` is None or the index has no IVF, else IVF search over ``nprobe`` lists."""
    if nprobe is None or index.ivf is None:
        if nprobe is not None:
            validate_nprobe(nprobe)
        return exact_search(index, queries, k, exclude_ids)
    from widefunnel.ann.ivf import ivf_search

    return ivf_search(index, queries, k, nprobe, exclude_ids)
