"""IVF (inverted file) search on top of the int8 index: coarse quantiser + exact int8 scoring inside lists.

Batch invariance carries over: list probing ranks the int8-quantised centroids with the same exact integer
dot product and unique keys as the item scan, and each query's probed rows are scored (same formula, same
keys) on their own. With ``nprobe >= L`` every row is scored, which is the exact search (we delegate to it).
Rows of a list are contiguous (``IvfLists.offsets``), so a query's candidates are a few memcpy'd slices.
"""

from __future__ import annotations

import numpy as np
import torch

from widefunnel.ann.index import Int8Index
from widefunnel.ann.search import (
    CHUNK,
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

_GROUP_KEYS = 1 << 23  # queries x candidate width (int64 keys) selected at once: bounds IVF memory


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


def _query_candidates(index: Int8Index, qc: torch.Tensor, qs: torch.Tensor, excl: int, lists: np.ndarray,
                      k_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, rows) of the rows of one query's probed lists that can be in its top ``k_out``.

    The lists are contiguous row ranges: their codes are concatenated (memcpy, cache-warm for the GEMV that
    follows) and scored with one int8 GEMV. Only rows scoring >= the k-th largest 64-row chunk maximum are
    kept: those k maxima are k distinct rows, so every top-k row clears that bar (the excluded row is set to
    -inf first, so it cannot count).
    """
    offsets = index.ivf.offsets
    lists = np.sort(lists)
    starts, lens = offsets[lists], offsets[lists + 1] - offsets[lists]
    starts, lens = starts[lens > 0], lens[lens > 0]
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    before = np.cumsum(lens) - lens
    codes_np, scales_np = index.cache["codes_np"], index.cache["scales_np"]
    codes = np.concatenate([codes_np[a:a + n] for a, n in zip(starts, lens)])
    scales = np.concatenate([scales_np[a:a + n] for a, n in zip(starts, lens)])
    n_chunks = -(-total // CHUNK)
    s = torch.full((n_chunks * CHUNK,), -float("inf"))
    s[:total] = scores_from_dot(int_dot(qc[None], torch.from_numpy(codes))[0], torch.from_numpy(scales), qs)
    j = int(np.searchsorted(starts, excl, side="right")) - 1
    if excl >= 0 and j >= 0 and excl < starts[j] + lens[j]:
        s[int(before[j] + excl - starts[j])] = -float("inf")
    return _select_candidates(s, k_out, starts, lens, before)


def _select_candidates(s: torch.Tensor, k_out: int, starts: np.ndarray, lens: np.ndarray, before: np.ndarray
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [T] (64-aligned, -inf padded) of one query's probed rows -> (scores, rows) that can make its
    top ``k_out``: rows >= the k-th largest 64-row chunk maximum (k maxima = k distinct rows)."""
    n_chunks = s.numel() // CHUNK
    if n_chunks > k_out:
        bar = torch.topk(s.view(n_chunks, CHUNK).amax(dim=1), k_out, sorted=False).values.min()
        pos = torch.nonzero(s >= max(float(bar), -3.4e38)).squeeze(1)  # -inf never qualifies
    else:
        pos = torch.nonzero(s > -float("inf")).squeeze(1)
    p = pos.numpy()
    seg = np.searchsorted(before, p, side="right") - 1
    return s[pos], torch.from_numpy(starts[seg] + p - before[seg])


def _candidate_keys(parts: list[tuple[torch.Tensor, torch.Tensor]], k_out: int) -> torch.Tensor:
    """Per-query candidate (scores, rows) -> sorted best keys [b, k_out] in one batched selection."""
    counts = [len(r) for _, r in parts]
    keys = make_keys(torch.cat([s for s, _ in parts]), torch.cat([r for _, r in parts]))
    qb = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(counts, dtype=torch.int64))
    first = torch.tensor(np.cumsum(counts) - counts, dtype=torch.int64)
    out = torch.full((len(parts), max(max(counts, default=0), k_out)), INT64_MIN, dtype=torch.int64)
    out[qb, torch.arange(len(qb)) - first[qb]] = keys
    return select_top(out, k_out)


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
    if batch == 0:
        return _empty(0, k_out)
    probes = probe_lists(index.cache, qc, qs, nprobe).numpy()
    excl_np = excl.numpy()
    ids, scores = _empty(batch, k_out)
    per_query = (index.ivf.offsets[probes + 1] - index.ivf.offsets[probes]).sum(axis=1)
    step = max(1, _GROUP_KEYS // max(k_out, int(per_query.max())))
    for b0 in range(0, batch, step):  # bounded memory: the padded candidate-key matrix of one group
        parts = [_query_candidates(index, qc[i], qs[i], int(excl_np[i]), probes[i], k_out)
                 for i in range(b0, min(batch, b0 + step))]
        ids[b0:b0 + step], scores[b0:b0 + step] = keys_to_results(index, _candidate_keys(parts, k_out))
    return ids, scores
