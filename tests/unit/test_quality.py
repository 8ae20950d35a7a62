"""Offline quality evaluation: the metric functions on hand-computed cases (the served ensemble reproducing the
offline merged metrics: tests/served/test_quality_served.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from widefunnel.data import Catalogue, Pairs
from widefunnel.evaluation import offline as E
from widefunnel.merge import quota_merge


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


def test_cooccurrence_lists_count_pairs_then_backfill_by_popularity():
    # training pairs (both directions, as co_engagement_pairs makes them): 1-2 three times, 1-3 once, 2-4 twice
    q = np.array([1, 2, 1, 2, 1, 2, 1, 3, 2, 4, 2, 4])
    t = np.array([2, 1, 2, 1, 2, 1, 3, 1, 4, 2, 4, 2])
    train = Pairs(q, t, np.ones(len(q), np.int64), np.zeros(len(q)))
    item_ids = np.arange(1, 6)
    pop = np.bincount(t, minlength=6).astype(float)  # 1: 4, 2: 5, 3: 1, 4: 2, 5: 0
    lists = E.cooccurrence_lists(train, pop, item_ids, np.array([1, 2, 5, 1]), 4)
    assert lists[0].tolist() == [2, 3, 4, 5]  # counts 3, 1; then popularity (4: 2 > 5: 0)
    assert lists[1].tolist() == [1, 4, 3, 5]  # counts 3, 2; then popularity
    assert lists[2].tolist() == E.popularity_lists(pop, item_ids, np.array([5]), 4)[0].tolist() == [2, 1, 4, 3]
    assert lists[3].tolist() == lists[0].tolist()  # a repeated seed
    # ties in count go to the more popular item, then the lower id; the seed is never in its own list
    tie = Pairs(np.array([3, 3]), np.array([1, 2]), np.ones(2, np.int64), np.zeros(2))
    assert E.cooccurrence_lists(tie, pop, item_ids, np.array([3]), 3).tolist() == [[2, 1, 4]]
    assert E.cooccurrence_lists(tie, np.zeros(6), item_ids, np.array([3]), 3).tolist() == [[1, 2, 4]]
