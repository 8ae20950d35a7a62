"""Python-backend model: the sharded ANN router, a drop-in for `ann_<head>` (same inputs and outputs).

Each request is sent, unchanged, to every shard's `widefunnel_ann` model over tritonclient gRPC asyncio
(one event loop in a thread of this instance; every request of a batch and every shard concurrently); the
shards' top-k' lists are merged exactly (`widefunnel.sharding.merge_topk`), so ids and scores equal the
single-server answer.

Versions: router version v asks every shard for version v of its model, and loads only when every shard
reports version v ready; so one response never mixes builds, and loading the router's new version is the
switch. FINGERPRINT must agree across shards (else the request is refused), and is returned.

A shard that fails (down, timeout, version missing) fails the request with UNAVAILABLE naming the shard, or,
with `allow_partial: true`, gives the merge of the shards that answered and `COVERAGE` < 1 (the fraction of
shards that answered). A request the shards find invalid stays INVALID_ARG. Never a silent partial.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time

import widefunnel_site  # noqa: F401  (first: makes `widefunnel` importable in the stub)
import numpy as np
import triton_python_backend_utils as pb_utils
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from widefunnel.model_configs import model_parameters
from widefunnel.sharding import ROUTER_OPTIONAL, ROUTER_REQUIRED, merge_topk, parse_router_parameters

OPTIONAL_INPUTS = ("EXCLUDE_ID", "K", "NPROBE")
REASONS = ("unavailable", "timeout", "not_found", "internal")
_MAX_MESSAGE = 2**31 - 1
_INVALID = ("INVALID_ARGUMENT", "400")


class ShardFailure(Exception):
    def __init__(self, shard: int, url: str, reason: str, message: str):
        super().__init__(message)
        self.shard, self.url, self.reason = shard, url, reason


class InvalidRequest(Exception):
    pass


def _reason(exc: Exception) -> str:
    """A short label for metrics and messages: unavailable | timeout | not_found | internal."""
    status = str(exc.status() if isinstance(exc, InferenceServerException) else "") + " " + str(exc)
    lowered = status.lower()
    if "deadline" in lowered or isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if "unavailable" in lowered or "connect" in lowered:
        return "unavailable"
    if "not_found" in lowered or "not found" in lowered or "unknown model" in lowered:
        return "not_found"
    return "internal"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name, self.version = config["name"], args["model_version"]
        try:
            params = model_parameters(config, set(), ROUTER_REQUIRED | ROUTER_OPTIONAL)
            self.settings = parse_router_parameters(params)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        self.shards = len(self.settings.shard_urls)
        self.events: collections.deque = collections.deque()  # metric events from the event loop thread
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"{self.name}-router", daemon=True)
        self.thread.start()
        self.clients = self._run(self._connect())
        not_ready = self._run(self._wait_ready())
        if not_ready:
            self._shutdown()
            raise pb_utils.TritonModelException(
                f"{self.name} version {self.version}: not every shard has {self.settings.shard_model} version "
                f"{self.version} ready after {self.settings.ready_timeout_s:.0f}s: " + "; ".join(not_ready))
        self._metrics()

    # ----------------------------------------------------------------------------------------------- plumbing
    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> list:
        options = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE),
                   # a restarted shard is found again within a second, not after gRPC's default 2-minute backoff
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.lb_policy_name", self.settings.lb_policy),
                   ("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000)]
        return [grpcclient.InferenceServerClient(url, channel_args=options) for url in self.settings.shard_urls]

    async def _wait_ready(self) -> list[str]:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        model = self.settings.shard_model
        while True:
            missing = []
            for s, (url, client) in enumerate(zip(self.settings.shard_urls, self.clients)):
                try:
                    ready = await client.is_model_ready(model, self.version, client_timeout=2.0)
                    if not ready:
                        missing.append(f"shard {s} ({url}): {model} version {self.version} not ready")
                except InferenceServerException as exc:
                    missing.append(f"shard {s} ({url}): {_reason(exc)} ({exc.message()})")
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.25)

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

    # ------------------------------------------------------------------------------------------------ fan-out
    async def _call_shard(self, s: int, tensors: dict[str, np.ndarray], outputs: list[str]) -> tuple:
        inputs = []
        for name, array in tensors.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs]
        url = self.settings.shard_urls[s]
        start = time.monotonic_ns()
        try:
            result = await self.clients[s].infer(self.settings.shard_model, inputs, model_version=self.version,
                                                 outputs=wanted, client_timeout=self.settings.timeout_s)
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            if any(code in status for code in _INVALID):
                raise InvalidRequest(exc.message() or str(exc)) from None
            raise ShardFailure(s, url, _reason(exc), exc.message() or str(exc)) from None
        except Exception as exc:  # transport errors that tritonclient does not wrap
            raise ShardFailure(s, url, _reason(exc), f"{type(exc).__name__}: {exc}") from None
        finally:
            self.events.append(("duration", s, (time.monotonic_ns() - start) // 1000))
        return tuple(result.as_numpy(n) for n in outputs)

    async def _route(self, tensors: dict[str, np.ndarray], want_emb: bool) -> dict[str, np.ndarray]:
        outputs = ["CANDIDATE_ID", "CANDIDATE_SCORE", "FINGERPRINT"] + (["CANDIDATE_EMB"] if want_emb else [])
        answers = await asyncio.gather(*(self._call_shard(s, tensors, outputs) for s in range(self.shards)),
                                       return_exceptions=True)
        invalid = [a for a in answers if isinstance(a, InvalidRequest)]
        if invalid:
            raise invalid[0]
        failed = [a for a in answers if isinstance(a, ShardFailure)]
        other = [a for a in answers if isinstance(a, BaseException) and not isinstance(a, ShardFailure)]
        if other:
            raise other[0]
        for s, answer in enumerate(answers):
            failure = isinstance(answer, ShardFailure)
            self.events.append(("failure" if failure else "success", s, answer.reason if failure else 0))
        ok = [a for a in answers if not isinstance(a, BaseException)]
        if failed and not (self.settings.allow_partial and ok):
            raise failed[0] if len(failed) == 1 else ShardFailure(
                -1, "", "unavailable", "; ".join(self._describe(f) for f in failed))
        fingerprints = np.concatenate([a[2] for a in ok], axis=1)
        if (fingerprints != fingerprints[:, :1]).any():
            raise RuntimeError(f"shards answered from different builds: {np.unique(fingerprints).tolist()}")
        k = int(tensors["K"].ravel()[0]) if "K" in tensors else self.settings.k
        merged = merge_topk([a[0] for a in ok], [a[1] for a in ok], k,
                            [a[3] for a in ok] if want_emb else None)
        batch = merged.ids.shape[0]
        out = {"CANDIDATE_ID": merged.ids, "CANDIDATE_SCORE": merged.scores, "FINGERPRINT": ok[0][2],
               "COVERAGE": np.full((batch, 1), len(ok) / self.shards, np.float32)}
        if want_emb:
            out["CANDIDATE_EMB"] = merged.embeddings.astype(np.float32)
        if failed:
            self.events.append(("partial", 0, 0))
        return out

    def _describe(self, failure: ShardFailure) -> str:
        return (f"shard {failure.shard} of {self.shards} ({failure.url}, {self.settings.shard_model} "
                f"version {self.version}) {failure.reason}: {failure}")

    async def _route_all(self, batch: list[tuple[dict[str, np.ndarray], bool]]) -> list:
        return await asyncio.gather(*(self._route(t, e) for t, e in batch), return_exceptions=True)

    # -------------------------------------------------------------------------------------------------- Triton
    @staticmethod
    def _tensors(request) -> dict[str, np.ndarray]:
        tensors = {"QUERY": pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()}
        for name in OPTIONAL_INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                tensors[name] = tensor.as_numpy()
        return tensors

    def _response(self, result):
        if isinstance(result, InvalidRequest):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(  # the shards' message names the model
                str(result), pb_utils.TritonError.INVALID_ARG))
        if isinstance(result, ShardFailure):
            text = self._describe(result) if result.shard >= 0 else str(result)
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"{self.name}: UNAVAILABLE: {text}", pb_utils.TritonError.UNAVAILABLE))
        if isinstance(result, BaseException):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"{self.name}: {type(result).__name__}: {result}", pb_utils.TritonError.INTERNAL))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in result.items()])

    def execute(self, requests):
        # pb_utils objects are touched on this thread only; the event loop sees plain numpy arrays.
        batch = [(self._tensors(r), "CANDIDATE_EMB" in r.requested_output_names()) for r in requests]
        results = self._run(self._route_all(batch))
        self._flush_metrics()
        return [self._response(r) for r in results]

    def _shutdown(self) -> None:
        async def close():
            for client in getattr(self, "clients", []):
                await client.close()

        with contextlib.suppress(Exception):
            self._run(close(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def finalize(self) -> None:
        self._shutdown()
