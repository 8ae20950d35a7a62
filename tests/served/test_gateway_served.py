"""The gateway against the real server: a request it checked is the request that runs, only the repository's
endpoints and models get through, and nothing a client sends is kept (memory, metric labels)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from helpers import post
from tritonclient.grpc import service_pb2, service_pb2_grpc

from widefunnel.client.client import WidefunnelClient
from widefunnel.server import tree_rss_kib

pytestmark = pytest.mark.server
SEEDS = [1, 50, 181]


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    return post(url, body, headers)


def _answer(server):
    with WidefunnelClient(server.grpc_url, "grpc") as c:
        return c.recommend(SEEDS, top_n=10)


def _rss(server) -> int:
    return tree_rss_kib(server.process.pid) + tree_rss_kib(server.gateway_process.pid)


def test_duplicate_keys_never_reach_tritonserver(server):
    """The probe's requests: a shape smuggled by a second key (it killed the preprocess stub, then the server),
    and `inputs` given twice (an answer for a seed the gateway never validated)."""
    before = _answer(server)
    infer = f"http://{server.http_url}/v2/models/widefunnel_score/infer"
    header = (b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],'
              b'"parameters":{"binary_data_size":8}},'
              b'{"name":"candidate_item_id","datatype":"INT64","shape":[1,2305843009213693952],"shape":[1,0],'
              b'"parameters":{"binary_data_size":0}}]}')
    for _ in range(6):
        framing = {"Inference-Header-Content-Length": str(len(header))}
        status, text = _post(infer, header + np.int64(1).tobytes(), framing)
        assert status == 400 and "'shape' appears twice" in text, text
    twice = (b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[50]}],'
             b'"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":[999999]}]}')
    status, text = _post(f"http://{server.http_url}/v2/models/widefunnel/infer", twice)
    assert status == 400 and "'inputs' appears twice" in text, text
    after = _answer(server)
    assert np.array_equal(after.item_id, before.item_id)


def test_no_body_that_would_kill_tritonserver_is_forwarded(server):
    """tritonserver 2.51's HTTP server dies on a body of 4 MiB or more, whatever it holds."""
    body = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
                       "outputs": [{"name": "item_id", "parameters": {"binary_data": False}}]}).encode()
    padded = body[:-1] + b" " * (int(4.5 * 2**20)) + b"}"
    status, text = _post(f"http://{server.http_url}/v2/models/widefunnel/infer", padded)
    assert status == 413, text
    assert server.alive()
    assert _post(f"http://{server.http_url}/v2/models/widefunnel/infer", body)[0] == 200


def test_a_request_spelled_otherwise_gets_the_same_answer(server):
    spelled = (b'{ "outputs" : [ ] , "inputs" : [ { "data" : [ 50 ] , "shape" : [ 1 , 1 ] , '
               b'"datatype" : "INT64" , "name" : "seed\\u005fitem_id" } ] }')
    status, text = _post(f"http://{server.http_url}/v2/models/widefunnel/infer", spelled)
    assert status == 200, text
    ids = next(o["data"] for o in json.loads(text)["outputs"] if o["name"] == "item_id")
    with WidefunnelClient(server.http_url, "http") as c:
        assert ids == c.recommend([50]).item_id[0].tolist()


def test_only_the_repositorys_endpoints_and_models_and_bounded_labels(server):
    base = f"http://{server.http_url}"
    rss = _rss(server)
    status, text = _post(f"{base}/v2/models/widefunnel/generate", json.dumps({"p": "x" * (24 << 20)}).encode())
    assert status == 404 and "not an endpoint" in text
    status, text = _post(f"{base}/v2/models/widefunnel/infer",
                         json.dumps({"id": "i" * (24 << 20), "inputs": []}).encode())
    assert status == 413 or (status == 400 and "id" in text), text
    for i in range(300):
        status, _ = _post(f"{base}/v2/models/{'m' * 100}{i}/infer", b"{}")
        assert status == 404
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    for i in range(100):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name=f"nothere{i}"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    labels = set(re.findall(r'widefunnel_requests_total\{[^}]*model="([^"]*)"', metrics))
    assert "_unknown" in labels and not any(label.startswith(("m" * 100, "nothere")) for label in labels)
    assert _rss(server) <= rss + 150 * 1024
    assert np.array_equal(_answer(server).item_id, _answer(server).item_id)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_step_called_directly_is_bounded_like_the_ensemble(server, protocol):
    """The probe sent a 3.75M-id EXCLUDE_IDS to an ANN step and 30 MB tensors to every step."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = module.InferenceServerClient(url)
    query = module.InferInput("QUERY", [1, 32], "FP32")
    query.set_data_from_numpy(np.zeros((1, 32), np.float32))
    from tritonclient.utils import InferenceServerException

    exclude = module.InferInput("EXCLUDE_IDS", [1, 3_750_000], "INT64")
    exclude.set_data_from_numpy(np.full((1, 3_750_000), -1, np.int64))
    with pytest.raises(InferenceServerException, match="over 3145728 bytes|larger than max"):  # 30 MB: the body cap
        client.infer("ann_engagement", [query, exclude])
    exclude = module.InferInput("EXCLUDE_IDS", [1, 5_000], "INT64")
    exclude.set_data_from_numpy(np.full((1, 5_000), -1, np.int64))
    with pytest.raises(InferenceServerException, match="EXCLUDE_IDS': 5000 values per seed; at most 1000"):
        client.infer("ann_engagement", [query, exclude])
    wrong = module.InferInput("QUERY", [1, 33], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 33), np.float32))
    with pytest.raises(InferenceServerException, match="input 'QUERY': model 'ann_engagement' takes shape"):
        client.infer("ann_engagement", [wrong])
    client.close()
