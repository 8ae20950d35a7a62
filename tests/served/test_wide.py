"""The wide funnel (issue 16) on a real tritonserver: the width is a request knob, limits are refused by name,
and a catalogue-scale build (200,000 items) answers K = 100,000 per head end to end, exactly as in process,
then swaps and rolls back like the default build."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest

from widefunnel import model_configs as mcfg
from widefunnel.client.client import WidefunnelClient, WidefunnelError
from widefunnel.evaluation.pipeline import InProcessFunnel

pytestmark = pytest.mark.server

WIDE_ITEMS = 200_000
SEEDS = [1, 50, 181]


@pytest.fixture(scope="module")
def reference(built_repository):
    return InProcessFunnel(built_repository)


@pytest.mark.parametrize("candidates, keep", [(5, 3), (60, 60), (1500, 400), (50_000, 100)])
def test_width_per_request_equals_in_process(client, reference, candidates, keep):
    got = client.recommend(SEEDS, top_n=20, candidates=candidates, keep=keep)
    local = reference.recommend(SEEDS, top_n=20, candidates=candidates, keep=keep)
    np.testing.assert_array_equal(got.item_id, local.item_id)
    np.testing.assert_allclose(got.score, local.score, rtol=1e-5, atol=1e-6)
    # the merge sees each head's kept candidates (the heads may share some): the width bounds the answer
    found, kept = (got.item_id >= 0).sum(axis=1), min(keep, candidates)
    assert ((found >= min(20, kept)) & (found <= min(20, 2 * kept))).all()


def test_retrieve_returns_the_width_asked_for(client, reference):
    for candidates in (7, 300):
        got = client.retrieve(SEEDS, candidates=candidates)
        local = reference.retrieve(np.asarray(SEEDS, np.int64).reshape(-1, 1), k=candidates)
        for head in mcfg.HEADS:
            assert got[head][0].shape == (len(SEEDS), candidates)
            np.testing.assert_array_equal(got[head][0], local[head][0])


@pytest.mark.parametrize("kwargs, message", [
    ({"candidates": 0}, "candidates_per_head: must be within [1, 100000], got 0"),
    ({"candidates": 100_001}, "candidates_per_head: must be within [1, 100000]"),
    ({"keep": 0}, "rerank_keep: must be within [1, 10000], got 0"),
    ({"keep": 10_001}, "rerank_keep: must be within [1, 10000]"),
])
def test_width_beyond_its_limit_is_refused_by_name(client, kwargs, message):
    with pytest.raises(WidefunnelError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        client.recommend([1], **kwargs)
    assert err.value.field == message.split(":")[0]


def test_width_over_the_request_budget_and_mixed_widths_are_refused(client):
    # 3 seeds x 100,000 candidates is over serving.max_request_candidates (200,000): the memory budget
    with pytest.raises(WidefunnelError, match="candidates_per_head: 300000 candidates in one request"):
        client.recommend([1, 2, 3], candidates=100_000)
    with pytest.raises(WidefunnelError, match="candidates_per_head: 300000 candidates in one request"):
        client.retrieve([1, 2, 3], candidates=100_000)
    with pytest.raises(WidefunnelError, match="candidates_per_head: one value for all seeds"):
        client.infer(mcfg.ENSEMBLE, {"seed_item_id": np.array([[1], [2]], np.int64),
                                      "candidates_per_head": np.array([[10], [20]], np.int32)})
    assert client.recommend([1]).item_id.shape == (1, 10)  # and the server keeps serving


def test_width_composes_with_filters(client, reference):
    """Issue 18's last clause: filters inside retrieval at a requested width stay exact."""
    filters = {"include_genres": ["Comedy"], "exclude": [2, 3, 4]}
    for candidates in (30, 2000):
        got = client.recommend(SEEDS, top_n=30, candidates=candidates, keep=50, **filters)
        local = reference.recommend(SEEDS, top_n=30, candidates=candidates, keep=50, **filters)
        np.testing.assert_array_equal(got.item_id, local.item_id)
        retrieved = client.retrieve(SEEDS, candidates=candidates, **filters)
        ref = reference.retrieve(np.asarray(SEEDS, np.int64).reshape(-1, 1),
                                 reference.filters(len(SEEDS), **filters), k=candidates)
        for head in mcfg.HEADS:
            np.testing.assert_array_equal(retrieved[head][0], ref[head][0])


# ------------------------------------------------------------------------------------------ catalogue scale
@pytest.fixture(scope="module")
def wide(tmp_path_factory, test_config):
    """A 200,000-item build (real + synthetic) served by its own server."""
    from widefunnel.builders.repository import build
    from widefunnel.server import TritonServer

    repository = tmp_path_factory.mktemp("wide") / "model_repository"
    build(repository, test_config, mcfg.Target("cpu"), progress=False, items=WIDE_ITEMS)
    server = TritonServer(repository)
    server.start()
    yield server, repository
    server.stop()
    server.cleanup()


def test_a_catalogue_scale_build_marks_its_synthetic_items(wide):
    _, repository = wide
    record = json.loads((repository / "builds.json").read_text())["1"]
    assert record["items"] == WIDE_ITEMS
    synthetic = record["synthetic_items"]
    catalogue = np.load(repository / "preprocess" / "1" / "catalogue.npy")
    assert len(catalogue) == WIDE_ITEMS and synthetic["count"] == WIDE_ITEMS - (catalogue < synthetic["first_id"]).sum()
    assert catalogue[-1] == synthetic["first_id"] + synthetic["count"] - 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_k_100000_end_to_end_equals_in_process(wide, protocol):
    server, repository = wide
    reference = InProcessFunnel(repository)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with WidefunnelClient(url, protocol) as client:
        got = client.recommend([50], top_n=100, candidates=100_000, keep=1000)
        retrieved = client.retrieve([50], candidates=100_000)
    local = reference.recommend([50], top_n=100, candidates=100_000, keep=1000)
    np.testing.assert_array_equal(got.item_id, local.item_id)
    assert (got.item_id >= 0).all()
    ref = reference.retrieve(np.array([[50]], np.int64), k=100_000)
    first_synthetic = int(json.loads((repository / "builds.json").read_text())["1"]["synthetic_items"]["first_id"])
    for head in mcfg.HEADS:
        ids = retrieved[head][0]
        assert ids.shape == (1, 100_000) and len(np.unique(ids)) == 100_000
        np.testing.assert_array_equal(ids, ref[head][0])
        assert (ids >= first_synthetic).any() and (ids < first_synthetic).any()


def test_a_catalogue_scale_build_swaps_and_rolls_back_under_load(wide, test_config):
    from widefunnel.builders.repository import build
    from widefunnel.client.swap import rollback, swap

    server, repository = wide
    config = copy.deepcopy(test_config)
    config["seed"] += 1  # another model: another fingerprint
    config["data"]["max_train_pairs"] = 20000
    for stage in ("training", "rerank", "scorer"):
        config[stage]["epochs"] = 1
    build(repository, config, mcfg.Target("cpu"), progress=False, items=WIDE_ITEMS)
    fps = {int(v): b["fingerprint"] for v, b in json.loads((repository / "builds.json").read_text()).items()}
    assert fps[1] != fps[2]
    seen, errors, stop = [], [], threading.Event()

    def load() -> None:
        with WidefunnelClient(server.grpc_url, "grpc") as client:
            while not stop.is_set():
                try:
                    seen.append(tuple(client.recommend([1, 50], candidates=5000, keep=200).fingerprint))
                except WidefunnelError as exc:
                    errors.append(str(exc))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        swap(server.http_url, repository, 2, admin_key=server.admin_key)
        with WidefunnelClient(server.grpc_url, "grpc") as client:
            after_swap = client.recommend([50], candidates=100_000).fingerprint
        rollback(server.http_url, repository, admin_key=server.admin_key)
        with WidefunnelClient(server.grpc_url, "grpc") as client:
            after_rollback = client.recommend([50], candidates=100_000).fingerprint
    finally:
        stop.set()
        thread.join(timeout=120)
    assert after_swap == [fps[2]] and after_rollback == [fps[1]]
    assert not errors, errors[:3]
    assert seen and all(len(set(fp)) == 1 for fp in seen)  # never two builds in one answer
    assert {fp[0] for fp in seen} <= {fps[1], fps[2]}
