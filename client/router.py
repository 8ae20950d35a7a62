"""The sharded ANN router's fan-out, apart from its Triton glue (`plugins/ann_router/model.py`).

Each request goes, unchanged, to every shard's `widefunnel_ann` model over tritonclient gRPC asyncio (one event
loop in a thread; every request of a batch and every shard concurrently); the shards' top-k' lists are merged
exactly (`sharding.merge_topk`), so ids and scores equal the single-server answer. FINGERPRINT must agree across
shards. A shard that fails raises `ShardFailure` naming it, or, with `allow_partial`, the merge of the shards
that answered comes back with COVERAGE < 1. A request the shards find invalid raises `InvalidRequest`.
Outcomes per shard are reported through ``record(kind, shard, value)`` so the glue can count them in Triton's
metrics from its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from widefunnel.sharding import RouterSettings, merge_topk
from widefunnel.tensor_names import Step

REASONS = ("unavailable", "timeout", "not_found", "internal")
_MAX_MESSAGE = 2**31 - 1
_INVALID = ("INVALID_ARGUMENT", "400")


class ShardFailure(Exception):
    def __init__(self, shard: int, url: str, reason: str, message: str):
        super().__init__(message)
        self.shard, self.url, self.reason = shard, url, reason


class InvalidRequest(Exception):
    pass


def failure_reason(exc: BaseException) -> str:
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


def external_of(merged: np.ndarray, internal: list[np.ndarray], external: list[np.ndarray]) -> np.ndarray:
    """The merged internal ids in the catalogue's ids, from the shards' own (CANDIDATE_ID, CANDIDATE_ITEM_ID)
    pairs: every merged id came from some shard's list, so the router needs no id table. Pads (< 0) stay."""
    pairs_in = np.concatenate([a.ravel() for a in internal])
    pairs_out = np.concatenate([a.ravel() for a in external])
    order = np.argsort(pairs_in, kind="stable")
    pairs_in, pairs_out = pairs_in[order], pairs_out[order]
    pos = np.minimum(np.searchsorted(pairs_in, merged), max(len(pairs_in) - 1, 0))
    return np.where(merged < 0, merged, pairs_out[pos] if len(pairs_out) else merged)


def combine(answers: list, shards: int, k: int, want_emb: bool, allow_partial: bool,
            want_item_ids: bool = False) -> tuple[dict, list]:
    """The shards' answers (tuples of CANDIDATE_ID, CANDIDATE_SCORE, FINGERPRINT[, CANDIDATE_EMB]
    [, CANDIDATE_ITEM_ID], or the exception each raised) -> (the router's outputs, the shards that failed).
    Pure: tested without a server."""
    invalid = [a for a in answers if isinstance(a, InvalidRequest)]
    if invalid:
        raise invalid[0]
    other = [a for a in answers if isinstance(a, BaseException) and not isinstance(a, ShardFailure)]
    if other:
        raise other[0]
    failed = [a for a in answers if isinstance(a, ShardFailure)]
    ok = [a for a in answers if not isinstance(a, BaseException)]
    if failed and not (allow_partial and ok):
        raise failed[0] if len(failed) == 1 else ShardFailure(-1, "", "unavailable", "; ".join(map(str, failed)))
    fingerprints = np.concatenate([a[2] for a in ok], axis=1)
    if (fingerprints != fingerprints[:, :1]).any():
        raise RuntimeError(f"shards answered from different builds: {np.unique(fingerprints).tolist()}")
    merged = merge_topk([a[0] for a in ok], [a[1] for a in ok], k, [a[3] for a in ok] if want_emb else None)
    batch = merged.ids.shape[0]
    out = {Step.CANDIDATE_ID: merged.ids, Step.CANDIDATE_SCORE: merged.scores, Step.FINGERPRINT: ok[0][2],
           Step.COVERAGE: np.full((batch, 1), len(ok) / shards, np.float32)}
    if want_emb:
        out[Step.CANDIDATE_EMB] = merged.embeddings.astype(np.float32)
    if want_item_ids:
        out[Step.CANDIDATE_ITEM_ID] = external_of(merged.ids, [a[0] for a in ok], [a[-1] for a in ok])
    return out, failed


class ShardRouter:
    """Clients for every shard on an event loop of its own; `route_batch` is called from Triton's thread."""

    def __init__(self, settings: RouterSettings, version: str, record: Callable[[str, int, object], None]):
        self.settings, self.version, self.record = settings, version, record
        self.shards = len(settings.shard_urls)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="widefunnel-router", daemon=True)
        self.thread.start()
        self.clients = self._run(self._connect())

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> list:
        options = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE),
                   # a restarted shard is found again within a second, not after gRPC's default 2-minute backoff
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.lb_policy_name", self.settings.lb_policy),
                   ("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000)]
        return [grpcclient.InferenceServerClient(url, channel_args=options) for url in self.settings.shard_urls]

    def wait_ready(self) -> list[str]:
        """Shards whose model version is not ready after ``ready_timeout_s`` (empty: all are)."""
        return self._run(self._wait_ready())

    async def _wait_ready(self) -> list[str]:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        model = self.settings.shard_model
        while True:
            missing = []
            for s, (url, client) in enumerate(zip(self.settings.shard_urls, self.clients)):
                try:
                    if not await client.is_model_ready(model, self.version, client_timeout=2.0):
                        missing.append(f"shard {s} ({url}): {model} version {self.version} not ready")
                except InferenceServerException as exc:
                    missing.append(f"shard {s} ({url}): {failure_reason(exc)} ({exc.message()})")
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.25)

    def _failure(self, s: int, reason: str, message: str) -> ShardFailure:
        url = self.settings.shard_urls[s]
        return ShardFailure(s, url, reason, f"shard {s} of {self.shards} ({url}, {self.settings.shard_model} "
                                            f"version {self.version}) {reason}: {message}")

    async def _call_shard(self, s: int, tensors: dict[str, np.ndarray], outputs: list[str]) -> tuple:
        inputs = []
        for name, array in tensors.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs]
        start = time.monotonic_ns()
        try:
            result = await self.clients[s].infer(self.settings.shard_model, inputs, model_version=self.version,
                                                 outputs=wanted, client_timeout=self.settings.timeout_s)
            return tuple(result.as_numpy(n) for n in outputs)
        except InferenceServerException as exc:
            if any(code in str(exc.status() or "") for code in _INVALID):
                raise InvalidRequest(exc.message() or str(exc)) from None
            raise self._failure(s, failure_reason(exc), exc.message() or str(exc)) from None
        except Exception as exc:  # transport errors that tritonclient does not wrap
            raise self._failure(s, failure_reason(exc), f"{type(exc).__name__}: {exc}") from None
        finally:
            self.record("duration", s, (time.monotonic_ns() - start) // 1000)

    async def _route(self, tensors: dict[str, np.ndarray], want_emb: bool, want_item_ids: bool = False
                     ) -> dict[str, np.ndarray]:
        outputs = [Step.CANDIDATE_ID, Step.CANDIDATE_SCORE, Step.FINGERPRINT] \
            + ([Step.CANDIDATE_EMB] if want_emb else []) + ([Step.CANDIDATE_ITEM_ID] if want_item_ids else [])
        answers = await asyncio.gather(*(self._call_shard(s, tensors, outputs) for s in range(self.shards)),
                                       return_exceptions=True)
        if not any(isinstance(a, InvalidRequest) for a in answers):
            for s, answer in enumerate(answers):
                failure = isinstance(answer, ShardFailure)
                self.record("failure" if failure else "success", s, answer.reason if failure else 0)
        k = int(tensors[Step.K].ravel()[0]) if Step.K in tensors else self.settings.k
        out, failed = combine(list(answers), self.shards, k, want_emb, self.settings.allow_partial, want_item_ids)
        if failed:
            self.record("partial", 0, 0)
        return out

    def route_batch(self, batch: list[tuple]) -> list:
        """(tensors, wants embeddings[, wants catalogue ids]) per request -> outputs dict or the exception."""
        async def all_of():
            return await asyncio.gather(*(self._route(*request) for request in batch), return_exceptions=True)

        return self._run(all_of())

    def close(self) -> None:
        async def close_clients():
            for client in self.clients:
                await client.close()

        with contextlib.suppress(Exception):
            self._run(close_clients(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
