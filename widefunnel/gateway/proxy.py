"""The gateway in front of tritonserver: an HTTP proxy (aiohttp) and a gRPC proxy (grpc.aio) in one process.

Clients reach the gateway; tritonserver listens on loopback only. Each request is checked (`checks`) and
forwarded byte for byte, headers and metadata included (so the admin key still reaches Triton's own
restriction); what the server answers comes back unchanged. A refusal answers the way Triton does
(HTTP: status + `{"error": ...}`; gRPC: INVALID_ARGUMENT / RESOURCE_EXHAUSTED with the message).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

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
    check_grpc_infer,
    check_http_infer,
    check_model_name,
    check_path,
    inflate,
    parse_json,
)

log = logging.getLogger(__name__)

_INFER_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(/versions/[^/]+)?/infer$")
# Hop-by-hop and framing headers: the gateway frames the forwarded request itself.
_DROP_REQUEST = {"host", "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive",
                 "expect", "upgrade", "te", "trailer", "proxy-connection"}
_PASS_RESPONSE = {"content-type", "content-encoding", "inference-header-content-length"}
_SERVICE = "/inference.GRPCInferenceService/"
_GRPC_STATUS = {413: grpc.StatusCode.RESOURCE_EXHAUSTED}
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


class HttpProxy:
    def __init__(self, upstream: str, limits: Limits, metrics: GatewayMetrics):
        self.upstream, self.limits, self.metrics = f"http://{upstream}", limits, metrics
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

    def check(self, request: web.Request, body: bytes) -> bytes:
        check_path(request.path)
        body = inflate(body, request.headers.get("Content-Encoding"), self.limits.max_body_bytes)
        if request.method == "POST" and _INFER_PATH.match(request.path):
            check_http_infer(body, request.headers.get("Inference-Header-Content-Length"), self.limits)
        elif body:  # repository loads, shared-memory registration, generate: JSON that Triton parses too
            parse_json(body, "request body", self.limits)
        return body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        infer = _INFER_PATH.match(request.path) if request.method == "POST" else None
        response, refused = await self._answer(request)
        if infer:
            code = _HTTP_CODES.get(response.status, str(response.status))
            self.metrics.count(infer.group("model"), "http", code, refused)
        return response

    async def _answer(self, request: web.Request) -> tuple[web.Response, bool]:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body: over {self.limits.max_body_bytes} bytes"), True
        try:
            body = self.check(request, body)
        except Refusal as refusal:
            return _error(refusal.status, str(refusal)), True
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers = dict(to_triton.without_key(headers.items())) | to_triton.http_headers()
        if "Accept-Encoding" not in request.headers:  # aiohttp would ask for gzip: the client did not
            headers["Accept-Encoding"] = "identity"
        try:
            async with self.session.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                            data=body or None, headers=headers) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_RESPONSE}
                return web.Response(status=upstream.status, body=payload, headers=out), False
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return _error(503, f"tritonserver unavailable: {exc}"), False


class GrpcProxy(grpc.GenericRpcHandler):
    """Forwards every unary call of Triton's GRPCInferenceService as bytes; ModelInfer is checked first."""

    def __init__(self, upstream: str, limits: Limits, metrics: GatewayMetrics):
        self.upstream, self.limits, self.metrics = upstream, limits, metrics
        self.channel: grpc.aio.Channel | None = None

    def open(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.upstream, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])

    def service(self, details):
        method = details.method
        if not method.startswith(_SERVICE):
            return None
        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._no_stream)
        return grpc.unary_unary_rpc_method_handler(self._forwarder(method))

    async def _no_stream(self, _requests, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "ModelStreamInfer: widefunnel's models are not decoupled; use ModelInfer")
        yield b""  # pragma: no cover - abort raises

    def _forwarder(self, method: str):
        infer = method.endswith("/ModelInfer")
        message_type = getattr(service_pb2, method.rsplit("/", 1)[1] + "Request", None)

        async def forward(request: bytes, context):
            model = ""
            if not infer and message_type is not None:  # a model name is never a path
                try:
                    parsed = message_type.FromString(request)
                    for field in ("name", "model_name"):
                        if hasattr(parsed, field):
                            check_model_name(getattr(parsed, field))
                except Refusal as refusal:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refusal))
                except DecodeError:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: not a valid message")
            if infer:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, "request: not a ModelInferRequest"
                try:
                    parsed = service_pb2.ModelInferRequest.FromString(request)
                    model = parsed.model_name
                    check_grpc_infer(parsed, self.limits)
                    message = None
                except Refusal as refusal:
                    code, message = _GRPC_STATUS.get(refusal.status, grpc.StatusCode.INVALID_ARGUMENT), str(refusal)
                except DecodeError:
                    pass
                if message is not None:
                    self.metrics.count(model, "grpc", code.name, refused=True)
                    await context.abort(code, message)
            metadata = tuple((k, v) for k, v in context.invocation_metadata()
                             if not k.startswith((":", "grpc-")) and k != "user-agent")
            metadata = to_triton.without_key(metadata) + to_triton.grpc_metadata()
            try:
                response = await self.channel.unary_unary(method)(request, metadata=metadata,
                                                                  timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                if infer:
                    self.metrics.count(model, "grpc", exc.code().name)
                await context.abort(exc.code(), exc.details() or "")
            if infer:
                self.metrics.count(model, "grpc", "OK")
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
                http_upstream: str, grpc_upstream: str, limits: Limits, ready: asyncio.Event | None = None,
                metrics_listen: tuple[str, int] | None = None, metrics_upstream: str | None = None) -> None:
    """Runs until cancelled."""
    runners: list[web.AppRunner] = []
    server = None
    metrics = GatewayMetrics()

    async def site(app: web.Application, listen: tuple[str, int], **kwargs) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, **kwargs)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, *listen, reuse_address=True).start()

    try:
        if http_listen is not None:
            await site(HttpProxy(http_upstream, limits, metrics).app(), http_listen, auto_decompress=False)
        if metrics_listen is not None:
            await site(metrics_app(metrics_upstream, metrics), metrics_listen)
        if grpc_listen is not None:
            proxy = GrpcProxy(grpc_upstream, limits, metrics)
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
