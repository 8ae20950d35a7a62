"""Compiled (numba) CPU kernels for the int8 scan: the thresholded top-k filters, IVF, and the result sort.

Why compiled: the exact scan is one int8 GEMM plus a selection. Written as torch ops, the selection was
about 50 small ops per row block, which cost as much as the GEMM and grew with k. Here each query keeps its
own reservoir of candidate keys in one loop, so the selection costs a few passes over data already in cache.

Every kernel keeps the contract of ``search.py``: the score is ``(float32(dot) * s_item) * s_query`` with
the integer ``dot`` exact, and rows are ranked by the unique int64 key ``(orderable score bits << 32) |
(2**32 - 1 - row)``. A query's result is therefore a pure function of that query, whatever the batch, the
blocking or the thread count; tests compare these kernels with the torch reference key for key.

A reservoir is one row of ``buf`` (int64 keys) with its ``fill``. It accepts a key only if the key beats
``kth``, its bar: the reservoir's own k-th best key once it has seen k, before that a starting bar that is
either safe (at most the query's true k-th best key: then a rejected key can never be in the top k) or a
guess (``search.scan_keys`` rescans a query whose guess proves too high). When full it keeps its best
``kk`` keys with a partition and raises ``kth``; ``kth`` only ever rises.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from widefunnel.ann import int8_dot

INT64_MIN = np.int64(-(2**63))
_LOW32 = np.int64(0xFFFFFFFF)
_MARGIN = 2e-6  # relative slack of a dot bound: covers the two float32 roundings of a normal score
_TINY = 2.0**-148  # absolute slack: a subnormal float32 result is off by up to 2**-150, not relatively


@njit(inline="always")
def _key(score: np.float32, row: np.int64, scratch: np.ndarray) -> np.int64:
    """Same key as ``search.make_keys``: the bit pattern of ``score`` made orderable, then the row.
    -0.0 is keyed (and reported) as +0.0: the two are one score, so they tie and the lower row wins."""
    scratch[0] = score + np.float32(0.0)
    bits = np.int64(scratch.view(np.int32)[0])
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return ordered * np.int64(4294967296) + (_LOW32 - row)


@njit(inline="always")
def _score(dot, s_item: np.float32, s_query: np.float32) -> np.float32:
    """The one score formula (``search.scores_from_dot``): (float32(dot) * s_item) * s_query."""
    return np.float32(np.float32(dot) * s_item) * s_query


@njit(inline="always")
def _key_score(key: np.int64, scratch: np.ndarray) -> float:
    """Score (float32, as float64) of a key; -inf for the empty key."""
    if key == INT64_MIN:
        return -np.inf
    ordered = np.int32(key >> 32)
    scratch.view(np.int32)[0] = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return float(scratch[0])


# the lowest set bit of a 64-bit word, for walking a row bitmap word by word
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.zeros(64, np.int64)
for _bit in range(64):
    _DEBRUIJN_INDEX[(((1 << _bit) * 0x03F79D71B4CB0A89) & (2**64 - 1)) >> 58] = _bit


@njit(inline="always")
def _lowest_bit(word):
    """Index of the lowest set bit of a non-zero uint64 word (De Bruijn multiplication)."""
    low = word & (~word + np.uint64(1))
    return _DEBRUIJN_INDEX[(low * _DEBRUIJN) >> np.uint64(58)]


@njit(inline="always")
def _admits(allow, qi, row) -> bool:
    """Row ``row`` passes query ``qi``'s filter: ``allow`` [b, W] uint64 is a bitmap over the index's rows
    (bit ``row & 63`` of word ``row >> 6``); W = 0 means no filter."""
    if allow.shape[1] == 0:
        return True
    return (allow[qi, row >> 6] >> np.uint64(row & 63)) & np.uint64(1) != np.uint64(0)


@njit(inline="always")
def _dot_floor(kth: np.int64, qs: np.float32, scratch: np.ndarray) -> float:
    """u: a lower bound on dot * s_item for any row whose key can still beat ``kth``.

    score = fl(fl(dot * s_i) * s_q) >= thr needs dot * s_i >= thr / s_q, up to two roundings: relative
    (2**-24 each) for normal floats, absolute (2**-150 each, i.e. 2**-150 / s_q in these units) where a
    result is subnormal. The margin covers both and the float64 rounding of the bound. -inf (no pruning)
    when nothing is known yet, or when the bar is not finite (an overflowed score ties only at +inf).
    """
    thr = _key_score(kth, scratch)
    if not np.isfinite(thr) or qs == 0:
        return -np.inf
    u = thr / float(qs)
    return u - abs(u) * _MARGIN - _TINY / float(qs) - _TINY


@njit
def _compact(row: np.ndarray, fill: int, kk: int) -> np.int64:
    """Keep the best ``kk`` of ``row[:fill]`` in ``row[:kk]`` (unordered); return the new k-th key."""
    part = np.partition(row[:fill], fill - kk)
    row[:kk] = part[fill - kk:]
    return part[fill - kk]


@njit(inline="always")
def _offer(buf: np.ndarray, fill: np.ndarray, kth: np.ndarray, qi: int, key: np.int64, kk: int) -> bool:
    """Append ``key`` to query ``qi``'s reservoir; compact when full. True when ``kth`` rose."""
    f = fill[qi]
    buf[qi, f] = key
    f += 1
    if f == buf.shape[1]:
        kth[qi] = max(kth[qi], _compact(buf[qi], f, kk))
        fill[qi] = kk
        return True
    fill[qi] = f
    return False


@njit(inline="always")
def _real_bound(u: float, inv_smax: float, inv_smin: float) -> float:
    """Real-valued bound: a row of a chunk with scales in [smin, smax] can only beat u if dot >= it."""
    if u == -np.inf:
        return -np.inf
    return u * inv_smax if u >= 0 else u * inv_smin


@njit(parallel=True, nogil=True, cache=True)
def block_maxima(dot, m8, mc):
    """Pass 1 of a GEMM block ``dot`` [R, b] (item rows x queries: the layout the int8 GEMM is fastest in),
    parallel over 64-row chunks: per query, the max of each 8-row group (``m8`` [R/8, b]) and of each chunk
    (``mc`` [R/64, b]). Vertical maxima over whole rows: vectorised over the queries, constant trip count."""
    r, b = dot.shape
    for c in prange((r + 63) >> 6):
        g0, g1 = c << 3, min((r + 7) >> 3, (c << 3) + 8)
        for g in range(g0, g1):
            a = g << 3
            if a + 8 <= r:
                for qi in range(b):
                    m = dot[a, qi]
                    for j in range(1, 8):
                        m = max(m, dot[a + j, qi])
                    m8[g, qi] = m
            else:
                for qi in range(b):
                    m = dot[a, qi]
                    for j in range(a + 1, r):
                        m = max(m, dot[j, qi])
                    m8[g, qi] = m
        for qi in range(b):
            m = m8[g0, qi]
            for g in range(g0 + 1, g1):
                m = max(m, m8[g, qi])
            mc[c, qi] = m


@njit(parallel=True, nogil=True, cache=True)
def group_bars(m8, r0, r, chunk_smin, chunk_smax, qs, excl, kk, kth):
    """Raise each query's bar to a safe one from a block's 8-row group maxima, sparing the first block
    (where no bar exists yet) from keying every row.

    Each group max is one real row's dot d, and that row's score is at least d * s_min * s_q of its chunk
    (d * s_max * s_q when d < 0). Over kk distinct groups, the kk-th largest such bound is therefore at most
    the query's true kk-th best score. The group holding the query's excluded row is left out: that row is
    not a result. Queries of a block with fewer than kk other groups keep their bar."""
    ng, b = (r + 7) >> 3, m8.shape[1]
    for qi in prange(b):
        skip = (excl[qi] - r0) >> 3 if r0 <= excl[qi] < r0 + r else -1
        if ng - (skip >= 0) < kk:
            continue
        scratch = np.empty(1, np.float32)
        lb = np.empty(ng - (skip >= 0))
        i = 0
        for g in range(ng):
            if g == skip:
                continue
            chunk = (r0 + (g << 3)) >> 6
            d = float(m8[g, qi])
            lb[i] = d * (chunk_smin[chunk] if d >= 0 else chunk_smax[chunk]) * float(qs[qi])
            i += 1
        bar = np.partition(lb, i - kk)[i - kk]
        bar -= abs(bar) * 1e-5 + 2.0**-140  # the float32 roundings of the real scores stay above it
        if np.isfinite(bar):
            kth[qi] = max(kth[qi], _key(np.float32(bar), _LOW32, scratch))


@njit(parallel=True, nogil=True, cache=True)
def row_bars(dot, r0, scales, qs, excl, allow, kk, kth):
    """``group_bars`` for a first block with fewer than kk 8-row groups but more than kk rows (narrow blocks
    of wide batches), and for every filtered scan (a group's max may be a row the filter refuses): each
    query's bar becomes the kk-th best exact score of the block's admissible rows (not its excluded row, only
    rows its filter admits), keyed below every real row of that score. Safe: kk admissible rows reach it."""
    r, b = dot.shape
    for qi in prange(b):
        scratch = np.empty(1, np.float32)
        s = np.empty(r, np.float32)
        n = 0
        for j in range(r):
            row = r0 + j
            if row != excl[qi] and _admits(allow, qi, row):
                s[n] = _score(dot[j, qi], scales[row], qs[qi])
                n += 1
        if n < kk:
            continue
        bar = np.partition(s[:n], n - kk)[n - kk]
        if np.isfinite(bar):
            kth[qi] = max(kth[qi], _key(bar, _LOW32, scratch))


@njit(parallel=True, nogil=True, cache=True)
def block_offer(dot, m8, mc, r0, chunk_inv_smax, chunk_inv_smin, scales, qs, excl, allow, buf, fill, kth, kk,
                n_groups, n_seg):
    """Pass 2: offer the block's rows to the reservoirs. Work item p = (query group, row segment) owns its
    queries' reservoirs (query q, segment s: reservoir q * n_seg + s), so no two threads touch one. Per
    chunk, only queries whose chunk max reaches their bound look further, only into the 8-row groups that
    do, and only rows with dot >= bound are scored exactly and keyed; a raised k-th key tightens the bound
    at once. A filtered query skips every chunk its bitmap word empties (a chunk is one 64-bit word)."""
    r, b = dot.shape
    nc = (r + 63) >> 6
    filtered = allow.shape[1] > 0
    for p in prange(n_groups * n_seg):
        g, sg = p // n_seg, p % n_seg
        q0, q1 = b * g // n_groups, b * (g + 1) // n_groups
        scratch = np.empty(1, np.float32)
        u = np.empty(q1 - q0)
        for qi in range(q0, q1):
            u[qi - q0] = _dot_floor(kth[qi * n_seg + sg], qs[qi], scratch)
        for c in range(nc * sg // n_seg, nc * (sg + 1) // n_seg):
            chunk = (r0 >> 6) + c
            ism, isn = chunk_inv_smax[chunk], chunk_inv_smin[chunk]
            j1 = min(r, (c + 1) << 6)
            for qi in range(q0, q1):
                if filtered and allow[qi, chunk] == 0:
                    continue
                t = _real_bound(u[qi - q0], ism, isn)
                if mc[c, qi] < t:
                    continue
                res = qi * n_seg + sg
                q_s, ex = qs[qi], excl[qi]
                for gg in range(c << 3, (j1 + 7) >> 3):
                    if m8[gg, qi] < t:
                        continue
                    for j in range(gg << 3, min(j1, (gg << 3) + 8)):
                        d = dot[j, qi]
                        if d < t:
                            continue
                        row = r0 + j
                        if row == ex or not _admits(allow, qi, row):
                            continue
                        key = _key(_score(d, scales[row], q_s), row, scratch)
                        if key > kth[res] and _offer(buf, fill, kth, res, key, kk):
                            u[qi - q0] = _dot_floor(kth[res], q_s, scratch)
                            t = _real_bound(u[qi - q0], ism, isn)


@intrinsic
def _cttz(typingctx, x):
    """Index of the lowest set bit of a nonzero uint64 (one tzcnt)."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return types.uint64(types.uint64), codegen


@intrinsic
def _mask16(typingctx, vals, off, bounds, boff):
    """Bit i set <=> ``vals[off + i] >= bounds[boff + i]`` for i < 16: one vector load and compare, the lanes'
    results as a bit mask (``vpcmpd`` + ``kmovw`` on AVX-512, ``vpcmpgtd`` + ``movmskps`` on AVX2). numba
    exposes no such primitive, and the scalar loop it replaces cost a branch per (row, query) pair.
    ``vals``: int32 or float32 (the exact-float GEMM; the int32 bound converts exactly below 2**24, and
    above it orders the same against |dot| < 2**24)."""
    if not (isinstance(vals, types.Array) and isinstance(bounds, types.Array)):
        return None
    is_float = isinstance(vals.dtype, types.Float)

    def codegen(context, builder, signature, args):
        v_arr = context.make_array(signature.args[0])(context, builder, args[0])
        b_arr = context.make_array(signature.args[2])(context, builder, args[2])
        lane = ir.FloatType() if is_float else ir.IntType(32)
        v_ptr = builder.bitcast(builder.gep(v_arr.data, [args[1]]), ir.VectorType(lane, 16).as_pointer())
        b_ptr = builder.bitcast(builder.gep(b_arr.data, [args[3]]), ir.VectorType(ir.IntType(32), 16).as_pointer())
        v, t = builder.load(v_ptr, align=4), builder.load(b_ptr, align=4)
        if is_float:
            hit = builder.fcmp_ordered(">=", v, builder.sitofp(t, ir.VectorType(ir.FloatType(), 16)))
        else:
            hit = builder.icmp_signed(">=", v, t)
        return builder.zext(builder.bitcast(hit, ir.IntType(16)), ir.IntType(64))
    return types.uint64(vals, off, bounds, boff), codegen


@intrinsic
def _prefetch_row(typingctx, codes, row):
    """Ask for row ``row`` of a C-contiguous 2-D array ahead of its use (``prefetcht0``): a filtered scan
    reads scattered rows, which the hardware prefetcher cannot predict."""
    if not (isinstance(codes, types.Array) and codes.ndim == 2):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        stride = builder.extract_value(arr.strides, 0)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        base = builder.bitcast(arr.data, i8p)
        offset = builder.mul(builder.sext(args[1], ir.IntType(64)) if args[1].type.width < 64 else args[1], stride)
        ptr = builder.gep(base, [offset])
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        name = "llvm.prefetch.p0" if str(i8p) == "ptr" else "llvm.prefetch.p0i8"  # opaque or typed pointers
        fn = builder.module.globals.get(name) or ir.Function(builder.module, fnty, name)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(codes, row), codegen


@njit(inline="always")
def _int_bound(t: float) -> np.int32:
    """Smallest int32 T with (integer dot >= t) <=> (dot >= T); |dot| < 2**24, so clamping is exact."""
    if t <= -(2.0**31):
        return np.int32(-(2**31))
    if t >= 2.0**31 - 1:
        return np.int32(2**31 - 1)
    return np.int32(np.ceil(t))


@njit(parallel=True, nogil=True, cache=True)
def block_rows_scan(dot, r0, chunk_inv_smax, chunk_inv_smin, scales, qs, excl, allow, buf, fill, kth, kk, n_groups,
                    n_seg):
    """One-pass alternative to ``block_maxima`` + ``block_offer`` for batches of 16 and more. Work item p =
    (query group g, row segment s) owns reservoirs ``q * n_seg + s`` of its queries (16-query tiles) and walks
    its rows: it tests a whole row slice against the queries' integer bounds (contiguous, vectorised), and in
    a row that passes turns the tiles into bit masks (``_mask16``) whose set bits are exactly the surviving
    pairs: one read of the block plus work per survivor, no branch per (row, query) pair.

    Split the rows, not the queries (``n_groups`` 1, ``n_seg`` = threads): each thread then reads the rows its
    own core's GEMM thread just wrote. Split by queries, every thread read half of each row from the other
    core's cache; on this VM that made GEMM + filter ~3x slower in phases that came and went (the vCPUs'
    placement, presumably), while the GEMM alone, or followed by the row-split ``block_maxima``, was not.
    Fills and bars are kept in locals and written back once: adjacent reservoirs belong to other threads."""
    r, b = dot.shape
    flat = dot.reshape(-1)
    tiles = (b + 15) >> 4
    width = buf.shape[1]
    for p in prange(n_groups * n_seg):
        g, sg = p // n_seg, p % n_seg
        q0, q1 = (tiles * g // n_groups) << 4, min(b, (tiles * (g + 1) // n_groups) << 4)
        j0, j1 = r * sg // n_seg, r * (sg + 1) // n_seg
        if q0 >= q1 or j0 >= j1:
            continue
        full = q0 + ((q1 - q0) >> 4 << 4)  # tiles [q0, full) are whole; [full, q1) is the remainder
        scratch = np.empty(1, np.float32)
        u, t = np.empty(b), np.empty(b, np.int32)  # t: integer bounds, so the row test stays int32
        lf, lk = np.empty(b, np.int64), np.empty(b, np.int64)  # this work item's fills and bars
        # one scale range for the whole block (rows are scale-sorted, so it is narrow): bounds per block,
        # not per chunk, keep the per-row work to the vectorised test
        c0, c1 = r0 >> 6, (r0 + r + 63) >> 6
        ism, isn = chunk_inv_smax[c0:c1].min(), chunk_inv_smin[c0:c1].max()
        for qi in range(q0, q1):
            lf[qi], lk[qi] = fill[qi * n_seg + sg], kth[qi * n_seg + sg]
            u[qi] = _dot_floor(lk[qi], qs[qi], scratch)
            t[qi] = _int_bound(_real_bound(u[qi], ism, isn))
        tg = t[q0:q1]
        for j in range(j0, j1):
            base = j * b
            rj = flat[base + q0:base + q1]
            hit = False
            for i in range(q1 - q0):
                hit |= rj[i] >= tg[i]
            if not hit:
                continue
            row = r0 + j
            for a in range(q0, q1, 64):
                m = np.uint64(0)
                for s in range(0, min(64, q1 - a), 16):
                    if a + s < full:
                        m |= _mask16(flat, base + a + s, t, a + s) << np.uint64(s)
                    else:
                        for i in range(q1 - a - s):
                            m |= np.uint64(flat[base + a + s + i] >= t[a + s + i]) << np.uint64(s + i)
                while m:
                    qi = a + np.intp(_cttz(m))
                    m &= m - np.uint64(1)
                    if row == excl[qi] or not _admits(allow, qi, row):
                        continue
                    key = _key(_score(flat[base + qi], scales[row], qs[qi]), row, scratch)
                    if key <= lk[qi]:
                        continue
                    res, f = qi * n_seg + sg, lf[qi]
                    buf[res, f] = key
                    f += 1
                    if f == width:  # full: keep the best kk, raise the bar
                        lk[qi] = max(lk[qi], _compact(buf[res], f, kk))
                        f = kk
                        u[qi] = _dot_floor(lk[qi], qs[qi], scratch)
                        t[qi] = _int_bound(_real_bound(u[qi], ism, isn))
                    lf[qi] = f
        for qi in range(q0, q1):
            fill[qi * n_seg + sg], kth[qi * n_seg + sg] = lf[qi], lk[qi]


@njit(inline="always")
def _dot_n(q, codes, row, n) -> np.int64:
    acc = np.int32(0)
    for j in range(n):
        acc += np.int32(q[j]) * np.int32(codes[row, j])
    return np.int64(acc)


@njit(inline="always")
def _int8_dot(q, codes, row) -> np.int64:
    """Exact int8 dot product; common widths get a constant trip count, which LLVM unrolls and vectorises
    (1.7x faster per row at d = 64 than the generic loop)."""
    d = codes.shape[1]
    if d == 64:
        return _dot_n(q, codes, row, 64)
    if d == 128:
        return _dot_n(q, codes, row, 128)
    if d == 32:
        return _dot_n(q, codes, row, 32)
    return _dot_n(q, codes, row, d)


@njit(inline="always")
def _dots4_n(q, codes, r, n, dots, at):
    a0 = a1 = a2 = a3 = np.int32(0)
    for j in range(n):
        qj = np.int32(q[j])
        a0 += qj * np.int32(codes[r, j])
        a1 += qj * np.int32(codes[r + 1, j])
        a2 += qj * np.int32(codes[r + 2, j])
        a3 += qj * np.int32(codes[r + 3, j])
    dots[at], dots[at + 1], dots[at + 2], dots[at + 3] = a0, a1, a2, a3


@njit(inline="always")
def _chunk_dots(q, codes, a, b, dots, bias):
    """``dots[i]`` = the exact dot of rows a + i < b; ``bias`` = -128 * sum(q) (VNNI's, ``int8_dot``). With VNNI
    16 or 8 rows a call, with AVX2 8 (``int8_dot``). Otherwise at d = 32 four rows at a time: one row's 32
    products are too few to amortise their horizontal sum (2M x 32, 2 threads: 6.1 vs 10.4 ms; a batch-1 search
    of the 1M x 32 wide build, k = 100: 17 -> 5 ms); at d = 64 one row at a time is faster (1M x 64, k = 100: 6.3
    vs 7.5 ms)."""
    r = a
    d = codes.shape[1]
    wide = d == 32 or d == 64 or d == 128  # int8_dot.WIDTHS
    if int8_dot.HAS_VNNI_512 and wide:
        while r + 16 <= b:
            int8_dot.vnni16(q, codes, r, dots, r - a, bias)
            r += 16
    if int8_dot.HAS_VNNI and wide:
        while r + 8 <= b:
            int8_dot.vnni8(q, codes, r, dots, r - a, bias)
            r += 8
    elif int8_dot.HAS_AVX2 and wide:
        while r + 8 <= b:
            int8_dot.madd8(q, codes, r, dots, r - a, np.int32(0))
            r += 8
    elif d == 32:
        while r + 4 <= b:
            _dots4_n(q, codes, r, 32, dots, r - a)
            r += 4
    for row in range(r, b):
        dots[row - a] = _int8_dot(q, codes, row)


@njit(inline="always")
def _query_bias(q) -> np.int32:
    """-128 * sum(q): what ``int8_dot``'s unsigned codes add to every dot of ``q``."""
    bias = np.int32(0)
    for j in range(q.shape[0]):
        bias -= np.int32(128) * np.int32(q[j])
    return bias


@njit(inline="always")
def _offer_chunk(q, q_s, bias, ex, qi, codes, a, b, ism, isn, scales, allow, dots, buf, fill, kth, p, kk, bar, u,
                 scratch):
    """Rows a..b (one 64-row chunk, scale bounds ``ism``/``isn``) for query ``qi`` into reservoir ``p``: their
    dots first, then only rows whose integer dot reaches the chunk's bound are checked against the filter,
    scored and offered. Returns the query's (bar, u) after them."""
    _chunk_dots(q, codes, a, b, dots, bias)
    t = _int_bound(_real_bound(u, ism, isn))
    hits = int8_dot.at_least64(dots, b - a, t)
    while hits != np.uint64(0):
        row = a + np.int64(_cttz(hits))
        hits &= hits - np.uint64(1)
        d = dots[row - a]
        if d < t or row == ex or not _admits(allow, qi, row):
            continue
        s = _score(d, scales[row], q_s)
        if s < bar:
            continue
        key = _key(s, row, scratch)
        if key > kth[p] and _offer(buf, fill, kth, p, key, kk):
            bar = _key_score(kth[p], scratch)
            u = _dot_floor(kth[p], q_s, scratch)
            t = _int_bound(_real_bound(u, ism, isn))
    return bar, u


_PREFETCH_ROWS = 8  # admitted rows fetched ahead of the one being scored by a bitmap walk (``ivf_scan``).
# 1M x 64, 100,000 scattered rows, 2 threads, cold / warm ms: none 5.1 / 4.9, 4 ahead 3.0 / 2.6, 8 2.2 / 2.1,
# 16 2.9 / 2.9, 32 3.3 / 2.7 (more in flight than the core's miss buffers hold stalls the loads behind them)


@njit(parallel=True, nogil=True, cache=True)
def ivf_scan(qc, qs, probes, offsets, codes, scales, chunk_inv_smax, chunk_inv_smin, excl, allow, walk, buf, fill,
             kth, kk, n_seg):
    """Reservoir ``p`` scores every row of probed lists ``probes[q, s::n_seg]`` (q, s = divmod(p, n_seg)):
    lists are contiguous row ranges, read in place; segments keep every core busy at small batch.

    Streaming (no filter, or a dense one with ``walk`` False): a list is read 64-row chunk by chunk, the
    chunk's dot products first (a tight GEMV loop), then only rows whose integer dot reaches the chunk's
    bound (``block_offer``'s: from the k-th key and the chunk's scale range) are checked against the filter,
    scored and keyed. ``walk``: the filter's admissible rows are listed from the bitmap and only they are
    read, ``_PREFETCH_ROWS`` ahead; that beats streaming when few rows are admissible, and streaming wins when
    most are (scattered rows are memory-latency bound, a stream is not)."""
    longest = 0
    for lst in range(offsets.shape[0] - 1):
        longest = max(longest, offsets[lst + 1] - offsets[lst])
    filtered = allow.shape[1] > 0
    for p in prange(qc.shape[0] * n_seg):
        qi, sg = p // n_seg, p % n_seg
        scratch = np.empty(1, np.float32)
        dots = np.empty(64, np.int32)
        picked = np.empty(longest if filtered and walk else 0, np.int64)
        q, q_s, ex = qc[qi], qs[qi], excl[qi]
        bias = _query_bias(q)
        bar = _key_score(kth[p], scratch)
        u = _dot_floor(kth[p], q_s, scratch)
        for li in range(sg, probes.shape[1], n_seg):
            lst = probes[qi, li]
            lo, hi = offsets[lst], offsets[lst + 1]
            if filtered and walk:
                m = 0
                for w in range(lo >> 6, (hi + 63) >> 6):
                    word = allow[qi, w]
                    while word != np.uint64(0):
                        row = (w << 6) + _lowest_bit(word)
                        word &= word - np.uint64(1)
                        if lo <= row < hi and row != ex:
                            picked[m] = row
                            m += 1
                for i in range(min(m, _PREFETCH_ROWS)):
                    _prefetch_row(codes, picked[i])
                for i in range(m):
                    if i + _PREFETCH_ROWS < m:
                        _prefetch_row(codes, picked[i + _PREFETCH_ROWS])
                    row = picked[i]
                    s = _score(_int8_dot(q, codes, row), scales[row], q_s)
                    if s >= bar:
                        key = _key(s, row, scratch)
                        if key > kth[p] and _offer(buf, fill, kth, p, key, kk):
                            bar = _key_score(kth[p], scratch)
                continue
            a = lo
            while a < hi:
                chunk = a >> 6
                b = min(hi, (chunk + 1) << 6)
                if filtered and allow[qi, chunk] == 0:
                    a = b
                    continue
                bar, u = _offer_chunk(q, q_s, bias, ex, qi, codes, a, b, chunk_inv_smax[chunk], chunk_inv_smin[chunk],
                                      scales, allow, dots, buf, fill, kth, p, kk, bar, u, scratch)
                a = b


@njit(parallel=True, nogil=True, cache=True)
def ivf_scan_shared(qc, qs, lists, list_ptr, list_queries, segments, offsets, codes, scales, chunk_inv_smax,
                    chunk_inv_smin, excl, allow, buf, fill, kth, kk, n_seg):
    """``ivf_scan``'s streaming path, list by list instead of query by query: list ``lists[j]`` is read once for
    every query that probes it (``list_queries[list_ptr[j]:list_ptr[j + 1]]``), each 64-row chunk scored for
    them in turn while it is in L1. At 10M x 32 the scan is bound by memory, and a batch of 8 probing 256 of
    4,096 lists each reads 20 % fewer bytes this way (56 % at a batch of 32). Work item s scans lists
    ``segments[s]:segments[s + 1]`` into reservoirs ``q * n_seg + s``: each query's reservoirs together see each
    of its lists exactly once, so ``finish`` merges them to the same top k as ``ivf_scan``'s."""
    b = qc.shape[0]
    filtered = allow.shape[1] > 0
    for s in prange(n_seg):
        scratch = np.empty(1, np.float32)
        dots = np.empty(64, np.int32)
        bias = np.empty(b, np.int32)
        bar = np.empty(b, np.float64)
        u = np.empty(b, np.float64)
        for qi in range(b):
            p = qi * n_seg + s
            bias[qi] = _query_bias(qc[qi])
            bar[qi] = _key_score(kth[p], scratch)
            u[qi] = _dot_floor(kth[p], qs[qi], scratch)
        for j in range(segments[s], segments[s + 1]):
            lst = lists[j]
            a, hi = offsets[lst], offsets[lst + 1]
            while a < hi:
                chunk = a >> 6
                c_end = min(hi, (chunk + 1) << 6)
                ism, isn = chunk_inv_smax[chunk], chunk_inv_smin[chunk]
                for e in range(list_ptr[j], list_ptr[j + 1]):
                    qi = list_queries[e]
                    if filtered and allow[qi, chunk] == 0:
                        continue
                    bar[qi], u[qi] = _offer_chunk(qc[qi], qs[qi], bias[qi], excl[qi], qi, codes, a, c_end, ism, isn,
                                                  scales, allow, dots, buf, fill, kth, qi * n_seg + s, kk, bar[qi],
                                                  u[qi], scratch)
                a = c_end


@njit(parallel=True, nogil=True, cache=True)
def probe(qc, qs, centroid_codes, centroid_scales, nprobe):
    """Top-``nprobe`` lists per query [b, nprobe] by the exact int8 centroid score (same key rule: the lower
    list wins ties), in any order."""
    b, n_lists = qc.shape[0], centroid_codes.shape[0]
    out = np.empty((b, nprobe), np.int64)
    for qi in prange(b):
        scratch = np.empty(1, np.float32)
        keys = np.empty(n_lists, np.int64)
        for lst in range(n_lists):
            keys[lst] = _key(_score(_int8_dot(qc[qi], centroid_codes, lst), centroid_scales[lst], qs[qi]), lst,
                             scratch)
        top = np.partition(keys, n_lists - nprobe)[n_lists - nprobe:]
        for i in range(nprobe):
            out[qi, i] = _LOW32 - (top[i] & _LOW32)
    return out


# A batch of one query runs these on the calling thread: a parallel region over one query would still wake
# the whole thread team (with OMP_WAIT_POLICY=PASSIVE a wake-up per region, measurable at batch 1).
@njit(inline="always")
def _decode_query(keys, ids, qi, out_ids, out_scores, scratch):
    for i in range(keys.shape[1]):
        key = keys[qi, i]
        if key == INT64_MIN:
            out_ids[qi, i], out_scores[qi, i] = -1, -np.inf
        else:
            out_ids[qi, i] = ids[_LOW32 - (key & _LOW32)]
            out_scores[qi, i] = _key_score(key, scratch)


@njit(parallel=True, nogil=True, cache=True)
def _decode_batch(keys, ids, out_ids, out_scores):
    for qi in prange(keys.shape[0]):
        _decode_query(keys, ids, qi, out_ids, out_scores, np.empty(1, np.float32))


@njit(nogil=True, cache=True)
def _decode_single(keys, ids, out_ids, out_scores):
    for qi in range(keys.shape[0]):
        _decode_query(keys, ids, qi, out_ids, out_scores, np.empty(1, np.float32))


def decode(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys [b, k] -> (item ids int64, scores float32); the empty key gives id -1 / score -inf."""
    out_ids, out_scores = np.empty(keys.shape, np.int64), np.empty(keys.shape, np.float32)
    (_decode_batch if keys.shape[0] > 1 else _decode_single)(keys, ids, out_ids, out_scores)
    return out_ids, out_scores


@njit(inline="always")
def _gathered(buf, fill, qi, groups):
    """The keys of query ``qi``'s ``groups`` consecutive reservoirs (its per-thread segments), in one array."""
    total = 0
    for g in range(groups):
        total += fill[qi * groups + g]
    allk = np.empty(total, np.int64)
    pos = 0
    for g in range(groups):
        f = fill[qi * groups + g]
        allk[pos:pos + f] = buf[qi * groups + g, :f]
        pos += f
    return allk


@njit(inline="always")
def _finish_query(buf, fill, kk, k_out, groups, qi, out):
    allk = _gathered(buf, fill, qi, groups)
    total = allk.shape[0]
    take = min(kk, total)
    if total > 2 * take:  # else sorting the surplus costs less than partitioning it away (measured)
        allk = np.partition(allk, total - take)[total - take:]
    best = sort_desc(allk)[:min(take, k_out)]
    out[qi, :best.shape[0]] = best
    out[qi, best.shape[0]:] = INT64_MIN


@njit(parallel=True, nogil=True, cache=True)
def _finish_batch(buf, fill, kk, k_out, groups, out):
    for qi in prange(out.shape[0]):
        _finish_query(buf, fill, kk, k_out, groups, qi, out)


@njit(nogil=True, cache=True)
def _finish_single(buf, fill, kk, k_out, groups, out):
    for qi in range(out.shape[0]):
        _finish_query(buf, fill, kk, k_out, groups, qi, out)


def finish(buf: np.ndarray, fill: np.ndarray, kk: int, k_out: int, groups: int) -> np.ndarray:
    """Reservoirs -> sorted best keys [len(buf) // groups, k_out]; ``groups`` consecutive reservoirs (the
    segments of one query) are merged. Missing results are the empty key (INT64_MIN)."""
    out = np.empty((buf.shape[0] // groups, k_out), np.int64)
    (_finish_batch if out.shape[0] > 1 else _finish_single)(buf, fill, kk, k_out, groups, out)
    return out


@njit(inline="always")
def _kth_query(buf, fill, kk, groups, qi, out):
    allk = _gathered(buf, fill, qi, groups)
    total = allk.shape[0]
    if total >= kk:
        out[qi] = np.partition(allk, total - kk)[total - kk]


@njit(parallel=True, nogil=True, cache=True)
def _kth_batch(buf, fill, kk, groups, out):
    for qi in prange(out.shape[0]):
        _kth_query(buf, fill, kk, groups, qi, out)


@njit(nogil=True, cache=True)
def _kth_single(buf, fill, kk, groups, out):
    for qi in range(out.shape[0]):
        _kth_query(buf, fill, kk, groups, qi, out)


def kth_keys(buf: np.ndarray, fill: np.ndarray, kk: int, groups: int) -> np.ndarray:
    """Reservoirs -> each query's kk-th best key [len(buf) // groups] (INT64_MIN when it has fewer): what a
    starting bar needs of a sample scan, without sorting the rest."""
    out = np.full(buf.shape[0] // groups, INT64_MIN, np.int64)
    (_kth_batch if out.shape[0] > 1 else _kth_single)(buf, fill, kk, groups, out)
    return out


_SIGN = np.uint64(1 << 63)
_RADIX_BITS = 11
_RADIX_MASK = np.uint64((1 << _RADIX_BITS) - 1)


@njit(nogil=True, cache=True)
def sort_desc(keys):
    """int64 keys sorted best (largest) first. Large arrays: a stable LSD radix sort of the score half only
    (the high 32 bits, 11-bit digits, skipping digits all keys share), then equal-score runs (rare) sorted
    by their row half. Three linear passes at most instead of quicksort's n log n compares (which dominated
    the scan at k = 10,000) or five for a radix sort of the whole key."""
    n = keys.shape[0]
    if n < 1024:
        return np.sort(keys)[::-1].copy()
    a = ~(keys.view(np.uint64) ^ _SIGN)  # ascending order of a = descending order of the keys
    tmp = np.empty_like(a)
    counts = np.empty(1 << _RADIX_BITS, np.int64)
    for p in range(3):  # 33 bits cover the score's 32
        shift = np.uint64(32 + p * _RADIX_BITS)
        counts[:] = 0
        for i in range(n):
            counts[np.intp((a[i] >> shift) & _RADIX_MASK)] += 1
        if counts.max() == n:
            continue
        total = 0
        for d in range(1 << _RADIX_BITS):
            c = counts[d]
            counts[d] = total
            total += c
        for i in range(n):
            d = np.intp((a[i] >> shift) & _RADIX_MASK)
            tmp[counts[d]] = a[i]
            counts[d] += 1
        a, tmp = tmp, a
    i = 0
    while i < n:  # runs of one score: order them by the low (row) half too
        j = i + 1
        while j < n and (a[j] >> np.uint64(32)) == (a[i] >> np.uint64(32)):
            j += 1
        if j - i > 1:
            a[i:j] = np.sort(a[i:j])
        i = j
    return (~a ^ _SIGN).view(np.int64)


@njit(parallel=True, nogil=True, cache=True)
def subset_bits(allow, rows, out):
    """``out[q]`` = the bits of ``allow[q]`` at ``rows`` (bit i of ``out[q]`` = bit ``rows[i]`` of ``allow[q]``):
    a filter's bitmap over the scan's row sample. ``out`` [b, ceil(len(rows) / 64)] uint64."""
    one = np.uint64(1)
    for qi in prange(allow.shape[0]):
        for w in range(out.shape[1]):
            out[qi, w] = np.uint64(0)
        for i in range(rows.shape[0]):
            r = rows[i]
            if (allow[qi, r >> 6] >> np.uint64(r & 63)) & one:
                out[qi, i >> 6] |= one << np.uint64(i & 63)


@njit(nogil=True, cache=True, inline="always")
def _popcount(w) -> np.int64:
    """Set bits of one uint64 (SWAR)."""
    m1, m2, m4 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F)
    x = w - ((w >> np.uint64(1)) & m1)
    x = (x & m2) + ((x >> np.uint64(2)) & m2)
    x = (x + (x >> np.uint64(4))) & m4
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(nogil=True, cache=True)
def bit_count(words) -> np.int64:
    """Set bits in a uint64 array."""
    total = np.int64(0)
    for w in words.ravel():
        total += _popcount(w)
    return total


@njit(nogil=True, cache=True)
def set_rows(words, n_rows) -> np.ndarray:
    """The rows (int64, ascending) whose bits are set in a uint64 bitmap [ceil(n_rows / 64)]."""
    out = np.empty(min(n_rows, np.int64(bit_count(words))), np.int64)
    j = 0
    for w in range(words.shape[0]):
        x = words[w]
        base = np.int64(w) * 64
        while x != np.uint64(0) and j < out.shape[0]:
            low = x & (~x + np.uint64(1))  # the lowest set bit
            r = base + _popcount(low - np.uint64(1))  # the bit's position: the ones below it
            if r >= n_rows:
                break
            out[j] = r
            j += 1
            x ^= low
    return out[:j]


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel on tiny inputs, so no request pays for it."""
    codes = np.zeros((130, 4), np.int8)
    scales = np.ones(130, np.float32)
    inv = np.ones(3, np.float64)
    qc, qs, ex = np.ones((1, 4), np.int8), np.ones(1, np.float32), np.full(1, -1, np.int64)
    allows = (np.zeros((1, 0), np.uint64), np.full((1, 3), np.uint64(2**64 - 1)))
    buf, fill, kth = np.empty((1, 8), np.int64), np.zeros(1, np.int64), np.full(1, INT64_MIN, np.int64)
    for dot in (np.zeros((130, 1), np.int32), np.zeros((130, 1), np.float32)):
        m8, mc = np.empty((17, 1), dot.dtype), np.empty((3, 1), dot.dtype)
        block_maxima(dot, m8, mc)
        group_bars(m8, 0, 130, inv, inv, qs, ex, 2, kth)
        for allow in allows:
            row_bars(dot, 0, scales, qs, ex, allow, 2, kth)
            block_offer(dot, m8, mc, 0, inv, inv, scales, qs, ex, allow, buf, fill, kth, 2, 1, 1)
            block_rows_scan(dot, 0, inv, inv, scales, qs, ex, allow, buf, fill, kth, 2, 1, 1)
    for held in (buf, np.empty((2, 8), np.int64)):  # one query's reservoir, then two: both variants
        fills = np.zeros(held.shape[0], np.int64)
        decode(finish(held, fills, 2, 2, 1), np.arange(130, dtype=np.int64))
        kth_keys(held, fills, 2, 1)
    for allow in allows:
        for walk in (False, True):
            fill[:], kth[:] = 0, INT64_MIN
            ivf_scan(qc, qs, np.zeros((1, 1), np.int64), np.array([0, 130], np.int64), codes, scales, inv, inv, ex,
                     allow, walk, buf, fill, kth, 2, 1)
        fill[:], kth[:] = 0, INT64_MIN
        one = np.array([0, 1], np.int64)
        ivf_scan_shared(qc, qs, one[:1], one, one[:1], one, np.array([0, 130], np.int64), codes, scales, inv, inv, ex,
                        allow, buf, fill, kth, 2, 1)
    probe(qc, qs, codes, scales, 2)
    sub = np.zeros((1, 1), np.uint64)
    subset_bits(allows[1], np.arange(3, dtype=np.int64), sub)
    bit_count(sub)
    set_rows(allows[1][0], 130)
