"""Hardening: fuzzed bad input, a bounded soak, corrupt artifacts, crashes and interrupted builds."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import admin_client, private_server
from tritonclient.utils import InferenceServerException

from widefunnel import model_configs as mcfg
from widefunnel.builders import repository as repo_mod
from widefunnel.client.client import AsyncWidefunnelClient, WidefunnelClient, build_inputs
from widefunnel.server import TritonServer, tree_rss_kib

SEEDS = [1, 50, 181]
# Every refusal must name what is wrong: the input (ours or Triton's "input 'x'") or the batch size.
FIELDS = ("seed_item_id", "alpha", "top_n", "value_weights", "candidate_item_id", "K:", "batch-size")


def _malformed(rng: np.random.Generator, i: int) -> tuple[str, dict[str, np.ndarray]]:
    """One malformed request for the ensemble (or, for oversized k, the ANN model). Cycles through kinds."""
    ok = np.array([[1]], np.int64)
    kinds = [
        lambda: {"seed_item_id": rng.integers(1683, 10**9, (1 + i % 3, 1)).astype(np.int64)},  # unknown ids
        lambda: {"seed_item_id": -rng.integers(1, 10**6, (1, 1)).astype(np.int64)},  # negative ids
        lambda: {"seed_item_id": rng.random((1, 1)).astype([np.float32, np.float64, np.int32][i % 3])},  # dtype
        lambda: {"seed_item_id": np.ones((1, 2 + i % 5), np.int64)},  # shape
        lambda: {"seed_item_id": np.ones((65 + i % 100, 1), np.int64)},  # over max_batch_size
        lambda: {"seed_item_id": ok, "alpha": np.array([[[np.nan, np.inf, -np.inf, -0.5, 1.5][i % 5]]], np.float32)},
        lambda: {"seed_item_id": ok, "alpha": np.array([[0.5]], np.float64)},
        lambda: {"seed_item_id": ok, "top_n": np.array([[[0, -1, 101, 10**6, -(2**31)][i % 5]]], np.int32)},
        lambda: {"seed_item_id": ok, "top_n": np.array([[10]], np.int64)},
        lambda: {"seed_item_id": ok, "value_weights": np.full((1, 4), [np.nan, np.inf, -1.0][i % 3], np.float32)},
        lambda: {"seed_item_id": ok, "value_weights": np.ones((1, 1 + i % 3), np.float32)},
        lambda: {"alpha": np.array([[0.5]], np.float32)},  # missing seed_item_id
        lambda: {"seed_item_id": ok, "alpha": np.ones((2, 1), np.float32)},  # alpha batch disagrees
        lambda: {"seed_item_id": np.zeros((1, 1), np.int64)},  # id 0 is padding, not an item
    ]
    kind = i % (len(kinds) + 1)
    if kind == len(kinds):  # oversized k straight to the ANN step
        return "ann_engagement", {"QUERY": rng.standard_normal((1, 32)).astype(np.float32),
                                  "K": np.array([[100001 + i]], np.int32)}
    return "widefunnel", kinds[kind]()


def _send(client, module, model: str, tensors: dict[str, np.ndarray]) -> str | None:
    try:
        client.infer(model, build_inputs(module, tensors))
    except InferenceServerException as exc:
        return exc.message() or str(exc)
    return None


def test_fuzz_1000_malformed_requests_over_http_and_grpc(server):
    with WidefunnelClient(server.http_url, "http") as c:
        before = c.recommend(SEEDS, top_n=10)
    rng = np.random.default_rng(7)
    unanswered: list[tuple[str, str]] = []
    vague: list[str] = []
    sent = 0
    for protocol, module, url in (("http", httpclient, server.http_url), ("grpc", grpcclient, server.grpc_url)):
        client = module.InferenceServerClient(url)
        for i in range(520):
            model, tensors = _malformed(rng, i)
            error = _send(client, module, model, tensors)
            sent += 1
            if error is None:
                unanswered.append((protocol, str({k: (v.dtype, v.shape) for k, v in tensors.items()})))
            elif not any(f in error for f in FIELDS):
                vague.append(error)
        client.close()
    assert sent >= 1000
    assert not unanswered, f"malformed requests that were answered: {unanswered[:5]}"
    assert not vague, f"errors that name no field: {vague[:5]}"
    assert server.alive()
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with WidefunnelClient(url, protocol) as c:
            after = c.recommend(SEEDS, top_n=10)
        assert np.array_equal(before.item_id, after.item_id)
        assert np.array_equal(before.score, after.score)


def test_bounded_soak_has_no_failures_and_bounded_memory(server):
    """Concurrency 16 for a bounded time; benchmarks/soak.py runs the longer version and reports it."""
    seconds = float(os.environ.get("WIDEFUNNEL_SOAK_SECONDS", "12"))

    async def worker(client, rng, deadline, counts):
        while time.monotonic() < deadline:
            seeds = rng.choice([1, 7, 50, 98, 100, 181, 258, 423], size=int(rng.integers(1, 4)))
            try:
                rec = await client.recommend(seeds, top_n=10)
                assert (rec.item_id >= 0).all()
                counts["ok"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                counts["failed"] += 1
                counts.setdefault("errors", []).append(str(exc)[:200])

    async def run(deadline):
        counts = {"ok": 0, "failed": 0}
        clients = [AsyncWidefunnelClient(server.grpc_url if i % 2 else server.http_url, "grpc" if i % 2 else "http")
                   for i in range(16)]
        await asyncio.gather(*(worker(c, np.random.default_rng(i), deadline, counts) for i, c in enumerate(clients)))
        for c in clients:
            await c.close()
        return counts

    asyncio.run(run(time.monotonic() + 2))  # warm-up: allocator pools and stubs reach their working size
    rss_start = tree_rss_kib(server.process.pid)
    counts = asyncio.run(run(time.monotonic() + seconds))
    rss_end = tree_rss_kib(server.process.pid)
    assert counts["failed"] == 0, counts.get("errors", [])[:3]
    assert counts["ok"] > 50
    assert rss_end < rss_start * 1.25 + 50_000, (rss_start, rss_end)


@pytest.fixture(scope="module")
def own_server(built_repository, tmp_path_factory):
    """These tests break artifacts and kill the server."""
    yield from private_server(built_repository, tmp_path_factory, "hard")


def _new_version_from(repo: Path, model: str, src: int = 1, dst: int = 2) -> Path:
    target = repo / model / str(dst)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(repo / model / str(src), target)
    return target


def _load_error(server: TritonServer, model: str) -> str:
    client = admin_client(server)
    try:
        client.load_model(model)
    except InferenceServerException as exc:
        return exc.message()
    finally:
        client.close()
    return ""


@pytest.mark.parametrize("model, breaker", [
    ("query_tower", lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:500])),
    ("rerank_relevance", lambda d: (d / "model.onnx").write_bytes(b"not an onnx file")),
    ("ann_engagement", lambda d: (d / "index" / "codes.npy").write_bytes(
        (d / "index" / "codes.npy").read_bytes()[:-64])),
    ("ann_relevance", lambda d: (d / "index" / "manifest.json").write_text("{\"format\": 1")),
])
def test_corrupt_new_version_refuses_to_load_and_old_keeps_serving(own_server, model, breaker):
    repo = Path(own_server.repository)
    with WidefunnelClient(own_server.grpc_url, "grpc") as c:
        before = c.recommend(SEEDS, top_n=10)
    cfg_path = repo / model / "config.pbtxt"
    original = cfg_path.read_text()
    if model.startswith("ann_"):  # the config expects version 2, so the refusal is the artifact's fault
        config = mcfg.from_pbtxt(original)
        entries = config.parameters["tower_fingerprints"].string_value
        fp = entries.split("1=")[1].split(";")[0]
        config.parameters["tower_fingerprints"].string_value = f"{entries};2={fp}"
        cfg_path.write_text(mcfg.to_pbtxt(config))
    breaker(_new_version_from(repo, model))
    try:
        message = _load_error(own_server, model)
        assert message, "a corrupt version must not load"
        assert model in message or "version 2" in message or "refusing" in message, message
        with WidefunnelClient(own_server.http_url, "http") as c:
            after = c.recommend(SEEDS, top_n=10)
        assert np.array_equal(before.item_id, after.item_id)
        assert after.fingerprint == before.fingerprint
    finally:
        shutil.rmtree(repo / model / "2")
        cfg_path.write_text(original)
        _load_error(own_server, model)  # back to version 1 alone


def test_sigkilled_server_restarts_and_serves_the_same_results(own_server):
    with WidefunnelClient(own_server.grpc_url, "grpc") as c:
        before = c.recommend(SEEDS, top_n=10)
    own_server.kill()
    assert not own_server.alive()
    own_server.ports = type(own_server.ports)()  # fresh free ports
    own_server.start()
    with WidefunnelClient(own_server.grpc_url, "grpc") as c:
        after = c.recommend(SEEDS, top_n=10)
    assert np.array_equal(before.item_id, after.item_id)
    assert np.array_equal(before.score, after.score)


def test_interrupted_build_leaves_no_loadable_half_version(built_repository, tmp_path, test_config, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(built_repository, repo)
    calls = {"n": 0}
    real = repo_mod.save_index

    def crash_midway(*args, **kwargs):
        calls["n"] += 1
        real(*args, **kwargs)
        raise KeyboardInterrupt("builder interrupted half-way")

    monkeypatch.setattr(repo_mod, "save_index", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        repo_mod.build(repo, test_config, repo_mod.mcfg.Target("cpu"), progress=False)
    assert calls["n"] == 1
    for model in repo_mod.mcfg.STEP_MODELS:
        assert repo_mod.existing_versions(repo, model) == [1], model
    assert "model_version: 1" in (repo / "widefunnel" / "config.pbtxt").read_text()
    with TritonServer(repo) as srv, WidefunnelClient(srv.http_url, "http") as c:
        assert (c.recommend(SEEDS, top_n=5).item_id >= 0).all()
