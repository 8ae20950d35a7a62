"""GPU exact int8 search: a fused Triton kernel (int8 GEMM tile + per-tile top-k) and a torch fallback.

Both produce exactly what the CPU ``exact_search`` produces for the same rows (same per-row query
quantisation, same score formula ``(float32(dot) * s_item) * s_query``, same unique int64 keys), so the GPU
and CPU paths are interchangeable and batch-invariant. The kernel computes, for a [BM queries x BN items]
tile, the exact int32 dot products with ``tl.dot`` and keeps the tile's best K keys per query by repeated
max-extraction (keys are unique, so this is exact); a second, tiny torch top-k merges the tiles. The
global top-k is a subset of the union of per-tile top-ks, so the result is exact.

CI runs the kernel on CPU through the Triton interpreter: set ``TRITON_INTERPRET=1`` before this module
(and hence ``triton``) is first imported.
"""

from __future__ import annotations

from dataclasses import dataclass
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

KERNEL_MAX_K = 32  # per-tile max-extraction costs K passes over a tile; above it the GEMM+topk fallback wins
_BM = 16  # tl.dot needs >= 16 rows
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

    # sizes are not specialised on (== 1, multiple of 16): one compile per (D, BN, K), not one more for each
    # new batch size or index length met while serving
    @triton.jit(do_not_specialize=["n_queries", "n_items", "n_tiles", "n_mblocks", "n_words"])
    def _int8_topk_kernel(q_ptr, qs_ptr, c_ptr, cs_ptr, ex_ptr, allow_ptr, out_ptr, n_queries, n_items, n_tiles,
                          n_mblocks, n_words, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, K: tl.constexpr,
                          FILTERED: tl.constexpr):
        """One [BM x BN] tile: exact int8 dot products -> scores -> unique keys -> best K keys per query.
        A 1-D grid, query blocks fastest (the blocks of one item tile run together and share it in L2): a
        grid's y size stops at 65,535, fewer item tiles than 10M rows make at BN = 128. Offsets in int64."""
        pid = tl.program_id(0)
        pid_m = pid % n_mblocks
        pid_n = pid // n_mblocks
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rd = tl.arange(0, D)
        q = tl.load(q_ptr + rm[:, None] * D + rd[None, :], mask=rm[:, None] < n_queries, other=0)
        c = tl.load(c_ptr + rn[:, None].to(tl.int64) * D + rd[None, :], mask=rn[:, None] < n_items, other=0)
        acc = tl.dot(q, tl.trans(c), out_dtype=tl.int32)  # int8 x int8 -> exact int32
        qs = tl.load(qs_ptr + rm, mask=rm < n_queries, other=1.0)
        cs = tl.load(cs_ptr + rn, mask=rn < n_items, other=1.0)
        s = (acc.to(tl.float32) * cs[None, :]) * qs[:, None] + 0.0  # -0.0 keyed as +0.0, as make_keys
        bits = s.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        key = ordered.to(tl.int64) * 4294967296 + (4294967295 - rn[None, :].to(tl.int64))
        ex = tl.load(ex_ptr + rm, mask=rm < n_queries, other=-1)
        dead = (rn[None, :] >= n_items) | (rn[None, :] == ex[:, None])
        if FILTERED:  # the row bitmap (``filters``): bit rn & 63 of word rn >> 6, an int64 view of the uint64
            word = tl.load(allow_ptr + rm[:, None].to(tl.int64) * n_words + (rn[None, :] >> 6),
                           mask=(rm[:, None] < n_queries) & (rn[None, :] < n_items), other=0)
            dead = dead | (((word >> (rn[None, :] & 63).to(tl.int64)) & 1) == 0)
        key = tl.where(dead, (-9223372036854775807 - 1), key)
        base = (rm.to(tl.int64) * n_tiles + pid_n) * K
        for i in tl.static_range(K):
            best = tl.max(key, axis=1)
            tl.store(out_ptr + base + i, best, mask=rm < n_queries)
            key = tl.where(key == best[:, None], (-9223372036854775807 - 1), key)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _kernel_keys(codes_t: torch.Tensor, scales_t: torch.Tensor, qc: torch.Tensor, qs: torch.Tensor, kk: int,
                 exclude: torch.Tensor, allow: torch.Tensor | None = None) -> torch.Tensor:
    """Per-tile best keys from the Triton kernel, merged -> [B, kk] sorted keys."""
    n, d = codes_t.shape
    dp = max(32, _next_pow2(d))  # tl.dot: power-of-two K, >= 32 for int8 MMA; zero padding keeps dots exact
    if dp != d:
        codes_t = torch.nn.functional.pad(codes_t, (0, dp - d))
        qc = torch.nn.functional.pad(qc, (0, dp - d))
    kt = _next_pow2(kk)
    bn = max(kt, min(1024, max(128, 8 * kt)))  # a tile keeps kt of its bn items: N * kt / bn keys to merge
    n_tiles = triton.cdiv(n, bn)
    b = qc.shape[0]
    out = torch.empty((b, n_tiles * kt), dtype=torch.int64, device=qc.device)
    n_mblocks = triton.cdiv(b, _BM)
    filtered = allow is not None
    words = allow.contiguous() if filtered else exclude  # any int64 tensor: never read unfiltered
    _int8_topk_kernel[(n_mblocks * n_tiles,)](qc.contiguous(), qs.contiguous(), codes_t.contiguous(),
                                              scales_t.contiguous(), exclude.contiguous(), words, out, b, n,
                                              n_tiles, n_mblocks, words.shape[1] if filtered else 0, D=dp, BM=_BM,
                                              BN=bn, K=kt, FILTERED=filtered)
    return select_top(out, kk)


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
               exclude: torch.Tensor | None = None, use_kernel: bool | None = None, allow: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact int8 search on torch tensors (CUDA in production) -> (rows int64 [B,k'], scores float32 [B,k']).

    ``codes_t`` int8 [N,d], ``scales_t`` float32 [N], ``queries_t`` float [B,d], ``exclude`` int64 [B] of
    *row* indices (-1 = none; map ids to rows with ``search.exclude_rows``). k' = min(k, N); rows left short
    by an exclusion are padded with row -1 / score -inf. ``use_kernel`` None = the Triton kernel when triton
    is importable, the tensors are on CUDA (or the interpreter is on) and k <= KERNEL_MAX_K. ``allow``: a row
    bitmap per query (``filters``; int64 or uint64 [B, ceil(N / 64)]), the top-k of the admissible rows.
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
        use_kernel = triton is not None and kk <= KERNEL_MAX_K and (queries_t.is_cuda or _interpreting())
    if b == 0:
        keys = torch.full((0, kk), INT64_MIN, dtype=torch.int64, device=queries_t.device)
    elif use_kernel:
        keys = _kernel_keys(codes_t, scales_t, qc, qs, kk, exclude, allow)
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
