"""IVF (inverted file) search on top of the int8 index: coarse quantiser + exact int8 scoring inside lists.

Batch invariance carries over: list probing ranks the int8-quantised centroids with the same exact integer
dot product and unique keys as the item scan, and each probed list is scored per (list, query) exactly.
With ``nprobe >= L`` every row is scored, which is the exact search (we delegate to it).
"""

from __future__ import annotations

import numpy as np
import torch

from widefunnel.ann.index import Int8Index
from widefunnel.ann.search import (
    INT64_MIN,
    _empty,
    _prepare_queries,
    exact_search,
    int_dot,
    keys_to_results,
    make_keys,
    scores_from_dot,
    select_top,
    validate_nprobe,
)

_CANDIDATE_KEYS = 1 << 24  # query rows x candidate width (int64, 128 MiB) before the batch is split


def train_coarse(x: np.ndarray, n_lists: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """k-means centroids float32 [L, d] (faiss, as faiss' own IVF trains them; build time only)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], int(n_lists), niter=niter, seed=seed, verbose=False)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign_lists(x: np.ndarray, centroids: np.ndarray, block: int = 65536) -> np.ndarray:
    """List of each item = centroid with the largest inner product (int64 [N]); build time only."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty(len(x), np.int64)
    for r0 in range(0, len(x), block):
        out[r0:r0 + block] = np.argmax(x[r0:r0 + block] @ centroids.T, axis=1)
    return out


def probe_lists(cache: dict, qc: torch.Tensor, qs: torch.Tensor, nprobe: int) -> torch.Tensor:
    """Top-``nprobe`` lists per query [B, nprobe] by exact int8 centroid scores (lower list wins ties)."""
    cdot = int_dot(qc, cache["centroid_codes_t"])
    s = scores_from_dot(cdot, cache["centroid_scales_t"], qs[:, None])
    keys = make_keys(s, torch.arange(s.shape[1]))
    return torch.topk(keys, nprobe, dim=1, sorted=False).indices


def _score_lists(cache: dict, offsets: np.ndarray, qc: torch.Tensor, qs: torch.Tensor, excl: np.ndarray,
                 probes: np.ndarray) -> torch.Tensor:
    """Keys of every (query, probed row) -> [b, T] (T = most rows probed by one query; pad = INT64_MIN).

    Pairs are grouped by list so each list is one GEMM over the queries that probe it (a contiguous slice).
    """
    b, p = probes.shape
    lens = offsets[probes + 1] - offsets[probes]
    slots = np.cumsum(lens, axis=1) - lens
    width = int(lens.sum(axis=1).max()) if b else 0
    out = torch.full((b, max(width, 1)), INT64_MIN, dtype=torch.int64)
    flat_out = out.view(-1)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.flatnonzero(np.diff(flat[order])) + 1
    codes_t, scales_t = cache["codes_t"], cache["scales_t"]
    for grp in np.split(order, bounds):
        lst = int(flat[grp[0]])
        o, n = int(offsets[lst]), int(offsets[lst + 1] - offsets[lst])
        if n == 0:
            continue
        qidx = grp // p
        qidx_t = torch.from_numpy(qidx)
        s = scores_from_dot(int_dot(qc[qidx_t], codes_t[o:o + n]), scales_t[o:o + n], qs[qidx_t][:, None])
        keys = make_keys(s, torch.arange(o, o + n))
        ex = excl[qidx]
        hit = np.flatnonzero((ex >= o) & (ex < o + n))
        if len(hit):
            keys[torch.from_numpy(hit), torch.from_numpy(ex[hit] - o)] = INT64_MIN
        dest = torch.from_numpy(qidx * out.shape[1] + slots.ravel()[grp])[:, None] + torch.arange(n)
        flat_out[dest] = keys
    return out


def ivf_search(index: Int8Index, queries: np.ndarray, k: int, nprobe: int,
               exclude_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """IVF search -> (ids int64 [B,k'], scores float32 [B,k']), k' = min(k, N), same contract as exact_search.

    ``nprobe`` is clipped to [1, L]; rows with fewer than k' candidates in their probed lists are padded with
    id -1 / score -inf.
    """
    if index.ivf is None:
        raise ValueError("ivf_search needs an index built with ivf_lists > 0")
    nprobe = validate_nprobe(nprobe)
    if nprobe >= index.ivf.n_lists:
        return exact_search(index, queries, k, exclude_ids)
    qc, qs, excl, k = _prepare_queries(index, queries, k, exclude_ids)
    batch, k_out = qc.shape[0], min(k, index.count)
    ids, scores = _empty(batch, k_out)
    if batch == 0:
        return ids, scores
    probes = probe_lists(index.cache, qc, qs, nprobe).numpy()
    offsets = np.asarray(index.ivf.offsets)
    per_query = (offsets[probes + 1] - offsets[probes]).sum(axis=1)
    excl_np = excl.numpy()
    b0 = 0
    while b0 < batch:
        b1 = b0 + 1  # grow the chunk while its padded candidate matrix stays under the cap
        while b1 < batch and (b1 + 1 - b0) * max(int(per_query[b0:b1 + 1].max()), k_out) <= _CANDIDATE_KEYS:
            b1 += 1
        sl = slice(b0, b1)
        keys = _score_lists(index.cache, offsets, qc[sl], qs[sl], excl_np[sl], probes[sl])
        if keys.shape[1] < k_out:
            pad = torch.full((keys.shape[0], k_out - keys.shape[1]), INT64_MIN, dtype=torch.int64)
            keys = torch.cat([keys, pad], dim=1)
        ids[sl], scores[sl] = keys_to_results(index, select_top(keys, k_out))
        b0 = b1
    return ids, scores
