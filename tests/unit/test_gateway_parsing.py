"""The gateway reads a request the way tritonserver does, and forwards what it read.

tritonserver's rapidjson keeps the first copy of a duplicated key, Python's parser the last: the gateway refuses
duplicates at any depth and forwards its own serialization, so the bytes tritonserver parses mean the same
under either rule. Requests are also checked against the model they name (inputs, types, shapes, widths)
and against the endpoints and models the repository serves. Pure: no server.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from widefunnel import model_configs as mcfg
from widefunnel.field_filters import genre_year_fields
from widefunnel.gateway.checks import Limits, Refusal, check_grpc_infer, check_http_infer, parse_json, route
from widefunnel.gateway.models import Bounds, model_spec
from widefunnel.validation import MAX_FILTER_VALUES, MAX_REQUEST_ID_CHARS, MAX_STRING_BYTES

LIMITS = Limits()
TARGET = mcfg.Target("cpu")
VERSIONS = dict.fromkeys(mcfg.STEP_MODELS, 1)
# a MovieLens build's filters: its fields genre and year (include_genre, exclude_genre, min_year, max_year)
MOVIELENS = tuple(genre_year_fields({1: ("Comedy",)}, np.array([0, 1995]), ("Comedy",), 2).schema().client_inputs())
ENSEMBLE = model_spec(mcfg.ensemble_config(TARGET, 3, VERSIONS, MOVIELENS),
                      Bounds(request_candidates=1000, max_exclude=50))
SCORE = model_spec(mcfg.score_config(TARGET, 3, VERSIONS), Bounds(request_candidates=1000, max_exclude=50))
ANN = model_spec(mcfg.ann_config("engagement", TARGET, 32, {}), Bounds(request_candidates=1000, max_exclude=50))


def _first_wins(pairs):
    out = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _last_wins(pairs):
    return dict(pairs)


def _seed_request(seeds=(1, 50), **extra) -> dict:
    return {"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [len(seeds), 1],
                        "data": list(seeds)}], **extra}


# ------------------------------------------------------------------------------------------------ duplicates
@pytest.mark.parametrize("text", [
    b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"shape":[1,0],"data":[1]}]}',
    b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[1]}],'
    b'"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[7]}]}',
    b'{"parameters":{"a":1,"a":2},"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[1]}]}',
    b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[1],'
    b'"parameters":{"binary_data_size":8,"binary_data_size":0}}]}',
])
def test_a_duplicate_key_at_any_depth_is_refused_by_name(text):
    with pytest.raises(Refusal, match="appears twice"):
        check_http_infer(text, None, LIMITS, ENSEMBLE)


def test_the_shape_smuggle_of_the_probe_is_refused():
    """`"shape":[1,2305843009213693952],"shape":[1,0]` with 0 bytes killed the preprocess stub."""
    header = (b'{"inputs":[{"name":"candidate_item_id","datatype":"INT64","shape":[1,2305843009213693952],'
              b'"shape":[1,0],"parameters":{"binary_data_size":0}},'
              b'{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"parameters":{"binary_data_size":8}}]}')
    with pytest.raises(Refusal, match="'shape' appears twice"):
        check_http_infer(header + b"\1" + b"\0" * 7, str(len(header)), LIMITS, SCORE)


@pytest.mark.parametrize("text, message", [
    (b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[NaN]}]}', "NaN is not JSON"),
    (b'{"inputs":[{"name":"seed_item_id","datatype":"FP32","shape":[1,1],"data":[1e400]}]}', "does not fit"),
    (b'{"id":"x","inputs":[],"parameters":{"p":18446744073709551616}}', "does not fit 64 bits"),
    (b'{"id":"\xff"}', "not UTF-8"),
    (b'{"id":"\\ud800","inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[1]}]}',
     "strict JSON"),
])
def test_what_rapidjson_would_read_otherwise_is_refused(text, message):
    with pytest.raises(Refusal, match=message):
        check_http_infer(text, None, LIMITS, ENSEMBLE)


def test_forwarded_body_is_the_gateways_serialization_with_the_binary_tail_unchanged():
    seeds = np.array([[1], [50]], np.int64)
    tensor = httpclient.InferInput("seed_item_id", [2, 1], "INT64")
    tensor.set_data_from_numpy(seeds, binary_data=True)
    body, length = httpclient.InferenceServerClient.generate_request_body([tensor], request_id="r1")
    head = body[:length]
    padded = head[:-1] + b' , "outputs" : [ ] }'  # same request, other spelling
    forwarded, new_length = check_http_infer(padded + body[length:], str(len(padded)), LIMITS, ENSEMBLE)
    assert forwarded[int(new_length):] == body[length:] == seeds.tobytes()
    assert json.loads(forwarded[:int(new_length)]) == json.loads(head) | {"outputs": []}
    assert b" " not in forwarded[:int(new_length)]


_KEYS = st.sampled_from(["inputs", "name", "shape", "datatype", "data", "parameters", "id", "outputs", "x"])
_SCALARS = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=4), st.booleans(), st.none())


class Obj(tuple):
    """A JSON object as its (key, value) pairs, so a key may appear twice."""


def _json_text(value) -> str:
    """Like json.dumps, but objects are `Obj` pairs, so a key may appear twice; numbers as Python prints them."""
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{_json_text(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value).replace("inf", "Infinity").replace("nan", "NaN")
    return json.dumps(value)


_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.lists(st.tuples(_KEYS, inner), max_size=4).map(Obj)), max_leaves=12)


@st.composite
def _spelled_requests(draw):
    """Valid requests spelled in many ways (key order, whitespace, escaped names, number forms), some with a key
    repeated at some depth with another value: the pairs a parser must choose between."""
    seeds = draw(st.lists(st.integers(1, 1682), min_size=1, max_size=3))
    alpha = draw(st.floats(0, 1))
    name = draw(st.sampled_from(['"seed_item_id"', '"\\u0073eed_item_id"', '"seed\\u005fitem_id"']))
    seed = [(name, '"seed_item_id"'), ('"datatype"', '"INT64"'), ('"shape"', json.dumps([len(seeds), 1])),
            ('"data"', json.dumps(seeds))]
    alpha_t = [('"name"', '"alpha"'), ('"datatype"', '"FP32"'), ('"shape"', json.dumps([len(seeds), 1])),
               ('"data"', "[" + ",".join(draw(st.sampled_from([repr(alpha), f"{alpha:e}", json.dumps(alpha)]))
                                         for _ in seeds) + "]")]
    seed[0] = ('"name"', seed[0][0])
    tensors = [seed] + ([alpha_t] if draw(st.booleans()) else [])
    top = [('"inputs"', tensors)]
    if draw(st.booleans()):
        top.append(('"id"', json.dumps(draw(st.text(max_size=8)))))
    if draw(st.booleans()):
        top.append(('"outputs"', "[]"))
    duplicate = draw(st.sampled_from([None, "top", "tensor"]))
    if duplicate == "top":
        top.insert(draw(st.integers(0, len(top))), ('"inputs"', [[('"name"', '"seed_item_id"'),
                   ('"datatype"', '"INT64"'), ('"shape"', "[1,1]"), ('"data"', "[7]")]]))
    elif duplicate == "tensor":
        target = draw(st.sampled_from(tensors))
        key = draw(st.sampled_from(['"shape"', '"data"', '"datatype"', '"name"']))
        other = {'"shape"': "[1,0]", '"data"': json.dumps([2] * len(seeds)), '"datatype"': '"INT32"',
                 '"name"': '"top_n"'}[key]
        target.insert(draw(st.integers(0, len(target))), (key, other))
    gap = draw(st.sampled_from(["", " ", "\n", " \t "]))

    def obj(pairs) -> str:
        order = draw(st.permutations(pairs))
        return "{" + gap + ("," + gap).join(f"{k}{gap}:{gap}{v}" for k, v in order) + gap + "}"

    body = obj([(k, "[" + ",".join(obj(t) for t in v) + "]") if k == '"inputs"' else (k, v) for k, v in top])
    return body.encode(), duplicate is not None


@settings(max_examples=300, deadline=None)
@given(_spelled_requests())
def test_no_body_means_one_thing_to_the_gateway_and_another_to_tritonserver(case):
    """rapidjson keeps the first copy of a key: whatever the gateway forwards, a first-copy parser reads exactly
    what the gateway checked; and a body whose parsers could disagree is never forwarded."""
    text, has_duplicate = case
    try:
        forwarded, _ = check_http_infer(text, None, LIMITS, ENSEMBLE)
    except Refusal as refusal:
        assert has_duplicate, refusal
        assert "appears twice" in str(refusal)
        return
    assert not has_duplicate
    checked = json.loads(text, object_pairs_hook=_last_wins)
    assert json.loads(forwarded, object_pairs_hook=_first_wins) == checked
    assert json.loads(forwarded, object_pairs_hook=_last_wins) == checked
    assert json.loads(text, object_pairs_hook=_first_wins) == checked


@settings(max_examples=300, deadline=None)
@given(_VALUES.map(lambda v: _json_text(Obj([("inputs", v)]))))
def test_any_json_the_gateway_forwards_reads_alike_under_both_rules(text):
    try:
        forwarded, _ = check_http_infer(text.encode(), None, LIMITS, ENSEMBLE)
    except Refusal:
        return
    assert json.loads(forwarded, object_pairs_hook=_first_wins) == json.loads(forwarded, object_pairs_hook=_last_wins)


# ---------------------------------------------------------------------------------------------- bounds
def test_request_id_strings_and_parameters_are_bounded():
    with pytest.raises(Refusal, match="id: the request id is longer"):
        check_http_infer(json.dumps(_seed_request(id="x" * (MAX_REQUEST_ID_CHARS + 1))).encode(), None, LIMITS)
    with pytest.raises(Refusal, match="id: the request id must be a string"):
        check_http_infer(json.dumps(_seed_request(id=7)).encode(), None, LIMITS)
    with pytest.raises(Refusal, match="must be a string, a number or a boolean"):
        check_http_infer(json.dumps(_seed_request(parameters={"p": {"deep": 1}})).encode(), None, LIMITS)
    with pytest.raises(Refusal, match="unknown field"):
        check_http_infer(json.dumps(_seed_request(extra=1)).encode(), None, LIMITS)
    request = service_pb2.ModelInferRequest(model_name="widefunnel", id="x" * 1000)
    request.inputs.add(name="seed_item_id", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(1)
    with pytest.raises(Refusal, match="id: the request id is longer"):
        check_grpc_infer(request, LIMITS, ENSEMBLE)


def _bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def test_each_string_and_the_strings_per_seed_are_bounded_on_both_protocols():
    long = [b"Comedy", b"x" * (MAX_STRING_BYTES + 1)]
    data = _bytes_tensor(long)
    header = json.dumps(_seed_request((1,)) | {"inputs": _seed_request((1,))["inputs"] + [
        {"name": "include_genre", "datatype": "BYTES", "shape": [1, 2],
         "parameters": {"binary_data_size": len(data)}}]}).encode()
    with pytest.raises(Refusal, match="input 'include_genre': element 1 is 257 bytes"):
        check_http_infer(header + data, str(len(header)), LIMITS, ENSEMBLE)
    wide = [b"Comedy"] * (MAX_FILTER_VALUES + 1)
    request = service_pb2.ModelInferRequest(model_name="widefunnel")
    request.inputs.add(name="seed_item_id", datatype="INT64", shape=[1, 1])
    request.inputs.add(name="include_genre", datatype="BYTES", shape=[1, len(wide)])
    request.raw_input_contents.extend([np.ones(1, np.int64).tobytes(), _bytes_tensor(wide)])
    with pytest.raises(Refusal, match=f"input 'include_genre': {len(wide)} values per seed; at most"):
        check_grpc_infer(request, LIMITS, ENSEMBLE)


@pytest.mark.parametrize("name, datatype, shape, message", [
    ("seed", "INT64", [1, 1], "has no such input"),
    ("seed_item_id", "INT32", [1, 1], "takes INT64, got INT32"),
    ("seed_item_id", "INT64", [1, 2], "takes shape"),
    ("seed_item_id", "INT64", [1], "takes rank 2"),
    ("seed_item_id", "INT64", [65, 1], "batch of 65"),
    ("exclude_item_id", "INT64", [1, 51], "51 values per seed; at most 50"),
    ("min_year", "INT32", [1, 1], "^input 'min_year': model 'widefunnel' takes FP32, got INT32$"),  # as any range
])
def test_inputs_are_checked_against_the_model_they_are_sent_to(name, datatype, shape, message):
    count = int(np.prod(shape))
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": [1] * count}]}
    with pytest.raises(Refusal, match=message):
        check_http_infer(json.dumps(body).encode(), None, LIMITS, ENSEMBLE)


def test_a_step_called_directly_is_bounded_like_the_ensemble():
    """The probe sent a 3.75M-id EXCLUDE_IDS to an ANN step directly."""
    request = service_pb2.ModelInferRequest(model_name="ann_engagement")
    request.inputs.add(name="QUERY", datatype="FP32", shape=[1, 32])
    request.inputs.add(name="EXCLUDE_IDS", datatype="INT64", shape=[1, 3_750_000])
    request.raw_input_contents.extend([np.zeros(32, np.float32).tobytes(), np.zeros(3_750_000, np.int64).tobytes()])
    with pytest.raises(Refusal, match="input 'EXCLUDE_IDS': 3750000 values per seed; at most 50"):
        check_grpc_infer(request, LIMITS, ANN)
    ok = service_pb2.ModelInferRequest(model_name="ann_engagement")
    ok.inputs.add(name="QUERY", datatype="FP32", shape=[2, 32])
    ok.raw_input_contents.append(np.zeros(64, np.float32).tobytes())
    check_grpc_infer(ok, LIMITS, ANN)


# --------------------------------------------------------------------------------------------- routes
MODELS = frozenset({"widefunnel", "preprocess"})


@pytest.mark.parametrize("method, path, kind, model", [
    ("POST", "/v2/models/widefunnel/infer", "infer", "widefunnel"),
    ("POST", "/v2/models/widefunnel/versions/2/infer", "infer", "widefunnel"),
    ("GET", "/v2/models/preprocess/config", "model", "preprocess"),
    ("GET", "/v2/health/ready", "server", None),
    ("GET", "/v2", "server", None),
    ("POST", "/v2/repository/models/widefunnel/load", "model", "widefunnel"),
    ("POST", "/v2/systemsharedmemory/region/mine/register", "server", None),
])
def test_the_endpoints_widefunnel_serves_are_routed(method, path, kind, model):
    assert route(method, path, MODELS) == type(route("GET", "/v2", MODELS))(kind, model)


@pytest.mark.parametrize("method, path, status", [
    ("POST", "/v2/models/widefunnel/generate", 404),
    ("POST", "/v2/models/widefunnel/generate_stream", 404),
    ("POST", "/v2/models/" + "m" * 7000 + "/infer", 400),
    ("POST", "/v2/models/nothere/infer", 404),
    ("GET", "/v2/models/widefunnel/infer", 405),
    ("GET", "/metrics", 404),
    ("GET", "/v2/models/widefunnel/versions/x/ready", 404),
])
def test_other_endpoints_and_models_are_refused_before_the_body_is_read(method, path, status):
    with pytest.raises(Refusal) as info:
        route(method, path, MODELS)
    assert info.value.status == status


def test_json_inside_a_load_is_checked_too():
    from widefunnel.gateway.proxy import canonical_load_parameters

    body = {"parameters": {"config": '{"name":"a","name":"b"}'}}
    with pytest.raises(Refusal, match="parameters.config: key 'name' appears twice"):
        canonical_load_parameters(body, LIMITS)
    body = {"parameters": {"config": '{ "name" : "a" }'}}
    canonical_load_parameters(body, LIMITS)
    assert body["parameters"]["config"] == '{"name":"a"}'
    assert parse_json(b'{"a":[1,2]}', "x", LIMITS) == {"a": [1, 2]}
