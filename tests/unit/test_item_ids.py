"""Internal ids (dense 1..N) and the catalogue's ids, the config's conditions on the log, item fields as feature
tables: pure, no server."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel.client.router import external_of
from widefunnel.config import ConfigError, load_config
from widefunnel.data import funnel_data, load_catalogue, load_interactions
from widefunnel.dataset import DatasetConfigError, load_dataset
from widefunnel.dataset.conditions import Condition
from widefunnel.dataset.features import item_features
from widefunnel.dataset.movielens import load_movielens
from widefunnel.dataset.synthetic_shop import generate_shop, write_parquet
from widefunnel.item_ids import NONE, InternalTakedowns, ItemIds

SKUS = np.array([7_000_000_000_001, 4_000_000_000_000, 5_000_000_000_123], np.int64)


def test_movielens_through_the_generic_path_keeps_internal_equal_to_external():
    cfg = load_config()
    catalogue, inter = funnel_data(load_movielens(), cfg["dataset"])
    np.testing.assert_array_equal(catalogue.item_ids, np.arange(1, 1683))
    np.testing.assert_array_equal(catalogue.item_ids, load_catalogue().item_ids)  # internal == external
    assert catalogue.external_ids is None
    np.testing.assert_array_equal(inter.items, load_interactions().items)
    np.testing.assert_array_equal(inter.positive, load_interactions().ratings >= 4)
    ratings = load_interactions().ratings
    np.testing.assert_array_equal(inter.labels, np.stack([ratings >= 1, ratings >= 4, ratings >= 5], axis=1))


def test_positives_have_one_owner_the_dataset_condition(tmp_path):
    """`[dataset] positive` labels the log for training and evaluation alike; the old `data.min_rating` is refused
    naming its replacement, and MovieLens' eval set is the one the raw loaders gave with ratings >= 4."""
    from widefunnel.data import Interactions, co_engagement_pairs, time_split
    from widefunnel.evaluation.offline import build_eval_set, eval_set_for

    old = tmp_path / "old.toml"
    old.write_text("[data]\nmin_rating = 3\n")
    for attempt in (lambda: load_config(old), lambda: load_config(overrides={"data": {"min_rating": 4}})):
        with pytest.raises(ConfigError, match=r"'data.min_rating' is no longer read: set \[dataset\] positive"):
            attempt()
    with pytest.raises(KeyError, match="unknown config key 'data.min_ratings'"):
        load_config(overrides={"data": {"min_ratings": 4}})
    for value in ("yes", 1):  # a switch takes true or false, never a truthy stand-in
        with pytest.raises(ConfigError, match=r"'teacher.int8' must be true or false"):
            load_config(overrides={"teacher": {"int8": value}})
    assert load_config(overrides={"teacher": {"int8": True}})["teacher"]["int8"] is True

    cfg = load_config()
    raw = load_interactions()
    labelled = Interactions(raw.users, raw.items, raw.ratings, raw.timestamps, raw.ratings >= 4)
    pairs = co_engagement_pairs(labelled, cfg["data"]["window"])
    split = time_split(pairs, raw, cfg["data"]["split_quantile"], load_catalogue().table_size)
    want = build_eval_set(split.test, load_catalogue(), split.fresh_items, cfg["data"]["max_eval_queries"], cfg["seed"])
    got = eval_set_for(cfg)
    for name in ("seeds", "targets", "genres", "fresh"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert len(co_engagement_pairs(raw, 5)) > len(pairs)  # a log without labels: every row is a positive
    every = eval_set_for(load_config(overrides={"dataset": {"positive": ""}}))
    assert every.targets.sum() > got.targets.sum()  # the eval set follows the condition, as training does


def test_sparse_ids_map_both_ways_and_unknown_ones_become_none():
    ids = ItemIds.of_items(np.arange(1, 4), np.sort(SKUS), 4)
    assert not ids.identity and len(ids.external) == 4  # memory follows the number of items
    np.testing.assert_array_equal(ids.to_internal(np.array([[5_000_000_000_123, -1, 42]])), [[2, -1, NONE]])
    np.testing.assert_array_equal(ids.to_external(np.array([[3, 1, -1]])), [[7_000_000_000_001,
                                                                             4_000_000_000_000, -1]])
    same = ItemIds.of_items(np.arange(1, 5), np.arange(1, 5), 5)
    assert same.identity
    np.testing.assert_array_equal(same.to_internal(np.array([4, 5, 0, -1])), [4, NONE, NONE, -1])


def test_a_loaded_table_is_mapped_and_answers_like_one_in_memory_sorted_or_grown_out_of_order(tmp_path):
    rng = np.random.default_rng(3)
    skus = np.sort(rng.choice(2**62, 5000, replace=False)).astype(np.int64)
    grown = np.concatenate([skus, rng.choice(2**40, 50, replace=False)])  # items add: new ids after the last row
    asked = np.concatenate([grown[rng.integers(0, len(grown), 300)], [-1, 0, 17, 2**62 - 1]])
    for table_ids in (skus, grown):
        built = ItemIds.of_items(np.arange(1, len(table_ids) + 1), table_ids, len(table_ids) + 1)
        built.save(tmp_path)
        loaded = ItemIds.load(tmp_path)
        assert isinstance(loaded.external, np.memmap)  # shared with every step process, not copied
        internal = loaded.to_internal(asked)
        np.testing.assert_array_equal(internal, built.to_internal(asked))
        lookup = {int(e): i + 1 for i, e in enumerate(table_ids)}  # brute force
        np.testing.assert_array_equal(internal, [lookup.get(int(e), -1 if e < 0 else NONE) for e in asked])
        np.testing.assert_array_equal(loaded.to_external(internal[internal > 0]), asked[internal > 0])
    assert ItemIds(np.arange(0, 9)).identity and not ItemIds(np.array([NONE, 1, 3])).identity


def test_takedowns_map_to_internal_ids_once_per_change():
    ids = ItemIds.of_items(np.arange(1, 4), np.sort(SKUS), 4)
    taken = [np.array([7_000_000_000_001, 999], np.int64)]
    mapped = InternalTakedowns(ids, lambda: taken[0])
    first = mapped()
    np.testing.assert_array_equal(first, [3])
    assert mapped() is first  # unchanged list: the same array (StandingBlock keys on identity)
    taken[0] = np.array([4_000_000_000_000], np.int64)
    np.testing.assert_array_equal(mapped(), [1])


def test_the_router_maps_merged_ids_from_the_shards_own_pairs():
    internal = [np.array([[3, 1]]), np.array([[2, -1]])]
    external = [np.array([[30, 10]]), np.array([[20, -1]])]
    np.testing.assert_array_equal(external_of(np.array([[1, 2, 3, -1]]), internal, external), [[10, 20, 30, -1]])


def test_conditions_are_parsed_not_evaluated():
    log = load_movielens().interactions
    assert Condition.parse("", "k").evaluate(log, "k").all()
    ratings = load_interactions().ratings
    np.testing.assert_array_equal(Condition.parse("rating>=4", "k").evaluate(log, "k"), ratings >= 4)
    np.testing.assert_array_equal(Condition.parse("rating != 5", "k").evaluate(log, "k"), ratings != 5)
    with pytest.raises(DatasetConfigError, match=r"'dataset.tasks.bought' names field 'event'"):
        Condition.parse("event == purchase", "dataset.tasks.bought").evaluate(log, "dataset.tasks.bought")
    for text in ("__import__('os')", "rating >= 4 or 1", "rating => 4"):
        with pytest.raises(DatasetConfigError, match=r"'dataset.positive': .* is not a condition"):
            Condition.parse(text, "dataset.positive")
    with pytest.raises(DatasetConfigError, match="is a float"):
        Condition.parse("rating >= high", "k").evaluate(log, "k")


def test_item_fields_become_feature_tables_by_type(tmp_path):
    dataset = load_dataset(write_parquet(generate_shop(50, 200, 2000, seed=1), tmp_path, parts=0))
    features = item_features(dataset.items, skip=("title", "description"), max_bag=1)
    n = len(dataset.items)
    assert set(features.tokens) == {"brand"} and set(features.bags) == {"categories"}
    assert features.tokens["brand"].shape == (n + 1,) and features.tokens["brand"][0] == 0
    assert features.bags["categories"].shape == (n + 1, 1)  # truncated to max_bag
    assert features.dense_names == ("price", "price:missing") and features.dense.shape == (n + 1, 2)
    z = features.dense[1:, 0]
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3 and not features.dense[0].any()
    rare = item_features(dataset.items, skip=("title", "description", "categories"), min_count=10**6)
    assert not rare.tokens["brand"].any() and rare.vocabulary["brand"] == 1  # every token in the OOV bucket
