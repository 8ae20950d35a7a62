"""perf_analyzer runs, the direct step chain, and the Prometheus metrics of the session server (perf_analyzer's
setup and the parsers: tests/unit/test_perf.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import admin_client

from widefunnel import model_configs as mcfg
from widefunnel.client import metrics, perf
from widefunnel.client.client import WidefunnelClient


@pytest.fixture(scope="module")
def grpc_client(server):
    client = admin_client(server, "grpc")
    yield client
    client.close()


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
