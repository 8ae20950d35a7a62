"""One entry point for a search: the exact scan, or IVF over ``nprobe`` lists when the index has them.

The call reads top-down: ``plan.plan_search`` makes every choice once (``SearchPlan``), then one stage runs
it (``search.run`` for the exact scan, ``ivf.scan_lists`` for IVF) and returns the results."""

from __future__ import annotations

import numpy as np

from widefunnel.ann.index import Int8Index
from widefunnel.ann.ivf import scan_lists
from widefunnel.ann.plan import plan_search
from widefunnel.ann.search import run


def search(index: Int8Index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
           nprobe: int | None = None, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact scan when ``nprobe`` is None or the index has no IVF, else IVF search over ``nprobe`` lists;
    ``allow`` restricts either to the rows a per-query bitmap admits (``filters``)."""
    plan = plan_search(index, queries, k, exclude_ids, nprobe, allow)
    return run(plan) if plan.ivf is None else scan_lists(plan)
