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

from widefunnel.ann import filters, kernels
from widefunnel.ann.index import Int8Index
from widefunnel.ann.prepared import IvfTables
from widefunnel.ann.search import (
    WALK_FILTER,
    empty_results,
    exact_search,
    kernel_threads,
    prepare_index,
    prepare_queries,
    query_chunk,
    reservoirs,
    scan_in_chunks,
    validate_nprobe,
)


def probe_lists(ivf: IvfTables, qc: torch.Tensor, qs: torch.Tensor, nprobe: int) -> torch.Tensor:
    """Top-``nprobe`` lists per query [B, nprobe] by exact int8 centroid scores (lower list wins ties)."""
    return torch.from_numpy(kernels.probe(qc.numpy(), qs.numpy(), ivf.centroid_codes, ivf.centroid_scales,
                                          nprobe))


def ivf_search(index: Int8Index, queries: np.ndarray, k: int, nprobe: int,
               exclude_ids: np.ndarray | None = None, allow: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """IVF search -> (ids int64 [B,k'], scores float32 [B,k']), k' = min(k, N), same contract as exact_search.

    ``nprobe`` is clipped to [1, L]; rows with fewer than k' candidates in their probed lists are padded with
    id -1 / score -inf. ``allow`` (a row bitmap per query, ``filters``): the top-k among the probed lists'
    admissible rows.
    """
    if index.ivf is None:
        raise ValueError("ivf_search needs an index built with ivf_lists > 0")
    nprobe = validate_nprobe(nprobe)
    if nprobe >= index.ivf.n_lists:
        return exact_search(index, queries, k, exclude_ids, allow=allow)
    qc, qs, excl, k = prepare_queries(index, queries, k, exclude_ids)
    batch, k_out = qc.shape[0], min(k, index.count)
    allow = filters.check_allow(allow, batch, index.count)
    if batch == 0:
        return empty_results(0, k_out)
    prepared = prepare_index(index)
    probes = np.ascontiguousarray(probe_lists(prepared.ivf, qc, qs, nprobe).numpy())
    n_seg = max(1, min(kernel_threads() // batch, nprobe))
    walk = filters.admitted_share(allow) < WALK_FILTER

    def scan(sl: slice) -> np.ndarray:
        buf, fill, kth = reservoirs(len(qc[sl]) * n_seg, k_out)
        kernels.ivf_scan(qc[sl].numpy(), qs[sl].numpy(), probes[sl], prepared.ivf.offsets, prepared.codes,
                         prepared.table.scales, prepared.table.inv_smax, prepared.table.inv_smin, excl[sl].numpy(),
                         allow[sl], walk, buf, fill, kth, k_out, n_seg)
        return kernels.finish(buf, fill, k_out, k_out, n_seg)

    return scan_in_chunks(index, batch, k_out, query_chunk(batch, k_out, n_seg), scan)
