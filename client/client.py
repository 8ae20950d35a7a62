"""Typed client for the widefunnel ensembles over tritonclient HTTP or gRPC, sync and asyncio.

Both protocols and both clients (sync, asyncio) build every request with the same `Call` (tensors, outputs, how
to decode the answer) and map errors with the same `map_error`, so their answers and errors agree exactly.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from widefunnel import model_configs as mcfg
from widefunnel.merge import Recommendation
from widefunnel.tensor_names import Client, retrieved
from widefunnel.validation import filter_tensors, recommend_tensors

PROTOCOLS = ("http", "grpc")


class WidefunnelError(RuntimeError):
    """A request the server refused. `field` is the client-facing input it names, when it names one."""

    def __init__(self, message: str, status: str | None = None, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


class InvalidRequest(WidefunnelError):
    """The request itself is wrong (HTTP 400 / gRPC INVALID_ARGUMENT): fix the input named by `field`."""


class Unavailable(WidefunnelError):
    """The server or a model is not there (not ready, unloaded, queue full): retry or fail over."""


# The client-facing inputs an error may name (the first named wins); then any field filter's name (a build
# names its own after its item fields: `tensor_names.token_filters`, `range_filters`).
_FIELDS = (Client.SEED_ITEM_ID, Client.ALPHA, Client.TOP_N, Client.VALUE_WEIGHTS, Client.CANDIDATE_ITEM_ID,
           Client.CANDIDATES_PER_HEAD, Client.RERANK_KEEP, Client.EXCLUDE_ITEM_ID)
_FIELD_FILTER = re.compile(r"(?:^|[\s'])((?:include|exclude|min|max)_\w+)(?=[':,])")


def map_error(exc: InferenceServerException) -> WidefunnelError:
    message, status = exc.message() or str(exc), str(exc.status() or "")
    field = next((f for f in _FIELDS if re.search(rf"\b{f}\b", message)), None)
    if field is None and (named := _FIELD_FILTER.search(message)):
        field = named.group(1)
    lowered = status.lower() + " " + message.lower()
    if "400" in status or "invalid" in lowered or "unexpected shape" in lowered or "data-type" in lowered:
        return InvalidRequest(message, status, field)
    if "unavailable" in lowered or "503" in status or "not found" in lowered or "not ready" in lowered:
        return Unavailable(message, status, field)
    return WidefunnelError(message, status, field)


def protocol_module(protocol: str, aio: bool = False):
    """tritonclient's module for a protocol: `http` or `grpc`, sync or asyncio."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "http":
        import tritonclient.http as http
        import tritonclient.http.aio as http_aio

        return http_aio if aio else http
    import tritonclient.grpc as grpc
    import tritonclient.grpc.aio as grpc_aio

    return grpc_aio if aio else grpc


def build_inputs(module, tensors: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, array in tensors.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _decode_strings(array: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])(array)


def decode_recommendation(result) -> Recommendation:
    return Recommendation(
        item_id=result.as_numpy(Client.ITEM_ID), score=result.as_numpy(Client.SCORE),
        source_head=_decode_strings(result.as_numpy(Client.SOURCE_HEAD)), task_probs=result.as_numpy(Client.TASK_PROBS),
        fingerprint=[str(f) for f in _decode_strings(result.as_numpy(Client.FINGERPRINT))[:, 0]],
    )


_OUTPUTS = {
    mcfg.ENSEMBLE: (Client.ITEM_ID, Client.SCORE, Client.SOURCE_HEAD, Client.TASK_PROBS, Client.FINGERPRINT),
    mcfg.RETRIEVE_ENSEMBLE: tuple(name for h in mcfg.HEADS for name in retrieved(h)),
    mcfg.SCORE_ENSEMBLE: (Client.TASK_PROBS, Client.RELEVANCE_PROBS, Client.SCORE),
}

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One ensemble request, protocol- and sync-free: what to send and how to read the answer. The sync and
    asyncio clients only differ in how they await `infer`, so both build their calls here and cannot drift."""

    model: str
    tensors: dict[str, np.ndarray]
    decode: Callable[[Any], T]
    outputs: tuple[str, ...] = ()  # what the call reads; () = every output

    def request(self, module) -> dict[str, Any]:
        """`infer`'s keyword arguments for tritonclient ``module`` (inputs, and the outputs the call reads)."""
        outputs = [module.InferRequestedOutput(n) for n in self.outputs] or None
        return {"model_name": self.model, "inputs": build_inputs(module, self.tensors), "outputs": outputs}


def recommend_call(seeds, alpha=None, top_n=None, value_weights=None, candidates=None, keep=None,
                   **filters) -> Call[Recommendation]:
    tensors = recommend_tensors(seeds, alpha, top_n, value_weights, candidates, keep)
    tensors |= filter_tensors(**filters, batch=len(tensors[Client.SEED_ITEM_ID]))
    return Call(mcfg.ENSEMBLE, tensors, decode_recommendation, _OUTPUTS[mcfg.ENSEMBLE])


def _decode_retrieval(result) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {h: tuple(result.as_numpy(name) for name in retrieved(h)) for h in mcfg.HEADS}


def retrieve_call(seeds, candidates=None, **filters) -> Call[dict[str, tuple[np.ndarray, np.ndarray]]]:
    tensors = recommend_tensors(seeds, candidates=candidates)
    tensors |= filter_tensors(**filters, batch=len(tensors[Client.SEED_ITEM_ID]))
    return Call(mcfg.RETRIEVE_ENSEMBLE, tensors, _decode_retrieval, _OUTPUTS[mcfg.RETRIEVE_ENSEMBLE])


def _decode_scores(result) -> dict[str, np.ndarray]:
    return {n: result.as_numpy(n) for n in _OUTPUTS[mcfg.SCORE_ENSEMBLE]}


def score_call(seeds, candidates, value_weights=None) -> Call[dict[str, np.ndarray]]:
    tensors = recommend_tensors(seeds, value_weights=value_weights)
    tensors[Client.CANDIDATE_ITEM_ID] = np.atleast_2d(np.asarray(candidates, np.int64))
    return Call(mcfg.SCORE_ENSEMBLE, tensors, _decode_scores, _OUTPUTS[mcfg.SCORE_ENSEMBLE])


def raw_call(model: str, tensors: dict[str, np.ndarray]) -> Call[Any]:
    """Any model by name; the answer is tritonclient's result, every output included."""
    return Call(model, tensors, lambda result: result)


def seed_batches(seeds, batch_size: int) -> list[np.ndarray]:
    """`recommend_many`'s batches: at most `batch_size` seeds each (the ensemble's max_batch_size caps it)."""
    seeds = np.asarray(seeds, np.int64).ravel()
    return [seeds[i:i + batch_size] for i in range(0, len(seeds), batch_size)]


class WidefunnelClient:
    """Synchronous client. `url` is host:port of the HTTP or gRPC endpoint, matching `protocol`."""

    def __init__(self, url: str, protocol: str = "http", timeout: float = 60.0):
        self.protocol, self.module = protocol, protocol_module(protocol)
        kwargs: dict[str, Any] = {"network_timeout": timeout, "connection_timeout": timeout} \
            if protocol == "http" else {}
        self.client = self.module.InferenceServerClient(url, **kwargs)
        # gRPC has no client-wide timeout: every call carries one, so no request waits forever
        self._call: dict[str, Any] = {"client_timeout": timeout} if protocol == "grpc" else {}

    def _run(self, call: Call[T], version: str = "") -> T:
        try:
            result = self.client.infer(**call.request(self.module), model_version=version, **self._call)
        except InferenceServerException as exc:
            raise map_error(exc) from None
        return call.decode(result)

    def recommend(self, seeds, alpha=None, top_n=None, value_weights=None, candidates=None, keep=None,
                  **filters) -> Recommendation:
        """``candidates`` per head from the ANN and the rerankers' ``keep`` (the build's defaults when None).
        ``filters`` (inside retrieval, the same for every seed): ``exclude`` ids; ``fields``: filters named after
        the build's item fields, e.g. ``{"include_brand": ["acme"], "min_price": 10.0}``; on MovieLens (its fields
        genre and year) also ``include_genres`` (any of), ``exclude_genres``, ``years`` (an inclusive (min, max))."""
        return self._run(recommend_call(seeds, alpha, top_n, value_weights, candidates, keep, **filters))

    def recommend_many(self, seeds, batch_size: int = 32, **kwargs) -> list[Recommendation]:
        """Many seeds in batches of at most `batch_size` (the ensemble's max_batch_size caps it)."""
        return [self.recommend(batch, **kwargs) for batch in seed_batches(seeds, batch_size)]

    def retrieve(self, seeds, candidates=None, **filters) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Retrieval only: each head's ``candidates`` ANN candidates and scores, unscored (``filters`` as
        ``recommend``)."""
        return self._run(retrieve_call(seeds, candidates, **filters))

    def score(self, seeds, candidates, value_weights=None) -> dict[str, np.ndarray]:
        """Scoring only: the composite scorer on given (seed, candidates)."""
        return self._run(score_call(seeds, candidates, value_weights))

    def infer(self, model: str, tensors: dict[str, np.ndarray], version: str = ""):
        """Any model of the repository, by name (used for per-stage calls)."""
        return self._run(raw_call(model, tensors), version)

    def ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready())
        except Exception:
            return False

    def statistics(self, model: str = "") -> dict:
        if self.protocol == "grpc":
            return self.client.get_inference_statistics(model, as_json=True)
        return self.client.get_inference_statistics(model)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> WidefunnelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWidefunnelClient:
    """asyncio client with every call of WidefunnelClient, same parameters, same answers, same errors (both
    build their requests with the `*_call` functions above)."""

    def __init__(self, url: str, protocol: str = "http", timeout: float = 60.0):
        self.protocol, self.module = protocol, protocol_module(protocol, aio=True)
        # http.aio's conn_timeout bounds each whole request; gRPC takes a deadline per call, as in the sync client
        kwargs: dict[str, Any] = {"conn_timeout": timeout} if protocol == "http" else {}
        self.client = self.module.InferenceServerClient(url, **kwargs)
        self._call: dict[str, Any] = {"client_timeout": timeout} if protocol == "grpc" else {}

    async def _run(self, call: Call[T], version: str = "") -> T:
        try:
            result = await self.client.infer(**call.request(self.module), model_version=version, **self._call)
        except InferenceServerException as exc:
            raise map_error(exc) from None
        return call.decode(result)

    async def recommend(self, seeds, alpha=None, top_n=None, value_weights=None, candidates=None, keep=None,
                        **filters) -> Recommendation:
        """As `WidefunnelClient.recommend`."""
        return await self._run(recommend_call(seeds, alpha, top_n, value_weights, candidates, keep, **filters))

    async def recommend_many(self, seeds, batch_size: int = 32, **kwargs) -> list[Recommendation]:
        """As `WidefunnelClient.recommend_many`, the batches in flight together."""
        return list(await asyncio.gather(*(self.recommend(batch, **kwargs)
                                           for batch in seed_batches(seeds, batch_size))))

    async def retrieve(self, seeds, candidates=None, **filters) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """As `WidefunnelClient.retrieve`."""
        return await self._run(retrieve_call(seeds, candidates, **filters))

    async def score(self, seeds, candidates, value_weights=None) -> dict[str, np.ndarray]:
        """As `WidefunnelClient.score`."""
        return await self._run(score_call(seeds, candidates, value_weights))

    async def infer(self, model: str, tensors: dict[str, np.ndarray], version: str = ""):
        """As `WidefunnelClient.infer`."""
        return await self._run(raw_call(model, tensors), version)

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except Exception:
            return False

    async def statistics(self, model: str = "") -> dict:
        if self.protocol == "grpc":
            return await self.client.get_inference_statistics(model, as_json=True)
        return await self.client.get_inference_statistics(model)

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncWidefunnelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
