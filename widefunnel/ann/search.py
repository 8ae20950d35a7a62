"""Exact int8 maximum-inner-product search, batch-invariant by construction.

Why the results cannot depend on the rest of the batch:
  * each query row is quantised with its own scale (``quantize_rows``);
  * the int8 x int8 dot product is computed exactly (int32 GEMM, or float32 GEMM on integer-valued operands,
    which is exact because every partial sum is an integer below 2**24 for d <= 1024), so the kernel, its
    blocking and its summation order cannot change a single bit;
  * the score is the elementwise ``(float32(dot) * item_scale) * query_scale``;
  * ranking uses unique int64 keys ``(orderable score bits << 32) | (2**32 - 1 - row)``: best score first,
    lower row first on ties, so every top-k below is a pure function of one query's own scores.

The scan is blocked (bounded memory) and keeps a per-query reservoir of keys that is compacted with a partial
top-k; once a query has k candidates, a block of 64 rows is only looked at when an upper bound of its scores
(max dot * max scale of the 64 rows; rows are sorted by scale at build time) beats the query's k-th score.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from widefunnel.ann.index import Int8Index
from widefunnel.ann.quantize import QMAX, quantize_rows

CHUNK = 64  # rows per upper-bound block
INT64_MIN = -(2**63)  # "empty" key; decodes to a NaN score, never produced by a real (row, score)
_LOW32 = 0xFFFFFFFF
_BLOCK_ELEMS = 1 << int(__import__('os').environ.get('WF_BLK', 22))  # query rows x item rows of one int32 score block (16 MiB)
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
    return np.flatnonzero(~np.isfinite(q.reshape(q.shape[0], -1)).all(axis=1)) if q.ndim >= 1 else np.array([])


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


def _exclude_rows(index: Int8Index, exclude_ids: np.ndarray | None, batch: int) -> np.ndarray:
    """Map per-query excluded item ids (-1 = none) to row indices (-1 = none / unknown id)."""
    if exclude_ids is None:
        return np.full(batch, -1, np.int64)
    ex = np.asarray(exclude_ids)
    if ex.size != batch or ex.ndim > 2 or not np.issubdtype(ex.dtype, np.integer):
        raise ValueError(f"exclude_ids must be an integer array of shape [{batch}], got {ex.dtype} {list(ex.shape)}")
    ex = ex.reshape(batch).astype(np.int64)
    srt, order = index.cache["ids_sorted"], index.cache["ids_order"]
    pos = np.minimum(np.searchsorted(srt, ex), len(srt) - 1)
    hit = (srt[pos] == ex) & (ex >= 0)
    return np.where(hit, order[pos], -1).astype(np.int64)


# ----------------------------------------------------------------------------------------- exact dot product
@functools.cache
def int_mm_is_exact() -> bool:
    """Self-test ``torch._int_mm`` on worst-case operands at several shapes.

    On CPUs without VNNI, int8 GEMM kernels may saturate 16-bit pair sums; if any probe disagrees with an exact
    reference we use the (slower) exact float32 path instead. Cached: runs once per process.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    rng = np.random.default_rng(0)
    try:
        for m, n, d in ((1, 64, 64), (2, 67, 8), (17, 1000, 128), (32, 4096, 64), (256, 130, 1024), (5, 9, 1024)):
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
    """int8 [b,d] x int8 [R,d] -> exact dot products [b,R] (int32 on CPU, integer-valued float32 elsewhere)."""
    if q.device.type == "cpu" and int_mm_is_exact():
        return torch._int_mm(q, c.T)
    # every product and partial sum is an integer < 2**24: exact in float32 (and TF32) for any summation order
    return q.float() @ c.float().T


def scores_from_dot(dot: torch.Tensor, item_scales: torch.Tensor, query_scales: torch.Tensor) -> torch.Tensor:
    """The one score formula everything uses (CPU, IVF, GPU kernel): (float32(dot) * s_item) * s_query."""
    return (dot * item_scales) * query_scales


# ------------------------------------------------------------------------------------------------- sort keys
def make_keys(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float32 scores + int64 rows -> unique int64 keys; larger key = better (higher score, then lower row)."""
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
    cache["codes_t"] = torch.from_numpy(index.codes)
    cache["scales_t"] = torch.from_numpy(scales)
    cache["chunk_smax_t"] = torch.from_numpy(np.maximum.reduceat(scales, starts))
    cache["chunk_smin_t"] = torch.from_numpy(np.minimum.reduceat(scales, starts))
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


def _t_low(thr: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Conservative float32 bound: s1 < t_low implies fl(s1 * qs) <= thr, so pruning on s1 is safe."""
    t = thr.double() / qs.double()
    margin = torch.where(torch.isfinite(t), t.abs() * 1e-6, torch.zeros_like(t))
    return torch.nextafter((t - margin).float(), torch.tensor(-float("inf")))


class _Reservoir:
    """Per-query buffer of candidate keys, compacted to the best k with a partial (unsorted) top-k.

    ``thr`` is the query's current k-th best score: later rows (higher row index, so they lose ties) must
    beat it strictly. A row's buffer is compacted when it holds more than 2k keys; a block that would
    overflow the ``SLACK`` margin (adversarial score orders only) takes a per-query merge path instead.
    """

    SLACK = 4096

    def __init__(self, b: int, kk: int, qs: torch.Tensor, thr: torch.Tensor, width: int = 0):
        self.kk, self.qs = kk, qs
        self.cap = max(2 * kk + self.SLACK, width)
        self.buf = torch.full((b, self.cap), INT64_MIN, dtype=torch.int64)
        self.fill = torch.zeros(b, dtype=torch.int64)
        self.thr = thr.clone()
        self.t_low = _t_low(self.thr, qs)

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
        _, score, valid = decode_keys(kth)
        self.thr[rows] = torch.where(valid, score, torch.tensor(-float("inf")))
        self.t_low[rows] = _t_low(self.thr[rows], self.qs[rows])

    def result(self, k_out: int) -> torch.Tensor:
        return select_top(self.buf[:, :max(int(self.fill.max()), k_out)], k_out)


def _pad_to_chunks(dot: torch.Tensor) -> torch.Tensor:
    """Pad the (last, partial) block to whole 64-row chunks with a value below any real dot product."""
    extra = -dot.shape[1] % CHUNK
    if not extra:
        return dot
    low = torch.iinfo(dot.dtype).min if not dot.dtype.is_floating_point else -float("inf")
    return torch.cat([dot, torch.full((dot.shape[0], extra), low, dtype=dot.dtype)], dim=1)


def _dot_thresholds(t_low: torch.Tensor, smax: torch.Tensor, smin: torch.Tensor, dtype: torch.dtype
                    ) -> torch.Tensor:
    """Per (query, 64-row chunk) integer bound T: a row can only beat the query's threshold if dot >= T.

    From fl(dot * s_i) >= t_low (with a 1e-6 relative margin for rounding) and s_i in [smin, smax] of the
    chunk. Comparing raw int32 dot products against T avoids a float pass over the whole block.
    """
    u = t_low.double()[:, None]
    u = torch.where(torch.isfinite(u), u - u.abs() * 1e-6 - 1e-300, u)
    t = torch.floor(torch.where(u >= 0, u / smax.double(), u / smin.double()))
    return t.clamp_(-(2.0**30), 2.0**30).to(dtype)


def _mask_positions(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzero of a sparse bool [M, 64] mask, scanning it as int64 words (8x fewer elements) first."""
    words = torch.nonzero(hit.view(torch.int64).view(-1)).squeeze(1)
    wi, bit = torch.nonzero(hit.view(-1, 8).index_select(0, words), as_tuple=True)
    pos = words[wi] * 8 + bit
    return pos // CHUNK, pos % CHUNK


def _sparse_block(dot: torch.Tensor, r0: int, cache: dict, qs: torch.Tensor, excl: torch.Tensor,
                  res: _Reservoir) -> None:
    """Thresholded phase: only 64-row chunks whose max dot reaches the query's bound T are looked into, and
    inside them only rows with dot >= T are scored exactly and offered to the reservoir."""
    r = dot.shape[1]
    dot = _pad_to_chunks(dot)
    b, nc, c0 = dot.shape[0], dot.shape[1] // CHUNK, r0 // CHUNK
    d3 = dot.view(b, nc, CHUNK)
    bound = _dot_thresholds(res.t_low, cache["chunk_smax_t"][c0:c0 + nc], cache["chunk_smin_t"][c0:c0 + nc],
                            dot.dtype)
    bi, ci = torch.nonzero(d3.amax(dim=2) >= bound, as_tuple=True)
    if bi.numel() == 0:
        return
    flat = bi * nc + ci
    g = d3.view(b * nc, CHUNK).index_select(0, flat)
    m, col = _mask_positions(g >= bound.view(-1).index_select(0, flat)[:, None])
    qb, rows = bi[m], ci[m] * CHUNK + col + r0
    s = scores_from_dot(g[m, col], cache["scales_pad_t"][rows], qs[qb])
    keep = (s > res.thr[qb]) & (rows < r0 + r) & (rows != excl[qb])
    res.add(qb[keep], make_keys(s[keep], rows[keep]))


def _block_keys(dot: torch.Tensor, r0: int, cache: dict, qs: torch.Tensor, excl: torch.Tensor) -> torch.Tensor:
    """Keys of every (query, row) of a block; excluded rows get the empty key."""
    r = dot.shape[1]
    s = scores_from_dot(dot, cache["scales_t"][r0:r0 + r], qs[:, None])
    keys = make_keys(s, torch.arange(r0, r0 + r))
    hit = torch.nonzero((excl >= r0) & (excl < r0 + r)).squeeze(1)
    if hit.numel():
        keys[hit, excl[hit] - r0] = INT64_MIN
    return keys


def _schedule(n: int, kk: int, block: int, ramp: bool) -> list[tuple[int, int]]:
    """Row blocks (64-aligned starts). With ``ramp``: a first block of ~k rows scored densely (it seeds every
    threshold), then blocks that double up to ``block`` rows, so early loose thresholds only see small blocks."""
    if not ramp:
        return [(r0, min(n, r0 + block)) for r0 in range(0, n, block)]
    first = min(n, -(-max(kk, CHUNK) // CHUNK) * CHUNK)
    out, r0 = [(0, first)], first
    while r0 < n:
        r1 = min(n, r0 + min(block, r0))
        out.append((r0, r1))
        r0 = r1
    return out


def _estimate_thresholds(cache: dict, qc: torch.Tensor, qs: torch.Tensor, kk: int) -> torch.Tensor | None:
    """Guess each query's final k-th score from a strided row sample (rows are scale-sorted, so the sample is
    stratified): a score that ~1.25 k rows are expected to beat. Only a guess: a query that ends with fewer
    than k keys above it is rescanned with the safe schedule. None when k is too small for a useful sample."""
    n, m = cache["codes_t"].shape[0], cache["sample_codes_t"].shape[0]
    expect = kk * m / n
    if expect < 32 or n < 16 * kk:
        return None
    j = int(expect * 1.25 + 4 * expect**0.5 + 8)
    s = scores_from_dot(int_dot(qc, cache["sample_codes_t"]), cache["sample_scales_t"], qs[:, None])
    return torch.kthvalue(s, m - j + 1, dim=1).values


def scan_keys(cache: dict, qc: torch.Tensor, qs: torch.Tensor, excl: torch.Tensor, k: int,
              block_rows: int, estimate: bool = True) -> torch.Tensor:
    """Core blocked scan over all rows -> sorted keys [b, min(k, N)] (CPU tensors)."""
    codes_t = cache["codes_t"]
    n, b = codes_t.shape[0], qc.shape[0]
    kk = min(k, n)
    guess = _estimate_thresholds(cache, qc, qs, kk) if estimate else None
    sched = _schedule(n, kk, _block_rows(b, block_rows), ramp=guess is None)
    if guess is None:
        r0, r1 = sched.pop(0)
        res = _Reservoir(b, kk, qs, torch.full((b,), -float("inf")), width=r1 - r0)
        res.seed(_block_keys(int_dot(qc, codes_t[r0:r1]), r0, cache, qs, excl))
    else:
        res = _Reservoir(b, kk, qs, guess)
    for r0, r1 in sched:
        _sparse_block(int_dot(qc, codes_t[r0:r1]), r0, cache, qs, excl, res)
    keys = res.result(kk)
    short = torch.nonzero(res.fill < kk).squeeze(1)
    if guess is not None and short.numel():  # the guess was too high for these queries: redo them safely
        keys[short] = scan_keys(cache, qc[short], qs[short], excl[short], k, block_rows, estimate=False)
    return keys


def _prepare_queries(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    k = validate_k(k)
    q = validate_queries(queries, index.dim)
    prepare_index(index)
    excl = _exclude_rows(index, exclude_ids, q.shape[0])
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
    step = _query_chunk(batch, k_out)
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
