"""IVF (inverted file) search on top of the int8 index: coarse quantiser + exact int8 scoring inside lists.

Batch invariance carries over: list probing ranks the int8-quantised centroids with the same exact integer
dot product and unique keys as the item scan, and each query's probed rows are scored (same formula, same
keys) on their own. With ``nprobe >= L`` every row is scored, which is the exact search (we delegate to it).
Rows of a list are contiguous (``IvfLists.offsets``): the compiled kernel (``kernels.ivf_scan``) reads each
probed list in place, scoring its rows with an int8 dot product straight into the query's reservoir.
"""

from __future__ import annotations

import numpy as np
import torch

from widefunnel.ann import kernels
from widefunnel.ann.index import Int8Index
from widefunnel.ann.search import (
    _empty,
    _prepare_queries,
    _query_chunk,
    _reservoirs,
    _threads,
    exact_search,
    keys_to_results,
    validate_nprobe,
)


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
    return torch.from_numpy(kernels.probe(qc.numpy(), qs.numpy(), cache["centroid_codes"],
                                          cache["centroid_scales"], nprobe))


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
    cache = index.cache
    probes = np.ascontiguousarray(probe_lists(cache, qc, qs, nprobe).numpy())
    n_seg = max(1, min(_threads() // batch, nprobe))
    ids, scores = _empty(batch, k_out)
    step = max(1, _query_chunk(batch, k_out) // n_seg)
    for b0 in range(0, batch, step):  # bounded memory: the reservoirs of one group of queries
        sl = slice(b0, b0 + step)
        buf, fill, kth = _reservoirs(len(qc[sl]) * n_seg, k_out)
        kernels.ivf_scan(qc[sl].numpy(), qs[sl].numpy(), probes[sl], cache["ivf_offsets"], cache["codes_np"],
                         cache["table"]["scales"], excl[sl].numpy(), buf, fill, kth, k_out, n_seg)
        ids[sl], scores[sl] = keys_to_results(index, kernels.finish(buf, fill, k_out, k_out, n_seg))
    return ids, scores
