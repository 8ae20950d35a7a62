"""The gateway's refusals as pure functions: what never reaches tritonserver, and that valid requests pass."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from widefunnel.gateway.checks import (
    Limits,
    Refusal,
    check_grpc_infer,
    check_http_infer,
    depth,
    inflate,
    parse_json,
)

LIMITS = Limits()


def _http_body(tensors: dict[str, np.ndarray], binary: bool = True, parameters: dict | None = None):
    inputs = []
    for name, array in tensors.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(inputs, parameters=parameters)
    return body, None if header_length is None else str(header_length)


def test_valid_binary_and_json_requests_pass():
    tensors = {"seed_item_id": np.array([[1], [50]], np.int64), "alpha": np.array([[0.5], [0.2]], np.float32)}
    check_http_infer(*_http_body(tensors), LIMITS)
    check_http_infer(*_http_body(tensors, binary=False), LIMITS)


def test_deep_nesting_is_refused_without_recursion():
    nested = b'{"inputs":[{"name":"x","datatype":"INT64","shape":[1],"data":' + b"[" * 50_000 + b"1" + \
        b"]" * 50_000 + b"}]}"
    with pytest.raises(Refusal, match="nested deeper"):
        check_http_infer(nested, None, LIMITS)
    with pytest.raises(Refusal, match="nested deeper"):
        parse_json(b"[" * 40 + b"]" * 40, "request body", LIMITS)
    assert depth({"a": [[1, 2], {"b": [3]}]}) == 4


@pytest.mark.parametrize("shape, size", [([1, 2**61], 0), ([64, 2**58], 0), ([1, -1], 8), ([2**40], 0)])
def test_shape_overflow_is_refused_by_name(shape, size):
    header = json.dumps({"inputs": [{"name": "candidate_item_id", "datatype": "INT64", "shape": shape,
                                     "parameters": {"binary_data_size": size}}]}).encode()
    with pytest.raises(Refusal, match="input 'candidate_item_id'"):
        check_http_infer(header + b"\0" * size, str(len(header)), LIMITS)
    request = service_pb2.ModelInferRequest(model_name="widefunnel_score")
    request.inputs.add(name="candidate_item_id", datatype="INT64", shape=[max(d, 0) for d in shape])
    request.raw_input_contents.append(b"\0" * size)
    if min(shape) >= 0:
        with pytest.raises(Refusal, match="input 'candidate_item_id'"):
            check_grpc_infer(request, LIMITS)


def test_byte_size_must_match_shape_over_grpc():
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="seed_item_id", datatype="INT64", shape=[2, 1])
    request.raw_input_contents.append(np.ones(1, np.int64).tobytes())
    with pytest.raises(Refusal, match="need 16 bytes, got 8"):
        check_grpc_infer(request, LIMITS)
    request.raw_input_contents[0] = np.ones(2, np.int64).tobytes()
    check_grpc_infer(request, LIMITS)
    typed = service_pb2.ModelInferRequest(model_name="m")
    typed.inputs.add(name="seed_item_id", datatype="INT64", shape=[3, 1]).contents.int64_contents.extend([1, 2])
    with pytest.raises(Refusal, match="needs 3 values, contents has 2"):
        check_grpc_infer(typed, LIMITS)


def test_real_tritonclient_grpc_request_passes():
    tensor = grpcclient.InferInput("seed_item_id", [1, 1], "INT64")
    tensor.set_data_from_numpy(np.array([[50]], np.int64))
    request = service_pb2.ModelInferRequest(model_name="widefunnel")
    request.inputs.add(name="seed_item_id", datatype="INT64", shape=[1, 1])
    request.raw_input_contents.append(tensor._get_content())
    check_grpc_infer(request, LIMITS)


@pytest.mark.parametrize("data, message", [
    (["50"], "must be INT64 values"), ([2**63], "must be INT64 values"), ([1.5], "must be INT64 values"),
    ([True], "must be INT64 values"), ([1, 2], "needs 1 values, data has more"), ([], "data has 0"),
])
def test_json_data_of_the_wrong_type_or_length_names_the_input(data, message):
    body = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1],
                                   "data": data}]}).encode()
    with pytest.raises(Refusal, match=f"input 'seed_item_id': .*{message}"):
        check_http_infer(body, None, LIMITS)


def test_large_parameters_and_shared_memory_are_refused():
    tensors = {"seed_item_id": np.array([[1]], np.int64)}
    with pytest.raises(Refusal, match="parameter 'x' is longer than"):
        check_http_infer(*_http_body(tensors, parameters={"x": "a" * 10_000}), LIMITS)
    with pytest.raises(Refusal, match="parameters exceed"):
        check_http_infer(*_http_body(tensors, parameters={f"x{i}": "a" * 200 for i in range(30)}), LIMITS)
    body = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1],
                                   "parameters": {"shared_memory_region": "triton_python_backend_shm_region_1",
                                                  "shared_memory_byte_size": 8}}]}).encode()
    with pytest.raises(Refusal, match="shared-memory"):
        check_http_infer(body, None, LIMITS)
    request = service_pb2.ModelInferRequest(model_name="m")
    for i in range(30):
        request.parameters[f"x{i}"].string_param = "a" * 200
    request.inputs.add(name="seed_item_id", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
    with pytest.raises(Refusal, match="parameters exceed"):
        check_grpc_infer(request, LIMITS)


def test_gzip_bomb_stops_at_the_limit_and_honest_gzip_inflates():
    bomb = gzip.compress(b"\0" * (200 << 20))
    assert len(bomb) < 300_000
    with pytest.raises(Refusal) as info:
        inflate(bomb, "gzip", 1 << 20)
    assert info.value.status == 413
    assert inflate(gzip.compress(b"hello"), "gzip", 100) == b"hello"
    with pytest.raises(Refusal, match="Content-Encoding"):
        inflate(b"x", "br", 100)
    with pytest.raises(Refusal, match="does not inflate"):
        inflate(b"not gzip", "gzip", 100)


def test_binary_sizes_must_add_up_to_the_body():
    body, length = _http_body({"seed_item_id": np.array([[1]], np.int64)})
    with pytest.raises(Refusal, match="body carries"):
        check_http_infer(body + b"extra", length, LIMITS)
    with pytest.raises(Refusal, match="Inference-Header-Content-Length"):
        check_http_infer(body, str(len(body) + 10), LIMITS)


def test_model_names_are_never_paths_and_outputs_are_bounded():
    from widefunnel.gateway.checks import check_model_name, check_path

    check_path("/v2/models/widefunnel/infer")
    check_path("/v2/repository/models/widefunnel/load")
    for path in ("/v2/models/../etc/infer", "/v2/models/a/../../x", "/v2/repository/models/..%2F/load".replace(
            "%2F", "/"), "/v2/models/a b/infer"):
        with pytest.raises(Refusal):
            check_path(path)
    with pytest.raises(Refusal, match="model name"):
        check_model_name("../../etc/passwd")
    body = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
                       "outputs": [{"name": f"o{i}"} for i in range(100_000)]}).encode()
    with pytest.raises(Refusal, match="outputs"):
        check_http_infer(body, None, LIMITS)
    request = service_pb2.ModelInferRequest(model_name="../x")
    request.inputs.add(name="seed_item_id", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
    with pytest.raises(Refusal, match="model name"):
        check_grpc_infer(request, LIMITS)
