"""`items add` without a server or a build: the file's validation (errors name line and field) and the grown
catalogue (the grown build: tests/served/test_new_items_served.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from widefunnel.builders import new_items
from widefunnel.builders.new_items import NewItemsError, ServedCatalogue, add_items
from widefunnel.data import load_catalogue

CAT = load_catalogue()
SERVED = ServedCatalogue(CAT.table_size, CAT.item_ids, None)


def parse_new_items(text: str, source: str, served: ServedCatalogue = SERVED):
    return new_items.parse_new_items(text, source, served, CAT.genre_names)


def _jsonl(*rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def test_json_lines_and_csv_parse_to_the_same_items():
    rows = [{"id": 5000, "title": "A New Film", "year": 2024, "genres": ["Comedy", "Drama"]},
            {"id": 5001, "title": "Another, With A Comma", "year": None, "genres": []}]
    from_json = parse_new_items(_jsonl(*rows), "new.jsonl")
    csv = 'id,title,year,genres\n5000,A New Film,2024,Comedy|Drama\n5001,"Another, With A Comma",,\n'
    assert parse_new_items(csv, "new.csv") == from_json
    assert from_json[0].genres == ("Comedy", "Drama") and from_json[1].year == 0
    assert from_json[1].genres == ("unknown",)  # as the catalogue marks an item without genres
    assert from_json[0].text() == "A New Film (2024). Genres: Comedy, Drama."


@pytest.mark.parametrize("text, message", [
    (_jsonl({"id": 5000, "title": "x", "genres": ["Space Western"]}), r"new:1: field 'genres': unknown genre"),
    (_jsonl({"id": 5000, "title": "x"}, {"id": 5000, "title": "y"}), r"new:2: field 'id': 5000 also on new:1"),
    (_jsonl({"id": 1, "title": "x"}), r"new:1: field 'id': 1 is already in the catalogue"),
    (_jsonl({"id": -3, "title": "x"}), r"new:1: field 'id': must be a positive integer"),
    (_jsonl({"id": "7x", "title": "x"}), r"new:1: field 'id': '7x' is not an item id"),
    (_jsonl({"id": "50_00", "title": "x"}), r"new:1: field 'id': '50_00' is not an item id"),
    (_jsonl({"id": "\uff15\uff10\uff10\uff10", "title": "x"}), r"new:1: field 'id': '.*' is not an item id"),
    (_jsonl({"id": 2.5, "title": "x"}), r"new:1: field 'id': must be a positive integer, got 2.5"),
    ("id,title\n5000,x\n\u00b2,y\n", r"new:3: field 'id': '\u00b2' is not an item id"),
    (_jsonl({"id": 5000, "title": "x", "year": "\u00b9\u2079\u2079\u2079"}), r"new:1: field 'year': must be a year"),
    (_jsonl({"id": 10 ** 9, "title": "x"}), r"new:1: field 'id': .* more than 1000000 past the largest id"),
    (_jsonl({"id": 5000, "title": "x", "year": 3000}), r"new:1: field 'year': 3000 outside"),
    (_jsonl({"id": 5000, "title": "x", "year": "soon"}), r"new:1: field 'year': must be a year"),
    (_jsonl({"id": 5000, "title": ""}), r"new:1: field 'title': missing"),
    (_jsonl({"id": 5000, "title": "x" * 501}), r"new:1: field 'title': longer than 500"),
    (_jsonl({"id": 5000}), r"new:1: field 'title': missing"),
    (_jsonl({"id": 5000, "title": "x", "rating": 5}), r"new:1: unknown field\(s\) \['rating'\]"),
    ('{"id": 5000, "title": "x"}\n{"id": 5001,\n', r"new:2: not a JSON object"),
    ('{"id": 5000, "title": "x"}\n[1, 2]\n', r"new:2: not a JSON object"),
    ("id,name\n5000,x\n", r"new:1: CSV needs a header"),
    ("id,title,year,genres\n5000,x,1999,Comedy,extra\n", r"new:2: more values than the header"),
    ("id,title,year,genres\n5000,x,1999,Comedy\n5001,,1999,Comedy\n", r"new:3: field 'title': missing"),
    ("", r"new: no items"),
    ('{"id": 5000, "title": "' + "[" * 20000 + '"}\n', r"new:1: line longer than"),
])
def test_bad_files_are_refused_naming_line_and_field(text, message):
    with pytest.raises(NewItemsError, match=message):
        parse_new_items(text, "new")


@pytest.mark.parametrize("data, message", [
    (b'{"id": 5000, "title": "x"}\n{"id": 5001, "title": "caf\xe9"}\n', r"^new:2: field 'title': not UTF-8 "
                                                                        r"\(byte 0xe9\)$"),
    (b"id,title,year,genres\n5000,x,1999,Comedy\n5001,y,1999,Com\xffedy\n", r"^new:3: field 'genres': not UTF-8"),
    (b"id,ti\xfftle\n5000,x\n", r"^new:1: the CSV header: not UTF-8"),
    (b'{"id": 5000,\xff "title": "x"}\n', r"^new:1: column 13: not UTF-8"),  # the line does not parse
])
def test_bytes_that_are_not_utf8_are_refused_naming_line_and_field(data, message):
    from widefunnel.builders.new_items import decode_items_file

    with pytest.raises(NewItemsError, match=message):
        decode_items_file(data, "new")
    assert decode_items_file("caf\u00e9".encode(), "new") == "caf\u00e9"


def test_a_huge_file_or_a_missing_build_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from widefunnel.builders import new_items

    big = tmp_path / "big.jsonl"
    big.write_text(_jsonl({"id": 5000, "title": "x"}))
    monkeypatch.setattr(new_items, "MAX_FILE_BYTES", 10)
    with pytest.raises(NewItemsError, match=r"big.jsonl: \d+ bytes, more than 10"):
        add_items(tmp_path / "no-repository", big)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="no complete build"):
        add_items(tmp_path / "no-repository", big)
    with pytest.raises(FileNotFoundError, match=r"no complete build 7 to add items to \(on disk: \[\]\)"):
        add_items(tmp_path / "no-repository", big, from_version=7)


def test_new_items_take_ids_past_the_table_in_order_and_gaps_pad_their_fields():
    """Every item table grows at its end: an id below the largest is refused by name, the items come in id
    order, and their filterable fields start at the table's next row, a skipped id holding nothing."""
    from types import SimpleNamespace

    from widefunnel.builders.new_items import movielens_additions

    items = parse_new_items(_jsonl({"id": 1690, "title": "Later", "year": 2001, "genres": ["Drama"]},
                                   {"id": 1683, "title": "Next", "year": 0, "genres": ["Comedy"]}), "n")
    assert [i.item_id for i in items] == [1683, 1690]
    tower = SimpleNamespace(year=SimpleNamespace(num_embeddings=21))
    state = SimpleNamespace(genre_names=CAT.genre_names, tower=tower, cfg={"towers": {"min_id_count": 0}})
    added = movielens_additions(items, SERVED, state)
    assert added.table_size() == 1691 and added.internal.tolist() == added.external.tolist() == [1683, 1690]
    genre, year = added.fields.fields
    assert len(genre.offsets) == 1690 - 1683 + 2 and np.diff(genre.offsets).tolist() == [1, 0, 0, 0, 0, 0, 0, 1]
    assert np.isnan(year.values[0]) and year.values[7] == 2001 and np.isnan(year.values[3])  # 0: unknown
    with pytest.raises(NewItemsError, match=r"n:1: field 'id': 1600 is already in the catalogue"):
        parse_new_items(_jsonl({"id": 1600, "title": "x"}), "n")
    grown = ServedCatalogue(1691, np.sort(np.concatenate([CAT.item_ids, [1683, 1690]])), None)
    with pytest.raises(NewItemsError, match=r"n:1: field 'id': 1685 is below the catalogue's largest id 1690"):
        parse_new_items(_jsonl({"id": 1685, "title": "Gap"}), "n", grown)
