"""Quota merge properties (pure function, no server)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from widefunnel.merge import ENGAGEMENT, RELEVANCE, quota, quota_merge

ids_lists = st.lists(st.integers(0, 60), min_size=0, max_size=40)


def _scores(n: int) -> np.ndarray:
    return np.linspace(1.0, 0.0, n, dtype=np.float32) if n else np.zeros(0, np.float32)


@settings(max_examples=300, deadline=None)
@given(eng=ids_lists, rel=ids_lists, alpha=st.floats(0, 1), top_n=st.integers(1, 30))
def test_merge_properties(eng, rel, alpha, top_n):
    e, r = np.array(eng, np.int64), np.array(rel, np.int64)
    m = quota_merge(e, _scores(len(e)), r, _scores(len(r)), alpha, top_n, sort_by_score=False)
    # no duplicates, never more than asked, and as many as the union allows
    assert len(set(m.ids.tolist())) == len(m.ids)
    assert len(m.ids) == min(top_n, len(set(eng) | set(rel)))
    # each head's picks keep that head's order
    for head, source in ((ENGAGEMENT, e), (RELEVANCE, r)):
        picked = m.positions[m.source == head]
        assert np.all(np.diff(picked) > 0)
        assert np.array_equal(source[picked], m.ids[m.source == head])
    # exact quota when both heads have enough distinct items
    want = quota(alpha, top_n)
    if len(set(eng)) >= top_n and len(set(rel) - set(eng)) >= top_n:
        assert int((m.source == ENGAGEMENT).sum()) == want
        assert int((m.source == RELEVANCE).sum()) == top_n - want


def test_backfill_from_other_head():
    m = quota_merge(np.array([1, 2]), _scores(2), np.array([3, 4, 5, 6]), _scores(4), alpha=0.9, top_n=5)
    assert sorted(m.ids.tolist()) == [1, 2, 3, 4, 5]


def test_item_found_by_both_kept_once_and_alpha_extremes():
    e, r = np.array([1, 2, 3]), np.array([2, 5, 6])
    both = quota_merge(e, _scores(3), r, _scores(3), 0.5, 4, sort_by_score=False)
    assert both.ids.tolist() == [1, 2, 5, 6]
    assert quota_merge(e, _scores(3), r, _scores(3), 1.0, 3).source.tolist() == [ENGAGEMENT] * 3
    assert quota_merge(e, _scores(3), r, _scores(3), 0.0, 3).source.tolist() == [RELEVANCE] * 3


def test_sorted_output_by_score():
    m = quota_merge(np.array([1, 2]), np.array([0.9, 0.1], np.float32), np.array([3, 4]),
                    np.array([0.5, 0.4], np.float32), 0.5, 4)
    assert m.ids.tolist() == [1, 3, 4, 2]


def test_quota_rounds_half_up_and_rejects_bad_arguments():
    assert quota(0.5, 5) == 3 and quota(0.3, 10) == 3 and quota(0.0, 7) == 0 and quota(1.0, 7) == 7
    for alpha, top_n in ((-0.1, 5), (1.5, 5), (0.5, 0)):
        try:
            quota_merge(np.array([1]), _scores(1), np.array([2]), _scores(1), alpha, top_n)
        except ValueError as exc:
            assert ("alpha" in str(exc)) or ("top_n" in str(exc))
        else:
            raise AssertionError("expected ValueError")


def test_merge_batch_pads_short_rows_and_carries_probabilities():
    from widefunnel.merge import merge_batch

    ids = np.array([[1, 2, 3]], np.int64)
    scores = np.array([[0.1, 0.9, 0.5]], np.float32)
    probs = np.arange(9, dtype=np.float32).reshape(1, 3, 3)
    rel = (np.array([[4, 2, 5]], np.int64), np.array([[0.8, 0.2, 0.3]], np.float32), probs + 100)
    m = merge_batch((ids, scores, probs), rel, np.array([[0.5]]), np.array([[8]]))
    assert m.ids.shape == (1, 8)
    assert m.ids[0, :5].tolist() == [2, 4, 3, 5, 1] and (m.ids[0, 5:] == -1).all()
    assert (m.source[0, 5:] == -1).all() and np.isnan(m.scores[0, 5:]).all()
    np.testing.assert_array_equal(m.probs[0, 0], probs[0, 1])  # item 2 taken by the engagement head
    np.testing.assert_array_equal(m.probs[0, 1], probs[0, 0] + 100)  # item 4 from the relevance head


def test_padding_ids_are_never_picked():
    """A short ANN list is padded with id -1 (score -inf after the scorer's mask): never an item."""
    m = quota_merge(np.array([5, -1, -1]), np.array([0.9, -np.inf, -np.inf], np.float32),
                    np.array([7, 8, -1]), np.array([0.8, 0.7, -np.inf], np.float32), alpha=0.5, top_n=4)
    assert m.ids.tolist() == [5, 7, 8] and -1 not in m.ids
