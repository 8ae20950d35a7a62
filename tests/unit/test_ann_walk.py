"""The scan's path reads top-down (issue 32, part 6): a search is planned once (``plan.plan_search``), then one
stage runs the plan (``search.run`` / ``ivf.scan_lists``), and control does not bounce back to a module it left.

The walk: the ``widefunnel/ann`` module control is in at each call and return (``sys.setprofile``), runs
collapsed. ``kernels.py`` is folded into its caller: its compiled kernels are the work a stage exists to call,
call no other module and return at once. Measured on this index (before the plan: ``search.py`` entered 10 to
16 times, ``ivf.py`` 17; after: the stage once, twice for a compacted copy, whose plan is made where the copy
is; ``plan.py`` 4 to 9 times, each a return from a helper the builder calls: quantize, the bitmap's share per
level, its sample subset, the batch's union).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import widefunnel.ann as ann_pkg
from widefunnel.ann import filters
from widefunnel.ann.index import build_index
from widefunnel.ann.query import search

ANN = str(Path(ann_pkg.__file__).parent)
STAGE_ENTRIES = 2  # search.py or ivf.py: entered once, twice for a compacted copy (its plan is made there)
BUILDER_ENTRIES = 10  # plan.py: returns from the helpers it calls while building (twice for a compacted copy)


def walk(fn: Callable[[], object]) -> list[str]:
    """The modules of ``widefunnel/ann`` control passes through while ``fn`` runs, runs collapsed."""
    seq: list[str] = []

    def note(frame) -> None:
        while frame is not None and (not frame.f_code.co_filename.startswith(ANN)
                                     or frame.f_code.co_filename.endswith("kernels.py")):
            frame = frame.f_back
        if frame is not None:
            name = Path(frame.f_code.co_filename).stem
            if not seq or seq[-1] != name:
                seq.append(name)

    def profile(frame, event, arg) -> None:
        if event == "call":
            note(frame)
        elif event == "return":
            note(frame.f_back)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seq


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 32)).astype(np.float32)
    return build_index(x, np.arange(20000, dtype=np.int64), "tower-walk", ivf_lists=64), x


@pytest.mark.parametrize("case", ["exact b1", "exact b8", "exact b8 k3000", "filtered b1", "filtered b8",
                                  "shared filter b8 (compacted)", "ivf b8", "ivf filtered b8"])
def test_a_search_returns_to_no_module_more_than_a_few_times(index, case):
    index, x = index
    rng = np.random.default_rng(1)
    dense = filters.pack_rows(rng.random((8, 20000)) < 0.3)
    shared = filters.pack_rows(np.tile(rng.random(20000) < 0.1, (8, 1)))
    calls = {
        "exact b1": lambda: search(index, x[:1], 10),
        "exact b8": lambda: search(index, x[:8], 100),
        "exact b8 k3000": lambda: search(index, x[:8], 3000, exclude_ids=np.arange(8)),
        "filtered b1": lambda: search(index, x[:1], 100, allow=dense[:1]),
        "filtered b8": lambda: search(index, x[:8], 100, allow=dense),
        "shared filter b8 (compacted)": lambda: search(index, x[:8], 100, allow=shared),
        "ivf b8": lambda: search(index, x[:8], 100, nprobe=4),
        "ivf filtered b8": lambda: search(index, x[:8], 100, nprobe=4, allow=dense),
    }
    calls[case]()  # compiled and prepared: the walk is a served call's
    seq = walk(calls[case])
    entries = Counter(seq)
    assert seq[:2] == ["query", "plan"] and seq[-1] == "query", seq  # planned first ...
    stage = [m for m in ("search", "ivf") if m in seq]
    assert len(stage) == 1 and seq.index(stage[0]) > seq.index("plan"), seq  # ... then one stage runs the plan
    assert entries[stage[0]] <= STAGE_ENTRIES and entries["query"] <= 3, seq
    assert entries["plan"] <= BUILDER_ENTRIES, seq
    helpers = [i for i, m in enumerate(seq) if m not in ("query", "plan", "search", "ivf")]
    assert all(seq[i - 1] == "plan" for i in helpers), seq  # filters, quantize: called by the builder alone
