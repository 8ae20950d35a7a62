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


# ---- filter values: bounded per seed and per request, each non-empty and short, names looked up once ----------
from widefunnel.field_filters import ANY_OF, NONE_OF, FieldSchema, genre_year_fields  # noqa: E402
from widefunnel.validation import (  # noqa: E402
    MAX_FILTER_VALUES,
    MAX_REQUEST_FILTER_VALUES,
    MAX_SHOWN_CHARS,
    MAX_STRING_BYTES,
    check_ann_inputs,
    check_not_empty,
    filter_names,
    filter_tensors,
    request_scalar,
    shown,
    validate_filters,
)

GENRES = ("Action", "Comedy", "Drama")
# MovieLens' fields genre (codes 1..3 in GENRES order) and year, as a build of it writes them
SCHEMA = genre_year_fields({1: ("Action",)}, np.array([0, 1995]), GENRES, 2).schema()
FILTER_LIMITS = RequestLimits(np.arange(1, 10), 0.5, 10, 100, np.ones(4, np.float32), 100, 1000, 3)


def _validate(batch: int, **tensors):
    return validate_filters(FILTER_LIMITS, SCHEMA, batch, tensors)


def _genre_filters(tokens: np.ndarray) -> list[set[tuple[int, str]]]:
    """Each seed's packed FIELD_TOKENS row -> {(mode, genre)} (the genre field is slot 0)."""
    rows = []
    for row in tokens:
        row = row[row >= 0]
        assert ((row >> 33) == 0).all()
        rows.append({(int((t >> 32) & 1), ("", *GENRES)[int(t & 0xFFFFFFFF)]) for t in row})
    return rows


class Untouchable:
    """A BYTES element that fails the test if validation reads it: a refusal by shape must come first."""

    def __getattribute__(self, name):
        if name.startswith("__array"):  # numpy asking, as the test builds the array: not the validation
            raise AttributeError(name)
        raise AssertionError(f"a value was read ({name}) before the request's shape was refused")

    def __len__(self):
        raise AssertionError("a value was read before the request's shape was refused")


def _names(rows) -> np.ndarray:
    return np.array([[n.encode() for n in row] for row in rows], dtype=object)


def test_genre_filters_are_the_union_of_each_seeds_names():
    got = _validate(3, include_genre=_names([["Drama", "Drama"], ["Action", "Comedy"], ["Comedy", "Action"]]),
                    exclude_genre=np.array([["Action"]] * 3, dtype=object))  # str elements too
    assert _genre_filters(got.field_tokens) == [{(ANY_OF, "Drama"), (NONE_OF, "Action")},
                                                 *[{(ANY_OF, "Action"), (ANY_OF, "Comedy"), (NONE_OF, "Action")}] * 2]
    assert (got.field_ranges == [-np.inf, np.inf]).all() and (got.exclude_ids == -1).all()


def test_the_largest_allowed_request_validates():
    batch = MAX_REQUEST_FILTER_VALUES // MAX_FILTER_VALUES
    names = np.array([GENRES[(i + j) % 3].encode() for i in range(batch) for j in range(MAX_FILTER_VALUES)],
                     dtype=object).reshape(batch, MAX_FILTER_VALUES)
    got = _validate(batch, include_genre=names, exclude_genre=names)
    every = {(mode, g) for mode in (ANY_OF, NONE_OF) for g in GENRES}
    assert _genre_filters(got.field_tokens) == [every] * batch


@pytest.mark.parametrize("batch, width, message", [
    (64, 100_000, r"^include_genre: between 1 and 64 values per seed, got 100000$"),  # the 25.6 MB request
    (1, MAX_FILTER_VALUES + 1, r"^include_genre: between 1 and 64 values per seed, got 65$"),
    (1, 0, r"^include_genre: between 1 and 64 values per seed, got 0$"),
    (100, 50, r"^include_genre: 5000 values in one request \(seeds x values per seed\); at most 4096$"),
])
def test_over_the_bounds_is_refused_by_its_shape_before_any_value_is_read(batch, width, message):
    values = np.empty((batch, width), dtype=object)
    values[...] = Untouchable()
    with pytest.raises(RequestError, match=message):
        _validate(batch, include_genre=values)


@pytest.mark.parametrize("field", ["include_genre", "exclude_genre"])
def test_an_empty_value_is_refused_by_seed_and_position(field):
    values = _names([["Drama", "Comedy"], ["Drama", "Comedy"], ["Drama", "Comedy"], ["Comedy", "Drama"]])
    values[3, 0] = b""
    with pytest.raises(RequestError, match=rf"^{field}: empty value at seed 3, position 0; send names only"):
        _validate(4, **{field: values})


@pytest.mark.parametrize("size", [MAX_STRING_BYTES + 1, 1 << 20])
def test_a_long_value_is_refused_by_name_and_quoted_short(size):
    values = _names([["Drama", "x" * size]])
    with pytest.raises(RequestError, match=rf"^include_genre: value at seed 0, position 1 is {size} bytes, more "
                                           rf"than {MAX_STRING_BYTES}: 'xxx") as info:
        _validate(1, include_genre=values)
    assert len(str(info.value)) < 100 + MAX_SHOWN_CHARS
    values = _names([["Drama", "Opera" * 50]])  # within the bound, unknown: the echo is cut as well
    with pytest.raises(RequestError, match=r"^include_genre: unknown value 'OperaOpera.*\.\.\. \(not in this "
                                           r"build's catalogue; known: Action, Comedy, Drama\)$") as info:
        _validate(1, include_genre=values)
    assert len(str(info.value)) < 100 + MAX_SHOWN_CHARS


def test_shown_cuts_any_value_to_its_limit():
    assert shown("Drama") == "'Drama'" and shown(b"Drama") == "'Drama'" and shown(7) == "7"
    for value in ("x" * 10_000, b"\xff" * 10_000, list(range(10_000))):
        text = shown(value)
        assert len(text) == MAX_SHOWN_CHARS and text.endswith("...")


def test_the_client_never_sends_an_empty_value():
    assert filter_tensors(include_genres=[], exclude_genres=[]) == {}  # no names: no filter
    tensors = filter_tensors(include_genres=["Comedy", "Drama"], exclude_genres=["Action"], batch=3)
    for field in ("include_genre", "exclude_genre"):
        assert tensors[field].shape[0] == 3 and all(v for v in tensors[field].ravel())
    got = _validate(3, **tensors)
    assert _genre_filters(got.field_tokens) == [{(ANY_OF, "Comedy"), (ANY_OF, "Drama"), (NONE_OF, "Action")}] * 3
    assert set(filter_names(SCHEMA)) >= set(tensors)


def test_the_year_filter_is_a_float_range_as_every_range_filter():
    """MovieLens' client keeps its arguments (years=(a, b)) and sends FP32, as min_/max_ of any float field."""
    tensors = filter_tensors(years=(1990, 1999), batch=2)
    assert {n: (t.dtype, t.shape) for n, t in tensors.items()} == {"min_year": (np.float32, (2, 1)),
                                                                  "max_year": (np.float32, (2, 1))}
    got = _validate(2, **tensors)
    assert got.field_ranges.tolist() == [[1990.0, 1999.0]] * 2 and (got.field_tokens == -1).all()
    assert _validate(1, max_year=np.array([[1999.0]], np.float32)).field_ranges.tolist() == [[-np.inf, 1999.0]]
    with pytest.raises(RequestError, match=r"^min_year, max_year: empty range at seed 0, got \[1999.0, 1990.0\]"):
        _validate(1, **filter_tensors(years=(1999, 1990)))
    with pytest.raises(RequestError, match=r"^include_genre: unknown value 'Opera' \(not in this build's catalogue"):
        _validate(1, **filter_tensors(include_genres=["Opera"]))


# ---- step inputs a direct call could send: shapes, widths, one value per request -----------------------------
def test_ann_inputs_are_bounded_by_shape():
    check_ann_inputs({"EXCLUDE_IDS": np.full((2, 1000), -1), "FIELD_TOKENS": np.full((2, 3), -1),
                      "FIELD_RANGES": np.zeros((2, 2)), "EXCLUDE_ID": np.ones((2, 1))}, 2, 1000)
    for inputs, message in (({"EXCLUDE_IDS": np.broadcast_to(np.int64(0), (2, 3_750_000))},
                             r"^EXCLUDE_IDS: between 1 and 1000 values per query, got 3750000$"),
                            ({"EXCLUDE_IDS": np.zeros((2, 0), np.int64)}, r"^EXCLUDE_IDS: between 1 and 1000"),
                            ({"EXCLUDE_IDS": np.zeros((3, 5), np.int64)}, r"^EXCLUDE_IDS: expected shape \[2, E\]"),
                            ({"FIELD_RANGES": np.zeros((2, 3), np.float32)}, r"^FIELD_RANGES: \(min, max\) pairs"),
                            ({"FIELD_TOKENS": np.zeros((2,), np.int64)}, r"^FIELD_TOKENS: expected shape \[2, E\]"),
                            ({"EXCLUDE_ID": np.zeros((2, 3), np.int64)}, r"^EXCLUDE_ID: expected shape \[2, 1\]")):
        with pytest.raises(RequestError, match=message):
            check_ann_inputs(inputs, 2, 1000)


def test_one_value_per_request_and_no_empty_inputs():
    assert request_scalar("K", None, 200, 1, 1000) == 200
    assert request_scalar("K", np.full((3, 1), 7), 200, 1, 1000) == 7
    for values, message in ((np.array([[7], [8]]), "K: one value per request"), (np.zeros((0, 1)), "K: one value"),
                            (np.array([[0]]), r"K: must be within \[1, 1000\], got 0")):
        with pytest.raises(RequestError, match=message):
            request_scalar("K", values, 200, 1, 1000)
    check_not_empty("CANDIDATE_ID", np.ones((1, 1)))
    for shape in ((1, 0), (0, 1), (0,)):
        with pytest.raises(RequestError, match=r"^CANDIDATE_ID: empty input"):
            check_not_empty("CANDIDATE_ID", np.ones(shape))


def test_field_filters_on_a_build_without_fields_are_refused_by_name():
    """A catalogue without a filterable field: exclusions work, any field filter is refused by name."""
    none = FieldSchema((), ())
    ex = validate_filters(LIMITS, none, 1, {"exclude_item_id": np.array([[3, -1]], np.int64)})
    assert ex.exclude_ids.tolist() == [[3, -1]] and filter_names(none) == ("exclude_item_id",)
    for field in ("min_year", "max_year"):
        with pytest.raises(RequestError, match=rf"^{field}: not a filter of this build \(its fields: none\)"):
            validate_filters(LIMITS, none, 1, {field: np.array([[1990]], np.float32)})
    with pytest.raises(RequestError, match=r"^include_genre: not a filter of this build"):
        validate_filters(LIMITS, none, 1, {"include_genre": np.array([[b"Comedy"]], dtype=object)})
