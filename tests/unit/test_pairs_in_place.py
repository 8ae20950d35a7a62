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
