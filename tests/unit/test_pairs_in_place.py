"""The co-engaged pairs, filled in place, equal the straightforward construction (collect each offset's blocks,
then concatenate) row for row, labels included."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel.data import Interactions, co_engagement_pairs


def _reference(inter: Interactions, window: int):
    keep = np.ones(len(inter.items), bool) if inter.positive is None else inter.positive
    users, items, ratings, ts = inter.users[keep], inter.items[keep], inter.ratings[keep], inter.timestamps[keep]
    rows = np.flatnonzero(keep)
    order = np.lexsort((items, ts, users))
    users, items, ratings, ts, rows = users[order], items[order], ratings[order], ts[order], rows[order]
    q, t, r, s, lab = [], [], [], [], []
    for offset in range(1, window + 1):
        same = users[offset:] == users[:-offset]
        a, b = np.arange(len(users) - offset)[same], np.arange(offset, len(users))[same]
        q += [items[a], items[b]]
        t += [items[b], items[a]]
        r += [ratings[b], ratings[a]]
        s += [ts[b], ts[b]]
        lab += [rows[b], rows[a]]
    labels = None if inter.labels is None else inter.labels[np.concatenate(lab)]
    return np.concatenate(q), np.concatenate(t), np.concatenate(r), np.concatenate(s), labels


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("window", [1, 5])
def test_pairs_equal_the_concatenated_construction(labelled, window):
    rng = np.random.default_rng(window)
    n = 5_000
    inter = Interactions(rng.integers(0, 300, n), rng.integers(1, 800, n), rng.integers(1, 6, n),
                         rng.integers(0, 10_000, n), positive=rng.random(n) < 0.7,
                         labels=(rng.random((n, 3)) < 0.5) if labelled else None)
    got = co_engagement_pairs(inter, window)
    q, t, r, s, labels = _reference(inter, window)
    for mine, theirs in ((got.query, q), (got.target, t), (got.rating, r), (got.timestamp, s)):
        np.testing.assert_array_equal(mine, theirs)
    assert (got.labels is None) == (labels is None)
    if labels is not None:
        np.testing.assert_array_equal(got.labels, labels)
    assert len(got.query) > n  # pairs were made


@pytest.mark.parametrize("cap", [0, 700, 10**9])
@pytest.mark.parametrize("labelled", [False, True])
def test_the_sampled_split_equals_splitting_every_pair_then_sampling(cap, labelled):
    """What a build trains on, made without holding every pair, is what the straightforward construction gives:
    every pair, split by time, then ``cap`` training pairs drawn with the seed (popularity from them all)."""
    from widefunnel.data import CoEngagement, sampled_split, time_split

    rng = np.random.default_rng(3)
    n = 5_000
    inter = Interactions(rng.integers(0, 300, n), rng.integers(1, 800, n), rng.integers(1, 6, n),
                         rng.integers(0, 10_000, n), positive=rng.random(n) < 0.7,
                         labels=(rng.random((n, 3)) < 0.5) if labelled else None)
    want = time_split(co_engagement_pairs(inter, 5), inter, 0.8, 800)
    got = sampled_split(inter, 5, 0.8, 800, max_train=cap, seed=7)
    train = want.train
    if 0 < cap < len(train):
        train = train.take(np.sort(np.random.default_rng(7).choice(len(train), cap, replace=False)))
        assert len(got.train) == cap
    for mine, theirs in ((got.train, train), (got.test, want.test)):
        for field in ("query", "target", "rating", "timestamp", "labels"):
            a, b = getattr(mine, field), getattr(theirs, field)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.train_popularity, want.train_popularity)
    np.testing.assert_array_equal(got.fresh_items, want.fresh_items)
    assert got.split_time == want.split_time
    assert len(sampled_split(inter, 5, 0.8, 800, held_out=False).test) == 0
    # positions in any order come back in that order
    every = CoEngagement(inter, 5)
    pick = np.random.default_rng(1).choice(len(every), 300, replace=False)
    np.testing.assert_array_equal(every.pairs(positions=pick).target, co_engagement_pairs(inter, 5).target[pick])


def test_reranker_labels_equal_the_set_lookup():
    from widefunnel.builders.train import positive_labels

    rng = np.random.default_rng(5)
    query, target = rng.integers(1, 50, 2_000), rng.integers(1, 60, 2_000)
    queries = np.unique(query)[::2]
    cands = rng.integers(-1, 60, (len(queries), 30))
    positives: dict[int, set[int]] = {}
    for q, t in zip(query.tolist(), target.tolist()):
        positives.setdefault(q, set()).add(t)
    want = np.array([[c in positives[int(q)] for c in row] for q, row in zip(queries, cands)], np.float32)
    got = positive_labels(query, target, queries, cands)
    np.testing.assert_array_equal(got, want)
    assert 0 < got.sum() < got.size
