"""IVF's streamed scan, list by list (``kernels.ivf_scan_shared``): each probed list read once for every query
of the batch that probes it, and each query's answer still the exact top k of its own probed lists."""

from __future__ import annotations

import numpy as np
import pytest
from test_ann_filters import _mask, _reference, _same

from widefunnel.ann import filters
from widefunnel.ann.index import build_index
from widefunnel.ann.ivf import ivf_search
from widefunnel.ann.plan import plan_search, shared_lists


def _clustered(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((24, d)).astype(np.float32)
    x = (centres[rng.integers(0, 24, n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    q = (centres[rng.integers(0, 24, 7)] + 0.5 * rng.standard_normal((7, d))).astype(np.float32)
    q[3] = q[2]  # two queries probing the very same lists
    return x, q


def _probed_rows(index, q: np.ndarray, nprobe: int) -> list[np.ndarray]:
    """Each query's probed rows, from the plan's own probes (``test_ann_core`` checks probing itself)."""
    probes = plan_search(index, q, 1, nprobe=nprobe).ivf.probes
    offsets = index.ivf.offsets
    return [np.concatenate([np.arange(offsets[lst], offsets[lst + 1]) for lst in row]) for row in probes]


@pytest.mark.parametrize("d", [16, 32, 64, 128])  # 16: the loop; 32, 64, 128: VNNI where the CPU has it
@pytest.mark.parametrize("share", [None, 0.5])  # unfiltered, and a filter dense enough to be streamed
def test_streamed_ivf_is_brute_force_over_each_querys_probed_lists(d: int, share: float | None) -> None:
    x, q = _clustered(3000, d, seed=d)
    index = build_index(x, np.arange(3000, dtype=np.int64) * 5 + 1, "t", ivf_lists=12, seed=0)
    exclude = np.where(np.arange(len(q)) % 2 == 0, index.ids[np.arange(len(q)) * 11], -1)
    mask = np.ones((len(q), index.count), bool) if share is None else _mask(len(q), index.count, share, seed=d)
    allow = None if share is None else filters.pack_rows(mask)
    plan = plan_search(index, q, 60, exclude, 5, allow)
    assert plan.ivf.shared is not None and not plan.ivf.walk  # the list-major kernel answers
    got = ivf_search(index, q, 60, nprobe=5, exclude_ids=exclude, allow=allow)
    want = _reference(index, q, 60, mask, exclude, rows_subset=_probed_rows(index, q, 5))
    assert _same(got, want)
    for i in (0, 3, 6):  # and each query alone gives its row of the batch
        alone = ivf_search(index, q[i:i + 1], 60, nprobe=5, exclude_ids=exclude[i:i + 1],
                           allow=None if allow is None else allow[i:i + 1])
        assert _same(alone, (got[0][i:i + 1], got[1][i:i + 1]))


def test_shared_lists_hold_each_query_list_pair_once_and_cut_by_cost() -> None:
    probes = np.array([[4, 1, 7], [1, 2, 4], [9, 4, 1]], np.int64)
    rows = np.array([10, 100, 10, 10, 300, 10, 10, 10, 10, 50], np.int64)
    shared = shared_lists(probes, rows, 2)
    assert shared.lists.tolist() == [1, 2, 4, 7, 9]
    pairs = sorted((int(shared.lists[j]), int(qi)) for j in range(len(shared.lists))
                   for qi in shared.list_queries[shared.list_ptr[j]:shared.list_ptr[j + 1]])
    assert pairs == sorted((int(lst), qi) for qi, row in enumerate(probes) for lst in row)
    # cost = rows * (3 + queries): list 1 400, 2 40, 4 1,800, 7 40, 9 200; half of 2,480 falls inside list 4
    assert shared.segments.tolist() == [0, 2, 5]
    empty = shared_lists(np.zeros((0, 3), np.int64), rows, 2)
    assert empty.lists.size == 0 and empty.segments.tolist() == [0, 0, 0]
