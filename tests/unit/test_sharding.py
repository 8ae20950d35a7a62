"""Sharded ANN (issue 10) without a server: shard bounds, the exact merge of shard answers (ties included), the
router's parameters and the sharded repository layout. On real loopback tritonservers:
tests/served/test_sharding_served.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from widefunnel.ann.index import build_index
from widefunnel.ann.query import search
from widefunnel.ann.search import prepare_index
from widefunnel.builders import shards as sb
from widefunnel.sharding import merge_topk, parse_router_parameters, shard_bounds, split_index

N, D = 30_000, 32
MODEL = "ann_engagement"


def test_shard_bounds_cover_all_rows_contiguously():
    for count, shards in ((N, 2), (N, 3), (N, 7), (100, 3), (5, 5), (1682, 3)):
        bounds = shard_bounds(count, shards)
        assert bounds[0][0] == 0 and bounds[-1][1] == count and len(bounds) == shards
        assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    assert all(a % 64 == 0 for a, _ in shard_bounds(N, 3))
    with pytest.raises(ValueError, match="non-empty"):
        shard_bounds(2, 3)


@pytest.mark.parametrize("ivf_lists", [0, 8])
def test_merge_of_shards_equals_whole_index_with_many_ties(ivf_lists):
    """Small integer embeddings: scores tie all the time, so only a row-order tie-break can match."""
    rng = np.random.default_rng(ivf_lists)
    x = rng.integers(-2, 3, (3000, 8)).astype(np.float32)
    x[np.abs(x).sum(axis=1) == 0, 0] = 1
    ids = rng.permutation(100_000)[:3000]
    index = build_index(x, ids, "ff", ivf_lists=ivf_lists)
    prepare_index(index)
    q = rng.integers(-2, 3, (6, 8)).astype(np.float32)
    for shards in (2, 3, 5):  # 5: the merge's many-runs path
        parts = split_index(index, shards)
        assert np.array_equal(np.concatenate([p.index.ids for p in parts]), index.ids)
        for k in (1, 999, 3005):
            for exclude in (None, ids[rng.integers(0, 3000, 6)]):
                for nprobe in (2,) if ivf_lists else (None,):
                    want_ids, want_scores = search(index, q, k, exclude, nprobe)
                    got = [search(p.index, q, k, exclude, nprobe) for p in parts]
                    merged = merge_topk([g[0] for g in got], [g[1] for g in got], k)
                    assert np.array_equal(merged.ids, want_ids), (shards, k, nprobe)
                    assert np.array_equal(merged.scores.view(np.int32), want_scores.view(np.int32))


def test_merge_orders_signed_zero_like_the_search_keys():
    ids = [np.array([[7, -1]]), np.array([[3, 4]])]
    scores = [np.array([[-0.0, -np.inf]], np.float32), np.array([[0.0, -1.0]], np.float32)]
    merged = merge_topk(ids, scores, 3)
    assert merged.ids.tolist() == [[3, 7, 4]]  # +0.0 before -0.0 (raw-bit order), the pad never taken
    assert merge_topk(ids, scores, 10).ids.tolist() == [[3, 7, 4, -1]]


def test_router_parameters_are_strict():
    ok = parse_router_parameters({"shard_urls": "a:1, b:2", "shard_model": MODEL, "k": "100"})
    assert ok.shard_urls == ("a:1", "b:2") and not ok.allow_partial and ok.k == 100
    for bad, why in (({"shard_model": MODEL, "k": "1"}, "missing"), ({"shard_urls": "a:1", "shard_model": MODEL,
                     "k": "1", "colour": "red"}, "unknown"), ({"shard_urls": "a:1,a:1", "shard_model": MODEL,
                     "k": "1"}, "twice"), ({"shard_urls": "a:1", "shard_model": MODEL, "k": "1",
                     "allow_partial": "yes"}, "allow_partial"), ({"shard_urls": "a:1", "shard_model": MODEL,
                     "k": "1", "timeout_s": "-1"}, "timeout_s")):
        with pytest.raises(ValueError, match=why):
            parse_router_parameters(bad)


def test_router_repository_is_the_source_with_ann_swapped(tmp_path):
    rng = np.random.default_rng(0)
    index = build_index(rng.normal(size=(N, D)).astype(np.float32), rng.permutation(10 * N)[:N], "a1a1a1a1a1a1a1a1")
    src = tmp_path / "src"
    sb.write_index_repository(src, {1: index}, k=100)
    lay = sb.write_sharded(src, tmp_path / "out", 2, ["h0:1", "h1:2"])
    router = sb.read_config(lay.router_repository / MODEL)
    ann = sb.read_config(src / MODEL)
    assert router.backend == "python" and ann.backend == "widefunnel_ann"
    assert [t.name for t in router.input] == [t.name for t in ann.input]
    assert [t.name for t in router.output] == [t.name for t in ann.output] + ["COVERAGE"]
    assert router.parameters["shard_urls"].string_value == "h0:1,h1:2" and router.parameters["k"].string_value == "100"
    assert (lay.router_repository / MODEL / "1" / "model.py").is_file()
    rows = [json.loads((r / MODEL / "1" / "shard.json").read_text()) for r in lay.shard_repositories]
    assert [(r["row_start"], r["row_stop"]) for r in rows] == shard_bounds(N, 2)
    assert sb.read_config(lay.shard_repositories[1] / MODEL) == ann  # shards run widefunnel_ann, as today


def test_layout_is_incremental_and_keeps_dropped_versions_until_pruned(tmp_path):
    rng = np.random.default_rng(3)
    small = {v: build_index(rng.normal(size=(500, 8)).astype(np.float32), np.arange(500), fp)
             for v, fp in ((1, "c1"), (2, "c2"))}
    src = tmp_path / "src"
    sb.write_index_repository(src, {1: small[1]})
    lay = sb.write_sharded(src, tmp_path / "out", 2, ["h0:1", "h1:2"])
    first = (lay.shard_repositories[0] / MODEL / "1" / "index" / "codes.npy").stat().st_mtime_ns
    sb.write_index_repository(src, {2: small[2]})
    shutil.rmtree(src / MODEL / "1")  # the build dropped version 1
    sb.write_sharded(src, tmp_path / "out", 2, ["h0:1", "h1:2"], prune=False)
    for repo in lay.shard_repositories:
        assert sb.versions(repo / MODEL) == [1, 2]
        assert sb.read_config(repo / MODEL).parameters["tower_fingerprints"].string_value == "1=c1;2=c2"
    assert (lay.shard_repositories[0] / MODEL / "1" / "index" / "codes.npy").stat().st_mtime_ns == first
    assert sb.versions(lay.router_repository / MODEL) == [1, 2]
    sb.write_sharded(src, tmp_path / "out", 2, ["h0:1", "h1:2"])
    for repo in [*lay.shard_repositories, lay.router_repository]:
        assert sb.versions(repo / MODEL) == [2]
    assert sb.read_config(lay.shard_repositories[1] / MODEL).parameters["tower_fingerprints"].string_value == "2=c2"
    with pytest.raises(FileExistsError, match="new directory"):  # versions are immutable: no re-split to S=3
        sb.write_shard_repositories(src, [tmp_path / "out" / "shards" / f"shard-{s}" for s in range(3)])
