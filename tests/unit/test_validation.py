"""Request validation names the field it rejects."""

import numpy as np
import pytest

from widefunnel.validation import RequestError, RequestLimits, validate_request

LIMITS = RequestLimits(np.array([1, 2, 3, 10], np.int64), 0.5, 10, 100, np.ones(4, np.float32), 1000, 2000)
SEEDS = np.array([[1], [10]], np.int64)


def test_defaults_filled():
    v = validate_request(LIMITS, SEEDS)
    assert v.alpha.tolist() == [[0.5], [0.5]] and v.top_n.tolist() == [[10], [10]]
    assert v.value_weights.shape == (2, 4) and v.candidate_id.shape == (2, 0)


@pytest.mark.parametrize("kwargs, field", [
    ({"seed_item_id": np.array([[4]], np.int64)}, "seed_item_id"),
    ({"seed_item_id": np.array([[-1]], np.int64)}, "seed_item_id"),
    ({"seed_item_id": np.zeros((0, 1), np.int64)}, "seed_item_id"),
    ({"seed_item_id": None}, "seed_item_id"),
    ({"alpha": np.array([[1.5], [0.2]], np.float32)}, "alpha"),
    ({"alpha": np.array([[np.nan], [0.2]], np.float32)}, "alpha"),
    ({"alpha": np.array([[0.5]], np.float32)}, "alpha"),
    ({"top_n": np.array([[0], [5]], np.int32)}, "top_n"),
    ({"top_n": np.array([[101], [5]], np.int32)}, "top_n"),
    ({"value_weights": np.full((2, 4), np.inf, np.float32)}, "value_weights"),
    ({"value_weights": -np.ones((2, 4), np.float32)}, "value_weights"),
    ({"value_weights": np.ones((2, 3), np.float32)}, "value_weights"),
    ({"candidate_item_id": np.array([[1, 99], [2, 3]], np.int64)}, "candidate_item_id"),
    ({"candidate_item_id": np.zeros((2, 0), np.int64)}, "candidate_item_id"),
    ({"candidate_item_id": None, "require_candidates": True}, "candidate_item_id"),
])
def test_rejections_name_the_field(kwargs, field):
    args = {"seed_item_id": SEEDS} | kwargs
    with pytest.raises(RequestError, match=rf"^{field}:"):
        validate_request(LIMITS, **args)


def test_model_parameters_name_what_is_missing_and_unknown():
    from widefunnel.model_configs import model_parameters

    config = {"parameters": {"a": {"string_value": "1"}, "x": {"string_value": "2"}}}
    assert model_parameters(config, {"a"}, {"x"}) == {"a": "1", "x": "2"}
    with pytest.raises(ValueError, match=r"missing \['b'\] / unknown \['x'\]"):
        model_parameters(config, {"a", "b"})
