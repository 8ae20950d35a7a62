"""A synthetic shop for tests and benchmarks: sparse 13-digit SKUs, brands, categories, prices, titles and
descriptions, and a log of views and purchases with structure a model can learn.

Users favour a few categories and one brand; a session stays in one category (so items engaged together share
it), popular items are engaged more, and a user buys her brand more often. Everything is drawn in vectorised
numpy and assembled with pyarrow, so 20M log rows over 1M items are a matter of seconds, not a loop.
Written as RecBole atomic files and as Parquet part files, the same data both ways.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

T0 = 1_700_000_000  # the log's first second
DAYS = 120
SESSION_MEAN = 5.0
TOPIC_WORDS = 12  # words per category, used in its titles and descriptions
ATOMIC_TYPES = {"item_id": "token", "brand": "token", "categories": "token_seq", "price": "float",
                "title": "token_seq", "description": "token_seq", "user_id": "token", "timestamp": "float",
                "event": "token"}

# The `[dataset]` tables for the shop's log: every view is a positive; the scorer's tasks are viewed and purchased.
DATASET_CONFIG = """
[dataset]
positive = ""
[dataset.tasks]
viewed = ""
purchased = "event == purchase"
"""


@dataclass(frozen=True)
class ShopTables:
    items: pa.Table  # item_id int64, brand string, categories/title/description list<string>, price float64
    inter: pa.Table  # user_id string, item_id int64, timestamp int64 (seconds), event string (view | purchase)


def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct pronounceable words (a vocabulary, so a Python loop over n is fine)."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    out: dict[str, None] = {}
    while len(out) < n:
        k = rng.integers(2, 4)
        out.setdefault("".join(syllables[i] for i in rng.integers(len(syllables), size=k)))
    return np.array(list(out), dtype=object)


def _pick(starts: np.ndarray, lengths: np.ndarray, group: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per draw, a position in its group's slice of a grouped order, by uniform u (skewed by the caller)."""
    return starts[group] + np.minimum((u * lengths[group]).astype(np.int64), lengths[group] - 1)


def _lists(offsets: np.ndarray, words: pa.Array, idx: np.ndarray) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), words.take(pa.array(idx)))


def generate_shop(n_users: int = 2_000, n_items: int = 5_000, n_interactions: int = 100_000,
                  seed: int = 0) -> ShopTables:
    """The shop's two tables; the same arguments give the same tables."""
    if n_items < 10 or n_users < 1 or n_interactions < 1:
        raise ValueError("a shop needs at least 10 items, 1 user and 1 interaction")
    rng = np.random.default_rng(seed)
    n_cats = int(np.clip(n_items // 100, 4, 10000))
    n_depts = int(np.clip(n_cats // 10, 2, 40))
    n_brands = int(np.clip(n_items // 100, 4, 20000))

    # items: ids, category (every category has one), brand (one of its department's), price, text
    ids = np.unique(rng.integers(10**12, 10**13, size=n_items + n_items // 10 + 16))
    ids = rng.permutation(ids)[:n_items]  # file order is not id order
    cat_p = rng.dirichlet(np.full(n_cats, 2.0))
    item_cat = np.concatenate([np.arange(n_cats), rng.choice(n_cats, size=n_items - n_cats, p=cat_p)])
    item_cat = rng.permutation(item_cat)
    cat_dept = rng.integers(n_depts, size=n_cats)
    brand_dept = np.concatenate([np.arange(n_depts) % n_depts, rng.integers(n_depts, size=max(0, n_brands - n_depts))])
    brand_order = np.argsort(brand_dept, kind="stable")
    dept_start = np.searchsorted(brand_dept[brand_order], np.arange(n_depts))
    dept_len = np.bincount(brand_dept, minlength=n_depts)
    item_brand = brand_order[_pick(dept_start, dept_len, cat_dept[item_cat], rng.random(n_items))]
    cat_price = rng.uniform(2.0, 6.0, size=n_cats)
    brand_premium = rng.normal(0.0, 0.3, size=n_brands)
    price = np.round(np.exp(cat_price[item_cat] + brand_premium[item_brand] + rng.normal(0, 0.3, n_items)), 2)

    # one vocabulary: topic words per category, then generic words, brand names, department and category names
    generic = np.arange(TOPIC_WORDS * n_cats, TOPIC_WORDS * n_cats + 400)
    brand_word = TOPIC_WORDS * n_cats + 400
    n_words = brand_word + n_brands
    words = pa.array(_words(rng, n_words).tolist() + [f"dept{d}" for d in range(n_depts)]
                     + [f"cat{c}" for c in range(n_cats)])
    dept_word, cat_word = n_words, n_words + n_depts

    def topic(cats: np.ndarray) -> np.ndarray:
        return cats * TOPIC_WORDS + rng.integers(TOPIC_WORDS, size=len(cats))

    title_idx = np.stack([brand_word + item_brand, topic(item_cat), topic(item_cat),
                          rng.choice(generic, size=n_items)], axis=1).ravel()
    title = _lists(np.arange(0, 4 * n_items + 1, 4), words, title_idx)
    desc_len = rng.integers(8, 25, size=n_items)
    desc_off = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(desc_len, out=desc_off[1:])
    desc_cat = np.repeat(item_cat, desc_len)
    desc_idx = np.where(rng.random(len(desc_cat)) < 0.6, topic(desc_cat), rng.choice(generic, size=len(desc_cat)))
    del desc_cat
    description = _lists(desc_off, words, desc_idx)
    del desc_idx
    categories = _lists(np.arange(0, 2 * n_items + 1, 2), words,
                        np.stack([dept_word + cat_dept[item_cat], cat_word + item_cat], axis=1).ravel())
    items = pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "title": title,
        "description": description,
        "brand": words.take(pa.array(brand_word + item_brand)),
        "categories": categories,
        "price": pa.array(price, pa.float64()),
    })

    # users: activity, three favourite categories, one favourite brand (from an item of the first)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    fav = rng.choice(n_cats, size=(n_users, 3), p=cat_p).astype(np.int32)
    quality = rng.random(n_items)
    by_cat = np.lexsort((-quality, item_cat))  # per category, best first
    cat_start = np.searchsorted(item_cat[by_cat], np.arange(n_cats))
    cat_len = np.bincount(item_cat, minlength=n_cats)
    by_brand = np.lexsort((-quality, item_brand))
    brand_start = np.searchsorted(item_brand[by_brand], np.arange(n_brands))
    brand_len = np.bincount(item_brand, minlength=n_brands)
    user_brand = item_brand[by_cat[_pick(cat_start, cat_len, fav[:, 0], rng.random(n_users))]]

    # sessions: a user, a category (mostly a favourite), a start; events: items of that category or brand
    n_sessions = int(n_interactions / SESSION_MEAN * 1.3) + 1
    lengths = rng.geometric(1.0 / SESSION_MEAN, size=n_sessions)
    ends = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(ends, n_interactions)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= int(ends[n_sessions - 1]) - n_interactions
    s_user = rng.choice(n_users, size=n_sessions, p=activity / activity.sum())
    s_cat = np.where(rng.random(n_sessions) < 0.85,
                     fav[s_user, rng.choice(3, size=n_sessions, p=[0.5, 0.3, 0.2])],
                     rng.choice(n_cats, size=n_sessions, p=cat_p))
    s_start = T0 + rng.integers(DAYS * 86400, size=n_sessions)
    session = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)
    user = s_user[session]
    skew = rng.random(n_interactions) ** 2.5  # popular items (top of their category or brand) first
    from_brand = rng.random(n_interactions) < 0.3
    item = np.where(from_brand, by_brand[_pick(brand_start, brand_len, user_brand[user], skew)],
                    by_cat[_pick(cat_start, cat_len, s_cat[session], skew)])
    del skew
    gaps = np.cumsum(rng.exponential(45.0, size=n_interactions))
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    timestamp = s_start[session] + (gaps - gaps[first][session]).astype(np.int64)
    del gaps, session
    median = np.median(price)
    p_buy = 0.03 * np.where(item_brand[item] == user_brand[user], 3.0, 1.0) * np.clip(median / price[item], 0.5, 2.0)
    purchase = rng.random(n_interactions) < p_buy
    del p_buy, from_brand
    order = np.argsort(timestamp, kind="stable")
    user_names = pc.binary_join_element_wise("u", pc.cast(pa.array(np.arange(n_users)), pa.string()), "")
    inter = pa.table({
        "user_id": user_names.take(pa.array(user[order])),
        "item_id": pa.array(ids[item[order]], pa.int64()),
        "timestamp": pa.array(timestamp[order], pa.int64()),
        "event": pa.array(np.where(purchase[order], "purchase", "view")),
    })
    logger.info("shop: %d items, %d users, %d log rows (%d purchases)", n_items, n_users, n_interactions,
                int(purchase.sum()))
    return ShopTables(items, inter)


def _as_text(table: pa.Table) -> pa.Table:
    """Lists -> space-separated strings, as RecBole's token_seq."""
    columns = {}
    for name in table.column_names:
        values = table.column(name)
        if pa.types.is_large_list(values.type) or pa.types.is_list(values.type):
            values = pc.binary_join(values, " ")
        columns[name] = values
    return pa.table(columns)


def write_atomic(tables: ShopTables, folder: Path, name: str = "shop") -> Path:
    """`<folder>/<name>.item` and `<folder>/<name>.inter`, tab-separated, unquoted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    options = pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False)
    for suffix, table in (("item", tables.items), ("inter", tables.inter)):
        with open(folder / f"{name}.{suffix}", "wb") as f:  # the header by hand: pyarrow quotes header names
            f.write(("\t".join(f"{c}:{ATOMIC_TYPES[c]}" for c in table.column_names) + "\n").encode())
            pacsv.write_csv(_as_text(table), f, write_options=options)
    return folder


def write_parquet(tables: ShopTables, folder: Path, parts: int = 4) -> Path:
    """`<folder>/item/part-*.parquet` and `<folder>/inter/part-*.parquet` (plus an empty `_SUCCESS`, as Spark
    writes), `parts` files each; parts=0 writes single files `item.parquet` and `inter.parquet` instead."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("item", tables.items), ("inter", tables.inter)):
        if parts == 0:
            pq.write_table(table, folder / f"{name}.parquet")
            continue
        (folder / name).mkdir(exist_ok=True)
        bounds = np.linspace(0, table.num_rows, parts + 1).astype(np.int64)
        for k in range(parts):
            pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), folder / name / f"part-{k:05d}.parquet")
        (folder / name / "_SUCCESS").touch()
    return folder
