"""Filters inside retrieval on the real server (issue 18), over HTTP and gRPC: exclusions and MovieLens' field
filters (its fields genre and year, under the client names of old) never leak, equal a brute-force reference over
the admissible items, compose with alpha, top_n and value weights, and bad filters are refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from widefunnel.ann.quantize import quantize_rows
from widefunnel.client.client import InvalidRequest
from widefunnel.data import load_catalogue
from widefunnel.evaluation.pipeline import InProcessFunnel
from widefunnel.merge import HEADS

SEEDS = [1, 50, 181, 98]


@pytest.fixture(scope="module")
def reference(built_repository):
    return InProcessFunnel(built_repository)


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


def _admissible(catalogue, include=(), exclude_genres=(), years=None, exclude_ids=()) -> set[int]:
    """The filter read straight from MovieLens' item table, independently of the serving code."""
    out = set()
    for item in catalogue.item_ids.tolist():
        genres, year = set(catalogue.genres[item]), int(catalogue.years[item])
        if include and not genres & set(include):
            continue
        if genres & set(exclude_genres) or item in exclude_ids:
            continue
        if years is not None and not (year and years[0] <= year <= years[1]):
            continue
        out.add(item)
    return out


def _brute_force(reference, seeds, head, admissible: set[int], k: int) -> np.ndarray:
    """Exact int8 top-k over the admissible items (the seed excluded), from the index's own codes."""
    index = reference.indexes[head]
    emb = dict(zip(HEADS, reference.tower.run(["EMB_ENGAGEMENT", "EMB_RELEVANCE"],
                                              {"ITEM_ID": np.asarray(seeds, np.int64).reshape(-1, 1)})))[head]
    qc, qs = quantize_rows(emb)
    scores = (qc.astype(np.int64) @ index.codes.astype(np.int64).T).astype(np.float32) * index.scales * qs[:, None]
    out = np.full((len(seeds), k), -1, np.int64)
    for i, seed in enumerate(seeds):
        order = np.lexsort((np.arange(index.count), -scores[i]))
        keep = [r for r in order if int(index.ids[r]) in admissible and int(index.ids[r]) != seed][:k]
        out[i, :len(keep)] = index.ids[keep]
    return out


FILTERS = [
    {"include_genres": ["Comedy", "Romance"], "years": (1990, 1996)},
    {"exclude_genres": ["Drama", "Comedy"], "exclude": [174, 172, 181]},
    {"include_genres": ["Documentary"]},  # about 3% of the catalogue: fewer than K admissible items
]


@pytest.mark.parametrize("filters", FILTERS, ids=["genre+years", "not-genres+ids", "rare-genre"])
def test_retrieval_is_the_exact_top_k_of_the_admissible_items(client, reference, catalogue, filters):
    admissible = _admissible(catalogue, filters.get("include_genres", ()), filters.get("exclude_genres", ()),
                             filters.get("years"), set(filters.get("exclude", ())))
    got = client.retrieve(SEEDS, **filters)
    local = reference.retrieve(np.asarray(SEEDS, np.int64).reshape(-1, 1), reference.filters(len(SEEDS), **filters))
    for head in HEADS:
        ids = got[head][0]
        assert set(ids[ids >= 0].tolist()) <= admissible, head  # nothing leaks
        assert np.array_equal(ids, _brute_force(reference, SEEDS, head, admissible, ids.shape[1])), head
        assert np.array_equal(ids, local[head][0]), head  # served = in process
        if len(admissible) < ids.shape[1]:
            assert (ids[:, -1] == -1).all()  # padded, not an error


def test_recommendations_respect_filters_and_compose_with_the_knobs(client, catalogue):
    filters = {"include_genres": ["Action", "Thriller"], "exclude": [50, 172, 174, 181, 121], "years": (1985, 1997)}
    admissible = _admissible(catalogue, ["Action", "Thriller"], (), (1985, 1997), {50, 172, 174, 181, 121})
    for alpha, top_n, weights in ((0.0, 5, None), (0.5, 20, [1.0, 0.5, 0.1, 0.2]), (1.0, 12, None)):
        rec = client.recommend(SEEDS, alpha=alpha, top_n=top_n, value_weights=weights, **filters)
        assert rec.item_id.shape == (len(SEEDS), top_n)
        assert set(rec.item_id.ravel().tolist()) <= admissible  # full: enough items match
    unfiltered = client.recommend(SEEDS, top_n=20)
    assert not set(unfiltered.item_id.ravel().tolist()) <= admissible  # the filter did something


def test_a_filter_that_matches_nothing_is_an_empty_answer_not_an_error(client):
    rec = client.recommend([1], top_n=5, include_genres=["Documentary"], years=(1920, 1921))
    assert (rec.item_id == -1).all()


@pytest.mark.parametrize("filters, field", [
    ({"include_genres": ["Space Opera"]}, "include_genre"),
    ({"exclude_genres": ["comedy"]}, "exclude_genre"),
    ({"years": (1999, 1990)}, "empty range"),
    ({"exclude": list(range(1, 1002))}, "exclude_item_id"),
    ({"exclude": [-5]}, "exclude_item_id"),
])
def test_bad_filters_are_refused_by_name_and_the_server_keeps_serving(client, filters, field):
    with pytest.raises(InvalidRequest, match=field):
        client.recommend([1], top_n=5, **filters)
    with pytest.raises(InvalidRequest, match=field):
        client.retrieve([1], **filters)
    assert client.recommend([1], top_n=5).item_id.shape == (1, 5)


def test_the_cli_query_takes_filters(server, capsys, catalogue):
    import json

    from widefunnel.cli import main

    code = main(["query", "50", "--url", server.http_url, "--top-n", "5", "--genre", "Comedy", "--not-genre",
                 "Drama", "--years", "1990", "1997", "--exclude", "1", "--json"])
    assert code == 0
    got = json.loads(capsys.readouterr().out)["item_id"][0]
    assert set(got) <= _admissible(catalogue, ["Comedy"], ["Drama"], (1990, 1997), {1}) and len(got) == 5
    assert main(["query", "50", "--url", server.http_url, "--genre", "Opera"]) == 2
    assert "include_genre: unknown value 'Opera' (not in this build's catalogue; known: Action, " in \
        capsys.readouterr().err
    assert main(["query", "50", "--url", server.http_url, "--top-n", "5", "--json", "--filter", "min_year=1990",
                 "--filter", "max_year=1997", "--filter", "include_genre=Comedy"]) == 0  # the generic spelling
    got = json.loads(capsys.readouterr().out)["item_id"][0]
    assert set(got) <= _admissible(catalogue, ["Comedy"], (), (1990, 1997)) and len(got) == 5


@pytest.mark.parametrize("model", ["widefunnel", "widefunnel_retrieve"])
def test_a_year_bound_of_the_old_type_is_refused_naming_the_field_and_its_type(client, model):
    """min_year / max_year are FP32 like every range filter; an INT32 one (what clients sent before) is refused
    with the field's name and the type it takes, and the server keeps serving."""
    tensors = {"seed_item_id": np.array([[1]], np.int64), "min_year": np.array([[1990]], np.int32)}
    with pytest.raises(InvalidRequest, match=r"min_year.*FP32") as refused:
        client.infer(model, tensors)
    assert refused.value.field == "min_year"
    answer = client.infer(model, tensors | {"min_year": np.array([[1990]], np.float32)})
    assert answer is not None
