"""benchmarks/gpu_check.py is what a lent GPU runs (issues 20, 31); here it runs through the Triton interpreter, with no
repository (the funnel on the device against a built repository: tests/served/test_gpu_check_served.py)."""

from __future__ import annotations

import pytest
from gpu_check_run import run_gpu_check


# The whole script, its seven sections, through the interpreter: about 20 s of CPU (a third of the unit tier), so
# `make test-fast` leaves it out; the kernel and its fallback are checked exactly there (test_ann_kernel.py).
@pytest.mark.slow
def test_interpreter_run_is_exact_everywhere(tmp_path):
    sections = run_gpu_check(tmp_path)
    exact = [row for title, rows in sections.items() if "Exact" in title for row in rows]
    # N=1000/2000 x d=16/48 x random/clustered x batch 20/1 x k=10,32,50,300,900, two padding cells, N=2000 rows
    assert len(exact) >= 40 + 2 + 8 + 4
    for row in exact:
        default, kernel, fallback, pads, recall = row[6:11]
        assert default == "yes" and fallback == "yes" and kernel in ("yes", "—"), row
        assert recall == "—" if row[5].startswith("filtered") else float(recall) > 0.5, row
    # the kernel serves every k (issue 31), and matched; the fallback, forced, too
    assert all(row[5] == "kernel" and row[7] == "yes" for row in exact if not row[5].startswith("filtered")), exact
    assert any(int(row[9]) > 0 for row in exact)  # k > N: padded results, equal to the CPU's
    filtered = [row for row in exact if row[5].startswith("filtered")]  # issue 18 in the kernel and fallback
    assert len(filtered) == 3 and all(row[7] == "yes" for row in filtered), filtered
    timed = [row for title, rows in sections.items() if "Timed" in title for row in rows]
    assert timed and all(float(row[5]) > 0 for row in timed), timed  # gpu_search ran in every timed cell
    wide = next(rows for title, rows in sections.items() if title.startswith("2b. Issue 16"))
    assert len(wide) == 4 and all(row[11] == "yes" for row in wide), wide  # batch 1 and 8 x K 50 and 900
    served = sections["7. The served path against the CPU path"]
    assert [row[-1] for row in served if row[0].startswith("widefunnel_ann")] == ["yes"] * 3, served
    assert [row[-1] for row in served if row[0].startswith("quantize_rows_torch")] == ["yes"], served
    assert "skipped: no built repository" in served[-1][2], served  # no repository given, none carried


def test_smoke_run_is_the_device_run_in_small(tmp_path):
    """``--smoke``: the device run's own sections (the kernel's compile, issue 16's grid at batch 1 and 8 x three
    Ks, the filters and rescans, the served path) through the interpreter at N = 3,000; about 15 s of CPU."""
    sections = run_gpu_check(tmp_path, smoke=True)
    titles = list(sections)
    assert [t.split(".")[0] for t in titles] == ["0", "2b", "2c", "7"], titles
    compiled = sections[titles[0]]
    assert [(row[1], row[2]) for row in compiled] == [("32", "no"), ("32", "yes")], compiled
    assert all(float(row[3]) >= 0 for row in compiled), compiled
    wide = sections[titles[1]]
    assert [(row[2], row[3]) for row in wide] == [(b, k) for b in ("1", "8") for k in ("10", "100", "1,000")], wide
    assert all(row[11] == "yes" for row in wide), wide
    assert any("overflowed" in row[12] for row in wide), wide  # the all-zero query of batch 8: a rescan
    filtered = sections[titles[2]]
    assert len(filtered) == 4 and all(row[8] == "yes" for row in filtered), filtered
    assert "short" in filtered[-1][9], filtered  # the filter that admits exactly the sampled rows
    served = sections[titles[3]]
    assert [row[-1] for row in served if row[0].startswith(("widefunnel_ann", "quantize"))] == ["yes"] * 3, served
