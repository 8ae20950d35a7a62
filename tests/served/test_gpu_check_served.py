"""benchmarks/gpu_check.py through the Triton interpreter with the session's built repository: the funnel with the
ANN step on the device equals the CPU funnel (section 7). The runs without a repository: tests/unit/test_gpu_check.py.
"""

from __future__ import annotations

from gpu_check_run import run_gpu_check


def test_funnel_with_the_ann_on_the_device_equals_the_cpu_funnel(tmp_path, built_repository):
    sections = run_gpu_check(tmp_path, "--sizes", "300", "--dims", "16", "--repository", str(built_repository))
    funnel = [row for row in sections["7. The served path against the CPU path"] if row[0].startswith("funnel")]
    assert [row[1] for row in funnel] == ["1", "32"] and all(row[-1] == "yes" for row in funnel), funnel
