"""Issue 29: `widefunnel build --dataset` on a shop of its own (sparse 13-digit SKUs, views and purchases), served
by a real tritonserver: requests and answers in the catalogue's ids, internal ids never seen by a client."""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import ClientThreads

from widefunnel import layout
from widefunnel import model_configs as mcfg
from widefunnel.cli import main
from widefunnel.client.client import WidefunnelClient, WidefunnelError
from widefunnel.dataset.synthetic_shop import ATOMIC_TYPES, DATASET_CONFIG, generate_shop, write_atomic, write_parquet
from widefunnel.security import ADMIN_KEY_ENV

pytestmark = pytest.mark.server

SHOP = {"n_users": 1500, "n_items": 3000, "n_interactions": 60000, "seed": 0}
# the conftest's short training, and the shop's log: every view is a positive; tasks viewed and purchased
CONFIG = DATASET_CONFIG + """
[data]
max_train_pairs = 60000
[training]
epochs = 2
[rerank]
epochs = 2
[scorer]
epochs = 2
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shop")
    tables = generate_shop(**SHOP)
    config = root / "shop.toml"
    config.write_text(CONFIG)
    return {"root": root, "atomic": write_atomic(tables, root / "atomic"),
            "parquet": write_parquet(tables, root / "parquet", parts=3), "config": config,
            "ids": np.sort(tables.items.column("item_id").to_numpy()), "items": tables.items}


@pytest.fixture(scope="module")
def builds(shop) -> dict[str, Path]:
    out = {}
    for kind in ("atomic", "parquet"):
        repository = shop["root"] / f"repo-{kind}"
        assert main(["build", "--dataset", str(shop[kind]), "--config", str(shop["config"]), "--repository",
                     str(repository), "--quiet"]) == 0
        out[kind] = repository
    return out


@pytest.fixture(scope="module")
def served(builds):
    from widefunnel.server import TritonServer

    srv = TritonServer(builds["atomic"])
    srv.start()
    yield srv
    srv.stop()
    srv.cleanup()


def test_the_build_keeps_internal_ids_inside(shop, builds):
    repository = builds["atomic"]
    catalogue = np.load(repository / "preprocess" / "1" / layout.CATALOGUE_FILE)
    np.testing.assert_array_equal(catalogue, shop["ids"])  # what a request may name: the shop's SKUs
    table = np.load(repository / "preprocess" / "1" / layout.ITEM_IDS)
    assert len(table) == len(shop["ids"]) + 1 and table[0] == -1  # memory follows N, not the largest id
    np.testing.assert_array_equal(table[1:], shop["ids"])
    for step in ("quota_merge", "ann_engagement", "ann_relevance"):
        np.testing.assert_array_equal(np.load(repository / step / "1" / layout.ITEM_IDS), table)
    quota = mcfg.from_pbtxt((repository / "quota_merge" / layout.CONFIG_FILE).read_text())
    assert quota.parameters["max_item_id"].string_value == str(len(shop["ids"]))


def test_every_item_field_is_a_tower_feature(builds):
    from widefunnel.builders.state import load_state

    tower = load_state(builds["atomic"] / "query_tower" / "1" / layout.BUILD_STATE_FILE).tower
    assert tower.fields == 4  # title, description, categories (bags), brand (a token with its OOV row)
    # the state keeps each per-item table's padding row only: its width
    assert tower.floats.shape == (1, 2)  # price z-scored, its missing flag
    assert tower.bag_0.shape == (1, 1)  # brand: one code per item


def test_parquet_builds_the_same_funnel_as_atomic(builds):
    """Same data, same seed: the same tower (fingerprint), so the same answers."""
    fingerprints = [layout.build_fingerprint(builds[k], 1) for k in ("atomic", "parquet")]
    assert fingerprints[0] is not None and fingerprints[0] == fingerprints[1]
    for step, name in (("preprocess", layout.CATALOGUE_FILE), ("preprocess", layout.ITEM_IDS)):
        np.testing.assert_array_equal(*(np.load(builds[k] / step / "1" / name) for k in ("atomic", "parquet")))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_by_13_digit_ids(shop, served, protocol):
    ids = shop["ids"]
    seeds = ids[[0, 17, 1500, 2999]]
    url = served.http_url if protocol == "http" else served.grpc_url
    with WidefunnelClient(url, protocol) as client:
        rec = client.recommend(seeds, top_n=20)
        answered = rec.item_id[rec.item_id >= 0]
        assert answered.size == 20 * len(seeds)
        assert np.isin(answered, ids).all() and (answered >= 10**12).all()
        assert rec.task_probs.shape[-1] == 2  # viewed, purchased
        for row, seed in zip(rec.item_id, seeds):
            assert seed not in row
        got = client.retrieve(seeds, candidates=50)
        for head in mcfg.HEADS:
            assert np.isin(got[head][0], ids).all()
        scored = client.score(seeds[:1], [answered[:5]])
        assert scored["score"].shape == (1, 5)

        excluded = rec.item_id[0][:10]
        again = client.recommend(seeds[:1], top_n=20, exclude=excluded.tolist() + [1234567890123])
        assert not set(excluded.tolist()) & set(again.item_id.ravel().tolist())
        retrieved = client.retrieve(seeds[:1], candidates=50, exclude=excluded.tolist())
        for head in mcfg.HEADS:
            assert not set(excluded.tolist()) & set(retrieved[head][0].ravel().tolist())

        missing = int(ids.max()) + 1
        with pytest.raises(WidefunnelError, match=rf"seed_item_id: unknown item id\(s\) \[{missing}\]"):
            client.recommend([missing])
        with pytest.raises(WidefunnelError, match=r"seed_item_id: unknown item id\(s\) \[1\]"):
            client.recommend([1])  # an internal id is no id of this catalogue
        with pytest.raises(WidefunnelError, match=r"include_genre"):  # the shop's filters are named after its fields
            client.recommend(seeds[:1], include_genres=["Comedy"])
        with pytest.raises(WidefunnelError, match=r"min_year"):
            client.recommend(seeds[:1], years=(1990, 2000))


def test_a_takedown_by_13_digit_id_is_never_served(shop, served):
    seeds = shop["ids"][[3, 400]]
    with WidefunnelClient(served.grpc_url, "grpc") as client:
        rec = client.recommend(seeds, top_n=20)
        victims = sorted(set(rec.item_id.ravel().tolist()) - {-1})[:5]
        assert main(["items", "remove", *map(str, victims), "--repository", str(served.repository)]) == 0
        try:
            after = client.recommend(seeds, top_n=20)
            got = client.retrieve(seeds, candidates=200)
            served_ids = set(after.item_id.ravel().tolist()).union(
                *(set(got[h][0].ravel().tolist()) for h in mcfg.HEADS))
            assert not set(victims) & served_ids
            assert (after.item_id >= 0).all()
            with pytest.raises(WidefunnelError, match=rf"seed_item_id: item id\(s\) \[{victims[0]}\] are taken down"):
                client.recommend([victims[0]])
        finally:
            assert main(["items", "restore", *map(str, victims), "--repository", str(served.repository)]) == 0


def test_a_malformed_dataset_is_refused_before_anything_is_written(shop, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in Path(shop["atomic"]).iterdir():
        lines = path.read_text().splitlines(keepends=True)
        if path.suffix == ".item":
            fields = lines[41].rstrip("\n").split("\t")
            fields[-1] = "cheap"  # price:float
            lines[41] = "\t".join(fields) + "\n"
        (bad / path.name).write_text("".join(lines))
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "keep.txt").write_text("untouched")
    assert main(["build", "--dataset", str(bad), "--config", str(shop["config"]), "--repository", str(repository),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "shop.item" in err and "line 42" in err and "price" in err
    assert sorted(p.name for p in repository.iterdir()) == ["keep.txt"]


# ------------------------------------------------------------------ filters named after the shop's fields
def _admissible(items, request: dict) -> set[int]:
    """The filter read straight from the shop's item table, independently of the serving code."""
    out = set()
    for row in items.select(["item_id", "brand", "categories", "price"]).to_pylist():
        brand, cats, price = row["brand"], set(row["categories"] or ()), row["price"]
        if "include_brand" in request and brand not in request["include_brand"]:
            continue
        if "exclude_brand" in request and brand in request["exclude_brand"]:
            continue
        if "include_categories" in request and not cats & set(request["include_categories"]):
            continue
        if "exclude_categories" in request and cats & set(request["exclude_categories"]):
            continue
        price = np.float32(np.nan if price is None else price)  # float fields and bounds are float32
        if "min_price" in request and not price >= np.float32(request["min_price"]):
            continue
        if "max_price" in request and not price <= np.float32(request["max_price"]):
            continue
        out.add(int(row["item_id"]))
    return out


def _field_requests(items) -> list[dict]:
    brands = sorted(set(items.column("brand").to_pylist()) - {None})
    cats = sorted({c for cs in items.column("categories").to_pylist() for c in cs or ()})
    prices = np.sort(np.asarray(items.column("price").to_numpy(), np.float64))
    return [{"include_brand": brands[:3]},
            {"exclude_categories": cats[:2], "min_price": float(prices[len(prices) // 4])},
            {"include_categories": cats[2:5], "exclude_brand": brands[:1],
             "max_price": float(prices[3 * len(prices) // 4])},
            {"min_price": float(prices[100]), "max_price": float(prices[400])}]


def test_every_field_is_a_filter_named_after_it(builds):
    preprocess = mcfg.from_pbtxt((builds["atomic"] / "preprocess" / layout.CONFIG_FILE).read_text())
    names = {t.name: t.data_type for t in preprocess.input}
    for name in ("include_brand", "exclude_brand", "include_categories", "exclude_categories"):
        assert names[name] == mcfg.mc.TYPE_STRING
    assert names["min_price"] == names["max_price"] == mcfg.mc.TYPE_FP32
    assert "include_genre" not in names and "min_year" not in names  # MovieLens' names are MovieLens' fields
    for ensemble in (mcfg.ENSEMBLE, mcfg.RETRIEVE_ENSEMBLE):
        config = mcfg.from_pbtxt((builds["atomic"] / ensemble / layout.CONFIG_FILE).read_text())
        assert {"include_brand", "exclude_categories", "min_price"} <= {t.name for t in config.input}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_field_filters_are_the_exact_top_k_of_the_admissible_items(shop, served, protocol):
    """Every answer is admissible, and each head's filtered top-k is the first k admissible items of its
    unfiltered ranking of the whole catalogue (same scores, same tie rule): nothing better is missing."""
    ids, seeds = shop["ids"], shop["ids"][[5, 1200, 2500]]
    url = served.http_url if protocol == "http" else served.grpc_url
    with WidefunnelClient(url, protocol) as client:
        full = client.retrieve(seeds, candidates=len(ids))
        for request in _field_requests(shop["items"]):
            admissible = _admissible(shop["items"], request)
            assert 0 < len(admissible) < len(ids), request
            got = client.retrieve(seeds, candidates=50, fields=request)
            for head in mcfg.HEADS:
                got_ids, got_scores = got[head]
                for i, seed in enumerate(seeds):
                    order, scores = full[head][0][i], full[head][1][i]
                    keep = np.array([int(x) in admissible and x != seed for x in order])
                    want = order[keep][:50]
                    assert set(got_ids[i][got_ids[i] >= 0].tolist()) <= admissible, (head, request)
                    np.testing.assert_array_equal(got_ids[i][:len(want)], want)
                    np.testing.assert_array_equal(got_scores[i][:len(want)], scores[keep][:50])
            rec = client.recommend(seeds, top_n=10, fields=request)
            answered = rec.item_id[rec.item_id >= 0]
            assert answered.size and set(answered.tolist()) <= admissible, request
        plain = client.retrieve(seeds, candidates=50)  # without filters: as before
        for head in mcfg.HEADS:
            np.testing.assert_array_equal(plain[head][0], full[head][0][:, :50])


def _brand_and_price(items) -> dict:
    """A filter on two kinds of field at once: four brands (token) and a price range (float)."""
    brands = sorted(set(items.column("brand").to_pylist()) - {None})
    prices = np.sort(np.asarray(items.column("price").to_numpy(), np.float64))
    return {"include_brand": brands[:4], "min_price": float(prices[300]), "max_price": float(prices[2400])}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_in_process_answers_equal_the_served_ones_with_field_filters(shop, served, protocol):
    """`InProcessFunnel` reads the build's item fields and takes the filters a served request takes, so served and
    in-process are compared on one filtered request: the same ids and scores, recommend and retrieve alike."""
    from widefunnel.evaluation.pipeline import InProcessFunnel
    from widefunnel.validation import RequestError

    request = _brand_and_price(shop["items"])
    admissible = _admissible(shop["items"], request)
    assert 0 < len(admissible) < len(shop["ids"]) // 4
    seeds = shop["ids"][[5, 1200, 2500, 2999]]
    local = InProcessFunnel(served.repository)
    url = served.http_url if protocol == "http" else served.grpc_url
    with WidefunnelClient(url, protocol) as client:
        for extra in ({"fields": request}, {}):
            got, want = client.recommend(seeds, top_n=20, **extra), local.recommend(seeds, top_n=20, **extra)
            assert got.fingerprint == want.fingerprint
            np.testing.assert_array_equal(got.item_id, want.item_id)
            np.testing.assert_allclose(got.score, want.score, rtol=1e-6, atol=1e-7)
            assert extra == {} or set(got.item_id[got.item_id >= 0].tolist()) <= admissible
            _same_candidates(client.retrieve(seeds, candidates=100, **extra), local.candidates(seeds, 100, **extra))
    with pytest.raises(RequestError, match=r"include_brand: unknown value 'no-such-brand'"):
        local.recommend(seeds, fields={"include_brand": ["no-such-brand"]})
    with pytest.raises(RequestError, match=r"include_colour: not a filter of this build"):
        local.candidates(seeds, fields={"include_colour": ["red"]})


def test_field_filters_are_refused_by_name(served):
    with WidefunnelClient(served.grpc_url, "grpc") as client:
        seed = [int(np.load(served.repository / "preprocess" / "1" / layout.CATALOGUE_FILE)[0])]
        with pytest.raises(WidefunnelError, match=r"include_brand: unknown value 'no-such-brand'"):
            client.retrieve(seed, fields={"include_brand": ["no-such-brand"]})
        with pytest.raises(WidefunnelError, match=r"exclude_categories: empty value"):
            client.retrieve(seed, fields={"exclude_categories": [""]})
        with pytest.raises(WidefunnelError, match=r"min_price, max_price: empty range"):
            client.recommend(seed, fields={"min_price": 50.0, "max_price": 10.0})
        with pytest.raises(WidefunnelError, match=r"include_colour"):  # no such field: not an input of the build
            client.retrieve(seed, fields={"include_colour": ["red"]})
        assert client.retrieve(seed, candidates=5)["engagement"][0].shape == (1, 5)  # still serving


def test_the_cli_query_prints_the_title_field_and_takes_field_filters(shop, builds, served, capsys):
    """`widefunnel query` prints each item's title (the shop's `title` field, read from the served repository)
    and filters on the shop's own fields with --filter."""
    items = shop["items"]
    ids = items.column("item_id").to_numpy()
    titles = [" ".join(t) if isinstance(t, list) else str(t) for t in items.column("title").to_pylist()]
    brands = items.column("brand").to_pylist()
    seed, brand = int(ids[0]), brands[1]
    assert main(["query", str(seed), "--url", served.http_url, "--repository", str(builds["atomic"]), "--top-n",
                 "5", "--filter", f"include_brand={brand}"]) == 0
    out = capsys.readouterr().out
    assert titles[0] in out  # the seed's line carries its title
    listed = [int(line.split()[1]) for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert listed, out
    brand_of = dict(zip(ids.tolist(), brands, strict=True))
    title_of = dict(zip(ids.tolist(), titles, strict=True))
    assert all(brand_of[i] == brand for i in listed), out  # the filter held
    assert all(title_of[i] in out for i in listed)
    assert main(["query", str(seed), "--url", served.http_url, "--filter", "include_brand"]) == 2
    assert "--filter 'include_brand': expected NAME=VALUE" in capsys.readouterr().err


# ------------------------------------------------------------------ items added in the shop's own format
def _item_lines(rows: list[dict]) -> str:
    """Rows of the shop's item table as its atomic file writes them (`synthetic_shop.write_atomic`)."""
    names = list(rows[0])
    out = ["\t".join(f"{n}:{ATOMIC_TYPES[n]}" for n in names)]
    for row in rows:
        out.append("\t".join(" ".join(v) if isinstance(v, list) else "" if v is None else str(v)
                             for v in row.values()))
    return "\n".join(out) + "\n"


def test_items_added_in_the_shops_own_format_are_served_and_filterable(shop, served, tmp_path, monkeypatch,
                                                                      capsys):
    """Three new shop items in its own `.item` format (one of a brand the build never saw) become version 2,
    swapped in: they answer as seeds, the new brand is a filter that returns exactly its item, and an old seed's
    answers are the old ones with the new items entering where they score. Rolled back at the end."""
    repository, ids = served.repository, shop["ids"]
    rows = shop["items"].slice(10, 3).to_pylist()  # copies of three shop items' fields under new ids
    new_ids = [i for i in range(9_999_999_999_990, 10**13) if i not in set(ids.tolist())][:3]
    for row, new_id in zip(rows, new_ids):
        row["item_id"] = new_id
    rows[0]["brand"] = "brandnew"
    (tmp_path / "new.item").write_text(_item_lines(rows))
    seeds = ids[[5, 1200]]
    monkeypatch.setenv(ADMIN_KEY_ENV, served.admin_key)
    with WidefunnelClient(served.grpc_url, "grpc") as client:
        before = client.retrieve(seeds, candidates=50)
        fp1 = client.recommend(seeds[:1]).fingerprint[0]
        assert main(["items", "add", str(tmp_path / "new.item"), "--repository", str(repository), "--url",
                     served.http_url]) == 0
        out = capsys.readouterr().out
        assert "3 item(s) added to build 1" in out and "serving version 2, was 1" in out
        try:
            everything = set(ids.tolist()) | set(new_ids)
            rec = client.recommend(new_ids, top_n=10)  # the new items as seeds
            assert rec.fingerprint[0] != fp1 and len(set(rec.fingerprint)) == 1
            answered = rec.item_id[rec.item_id >= 0]
            assert answered.size == 30 and set(answered.tolist()) <= everything

            only = client.retrieve(seeds, candidates=20, fields={"include_brand": ["brandnew"]})
            for head in mcfg.HEADS:
                for row in only[head][0]:
                    assert row[row >= 0].tolist() == [new_ids[0]], head  # exactly the item of the new brand
            with pytest.raises(WidefunnelError, match=r"include_brand: unknown value 'brandnew2'"):
                client.retrieve(seeds, fields={"include_brand": ["brandnew2"]})

            after = client.retrieve(seeds, candidates=50)
            for head in mcfg.HEADS:
                for i in range(len(seeds)):
                    got, scores = after[head][0][i], after[head][1][i]
                    old = ~np.isin(got, new_ids)
                    kept = int(old.sum())  # the old answers, in order and score, less those the new ones displaced
                    np.testing.assert_array_equal(got[old], before[head][0][i][:kept])
                    np.testing.assert_array_equal(scores[old], before[head][1][i][:kept])
        finally:
            assert main(["rollback", "--url", served.http_url, "--repository", str(repository)]) == 0
        with pytest.raises(WidefunnelError, match="seed_item_id"):  # build 1 never had them
            client.recommend(new_ids[:1])


def _same_candidates(got: dict, want: dict) -> None:
    """Each head's candidate ids and scores equal, exactly."""
    for head in mcfg.HEADS:
        np.testing.assert_array_equal(got[head][0], want[head][0])
        np.testing.assert_array_equal(got[head][1], want[head][1])


# ------------------------------------------------------------------ the shop build under operations
@dataclass(frozen=True)
class _Answer:
    protocol: str
    pair: int  # index into the traffic's seed pairs
    fingerprints: tuple[str, ...] = ()
    item_id: np.ndarray | None = None
    error: str | None = None


class _Traffic(ClientThreads):
    """Client threads, each with its own client, half over HTTP and half over gRPC, asking for seed pairs by SKU
    until stopped (bounded); every answer is kept with the pair it answers."""

    def __init__(self, server, pairs: list[list[int]], per_protocol: int = 2, max_seconds: float = 240.0):
        self.server, self.pairs, self.deadline = server, pairs, time.monotonic() + max_seconds
        self.answers: list[_Answer] = []
        super().__init__([(protocol, i) for protocol in ("http", "grpc") for i in range(per_protocol)])

    def _run(self, protocol: str, index: int) -> None:
        rng = random.Random(f"{protocol}{index}")
        url = self.server.http_url if protocol == "http" else self.server.grpc_url
        with WidefunnelClient(url, protocol) as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                pair = rng.randrange(len(self.pairs))
                try:
                    rec = client.recommend(self.pairs[pair], top_n=10)
                    answer = _Answer(protocol, pair, tuple(rec.fingerprint), rec.item_id)
                except WidefunnelError as exc:
                    answer = _Answer(protocol, pair, error=str(exc))
                with self.lock:
                    self.answers.append(answer)
                time.sleep(0.05)  # leave the 2-core box room to load versions


def test_a_swap_under_load_by_sku_never_fails_or_mixes(shop, served, tmp_path, monkeypatch, capsys):
    """Clients over both protocols ask by 13-digit SKU while `widefunnel swap` moves to a build grown by `items add`
    (two twins of seed items, in the shop's own .item format) and back: no request fails, and every answer is
    wholly one build's: one fingerprint, and exactly the ids that build gives for those seeds."""
    from widefunnel.evaluation.pipeline import InProcessFunnel

    repository, ids = served.repository, shop["ids"]
    monkeypatch.setenv(ADMIN_KEY_ENV, served.admin_key)
    old = layout.served_version(repository) or 1
    rows = shop["items"].slice(10, 2).to_pylist()  # twins of shop items 10 and 11: near them in the new build
    new_ids = [i for i in range(9_999_999_999_900, 10**13) if i not in set(ids.tolist())][:2]
    for row, new_id in zip(rows, new_ids):
        row["item_id"] = new_id
    (tmp_path / "twins.item").write_text(_item_lines(rows))
    assert main(["items", "add", str(tmp_path / "twins.item"), "--repository", str(repository), "--from-version",
                 str(old)]) == 0
    new = int(re.search(r"^version (\d+) ", capsys.readouterr().out, re.M).group(1))

    # seeds the two builds answer apart (a twin enters their candidates, so their top 10 moves), found in process,
    # and two others: an answer's ids then tell its build as its fingerprint does
    funnels = [InProcessFunnel(repository, version=v) for v in (old, new)]
    sample = ids[:640]
    top = [np.concatenate([f.recommend(sample[i:i + 64], top_n=10).item_id for i in range(0, len(sample), 64)])
           for f in funnels]
    apart = sample[(top[0] != top[1]).any(axis=1)]
    assert len(apart) >= 3
    pairs = [apart[:2].tolist(), [int(apart[2]), int(ids[700])], ids[[5, 1200]].tolist(), ids[[2000, 2999]].tolist()]
    with WidefunnelClient(served.grpc_url, "grpc") as client:
        before = [client.recommend(pair, top_n=10) for pair in pairs]
    after = [funnels[1].recommend(pair, top_n=10) for pair in pairs]  # the build not yet served
    fp_old, fp_new = before[0].fingerprint[0], after[0].fingerprint[0]
    assert fp_old != fp_new
    expected = {fp_old: [r.item_id for r in before], fp_new: [r.item_id for r in after]}

    with _Traffic(served, pairs) as traffic:
        time.sleep(1.5)
        assert main(["swap", "--to", str(new), "--url", served.http_url, "--repository", str(repository)]) == 0
        time.sleep(1.5)
        assert main(["swap", "--to", str(old), "--url", served.grpc_url, "--protocol", "grpc", "--repository",
                     str(repository)]) == 0
        time.sleep(1.5)
    answers = traffic.answers
    failed = [a.error for a in answers if a.error]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    for a in answers:
        assert len(set(a.fingerprints)) == 1 and a.fingerprints[0] in expected, a  # one build per answer
        np.testing.assert_array_equal(a.item_id, expected[a.fingerprints[0]][a.pair])  # and that build's ids
    seen = {(a.protocol, a.fingerprints[0]) for a in answers}
    assert {(p, fp) for p in ("http", "grpc") for fp in (fp_old, fp_new)} <= seen, seen
    logging.getLogger(__name__).info("swap under load: %d answers, %d from the new build, 0 failed, 0 mixed",
                                     len(answers), sum(a.fingerprints[0] == fp_new for a in answers))
    assert layout.served_version(repository) == old


def test_a_sharded_deployment_answers_by_sku_as_the_single_server(shop, builds, served, tmp_path):
    """`LocalCluster` (what `widefunnel cluster` runs: `shard-layout` over the shop's repository, 2 shard servers
    and a router) answers by SKU exactly as the unsharded server: ids and scores, unfiltered and with a brand and
    price filter, recommend and retrieve, over both protocols. The cluster serves the Parquet build, the same
    funnel as the atomic one the single server serves (same fingerprint), which the other tests swap about."""
    from widefunnel.cli.cluster import LocalCluster

    seeds = shop["ids"][[5, 1200, 2500, 2999]]
    request = _brand_and_price(shop["items"])
    with LocalCluster(builds["parquet"], 2, workdir=tmp_path / "cluster", instances=1) as cluster:
        router = cluster.router
        for protocol in ("http", "grpc"):
            urls = (served.http_url, router.http_url) if protocol == "http" else (served.grpc_url, router.grpc_url)
            with WidefunnelClient(urls[0], protocol) as single, WidefunnelClient(urls[1], protocol) as sharded:
                for extra in ({}, {"fields": request}):
                    want, got = single.recommend(seeds, top_n=20, **extra), sharded.recommend(seeds, top_n=20, **extra)
                    assert got.fingerprint == want.fingerprint, "the single server does not serve build 1"
                    np.testing.assert_array_equal(got.item_id, want.item_id)
                    np.testing.assert_array_equal(got.score, want.score)
                    assert (got.item_id >= 10**12).all()  # SKUs, not internal ids
                    _same_candidates(sharded.retrieve(seeds, 100, **extra), single.retrieve(seeds, 100, **extra))
                with pytest.raises(WidefunnelError, match=r"include_brand: unknown value 'no-such-brand'"):
                    sharded.recommend(seeds, fields={"include_brand": ["no-such-brand"]})
