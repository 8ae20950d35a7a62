"""Typed client for the widefunnel ensembles over tritonclient HTTP or gRPC, sync and asyncio.

Both protocols send the same tensors and decode the same outputs, so results agree exactly.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from widefunnel import model_configs as mcfg
from widefunnel.merge import Recommendation
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


# The client-facing inputs an error may name (the first named wins).
_FIELDS = ("seed_item_id", "alpha", "top_n", "value_weights", "candidate_item_id", mcfg.WIDTH.name, mcfg.KEEP.name,
           *(t.name for t in mcfg.FILTER_INPUTS))


def map_error(exc: InferenceServerException) -> WidefunnelError:
    message, status = exc.message() or str(exc), str(exc.status() or "")
    field = next((f for f in _FIELDS if re.search(rf"\b{f}\b", message)), None)
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
        item_id=result.as_numpy("item_id"), score=result.as_numpy("score"),
        source_head=_decode_strings(result.as_numpy("source_head")), task_probs=result.as_numpy("task_probs"),
        fingerprint=[str(f) for f in _decode_strings(result.as_numpy("fingerprint"))[:, 0]],
    )


_OUTPUTS = {
    mcfg.ENSEMBLE: ("item_id", "score", "source_head", "task_probs", "fingerprint"),
    mcfg.RETRIEVE_ENSEMBLE: tuple(f"{h}_{s}" for h in mcfg.HEADS for s in ("item_id", "score")),
    mcfg.SCORE_ENSEMBLE: ("task_probs", "relevance_probs", "score"),
}


class WidefunnelClient:
    """Synchronous client. `url` is host:port of the HTTP or gRPC endpoint, matching `protocol`."""

    def __init__(self, url: str, protocol: str = "http", timeout: float = 60.0):
        self.protocol, self.module = protocol, protocol_module(protocol)
        kwargs: dict[str, Any] = {"network_timeout": timeout, "connection_timeout": timeout} \
            if protocol == "http" else {}
        self.client = self.module.InferenceServerClient(url, **kwargs)
        # gRPC has no client-wide timeout: every call carries one, so no request waits forever
        self._call: dict[str, Any] = {"client_timeout": timeout} if protocol == "grpc" else {}

    def _infer(self, model: str, tensors: dict[str, np.ndarray], version: str = ""):
        outputs = [self.module.InferRequestedOutput(n) for n in _OUTPUTS.get(model, ())] or None
        try:
            return self.client.infer(model, build_inputs(self.module, tensors), model_version=version,
                                     outputs=outputs, **self._call)
        except InferenceServerException as exc:
            raise map_error(exc) from None

    def recommend(self, seeds, alpha=None, top_n=None, value_weights=None, candidates=None, keep=None,
                  **filters) -> Recommendation:
        """``candidates`` per head from the ANN and the rerankers' ``keep`` (the build's defaults when None).
        ``filters`` (inside retrieval, the same for every seed): ``exclude`` ids, ``include_genres`` (any of),
        ``exclude_genres``, ``years`` (an inclusive (min, max))."""
        tensors = recommend_tensors(seeds, alpha, top_n, value_weights, candidates, keep)
        tensors |= filter_tensors(**filters, batch=len(tensors["seed_item_id"]))
        return decode_recommendation(self._infer(mcfg.ENSEMBLE, tensors))

    def recommend_many(self, seeds, batch_size: int = 32, **kwargs) -> list[Recommendation]:
        """Many seeds in batches of at most `batch_size` (the ensemble's max_batch_size caps it)."""
        seeds = np.asarray(seeds, np.int64).ravel()
        return [self.recommend(seeds[i:i + batch_size], **kwargs) for i in range(0, len(seeds), batch_size)]

    def retrieve(self, seeds, candidates=None, **filters) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Retrieval only: each head's ``candidates`` ANN candidates and scores, unscored (``filters`` as
        ``recommend``)."""
        tensors = recommend_tensors(seeds, candidates=candidates)
        result = self._infer(mcfg.RETRIEVE_ENSEMBLE, tensors | filter_tensors(**filters,
                                                                              batch=len(tensors["seed_item_id"])))
        return {h: (result.as_numpy(f"{h}_item_id"), result.as_numpy(f"{h}_score")) for h in mcfg.HEADS}

    def score(self, seeds, candidates, value_weights=None) -> dict[str, np.ndarray]:
        """Scoring only: the composite scorer on given (seed, candidates)."""
        tensors = recommend_tensors(seeds, value_weights=value_weights)
        tensors["candidate_item_id"] = np.atleast_2d(np.asarray(candidates, np.int64))
        result = self._infer(mcfg.SCORE_ENSEMBLE, tensors)
        return {n: result.as_numpy(n) for n in _OUTPUTS[mcfg.SCORE_ENSEMBLE]}

    def infer(self, model: str, tensors: dict[str, np.ndarray], version: str = ""):
        """Any model of the repository, by name (used for per-stage calls)."""
        try:
            return self.client.infer(model, build_inputs(self.module, tensors), model_version=version, **self._call)
        except InferenceServerException as exc:
            raise map_error(exc) from None

    def ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready())
        except Exception:
            return False

    def statistics(self, model: str = "") -> dict:
        stats = self.client.get_inference_statistics(model, as_json=True) if self.protocol == "grpc" \
            else self.client.get_inference_statistics(model)
        return stats

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> WidefunnelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWidefunnelClient:
    """asyncio client with the same calls as WidefunnelClient (recommend, retrieve, ready)."""

    def __init__(self, url: str, protocol: str = "http"):
        self.protocol, self.module = protocol, protocol_module(protocol, aio=True)
        self._sync_module = protocol_module(protocol)
        self.client = self.module.InferenceServerClient(url)

    async def recommend(self, seeds, alpha=None, top_n=None, value_weights=None, candidates=None, keep=None
                        ) -> Recommendation:
        tensors = recommend_tensors(seeds, alpha, top_n, value_weights, candidates, keep)
        outputs = [self.module.InferRequestedOutput(n) for n in _OUTPUTS[mcfg.ENSEMBLE]]
        try:
            result = await self.client.infer(mcfg.ENSEMBLE, build_inputs(self.module, tensors), outputs=outputs)
        except InferenceServerException as exc:
            raise map_error(exc) from None
        return decode_recommendation(result)

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.close()
