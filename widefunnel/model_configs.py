"""Triton model configs of the funnel, built as `model_config_pb2` messages (valid by construction) and
written with `text_format`, so generated `config.pbtxt` files stay readable and diffable.

Tensor names: `widefunnel.tensor_names` (client-facing `Client` lowercase, step `Step` uppercase).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from widefunnel.merge import HEADS
from widefunnel.tensor_names import Client, Step, retrieved

ENSEMBLE = "widefunnel"
RETRIEVE_ENSEMBLE = "widefunnel_retrieve"
SCORE_ENSEMBLE = "widefunnel_score"
STEP_MODELS = ("preprocess", "query_tower", "ann_engagement", "ann_relevance", "rerank_engagement",
               "rerank_relevance", "composite_scorer", "quota_merge")
ENSEMBLES = (ENSEMBLE, RETRIEVE_ENSEMBLE, SCORE_ENSEMBLE)

_TYPES = {"INT64": mc.TYPE_INT64, "INT32": mc.TYPE_INT32, "FP32": mc.TYPE_FP32, "BYTES": mc.TYPE_STRING}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass
class Target:
    """Where the repository will run: `cpu` (embedded server or NVIDIA's image on CPU) or `gpu`. The builder
    sets ``max_batch_size`` from `serving.max_batch_size`; each step's batching delay and instances come from
    `serving` too (`builders.repository.serving_settings`), not from here."""

    kind: str = "cpu"
    max_batch_size: int = 64
    onnx_backend: str = "onnxruntime"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"target must be 'cpu' or 'gpu', got {self.kind!r}")

    @property
    def instance_kind(self) -> int:
        return mc.ModelInstanceGroup.KIND_GPU if self.kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU


def _tensors(repeated, tensors: list[Tensor]) -> None:
    for t in tensors:
        entry = repeated.add(name=t.name, data_type=_TYPES[t.dtype], dims=list(t.dims))
        if t.optional:
            entry.optional = True


def _model(name: str, backend: str, inputs: list[Tensor], outputs: list[Tensor], target: Target,
           parameters: dict[str, str] | None = None, instances: int = 1, kind: int | None = None,
           batching: bool = True) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=target.max_batch_size)
    config.version_policy.latest.num_versions = 1
    _tensors(config.input, inputs)
    _tensors(config.output, outputs)
    config.instance_group.add(kind=target.instance_kind if kind is None else kind, count=instances)
    if batching:  # its delay: `serving_settings`
        config.dynamic_batching.SetInParent()
    for key, value in sorted((parameters or {}).items()):
        config.parameters[key].string_value = str(value)
    return config


# Declared optional so that preprocess reports its absence by name: Triton 2.51's ensemble scheduler
# answers a missing required input only with "unexpected deadlock".
SEED = Tensor(Client.SEED_ITEM_ID, "INT64", (1,), optional=True)
# Only the scoring entry point feeds this (its seed, mapped a second time): it tells preprocess that
# candidate_item_id is required there, so a request without it is refused by name, not answered empty.
SCORING_SEED = Tensor(Client.SCORING_SEED_ITEM_ID, "INT64", (1,), optional=True)


# The funnel's width per request (issue 16): candidates per head from the ANN, and how many the reranker keeps.
WIDTH = Tensor(Client.CANDIDATES_PER_HEAD, "INT32", (1,), True)
KEEP = Tensor(Client.RERANK_KEEP, "INT32", (1,), True)

# Filters inside retrieval (issues 18, 29), per seed: excluded ids (-1 pads) on every build, and the filters named
# after the build's item fields (`widefunnel.field_filters`; MovieLens': its genre and year). Preprocess validates
# them into FILTER_STEP_TENSORS (FIELD_TOKENS and FIELD_RANGES: one packed form whatever the schema, so the ANN
# steps and the shard router wire fixed names), which the ANN steps apply in the scan.
EXCLUDE_INPUT = Tensor(Client.EXCLUDE_ITEM_ID, "INT64", (-1,), True)
FILTER_STEP_TENSORS = [Tensor(Step.EXCLUDE_IDS, "INT64", (-1,)), Tensor(Step.FIELD_TOKENS, "INT64", (-1,)),
                       Tensor(Step.FIELD_RANGES, "FP32", (-1,))]

FieldInputs = tuple[tuple[str, str], ...]  # (client tensor, dtype) per field filter: FieldSchema.client_inputs()


def filter_inputs(fields: FieldInputs = ()) -> list[Tensor]:
    """The client's filter tensors: exclude_item_id, and one include/exclude (BYTES [B, V]) or min/max (FP32
    [B, 1]) pair per item field of the build (none for a build without a filterable field)."""
    return [EXCLUDE_INPUT, *(Tensor(name, dtype, (-1,) if dtype == "BYTES" else (1,), True) for name, dtype in fields)]


def _filter_wiring(fields: FieldInputs = ()) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(ensemble -> preprocess inputs, preprocess -> ensemble outputs, ensemble -> ANN inputs): the step
    tensors travel under the same ensemble names (`_exclude_ids`, ...) from preprocess to both ANN steps."""
    between = {t.name: f"_{t.name.lower()}" for t in FILTER_STEP_TENSORS}
    return {t.name: t.name for t in filter_inputs(fields)}, between, between


def _controls(tasks: int) -> list[Tensor]:
    """The client's alpha, top_n and value_weights: optional, preprocess fills in the build's defaults."""
    return [Tensor(Client.ALPHA, "FP32", (1,), True), Tensor(Client.TOP_N, "INT32", (1,), True),
            Tensor(Client.VALUE_WEIGHTS, "FP32", (tasks + 1,), True)]


def preprocess_config(target: Target, tasks: int, parameters: dict[str, str], fields: FieldInputs = ()
                      ) -> mc.ModelConfig:
    inputs = [SEED, *_controls(tasks), Tensor(Client.CANDIDATE_ITEM_ID, "INT64", (-1,), True), SCORING_SEED, WIDTH,
              KEEP, *filter_inputs(fields)]
    outputs = [Tensor(Step.ITEM_ID, "INT64", (1,)), Tensor(Step.ALPHA, "FP32", (1,)), Tensor(Step.TOP_N, "INT32", (1,)),
               Tensor(Step.VALUE_WEIGHTS, "FP32", (tasks + 1,)), Tensor(Step.CANDIDATE_ID, "INT64", (-1,)),
               Tensor(Step.K, "INT32", (1,)), Tensor(Step.KEEP, "INT32", (1,)), *FILTER_STEP_TENSORS]
    # Validation runs on the CPU wherever the rest runs.
    return _model("preprocess", "python", inputs, outputs, target, parameters, kind=mc.ModelInstanceGroup.KIND_CPU)


def query_tower_config(target: Target, dim: int) -> mc.ModelConfig:
    outputs = [*(Tensor(name, "FP32", (dim,)) for name in Step.EMBEDDINGS), Tensor(Step.FINGERPRINT, "INT64", (1,))]
    return _model("query_tower", target.onnx_backend, [Tensor(Step.ITEM_ID, "INT64", (1,))], outputs, target)


def ann_config(head: str, target: Target, dim: int, parameters: dict[str, str]) -> mc.ModelConfig:
    """CANDIDATE_EMB is produced only when a caller asks for it by name; the ensembles never do (the
    rerankers gather candidates' codes from their own table). CANDIDATE_ID is internal (`widefunnel.item_ids`);
    CANDIDATE_ITEM_ID, the same candidates in the catalogue's ids, likewise only when asked for (retrieval)."""
    inputs = [Tensor(Step.QUERY, "FP32", (dim,)), Tensor(Step.EXCLUDE_ID, "INT64", (1,), True),
              Tensor(Step.K, "INT32", (1,), True), Tensor(Step.NPROBE, "INT32", (1,), True),
              *[Tensor(t.name, t.dtype, t.dims, True) for t in FILTER_STEP_TENSORS]]
    outputs = [Tensor(Step.CANDIDATE_ID, "INT64", (-1,)), Tensor(Step.CANDIDATE_SCORE, "FP32", (-1,)),
               Tensor(Step.CANDIDATE_EMB, "FP32", (-1, dim)), Tensor(Step.FINGERPRINT, "INT64", (1,)),
               Tensor(Step.CANDIDATE_ITEM_ID, "INT64", (-1,))]
    return _model(f"ann_{head}", "widefunnel_ann", inputs, outputs, target, parameters)


def rerank_config(head: str, target: Target, dim: int) -> mc.ModelConfig:
    inputs = [Tensor(Step.QUERY, "FP32", (dim,)), Tensor(Step.CANDIDATE_ID, "INT64", (-1,)),
              Tensor(Step.KEEP, "INT32", (1,))]
    outputs = [Tensor(Step.RERANK_ID, "INT64", (-1,)), Tensor(Step.RERANK_SCORE, "FP32", (-1,)),
               Tensor(Step.FINGERPRINT, "INT64", (1,))]
    return _model(f"rerank_{head}", target.onnx_backend, inputs, outputs, target)


def scorer_config(target: Target, tasks: int, levels: int = 3) -> mc.ModelConfig:
    inputs = [Tensor(Step.ITEM_ID, "INT64", (1,)), Tensor(Step.CANDIDATE_ID, "INT64", (-1,)),
              Tensor(Step.VALUE_WEIGHTS, "FP32", (tasks + 1,))]
    outputs = [Tensor(Step.TASK_PROBS, "FP32", (-1, tasks)), Tensor(Step.RELEVANCE_PROBS, "FP32", (-1, levels - 1)),
               Tensor(Step.SCORE, "FP32", (-1,)), Tensor(Step.FINGERPRINT, "INT64", (1,))]
    return _model("composite_scorer", target.onnx_backend, inputs, outputs, target)


# What an ONNX step refuses when called directly, enforced by the Python-based onnxruntime backend from the
# `input_checks` parameter (rules: widefunnel.validation.STEP_RULES). -1 is the ANN's padding id.
INPUT_CHECKS = {
    "query_tower": {Step.ITEM_ID: "id"},
    "rerank": {Step.QUERY: "finite", Step.CANDIDATE_ID: "id_or_pad", Step.KEEP: "positive"},
    "composite_scorer": {Step.ITEM_ID: "id", Step.CANDIDATE_ID: "id_or_pad", Step.VALUE_WEIGHTS: "finite_nonnegative"},
}


def add_input_checks(config: mc.ModelConfig, stage: str, max_item_id: int, max_request_candidates: int
                     ) -> mc.ModelConfig:
    import json

    config.parameters["input_checks"].string_value = json.dumps(INPUT_CHECKS[stage], sort_keys=True)
    config.parameters["max_item_id"].string_value = str(max_item_id)
    config.parameters["max_request_candidates"].string_value = str(max_request_candidates)
    return config


# The tower's first: quota_merge answers with it.
FINGERPRINT_INPUTS = (Step.FP_TOWER, *(name for stage in zip(*Step.MERGE_FINGERPRINTS) for name in stage))


def merge_outputs(tasks: int) -> list[Tensor]:
    return [Tensor(Client.ITEM_ID, "INT64", (-1,)), Tensor(Client.SCORE, "FP32", (-1,)),
            Tensor(Client.SOURCE_HEAD, "BYTES", (-1,)), Tensor(Client.TASK_PROBS, "FP32", (-1, tasks)),
            Tensor(Client.FINGERPRINT, "BYTES", (1,))]


def merge_config(target: Target, tasks: int, parameters: dict[str, str]) -> mc.ModelConfig:
    inputs = []
    for ids, scores, probs in Step.MERGE_HEADS:
        inputs += [Tensor(ids, "INT64", (-1,)), Tensor(scores, "FP32", (-1,)), Tensor(probs, "FP32", (-1, tasks))]
    inputs += [Tensor(Step.ALPHA, "FP32", (1,)), Tensor(Step.TOP_N, "INT32", (1,))]
    inputs += [Tensor(n, "INT64", (1,)) for n in FINGERPRINT_INPUTS]
    return _model("quota_merge", "python", inputs, merge_outputs(tasks), target, parameters,
                  kind=mc.ModelInstanceGroup.KIND_CPU)


def _step(config: mc.ModelConfig, model: str, version: int, inputs: dict[str, str],
          outputs: dict[str, str]) -> None:
    config.ensemble_scheduling.step.add(model_name=model, model_version=version, input_map=inputs,
                                        output_map=outputs)


def _ensemble(name: str, target: Target, inputs: list[Tensor], outputs: list[Tensor]) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=target.max_batch_size)
    _tensors(config.input, inputs)
    _tensors(config.output, outputs)
    return config


def _front(config: mc.ModelConfig, versions: dict[str, int], with_candidates: bool = False,
           fields: FieldInputs = ()) -> None:
    client, filtered, _ = _filter_wiring(fields)
    inputs = {t.name: t.name for t in (SEED, *_controls(0), WIDTH, KEEP)} | client
    outputs = {Step.ITEM_ID: "_item_id", Step.ALPHA: "_alpha", Step.TOP_N: "_top_n",
               Step.VALUE_WEIGHTS: "_value_weights", Step.K: "_k", Step.KEEP: "_keep"} | filtered
    if with_candidates:
        inputs[Client.CANDIDATE_ITEM_ID] = Client.CANDIDATE_ITEM_ID
        outputs[Step.CANDIDATE_ID] = "_candidate_id"
    _step(config, "preprocess", versions["preprocess"], inputs, outputs)


def _client_inputs(tasks: int, fields: FieldInputs = ()) -> list[Tensor]:
    return [SEED, *_controls(tasks), WIDTH, KEEP, *filter_inputs(fields)]


def _towers_and_ann(config: mc.ModelConfig, versions: dict[str, int], full: bool = True) -> None:
    """Triton refuses ensembles with unused tensors, so retrieval-only maps just what it returns."""
    tower_out = {name: f"_emb_{head}" for head, name in zip(HEADS, Step.EMBEDDINGS)}
    _step(config, "query_tower", versions["query_tower"], {Step.ITEM_ID: "_item_id"},
          tower_out | ({Step.FINGERPRINT: "_fp_tower"} if full else {}))
    for head in HEADS:
        outputs = {Step.CANDIDATE_ID: f"_ann_id_{head}", Step.FINGERPRINT: f"_fp_ann_{head}"} if full else \
            dict(zip((Step.CANDIDATE_ITEM_ID, Step.CANDIDATE_SCORE), retrieved(head)))
        _step(config, f"ann_{head}", versions[f"ann_{head}"],
              {Step.QUERY: f"_emb_{head}", Step.EXCLUDE_ID: "_item_id", Step.K: "_k"} | _filter_wiring()[2], outputs)


def pinned_version(config: mc.ModelConfig) -> int | None:
    """The one version an ensemble's steps are pinned to; None when they pin none or several."""
    pins = {int(step.model_version) for step in config.ensemble_scheduling.step}
    return pins.pop() if len(pins) == 1 and -1 not in pins else None


def ensemble_config(target: Target, tasks: int, versions: dict[str, int], fields: FieldInputs = ()
                    ) -> mc.ModelConfig:
    """seed ids -> towers -> ANN per head -> reranker per head -> composite scorer per head -> quota merge."""
    config = _ensemble(ENSEMBLE, target, _client_inputs(tasks, fields), merge_outputs(tasks))
    _front(config, versions, fields=fields)
    _towers_and_ann(config, versions)
    for head in HEADS:
        _step(config, f"rerank_{head}", versions[f"rerank_{head}"],
              {Step.QUERY: f"_emb_{head}", Step.CANDIDATE_ID: f"_ann_id_{head}", Step.KEEP: "_keep"},
              {Step.RERANK_ID: f"_rerank_id_{head}", Step.FINGERPRINT: f"_fp_rerank_{head}"})
        _step(config, "composite_scorer", versions["composite_scorer"],
              {Step.ITEM_ID: "_item_id", Step.CANDIDATE_ID: f"_rerank_id_{head}", Step.VALUE_WEIGHTS: "_value_weights"},
              {Step.TASK_PROBS: f"_probs_{head}", Step.SCORE: f"_score_{head}", Step.FINGERPRINT: f"_fp_scorer_{head}"})
    merge_inputs = {Step.ALPHA: "_alpha", Step.TOP_N: "_top_n", Step.FP_TOWER: "_fp_tower"}
    for head, (ids, scores, probs), fingerprints in zip(HEADS, Step.MERGE_HEADS, Step.MERGE_FINGERPRINTS):
        merge_inputs |= {ids: f"_rerank_id_{head}", scores: f"_score_{head}", probs: f"_probs_{head}"}
        merge_inputs |= {fp: f"_fp_{stage}_{head}" for fp, stage in zip(fingerprints, ("ann", "rerank", "scorer"))}
    _step(config, "quota_merge", versions["quota_merge"], merge_inputs,
          {t.name: t.name for t in merge_outputs(tasks)})
    return config


def retrieve_config(target: Target, tasks: int, versions: dict[str, int], fields: FieldInputs = ()
                    ) -> mc.ModelConfig:
    """Retrieval only (TFRS's second signature): each head's ANN candidates, no scoring."""
    outputs = []
    for head in HEADS:
        ids, scores = retrieved(head)
        outputs += [Tensor(ids, "INT64", (-1,)), Tensor(scores, "FP32", (-1,))]
    config = _ensemble(RETRIEVE_ENSEMBLE, target, [SEED, WIDTH, *filter_inputs(fields)], outputs)
    client, filtered, _ = _filter_wiring(fields)
    _step(config, "preprocess", versions["preprocess"], {SEED.name: SEED.name, WIDTH.name: WIDTH.name}
          | client, {Step.ITEM_ID: "_item_id", Step.K: "_k"} | filtered)
    _towers_and_ann(config, versions, full=False)
    return config


def score_config(target: Target, tasks: int, versions: dict[str, int], levels: int = 3) -> mc.ModelConfig:
    """Scoring only: the composite scorer on (seed, given candidate ids)."""
    inputs = [SEED, Tensor(Client.CANDIDATE_ITEM_ID, "INT64", (-1,), True),
              Tensor(Client.VALUE_WEIGHTS, "FP32", (tasks + 1,), True)]
    outputs = [Tensor(Client.TASK_PROBS, "FP32", (-1, tasks)), Tensor(Client.RELEVANCE_PROBS, "FP32", (-1, levels - 1)),
               Tensor(Client.SCORE, "FP32", (-1,))]
    config = _ensemble(SCORE_ENSEMBLE, target, inputs, outputs)
    _step(config, "preprocess", versions["preprocess"],
          {SEED.name: SEED.name, SCORING_SEED.name: SEED.name, Client.VALUE_WEIGHTS: Client.VALUE_WEIGHTS,
           Client.CANDIDATE_ITEM_ID: Client.CANDIDATE_ITEM_ID},
          {Step.ITEM_ID: "_item_id", Step.VALUE_WEIGHTS: "_value_weights", Step.CANDIDATE_ID: "_candidate_id"})
    _step(config, "composite_scorer", versions["composite_scorer"],
          {Step.ITEM_ID: "_item_id", Step.CANDIDATE_ID: "_candidate_id", Step.VALUE_WEIGHTS: "_value_weights"},
          {Step.TASK_PROBS: Client.TASK_PROBS, Step.RELEVANCE_PROBS: Client.RELEVANCE_PROBS, Step.SCORE: Client.SCORE})
    return config


# Set only by the stub supervisor, to force an in-place reload of a model whose stub died (Triton skips a load
# whose config did not change); every model accepts and ignores it.
RESTART_PARAMETER = "widefunnel_restart"


def model_parameters(config: dict, required: set[str], allowed: set[str] = frozenset()) -> dict[str, str]:
    """A served model's ``parameters`` (the JSON config Triton hands a Python model) -> name: string value.
    ValueError naming what is missing and what is unknown, so a bad config fails the load with its reason."""
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items() if k != RESTART_PARAMETER}
    missing, unknown = required - params.keys(), params.keys() - required - allowed
    if missing or unknown:
        raise ValueError(f"parameters missing {sorted(missing)} / unknown {sorted(unknown)}")
    return params


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def from_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def to_json(config: mc.ModelConfig) -> str:
    """The JSON form the repository API's load call takes as a config override."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)
