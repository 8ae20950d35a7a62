"""perf_analyzer's setup, its input files and sweep settings, and the Prometheus parser; no server (the runs
against the session server: tests/served/test_perf_served.py)."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel.client import metrics, perf


@pytest.mark.parametrize("prefer_system", [True, False], ids=["system-or-bundled", "bundled-libb64"])
def test_perf_analyzer_starts_with_the_environment_built_for_it(prefer_system):
    env = perf.perf_environment(prefer_system_libb64=prefer_system)
    assert "Perf Analyzer" in perf.check_perf_analyzer(env)
    if not prefer_system:  # the fallback: a private libb64.so.0d symlink to the copy pytriton bundles
        first = env["LD_LIBRARY_PATH"].split(":")[0]
        link = perf.Path(first) / perf.LIBB64
        assert link.is_symlink() and link.resolve() == perf.bundled_libb64().resolve()
    assert str(perf.cuda_runtime_lib_dir()) in env["LD_LIBRARY_PATH"]


def test_perf_analyzer_without_the_environment_names_the_missing_library(tmp_path):
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": ""}
    proc = subprocess.run([str(perf.perf_analyzer_binary()), "--version"], env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        pytest.skip("this machine resolves libb64 and libcudart.so.12 system-wide")
    assert "libcudart.so.12" in proc.stderr or "libb64.so.0d" in proc.stderr


def test_input_data_json_drops_the_batch_dimension():
    data = perf.input_data([{"QUERY": np.ones((1, 3), np.float32), "CANDIDATE_EMB": np.zeros((1, 2, 3), np.float32),
                             "ITEM_ID": np.array([[7]], np.int64)}])
    entry = data["data"][0]
    assert entry["QUERY"] == {"content": [1.0, 1.0, 1.0], "shape": [3]}
    assert entry["CANDIDATE_EMB"]["shape"] == [2, 3] and len(entry["CANDIDATE_EMB"]["content"]) == 6
    assert entry["ITEM_ID"] == {"content": [7], "shape": [1]}
    with pytest.raises(ValueError, match="batch 1"):
        perf.input_data([{"ITEM_ID": np.array([[1], [2]], np.int64)}])


def test_concurrency_levels():
    assert perf.SweepSettings("1,2,4").ranges() == ["1:1:1", "2:2:1", "4:4:1"]
    assert perf.SweepSettings("1:8:2").ranges() == ["1:8:2"]


def test_prometheus_parser():
    text = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="widefunnel",version="1"} 12
nv_inference_request_success{model="ann_engagement",version="1"} 5
nv_inference_request_success{model="ann_engagement",version="2"} 7
nv_inference_request_failure{model="widefunnel",reason="BACKEND",version="1"} 3
nv_cpu_utilization 0.25
"""
    samples = metrics.parse(text)
    assert metrics.per_model(samples, "nv_inference_request_success") == {"widefunnel": 12.0, "ann_engagement": 12.0}
    assert metrics.per_model(samples, "nv_inference_request_failure", reason="BACKEND") == {"widefunnel": 3.0}
    assert metrics.per_model(samples, "nv_inference_request_failure", reason="REJECTED") == {}
    with pytest.raises(ValueError):
        metrics.parse("not a metric line at all {")
