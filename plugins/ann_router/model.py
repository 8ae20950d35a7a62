"""Python-backend model: the sharded ANN router, a drop-in for `ann_<head>` (same inputs and outputs).

The fan-out and the exact merge are `widefunnel.client.router.ShardRouter` (every shard's `widefunnel_ann` over
tritonclient gRPC asyncio; ids and scores equal the single-server answer); this file is its Triton glue:
parameters, per-shard metrics, responses.

Versions: router version v asks every shard for version v of its model, and loads only when every shard
reports version v ready; so one response never mixes builds, and loading the router's new version is the
switch. FINGERPRINT must agree across shards (else the request is refused), and is returned.

A shard that fails (down, timeout, version missing) fails the request with UNAVAILABLE naming the shard, or,
with `allow_partial: true`, gives the merge of the shards that answered and `COVERAGE` < 1 (the fraction of
shards that answered). A request the shards find invalid stays INVALID_ARG. Never a silent partial.
"""

from __future__ import annotations

import collections
import json

import widefunnel_site  # noqa: F401  (first: makes `widefunnel` importable in the stub)
import triton_python_backend_utils as pb_utils

from widefunnel.client.router import REASONS, InvalidRequest, ShardFailure, ShardRouter
from widefunnel.model_configs import FILTER_STEP_TENSORS, model_parameters
from widefunnel.plugins.stub import StepUnavailable, failure_response, request_inputs
from widefunnel.sharding import ROUTER_OPTIONAL, ROUTER_REQUIRED, parse_router_parameters
from widefunnel.tensor_names import Step
from widefunnel.validation import RequestError

# every shard gets the same filters (its item fields table is keyed by id, so it maps them to its own rows)
OPTIONAL_INPUTS = (Step.EXCLUDE_ID, Step.K, Step.NPROBE, *(t.name for t in FILTER_STEP_TENSORS))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name, self.version = config["name"], args["model_version"]
        try:
            params = model_parameters(config, set(), ROUTER_REQUIRED | ROUTER_OPTIONAL)
            settings = parse_router_parameters(params)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        self.shards = len(settings.shard_urls)
        self.events: collections.deque = collections.deque()  # metric events from the event loop thread
        self.router = ShardRouter(settings, self.version, lambda *event: self.events.append(event))
        not_ready = self.router.wait_ready()
        if not_ready:
            self.router.close()
            raise pb_utils.TritonModelException(
                f"{self.name} version {self.version}: not every shard has {settings.shard_model} version "
                f"{self.version} ready after {settings.ready_timeout_s:.0f}s: " + "; ".join(not_ready))
        self._metrics()

    def _metrics(self) -> None:
        """Per-shard counters beside Triton's own per-model ones (same naming: counters in us)."""
        labels = {"model": self.name, "version": self.version}
        self.m_success = pb_utils.MetricFamily(
            "widefunnel_router_shard_success", "Shard calls that succeeded", pb_utils.MetricFamily.COUNTER)
        self.m_failure = pb_utils.MetricFamily(
            "widefunnel_router_shard_failure", "Shard calls that failed, by reason", pb_utils.MetricFamily.COUNTER)
        self.m_duration = pb_utils.MetricFamily(
            "widefunnel_router_shard_duration_us", "Cumulative shard call time (us)", pb_utils.MetricFamily.COUNTER)
        self.m_partial = pb_utils.MetricFamily(
            "widefunnel_router_partial", "Responses served with COVERAGE < 1", pb_utils.MetricFamily.COUNTER)
        self.success = [self.m_success.Metric(labels | {"shard": str(s)}) for s in range(self.shards)]
        self.duration = [self.m_duration.Metric(labels | {"shard": str(s)}) for s in range(self.shards)]
        self.failure = {(s, r): self.m_failure.Metric(labels | {"shard": str(s), "reason": r})
                        for s in range(self.shards) for r in REASONS}  # zeros from the start, not absent series
        self.partial = self.m_partial.Metric(labels)

    def _flush_metrics(self) -> None:
        """Apply the events the event loop queued (pb_utils is only ever called from the execute thread)."""
        while self.events:
            kind, shard, value = self.events.popleft()
            if kind == "duration":
                self.duration[shard].increment(value)
            elif kind == "success":
                self.success[shard].increment(1)
            elif kind == "partial":
                self.partial.increment(1)
            else:
                self.failure[(shard, value)].increment(1)

    @staticmethod
    def _tensors(request) -> dict:
        inputs = request_inputs(request)
        tensors = {Step.QUERY: inputs[Step.QUERY].as_numpy()}
        for name in OPTIONAL_INPUTS:
            if name in inputs:
                tensors[name] = inputs[name].as_numpy()
        return tensors

    def _response(self, result):
        """A merged result, or the shards' failure through the one error mapping every model uses: a request the
        shards refused stays INVALID_ARG (their message names the model), a failed shard is UNAVAILABLE."""
        if isinstance(result, InvalidRequest):
            return failure_response(self.name, RequestError(str(result)))
        if isinstance(result, ShardFailure):
            return failure_response(self.name, StepUnavailable(str(result)))
        if isinstance(result, BaseException):
            return failure_response(self.name, result)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in result.items()])

    def execute(self, requests):
        # pb_utils objects are touched on this thread only; the event loop sees plain numpy arrays.
        wanted = [r.requested_output_names() for r in requests]
        batch = [(self._tensors(r), Step.CANDIDATE_EMB in w, Step.CANDIDATE_ITEM_ID in w)
                 for r, w in zip(requests, wanted)]
        results = self.router.route_batch(batch)
        self._flush_metrics()
        return [self._response(r) for r in results]

    def finalize(self) -> None:
        self.router.close()
