"""Titles by catalogue id beside the catalogue, and the CLI's --filter specs."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel import layout
from widefunnel.cli.main import parse_field_filters
from widefunnel.item_titles import add_titles, load_titles, save_titles


def test_titles_round_trip_by_catalogue_id_and_pick_the_served_version(tmp_path):
    for version, name in ((1, "old"), (2, "new")):
        folder = tmp_path / "preprocess" / str(version)
        folder.mkdir(parents=True)
        save_titles(folder, np.array([4_000_000_000_123, 7], np.int64), [f"{name} shoe", f"{name} ✓ hat"])
    assert load_titles(tmp_path) == {4_000_000_000_123: "new shoe", 7: "new ✓ hat"}  # newest when none served
    layout.record_served(tmp_path, 1)
    assert load_titles(tmp_path)[7] == "old ✓ hat"
    assert load_titles(tmp_path, 2)[7] == "new ✓ hat"
    assert load_titles(tmp_path / "nothing-built") == {}
    grown = tmp_path / "preprocess" / "3"  # `items add`: the old parts linked, the new titles a part of their own
    part = add_titles(tmp_path / "preprocess" / "2", grown, np.array([9]), ["added cap"])
    assert part.name == "1.parquet" and load_titles(tmp_path, 3) == {4_000_000_000_123: "new shoe", 7: "new ✓ hat",
                                                                   9: "added cap"}
    assert load_titles(tmp_path, 2) == {4_000_000_000_123: "new shoe", 7: "new ✓ hat"}


def test_filter_specs():
    assert parse_field_filters(["include_brand=acme,zeta", "min_price=9.5", "exclude_categories=toys"]) == {
        "include_brand": ["acme", "zeta"], "min_price": 9.5, "exclude_categories": ["toys"]}
    assert parse_field_filters(None) == {}
    with pytest.raises(ValueError, match="min_price: 'cheap' is not a number"):
        parse_field_filters(["min_price=cheap"])
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_field_filters(["=x"])


def test_a_log_without_ratings_gets_implicit_feedback_labels_unless_the_user_set_them():
    from widefunnel.config import default_config
    from widefunnel.dataset.conditions import implicit_feedback_labels

    defaults = default_config()["dataset"]
    table, notes = implicit_feedback_labels(defaults, {}, {"dwell"})  # RecBole's implicit feedback: no rating
    assert table["positive"] == "" and table["tasks"] == {"engaged": ""} and len(notes) == 2
    assert defaults["positive"] == "rating >= 4"  # the defaults themselves are not changed
    assert implicit_feedback_labels(defaults, {}, {"rating"}) == (defaults, [])  # a log with ratings keeps them
    mine = {"positive": "dwell >= 30", "tasks": {"long_read": "dwell >= 120"}}
    table, notes = implicit_feedback_labels(defaults | mine, mine, {"dwell"})
    assert table["positive"] == "dwell >= 30" and table["tasks"] == mine["tasks"] and not notes
    # what the user set is never replaced, even when it names a field the log lacks (refused later, by name)
    table, _ = implicit_feedback_labels(defaults | {"positive": "rating >= 3"}, {"positive": "rating >= 3"}, set())
    assert table["positive"] == "rating >= 3"
