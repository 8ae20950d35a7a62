"""The GPU target without a GPU: the TensorRT plan variant, engine builds skipped clearly, the stage profiles (the
configs generated from a built repository: tests/served/test_gpu_target_served.py)."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from widefunnel import model_configs as mcfg
from widefunnel.builders import gpu
from widefunnel.builders.repository import VersionWriter, build_engines
from widefunnel.model_configs import Target


def test_tensorrt_plan_variant_is_valid():
    config = mcfg.query_tower_config(Target("gpu"), 32)
    plan = gpu.tensorrt_plan(config)
    assert plan.backend == "tensorrt" and plan.default_model_filename == "model.plan"
    assert gpu.check_gpu_config(plan) == []
    bad = gpu.tensorrt_plan(config)
    bad.instance_group[0].kind = mc.ModelInstanceGroup.KIND_CPU
    assert gpu.check_gpu_config(bad)  # the checker catches a CPU instance for a TensorRT stage


def test_engine_build_is_skipped_with_a_clear_message_without_gpu(tmp_path, test_config):
    reason = gpu.tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("this machine can build TensorRT engines")
    messages: list[str] = []
    writer = VersionWriter(tmp_path, 1)
    assert build_engines(writer, test_config, Target("gpu"), 32, log=messages.append) is False
    assert len(messages) == 1 and "TensorRT engines skipped" in messages[0] and reason in messages[0]
    assert build_engines(writer, test_config, Target("cpu"), 32, log=messages.append) is False


def test_profiles_cover_batch_and_candidates():
    p = gpu.stage_profiles(64, 32, 200, 4096, 100, 3)
    assert p["rerank"]["CANDIDATE_ID"].max == (64, 4096) and p["rerank"]["KEEP"].max == (64, 1)
    assert p["composite_scorer"]["CANDIDATE_ID"].opt == (16, 100)
    for stage in p.values():
        for prof in stage.values():
            assert all(a <= b <= c for a, b, c in zip(prof.min, prof.opt, prof.max))
