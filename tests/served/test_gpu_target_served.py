"""The GPU target without a GPU, from the session's built repository: configs generated, valid against Triton's
protobuf, the steps placed on the GPU."""

from __future__ import annotations

import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from widefunnel import model_configs as mcfg
from widefunnel.builders import gpu
from widefunnel.builders.repository import ONNX_STAGES, step_configs
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
