"""The IVF coarse quantiser at build time: k-means centroids and each item's list (faiss, as faiss' own IVF
trains them). Search-time probing is in ``ivf.py``."""

from __future__ import annotations

import numpy as np


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
