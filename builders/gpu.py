"""The GPU target: TensorRT engines for the ONNX stages, GPU instance groups, GPU-resident ANN.

On a machine with a CUDA device and the `tensorrt` package, each ONNX stage gets `model.plan` (FP16, one
optimisation profile spanning the batch and candidate dimensions) and a `backend: "tensorrt"` config.
Without them (this CI, a CPU build host), the engines are skipped with a clear message and the stage is
configured for NVIDIA's native onnxruntime backend on the GPU with the TensorRT execution accelerator
(FP16) — the ONNX fallback, which builds its engines on the serving GPU at load time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from widefunnel.tensor_names import Step

TRT_WORKSPACE_BYTES = 1 << 30


@dataclass(frozen=True)
class Profile:
    """Shapes of one input for a TensorRT optimisation profile (batch dimension included)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device on this machine"
    except ImportError:
        return "torch is not installed"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install tensorrt)"
    return None


def build_engine(onnx_path: Path, plan_path: Path, profiles: dict[str, Profile], fp16: bool = True) -> None:
    """ONNX -> serialized TensorRT engine with one optimisation profile (needs a GPU)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path: its tables are external data beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, TRT_WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    tmp = plan_path.with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(engine))
    tmp.replace(plan_path)


def stage_profiles(max_batch: int, dim: int, k: int, max_candidates: int, keep: int, tasks: int) -> dict:
    """Per ONNX stage, the profile of each input: batch 1..max_batch, candidates 1..max_candidates."""
    b = (1, max(1, max_batch // 4), max_batch)
    return {
        "query_tower": {Step.ITEM_ID: Profile((b[0], 1), (b[1], 1), (b[2], 1))},
        "rerank": {
            Step.QUERY: Profile((b[0], dim), (b[1], dim), (b[2], dim)),
            Step.CANDIDATE_ID: Profile((b[0], 1), (b[1], k), (b[2], max_candidates)),
            Step.KEEP: Profile((b[0], 1), (b[1], 1), (b[2], 1)),
        },
        "composite_scorer": {
            Step.ITEM_ID: Profile((b[0], 1), (b[1], 1), (b[2], 1)),
            Step.CANDIDATE_ID: Profile((b[0], 1), (b[1], keep), (b[2], max_candidates)),
            Step.VALUE_WEIGHTS: Profile((b[0], tasks + 1), (b[1], tasks + 1), (b[2], tasks + 1)),
        },
    }


def _gpu_instances(config: mc.ModelConfig) -> None:
    del config.instance_group[:]
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)


def onnx_on_gpu(config: mc.ModelConfig) -> mc.ModelConfig:
    """The ONNX fallback on GPU: native onnxruntime backend, TensorRT execution accelerator in FP16."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    _gpu_instances(out)
    accel = out.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accel.parameters["precision_mode"] = "FP16"
    accel.parameters["max_workspace_size_bytes"] = str(TRT_WORKSPACE_BYTES)
    return out


def tensorrt_plan(config: mc.ModelConfig) -> mc.ModelConfig:
    """Same tensors served from `model.plan` by the native tensorrt backend."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.backend = "tensorrt"
    out.default_model_filename = "model.plan"
    _gpu_instances(out)
    return out


def ann_on_gpu(config: mc.ModelConfig) -> mc.ModelConfig:
    """ANN instance on the GPU: index resident in device memory, inputs may stay on the GPU (DLPack)."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    _gpu_instances(out)
    out.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    return out


def check_gpu_config(config: mc.ModelConfig) -> list[str]:
    """What a GPU repository's config must satisfy beyond the protobuf schema; empty when fine."""
    problems = []
    if config.platform == "ensemble":
        return problems
    kinds = {g.kind for g in config.instance_group}
    if config.backend in ("tensorrt", "onnxruntime", "widefunnel_ann") and kinds != {mc.ModelInstanceGroup.KIND_GPU}:
        problems.append(f"{config.name}: {config.backend} stage must run on KIND_GPU instances")
    if config.backend == "tensorrt" and config.default_model_filename != "model.plan":
        problems.append(f"{config.name}: tensorrt stage must serve model.plan")
    if config.backend == "onnxruntime":
        accels = [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
        if "tensorrt" not in accels:
            problems.append(f"{config.name}: onnxruntime on GPU should use the tensorrt accelerator")
    if config.backend == "python" and kinds != {mc.ModelInstanceGroup.KIND_CPU}:
        problems.append(f"{config.name}: Python steps validate and merge on the CPU")
    return problems
