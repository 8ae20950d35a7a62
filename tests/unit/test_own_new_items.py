"""`items add` on a dataset of its own (issue 29), without a server or a build: the new items' file read by the
dataset's own readers and checked against the build's item table (every refusal names file, line and field), their
fields coded with the build's vocabularies and statistics, the filters and the tower grown (served:
tests/served/test_own_catalogue.py)."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from widefunnel.arrays import append_rows, load_table, write_listed_rows
from widefunnel.builders.models import ItemTower
from widefunnel.builders.new_items import NewItemsError, ServedCatalogue, embed_new, own_additions
from widefunnel.builders.train import tower_features
from widefunnel.config import load_config
from widefunnel.data import funnel_data
from widefunnel.dataset import DatasetConfig, DatasetError, load_dataset
from widefunnel.dataset.additions import ItemCoding, read_new_items
from widefunnel.dataset.features import code_features, item_features
from widefunnel.field_filters import ANY_OF, ItemFields, appended_rows, id_mask, pack_token

HEADER = "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tprice:float"
ITEMS = HEADER + "\n" \
    "1000000000042\tRed shoe\tacme\tshoes kids\t10\n" \
    "1000000000007\tBlue hat\tbolt\thats\t20\n" \
    "1000000000099\tGreen coat\tacme\tcoats sale\t\n" \
    "1000000000013\tGrey sock\tcrux\tshoes\t40\n"
INTER = "user_id:token\titem_id:token\ttimestamp:float\n" \
    "alice\t1000000000042\t100\n" \
    "bob\t1000000000007\t101\n" \
    "alice\t1000000000099\t102\n" \
    "bob\t1000000000013\t103\n"
TABLE = {"path": "toy", "positive": "", "tasks": {"engaged": ""}}
NEW = HEADER + "\n" \
    "2000000000001\tRed boot\tnewco\tshoes winter\t25\n" \
    "2000000000002\tBlue cap\tbolt\thats\t\n"


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy.item").write_text(ITEMS)
    (folder / "toy.inter").write_text(INTER)
    dataset = load_dataset(folder)
    catalogue, _ = funnel_data(dataset, TABLE)
    return SimpleNamespace(dataset=dataset, catalogue=catalogue, coding=catalogue.coding)


def _read(build, tmp_path: Path, text: str | bytes, name: str = "new.item", max_items: int = 100):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    known = build.catalogue.external_ids[build.catalogue.external_ids >= 0]
    return read_new_items(path, build.coding, DatasetConfig(), known, max_items)


def test_the_build_keeps_how_it_coded_its_fields(build):
    coding = build.coding
    assert coding.id_field == "item_id" and coding.title_field == "title"
    assert coding.text_fields == ("title", "categories")  # every token_seq field, in file order
    by_name = {f.name: f for f in coding.fields}
    assert by_name["brand"].vocabulary == ("", "acme", "bolt", "crux")
    assert by_name["categories"].width == 2
    prices = np.array([10, 20, 40], np.float32).astype(np.float64)
    assert by_name["price"].mean == pytest.approx(prices.mean())
    assert by_name["price"].scale == pytest.approx(prices.std())
    again = ItemCoding.from_state(torch.load(io.BytesIO(_saved(coding.to_state())), weights_only=True))
    assert again == coding  # the build state holds it as plain containers


def _saved(obj) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


def test_coding_the_builds_own_items_again_gives_the_builds_features(build):
    """The build's items through `code_features` equal `item_features`: the two share one coding."""
    built, again = item_features(build.dataset.items), code_features(build.dataset.items, build.coding.fields)
    assert built.vocabulary == again.vocabulary and built.dense_names == again.dense_names
    for name in built.tokens:
        np.testing.assert_array_equal(built.tokens[name], again.tokens[name])
    for name in built.bags:
        np.testing.assert_array_equal(built.bags[name], again.bags[name])
    np.testing.assert_array_equal(built.dense, again.dense)


def test_new_items_are_coded_with_the_builds_vocabularies_and_statistics(build, tmp_path):
    new = _read(build, tmp_path, NEW)
    assert new.ids.tolist() == [2000000000001, 2000000000002]
    assert new.titles == ["Red boot", "Blue cap"]
    assert new.texts == ["Red boot. shoes winter", "Blue cap. hats"]  # `Dataset.text`, the build's text fields
    features = code_features(new.items, build.coding.fields)
    by_name = {f.name: f for f in build.coding.fields}
    brand = by_name["brand"].vocabulary
    assert features.tokens["brand"].tolist() == [0, 0, brand.index("bolt")]  # newco: never seen -> OOV code 0
    categories = by_name["categories"].vocabulary
    assert features.bags["categories"].tolist() == [[0, 0], [categories.index("shoes"), 0],  # winter: unseen -> 0
                                                    [categories.index("hats"), 0]]  # padded to the build's width 2
    price = by_name["price"]
    assert features.dense_names == ("price", "price:missing")
    np.testing.assert_allclose(features.dense[1], [(25 - price.mean) / price.scale, 0], rtol=1e-6)
    np.testing.assert_array_equal(features.dense[2], [0, 1])  # missing: 0 and its flag


def test_parquet_new_items_read_as_the_atomic_file(build, tmp_path):
    table = pa.table({"item_id": pa.array([2000000000002, 2000000000001], pa.int64()),
                      "title": [["Blue", "cap"], ["Red", "boot"]], "brand": ["bolt", "newco"],
                      "categories": [["hats"], ["shoes", "winter"]], "price": pa.array([None, 25.0], pa.float64())})
    pq.write_table(table, tmp_path / "new.parquet")
    known = build.catalogue.external_ids[build.catalogue.external_ids >= 0]
    from_parquet = read_new_items(tmp_path / "new.parquet", build.coding, DatasetConfig(), known, 100)
    from_atomic = _read(build, tmp_path, NEW)
    assert from_parquet.ids.tolist() == from_atomic.ids.tolist()
    assert (from_parquet.texts, from_parquet.titles) == (from_atomic.texts, from_atomic.titles)
    a, b = (code_features(x.items, build.coding.fields) for x in (from_parquet, from_atomic))
    np.testing.assert_array_equal(a.dense, b.dense)
    assert all(np.array_equal(a.bags[k], b.bags[k]) for k in a.bags)
    pq.write_table(table.append_column("colour", pa.array(["red", "blue"])), tmp_path / "extra.parquet")
    with pytest.raises(DatasetError, match=r"extra.parquet: field 'colour': not a field of the build's item table"):
        read_new_items(tmp_path / "extra.parquet", build.coding, DatasetConfig(), known, 100)


ROW = "2000000000001\tRed boot\tnewco\tshoes\t25"


@pytest.mark.parametrize("text, line, field, match", [
    (HEADER + "\tcolour:token\n" + ROW + "\tred\n", 1, "colour",
     r"not a field of the build's item table \(fields: item_id, title, brand, categories, price\)"),
    ("item_id:token\ttitle:token_seq\tbrand:token\tprice:float\n2000000000001\tRed boot\tnewco\t25\n", 1,
     "categories", r"missing: the build's item table has this field"),
    (HEADER.replace("price:float", "price:token") + "\n" + ROW + "\n", 1, "price", r"token here, float in the build"),
    (NEW + "2000000000003\tOdd\tacme\tshoes\tcheap\n", 4, "price", r"'cheap' is not a number \(type float\)"),
    (NEW + "2000000000001\tAgain\tacme\tshoes\t5\n", 4, "item_id",
     r"item id 2000000000001 appears twice in this file"),
    (NEW + "1000000000013\tOld\tacme\tshoes\t5\n", 4, "item_id", r"item id 1000000000013 is already in the catalogue"),
    (HEADER + "\n12ab\tRed boot\tnewco\tshoes\t25\n", 2, "item_id", r"item id '12ab' is not an integer"),
    (HEADER + "\n2000000000001\tRed boot\tnewco\n", 2, "categories", r"3 column\(s\), expected 5"),
    ("title:token_seq\tbrand:token\n" "Red boot\tnewco\n", 1, "item_id", r"missing: no field 'item_id'"),
])
def test_a_bad_file_is_refused_naming_file_line_and_field(build, tmp_path, text, line, field, match):
    with pytest.raises(DatasetError, match=match) as refused:
        _read(build, tmp_path, text)
    e = refused.value
    assert (Path(e.file).name, e.line, e.field) == ("new.item", line, field), str(e)
    assert str(e).startswith(f"{tmp_path / 'new.item'}: line {line}: field '{field}': ")  # what the CLI prints


def test_more_items_than_the_limit_are_refused_by_line(build, tmp_path):
    with pytest.raises(DatasetError, match=r"new.item: line 3: more than 1 items in one file"):
        _read(build, tmp_path, NEW, max_items=1)


def _served(build) -> ServedCatalogue:
    catalogue = build.catalogue
    return ServedCatalogue(catalogue.table_size, np.sort(catalogue.external_ids[catalogue.external_ids >= 0]),
                           catalogue.item_fields)


def _state(build, tower=None, coding=True) -> SimpleNamespace:
    return SimpleNamespace(coding=build.coding if coding else None, cfg={"dataset": {}}, tower=tower)


def test_new_values_become_filterable_and_old_codes_keep_their_meaning(build, tmp_path):
    catalogue = build.catalogue
    (tmp_path / "new.item").write_text(NEW)
    added = own_additions(tmp_path / "new.item", _served(build), _state(build))
    assert added.internal.tolist() == [5, 6] and added.table_size() == 7  # the next internal ids, in id order
    assert added.external.tolist() == [2000000000001, 2000000000002]
    assert added.titles == ["Red boot", "Blue cap"] and added.texts[1] == "Blue cap. hats"
    catalogue.item_fields.save(tmp_path / "old")
    schema, tails = appended_rows(ItemFields.load(tmp_path / "old"), added.fields)
    rows = {}
    (tmp_path / "new").mkdir()
    for name, tail in tails.items():
        old = tmp_path / "old" / name
        append_rows(old, tmp_path / "new" / name, len(load_table(old)), tail)
        rows[name] = len(load_table(old)) + len(tail)
    write_listed_rows(tmp_path / "new", rows)
    schema.save_schema(tmp_path / "new")
    fields = ItemFields.load(tmp_path / "new")
    assert fields.table_size == 7
    slots = {f.name: j for j, f in enumerate(fields.tokens)}
    brand = fields.tokens[slots["brand"]]
    old_brand = catalogue.item_fields.tokens[slots["brand"]]
    assert brand.vocabulary[:4] == old_brand.vocabulary == ("", "acme", "bolt", "crux")
    assert brand.vocabulary[4:] == ("newco",)  # a brand new to the build joins the end: filterable by name

    def admitted(name: str, value: str) -> list[int]:
        slot = slots[name]
        code = fields.tokens[slot].vocabulary.index(value)
        return np.flatnonzero(id_mask(fields, pack_token(slot, ANY_OF, np.array([code])), None)).tolist()

    # internal ids by sorted external id: 1 = ...07 (bolt), 2 = ...13 (crux), 3 = ...42 (acme), 4 = ...99 (acme)
    assert admitted("brand", "newco") == [5]  # exactly the new item with that brand
    assert admitted("brand", "bolt") == [1, 6]  # an old brand: its old item and the new one
    assert admitted("categories", "winter") == [5] and admitted("categories", "shoes") == [2, 3, 5]
    prices = fields.floats[0].values
    assert prices[1:4].tolist() == [20, 40, 10] and np.isnan(prices[4]) and prices[5] == 25 and np.isnan(prices[6])
    assert ItemFields.load(tmp_path / "old").table_size == 5  # the old version still reads its own rows


def test_a_copy_of_an_old_item_is_placed_as_that_item_served_cold(build, tmp_path):
    """A new item with an old item's fields and content gets that item's field rows (the build's embedding rows)
    and the embedding the trained tower gives the old item with no id embedding and no popularity."""
    catalogue = build.catalogue
    size = catalogue.table_size
    content = np.random.default_rng(0).normal(size=(size, 8)).astype(np.float32)
    cfg = load_config()["towers"]
    features = tower_features(catalogue, np.ones(size), content, np.arange(size))
    torch.manual_seed(0)
    tower = ItemTower(features, cfg).eval()
    twin = int(np.flatnonzero(catalogue.external_ids == 1000000000042)[0])
    with torch.no_grad():
        want = [t.numpy() for t in tower(torch.tensor([twin]), cold=torch.tensor([True]))]
    (tmp_path / "new.item").write_text(HEADER + "\n2000000000005\tRed shoe\tacme\tshoes kids\t10\n")
    added = own_additions(tmp_path / "new.item", _served(build), _state(build, tower))
    placed = added.features(content[twin:twin + 1])
    for i, bag in enumerate(placed.bags):
        assert torch.equal(bag[1], getattr(tower, f"bag_{i}")[twin])
    assert torch.equal(placed.floats[1], tower.floats[twin])
    got = embed_new(copy.deepcopy(tower), placed)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_file_for_another_format_or_an_older_state_is_refused(build, tmp_path):
    jsonl = tmp_path / "new.jsonl"
    jsonl.write_text('{"id": 1, "title": "x"}\n')
    with pytest.raises(NewItemsError, match=r"new.jsonl: a build of a dataset of its own takes new items in that "
                                            r"dataset's format: a RecBole atomic .item file"):
        own_additions(jsonl, _served(build), _state(build))
    (tmp_path / "new.item").write_text(NEW)
    with pytest.raises(NewItemsError, match=r"was written before `items add` took a dataset's own items"):
        own_additions(tmp_path / "new.item", _served(build), _state(build, coding=False))
