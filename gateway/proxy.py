"""The gateway in front of tritonserver: an HTTP proxy (aiohttp) and a gRPC proxy (grpc.aio) in one process.

Clients reach the gateway; tritonserver listens on loopback only. Each request is routed (only the endpoints
and model names this repository serves), checked (`checks`) against the model it names (`models`), and what
is forwarded is the gateway's own encoding of what it checked: HTTP JSON serialized again (binary tensors
unchanged), gRPC messages decoded and encoded again, unknown fields dropped. Of the client's headers and
metadata only the content type and the admin key travel on (so the admin key still reaches Triton's own
restriction). What the server answers comes back unchanged. A refusal answers the way Triton does
(HTTP: status + `{"error": ...}`; gRPC: INVALID_ARGUMENT / RESOURCE_EXHAUSTED / NOT_FOUND with the message).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from tritonclient.grpc import service_pb2

from widefunnel.gateway import upstream as to_triton
from widefunnel.gateway.checks import (
    Limits,
    Refusal,
    canonical_json,
    check_grpc_infer,
    check_http_infer,
    check_model_name,
    inflate,
    parse_json,
    route,
)
from widefunnel.gateway.models import ModelAllowlist
from widefunnel.security import ADMIN_HEADER, GRPC_ADMIN_HEADER

log = logging.getLogger(__name__)

_INFER_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(/versions/[^/]+)?/infer$")
# The client headers that travel on (the gateway frames the forwarded request itself; the body it forwards is
# uncompressed JSON of its own); everything else stays at the gateway.
_PASS_REQUEST = {"content-type", "accept-encoding", ADMIN_HEADER}
_PASS_METADATA = {GRPC_ADMIN_HEADER}
_PASS_RESPONSE = {"content-type", "content-encoding", "inference-header-content-length"}
_SERVICE = "/inference.GRPCInferenceService/"
_GRPC_STATUS = {413: grpc.StatusCode.RESOURCE_EXHAUSTED, 404: grpc.StatusCode.NOT_FOUND,
                405: grpc.StatusCode.UNIMPLEMENTED}
UNKNOWN_MODEL = "_unknown"  # the metric label of requests naming no model of the repository (labels stay bounded)
# gRPC methods -> the request field naming a model ("" = all models, where the method allows it)
_MODEL_FIELDS = {"ModelInfer": "model_name", "ModelReady": "name", "ModelMetadata": "name", "ModelConfig": "name",
                 "ModelStatistics": "name", "RepositoryModelLoad": "model_name",
                 "RepositoryModelUnload": "model_name", "TraceSetting": "model_name"}
_ALL_MODELS_WHEN_EMPTY = frozenset({"ModelStatistics", "TraceSetting"})
_SERVICE_METHODS = {m.name: m for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
# HTTP statuses as the gRPC code names, so one metric label means the same on both protocols.
_HTTP_CODES = {200: "OK", 400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 499: "CANCELLED", 500: "INTERNAL",
               503: "UNAVAILABLE"}


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}), content_type="application/json")


class GatewayMetrics:
    """What clients saw, counted once per request: Triton 2.51 counts a request a Python step refuses as a
    success of that step (and the ensemble's failure twice), so these are the series to alert on."""

    def __init__(self) -> None:
        disable_created_metrics()  # counters only: no `_created` series beside each
        self.registry = CollectorRegistry()
        self.requests = Counter("widefunnel_requests", "Inference requests answered, by model, protocol and "
                                "outcome (gRPC code names; HTTP statuses mapped to them)",
                                ["model", "protocol", "code"], registry=self.registry)
        self.refused = Counter("widefunnel_gateway_refusals", "Inference requests the gateway refused before "
                               "they reached tritonserver (also counted in widefunnel_requests_total)",
                               ["model", "protocol"], registry=self.registry)

    def count(self, model: str, protocol: str, code: str, refused: bool = False) -> None:
        self.requests.labels(model, protocol, code).inc()
        if refused:
            self.refused.labels(model, protocol).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)


def _message_class(method: str):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(_SERVICE_METHODS[method].input_type)


def canonical_load_parameters(body: dict, limits: Limits) -> None:
    """A repository load's `config` override is JSON inside JSON: tritonserver parses it too, so it is checked
    and serialized again like the body around it."""
    parameters = body.get("parameters") if isinstance(body, dict) else None
    if isinstance(parameters, dict) and isinstance(parameters.get("config"), str):
        parameters["config"] = canonical_json(parse_json(parameters["config"].encode("utf-8", "surrogatepass"),
                                                         "parameters.config", limits)).decode("utf-8")


class HttpProxy:
    def __init__(self, upstream: str, limits: Limits, metrics: GatewayMetrics, models: ModelAllowlist):
        self.upstream, self.limits, self.metrics, self.models = f"http://{upstream}", limits, metrics, models
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app) -> None:
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def _close(self, _app) -> None:
        if self.session is not None:
            await self.session.close()

    def check(self, request: web.Request, body: bytes, infer: bool, model: str | None
              ) -> tuple[bytes, dict[str, str]]:
        """(the body to forward, the framing headers it needs)."""
        body = inflate(body, request.headers.get("Content-Encoding"), self.limits.max_body_bytes)
        if infer:
            forwarded, header_length = check_http_infer(body, request.headers.get("Inference-Header-Content-Length"),
                                                        self.limits, self.models.get(model))
            return forwarded, {} if header_length is None else {"Inference-Header-Content-Length": header_length}
        if not body:
            return b"", {}
        # repository loads, shared-memory registration, log and trace settings: JSON that Triton parses too
        value = parse_json(body, "request body", self.limits)
        canonical_load_parameters(value, self.limits)
        return canonical_json(value), {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            target = route(request.method, request.path, self.models.names())
        except Refusal as refusal:
            if _INFER_PATH.match(request.path):
                self.metrics.count(UNKNOWN_MODEL, "http", _HTTP_CODES.get(refusal.status, "INVALID_ARGUMENT"), True)
            return _error(refusal.status, str(refusal))
        infer = target.kind == "infer"
        response, refused = await self._answer(request, infer, target.model)
        if infer:
            code = _HTTP_CODES.get(response.status, str(response.status))
            self.metrics.count(target.model, "http", code, refused)
        return response

    async def _answer(self, request: web.Request, infer: bool, model: str | None) -> tuple[web.Response, bool]:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body: over {self.limits.max_body_bytes} bytes"), True
        try:
            body, framing = self.check(request, body, infer, model)
        except Refusal as refusal:
            return _error(refusal.status, str(refusal)), True
        # the gateway key (tritonserver answers nothing else) is the gateway's own; a client's copy never passes
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASS_REQUEST} | framing
        headers |= to_triton.http_headers()
        if "Accept-Encoding" not in request.headers:  # aiohttp would ask for gzip: the client did not
            headers["Accept-Encoding"] = "identity"
        try:
            async with self.session.request(request.method, self.upstream + request.path,
                                            data=body or None, headers=headers) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_RESPONSE}
                return web.Response(status=upstream.status, body=payload, headers=out), False
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return _error(503, f"tritonserver unavailable: {exc}"), False


class GrpcProxy(grpc.GenericRpcHandler):
    """Forwards the unary calls of Triton's GRPCInferenceService: each message is decoded, checked (model names
    against the repository; ModelInfer in full) and encoded again, so tritonserver reads what was checked."""

    def __init__(self, upstream: str, limits: Limits, metrics: GatewayMetrics, models: ModelAllowlist):
        self.upstream, self.limits, self.metrics, self.models = upstream, limits, metrics, models
        self.channel: grpc.aio.Channel | None = None

    def open(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.upstream, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])

    def service(self, details):
        method = details.method
        if not method.startswith(_SERVICE):
            return None
        name = method[len(_SERVICE):]
        if name == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(self._no_stream)
        if name not in _SERVICE_METHODS:
            return None
        return grpc.unary_unary_rpc_method_handler(self._forwarder(name))

    async def _no_stream(self, _requests, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "ModelStreamInfer: widefunnel's models are not decoupled; use ModelInfer")
        yield b""  # pragma: no cover - abort raises

    def _checked(self, name: str, request: bytes) -> tuple[bytes, str]:
        """(the message to forward, the metric label of its model); Refusal otherwise."""
        try:
            parsed = _message_class(name).FromString(request)
        except DecodeError:
            raise Refusal(f"request: not a valid {name}Request") from None
        parsed.DiscardUnknownFields()
        model = ""
        field = _MODEL_FIELDS.get(name)
        if field is not None:
            model = getattr(parsed, field)
            check_model_name(model)
            if (model or name not in _ALL_MODELS_WHEN_EMPTY) and model not in self.models.names():
                raise Refusal(f"model '{model}': not a model of this repository", 404)
        elif hasattr(parsed, "name"):  # a shared-memory region's name
            check_model_name(parsed.name)
        if name == "ModelInfer":
            check_grpc_infer(parsed, self.limits, self.models.get(model))
        if name == "RepositoryModelLoad" and "config" in parsed.parameters:
            config = parsed.parameters["config"]
            config.string_param = canonical_json(parse_json(config.string_param.encode("utf-8"),
                                                            "parameters.config", self.limits)).decode("utf-8")
        return parsed.SerializeToString(), model

    def _forwarder(self, name: str):
        infer = name == "ModelInfer"
        method = _SERVICE + name

        async def forward(request: bytes, context):
            label = UNKNOWN_MODEL
            try:
                request, model = self._checked(name, request)
                label = model
            except Refusal as refusal:
                code = _GRPC_STATUS.get(refusal.status, grpc.StatusCode.INVALID_ARGUMENT)
                if infer:
                    self.metrics.count(label, "grpc", code.name, refused=True)
                await context.abort(code, str(refusal))
            metadata = tuple((k, v) for k, v in context.invocation_metadata() if k in _PASS_METADATA)
            metadata += to_triton.grpc_metadata()
            try:
                response = await self.channel.unary_unary(method)(request, metadata=metadata,
                                                                  timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                if infer:
                    self.metrics.count(label, "grpc", exc.code().name)
                await context.abort(exc.code(), exc.details() or "")
            if infer:
                self.metrics.count(label, "grpc", "OK")
            return response

        return forward


def metrics_app(upstream: str | None, metrics: GatewayMetrics) -> web.Application:
    """GET /metrics: tritonserver's own series (from its loopback metrics port) followed by the gateway's."""

    async def handle(_request: web.Request) -> web.Response:
        text = b""
        if upstream is not None:
            try:
                async with aiohttp.ClientSession() as session, session.get(f"http://{upstream}/metrics") as resp:
                    text = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                text = f"# tritonserver metrics unavailable: {exc}\n".encode()
        return web.Response(body=text + metrics.text(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


async def serve(http_listen: tuple[str, int] | None, grpc_listen: tuple[str, int] | None,
                http_upstream: str, grpc_upstream: str, limits: Limits, repository: Path,
                ready: asyncio.Event | None = None, metrics_listen: tuple[str, int] | None = None,
                metrics_upstream: str | None = None) -> None:
    """Runs until cancelled. `repository` names the models the gateway lets through."""
    runners: list[web.AppRunner] = []
    server = None
    metrics = GatewayMetrics()
    models = ModelAllowlist(repository)

    async def site(app: web.Application, listen: tuple[str, int], **kwargs) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, **kwargs)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, *listen, reuse_address=True).start()

    try:
        if http_listen is not None:
            await site(HttpProxy(http_upstream, limits, metrics, models).app(), http_listen, auto_decompress=False)
        if metrics_listen is not None:
            await site(metrics_app(metrics_upstream, metrics), metrics_listen)
        if grpc_listen is not None:
            proxy = GrpcProxy(grpc_upstream, limits, metrics, models)
            proxy.open()
            server = grpc.aio.server(options=[("grpc.max_receive_message_length", limits.max_body_bytes),
                                              ("grpc.max_send_message_length", -1),
                                              ("grpc.so_reuseport", 0)])
            server.add_generic_rpc_handlers((proxy,))
            if server.add_insecure_port(f"{grpc_listen[0]}:{grpc_listen[1]}") == 0:
                raise OSError(f"gRPC port {grpc_listen[1]} on {grpc_listen[0]} is not free")
            await server.start()
        log.info("gateway: HTTP %s -> %s, gRPC %s -> %s", http_listen, http_upstream, grpc_listen, grpc_upstream)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        if server is not None:
            await server.stop(grace=2)
        for runner in runners:
            await runner.cleanup()
