"""The router's combination of shard answers (widefunnel.client.router.combine), without a server."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel.client.router import InvalidRequest, ShardFailure, combine


def _answer(ids, scores, fp=7):
    ids = np.asarray([ids], np.int64)
    return ids, np.asarray([scores], np.float32), np.full((1, 1), fp, np.int64)


def test_answers_merge_exactly_best_first():
    out, failed = combine([_answer([4, 2], [0.9, 0.1]), _answer([8, 1], [0.5, 0.4])], 2, 3, False, False)
    assert not failed
    assert out["CANDIDATE_ID"].tolist() == [[4, 8, 1]]
    assert out["COVERAGE"].tolist() == [[1.0]]


def test_a_failed_shard_fails_the_request_unless_partial_is_allowed():
    down = ShardFailure(1, "h:1", "unavailable", "shard 1 of 2 down")
    with pytest.raises(ShardFailure, match="shard 1 of 2"):
        combine([_answer([4], [0.9]), down], 2, 1, False, False)
    out, failed = combine([_answer([4], [0.9]), down], 2, 1, False, True)
    assert failed == [down] and out["COVERAGE"].tolist() == [[0.5]]
    with pytest.raises(ShardFailure, match="; "):  # every shard down: the message names each
        combine([down, ShardFailure(0, "h:0", "timeout", "shard 0 of 2 timeout")], 2, 1, False, True)


def test_an_invalid_request_wins_and_builds_must_agree():
    with pytest.raises(InvalidRequest):
        combine([InvalidRequest("QUERY: bad"), ShardFailure(1, "", "internal", "x")], 2, 1, False, False)
    with pytest.raises(RuntimeError, match="different builds"):
        combine([_answer([4], [0.9], fp=1), _answer([5], [0.8], fp=2)], 2, 1, False, False)
