"""What the gateway refuses before a request reaches tritonserver: pure functions, tested without a server.

tritonserver 2.51 cannot refuse these itself:
- HTTP JSON nested deep enough exhausts its recursive parser's stack and kills the process;
- gzip/deflate bodies are inflated without a size limit;
- a tensor's byte size is shape x element size in int64, so a huge shape with 0 data bytes wraps to 0,
  passes the size check and kills the Python stub that turns it into a numpy array;
- request parameters are forwarded to every step of an ensemble, so one large string parameter grows
  every step's shared-memory region (which never shrinks);
- JSON data of the wrong type or length is answered 500 "Unable to parse 'data'" without the input's name.

Python's parser and tritonserver's (rapidjson) must never read one body two ways: Python keeps the last
copy of a duplicated key, rapidjson the first, so a duplicate key at any depth is refused by name, and what
is forwarded is the gateway's own serialization of what it checked (unique keys, UTF-8, no NaN, 64-bit
integers), with the binary tail unchanged. gRPC messages are decoded, checked and encoded again alike.

Every refusal is a `Refusal` whose message names the input or the part of the request at fault.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Container, Iterable
from dataclasses import dataclass

from widefunnel.gateway.models import ModelSpec
from widefunnel.validation import MAX_REQUEST_ID_CHARS, MAX_STRING_BYTES

# Triton data types -> bytes per element (BYTES: variable, each element a 4-byte length + its bytes).
ELEMENT_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
                 "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": None}
_INT_RANGES = {"UINT8": (0, 2**8 - 1), "INT8": (-(2**7), 2**7 - 1), "UINT16": (0, 2**16 - 1),
               "INT16": (-(2**15), 2**15 - 1), "UINT32": (0, 2**32 - 1), "INT32": (-(2**31), 2**31 - 1),
               "UINT64": (0, 2**64 - 1), "INT64": (-(2**63), 2**63 - 1)}
_SHM_PARAMETERS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")
_DECIMAL = re.compile(r"^[0-9]{1,12}$")  # what HTTP means by a length; Python's int() also takes "1_0", "+1", "١"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class Limits:
    """The gateway's bounds. Each is far above what a valid widefunnel request needs (the models' own
    limits are tighter and checked by the models) and far below what hurts the server."""

    # after inflation, and what is forwarded: tritonserver 2.51's HTTP server dies (SIGSEGV) on a request body
    # of 4 MiB or more, checked or not (measured: 3.9 MiB answered, 4.5 MiB killed it). The largest valid
    # request is ~1.7 MB (max_request_candidates ids to the scorer, or to a reranker with its queries).
    max_body_bytes: int = 3 << 20
    max_json_data_bytes: int = 3 << 20  # a body whose tensors are JSON text (no binary extension)
    max_json_depth: int = 32  # a tensor of rank r nests r + 4 deep in a Triton request
    max_elements: int = 1 << 25  # per tensor
    max_inputs: int = 32
    max_outputs: int = 32  # Triton advisory CVE-2026-24146: a request asking for very many outputs crashed it
    max_parameter_bytes: int = 4096  # all parameters of a request together


class Refusal(ValueError):
    """A request the gateway does not forward. `status` is the HTTP status it answers."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding, never more than `limit` bytes (a gzip bomb stops there)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise Refusal(f"Content-Encoding: {encoding!r} is not accepted (gzip, deflate or none)", 415)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Refusal(f"Content-Encoding: the {encoding} body does not inflate: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise Refusal(f"request body: inflates to more than {limit} bytes", 413)
    return out


def check_model_name(name: str) -> None:
    """Model names are plain (no path separators, no `..`): a name is never a path on the server's disk."""
    if name and (not _MODEL_NAME.match(name) or ".." in name):
        raise Refusal(f"model name: {name[:80]!r} is not a model name (letters, digits, '_', '.', '-')")


def check_path(path: str) -> None:
    """An HTTP path (decoded) with no `..` segment and plain model names."""
    parts = path.split("/")
    if ".." in parts or "." in parts:
        raise Refusal("path: '.' and '..' segments are not accepted")
    if len(parts) > 3 and parts[1] == "v2" and parts[2] in ("models", "repository"):
        name = parts[4] if parts[2] == "repository" and len(parts) > 4 else parts[3]
        check_model_name(name)


@dataclass(frozen=True)
class Route:
    kind: str  # "infer", "model" (a model's metadata, readiness, config, stats, trace, load/unload) or "server"
    model: str | None  # the model the path names, checked against the repository; None for server-wide calls


_V = r"(?:/versions/[0-9]{1,9})?"
_M = r"(?P<model>[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})"
_REGION = r"(?:/region/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?"
# The KServe v2 / Triton HTTP endpoints widefunnel serves; everything else (generate, generate_stream, other
# paths) is refused before its body is read. Control-plane calls stay listed: tritonserver wants the admin key.
_ROUTES: tuple[tuple[frozenset[str], re.Pattern, str], ...] = tuple(
    (frozenset(methods.split("|")), re.compile(f"^{pattern}$"), kind) for methods, pattern, kind in (
        ("GET", r"/v2", "server"),
        ("GET", r"/v2/health/(?:live|ready)", "server"),
        ("GET", r"/v2/models/stats", "server"),
        ("POST", rf"/v2/models/{_M}{_V}/infer", "infer"),
        ("GET", rf"/v2/models/{_M}{_V}(?:/ready|/config|/stats)?", "model"),
        ("GET|POST", rf"/v2/models/{_M}{_V}/trace/setting", "model"),
        ("POST", r"/v2/repository/index", "server"),
        ("POST", rf"/v2/repository/models/{_M}/(?:load|unload)", "model"),
        ("GET", rf"/v2/(?:system|cuda)sharedmemory{_REGION}/status", "server"),
        ("POST", rf"/v2/(?:system|cuda)sharedmemory{_REGION}/(?:register|unregister)", "server"),
        ("GET|POST", r"/v2/logging", "server"),
        ("GET|POST", r"/v2/trace/setting", "server"),
    ))


def route(method: str, path: str, models: Container[str]) -> Route:
    """The endpoint a request is for, or a Refusal (404) before anything else of it is read: only the
    endpoints above, and only model names the repository has."""
    check_path(path)
    for methods, pattern, kind in _ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        if method not in methods:
            raise Refusal(f"{method} {path[:80]}: method not allowed here (use {'/'.join(sorted(methods))})", 405)
        model = match.groupdict().get("model")
        if model is not None and model not in models:
            raise Refusal(f"model '{model}': not a model of this repository", 404)
        return Route(kind, model)
    raise Refusal(f"{path[:80]}: not an endpoint of this server", 404)


def depth(value: object) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    return _walk(value, None)


def _walk(value: object, what: str | None) -> int:
    """Depth, and (with ``what``) every number within what rapidjson reads alike: integers that fit 64 bits,
    finite doubles. One pass over the parsed value (the parser's own number hooks would cost a Python call per
    number)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            if what is not None and type(node) is int and not _INT64_MIN <= node <= _UINT64_MAX:
                raise Refusal(f"{what}: the integer {str(node)[:40]} does not fit 64 bits")
            if what is not None and type(node) is float and node in (_INF, -_INF):
                raise Refusal(f"{what}: a number does not fit a double")
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_INF = float("inf")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise Refusal(f"request body: key {key[:40]!r} appears twice in one object (JSON parsers disagree "
                      "on which copy counts)")
    return out


def _no_constant(name: str) -> object:
    raise Refusal(f"request body: {name} is not JSON")


def parse_json(text: bytes, what: str, limits: Limits) -> object:
    """Strict JSON as rapidjson reads it: UTF-8 only, unique keys, no NaN/Infinity, numbers that fit 64 bits.
    Python's parser refuses deep nesting with RecursionError instead of crashing; then a tighter bound."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refusal(f"{what}: not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(decoded, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise Refusal(f"{what}: JSON nested deeper than {limits.max_json_depth} levels") from None
    except Refusal as refusal:
        raise Refusal(str(refusal).replace("request body", what, 1)) from None
    except ValueError as exc:
        raise Refusal(f"{what}: not valid JSON ({exc})") from None
    if _walk(value, what) > limits.max_json_depth:
        raise Refusal(f"{what}: JSON nested deeper than {limits.max_json_depth} levels")
    return value


def canonical_json(value: object, what: str = "request body") -> bytes:
    """What the gateway forwards: its own serialization of what it checked, which every parser reads alike."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:
        raise Refusal(f"{what}: cannot be forwarded as strict JSON ({str(exc)[:80]})") from None


def element_count(name: str, shape: Iterable[object], limits: Limits) -> int:
    """The tensor's element count, in Python integers (no wrap-around), refused beyond the limit."""
    count = 1
    dims = list(shape)
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise Refusal(f"input '{name}': shape must be non-negative integers, got {dims}")
        count *= dim
    if count > limits.max_elements:
        raise Refusal(f"input '{name}': shape {dims} has {count} elements, more than the "
                      f"{limits.max_elements} a tensor may carry")
    return count


def check_byte_size(name: str, datatype: str, count: int, size: int, data: bytes | memoryview | None = None) -> None:
    """The bytes sent for a tensor must be exactly what its shape and type need; BYTES elements (each a
    4-byte little-endian length and its bytes) are walked when `data` is given, each at most MAX_STRING_BYTES."""
    per = ELEMENT_BYTES[datatype]
    if per is None:
        if size < 4 * count:
            raise Refusal(f"input '{name}': {size} bytes cannot hold {count} BYTES elements")
        if data is not None:
            check_bytes_elements(name, count, data)
    elif size != per * count:
        raise Refusal(f"input '{name}': shape and {datatype} need {per * count} bytes, got {size}")


def check_bytes_elements(name: str, count: int, data: bytes | memoryview) -> None:
    offset, end = 0, len(data)
    for i in range(count):
        if offset + 4 > end:
            raise Refusal(f"input '{name}': the data ends inside element {i}'s length")
        (length,) = struct.unpack_from("<I", data, offset)
        if length > MAX_STRING_BYTES:
            raise Refusal(f"input '{name}': element {i} is {length} bytes; at most {MAX_STRING_BYTES}")
        offset += 4 + length
        if offset > end:
            raise Refusal(f"input '{name}': element {i} runs past the data")
    if offset != end:
        raise Refusal(f"input '{name}': {end - offset} bytes after the last of its {count} elements")


def parameter_bytes(parameters: dict) -> int:
    return sum(len(str(k)) + len(str(v)) for k, v in parameters.items())


def check_parameters(parameters: object, where: str, limits: Limits) -> None:
    """Parameters are a flat object of strings, integers and booleans (Triton's three kinds), bounded."""
    if not isinstance(parameters, dict):
        raise Refusal(f"{where}: parameters must be an object")
    if any(k in parameters for k in _SHM_PARAMETERS):
        raise Refusal(f"{where}: shared-memory tensors are not accepted here (use the server's own port, "
                      "which needs the admin key to register regions)")
    for key, value in parameters.items():
        if not isinstance(value, (str, int, float, bool)):
            raise Refusal(f"{where}: parameter {key[:40]!r} must be a string, a number or a boolean")
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
            raise Refusal(f"{where}: parameter {key[:40]!r} is longer than {MAX_STRING_BYTES} bytes", 413)
    if parameter_bytes(parameters) > limits.max_parameter_bytes:
        raise Refusal(f"{where}: parameters exceed {limits.max_parameter_bytes} bytes", 413)


def check_request_id(value: object) -> None:
    if not isinstance(value, str):
        raise Refusal("id: the request id must be a string")
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise Refusal(f"id: the request id is longer than {MAX_REQUEST_ID_CHARS} characters")


def check_against_model(spec: ModelSpec | None, name: str, datatype: str, shape: list[int]) -> None:
    """The input exists in the model, has its type and rank, a batch within max_batch_size, its fixed
    dimensions, and no more elements in its variable ones than the build allows (a step called directly is
    bounded like the ensemble that feeds it)."""
    if spec is None:
        return
    expected = spec.inputs.get(name)
    if expected is None:
        known = ", ".join(sorted(spec.inputs))
        raise Refusal(f"input '{name[:64]}': model '{spec.name}' has no such input (it takes {known})")
    if datatype != expected.datatype:
        raise Refusal(f"input '{name}': model '{spec.name}' takes {expected.datatype}, got {datatype}")
    batched = spec.max_batch_size > 0
    rank = len(expected.dims) + batched
    if len(shape) != rank:
        raise Refusal(f"input '{name}': model '{spec.name}' takes rank {rank} (shape "
                      f"{['B'] * batched + list(expected.dims)}), got shape {shape}")
    dims = shape[1:] if batched else shape
    batch = shape[0] if batched else 1
    if batched and not 1 <= batch <= spec.max_batch_size:
        raise Refusal(f"input '{name}': batch of {batch}; model '{spec.name}' takes 1 to {spec.max_batch_size}")
    row = 1
    for got, want in zip(dims, expected.dims):
        if want >= 0 and got != want:
            raise Refusal(f"input '{name}': model '{spec.name}' takes shape {['B'] * batched + list(expected.dims)}"
                          f", got {shape}")
        if want < 0:
            row *= got
    if any(d < 0 for d in expected.dims):
        if row > expected.row_limit:
            raise Refusal(f"input '{name}': {row} values per seed; at most {expected.row_limit} "
                          f"(model '{spec.name}')")
        if row * batch > expected.request_limit:
            raise Refusal(f"input '{name}': {row * batch} values in one request; at most "
                          f"{expected.request_limit} (model '{spec.name}')")


def _datatype(tensor: dict, name: str) -> str:
    datatype = tensor.get("datatype")
    if datatype not in ELEMENT_BYTES:
        raise Refusal(f"input '{name}': unknown datatype {datatype!r}")
    return datatype


def _leaf_ok(datatype: str, value: object) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) <= MAX_STRING_BYTES
    if isinstance(value, bool):
        return False
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        return isinstance(value, int) and low <= value <= high
    return isinstance(value, (int, float))  # FP16/BF16/FP32/FP64


def check_json_data(name: str, datatype: str, count: int, data: object) -> None:
    """JSON tensor data: exactly `count` leaves, each of the type (and range) the datatype needs."""
    leaves, stack = 0, [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        leaves += 1
        if leaves > count:
            break
        if not _leaf_ok(datatype, node):
            what = f"strings of at most {MAX_STRING_BYTES} bytes" if datatype == "BYTES" else f"{datatype} values"
            raise Refusal(f"input '{name}': data must be {what}, got {json.dumps(node)[:40]}")
    if leaves != count:
        raise Refusal(f"input '{name}': shape needs {count} values, data has {'more' if leaves > count else leaves}")


_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})


def _known_keys(obj: dict, allowed: frozenset[str], where: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise Refusal(f"{where}: unknown field(s) {sorted(k[:40] for k in unknown)[:5]}; "
                      f"expected {', '.join(sorted(allowed))}")


def check_http_infer(body: bytes, header_length: str | None, limits: Limits, spec: ModelSpec | None = None
                     ) -> tuple[bytes, str | None]:
    """An HTTP/REST inference request (JSON, or JSON header + binary tensors) -> (the body to forward, its
    Inference-Header-Content-Length): the gateway's serialization of the header it checked, then the binary
    tensors unchanged."""
    if header_length is None:
        if len(body) > limits.max_json_data_bytes:
            raise Refusal(f"request body: JSON tensors over {limits.max_json_data_bytes} bytes; send large "
                          "tensors with the binary extension (tritonclient does by default)", 413)
        head, binary = body, b""
    else:
        if not _DECIMAL.match(header_length):
            raise Refusal("Inference-Header-Content-Length: not a decimal integer")
        length = int(header_length)
        if not 0 < length <= min(len(body), limits.max_json_data_bytes):
            raise Refusal(f"Inference-Header-Content-Length: {header_length[:20]!r} outside the body's {len(body)} "
                          f"bytes (and at most {limits.max_json_data_bytes})")
        head, binary = body[:length], memoryview(body)[length:]
    request = parse_json(head, "request body", limits)
    if not isinstance(request, dict):
        raise Refusal("request body: a JSON object expected")
    _known_keys(request, _REQUEST_KEYS, "request body")
    if "id" in request:
        check_request_id(request["id"])
    check_parameters(request.get("parameters", {}), "request parameters", limits)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs or len(inputs) > limits.max_inputs:
        raise Refusal(f"inputs: a list of 1 to {limits.max_inputs} tensors expected")
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list) or len(outputs) > limits.max_outputs:
        raise Refusal(f"outputs: a list of at most {limits.max_outputs} requested outputs expected")
    seen_outputs: set[str] = set()
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise Refusal("outputs: each requested output needs a name")
        _known_keys(output, _OUTPUT_KEYS, f"output '{output['name'][:64]}'")
        if output["name"] in seen_outputs:
            raise Refusal(f"output '{output['name'][:64]}': requested twice")
        seen_outputs.add(output["name"])
        check_parameters(output.get("parameters", {}), f"output '{output['name'][:64]}'", limits)
    offset, seen = 0, set()
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise Refusal("inputs: each tensor needs a name")
        name = tensor["name"]
        _known_keys(tensor, _INPUT_KEYS, f"input '{name[:64]}'")
        if name in seen:
            raise Refusal(f"input '{name[:64]}': sent twice")
        seen.add(name)
        datatype = _datatype(tensor, name)
        if not isinstance(tensor.get("shape"), list):
            raise Refusal(f"input '{name}': shape must be a list")
        count = element_count(name, tensor["shape"], limits)
        check_against_model(spec, name, datatype, tensor["shape"])
        parameters = tensor.get("parameters", {})
        check_parameters(parameters, f"input '{name}'", limits)
        if "binary_data_size" in parameters:
            if "data" in tensor:
                raise Refusal(f"input '{name}': both binary_data_size and data")
            size = parameters["binary_data_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise Refusal(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise Refusal(f"request body: input '{name}' declares more binary bytes than the body carries")
            check_byte_size(name, datatype, count, size, binary[offset:offset + size])
            offset += size
        elif "data" in tensor:
            check_json_data(name, datatype, count, tensor["data"])
        else:
            raise Refusal(f"input '{name}': no data")
    if offset != len(binary):
        raise Refusal(f"request body: inputs declare {offset} binary bytes, the body carries {len(binary)}")
    forwarded = canonical_json(request)
    if len(forwarded) + len(binary) > limits.max_body_bytes:
        raise Refusal(f"request body: over {limits.max_body_bytes} bytes as forwarded", 413)
    if header_length is None:
        return forwarded, None
    return forwarded + bytes(binary), str(len(forwarded))


_CONTENT_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                   "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _grpc_parameters(parameters) -> dict:
    return {k: getattr(v, v.WhichOneof("parameter_choice") or "string_param") for k, v in parameters.items()}


def check_grpc_infer(request, limits: Limits, spec: ModelSpec | None = None) -> None:
    """A gRPC ModelInferRequest (tritonclient.grpc.service_pb2): the same rules as over HTTP."""
    check_model_name(request.model_name)
    check_request_id(request.id)
    check_parameters(_grpc_parameters(request.parameters), "request parameters", limits)
    if len(request.outputs) > limits.max_outputs:
        raise Refusal(f"outputs: at most {limits.max_outputs} requested outputs")
    if len({o.name for o in request.outputs}) != len(request.outputs):
        raise Refusal("outputs: an output is requested twice")
    for output in request.outputs:
        check_parameters(_grpc_parameters(output.parameters), f"output '{output.name[:64]}'", limits)
    if not request.inputs or len(request.inputs) > limits.max_inputs:
        raise Refusal(f"inputs: 1 to {limits.max_inputs} tensors expected")
    if len({t.name for t in request.inputs}) != len(request.inputs):
        raise Refusal("inputs: an input is sent twice")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise Refusal(f"raw_input_contents: {len(raw)} buffers for {len(request.inputs)} inputs")
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        datatype = _datatype({"datatype": tensor.datatype}, name)
        count = element_count(name, tensor.shape, limits)
        check_against_model(spec, name, datatype, list(tensor.shape))
        check_parameters(_grpc_parameters(tensor.parameters), f"input '{name}'", limits)
        if raw:
            check_byte_size(name, datatype, count, len(raw[i]), raw[i])
            continue
        field = _CONTENT_FIELDS.get(datatype)
        sent = len(getattr(tensor.contents, field)) if field else 0
        if sent != count:
            raise Refusal(f"input '{name}': shape needs {count} values, contents has {sent}")
        if datatype == "BYTES" and any(len(v) > MAX_STRING_BYTES for v in tensor.contents.bytes_contents):
            raise Refusal(f"input '{name}': an element is longer than {MAX_STRING_BYTES} bytes")
