"""Filters named after a catalogue's own fields (issue 29, must-have 5), core: the table by internal id, the
validation by name, and the row bitmap equal to brute force over the items."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from widefunnel.ann import filters
from widefunnel.dataset.columns import FloatColumn, token_column, token_seq_column
from widefunnel.field_filters import (
    GENRE_FIELD,
    MAX_BIT_VALUES,
    YEAR_FIELD,
    ItemFields,
    field_of_column,
    id_mask,
)
from widefunnel.validation import MAX_FILTER_VALUES, RequestError, validate_field_filters

BRANDS = ["acme", "bolt", None, "acme", "crux", "bolt"]
CATEGORIES = [["shoes", "kids"], [], ["hats"], None, ["shoes"], ["hats", "kids", "sale"]]
PRICES = [9.5, 20.0, float("nan"), 5.0, 100.0, 20.0]
TABLE_ROWS = np.array([4, 1, 6, 2, 3, 5])  # the internal id of each column row: not in order, on purpose


def _fields() -> ItemFields:
    columns = {"brand": token_column(pa.array(BRANDS)), "categories": token_seq_column(pa.array(CATEGORIES)),
               "price": FloatColumn(np.array(PRICES, np.float32))}
    return ItemFields(tuple(field_of_column(n, c, TABLE_ROWS, 7) for n, c in columns.items()))


def _by_id(values: list) -> dict[int, object]:
    return {int(i): v for i, v in zip(TABLE_ROWS, values)}


def _tensors(**kwargs) -> dict[str, np.ndarray]:
    out = {}
    for name, value in kwargs.items():
        if name.startswith(("min_", "max_")):
            out[name] = np.array([[value]], np.float32)
        else:
            out[name] = np.array([[v.encode() for v in value]], dtype=object)
    return out


def test_the_table_is_keyed_by_internal_id_and_survives_a_save(tmp_path):
    fields = _fields()
    fields.save(tmp_path / "fields")
    loaded = ItemFields.load(tmp_path / "fields")
    assert loaded.schema() == fields.schema()
    brand, categories = loaded.tokens
    assert brand.codes.dtype == np.uint8  # a small vocabulary's codes: 1 byte each, read as they are stored
    for stored, built in zip(loaded.tokens, fields.tokens, strict=True):
        np.testing.assert_array_equal(stored.items_with(np.array([1, 2])), built.items_with(np.array([1, 2])))
        np.testing.assert_array_equal(stored.item_bits, built.item_bits)
    for item, want in _by_id(BRANDS).items():
        got = [brand.vocabulary[c] for c in brand.codes[brand.offsets[item]:brand.offsets[item + 1]]]
        assert got == ([want] if want else [])
    for item, want in _by_id(CATEGORIES).items():
        start, end = categories.offsets[item], categories.offsets[item + 1]
        got = [categories.vocabulary[c] for c in categories.codes[start:end]]
        assert sorted(got) == sorted(want or [])
    assert np.isnan(loaded.floats[0].values[0])  # id 0 pads
    # per-item arrays are maps of the file (shared by every step process), not copies
    assert all(isinstance(a, np.memmap) for f in loaded.tokens for a in (f.offsets, f.codes))
    assert isinstance(loaded.floats[0].values, np.memmap)
    assert loaded.schema().client_inputs() == [
        ("include_brand", "BYTES"), ("exclude_brand", "BYTES"), ("include_categories", "BYTES"),
        ("exclude_categories", "BYTES"), ("min_price", "FP32"), ("max_price", "FP32")]


@pytest.mark.parametrize("request_, admitted", [
    ({"include_brand": ["acme"]}, {4, 2}),
    ({"include_brand": ["acme", "crux"]}, {4, 2, 3}),
    ({"exclude_brand": ["acme"]}, {0, 1, 6, 3, 5}),  # no brand: not excluded (id 0 pads, never a row)
    ({"include_categories": ["kids", "hats"]}, {4, 6, 5}),
    ({"exclude_categories": ["kids"]}, {0, 1, 6, 2, 3}),
    ({"min_price": 10.0}, {1, 3, 5}),
    ({"min_price": 5.0, "max_price": 20.0}, {4, 1, 2, 5}),  # inclusive; NaN (id 6) fails any range
    ({"include_brand": ["bolt"], "exclude_categories": ["sale"], "max_price": 50.0}, {1}),
])
def test_each_filter_admits_what_brute_force_does(request_, admitted):
    fields = _fields()
    tokens, ranges = validate_field_filters(fields.schema(), 1, _tensors(**request_))
    assert set(np.flatnonzero(id_mask(fields, tokens[0], ranges[0])).tolist()) == admitted


def test_validation_refuses_by_name():
    schema = _fields().schema()
    with pytest.raises(RequestError, match=r"include_brand: unknown value 'zeta'"):
        validate_field_filters(schema, 1, _tensors(include_brand=["acme", "zeta"]))
    with pytest.raises(RequestError, match=r"exclude_categories: empty value at seed 0, position 0"):
        validate_field_filters(schema, 1, _tensors(exclude_categories=[""]))
    with pytest.raises(RequestError, match=rf"include_brand: between 1 and {MAX_FILTER_VALUES} values"):
        validate_field_filters(schema, 1, _tensors(include_brand=["acme"] * (MAX_FILTER_VALUES + 1)))
    with pytest.raises(RequestError, match=r"include_colour: not a filter of this build"):
        validate_field_filters(schema, 1, _tensors(include_colour=["red"]))
    with pytest.raises(RequestError, match=r"min_price, max_price: empty range"):
        validate_field_filters(schema, 1, _tensors(min_price=30.0, max_price=20.0))
    with pytest.raises(RequestError, match=r"min_price: expected shape \[2, 1\]"):
        validate_field_filters(schema, 2, _tensors(min_price=30.0))
    with pytest.raises(RequestError, match=r"unknown value 'x{10}") as refused:  # quoted, cut short
        validate_field_filters(schema, 1, _tensors(include_brand=["x" * 200]))
    assert "x" * 81 not in str(refused.value) and str(refused.value).endswith("known: acme, bolt, crux)")
    assert len(str(refused.value)) < 200
    tokens, ranges = validate_field_filters(schema, 3, {})
    assert tokens.shape == (3, 1) and (tokens == -1).all() and ranges.shape == (3, 2)


@pytest.mark.parametrize("values", [12, MAX_BIT_VALUES + 1], ids=["bitmask", "stored-codes"])
def test_the_row_bitmap_equals_brute_force_on_a_random_catalogue(tmp_path, values):
    """Both ways a token filter is read: a small vocabulary's per-item bitmask, a larger one's stored codes."""
    rng = np.random.default_rng(7)
    n = 500
    vocab = [f"v{j}" for j in range(values)]
    brands = [None if rng.random() < 0.1 else vocab[rng.integers(12)] for _ in range(n)]
    cats = [list(rng.choice(vocab, rng.integers(0, 4), replace=False)) for _ in range(n)]
    prices = np.where(rng.random(n) < 0.1, np.nan, rng.uniform(0, 100, n)).astype(np.float32)
    ids = rng.permutation(n) + 1
    fields = ItemFields((field_of_column("brand", token_column(pa.array(brands)), ids, n + 1),
                         field_of_column("cat", token_seq_column(pa.array(cats)), ids, n + 1),
                         field_of_column("price", FloatColumn(prices), ids, n + 1)))
    assert (fields.tokens[1].item_bits is None) == (values > MAX_BIT_VALUES)
    fields.save(tmp_path / "f")
    row_ids = rng.permutation(np.arange(1, n + 1))[: n - 20]  # an index (a shard) holding some items, any order
    rows = {int(i): r for r, i in enumerate(row_ids)}
    head = filters.HeadFilter(row_ids, lambda x: np.vectorize(lambda i: rows.get(int(i), -1))(x), tmp_path / "f",
                              lambda: np.zeros(0, np.int64))
    brand_of, cats_of, price_of = (dict(zip(ids.tolist(), v)) for v in (brands, cats, prices))
    requests = [{"include_brand": ["v1", "v2"]}, {"exclude_cat": ["v3"], "min_price": 20.0},
                {"include_cat": ["v4", "v5"], "exclude_brand": ["v4"], "max_price": 60.0}, {}]
    tensors = [validate_field_filters(fields.schema(), 1, _tensors(**r)) for r in requests]
    width = max(t.shape[1] for t, _ in tensors)
    tokens = np.stack([np.pad(t[0], (0, width - t.shape[1]), constant_values=-1) for t, _ in tensors])
    ranges = np.concatenate([r for _, r in tensors])
    allow = filters.unpack_rows(head.allow(len(requests), exclude_ids=np.full((4, 1), int(row_ids[0])),
                                           field_tokens=tokens, field_ranges=ranges), len(row_ids))
    for q, r in enumerate(requests):
        def ok(i: int, r=r) -> bool:
            p = float(price_of[i])
            return (i != row_ids[0]
                    and ("include_brand" not in r or brand_of[i] in r["include_brand"])
                    and ("exclude_brand" not in r or brand_of[i] not in r["exclude_brand"])
                    and ("include_cat" not in r or bool(set(cats_of[i]) & set(r["include_cat"])))
                    and ("exclude_cat" not in r or not set(cats_of[i]) & set(r["exclude_cat"]))
                    and ("min_price" not in r or p >= r["min_price"])
                    and ("max_price" not in r or p <= r["max_price"]))
        assert allow[q].tolist() == [ok(int(i)) for i in row_ids], r


def test_a_field_filter_on_a_build_without_the_table_is_refused():
    head = filters.HeadFilter(np.array([1, 2]), lambda x: x - 1, None, lambda: np.zeros(0, np.int64))
    assert head.allow(1, field_tokens=np.full((1, 1), -1, np.int64)) is None  # no filter: costs nothing
    with pytest.raises(ValueError, match="no item fields table"):
        head.allow(1, field_tokens=np.array([[3]], np.int64))


def test_the_configs_name_each_field_and_the_gateway_bounds_them():
    from widefunnel import model_configs as mcfg
    from widefunnel.gateway.models import Bounds, model_spec

    fields = tuple(_fields().schema().client_inputs())
    versions = dict.fromkeys(mcfg.STEP_MODELS, 1)
    for config in (mcfg.ensemble_config(mcfg.Target("cpu"), 2, versions, fields),
                   mcfg.retrieve_config(mcfg.Target("cpu"), 2, versions, fields)):
        spec = model_spec(config, Bounds())
        assert spec.inputs["include_brand"].datatype == "BYTES"
        assert spec.inputs["exclude_categories"].row_limit == MAX_FILTER_VALUES
        assert spec.inputs["min_price"].datatype == "FP32" and spec.inputs["max_price"].dims == (1,)
        assert "include_genre" not in spec.inputs and "exclude_item_id" in spec.inputs
    bare = mcfg.ensemble_config(mcfg.Target("cpu"), 2, versions)  # a build without a filterable field
    assert [t.name for t in bare.input][-1] == "exclude_item_id"
    assert "include_genre" not in model_spec(bare, Bounds()).inputs


# ---- MovieLens: its genres and release years are two instances of the rule, under the wire's names of old ------
def test_movielens_genre_and_year_keep_the_client_names_and_types():
    from widefunnel import model_configs as mcfg
    from widefunnel.data import load_catalogue
    from widefunnel.gateway.models import Bounds, model_spec
    from widefunnel.tensor_names import Client

    fields = load_catalogue().filter_fields
    assert [f.name for f in fields.fields] == [GENRE_FIELD, YEAR_FIELD]
    inputs = tuple(fields.schema().client_inputs())
    assert inputs == ((Client.INCLUDE_GENRE, "BYTES"), (Client.EXCLUDE_GENRE, "BYTES"), (Client.MIN_YEAR, "FP32"),
                      (Client.MAX_YEAR, "FP32"))
    versions = dict.fromkeys(mcfg.STEP_MODELS, 1)
    for config in (mcfg.ensemble_config(mcfg.Target("cpu"), 3, versions, inputs),
                   mcfg.retrieve_config(mcfg.Target("cpu"), 3, versions, inputs)):
        spec = model_spec(config, Bounds())
        assert [(t.name, spec.inputs[t.name].datatype) for t in config.input][-5:] == [
            (Client.EXCLUDE_ITEM_ID, "INT64"), *inputs]
        assert spec.inputs[Client.INCLUDE_GENRE].row_limit == MAX_FILTER_VALUES


def _movielens_admissible(catalogue, include=(), exclude=(), years=None) -> set[int]:
    """Today's rule, read straight from the catalogue: any of / none of the genres, an inclusive year range that
    an item of unknown year (0) never matches."""
    out = set()
    for item in catalogue.item_ids.tolist():
        genres, year = set(catalogue.genres[item]), int(catalogue.years[item])
        if (include and not genres & set(include)) or genres & set(exclude):
            continue
        if years is not None and not (year and years[0] <= year <= years[1]):
            continue
        out.add(item)
    return out


@pytest.mark.parametrize("request_", [
    {"include_genres": ["Comedy", "Romance"], "years": (1990, 1996)},
    {"exclude_genres": ["Drama", "Comedy"]},
    {"include_genres": ["unknown"]},  # the catalogue's name for an item without genres: a value like any
    {"years": (1900, 1940)},
    {"include_genres": ["Documentary"], "years": (1920, 1921)},  # nothing: an empty answer, not an error
])
def test_movielens_filters_admit_what_todays_rule_does(request_):
    from widefunnel.config import load_config
    from widefunnel.data import funnel_data, load_catalogue
    from widefunnel.dataset.movielens import load_movielens
    from widefunnel.validation import filter_tensors

    catalogue = load_catalogue()
    assert int((catalogue.years[catalogue.item_ids] == 0).sum()) >= 1  # an unknown year is in the test
    fields = catalogue.filter_fields
    built = funnel_data(load_movielens(), load_config()["dataset"])[0].filter_fields  # what a build writes
    assert built.schema() == fields.schema() and np.array_equal(built.floats[0].values, fields.floats[0].values,
                                                                equal_nan=True)
    tokens, ranges = validate_field_filters(fields.schema(), 1, filter_tensors(**request_))
    want = _movielens_admissible(catalogue, request_.get("include_genres", ()), request_.get("exclude_genres", ()),
                                 request_.get("years"))
    assert set(np.flatnonzero(id_mask(fields, tokens[0], ranges[0])).tolist()) - {0} == want  # 0 pads, no row


def test_appended_rows_give_the_tables_a_whole_build_of_the_grown_catalogue_gives(tmp_path):
    """`items add` appends the new items' rows to the filter tables (`appended_rows`, gaps before them
    included): the grown files equal the tables built whole from the grown catalogue's genres and years, and
    the new items are filterable by them."""
    from widefunnel.arrays import append_rows, load_table
    from widefunnel.builders.synthetic import extend_catalogue, plan
    from widefunnel.data import load_catalogue
    from widefunnel.field_filters import appended_rows, genre_year_fields
    from widefunnel.validation import filter_tensors

    catalogue = load_catalogue()
    wide = extend_catalogue(catalogue, plan(catalogue, len(catalogue.item_ids) + 50, 0))
    size = wide.table_size
    fields = wide.filter_fields
    fields.save(tmp_path / "old")
    added = {size + 1: ("Drama", "Comedy"), size + 4: ("unknown",)}  # a gap at size, size + 2 and size + 3
    years = np.array([0, 2031, 0, 0, 1999])  # the new rows' (0: unknown, or no item)
    new = genre_year_fields({i - size: g for i, g in added.items()}, years, catalogue.genre_names, 5)
    schema, tails = appended_rows(ItemFields.load(tmp_path / "old"), new)
    (tmp_path / "new").mkdir()
    for name, tail in tails.items():
        append_rows(tmp_path / "old" / name, tmp_path / "new" / name, len(load_table(tmp_path / "old" / name)), tail)
    whole = genre_year_fields(dict(wide.genres.items()) | added,
                              np.concatenate([wide.years[:size], years]), catalogue.genre_names, size + 5)
    for name, array in whole.arrays().items():
        rows = len(array)
        np.testing.assert_array_equal(load_table(tmp_path / "new" / name, rows), array)
    assert schema.tokens[0].vocabulary == whole.tokens[0].vocabulary
    assert len(load_table(tmp_path / "old" / "t0_offsets.npy")) == size + 1  # the old version reads its own rows
    tokens, ranges = validate_field_filters(whole.schema(), 1, filter_tensors(years=(2030, 2040)))
    assert set(np.flatnonzero(id_mask(whole, tokens[0], ranges[0])).tolist()) == {size + 1}


def test_a_widened_catalogue_gathers_the_tables_a_dict_of_its_genres_would_build():
    """`--items` keeps synthetic genres as `SourcedGenres` (8 bytes an item); the genre matrix and the filter
    table gathered from the real items equal those built item by item from the same genres as a dict."""
    from dataclasses import replace

    from widefunnel.builders.synthetic import extend_catalogue, plan
    from widefunnel.data import load_catalogue
    from widefunnel.genres import SourcedGenres

    catalogue = load_catalogue()
    wide = extend_catalogue(catalogue, plan(catalogue, len(catalogue.item_ids) + 3000, 7))
    assert isinstance(wide.genres, SourcedGenres)
    as_dict = replace(wide, genres=dict(wide.genres.items()))
    np.testing.assert_array_equal(wide.genre_matrix(), as_dict.genre_matrix())
    gathered, built = wide.filter_fields, as_dict.filter_fields
    for a, b in zip(gathered.tokens, built.tokens, strict=True):
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.codes, b.codes)
        assert a.vocabulary == b.vocabulary
    np.testing.assert_array_equal(gathered.floats[0].values, built.floats[0].values)
