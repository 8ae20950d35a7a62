"""The Python-based `onnxruntime` backend equals onnxruntime called directly on the same file."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import onnxruntime as ort

from widefunnel.client.client import WidefunnelClient


def _direct(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_query_tower_equals_direct_onnxruntime(server, built_repository):
    ids = np.array([[1], [2], [50], [1682]], np.int64)
    direct = _direct(built_repository / "query_tower" / "1" / "model.onnx", {"ITEM_ID": ids})
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with WidefunnelClient(url, protocol) as c:
            served = c.infer("query_tower", {"ITEM_ID": ids})
        for name in ("EMB_ENGAGEMENT", "EMB_RELEVANCE", "FINGERPRINT"):
            np.testing.assert_allclose(served.as_numpy(name), direct[name], rtol=1e-6, atol=1e-7)


def test_dynamic_batching_keeps_each_request_its_own_answer(server, built_repository):
    """Concurrent requests of different sizes are batched by the server; each answer equals direct ORT."""
    path = built_repository / "composite_scorer" / "1" / "model.onnx"
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(24):
        b = 1 + i % 3
        jobs.append({"ITEM_ID": rng.integers(1, 1683, (b, 1)).astype(np.int64),
                     "CANDIDATE_ID": rng.integers(1, 1683, (b, 7)).astype(np.int64),
                     "VALUE_WEIGHTS": np.ones((b, 4), np.float32)})

    def call(feeds):
        with WidefunnelClient(server.grpc_url, "grpc") as c:
            return c.infer("composite_scorer", feeds).as_numpy("SCORE")

    with cf.ThreadPoolExecutor(8) as pool:
        served = list(pool.map(call, jobs))
    for feeds, got in zip(jobs, served):
        np.testing.assert_allclose(got, _direct(path, feeds)["SCORE"], rtol=1e-5, atol=1e-6)
    with WidefunnelClient(server.http_url, "http") as c:
        stats = c.statistics("composite_scorer")["model_stats"][0]
    assert int(stats["inference_count"]) >= int(stats["execution_count"])
