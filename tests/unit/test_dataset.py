"""The dataset layer (widefunnel/dataset, issue 29): atomic and Parquet read the same, every refusal names the
file, the line and the field, ids may be sparse and large, MovieLens reads through it exactly as data.py does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from widefunnel import data
from widefunnel.dataset import (
    DatasetConfig,
    DatasetConfigError,
    DatasetError,
    FloatColumn,
    FloatSeqColumn,
    IdIndex,
    Kind,
    TokenColumn,
    TokenSeqColumn,
    load_dataset,
)
from widefunnel.dataset.synthetic_shop import generate_shop, write_atomic, write_parquet

ITEMS = "item_id:token\ttitle:token_seq\tgenre:token\tprice:float\tvec:float_seq\n" \
        "1000000000042\tRed shoe\tshoes\t9.5\t0.1 0.2\n" \
        "7\tBlue  hat\t\t\t\n" \
        "4611686018427387903\tGreen coat\tcoats\t120\t1 2 3\n"
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" \
        "alice\t7\t5\t100\n" \
        "bob\t1000000000042\t3\t101\n" \
        "alice\t4611686018427387903\t4\t102\n"


def _atomic(folder: Path, item: str = ITEMS, inter: str = INTER, name: str = "toy", encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.item").write_bytes(item.encode(encoding) if isinstance(item, str) else item)
    (folder / f"{name}.inter").write_bytes(inter.encode(encoding) if isinstance(inter, str) else inter)
    return folder


def _refused(folder: Path, file: str, line: int | None, field: str | None, match: str,
             config: DatasetConfig | None = None) -> DatasetError:
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(folder, config)
    e = info.value
    assert (Path(e.file).name, e.line, e.field) == (file, line, field), str(e)
    assert file in str(e) and (line is None or f"line {line}" in str(e)) and (field is None or field in str(e))
    return e


# --- a small catalogue, every type ----------------------------------------------------------------------------

def test_types_ids_and_text_of_a_small_catalogue(tmp_path):
    ds = load_dataset(_atomic(tmp_path))
    assert ds.items.ids.tolist() == [7, 1000000000042, 2**62 - 1]  # sorted; rows follow
    assert [f.kind for f in ds.item_schema] == [Kind.TOKEN, Kind.TOKEN_SEQ, Kind.TOKEN, Kind.FLOAT, Kind.FLOAT_SEQ]
    genre = ds.items.columns["genre"]
    assert isinstance(genre, TokenColumn) and genre.vocabulary.to_pylist() == ["", "coats", "shoes"]
    assert genre.codes.tolist() == [0, 2, 1] and genre.codes.dtype == np.int32  # 0: missing
    title = ds.items.columns["title"]
    assert isinstance(title, TokenSeqColumn) and title.offsets.tolist() == [0, 2, 4, 6]  # "Blue  hat": 2 tokens
    assert ds.titles() == ["Blue hat", "Red shoe", "Green coat"]
    price = ds.items.columns["price"]
    assert isinstance(price, FloatColumn) and np.isnan(price.values[0]) and price.values[1:].tolist() == [9.5, 120]
    vec = ds.items.columns["vec"]
    assert isinstance(vec, FloatSeqColumn) and vec.offsets.tolist() == [0, 0, 2, 5]
    np.testing.assert_allclose(vec.values, [0.1, 0.2, 1, 2, 3], rtol=1e-6)
    assert ds.text_fields == ("title",) and ds.text([2, 0]) == ["Green coat", "Blue hat"]
    inter = ds.interactions
    assert inter.items.tolist() == [0, 1, 2] and inter.users.tolist() == [0, 1, 0]
    assert inter.user_vocabulary.to_pylist() == ["alice", "bob"] and inter.timestamps.tolist() == [100, 101, 102]
    assert inter.columns["rating"].values.tolist() == [5, 3, 4] and ds.popularity().tolist() == [1, 1, 1]


def test_roles_map_other_field_names_and_text_fields_are_chosen(tmp_path):
    item = "sku:token\tname:token_seq\tbrand:token\n12\ta b\tacme\n"
    inter = "customer:token\tsku:token\twhen:float\n" + "c1\t12\t5\n"
    config = DatasetConfig.from_table({"roles": {"item_id": "sku", "user_id": "customer", "timestamp": "when"},
                                       "text_fields": ["brand", "name"]})
    ds = load_dataset(_atomic(tmp_path, item, inter), config)
    assert ds.field("item_id") == "sku" and ds.items.ids.tolist() == [12]
    assert ds.text() == ["acme. a b"] and ds.title_field == "name"


def test_log_roles_are_the_logs_only(tmp_path):
    item = "item_id:token\ttitle:token_seq\ttimestamp:token\n7\tx\tspring 2024\n"  # an item field of that name
    ds = load_dataset(_atomic(tmp_path, item, INTER.split("bob")[0]))
    assert ds.strings("timestamp") == ["spring 2024"]


# --- Parquet: one file or a folder of parts reads as the atomic version --------------------------------------

def _same(a, b) -> None:
    assert np.array_equal(a.items.ids, b.items.ids)
    assert a.items.columns.keys() == b.items.columns.keys() and a.text_fields == b.text_fields
    for name, col in a.items.columns.items():
        other = b.items.columns[name]
        for attr in ("codes", "offsets", "values"):
            if hasattr(col, attr):
                assert np.array_equal(getattr(col, attr), getattr(other, attr), equal_nan=attr == "values"), name
        if hasattr(col, "vocabulary"):
            assert col.vocabulary.equals(other.vocabulary), name
    x, y = a.interactions, b.interactions
    assert np.array_equal(x.users, y.users) and x.user_vocabulary.equals(y.user_vocabulary)
    assert np.array_equal(x.items, y.items) and np.array_equal(x.timestamps, y.timestamps)
    assert x.columns.keys() == y.columns.keys()
    for name, col in x.columns.items():
        assert np.array_equal(col.codes, y.columns[name].codes) and col.vocabulary.equals(y.columns[name].vocabulary)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    tables = generate_shop(n_users=300, n_items=2000, n_interactions=20000, seed=3)
    root = tmp_path_factory.mktemp("shop")
    return tables, write_atomic(tables, root / "atomic"), write_parquet(tables, root / "parts", parts=3), \
        write_parquet(tables, root / "single", parts=0)


def test_parquet_parts_and_single_file_read_as_the_atomic_files(shop):
    _, atomic, parts, single = shop
    assert sorted(p.name for p in (parts / "inter").iterdir()) == ["_SUCCESS"] + [f"part-0000{k}.parquet"
                                                                                  for k in range(3)]
    a = load_dataset(atomic)
    _same(a, load_dataset(parts))
    _same(a, load_dataset(single))


def test_the_shop_is_reproducible():
    a, b = generate_shop(50, 100, 1000, seed=7), generate_shop(50, 100, 1000, seed=7)
    assert a.items.equals(b.items) and a.inter.equals(b.inter)
    assert not a.inter.equals(generate_shop(50, 100, 1000, seed=8).inter)


def test_the_shop_reads_back_with_its_structure(shop):
    tables, atomic, _, _ = shop
    ds = load_dataset(atomic)
    assert len(ds.items) == 2000 and len(ds.interactions) == 20000
    assert ((ds.items.ids >= 10**12) & (ds.items.ids < 10**13)).all()  # sparse 13-digit SKUs
    assert np.array_equal(np.sort(tables.items.column("item_id").to_numpy()), ds.items.ids)
    assert ds.text_fields == ("title", "description", "categories") and ds.title_field == "title"
    assert all(t.count(". ") == 2 for t in ds.text(np.arange(5)))
    event = ds.interactions.columns["event"]
    assert event.vocabulary.to_pylist() == ["", "purchase", "view"]
    assert 0.01 < (event.codes == 1).mean() < 0.2
    # co-engagement: a user's consecutive events share a category far more often than two random events do
    cats = ds.items.columns["categories"]
    leaf = cats.codes[cats.offsets[1:] - 1][ds.interactions.items]
    order = np.lexsort((ds.interactions.timestamps, ds.interactions.users))
    u, c = ds.interactions.users[order], leaf[order]
    same_user = u[1:] == u[:-1]
    together = (c[1:] == c[:-1])[same_user].mean()
    rng = np.random.default_rng(0)
    assert together > 3 * (c == rng.permutation(c)).mean()


# --- ids ------------------------------------------------------------------------------------------------------

def test_sparse_large_ids_round_trip_and_cost_follows_the_item_count():
    ids = np.array([2**62 - 1, 0, 1234567890123, 9999999999999, 42], dtype=np.int64)
    index, order, dup = IdIndex.build(ids)
    assert dup is None and index.ids.nbytes == 5 * 8 and np.array_equal(index.ids, ids[order])
    rows, missing = index.rows(np.array([42, 2**62 - 1, 43, 1234567890123]))
    assert rows.tolist() == [1, 4, -1, 2] and missing.tolist() == [False, False, True, False]
    assert np.array_equal(index.ids_of(index.rows(ids)[0]), ids)
    many = np.resize(np.array([42, 2**62 - 1, 43, 1234567890123]), 10_000)  # the hash path, same answer
    assert np.array_equal(index.rows(many)[0], np.resize(rows, 10_000))
    assert np.array_equal(index.rows(many)[1], np.resize(missing, 10_000))
    contiguous = IdIndex(np.arange(5, 10))
    assert contiguous.rows(np.array([5, 9, 10, 4]))[0].tolist() == [0, 4, -1, -1]
    assert IdIndex.build(np.array([3, 1, 3]))[2] == 2  # the second 3, in file order


@pytest.mark.parametrize("bad, why", [("SKU-1", "not an integer"), ("12.0", "not an integer"),
                                      ("-5", "not an integer"), ("4611686018427387904", "out of range"),
                                      ("99999999999999999999", "not an integer")])
def test_non_integer_ids_are_refused_by_name(tmp_path, bad, why):
    item = ITEMS.replace("\n7\t", f"\n{bad}\t")
    e = _refused(_atomic(tmp_path, item), "toy.item", 3, "item_id", why)
    assert repr(bad) in str(e) and "2^62" in str(e)


def test_parquet_ids_must_be_integers(tmp_path):
    pq.write_table(pa.table({"item_id": ["a1", "b2"], "title": [["x"], ["y"]]}), tmp_path / "item.parquet")
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["a1"], "timestamp": [1]}), tmp_path / "inter.parquet")
    _refused(tmp_path, "item.parquet", None, "item_id", "not integers")
    pq.write_table(pa.table({"item_id": [1, -3], "title": [["x"], ["y"]]}), tmp_path / "item.parquet")
    _refused(tmp_path, "item.parquet", 2, "item_id", "item id -3 is out of range")


# --- refusals: file, line, field --------------------------------------------------------------------------------

def test_a_missing_role_field_is_named(tmp_path):
    inter = "user_id:token\titem_id:token\trating:float\n" + "alice\t7\t5\n"
    _refused(_atomic(tmp_path, inter=inter), "toy.inter", 1, "timestamp", "missing")
    config = DatasetConfig.from_table({"roles": {"item_id": "sku"}})
    _refused(_atomic(tmp_path / "b"), "toy.item", 1, "sku", r"no field 'sku' \(role item_id\)", config)


def test_an_unknown_header_type_is_named(tmp_path):
    _refused(_atomic(tmp_path, ITEMS.replace("price:float", "price:int")), "toy.item", 1, "price",
             "unknown type 'int'")


@pytest.mark.parametrize("old, new, file, line, field, match", [
    ("\t9.5\t", "\t9,5\t", "toy.item", 2, "price", "'9,5' is not a number"),
    ("\t1 2 3\n", "\t1 x 3\n", "toy.item", 4, "vec", "'x' is not a number"),
    ("bob\t1000000000042\t3\t101", "bob\t1000000000042\t3\tyesterday", "toy.inter", 3, "timestamp",
     "'yesterday' is not a number"),
    ("bob\t1000000000042\t3\t101", "\t1000000000042\t3\t101", "toy.inter", 3, "user_id", "empty value"),
    ("alice\t7\t5\t100", "alice\t\t5\t100", "toy.inter", 2, "item_id", "empty item id"),
    ("alice\t7\t5\t100", "alice\t7\t5\tnan", "toy.inter", 2, "timestamp", "not a finite number"),
])
def test_a_value_that_does_not_parse_is_named(tmp_path, old, new, file, line, field, match):
    item, inter = (ITEMS.replace(old, new), INTER) if file == "toy.item" else (ITEMS, INTER.replace(old, new))
    _refused(_atomic(tmp_path, item, inter), file, line, field, match)


def test_rows_with_too_few_or_too_many_columns_are_named(tmp_path):
    _refused(_atomic(tmp_path, inter=INTER.replace("bob\t1000000000042\t3\t101", "bob\t1000000000042\t3")),
             "toy.inter", 3, "timestamp", r"3 column\(s\), expected 4 \(too few")
    _refused(_atomic(tmp_path / "b", inter=INTER + "carol\t7\t1\t103\textra\n"), "toy.inter", 5, None, "too many")
    _refused(_atomic(tmp_path / "c", inter=INTER.replace("\nbob", "\n\nbob")), "toy.inter", 3, None,
             "blank line")  # refused, not skipped: line numbers stay true


def test_an_empty_table_is_refused(tmp_path):
    _refused(_atomic(tmp_path, inter=INTER.split("\n")[0] + "\n"), "toy.inter", 2, None, "empty table")
    _refused(_atomic(tmp_path / "b", item=""), "toy.item", 1, None, "no header")


def test_log_rows_of_unknown_items_are_counted_then_refused_or_dropped(tmp_path):
    inter = INTER + "bob\t555\t1\t103\ncarol\t556\t2\t104\n"
    e = _refused(_atomic(tmp_path, inter=inter), "toy.inter", 5, "item_id", "2 log row")
    assert "first: item 555" in str(e) and 'unknown_items = "drop"' in str(e)
    ds = load_dataset(tmp_path, DatasetConfig.from_table({"unknown_items": "drop"}))
    assert len(ds.interactions) == 3 and ds.dropped_interactions == 2
    assert ds.interactions.user_vocabulary.to_pylist() == ["alice", "bob"]  # carol only named a dropped item


def test_duplicate_item_ids_are_refused(tmp_path):
    _refused(_atomic(tmp_path, ITEMS + "0007\tOld hat\thats\t1\t\n"), "toy.item", 5, "item_id", "appears twice")


def test_invalid_utf8_is_named_by_line_and_other_encodings_are_a_key(tmp_path):
    item = ITEMS.encode().replace(b"Green coat", b"Gr\xfcn coat")
    _refused(_atomic(tmp_path, item), "toy.item", 4, "title", "invalid utf-8")
    ds = load_dataset(tmp_path, DatasetConfig.from_table({"encoding": "latin-1"}))
    assert ds.titles()[2] == "Grün coat"


def test_the_folder_layout_is_checked(tmp_path):
    folder = _atomic(tmp_path)
    (folder / "toy.user").write_text("user_id:token\nalice\n")  # ignored
    assert len(load_dataset(folder).items) == 3
    (folder / "more.inter").write_text(INTER)
    _refused(folder, tmp_path.name, None, None, r"exactly one '.inter' file, found 2")
    _refused(tmp_path / "toy.item", "toy.item", None, None, "not a folder")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", "empty", None, None, "neither atomic")


def test_parquet_refusals_name_the_part_file_and_row(tmp_path):
    items = pa.table({"item_id": pa.array([1, 2, 3], pa.int64()), "title": [["a"], ["b"], ["c"]]})
    pq.write_table(items, tmp_path / "item.parquet")
    (tmp_path / "inter").mkdir()
    pq.write_table(pa.table({"user_id": ["u", "v"], "item_id": [1, 2], "timestamp": [5, 6]}),
                   tmp_path / "inter" / "part-0.parquet")
    pq.write_table(pa.table({"user_id": ["u", "w"], "item_id": [3, 9], "timestamp": [7, 8]}),
                   tmp_path / "inter" / "part-1.parquet")
    _refused(tmp_path, "part-1.parquet", 2, "item_id", "1 log row")
    pq.write_table(pa.table({"user_id": ["u", ""], "item_id": [3, 1], "timestamp": [7, 8]}),
                   tmp_path / "inter" / "part-1.parquet")
    _refused(tmp_path, "part-1.parquet", 2, "user_id", "empty value")
    pq.write_table(pa.table({"user_id": ["u"], "item_id": [3], "when": [7]}), tmp_path / "inter" / "part-1.parquet")
    pq.write_table(pa.table({"user_id": ["u"], "item_id": [3], "when": [7]}), tmp_path / "inter" / "part-0.parquet")
    _refused(tmp_path, "inter", None, "timestamp", "missing")
    pq.write_table(items.append_column("when", pa.array([1, 2, 3], pa.timestamp("s"))), tmp_path / "item.parquet")
    _refused(tmp_path, "item.parquet", None, "when", "unsupported Arrow type")
    pq.write_table(items.slice(0, 0), tmp_path / "item.parquet")
    _refused(tmp_path, "item.parquet", None, None, "empty table")
    pq.write_table(items, tmp_path / "item.parquet")
    for part in (tmp_path / "inter").iterdir():
        part.rename(part.with_name("_" + part.name))  # Spark's _SUCCESS and friends are not data
    _refused(tmp_path, "inter", None, None, "no Parquet part files")


def test_parquet_timestamps_and_integer_ratings_are_numbers(tmp_path):
    pq.write_table(pa.table({"item_id": pa.array([5], pa.uint32()), "title": pa.array(["x y"]).cast(
        pa.dictionary(pa.int8(), pa.string())), "tags": [[3, 4]]}), tmp_path / "item.parquet")
    pq.write_table(pa.table({"user_id": [17], "item_id": [5], "rating": [4],
                             "timestamp": pa.array([1_700_000_000_500], pa.timestamp("ms"))}),
                   tmp_path / "inter.parquet")
    config = DatasetConfig.from_table({"text_fields": ["title"]})
    ds = load_dataset(tmp_path, config)
    assert ds.interactions.timestamps.tolist() == [1_700_000_000.5]
    assert ds.interactions.columns["rating"].values.tolist() == [4.0]
    assert ds.items.columns["tags"].vocabulary.to_pylist() == ["", "3", "4"]
    assert ds.interactions.user_vocabulary.to_pylist() == ["17"] and ds.titles() == ["x y"]


def test_config_keys_are_validated_by_name(tmp_path):
    for table, match in [({"pth": "x"}, "dataset.pth"), ({"unknown_items": "keep"}, "dataset.unknown_items"),
                         ({"encoding": "klingon"}, "dataset.encoding"), ({"roles": {"sku": "x"}}, "dataset.roles.sku"),
                         ({"roles": {"item_id": "user_id"}}, "dataset.roles"), ({"format": "csv"}, "dataset.format"),
                         ({"text_fields": "title"}, "dataset.text_fields")]:
        with pytest.raises(DatasetConfigError, match=match.replace(".", r"\.")):
            DatasetConfig.from_table(table)
    _refused(_atomic(tmp_path), "toy.item", 1, "blurb", "text_fields names 'blurb'",
             DatasetConfig.from_table({"text_fields": ["blurb"]}))
    _refused(tmp_path, "toy.item", 1, "price", "a float field",
             DatasetConfig.from_table({"title_field": "price"}))


# --- MovieLens-100K through this path ---------------------------------------------------------------------------

def test_movielens_through_the_dataset_layer_equals_todays_loader():
    from widefunnel.dataset.movielens import load_movielens

    ds = load_movielens()
    assert ds.text_fields == ("movie_title", "class") and ds.title_field == "movie_title"
    got, want = data.catalogue_of(ds), data.load_catalogue()
    assert np.array_equal(got.item_ids, want.item_ids) and got.item_ids.dtype == want.item_ids.dtype
    assert got.titles == want.titles and got.genres == want.genres and got.genre_names == want.genre_names
    assert np.array_equal(got.years, want.years) and got.years.dtype == want.years.dtype
    got_inter, want_inter = data.interactions_of(ds), data.load_interactions()
    for name in ("users", "items", "ratings", "timestamps"):
        a, b = getattr(got_inter, name), getattr(want_inter, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
