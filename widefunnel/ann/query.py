"""One entry point for a search: the exact scan, or IVF over ``nprobe`` lists when the index has them."""

from __future__ import annotations

import numpy as np

from widefunnel.ann.index import Int8Index
from widefunnel.ann.ivf import ivf_search
from widefunnel.ann.search import exact_search, validate_nprobe


def search(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
           nprobe: int | None = None, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact scan when ``nprobe`` is None or the index has no IVF, else IVF search over ``nprobe`` lists;
    ``allow`` restricts either to the rows a per-query bitmap admits (``filters``)."""
    if nprobe is None or index.ivf is None:
        if nprobe is not None:
            validate_nprobe(nprobe)
        return exact_search(index, queries, k, exclude_ids, allow=allow)
    return ivf_search(index, queries, k, nprobe, exclude_ids, allow)
