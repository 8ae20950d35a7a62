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
from widefunnel.ann.plan import SearchPlan, plan_search
from widefunnel.ann.prepared import IvfTables
from widefunnel.ann.search import INT64_MIN, run


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
    admissible rows. Rows added after the build (the tail, ``IvfLists.tail_start``) count as probed by every
    query.
    """
    if index.ivf is None:
        raise ValueError("ivf_search needs an index built with ivf_lists > 0")
    plan = plan_search(index, queries, k, exclude_ids, nprobe, allow)
    return run(plan) if plan.ivf is None else scan_lists(plan)  # nprobe >= L: the exact scan


def scan_lists(plan: SearchPlan) -> tuple[np.ndarray, np.ndarray]:
    """An IVF ``SearchPlan`` -> (ids, scores) [B, k']: each chunk's probed lists scanned in place by the compiled
    GEMV + filter, the chunk's reservoirs merged and decoded."""
    ivf, prepared, k_out = plan.ivf, plan.prepared, plan.k_out
    table = prepared.levels.table
    out_ids = out_scores = None
    for c, sl in enumerate(plan.chunks):
        n = len(plan.qs[sl]) * ivf.n_seg  # reservoirs: keys, fill, bar (as ``search.reservoirs``)
        buf, fill, kth = np.empty((n, ivf.width), np.int64), np.zeros(n, np.int64), np.full(n, INT64_MIN, np.int64)
        if ivf.shared is None:  # walked: query by query
            kernels.ivf_scan(plan.qc[sl].numpy(), plan.qs[sl], ivf.probes[sl], prepared.ivf.offsets, prepared.codes,
                             table.scales, table.inv_smax, table.inv_smin, plan.excl[sl], plan.allow[sl], ivf.walk,
                             buf, fill, kth, k_out, ivf.n_seg)
        else:  # streamed: list by list, each read once for the chunk's queries that probe it
            shared = ivf.shared[c]
            kernels.ivf_scan_shared(plan.qc[sl].numpy(), plan.qs[sl], shared.lists, shared.list_ptr,
                                    shared.list_queries, shared.segments, prepared.ivf.offsets, prepared.codes,
                                    table.scales, table.inv_smax, table.inv_smin, plan.excl[sl], plan.allow[sl], buf,
                                    fill, kth, k_out, ivf.n_seg)
        ids, scores = kernels.decode(kernels.finish(buf, fill, k_out, k_out, ivf.n_seg), prepared.ids)
        if len(plan.chunks) == 1:  # one chunk: its decoded arrays are the result
            return ids, scores
        if out_ids is None:  # as ``search.empty_results``
            shape = (len(plan.qs), k_out)
            out_ids, out_scores = np.full(shape, -1, np.int64), np.full(shape, -np.inf, np.float32)
        out_ids[sl], out_scores[sl] = ids, scores
    if out_ids is None:  # an empty batch
        return np.zeros((0, k_out), np.int64), np.zeros((0, k_out), np.float32)
    return out_ids, out_scores
