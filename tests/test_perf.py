"""perf_analyzer setup and runs, the direct step chain, and the Prometheus metrics of the session server."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import admin_client

from widefunnel import model_configs as mcfg
from widefunnel.client import metrics, perf
from widefunnel.client.client import WidefunnelClient


# ------------------------------------------------------------------------------------------ no server needed
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


# ------------------------------------------------------------------------------------- against the session server
@pytest.fixture(scope="module")
def grpc_client(server):
    client = admin_client(server, "grpc")
    yield client
    client.close()


@pytest.mark.server
def test_success_counters_rise_for_the_ensemble_and_every_step(server):
    before = metrics.scrape(server.metrics_url)
    requests = 5
    with WidefunnelClient(server.grpc_url, "grpc") as client:
        for _ in range(requests):
            client.recommend([1, 50, 181], top_n=10)
    after = metrics.scrape(server.metrics_url)
    rose = metrics.delta(metrics.per_model(before, "nv_inference_request_success"),
                         metrics.per_model(after, "nv_inference_request_success"))
    assert rose[mcfg.ENSEMBLE] == requests
    for model in mcfg.STEP_MODELS:  # composite_scorer runs once per head
        assert rose[model] == requests * (2 if model == "composite_scorer" else 1), (model, rose)
    failed = metrics.delta(metrics.per_model(before, "nv_inference_request_failure"),
                           metrics.per_model(after, "nv_inference_request_failure"))
    assert all(v == 0 for v in failed.values()), failed
    compute = metrics.mean_us(before, after, "nv_inference_compute_infer_duration_us")
    assert all(compute[m] > 0 for m in mcfg.STEP_MODELS), compute
    pending = metrics.per_model(after, "nv_inference_pending_request_count")
    assert set(mcfg.STEP_MODELS) <= pending.keys()


@pytest.mark.server
def test_direct_chain_reproduces_the_ensemble(server, grpc_client):
    """The step inputs fed to perf_analyzer are the ones the ensemble computes: chaining them gives its answer."""
    steps = perf.served_steps(grpc_client)
    assert [s.model for s in steps].count("composite_scorer") == 2 and steps[-1].model == "quota_merge"
    chain = perf.DirectChain(grpc_client, steps)
    with WidefunnelClient(server.grpc_url, "grpc") as client:
        for seed in (1, 50, 181):
            direct = chain.run({"seed_item_id": np.array([[seed]], np.int64)})
            served = client.recommend([seed])
            assert np.array_equal(direct["item_id"], served.item_id)
            assert direct["fingerprint"][0, 0].decode() == served.fingerprint[0]


@pytest.mark.server
def test_perf_analyzer_measures_the_ensemble_and_a_step(server, grpc_client, built_repository, tmp_path):
    seeds = perf.sample_seeds(built_repository, perf.served_steps(grpc_client)[0].version, 4)
    samples = perf.model_inputs(grpc_client, seeds)
    assert len(samples["composite_scorer"]) == 8 and samples["rerank_engagement"][0]["KEEP"].shape == (1, 1)
    files = perf.write_input_files({m: samples[m] for m in (mcfg.ENSEMBLE, "rerank_engagement")}, tmp_path)
    assert len(json.loads(files[mcfg.ENSEMBLE].read_text())["data"]) == 4
    settings = perf.SweepSettings("1,2", measurement_interval_ms=500, max_trials=6, admin_key=server.admin_key)
    rows = perf.run_perf(mcfg.ENSEMBLE, server.grpc_url, "grpc", files[mcfg.ENSEMBLE], tmp_path, settings)
    assert [r["Concurrency"] for r in rows] == [1, 2]
    for r in rows:
        assert r["model"] == mcfg.ENSEMBLE and r["Inferences/Second"] > 0
        assert 0 < r["p50 latency"] <= r["p99 latency"]
    step_rows = perf.run_perf("rerank_engagement", server.http_url, "http", files["rerank_engagement"], tmp_path,
                              perf.SweepSettings("1", measurement_interval_ms=500, max_trials=6,
                                                 admin_key=server.admin_key))
    assert step_rows[0]["Inferences/Second"] > 0
    perf.write_sweep_csv(rows + step_rows, tmp_path / "perf.csv")
    with open(tmp_path / "perf.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3


@pytest.mark.server
def test_perf_command_writes_csv_and_plot(server, built_repository, tmp_path, monkeypatch):
    from widefunnel.cli import main

    monkeypatch.setenv("WIDEFUNNEL_ADMIN_KEY", server.admin_key)
    code = main(["perf", "--url", server.http_url, "--grpc-url", server.grpc_url, "--repository",
                 str(built_repository), "--out", str(tmp_path), "--models", mcfg.ENSEMBLE, "--protocols", "grpc",
                 "--concurrency", "1", "--samples", "4"])
    assert code == 0
    assert (tmp_path / "perf.png").stat().st_size > 10_000
    with open(tmp_path / "perf.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["protocol"]) for r in rows] == [(mcfg.ENSEMBLE, "grpc")]
