"""The GPU target without a GPU: configs generated, valid against Triton's protobuf, GPU steps skipped clearly."""

from __future__ import annotations

import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from widefunnel import model_configs as mcfg
from widefunnel.builders import gpu
from widefunnel.builders.repository import ONNX_STAGES, VersionWriter, build_engines, step_configs
from widefunnel.model_configs import Target


@pytest.fixture(scope="module")
def gpu_configs(built_repository, test_config, tmp_path_factory):
    repo = tmp_path_factory.mktemp("gpu") / "repo"
    shutil.copytree(built_repository, repo)
    return step_configs(repo, test_config, Target("gpu"), 2, "0123456789abcdef", 32, 1682, engines=False)


def test_gpu_configs_parse_as_model_config_protobuf(gpu_configs):
    for name, config in gpu_configs.items():
        text = mcfg.to_pbtxt(config)
        parsed = text_format.Parse(text, mc.ModelConfig())  # Triton's own schema
        assert parsed.name == name
        assert gpu.check_gpu_config(parsed) == [], name


def test_gpu_configs_place_stages_on_the_gpu(gpu_configs):
    for name in ONNX_STAGES:
        config = gpu_configs[name]
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accel[0].name == "tensorrt" and accel[0].parameters["precision_mode"] == "FP16"
    for head in mcfg.HEADS:
        ann = gpu_configs[f"ann_{head}"]
        assert ann.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert ann.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    for name in ("preprocess", "quota_merge"):
        assert gpu_configs[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


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
