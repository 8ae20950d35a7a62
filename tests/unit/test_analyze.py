"""`widefunnel analyze`: Model Analyzer's config, its CSV read back, the latency-first choice, and the choice
reaching every step's config through the builder. (Model Analyzer itself runs from its own venv, by hand:
`make analyze`; its run is recorded in benchmarks/RESULTS.md.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from widefunnel import model_configs as mcfg
from widefunnel.client import analyze as A
from widefunnel.config import load_config

HEADER = ("Model,Batch,Concurrency,Model Config Path,Instance Group,Throughput (infer/sec),Avg Latency (ms),"
          "p90 Latency (ms),p99 Latency (ms)")


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    export = tmp_path / "export"
    (export / "results").mkdir(parents=True)
    (export / "results" / "metrics-model-inference.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return export


def test_config_profiles_each_step_with_its_recorded_inputs(tmp_path):
    inputs = {m: tmp_path / f"input_{m}.json" for m in mcfg.STEP_MODELS}
    env = {"LD_LIBRARY_PATH": "/a:/b", "WIDEFUNNEL_SITE": "/site", "HOME": "/root"}
    cfg = A.analyzer_config(tmp_path / "repo", tmp_path, inputs, tmp_path / "backends", Path("/bin/tritonserver"),
                            Path("/bin/perf_analyzer"), env)
    assert set(cfg["profile_models"]) == set(mcfg.STEP_MODELS)
    rerank = cfg["profile_models"]["rerank_relevance"]
    assert rerank["perf_analyzer_flags"]["input-data"] == str(inputs["rerank_relevance"])
    assert rerank["model_config_parameters"]["dynamic_batching"]["max_queue_delay_microseconds"] == [0, 100, 500]
    assert cfg["triton_server_environment"] == {"LD_LIBRARY_PATH": "/a:/b", "WIDEFUNNEL_SITE": "/site"}
    assert cfg["triton_server_flags"]["backend-directory"] == str(tmp_path / "backends")
    assert {cfg["triton_server_flags"][f"{p}-address"] for p in ("http", "grpc", "metrics")} == {"127.0.0.1"}
    assert cfg["run_config_search_disable"] and cfg["concurrency"] == [1, 4]


def test_latency_first_choice_within_ten_percent_of_the_best_throughput(tmp_path):
    export = _csv(tmp_path, [
        "ann_engagement,1,1,ann_engagement_config_0,1:CPU,500,1.5,3.0,3.0",  # fastest alone, but slow under load
        "ann_engagement,1,4,ann_engagement_config_0,1:CPU,600,6.0,9.0,9.0",
        "ann_engagement,1,1,ann_engagement_config_1,2:CPU,450,1.9,3.1,3.1",
        "ann_engagement,1,4,ann_engagement_config_1,2:CPU,1000,3.5,6.0,6.0",
        "ann_engagement,1,1,ann_engagement_config_2,1:CPU,460,1.8,3.1,3.1",
        "ann_engagement,1,4,ann_engagement_config_2,1:CPU,\"950\",3.6,6.1,6.1",
        "quota_merge,1,1,quota_merge_config_0,1:CPU,900,1.1,2.0,2.0",
        "quota_merge,1,4,quota_merge_config_0,1:CPU,1500,2.0,4.0,4.0",
    ])
    rows = A.read_results(export)
    assert len(rows) == 8 and rows[5]["throughput"] == 950.0
    settings = {"ann_engagement_config_0": (0, 1), "ann_engagement_config_1": (0, 2),
                "ann_engagement_config_2": (100, 1), "quota_merge_config_0": (500, 1)}
    choices = {c.model: c for c in A.choose(rows, settings)}
    assert (choices["ann_engagement"].max_queue_delay_us, choices["ann_engagement"].instances) == (100, 1)
    assert choices["ann_engagement"].avg_ms == {1: 1.8, 4: 3.6}
    assert (choices["quota_merge"].max_queue_delay_us, choices["quota_merge"].instances) == (500, 1)
    toml = tmp_path / "serving.toml"
    toml.write_text(A.serving_toml(list(choices.values())))
    cfg = load_config(toml)
    assert cfg["serving"]["steps"]["ann_engagement"] == {"max_queue_delay_us": 100, "instances": 1}


def test_the_builder_writes_the_chosen_settings_into_each_step(tmp_path):
    from widefunnel.builders.repository import step_configs

    cfg = load_config(overrides={"serving": {"steps": {"ann_relevance": {"max_queue_delay_us": 0, "instances": 2},
                                                       "quota_merge": {"max_queue_delay_us": 100}}}})
    configs = step_configs(tmp_path, cfg, mcfg.Target("cpu"), 1, "00000000000000ff", 32, 1682)
    assert configs["ann_relevance"].dynamic_batching.max_queue_delay_microseconds == 0
    assert configs["ann_relevance"].instance_group[0].count == 2
    assert configs["quota_merge"].dynamic_batching.max_queue_delay_microseconds == 100
    assert configs["preprocess"].dynamic_batching.max_queue_delay_microseconds == \
        cfg["serving"]["steps"]["preprocess"]["max_queue_delay_us"]


def test_serving_max_batch_size_reaches_every_step_and_ensemble(tmp_path):
    from widefunnel.builders.repository import ensemble_configs, serving_target, step_configs

    cfg = load_config(overrides={"serving": {"max_batch_size": 16}})
    target = serving_target(mcfg.Target("cpu"), cfg["serving"])
    configs = {**step_configs(tmp_path, cfg, target, 1, "00000000000000ff", 32, 1682),
               **ensemble_configs(cfg, target, 1)}
    assert {name: c.max_batch_size for name, c in configs.items()} == dict.fromkeys(configs, 16)
    with pytest.raises(ValueError, match="serving.max_batch_size: an integer >= 1 expected, got 0"):
        serving_target(mcfg.Target("cpu"), {"max_batch_size": 0})


def test_an_unknown_step_setting_is_refused(tmp_path):
    from widefunnel.builders.repository import serving_settings

    config = mcfg.query_tower_config(mcfg.Target("cpu"), 32)
    with pytest.raises(ValueError, match="serving.steps.query_tower: unknown keys \\['preferred'\\]"):
        serving_settings(config, {"max_queue_delay_us": 500, "steps": {"query_tower": {"preferred": 4}}},
                         "query_tower")
