"""Sharded ANN (issue 10): exact scatter-gather on real loopback tritonservers.

Servers (module scope, started together): one single server holding a synthetic 30k x 32 index, a 2-shard
cluster (strict router + an `allow_partial` router), a 3-shard cluster whose router also hosts a 1-shard
router over the single server. The synthetic index has blocks of identical items whose rows straddle every
shard boundary, so tie-breaking across shards is exercised, not assumed. The parts that need no server:
tests/unit/test_sharding.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from widefunnel.ann.filters import RowFields, request_bitmap
from widefunnel.ann.index import build_index
from widefunnel.ann.search import exact_search, prepare_index
from widefunnel.builders import shards as sb
from widefunnel.cli.cluster import LocalCluster, _parallel
from widefunnel.field_filters import ANY_OF, NONE_OF, genre_year_fields, pack_token
from widefunnel.server import Ports, TritonServer
from widefunnel.sharding import shard_bounds, split_index

N, D, BLOCK = 30_000, 32, 600
MODEL = "ann_engagement"
FP1, FP2 = "a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2"
OUTPUTS = ("CANDIDATE_ID", "CANDIDATE_SCORE", "FINGERPRINT", "COVERAGE")
DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "observability" / "grafana-dashboard.json"


# ------------------------------------------------------------------------------------------------ synthetic data
def _boundaries() -> list[int]:
    return sorted({b for s in (2, 3) for b, _ in shard_bounds(N, s)[1:]})


def synthetic_index(seed: int, fingerprint: str):
    """N items; one block of BLOCK identical items centred on each shard boundary (S = 2, 3) in row order.

    Rows are ordered by descending scale at build time, so each block's scale is set to the base scale found
    at its target position; the block vectors are +-c sign vectors (large norm for their scale), so queries
    aligned with them rank the whole block (one score, many rows) on top."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(N - BLOCK * 3, D)).astype(np.float32)
    base *= rng.uniform(0.5, 1.5, (len(base), 1)).astype(np.float32) / np.linalg.norm(base, axis=1, keepdims=True)
    base_scales = np.sort(np.abs(base).max(axis=1))[::-1]
    blocks = []
    for j, b in enumerate(_boundaries()):
        before = b - BLOCK // 2 - j * BLOCK  # base rows that must rank before this block
        c = float((base_scales[before - 1] + base_scales[before]) / 2)
        blocks.append(np.sign(rng.normal(size=D)).astype(np.float32) * c)
    x = np.concatenate([base] + [np.repeat(v[None], BLOCK, axis=0) for v in blocks])
    ids = rng.permutation(10 * N)[:N].astype(np.int64)
    index = build_index(x, ids, fingerprint)
    prepare_index(index)
    block_ids = [set(ids[len(base) + j * BLOCK: len(base) + (j + 1) * BLOCK].tolist()) for j in range(3)]
    return index, np.stack(blocks), block_ids


@pytest.fixture(scope="module")
def data():
    index, blocks, block_ids = synthetic_index(0, FP1)
    for b, group in zip(_boundaries(), block_ids):  # precondition: every boundary cuts through a tie block
        assert {int(index.ids[b - 1]), int(index.ids[b])} <= group
    rng = np.random.default_rng(1)
    aligned = blocks + rng.normal(scale=0.01, size=blocks.shape).astype(np.float32)
    queries = np.concatenate([aligned, rng.normal(size=(5, D)).astype(np.float32)]).astype(np.float32)
    top1 = exact_search(index, queries, 1)[0][:, 0]
    far_tie = [int(index.ids[b + 5]) for b in _boundaries()]  # an item of the tie block, past the boundary
    exclude = np.array(far_tie + top1[3:].tolist(), np.int64)
    genres = {int(i): tuple(g for g, keep in zip(("a", "b", "c"), rng.random(3) < 0.3) if keep) for i in index.ids}
    years = rng.integers(1950, 2000, int(index.ids.max()) + 1)
    years[index.ids[::7]] = 0  # unknown: no year range admits them
    fields = genre_year_fields(genres, years, ("a", "b", "c"), int(index.ids.max()) + 1)  # as a MovieLens build's
    return {"index": index, "queries": queries, "exclude": exclude, "block_ids": block_ids, "fields": fields,
            "genres": genres, "years": years}


# ------------------------------------------------------------------------------------------------ served tests
@pytest.fixture(scope="module")
def servers(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("sharded")
    src = root / "source"
    sb.write_index_repository(src, {1: data["index"]}, k=100, max_k=100_000, fields=data["fields"])
    single = TritonServer(src, Ports().resolved())
    metrics = ["--metrics-config", "summary_latencies=true"]
    two = LocalCluster(src, 2, workdir=root / "two", timeout_s=3.0, instances=1, extra_args=metrics)
    three = LocalCluster(src, 3, workdir=root / "three", instances=1)
    two.prepare()
    three.prepare()
    ann = sb.read_config(src / MODEL)
    sb.write_router_model(two.router.repository, f"{MODEL}_partial",
                          sb.router_config(ann, f"{MODEL}_partial", two.shard_urls, MODEL, allow_partial=True,
                                           timeout_s=3.0, instances=1), [1])
    sb.write_router_model(three.router.repository, f"{MODEL}_s1",
                          sb.router_config(ann, f"{MODEL}_s1", [single.grpc_url], MODEL, instances=1), [1])
    try:
        _parallel([single.start, two.start, three.start])
        yield {"source": src, "single": single, "two": two, "three": three}
    finally:
        _parallel([two.stop, three.stop, single.stop])
        single.cleanup()


def _infer(url: str, model: str, queries: np.ndarray, k: int | None = None, exclude: np.ndarray | None = None,
           outputs=OUTPUTS, client=None, filters: dict | None = None):
    tensors = {"QUERY": queries.astype(np.float32)} | (filters or {})
    if k is not None:
        tensors["K"] = np.full((len(queries), 1), k, np.int32)
    if exclude is not None:
        tensors["EXCLUDE_ID"] = exclude.reshape(-1, 1).astype(np.int64)
    inputs = []
    for name, array in tensors.items():
        t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        t.set_data_from_numpy(array)
        inputs.append(t)
    own = client is None
    client = client or grpcclient.InferenceServerClient(url)
    try:
        result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        if own:
            client.close()


ROUTERS = {1: ("three", f"{MODEL}_s1"), 2: ("two", MODEL), 3: ("three", MODEL)}


@pytest.mark.parametrize("k", [1, 100, 10_000, N + 7])
@pytest.mark.parametrize("with_exclusion", [False, True], ids=["all", "exclude-seed"])
def test_sharded_equals_single_server(servers, data, k, with_exclusion):
    queries = data["queries"]
    exclude = data["exclude"] if with_exclusion else None
    single = _infer(servers["single"].grpc_url, MODEL, queries, k, exclude, OUTPUTS[:3])
    want_ids, want_scores = exact_search(data["index"], queries, k, exclude)
    assert np.array_equal(single["CANDIDATE_ID"], want_ids)  # the single server is the exact search
    for shards, (cluster, model) in ROUTERS.items():
        got = _infer(servers[cluster].router.grpc_url, model, queries, k, exclude)
        assert np.array_equal(got["CANDIDATE_ID"], single["CANDIDATE_ID"]), f"S={shards} k={k}"
        assert np.array_equal(got["CANDIDATE_SCORE"].view(np.int32), single["CANDIDATE_SCORE"].view(np.int32))
        assert np.array_equal(got["FINGERPRINT"], single["FINGERPRINT"])
        assert (got["COVERAGE"] == 1.0).all()
    if k >= 10_000:  # each aligned query got its whole tie block, which straddles a shard boundary
        for q, group in enumerate(data["block_ids"]):
            assert group - {int(data["exclude"][q])} <= set(want_ids[q].tolist())
    if with_exclusion:
        assert not (want_ids == data["exclude"][:, None]).any()
    if k > N:
        assert want_ids.shape[1] == N and ((want_ids[:, -1] == -1) == with_exclusion).all()


@pytest.mark.parametrize("k", [10, 5_000])
def test_sharded_filters_reach_every_shard_and_stay_exact(servers, data, k):
    """Issues 18, 29 through the router: exclusion lists and field filters (genres a or b, not c, a year range)
    go to every shard, each maps them to its own rows, and the merge equals the single server and the filtered
    exact search."""
    queries, b = data["queries"], len(data["queries"])
    index = data["index"]
    exclude_ids = np.tile(np.concatenate([index.ids[:4], [-1], index.ids[10:13]]), (b, 1))
    tokens = np.concatenate([pack_token(0, ANY_OF, np.array([1, 2])), pack_token(0, NONE_OF, np.array([3]))])
    filters = {"EXCLUDE_IDS": exclude_ids.astype(np.int64), "FIELD_TOKENS": np.tile(tokens, (b, 1)),
               "FIELD_RANGES": np.tile(np.array([[1960, 1990]], np.float32), (b, 1))}
    allow = request_bitmap(index.count, prepare_index(index).rows_of, filters["EXCLUDE_IDS"],
                           RowFields(data["fields"], index.ids), filters["FIELD_TOKENS"], filters["FIELD_RANGES"])
    want_ids, _ = exact_search(index, queries, k, allow=allow)
    single = _infer(servers["single"].grpc_url, MODEL, queries, k, outputs=OUTPUTS[:3], filters=filters)
    assert np.array_equal(single["CANDIDATE_ID"], want_ids)
    admissible = set(index.ids[filters_mask(data, filters, index)].tolist())
    assert set(want_ids[want_ids >= 0].tolist()) <= admissible
    for shards, (cluster, model) in ROUTERS.items():
        got = _infer(servers[cluster].router.grpc_url, model, queries, k, filters=filters)
        assert np.array_equal(got["CANDIDATE_ID"], single["CANDIDATE_ID"]), f"S={shards} k={k}"


def filters_mask(data, filters, index) -> np.ndarray:
    """An independent reading of the filter (first query's): genre a or b, not c, year in [1960, 1990]."""
    genres = [set(data["genres"][int(i)]) for i in index.ids]
    y = data["years"][index.ids]
    ok = np.array([bool(g & {"a", "b"}) and "c" not in g for g in genres]) & (y >= 1960) & (y <= 1990)
    return ok & ~np.isin(index.ids, filters["EXCLUDE_IDS"][0])


def test_takedowns_reach_every_shard_and_stay_exact(servers, data):
    """Issue 17 through the router: `items remove --also` puts the takedowns beside every shard, each excludes
    them inside its own scan, and the merge equals the exact search of the items still up; restore undoes it."""
    from widefunnel import takedowns as td

    index, queries, k = data["index"], data["queries"], 100
    victims = np.unique(exact_search(index, queries, 3)[0]).tolist()
    ranked, _ = exact_search(index, queries, k + len(victims))
    want = np.stack([row[~np.isin(row, victims)][:k] for row in ranked])  # top-k of the items still up
    deployments = [[c.router.repository, *(s.repository for s in c.shard_servers)]
                   for c in (servers["two"], servers["three"])]
    td.take_down(servers["source"], victims, index.ids, "test")
    td.publish(servers["source"], [repo for repos in deployments for repo in repos])
    try:
        single = _infer(servers["single"].grpc_url, MODEL, queries, k, outputs=OUTPUTS[:3])
        assert np.array_equal(single["CANDIDATE_ID"], want)
        for shards, (cluster, model) in ROUTERS.items():
            got = _infer(servers[cluster].router.grpc_url, model, queries, k)
            assert np.array_equal(got["CANDIDATE_ID"], want), f"S={shards}"
    finally:
        td.restore(servers["source"], victims)
        td.publish(servers["source"], [repo for repos in deployments for repo in repos])
    assert all(not (repo / "takedowns.json").exists() or not td.read_takedowns(repo)
               for repos in deployments for repo in repos)
    got = _infer(servers["two"].router.grpc_url, MODEL, queries, k)
    assert np.array_equal(got["CANDIDATE_ID"], exact_search(index, queries, k)[0])


def test_sharded_embeddings_and_default_k_match(servers, data):
    queries, exclude = data["queries"], data["exclude"]
    outputs = ("CANDIDATE_ID", "CANDIDATE_SCORE", "CANDIDATE_EMB")
    single = _infer(servers["single"].grpc_url, MODEL, queries, None, exclude, outputs)
    got = _infer(servers["three"].router.grpc_url, MODEL, queries, None, exclude, outputs)
    assert single["CANDIDATE_ID"].shape == (len(queries), 100)  # the config's default k, no K sent
    for name in outputs:
        assert np.array_equal(got[name], single[name]), name


def test_invalid_k_stays_invalid_argument(servers, data):
    with pytest.raises(InferenceServerException) as info:
        _infer(servers["two"].router.grpc_url, MODEL, data["queries"][:1], 100_001)
    assert "INVALID_ARGUMENT" in str(info.value.status()) and "K" in info.value.message()


# ---------------------------------------------------------------------------------------------- load helpers
@contextlib.contextmanager
def _under_load(url: str, models: list[str], queries: np.ndarray, workers: int = 8, k: int = 100,
                pause: float = 0.02):
    """`workers` threads, each its own gRPC client, one query per request, for the duration of the block;
    yields the log of (start, model, query index, outputs or None, error or None)."""
    stop, log = threading.Event(), []

    def work(w: int) -> None:
        rng = np.random.default_rng(w)
        client = grpcclient.InferenceServerClient(url)
        try:
            while not stop.is_set():
                qi, model = int(rng.integers(len(queries))), models[w % len(models)]
                start = time.monotonic()
                try:
                    out = _infer(url, model, queries[qi:qi + 1], k, client=client)
                    log.append((start, model, qi, out, None))
                except InferenceServerException as exc:
                    log.append((start, model, qi, None, exc))
                time.sleep(pause)  # 8 in flight, without starving the servers of this box's 2 cores
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    try:
        yield log
    finally:
        stop.set()
        for t in threads:
            t.join()


def _fp(hex_fingerprint: str) -> int:
    """The FINGERPRINT tensor's value (int64 of the tower fingerprint, sign bit cleared)."""
    return int(hex_fingerprint, 16) & 0x7FFF_FFFF_FFFF_FFFF


def _expected(index, queries: np.ndarray, k: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    ids, scores = exact_search(index, queries, k)
    return [(ids[i], scores[i]) for i in range(len(queries))]


def test_lost_shard_fails_clearly_or_serves_marked_partial_then_recovers(servers, data):
    cluster: LocalCluster = servers["two"]
    queries = data["queries"]
    full = _expected(data["index"], queries)
    shard0 = split_index(data["index"], 2)[0].index
    prepare_index(shard0)
    partial = _expected(shard0, queries)
    victim = cluster.shard_servers[1]
    with _under_load(cluster.router.grpc_url, [MODEL, f"{MODEL}_partial"], queries) as log:
        time.sleep(1.0)
        killed_at = time.monotonic()
        victim.kill()
        time.sleep(2.0)
        restarted_at = time.monotonic()
        victim.start()
        recovered_at = time.monotonic()
        time.sleep(3.0)
    assert victim.alive()
    counts = {"full": 0, "partial": 0, "unavailable": 0}
    for _start, model, qi, out, err in log:
        if err is not None:
            assert model == MODEL, f"the partial router failed: {err}"
            assert "UNAVAILABLE" in str(err.status()), err
            assert "shard 1 of 2" in err.message() and victim.grpc_url in err.message(), err.message()
            counts["unavailable"] += 1
            continue
        coverage = float(out["COVERAGE"][0, 0])
        want = full[qi] if coverage == 1.0 else partial[qi]
        assert coverage in (1.0, 0.5) and (coverage == 1.0 or model == f"{MODEL}_partial")
        assert np.array_equal(out["CANDIDATE_ID"][0], want[0]), "a response's contents disagree with COVERAGE"
        assert np.array_equal(out["CANDIDATE_SCORE"][0], want[1])
        counts["full" if coverage == 1.0 else "partial"] += 1
    assert counts["unavailable"] > 0 and counts["partial"] > 0, counts
    during = [e for e in log if killed_at + 0.2 < e[0] < restarted_at]
    assert during and all(e[4] is not None or e[3]["COVERAGE"][0, 0] < 1 for e in during)
    late = [e for e in log if e[0] > recovered_at + 2.0]  # reconnect backoff is capped at 1 s
    assert late and all(e[4] is None and e[3]["COVERAGE"][0, 0] == 1.0 for e in late), "not recovered"
    metrics = urllib.request.urlopen(cluster.router.metrics_url, timeout=5).read().decode()
    lost = re.findall(r'^widefunnel_router_shard_failure\{model="ann_engagement",reason="unavailable",shard="1",'
                      r'version="1"\} (\d+)', metrics, re.M)
    partials = re.findall(r'^widefunnel_router_partial\{model="ann_engagement_partial",version="1"\} (\d+)', metrics,
                          re.M)
    assert lost and int(lost[0]) > 0 and partials and int(partials[0]) >= counts["partial"], (lost, partials)


def test_router_metrics_exist_for_every_dashboard_query(servers):
    """Every metric the Grafana dashboard plots is exported by this Triton (2.51, summaries enabled)."""
    _infer(servers["two"].router.grpc_url, MODEL, np.ones((1, D), np.float32), 10)
    exported = set()
    for server in (servers["two"].router, servers["two"].shard_servers[0]):
        text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
        exported |= {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:nv|widefunnel)_[a-z_]+)\b", e)}
    gpu = {m for m in used if m.startswith("nv_gpu_")}  # exported only by servers that see a GPU
    assert gpu and len(used - gpu) >= 10 and used - gpu <= exported, sorted(used - gpu - exported)


def test_version_flip_under_load_is_coherent(servers, data):
    """v2 is loaded on every shard beside v1, then the router's v2 (the switch): no failure, no mix."""
    cluster: LocalCluster = servers["two"]
    queries = data["queries"]
    index2, _, _ = synthetic_index(7, FP2)
    expected = {_fp(FP1): _expected(data["index"], queries), _fp(FP2): _expected(index2, queries)}
    with _under_load(cluster.router.grpc_url, [MODEL], queries) as log:
        time.sleep(1.0)
        sb.write_index_repository(cluster.source, {1: data["index"], 2: index2}, k=100, max_k=100_000)
        cluster.roll_out(timeout=60)
        switched_at = time.monotonic()
        time.sleep(1.5)
    errors = [e[4].message() for e in log if e[4] is not None]
    assert not errors, f"{len(errors)} failed requests, e.g. {errors[:3]}"
    seen = set()
    for start, _, qi, out, _ in log:
        fp = int(out["FINGERPRINT"][0, 0])
        assert fp in expected, fp
        seen.add(fp)
        assert np.array_equal(out["CANDIDATE_ID"][0], expected[fp][qi][0]), "a response mixes versions"
        assert np.array_equal(out["CANDIDATE_SCORE"][0], expected[fp][qi][1])
        if start > switched_at:
            assert fp == _fp(FP2)
    assert seen == set(expected) and len(log) > 50, (seen, len(log))


# ---------------------------------------------------------------------------------------------------- the CLI
def test_cli_cluster_serves_the_same_funnel_and_stops_on_sigint(built_repository, server):
    from widefunnel.client.client import WidefunnelClient

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "widefunnel.cli", "cluster", "--repository", str(built_repository),
               "--shards", "2", "--router-instances", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving"):
                break
        urls = {m.group(1): m.group(2) for m in (re.match(r"^(router|shard \d)\s+HTTP \S+\s+gRPC (\S+)", ln)
                                                 for ln in lines) if m}
        assert set(urls) == {"router", "shard 0", "shard 1"}, "".join(lines)
        seeds = [1, 50, 181, 98]
        with WidefunnelClient(urls["router"], "grpc") as routed, WidefunnelClient(server.grpc_url, "grpc") as one:
            a, b = routed.recommend(seeds, top_n=10), one.recommend(seeds, top_n=10)
            ra, rb = routed.retrieve(seeds), one.retrieve(seeds)
        assert np.array_equal(a.item_id, b.item_id) and a.fingerprint == b.fingerprint
        np.testing.assert_allclose(a.score, b.score, rtol=1e-6)
        for head in ra:
            assert np.array_equal(ra[head][0], rb[head][0]) and np.array_equal(ra[head][1], rb[head][1])
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, "".join(lines) + out
    assert "stopped router and shards" in out
    for url in urls.values():
        port = int(url.rsplit(":", 1)[1])
        assert not _answers(port), f"{url} still answers after SIGINT"


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
