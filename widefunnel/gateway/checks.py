"""What the gateway refuses before a request reaches tritonserver: pure functions, tested without a server.

tritonserver 2.51 cannot refuse these itself:
- HTTP JSON nested deep enough exhausts its recursive parser's stack and kills the process;
- gzip/deflate bodies are inflated without a size limit;
- a tensor's byte size is shape x element size in int64, so a huge shape with 0 data bytes wraps to 0,
  passes the size check and kills the Python stub that turns it into a numpy array;
- request parameters are forwarded to every step of an ensemble, so one large string parameter grows
  every step's shared-memory region (which never shrinks);
- JSON data of the wrong type or length is answered 500 "Unable to parse 'data'" without the input's name.

Every refusal is a `Refusal` whose message names the input or the part of the request at fault.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

# Triton data types -> bytes per element (BYTES: variable, each element a 4-byte length + its bytes).
ELEMENT_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
                 "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": None}
_INT_RANGES = {"UINT8": (0, 2**8 - 1), "INT8": (-(2**7), 2**7 - 1), "UINT16": (0, 2**16 - 1),
               "INT16": (-(2**15), 2**15 - 1), "UINT32": (0, 2**32 - 1), "INT32": (-(2**31), 2**31 - 1),
               "UINT64": (0, 2**64 - 1), "INT64": (-(2**63), 2**63 - 1)}
_SHM_PARAMETERS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class Limits:
    """The gateway's bounds. Each is far above what a valid widefunnel request needs (the models' own
    limits are tighter and checked by the models) and far below what hurts the server."""

    max_body_bytes: int = 32 << 20  # after inflation; the largest valid request is ~26 MB (a direct reranker
    # call with max_request_candidates embeddings of dimension 32)
    max_json_data_bytes: int = 8 << 20  # a body whose tensors are JSON text (no binary extension)
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


def depth(value: object) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json(text: bytes, what: str, limits: Limits) -> object:
    """Python's parser refuses deep nesting with RecursionError instead of crashing; then a tighter bound."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise Refusal(f"{what}: JSON nested deeper than {limits.max_json_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal(f"{what}: not valid JSON ({exc})") from None
    if depth(value) > limits.max_json_depth:
        raise Refusal(f"{what}: JSON nested deeper than {limits.max_json_depth} levels")
    return value


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


def check_byte_size(name: str, datatype: str, count: int, size: int) -> None:
    """The bytes sent for a tensor must be exactly what its shape and type need."""
    per = ELEMENT_BYTES[datatype]
    if per is None:
        if size < 4 * count:
            raise Refusal(f"input '{name}': {size} bytes cannot hold {count} BYTES elements")
    elif size != per * count:
        raise Refusal(f"input '{name}': shape and {datatype} need {per * count} bytes, got {size}")


def parameter_bytes(parameters: dict) -> int:
    return sum(len(str(k)) + len(str(v)) for k, v in parameters.items())


def check_parameters(parameters: dict, where: str, limits: Limits) -> None:
    if any(k in parameters for k in _SHM_PARAMETERS):
        raise Refusal(f"{where}: shared-memory tensors are not accepted here (use the server's own port, "
                      "which needs the admin key to register regions)")
    if parameter_bytes(parameters) > limits.max_parameter_bytes:
        raise Refusal(f"{where}: parameters exceed {limits.max_parameter_bytes} bytes", 413)


def _datatype(tensor: dict, name: str) -> str:
    datatype = tensor.get("datatype")
    if datatype not in ELEMENT_BYTES:
        raise Refusal(f"input '{name}': unknown datatype {datatype!r}")
    return datatype


def _leaf_ok(datatype: str, value: object) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str)
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
            raise Refusal(f"input '{name}': data must be {datatype} values, got {json.dumps(node)[:40]}")
    if leaves != count:
        raise Refusal(f"input '{name}': shape needs {count} values, data has {'more' if leaves > count else leaves}")


def check_http_infer(body: bytes, header_length: str | None, limits: Limits) -> None:
    """An HTTP/REST inference request (JSON, or JSON header + binary tensors)."""
    if header_length is None:
        if len(body) > limits.max_json_data_bytes:
            raise Refusal(f"request body: JSON tensors over {limits.max_json_data_bytes} bytes; send large "
                          "tensors with the binary extension (tritonclient does by default)", 413)
        head, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise Refusal("Inference-Header-Content-Length: not an integer") from None
        if not 0 < length <= len(body):
            raise Refusal(f"Inference-Header-Content-Length: {length} outside the body's {len(body)} bytes")
        head, binary = body[:length], body[length:]
    request = parse_json(head, "request body", limits)
    if not isinstance(request, dict):
        raise Refusal("request body: a JSON object expected")
    check_parameters(request.get("parameters") or {}, "request parameters", limits)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs or len(inputs) > limits.max_inputs:
        raise Refusal(f"inputs: a list of 1 to {limits.max_inputs} tensors expected")
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or len(outputs) > limits.max_outputs:
        raise Refusal(f"outputs: a list of at most {limits.max_outputs} requested outputs expected")
    binary_total = 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise Refusal("inputs: each tensor needs a name")
        name = tensor["name"]
        datatype = _datatype(tensor, name)
        if not isinstance(tensor.get("shape"), list):
            raise Refusal(f"input '{name}': shape must be a list")
        count = element_count(name, tensor["shape"], limits)
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise Refusal(f"input '{name}': parameters must be an object")
        check_parameters(parameters, f"input '{name}'", limits)
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise Refusal(f"input '{name}': binary_data_size must be a non-negative integer")
            check_byte_size(name, datatype, count, size)
            binary_total += size
        elif "data" in tensor:
            check_json_data(name, datatype, count, tensor["data"])
        else:
            raise Refusal(f"input '{name}': no data")
    if binary_total != len(binary):
        raise Refusal(f"request body: inputs declare {binary_total} binary bytes, the body carries {len(binary)}")


_CONTENT_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                   "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _grpc_parameters(parameters) -> dict:
    return {k: getattr(v, v.WhichOneof("parameter_choice") or "string_param") for k, v in parameters.items()}


def check_grpc_infer(request, limits: Limits) -> None:
    """A gRPC ModelInferRequest (tritonclient.grpc.service_pb2): the same rules as over HTTP."""
    check_model_name(request.model_name)
    check_parameters(_grpc_parameters(request.parameters), "request parameters", limits)
    if len(request.outputs) > limits.max_outputs:
        raise Refusal(f"outputs: at most {limits.max_outputs} requested outputs")
    if not request.inputs or len(request.inputs) > limits.max_inputs:
        raise Refusal(f"inputs: 1 to {limits.max_inputs} tensors expected")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise Refusal(f"raw_input_contents: {len(raw)} buffers for {len(request.inputs)} inputs")
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        datatype = _datatype({"datatype": tensor.datatype}, name)
        count = element_count(name, tensor.shape, limits)
        check_parameters(_grpc_parameters(tensor.parameters), f"input '{name}'", limits)
        if raw:
            check_byte_size(name, datatype, count, len(raw[i]))
            continue
        field = _CONTENT_FIELDS.get(datatype)
        sent = len(getattr(tensor.contents, field)) if field else 0
        if sent != count:
            raise Refusal(f"input '{name}': shape needs {count} values, contents has {sent}")
