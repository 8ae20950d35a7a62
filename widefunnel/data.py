"""MovieLens-100K, read from the `recbole` wheel (GroupLens; research use; Harper & Konstan, ACM TiiS 2015).

Co-engagement pairs come from user histories: a positive engagement and the user's next few positives.
Pairs are split by time, so evaluation pairs lie in the future of training pairs; items first seen after
the split form the fresh-item (cold-start) slice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from widefunnel.genres import SourcedGenres

if TYPE_CHECKING:
    from widefunnel.dataset import Dataset
    from widefunnel.dataset.additions import ItemCoding
    from widefunnel.dataset.features import ItemFeatures
    from widefunnel.field_filters import ItemFields

SOURCE = "recbole==1.2.1: recbole/dataset_example/ml-100k (MovieLens-100K, GroupLens Research)"


@dataclass(frozen=True)
class Catalogue:
    """Items by internal id (dense 1..N: the row in every feature table; row 0 is padding). ``external_ids``
    gives each internal id its catalogue id (`widefunnel.item_ids`); None: they are equal (MovieLens)."""

    item_ids: np.ndarray  # int64 [N], sorted internal ids
    titles: dict[int, str]
    years: np.ndarray  # int64 [max_id + 1], 0 = unknown
    genres: Mapping[int, tuple[str, ...]]  # a dict, or `SourcedGenres`
    genre_names: tuple[str, ...]
    texts: dict[int, str] | None = None  # the content encoder's input per item; None: from title, year, genres
    external_ids: np.ndarray | None = None  # int64 [table_size], -1 where no item; None: identity
    features: ItemFeatures | None = None  # the dataset's own item fields as tower tables; None: MovieLens'
    item_fields: ItemFields | None = None  # a dataset's own filterable fields; MovieLens': `filter_fields`
    coding: ItemCoding | None = None  # how the build read and coded its item fields: items added later follow it

    @property
    def table_size(self) -> int:
        return int(self.item_ids.max()) + 1

    @cached_property
    def filter_fields(self) -> ItemFields | None:
        """The fields a build filters on (`field_filters`, one rule for every dataset): a dataset's own
        (``item_fields``), or MovieLens' genres and release years as the fields ``genre`` and ``year``. Derived
        from ``genres`` and ``years``, so a catalogue widened or grown (`dataclasses.replace`) never carries a
        stale table. None: nothing to filter on."""
        if self.item_fields is not None or not self.genre_names:
            return self.item_fields
        from widefunnel.field_filters import genre_year_fields

        return genre_year_fields(self.genres, self.years, self.genre_names, self.table_size)

    def genre_matrix(self) -> np.ndarray:
        """Multi-hot [max_id + 1, G] float32 (one all-zero column when the catalogue has no genres)."""
        index = {g: j for j, g in enumerate(self.genre_names)}
        width = max(len(self.genre_names), 1)
        if not isinstance(self.genres, SourcedGenres):
            out = np.zeros((self.table_size, width), dtype=np.float32)
            for item, gs in self.genres.items():
                for g in gs:
                    out[item, index[g]] = 1.0
            return out
        # sourced: one row per real item and a zero row last (an id that is no item), gathered by id
        real = self.genres.real
        ids = np.array(sorted(real), np.int64)
        out = np.zeros((len(ids) + 1, width), dtype=np.float32)
        for at, item in enumerate(ids.tolist()):
            for g in real[item]:
                out[at, index[g]] = 1.0
        rows = self.genres.rows(self.table_size)
        pos = np.searchsorted(ids, rows)
        found = pos < len(ids)
        found[found] = ids[pos[found]] == rows[found]
        return out[np.where(found, pos, len(ids))]

    def text(self, item: int) -> str:
        """The content encoder's input for one item."""
        if self.texts is not None:
            return self.texts[item]
        return self.describe(self.titles[item], int(self.years[item]), self.genres[item])

    @staticmethod
    def describe(title: str, year: int, genres: tuple[str, ...]) -> str:
        return f"{title} ({year if year else 'unknown year'}). Genres: {', '.join(genres)}."


@dataclass(frozen=True)
class Interactions:
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    positive: np.ndarray | None = None  # bool [M]: `[dataset] positive` (`funnel_data`); None: every row
    labels: np.ndarray | None = None  # bool [M, T]: `[dataset.tasks]`; None: engaged, rating >= 4, rating 5


@dataclass(frozen=True)
class Pairs:
    query: np.ndarray  # int64 item ids
    target: np.ndarray
    rating: np.ndarray  # the target's rating by that user (labels for liked / loved)
    timestamp: np.ndarray
    labels: np.ndarray | None = None  # bool [P, T]: the target interaction's task labels (`[dataset.tasks]`)

    def __len__(self) -> int:
        return len(self.query)

    def take(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.query[mask], self.target[mask], self.rating[mask], self.timestamp[mask],
                     None if self.labels is None else self.labels[mask])


def _read(name: str) -> list[dict[str, str]]:
    path = resources.files("recbole").joinpath(f"dataset_example/ml-100k/ml-100k.{name}")
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="latin-1")), delimiter="\t")
    return [{k.split(":")[0]: v for k, v in row.items()} for row in reader]


@lru_cache(maxsize=1)
def load_catalogue() -> Catalogue:
    rows = _read("item")
    ids = np.array(sorted(int(r["item_id"]) for r in rows), dtype=np.int64)
    years = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    titles, genres = {}, {}
    for r in rows:
        item = int(r["item_id"])
        titles[item] = r["movie_title"].strip()
        years[item] = int(r["release_year"]) if r["release_year"].strip().isdigit() else 0
        genres[item] = tuple(r["class"].split()) or ("unknown",)
    names = tuple(sorted({g for gs in genres.values() for g in gs}))
    return Catalogue(ids, titles, years, genres, names)


@lru_cache(maxsize=1)
def load_interactions() -> Interactions:
    rows = _read("inter")
    cols = {k: np.array([float(r[k]) for r in rows]) for k in ("user_id", "item_id", "rating", "timestamp")}
    return Interactions(
        cols["user_id"].astype(np.int64),
        cols["item_id"].astype(np.int64),
        cols["rating"].astype(np.int64),
        cols["timestamp"].astype(np.int64),
    )


def catalogue_of(dataset: Dataset, year_field: str = "release_year", genre_field: str = "class") -> Catalogue:
    """MovieLens' catalogue from the dataset layer (`widefunnel.dataset.movielens`), equal to `load_catalogue()`."""
    ids = dataset.items.ids.copy()
    keys = ids.tolist()
    year_column = dataset.items.columns[year_field]  # token: one year string per item
    by_code = np.array([int(v) if v.strip().isdigit() else 0 for v in year_column.vocabulary.to_pylist()],
                       dtype=np.int64)
    years = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    years[ids] = by_code[year_column.codes]
    titles = dict(zip(keys, (t.strip() for t in dataset.titles())))
    genres = {item: tuple(g.split()) or ("unknown",) for item, g in zip(keys, dataset.strings(genre_field))}
    names = tuple(sorted({g for gs in genres.values() for g in gs}))
    return Catalogue(ids, titles, years, genres, names)


def interactions_of(dataset: Dataset) -> Interactions:
    """MovieLens' log from the dataset layer, equal to `load_interactions()` (ids back from rows and codes)."""
    inter = dataset.interactions
    user_ids = np.array([int(u) for u in inter.user_vocabulary.to_pylist()], dtype=np.int64)
    return Interactions(
        user_ids[inter.users],
        dataset.items.ids[inter.items],
        inter.columns[dataset.field("rating")].values.astype(np.int64),
        inter.timestamps.astype(np.int64),
    )


class CoEngagement:
    """A log's co-engaged pairs, not materialised: each positive with the same user's next ``window`` positives, both
    directions. Held as the sorted log and, per offset, where each pair's first row is; `pairs` fills only the pairs
    asked for. At 20M log rows there are ~160M pairs (5 GB as columns) and a build trains on a sample, so it never
    holds them all.

    Positives are ``inter.positive``, which `funnel_data` sets from `[dataset] positive` (its one owner); a log
    without labels, or ``every``, counts every row. The fixed order of the pairs: by offset, then direction (query
    first, target second; then reversed), then by (user, time, item) of the first row."""

    def __init__(self, inter: Interactions, window: int, every: bool = False):
        keep = np.ones(len(inter.items), dtype=bool) if every or inter.positive is None else inter.positive
        rows = np.flatnonzero(keep)
        order = np.lexsort((inter.items[rows], inter.timestamps[rows], inter.users[rows]))
        rows = rows[order]
        self.items, self.ratings = inter.items[rows], inter.ratings[rows]
        self.timestamps, self.rows, self.labels = inter.timestamps[rows], rows, inter.labels
        users = inter.users[rows]
        index = np.int32 if len(users) < 2**31 else np.int64  # halves the largest table the build holds
        self.starts = [np.flatnonzero(users[offset:] == users[:-offset]).astype(index)
                       for offset in range(1, window + 1)]

    def _blocks(self):
        """(first rows, second rows, each pair's timestamp) per block, in the fixed order."""
        for offset, a in enumerate(self.starts, start=1):
            b = a + offset
            for first, second in ((a, b), (b, a)):
                yield first, second, self.timestamps[b]

    def __len__(self) -> int:
        return 2 * sum(len(a) for a in self.starts)

    def count(self, where: Callable[[np.ndarray], np.ndarray] | None = None) -> int:
        """How many pairs have a timestamp that passes ``where`` (all, if None)."""
        return len(self) if where is None else sum(int(where(ts).sum()) for _, _, ts in self._blocks())

    def target_counts(self, size: int, where: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """[size] float64: how often each item is the target of a pair that passes ``where``."""
        out = np.zeros(size, dtype=np.float64)
        for _, second, ts in self._blocks():
            targets = self.items[second] if where is None else self.items[second[where(ts)]]
            out += np.bincount(targets, minlength=size)
        return out

    def pairs(self, where: Callable[[np.ndarray], np.ndarray] | None = None,
              positions: np.ndarray | None = None) -> Pairs:
        """The pairs whose timestamp passes ``where`` (all, if None), in the fixed order; with ``positions``
        (indices into that sequence, in any order), only those, in the order given."""
        picks = None
        if positions is not None:
            positions = np.asarray(positions, dtype=np.int64)
            sort = np.argsort(positions, kind="stable")
            picks = positions[sort]
        total = self.count(where) if picks is None else len(picks)
        q, t = np.empty(total, self.items.dtype), np.empty(total, self.items.dtype)
        r, s = np.empty(total, self.ratings.dtype), np.empty(total, self.timestamps.dtype)
        lab = np.empty(total, np.int64) if self.labels is not None else None
        at, seen = 0, 0
        for first, second, ts in self._blocks():
            if where is not None:
                keep = np.flatnonzero(where(ts))
                first, second, ts = first[keep], second[keep], ts[keep]
            if picks is not None:
                lo, hi = np.searchsorted(picks, [seen, seen + len(first)])
                local = picks[lo:hi] - seen
                seen += len(first)
                first, second, ts = first[local], second[local], ts[local]
            end = at + len(first)
            q[at:end], t[at:end], r[at:end], s[at:end] = (self.items[first], self.items[second],
                                                           self.ratings[second], ts)
            if lab is not None:
                lab[at:end] = self.rows[second]
            at = end
        labels = None if lab is None else self.labels[lab]
        pairs = Pairs(q, t, r, s, labels)
        if picks is None:
            return pairs
        undo = np.empty_like(sort)
        undo[sort] = np.arange(len(sort))
        return pairs.take(undo)


def co_engagement_pairs(inter: Interactions, window: int, every: bool = False) -> Pairs:
    """Every co-engaged pair of the log (`CoEngagement`), as columns."""
    return CoEngagement(inter, window, every).pairs()


@dataclass(frozen=True)
class Split:
    train: Pairs
    test: Pairs
    split_time: int
    fresh_items: np.ndarray  # items with no interaction before split_time
    train_popularity: np.ndarray  # [table_size] counts of each item as a training target


def time_split(pairs: Pairs, inter: Interactions, quantile: float, table_size: int) -> Split:
    split_time = split_time_of(inter, quantile)
    train = pairs.take(pairs.timestamp <= split_time)
    test = pairs.take(pairs.timestamp > split_time)
    popularity = np.bincount(train.target, minlength=table_size).astype(np.float64)
    return Split(train, test, split_time, fresh_items_after(inter, split_time, table_size), popularity)


def up_to(split_time: int) -> Callable[[np.ndarray], np.ndarray]:
    """The training side of a split, as a `CoEngagement` filter on pair timestamps."""
    return lambda ts: ts <= split_time


def split_time_of(inter: Interactions, quantile: float) -> int:
    """Pairs after this time are held out."""
    return int(np.quantile(inter.timestamps, quantile))


def fresh_items_after(inter: Interactions, split_time: int, table_size: int) -> np.ndarray:
    """Items with no interaction up to ``split_time`` but some after it."""
    first_seen = np.full(table_size, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, inter.items, inter.timestamps)
    return np.flatnonzero((first_seen > split_time) & (first_seen < np.iinfo(np.int64).max)).astype(np.int64)


def sampled_split(inter: Interactions, window: int, quantile: float, table_size: int, max_train: int = 0,
                  seed: int = 0, held_out: bool = True) -> Split:
    """`time_split` of `co_engagement_pairs`, then at most ``max_train`` training pairs (sampled with ``seed``;
    popularity still counts them all), without holding every pair: equal to that construction, in less memory.
    ``held_out=False`` leaves the test side empty (a build never reads it)."""
    pairs = CoEngagement(inter, window)
    split_time = split_time_of(inter, quantile)
    popularity = pairs.target_counts(table_size, up_to(split_time))
    total = int(popularity.sum())
    positions = None
    if 0 < max_train < total:
        positions = np.sort(np.random.default_rng(seed).choice(total, max_train, replace=False))
    train = pairs.pairs(up_to(split_time), positions)
    test = pairs.pairs(lambda ts: ts > split_time) if held_out else train.take(np.zeros(0, np.int64))
    return Split(train, test, split_time, fresh_items_after(inter, split_time, table_size), popularity)


def funnel_data(dataset: Dataset, table: dict) -> tuple[Catalogue, Interactions]:
    """Any dataset -> the funnel's catalogue and log in internal ids (row + 1 of the sorted external ids).

    ``table`` is the config's `[dataset]`: its `positive` and `tasks` conditions label the log. MovieLens
    (`path` empty) keeps its genres and years (the tower's features, and its filter fields genre and year:
    `Catalogue.filter_fields`) and its text; any other dataset is served from its id, popularity, content text
    (`Dataset.text`) and every item field as a feature (`dataset.features`) and as a filter named after it
    (`field_filters`)."""
    from widefunnel.dataset.additions import ItemCoding
    from widefunnel.dataset.columns import FloatColumn
    from widefunnel.dataset.conditions import Condition, parse_tasks
    from widefunnel.dataset.features import item_features
    from widefunnel.field_filters import item_fields_of

    external = dataset.items.ids
    internal = np.arange(1, len(external) + 1, dtype=np.int64)
    if not table.get("path"):
        if not np.array_equal(internal, external):
            raise ValueError("MovieLens' item ids are no longer 1..N: its catalogue would need an id map")
        catalogue = catalogue_of(dataset)
        inter = interactions_of(dataset)
    else:
        keys = internal.tolist()
        titles = dict(zip(keys, (t.strip() for t in dataset.titles())))
        features = item_features(dataset.items)
        catalogue = Catalogue(internal, titles, np.zeros(len(internal) + 1, np.int64), {}, (),
                              texts=dict(zip(keys, dataset.text())),
                              external_ids=np.concatenate([[-1], external]).astype(np.int64),
                              features=features,
                              item_fields=item_fields_of(dataset.items.columns, internal, len(internal) + 1),
                              coding=ItemCoding.of(dataset, features))
        log = dataset.interactions
        rating = log.columns.get(dataset.config.roles.get("rating", "rating"))
        ratings = np.zeros(len(log), np.int64)
        if isinstance(rating, FloatColumn):  # kept for reports; the labels come from the conditions
            ratings = np.nan_to_num(np.asarray(rating.values, np.float64)).astype(np.int64)
        inter = Interactions(log.users, log.items + 1, ratings, log.timestamps.astype(np.int64))
    log = dataset.interactions
    positive = Condition.parse(table.get("positive", ""), "dataset.positive").evaluate(log, "dataset.positive")
    tasks = parse_tasks(table.get("tasks", {}))
    labels = np.stack([c.evaluate(log, f"dataset.tasks.{name}") for name, c in tasks.items()], axis=1)
    return catalogue, Interactions(inter.users, inter.items, inter.ratings, inter.timestamps, positive, labels)
