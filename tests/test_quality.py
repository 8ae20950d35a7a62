"""Offline quality evaluation: the metric functions on hand-computed cases, and the served ensemble reproducing
the offline merged metrics exactly (and `benchmarks/quality.py --served` writing the same table)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from widefunnel.data import Catalogue, Pairs
from widefunnel.evaluation import offline as E
from widefunnel.evaluation.pipeline import InProcessFunnel
from widefunnel.merge import quota_merge

K = 50
SEEDS = 30


def _targets(rows: list[set[int]], size: int = 10) -> np.ndarray:
    out = np.zeros((len(rows), size), dtype=bool)
    for i, row in enumerate(rows):
        out[i, list(row)] = True
    return out


# --------------------------------------------------------------------------------------------- metrics
def test_recall_per_query_and_mean():
    retrieved = np.array([[5, 3, -1], [7, 8, 9], [1, 2, 4]])
    targets = _targets([{3, 4}, set(), {1, 2, 4, 6}])
    per_query = E.recall_per_query(retrieved, targets)
    assert per_query[0] == 0.5 and math.isnan(per_query[1]) and per_query[2] == 0.75
    assert E.recall_at_k(retrieved, targets) == pytest.approx((0.5 + 0.75) / 2)  # empty T(q) left out
    # -1 pads never count as a hit, even where column 0 of the target matrix is set
    assert E.recall_at_k(np.array([[-1, -1]]), _targets([{0}])) == 0.0


def test_genre_relevance_and_jaccard():
    #               A      B      C
    genres = np.array([[0, 0, 0],      # 0 padding
                       [1, 1, 0],      # 1: A B (the seed)
                       [0, 1, 0],      # 2: B        shares B, jaccard 1/2
                       [0, 0, 1],      # 3: C        shares nothing, jaccard 0
                       [1, 1, 1]], bool)  # 4: A B C shares A B, jaccard 2/3
    retrieved, seeds = np.array([[2, 3, 4, -1]]), np.array([1])
    assert E.relevance_at_k(retrieved, seeds, genres) == pytest.approx(2 / 3)
    assert E.jaccard_at_k(retrieved, seeds, genres) == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)
    assert math.isnan(E.relevance_per_query(np.array([[-1, -1]]), seeds, genres)[0])


def test_ndcg_uses_the_global_ideal():
    ranked = np.array([[1, 2, 3], [4, 5, 6]])
    targets = _targets([{2, 7}, {4}])
    dcg0, idcg0 = 1 / math.log2(3), 1 + 1 / math.log2(3)  # hit at rank 2; ideal: two hits on top
    per_query = E.ndcg_per_query(ranked, targets, k=10)
    assert per_query[0] == pytest.approx(dcg0 / idcg0)
    assert per_query[1] == pytest.approx(1.0)
    assert E.ndcg_at_k(ranked, targets, 10) == pytest.approx((dcg0 / idcg0 + 1) / 2)
    # only the first k positions count
    assert E.ndcg_per_query(np.array([[9, 8, 2]]), _targets([{2}]), k=2)[0] == 0.0


def test_auc_counts_ties_half_and_matches_sklearn():
    assert E.auc([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0]) == pytest.approx(3.5 / 4)
    assert math.isnan(E.auc([1, 2, 3], [1, 1, 1]))  # one class only
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 20, 500).astype(float), rng.random(500) < 0.3
    assert E.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_eval_set_queries_targets_and_fresh_slices():
    cat = Catalogue(np.arange(1, 7), {i: str(i) for i in range(1, 7)}, np.zeros(7, np.int64),
                    {1: ("A",), 2: ("A",), 3: ("B",), 4: ("B",), 5: ("A", "B"), 6: ("A",)}, ("A", "B"))
    test = Pairs(np.array([1, 1, 2, 3, 3, 1]), np.array([2, 5, 1, 6, 1, 1]), np.ones(6, np.int64), np.ones(6))
    ev = E.build_eval_set(test, cat, np.array([6]), max_queries=0)
    assert ev.seeds.tolist() == [1, 2, 3]
    assert np.flatnonzero(ev.targets[0]).tolist() == [2, 5]  # the (1, 1) pair: a seed is never its own target
    assert np.flatnonzero(ev.targets[2]).tolist() == [1, 6]
    rows, ft = ev.fresh_targets()
    assert rows.tolist() == [2] and np.flatnonzero(ft.targets[0]).tolist() == [6]
    assert len(ev.fresh_queries()[0]) == 0
    capped = E.build_eval_set(test, cat, np.array([6]), max_queries=2, seed=0)
    assert len(capped.seeds) == 2 and set(capped.seeds) <= {1, 2, 3}
    assert np.array_equal(capped.seeds, E.build_eval_set(test, cat, np.array([6]), 2, seed=0).seeds)


def test_merge_lists_quota_dedupe_and_depth():
    eng, rel = np.array([[1, 2, 3, 4]]), np.array([[3, 5, 6, 7]])
    assert E.merge_lists(eng, rel, 1.0, 4).tolist() == [[1, 2, 3, 4]]
    assert E.merge_lists(eng, rel, 0.0, 4).tolist() == [[3, 5, 6, 7]]
    assert E.merge_lists(eng, rel, 0.5, 4).tolist() == [[1, 2, 3, 5]]
    assert E.merge_lists(eng, np.array([[1, 2, 5, 6]]), 0.5, 4).tolist() == [[1, 2, 5, 6]]  # duplicates skipped
    # the heads' top-K is all a top-K merge needs: same result as merging the full lists
    rng = np.random.default_rng(1)
    e = np.stack([rng.permutation(60)[:40] for _ in range(20)])
    r = np.stack([rng.permutation(60)[:40] for _ in range(20)])
    for alpha in (0.0, 0.3, 0.5, 0.7, 1.0):
        for k in (5, 10, 25):
            assert np.array_equal(E.merged(e, r, alpha)(k), E.merge_lists(e, r, alpha, k))
    # with scores: the served merge (sorted by score)
    ids = E.merge_lists(eng, rel, 0.5, 4, np.array([[0.1, 0.9, 0.3, 0.2]]), np.array([[0.8, 0.5, 0.4, 0.0]]))
    expected = quota_merge(eng[0], [0.1, 0.9, 0.3, 0.2], rel[0], [0.8, 0.5, 0.4, 0.0], 0.5, 4).ids
    assert ids[0].tolist() == expected.tolist() == [2, 3, 5, 1]


def test_baseline_lists_exclude_the_seed():
    item_ids = np.arange(1, 6)
    pop = np.array([0, 50, 40, 30, 20, 10], float)
    assert E.popularity_lists(pop, item_ids, np.array([1, 3]), 3).tolist() == [[2, 3, 4], [1, 2, 4]]
    teacher = np.zeros((6, 2), np.float32)
    teacher[1:] = [[1, 0], [0.9, 0.1], [0, 1], [0.6, 0.8], [-1, 0]]
    assert E.teacher_lists(teacher, item_ids, np.array([1]), 2).tolist() == [[2, 4]]


# ------------------------------------------------------------------------------- served == offline
@pytest.fixture(scope="module")
def eval_subset(test_config) -> E.EvalSet:
    ev = E.eval_set_for(test_config)
    rows = np.sort(np.random.default_rng(0).choice(len(ev.seeds), SEEDS, replace=False))
    return ev.rows(rows)


@pytest.fixture(scope="module")
def in_process(built_repository) -> InProcessFunnel:
    return InProcessFunnel(built_repository)


@pytest.mark.server
def test_served_merged_metrics_equal_offline(client, in_process, eval_subset):
    ev = eval_subset
    offline = E.InProcessSource(in_process).recommend_ids(ev.seeds, 0.5, K)
    served = np.concatenate([client.recommend(ev.seeds[i:i + 16], alpha=0.5, top_n=K).item_id
                             for i in range(0, len(ev.seeds), 16)])
    assert served.shape == (SEEDS, K) and (served >= 0).all()
    assert np.array_equal(served, offline)
    m_off, m_srv = E.retrieval_metrics(offline, ev, K), E.retrieval_metrics(served, ev, K)
    assert m_srv == m_off
    assert m_off[f"recall@{K}"] > 0 and 0 < m_off[f"relevance@{K}"] <= 1


def test_staged_evaluation_equals_the_pipeline(in_process, eval_subset):
    """The benchmark merges stages computed once; that must be the pipeline's own output."""
    ev = eval_subset
    staged = E.StagedSource(E.funnel_stages(in_process, ev.seeds), ev.seeds)
    full = E.InProcessSource(in_process)
    for alpha, k in ((0.0, 10), (0.5, K), (1.0, 100)):
        assert np.array_equal(staged.recommend_ids(ev.seeds, alpha, k), full.recommend_ids(ev.seeds, alpha, k))
    for head, ids in full.retrieve_ids(ev.seeds).items():
        assert np.array_equal(staged.retrieve_ids(ev.seeds)[head], ids)


def _quality_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("widefunnel_quality_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.server
def test_quality_served_mode_writes_the_in_process_table(server, in_process, test_config, tmp_path, capsys):
    q = _quality_module()
    out = tmp_path / "QUALITY.md"
    out.write_text(f"# report\n\nbefore\n\n{q.SERVED_BEGIN}\nold\n{q.SERVED_END}\n\nafter\n")
    assert q.main(["--served", server.grpc_url, "--protocol", "grpc", "--max-queries", str(SEEDS),
                   "--out", str(out)]) == 0
    capsys.readouterr()
    ev = E.eval_set_for({**test_config, "data": {**test_config["data"], "max_eval_queries": SEEDS}})
    rows = E.funnel_table(E.InProcessSource(in_process), ev, q.ALPHAS, q.SERVED_KS,
                          test_config["merge"]["max_top_n"])
    expected = q.table(rows, q.retrieval_columns(q.SERVED_KS))
    text = out.read_text()
    assert expected in text
    assert "old" not in text and text.startswith("# report") and text.rstrip().endswith("after")
    assert text.count(q.SERVED_BEGIN) == 1 and len(ev.seeds) == SEEDS
