"""The whole funnel on a real tritonserver over real HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel.client.client import InvalidRequest, WidefunnelClient
from widefunnel.evaluation.pipeline import InProcessFunnel

SEEDS = [1, 50, 181, 98, 423, 7, 100, 258]


@pytest.fixture(scope="module")
def reference(built_repository):
    return InProcessFunnel(built_repository)


def test_http_and_grpc_agree(server):
    with WidefunnelClient(server.http_url, "http") as h, WidefunnelClient(server.grpc_url, "grpc") as g:
        a, b = h.recommend(SEEDS, top_n=10), g.recommend(SEEDS, top_n=10)
    assert np.array_equal(a.item_id, b.item_id)
    assert np.array_equal(a.score, b.score)
    assert np.array_equal(a.source_head, b.source_head)
    assert a.fingerprint == b.fingerprint


def test_ensemble_matches_in_process_pipeline(client, reference):
    served = client.recommend(SEEDS, alpha=[0.0, 0.3, 0.5, 0.7, 1.0, 0.5, 0.5, 0.5], top_n=20)
    local = reference.recommend(SEEDS, alpha=[0.0, 0.3, 0.5, 0.7, 1.0, 0.5, 0.5, 0.5], top_n=20)
    assert np.array_equal(served.item_id, local.item_id)
    np.testing.assert_allclose(served.score, local.score, rtol=1e-5, atol=1e-6)
    assert served.source_head.tolist() == local.source_head.tolist()
    assert served.fingerprint == local.fingerprint


def test_recommendations_are_well_formed(client):
    rec = client.recommend(SEEDS, top_n=10)
    assert rec.item_id.shape == (len(SEEDS), 10)
    for b, seed in enumerate(SEEDS):
        row = rec.item_id[b]
        assert seed not in row  # the seed itself is excluded
        assert len(set(row.tolist())) == 10
        assert np.all(np.diff(rec.score[b]) <= 0)  # best first
        assert set(rec.source_head[b]) <= {"engagement", "relevance"}
    assert np.all((rec.task_probs >= 0) & (rec.task_probs <= 1))
    # P(loved) <= P(liked) is not enforced by construction; P values are still valid probabilities
    assert len(set(rec.fingerprint)) == 1


def test_alpha_controls_the_quota(client):
    only_eng = client.recommend([50], alpha=1.0, top_n=10)
    only_rel = client.recommend([50], alpha=0.0, top_n=10)
    half = client.recommend([50], alpha=0.5, top_n=10)
    assert set(only_eng.source_head[0]) == {"engagement"}
    assert set(only_rel.source_head[0]) == {"relevance"}
    assert (half.source_head[0] == "engagement").sum() == 5


def test_top_n_per_row_pads_shorter_rows(client):
    rec = client.recommend([1, 50], top_n=[3, 6])
    assert rec.item_id.shape == (2, 6)
    assert (rec.item_id[0, 3:] == -1).all() and (rec.item_id[0, :3] >= 0).all()
    assert (rec.item_id[1] >= 0).all()


BAD_REQUESTS = [
    ("unknown id", {"seed_item_id": np.array([[999999]], np.int64)}, "seed_item_id"),
    ("negative id", {"seed_item_id": np.array([[-3]], np.int64)}, "seed_item_id"),
    ("wrong dtype", {"seed_item_id": np.array([[1.0]], np.float64)}, "seed_item_id"),
    ("wrong shape", {"seed_item_id": np.array([[1, 2]], np.int64)}, "seed_item_id"),
    ("alpha above 1", {"seed_item_id": np.array([[1]], np.int64), "alpha": np.array([[1.5]], np.float32)},
     "alpha"),
    ("alpha nan", {"seed_item_id": np.array([[1]], np.int64), "alpha": np.array([[np.nan]], np.float32)},
     "alpha"),
    ("top_n zero", {"seed_item_id": np.array([[1]], np.int64), "top_n": np.array([[0]], np.int32)}, "top_n"),
    ("top_n above limit", {"seed_item_id": np.array([[1]], np.int64), "top_n": np.array([[101]], np.int32)},
     "top_n"),
    ("value_weights negative", {"seed_item_id": np.array([[1]], np.int64),
                                "value_weights": -np.ones((1, 4), np.float32)}, "value_weights"),
]


@pytest.mark.parametrize("name, tensors, field", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_clear_error_and_server_keeps_serving(client, name, tensors, field):
    before = client.recommend([1, 50], top_n=10)
    with pytest.raises(InvalidRequest) as info:
        client.infer("widefunnel", tensors)
    assert field in str(info.value), str(info.value)
    after = client.recommend([1, 50], top_n=10)
    assert np.array_equal(before.item_id, after.item_id)


def test_missing_required_input_is_named(client):
    with pytest.raises(InvalidRequest, match="seed_item_id"):
        client.infer("widefunnel", {"alpha": np.array([[0.5]], np.float32)})


def test_retrieval_only_entry_point(client, reference):
    got = client.retrieve([1, 50])
    local = reference.retrieve(np.array([[1], [50]], np.int64))
    for head in ("engagement", "relevance"):
        assert np.array_equal(got[head][0], local[head][0])
        assert 1 not in got[head][0][0] and 50 not in got[head][0][1]


def test_scoring_only_entry_point(client):
    candidates = np.array([[2, 3, 4, 5], [181, 172, 174, 1]], np.int64)
    out = client.score([50, 50], candidates)
    assert out["score"].shape == (2, 4) and out["task_probs"].shape == (2, 4, 3)
    # same (seed, candidate) scored the same wherever it appears
    np.testing.assert_allclose(out["score"][0, 0], client.score([50], [[2]])["score"][0, 0], rtol=1e-6)
    cum = out["relevance_probs"]
    assert np.all(cum[..., 1] <= cum[..., 0] + 1e-7)  # ordinal: P(rel>=2) <= P(rel>=1)
    with pytest.raises(InvalidRequest, match="candidate_item_id"):
        client.score([50], [[2, 999999]])
    with pytest.raises(InvalidRequest, match="candidate_item_id: required"):  # not an empty answer
        client.infer("widefunnel_score", {"seed_item_id": np.array([[50]], np.int64)})
    assert client.score([50], [[2]])["score"].shape == (1, 1)  # and the server goes on serving
