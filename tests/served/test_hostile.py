"""Hostile clients against the real server (gateway + tritonserver), over HTTP and gRPC.

What an attacker on the network tried (issue 15): uploading code through the repository API, unloading the
ensemble, registering the stubs' shared memory, deep JSON, gzip bombs, shape overflow, huge parameters,
direct calls to step models with out-of-catalogue ids and NaN. Each must be refused with an error naming
what is wrong, leave the answers identical and the memory bounded, and be counted once as a failure.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import admin_client, post, private_server, reloaded
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from widefunnel.client.client import InvalidRequest, Unavailable, WidefunnelClient
from widefunnel.security import with_keys
from widefunnel.server import stub_processes, tree_rss_kib
from widefunnel.server.processes import children, shm_regions, zombies

pytestmark = pytest.mark.server
SEEDS = [1, 50, 181]
PROTOCOLS = ("http", "grpc")


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    return post(url, body, headers)


def _answer(server, protocol: str = "grpc", timeout: float = 60.0):
    with WidefunnelClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol, timeout) as c:
        return c.recommend(SEEDS, top_n=10)


def _grpc_stub(url: str):
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))


def _upload_parameters(marker: Path) -> tuple[str, dict[str, bytes]]:
    config = {"name": "probe", "backend": "python", "max_batch_size": 0,
              "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]}
    code = f"open({str(marker)!r}, 'w').write('ran')\nclass TritonPythonModel:\n    def execute(self, r):\n" \
           "        return []\n"
    return json.dumps(config), {"file:1/model.py": code.encode()}


# ------------------------------------------------------------------------------------------- control plane
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("port", ["gateway", "tritonserver"])
def test_without_the_key_no_upload_unload_or_shared_memory(server, tmp_path, protocol, port):
    module = grpcclient if protocol == "grpc" else httpclient
    url = {("gateway", "http"): server.http_url, ("gateway", "grpc"): server.grpc_url,
           ("tritonserver", "http"): server.triton_http_url, ("tritonserver", "grpc"): server.triton_grpc_url}
    client = module.InferenceServerClient(url[(port, protocol)])
    if port == "tritonserver":  # its own port answers only the gateway (tests/test_upstream_door.py): send its key
        with_keys(client, gateway_key=server.gateway_key, protocol=protocol)
    marker = tmp_path / "uploaded-code-ran"
    config, files = _upload_parameters(marker)
    calls = {
        "upload": lambda: client.load_model("probe", config=config, files=files),
        "unload": lambda: client.unload_model("widefunnel"),
        "shm": lambda: client.register_system_shared_memory("stub", "/triton_python_backend_shm_region_1", 64),
        "config": lambda: client.get_model_config("widefunnel"),
        "index": lambda: client.get_model_repository_index(),
        "log settings": lambda: client.update_log_settings({"log_verbose_level": 1}),
        "trace": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
    }
    for what, call in calls.items():
        if port == "gateway" and what == "upload":  # a model the repository does not have never gets past the gateway
            with pytest.raises(InferenceServerException, match="'probe': not a model of this repository"):
                call()
            continue
        with pytest.raises(InferenceServerException, match="restricted") as info:
            call()
        assert "widefunnel-admin-key" in info.value.message(), what
    time.sleep(1.0)
    assert not marker.exists(), "uploaded code ran"
    assert client.is_model_ready("widefunnel") and client.is_server_live()  # health stays open
    assert client.get_model_metadata("widefunnel")  # metadata stays open
    assert client.get_inference_statistics("widefunnel")  # statistics stay open
    client.close()
    assert np.array_equal(_answer(server, protocol).item_id, _answer(server, "grpc").item_id)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:  # metrics stay open
        assert b"nv_inference_request_success" in response.read()


@pytest.fixture(scope="module")
def own_server(built_repository, tmp_path_factory):
    """These tests unload models and kill stubs."""
    yield from private_server(built_repository, tmp_path_factory, "hostile")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_with_the_key_unload_load_and_shared_memory_work(own_server, protocol):
    before = _answer(own_server)
    client = admin_client(own_server, protocol)
    client.unload_model("quota_merge", unload_dependents=True)
    deadline = time.monotonic() + 30
    while client.is_model_ready("widefunnel") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not client.is_model_ready("widefunnel")
    for name in ("quota_merge", "widefunnel"):
        client.load_model(name)
    assert np.array_equal(_answer(own_server, protocol).item_id, before.item_id)
    key = f"/widefunnel_test_{os.getpid()}_{protocol}"
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 64)
    try:
        client.register_system_shared_memory("mine", key, 64)
        status = client.get_system_shared_memory_status()
        names = [r.name for r in status.regions.values()] if protocol == "grpc" else [r["name"] for r in status]
        assert "mine" in names
        client.unregister_system_shared_memory("mine")
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm{key}")
    client.close()


def test_swap_without_the_key_says_how_to_pass_it(server, built_repository, tmp_path, monkeypatch):
    monkeypatch.delenv("WIDEFUNNEL_ADMIN_KEY", raising=False)
    monkeypatch.delenv("WIDEFUNNEL_ADMIN_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no key file there
    proc = subprocess.run([sys.executable, "-m", "widefunnel.cli", "swap", "--to", "1", "--url", server.http_url,
                           "--repository", str(built_repository)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "WIDEFUNNEL_ADMIN_KEY" in proc.stderr and "--admin-key-file" in proc.stderr, proc.stderr
    (tmp_path / "wrong").write_text("x" * 40)
    os.chmod(tmp_path / "wrong", 0o600)
    proc = subprocess.run([sys.executable, "-m", "widefunnel.cli", "swap", "--to", "1", "--url", server.http_url,
                           "--repository", str(built_repository), "--admin-key-file", str(tmp_path / "wrong")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "refused this admin key" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------------- hostile requests
def _nested_json(depth: int = 50_000) -> bytes:
    return (b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":' + b"[" * depth + b"1"
            + b"]" * depth + b"}]}")


def _overflow_http(model: str, name: str) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": name, "datatype": "INT64", "shape": [1, 2**61],
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    return header, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def _overflow_grpc(model: str, name: str):
    request = service_pb2.ModelInferRequest(model_name=model)
    if model == "widefunnel_score":
        request.inputs.add(name="seed_item_id", datatype="INT64", shape=[1, 1])
        request.raw_input_contents.append(np.array([[50]], np.int64).tobytes())
    request.inputs.add(name=name, datatype="INT64", shape=[1, 2**61])
    request.raw_input_contents.append(b"")
    return request


def test_hostile_requests_are_refused_and_serving_stays_intact(server):
    before = {p: _answer(server, p) for p in PROTOCOLS}
    stubs = set(stub_processes(server.process.pid))
    restarts = list(server.supervisor.restarts)
    infer = f"http://{server.http_url}/v2/models/widefunnel/infer"
    status, body = _post(infer, _nested_json())
    assert status == 400 and "nested deeper" in body
    bomb = gzip.compress(json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1],
                                                 "data": [1]}], "parameters": {"x": "a" * (200 << 20)}}).encode())
    assert len(bomb) < 400_000
    status, body = _post(infer, bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "inflates to more than" in body
    status, body = _post(infer, b"x" * (40 << 20))
    assert status == 413
    big = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
                      "parameters": {"x": "a" * 100_000}}).encode()
    status, body = _post(infer, big)
    assert status == 413 and "parameter 'x' is longer than 256 bytes" in body
    for model, name in (("widefunnel_score", "candidate_item_id"), ("rerank_engagement", "CANDIDATE_ID"),
                        ("preprocess", "seed_item_id")):
        header, headers = _overflow_http(model, name)
        status, body = _post(f"http://{server.http_url}/v2/models/{model}/infer", header, headers)
        assert status == 400 and f"input '{name}'" in body, body
        with pytest.raises(grpc.RpcError) as info:
            _grpc_stub(server.grpc_url).ModelInfer(_overflow_grpc(model, name))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"input '{name}'" in info.value.details()
    request = service_pb2.ModelInferRequest(model_name="widefunnel")
    request.parameters["x"].string_param = "a" * 100_000
    request.inputs.add(name="seed_item_id", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(1)
    with pytest.raises(grpc.RpcError, match="parameter 'x' is longer than 256 bytes"):
        _grpc_stub(server.grpc_url).ModelInfer(request)
    assert server.alive()
    assert set(stub_processes(server.process.pid)) == stubs, "a stub died"
    assert server.supervisor.restarts == restarts
    for protocol in PROTOCOLS:
        after = _answer(server, protocol)
        assert np.array_equal(after.item_id, before[protocol].item_id)
        assert np.array_equal(after.score, before[protocol].score)


@pytest.mark.parametrize("data, message", [
    (["50"], "must be INT64 values"), ([2**63], "must be INT64 values"), ([50, 1], "needs 1 values"),
    ([[[50]]], None),  # nested like the shape: accepted, as by Triton
])
def test_http_json_errors_name_the_input(server, data, message):
    body = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1], "data": data}]})
    status, text = _post(f"http://{server.http_url}/v2/models/widefunnel/infer", body.encode())
    if message is None:
        assert status == 200, text
    else:
        assert status == 400 and "seed_item_id" in text and message in text, text


DIRECT = [
    ("query_tower", {"ITEM_ID": np.array([[-1]], np.int64)}, "ITEM_ID: item ids must be within"),
    ("query_tower", {"ITEM_ID": np.array([[-1683]], np.int64)}, "ITEM_ID: item ids must be within"),
    ("composite_scorer", {"ITEM_ID": np.array([[-5]], np.int64), "CANDIDATE_ID": np.array([[1, 2]], np.int64),
                          "VALUE_WEIGHTS": np.ones((1, 4), np.float32)}, "ITEM_ID: item ids"),
    ("composite_scorer", {"ITEM_ID": np.array([[5]], np.int64), "CANDIDATE_ID": np.array([[0, 2]], np.int64),
                          "VALUE_WEIGHTS": np.ones((1, 4), np.float32)}, "CANDIDATE_ID: item ids"),
    ("composite_scorer", {"ITEM_ID": np.array([[5]], np.int64), "CANDIDATE_ID": np.array([[1, 2]], np.int64),
                          "VALUE_WEIGHTS": np.full((1, 4), np.nan, np.float32)}, "VALUE_WEIGHTS: must be finite"),
    ("composite_scorer", {"ITEM_ID": np.ones((3, 1), np.int64), "CANDIDATE_ID": np.ones((3, 100_000), np.int64),
                          "VALUE_WEIGHTS": np.ones((3, 4), np.float32)}, "CANDIDATE_ID': 300000 values in one request"),
    ("rerank_engagement", {"QUERY": np.full((1, 32), np.nan, np.float32), "CANDIDATE_ID": np.array([[1, 2]]),
                           "KEEP": np.ones((1, 1), np.int32)}, "QUERY: must be finite"),
    ("rerank_relevance", {"QUERY": np.ones((1, 32), np.float32), "CANDIDATE_ID": np.array([[1, 2, 3]]),
                          "KEEP": np.zeros((1, 1), np.int32)}, "KEEP: must be >= 1"),
    ("rerank_relevance", {"QUERY": np.ones((1, 32), np.float32), "CANDIDATE_ID": np.array([[1, 0, 3]]),
                          "KEEP": np.ones((1, 1), np.int32)}, "CANDIDATE_ID: item ids"),
    ("ann_engagement", {"QUERY": np.ones((1, 32), np.float32), "NPROBE": np.array([[2]], np.int32)},
     "NPROBE: this model searches exactly"),
    ("ann_relevance", {"QUERY": np.full((1, 32), np.inf, np.float32)}, "QUERY: must be finite"),
    ("ann_relevance", {"QUERY": np.ones((4, 32), np.float32), "K": np.full((4, 1), 100_000, np.int32)},
     "K: 400000 candidates"),
]

EMPTY_OR_WIDE = [  # refused by name before a graph or scan runs (an ONNX gather over nothing fails INTERNAL)
    ("rerank_engagement", {"QUERY": np.ones((1, 32), np.float32), "CANDIDATE_ID": np.zeros((1, 0), np.int64),
                           "KEEP": np.ones((1, 1), np.int32)}, "CANDIDATE_ID: empty input (shape [1, 0])"),
    ("rerank_relevance", {"QUERY": np.ones((1, 32), np.float32), "CANDIDATE_ID": np.zeros((1, 0), np.int64),
                          "KEEP": np.ones((1, 1), np.int32)}, "CANDIDATE_ID: empty input (shape [1, 0])"),
    ("composite_scorer", {"ITEM_ID": np.array([[5]], np.int64), "CANDIDATE_ID": np.zeros((1, 0), np.int64),
                          "VALUE_WEIGHTS": np.ones((1, 4), np.float32)}, "CANDIDATE_ID: empty input"),
    # a direct call has no width limit in front of it: the step bounds EXCLUDE_IDS by the build's max_exclude
    ("ann_engagement", {"QUERY": np.ones((1, 32), np.float32), "EXCLUDE_IDS": np.full((1, 5000), -1, np.int64)},
     "input 'EXCLUDE_IDS': 5000 values per seed; at most 1000"),  # the gateway's bound, from the build
    ("ann_relevance", {"QUERY": np.ones((2, 32), np.float32), "EXCLUDE_IDS": np.zeros((2, 0), np.int64)},
     "EXCLUDE_IDS: between 1 and 1000 values per query, got 0"),
]
DIRECT += EMPTY_OR_WIDE


def _merge_inputs(**changes) -> dict[str, np.ndarray]:
    tensors = {"ALPHA": np.array([[0.5]], np.float32), "TOP_N": np.array([[5]], np.int32)}
    for prefix in ("ENG", "REL"):
        tensors |= {f"{prefix}_ID": np.arange(1, 11, dtype=np.int64)[None], f"{prefix}_SCORE":
                    np.linspace(1, 0, 10, dtype=np.float32)[None], f"{prefix}_PROBS": np.full((1, 10, 3), 0.5,
                                                                                                np.float32)}
    tensors |= {n: np.array([[7]], np.int64) for n in ("FP_TOWER", "FP_ANN_ENGAGEMENT", "FP_ANN_RELEVANCE",
                                                       "FP_RERANK_ENGAGEMENT", "FP_RERANK_RELEVANCE",
                                                       "FP_SCORER_ENGAGEMENT", "FP_SCORER_RELEVANCE")}
    return tensors | changes


DIRECT += [
    ("quota_merge", _merge_inputs(ENG_SCORE=np.ones((1, 9), np.float32)), "ENG_SCORE: shape [1, 9] does not match"),
    ("quota_merge", _merge_inputs(TOP_N=np.array([[1_000_000]], np.int32)), "TOP_N: must be within [1, 100]"),
    ("quota_merge", _merge_inputs(REL_ID=np.full((1, 10), -7, np.int64)), "REL_ID: item ids must be within"),
    ("quota_merge", _merge_inputs(ALPHA=np.array([[np.nan]], np.float32)), "ALPHA: must be within [0, 1]"),
    ("quota_merge", _merge_inputs(ENG_ID=np.zeros((1, 0), np.int64), ENG_SCORE=np.zeros((1, 0), np.float32),
                                  ENG_PROBS=np.zeros((1, 0, 3), np.float32)), "ENG_ID: expected shape [1, M] (M >= 1)"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model, tensors, message", DIRECT, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(DIRECT)])
def test_direct_step_calls_refuse_what_they_cannot_answer(server, protocol, model, tensors, message):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with WidefunnelClient(url, protocol) as client, pytest.raises(Exception) as info:
        client.infer(model, tensors)
    text = str(info.value)
    assert message in text and model in text, text
    assert isinstance(info.value, InvalidRequest), (type(info.value), info.value.status)  # 400 / INVALID_ARGUMENT


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refusals_of_direct_calls_leave_the_answers_identical(server, protocol):
    before = _answer(server, protocol)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with WidefunnelClient(url, protocol) as client:
        for model, tensors, _ in EMPTY_OR_WIDE:
            with pytest.raises(InvalidRequest):
                client.infer(model, tensors)
    after = _answer(server, protocol)
    assert np.array_equal(after.item_id, before.item_id) and np.array_equal(after.score, before.score)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value, message", [
    (b"x" * (1 << 20), "input 'include_genre': element 0 is 1048576 bytes; at most 256"),  # refused at the gateway
    (b"", "include_genre: empty value at seed 0, position 0"),
    (b"Opera" * 40, "include_genre: unknown value 'OperaOpera"),
])
def test_a_bad_filter_value_is_refused_by_name_in_a_short_message(server, protocol, value, message):
    """A 1 MiB value echoed into a gRPC status would come back RESOURCE_EXHAUSTED, without the reason."""
    before = _answer(server, protocol)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    tensors = {"seed_item_id": np.array([[1]], np.int64), "include_genre": np.array([[value]], dtype=object)}
    with WidefunnelClient(url, protocol) as client, pytest.raises(InvalidRequest) as info:
        client.infer("widefunnel", tensors)
    assert message in str(info.value) and info.value.field == "include_genre", str(info.value)[:500]
    assert len(str(info.value)) < 600, len(str(info.value))
    after = _answer(server, protocol)
    assert np.array_equal(after.item_id, before.item_id) and np.array_equal(after.score, before.score)


def _latencies(url: str, n: int) -> list[float]:
    out = []
    with WidefunnelClient(url, "grpc") as client:
        for _ in range(n):
            start = time.monotonic()
            client.recommend([1], top_n=5)
            out.append(time.monotonic() - start)
    return sorted(out)


def test_the_largest_allowed_filter_request_does_not_stall_other_clients(server):
    """64 seeds x 64 genre names (the most a request may carry) cost preprocess time linear in what it accepts;
    one over the bound is refused by name. Measured, not timed tightly: the small client's p99 while the big
    requests run stays within a generous bound of its own p99 plus the big request's own service time."""
    import threading

    from widefunnel.validation import MAX_FILTER_VALUES, MAX_REQUEST_FILTER_VALUES

    genres = [b"Action", b"Comedy", b"Drama", b"Romance", b"Thriller", b"Horror", b"Sci-Fi", b"War"]
    batch = MAX_REQUEST_FILTER_VALUES // MAX_FILTER_VALUES
    names = np.array([[genres[(i + j) % len(genres)] for j in range(MAX_FILTER_VALUES)] for i in range(batch)],
                     dtype=object)
    big = {"seed_item_id": np.arange(1, batch + 1, dtype=np.int64)[:, None], "include_genre": names,
           "exclude_genre": names[:, :1].copy(), "top_n": np.full((batch, 1), 5, np.int32)}
    with WidefunnelClient(server.grpc_url, "grpc") as client:
        client.infer("widefunnel", big)  # warm
        start = time.monotonic()
        client.infer("widefunnel", big)
        big_s = time.monotonic() - start
        over = big | {"include_genre": np.concatenate([names, names[:, :1]], axis=1)}
        with pytest.raises(InvalidRequest, match="input 'include_genre': 65 values per seed; at most 64"):
            client.infer("widefunnel", over)
    idle = _latencies(server.grpc_url, 40)
    stop, errors = threading.Event(), []

    def flood() -> None:
        with WidefunnelClient(server.grpc_url, "grpc") as c:
            while not stop.is_set():
                try:
                    c.infer("widefunnel", big)
                except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=flood) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        loaded = _latencies(server.grpc_url, 40)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[0]
    p99_idle, p99_loaded = idle[int(0.99 * len(idle))], loaded[int(0.99 * len(loaded))]
    logging.getLogger(__name__).info("big request %.3fs; small p99 idle %.3fs, under load %.3fs",
                                     big_s, p99_idle, p99_loaded)
    # before the bounds, one 25.6 MB request held preprocess for 8.7 s and others waited up to 5 s
    assert big_s < 2.0, big_s
    assert p99_loaded < 5 * p99_idle + 3 * big_s + 1.0, (p99_idle, p99_loaded, big_s)


def test_a_valid_direct_merge_call_is_answered(server):
    with WidefunnelClient(server.grpc_url, "grpc") as client:
        result = client.infer("quota_merge", _merge_inputs())
    assert result.as_numpy("item_id").shape == (1, 5) and (result.as_numpy("item_id") > 0).all()
    with WidefunnelClient(server.grpc_url, "grpc") as client, pytest.raises(Unavailable, match="different builds"):
        client.infer("quota_merge", _merge_inputs(FP_TOWER=np.array([[8]], np.int64)))  # a mixed build


def _gateway_series(server) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(r'^widefunnel_requests_total\{code="(\w+)",model="(\w+)",protocol="(\w+)"\} (\S+)$')
    return {m.groups()[:3]: float(m.group(4)) for m in map(pattern.match, text.splitlines()) if m}


def test_refusals_count_once_as_failures_in_the_metrics(server):
    before = _gateway_series(server)
    with WidefunnelClient(server.grpc_url, "grpc") as c:
        c.recommend([1])
        with pytest.raises(Exception, match="seed_item_id"):
            c.recommend([99_999])
    with WidefunnelClient(server.http_url, "http") as c, pytest.raises(Exception, match="alpha"):
        c.recommend([1], alpha=2.0)
    _post(f"http://{server.http_url}/v2/models/widefunnel/infer", _nested_json(100))
    after = _gateway_series(server)

    def delta(*key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta("OK", "widefunnel", "grpc") == 1
    assert delta("INVALID_ARGUMENT", "widefunnel", "grpc") == 1
    assert delta("INVALID_ARGUMENT", "widefunnel", "http") == 2


# -------------------------------------------------------------------------------------- crashes and memory
@pytest.mark.parametrize("victim", ["preprocess", "quota_merge"])
def test_dead_stub_is_replaced_in_place_without_zombie_or_orphaned_region(own_server, victim):
    before = _answer(own_server)
    client = httpclient.InferenceServerClient(own_server.http_url)
    regions = len(shm_regions(own_server.shm_prefix))
    victims = [pid for pid, (model, _, _) in stub_processes(own_server.process.pid).items() if model == victim]
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    deadline, after, ensemble_down = time.monotonic() + 60, None, False
    while time.monotonic() < deadline:
        ensemble_down |= not client.is_model_ready("widefunnel")
        try:  # a short deadline: a request the stub took with it may never be answered (docs/SECURITY.md)
            after = _answer(own_server, timeout=5.0)
            break
        except Exception:  # noqa: BLE001 - requests while the stub restarts may fail; later ones must not
            time.sleep(0.2)
    assert after is not None and np.array_equal(after.item_id, before.item_id)
    assert not ensemble_down, "the ensemble was unloaded while its step restarted"
    assert reloaded(own_server, victim), own_server.supervisor.restarts
    assert not zombies(own_server.process.pid)
    deadline = time.monotonic() + 60  # the dead stub's region goes once no live stub maps it
    while len(shm_regions(own_server.shm_prefix)) > regions and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(shm_regions(own_server.shm_prefix)) <= regions
    client.close()


# The documented budget (docs/SECURITY.md): after any request, allowed or refused, the server and its stubs
# stay within this much of their resident size after warm-up.
RSS_MARGIN_KIB = 150 * 1024


def test_memory_returns_after_the_largest_allowed_and_refused_requests(own_server):
    rng = np.random.default_rng(0)
    with WidefunnelClient(own_server.grpc_url, "grpc") as c:
        for _ in range(20):
            c.recommend(SEEDS, top_n=10)
        c.score([1], np.arange(1, 1001)[None])
        idle = tree_rss_kib(own_server.process.pid)
        for seeds, width in ((2, 100_000), (64, 3_125), (8, 25_000)):  # at max_request_candidates
            c.score(rng.integers(1, 1683, seeds), rng.integers(1, 1683, (seeds, width)))
        with pytest.raises(Exception, match="candidate_item_id"):
            c.score([1, 2, 3], rng.integers(1, 1683, (3, 100_000)))
        infer = f"http://{own_server.http_url}/v2/models/widefunnel/infer"
        _post(infer, gzip.compress(b"{" + b" " * (100 << 20) + b"}"), {"Content-Encoding": "gzip"})
        _post(infer, b"[" * (30 << 20))
        for _ in range(10):
            c.recommend(SEEDS, top_n=10)
    after = tree_rss_kib(own_server.process.pid)
    assert after <= idle + RSS_MARGIN_KIB, (idle, after)


def test_serve_restarts_a_crashed_server_and_says_why(built_repository, tmp_path):
    from widefunnel.server import free_port

    ports = [free_port() for _ in range(3)]
    env = dict(os.environ, WIDEFUNNEL_ADMIN_KEY="k" * 32, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - the child's output
    proc = subprocess.Popen([sys.executable, "-m", "widefunnel.cli", "serve", "--repository", str(built_repository),
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
                             str(ports[2])], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    probe = type("P", (), {"grpc_url": f"127.0.0.1:{ports[1]}", "http_url": f"127.0.0.1:{ports[0]}"})()

    def wait_for(text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = (tmp_path / "serve.log").read_text()
            if text in output:
                return output
            assert proc.poll() is None, output
            time.sleep(0.5)
        raise AssertionError(f"{text!r} not seen:\n{(tmp_path / 'serve.log').read_text()}")

    try:
        output = wait_for("serving;")
        assert f"HTTP    http://127.0.0.1:{ports[0]}" in output  # loopback unless --host says otherwise
        before = _answer(probe)
        triton = next(pid for pid in children(proc.pid) if b"tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes())
        started = time.monotonic()
        # A crash as deep JSON on the server's own port caused before the gateway key (issue 33) refused it there.
        os.kill(triton, signal.SIGSEGV)
        output = wait_for("restarted; serving again")
        assert "the server died: tritonserver killed by SIGSEGV" in output, output
        assert time.monotonic() - started < 60
        assert np.array_equal(_answer(probe).item_id, before.item_id)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()


# ------------------------------------------------------------------------------------------------- fuzzing
STEP_INPUTS = {  # name -> (dtype, shape without batch; -1 = a random width)
    "query_tower": {"ITEM_ID": (np.int64, (1,))},
    "ann_engagement": {"QUERY": (np.float32, (32,)), "K": (np.int32, (1,)), "EXCLUDE_ID": (np.int64, (1,))},
    "rerank_relevance": {"QUERY": (np.float32, (32,)), "CANDIDATE_ID": (np.int64, (-1,)),
                         "KEEP": (np.int32, (1,))},
    "composite_scorer": {"ITEM_ID": (np.int64, (1,)), "CANDIDATE_ID": (np.int64, (-1,)),
                         "VALUE_WEIGHTS": (np.float32, (4,))},
    "preprocess": {"seed_item_id": (np.int64, (1,)), "top_n": (np.int32, (1,)), "alpha": (np.float32, (1,))},
}


def _random_tensor(rng, dtype, shape, batch, width):
    dims = (batch, *[width if d == -1 else d for d in shape])
    if rng.random() < 0.1:  # a wrong width now and then
        dims = (batch, *[max(1, d + int(rng.integers(-1, 2))) for d in dims[1:]])
    if dtype == np.float32:
        values = rng.standard_normal(dims).astype(np.float32)
        if rng.random() < 0.3:
            values.flat[int(rng.integers(values.size))] = rng.choice([np.nan, np.inf, -np.inf])
        return values
    low, high = (-2000, 3000) if rng.random() < 0.3 else (1, 1683)
    return rng.integers(low, high, dims).astype(dtype)


def _fuzz_http(rng, server, i: int) -> tuple[int, str]:
    url = f"http://{server.http_url}/v2/models/{rng.choice(['widefunnel', 'widefunnel_score', 'query_tower'])}/infer"
    kind = i % 8
    valid = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1], "data": [50]}]})
    headers: dict[str, str] = {}
    if kind == 0:
        body = rng.bytes(int(rng.integers(0, 5000)))
    elif kind == 1:
        body = valid.encode()[: int(rng.integers(0, len(valid)))]
    elif kind == 2:  # random shapes, types and data in JSON
        shape = [int(d) for d in rng.choice([-1, 0, 1, 2, 2**31, 2**62], size=int(rng.integers(0, 4)))]
        choices = [[1], ["1"], [1.5], [[1]], [None], [True], []]
        data = choices[int(rng.integers(len(choices)))] if rng.random() < 0.5 else [1]
        body = json.dumps({"inputs": [{"name": rng.choice(["seed_item_id", "alpha", "x"]), "shape": shape,
                                       "datatype": rng.choice(["INT64", "FP32", "BYTES", "INT8", "??"]),
                                       "data": data}]}).encode()
    elif kind == 3:  # binary extension, header length and sizes out of line
        header = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1],
                                         "parameters": {"binary_data_size": int(rng.integers(-8, 64))}}]}).encode()
        body = header + rng.bytes(int(rng.integers(0, 32)))
        headers["Inference-Header-Content-Length"] = str(rng.choice([len(header), -1, len(body) + 9, 0]))
    elif kind == 4:
        body = gzip.compress(rng.bytes(100)) if rng.random() < 0.5 else rng.bytes(100)
        headers["Content-Encoding"] = str(rng.choice(["gzip", "deflate", "br", "x"]))
    elif kind == 5:
        depth = int(rng.integers(30, 5000))
        body = b'{"inputs":[{"name":"seed_item_id","datatype":"INT64","shape":[1,1],"data":' + b"[" * depth + \
            b"1" + b"]" * depth + b"}]}"
    elif kind == 6:
        url = f"http://{server.http_url}/v2/models/{rng.choice(['..', '%2e%2e', 'a/b', 'nope', 'x' * 300])}/infer"
        body = valid.encode()
    else:
        body = json.dumps({"inputs": json.loads(valid)["inputs"], "outputs": [{"name": f"o{j}"} for j in
                                                                             range(int(rng.integers(0, 200)))],
                           "parameters": {"p": "a" * int(rng.integers(0, 9000))}}).encode()
    try:
        return _post(url, body, headers)
    except (urllib.error.URLError, ConnectionError) as exc:
        return -1, str(exc)


def _fuzz_grpc(rng, stub, i: int) -> str | None:
    if i % 5 == 0:
        raw = rng.bytes(int(rng.integers(1, 400)))
        call = stub._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer") if hasattr(stub, "_channel") \
            else None
        if call is None:
            return None
        try:
            call(raw, timeout=30)
        except grpc.RpcError as exc:
            return exc.details() or exc.code().name
        return None
    request = service_pb2.ModelInferRequest(model_name=str(rng.choice(["widefunnel", "widefunnel_score",
                                                                        "rerank_relevance", "query_tower", "../x"])))
    for _ in range(int(rng.integers(1, 4))):
        dims = [int(d) for d in rng.choice([-3, 0, 1, 2, 64, 2**40, 2**61], size=int(rng.integers(1, 4)))]
        tensor = request.inputs.add(name=str(rng.choice(["seed_item_id", "candidate_item_id", "ITEM_ID", "x"])),
                                    datatype=str(rng.choice(["INT64", "INT32", "FP32", "BYTES", "BOGUS"])), shape=dims)
        if rng.random() < 0.5:
            request.raw_input_contents.append(rng.bytes(int(rng.integers(0, 64))))
        else:
            tensor.contents.int64_contents.extend(rng.integers(-5, 2000, int(rng.integers(0, 5))).tolist())
    if rng.random() < 0.2:
        request.parameters["p"].string_param = "a" * int(rng.integers(0, 10_000))
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.details() or exc.code().name
    return None


def test_fuzz_transport_level_and_direct_step_calls(server):
    before = {p: _answer(server, p) for p in PROTOCOLS}
    stubs = set(stub_processes(server.process.pid))
    restarts = list(server.supervisor.restarts)
    rng = np.random.default_rng(11)
    http_statuses = [_fuzz_http(rng, server, i)[0] for i in range(240)]
    assert all(s in (200, 400, 404, 413, 415) for s in http_statuses), sorted(set(http_statuses))
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    stub._channel = channel
    grpc_errors = [_fuzz_grpc(rng, stub, i) for i in range(240)]
    assert sum(e is not None for e in grpc_errors) > 200  # nearly everything random is refused, none hangs
    answered = 0
    for i in range(200):
        model = list(STEP_INPUTS)[i % len(STEP_INPUTS)]
        batch, width = int(rng.integers(1, 5)), int(rng.integers(1, 50))
        tensors = {n: _random_tensor(rng, d, s, batch, width) for n, (d, s) in STEP_INPUTS[model].items()
                   if rng.random() < 0.9}
        if "K" in tensors:
            tensors["K"] = np.full((batch, 1), int(rng.integers(-5, 300)), np.int32)
        protocol = PROTOCOLS[i % 2]
        with WidefunnelClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol) as c:
            try:
                result = c.infer(model, tensors)
            except Exception as exc:  # noqa: BLE001 - a refusal must say what is wrong
                assert str(exc), model
                continue
        answered += 1
        for output in result.get_response()["outputs"] if protocol == "http" else result.get_response().outputs:
            name = output["name"] if protocol == "http" else output.name
            values = result.as_numpy(name)
            if values.dtype.kind == "f":
                assert not np.isnan(values).any(), (model, name, {k: v.shape for k, v in tensors.items()})
    assert answered > 10
    assert server.alive() and set(stub_processes(server.process.pid)) == stubs, "a stub died"
    assert server.supervisor.restarts == restarts
    for protocol in PROTOCOLS:
        assert np.array_equal(_answer(server, protocol).item_id, before[protocol].item_id)


def test_gateway_answers_uncompressed_unless_the_client_asks(server):
    """perf_analyzer's libcurl cannot read gzip it did not ask for: the gateway must not ask Triton for it."""
    body = json.dumps({"inputs": [{"name": "seed_item_id", "datatype": "INT64", "shape": [1, 1], "data": [50]}]})
    url = f"http://{server.http_url}/v2/models/widefunnel/infer"
    for accept, encoded in ((None, False), ("gzip", True)):
        request = urllib.request.Request(url, data=body.encode(), method="POST",
                                         headers={"Accept-Encoding": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            assert (response.headers.get("Content-Encoding") == "gzip") is encoded
        text = gzip.decompress(raw) if encoded else raw
        assert json.loads(text)["outputs"]
