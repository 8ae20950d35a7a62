"""`items add` on a copy of the session's build, without a server: old items do not move, a new item is placed by
its content, every step's version shares one new fingerprint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from widefunnel.arrays import load_table
from widefunnel.builders.new_items import add_items
from widefunnel.data import load_catalogue

CAT = load_catalogue()


def _jsonl(*rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


@pytest.fixture(scope="module")
def grown(built_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("grow") / "repo"
    shutil.copytree(built_repository, repository)
    new = tmp_path_factory.mktemp("grow-file") / "new.jsonl"
    # a film with Toy Story's content (id 1) and one unlike anything in 1990s MovieLens
    toy_story = {"title": CAT.titles[1], "year": int(CAT.years[1]), "genres": list(CAT.genres[1])}
    new.write_text(_jsonl({"id": 1700, **toy_story},
                          {"id": 1701, "title": "Documentary about deep sea fishing fleets", "year": 2023,
                           "genres": ["Documentary"]}))
    result = add_items(repository, new)
    return repository, result


def test_added_items_get_a_new_version_of_every_step_under_one_new_fingerprint(grown):
    from widefunnel import model_configs as mcfg
    from widefunnel.layout import complete_versions, read_builds

    repository, result = grown
    assert result.version == 2 and result.from_version == 1 and result.added == [1700, 1701]
    assert complete_versions(repository, mcfg.STEP_MODELS) == [1, 2]
    builds = read_builds(repository)
    assert builds["2"]["fingerprint"] == result.fingerprint != builds["1"]["fingerprint"]
    assert builds["2"]["added_items"] == {"from_version": 1, "count": 2, "first_ids": [1700, 1701]}
    assert set(load_table(repository / "preprocess" / "2" / "catalogue.npy").tolist()) == set(CAT.item_ids.tolist()) | {
        1700, 1701}


def test_old_items_do_not_move_and_a_new_item_is_placed_by_its_content(grown):
    from widefunnel.evaluation.pipeline import InProcessFunnel

    repository, _ = grown
    old, new = InProcessFunnel(repository, version=1), InProcessFunnel(repository, version=2)
    seeds = np.array([[1], [50], [181], [300]])
    before, after = old.retrieve(seeds, k=20), new.retrieve(seeds, k=20)
    for head in before:
        np.testing.assert_array_equal(before[head][2], after[head][2])  # the seeds' embeddings
    # the copy of Toy Story is found from Toy Story by the relevance head (distilled from the content encoder)
    found = new.retrieve(np.array([[1]]), k=50)
    assert 1700 in found["relevance"][0][0]
    rec = new.recommend([1700, 1701], top_n=10)
    assert (rec.item_id >= 0).all() and 1700 not in rec.item_id[0]


def test_added_items_join_the_genre_and_year_filters(grown):
    """MovieLens' field filters follow the grown catalogue: the new film is the only item of 2023, and is found by
    its genre; the build before it knows no such year."""
    from widefunnel.evaluation.pipeline import InProcessFunnel

    repository, _ = grown
    old, new = InProcessFunnel(repository, version=1), InProcessFunnel(repository, version=2)
    seeds = np.array([[1], [50]])
    for head, (ids, _, _) in new.retrieve(seeds, new.filters(2, years=(2020, 2030)), k=5).items():
        assert ids[:, 0].tolist() == [1701, 1701] and (ids[:, 1:] == -1).all(), head
    found = new.retrieve(seeds, new.filters(2, include_genres=["Documentary"], exclude=[1]), k=200)
    assert all(1701 in ids[0] for ids, _, _ in found.values())
    assert all((ids == -1).all() for ids, _, _ in old.retrieve(seeds, old.filters(2, years=(2020, 2030))).values())


def test_two_adds_without_a_swap_keep_the_served_build_on_disk(built_repository, tmp_path):
    """The served build (1) outlives two `items add` runs in a row: a dead stub of it can still be restarted from
    its folder, and a swap records the new one, after which 1 may go."""
    from widefunnel import layout
    from widefunnel import model_configs as mcfg
    from widefunnel.builders.repository import disk_pinned_version

    repository = tmp_path / "repo"
    shutil.copytree(built_repository, repository)
    assert disk_pinned_version(repository) == 1
    for n, item in enumerate(({"id": 1800, "title": "First Addition"}, {"id": 1801, "title": "Second Addition"})):
        path = tmp_path / f"new{n}.jsonl"
        path.write_text(_jsonl(item))
        add_items(repository, path)
    assert layout.complete_versions(repository, mcfg.STEP_MODELS) == [1, 2, 3]
    assert layout.served_version(repository) == 1 and disk_pinned_version(repository) == 3
    layout.record_served(repository, 3)  # what `swap --to 3` records
    path = tmp_path / "new2.jsonl"
    path.write_text(_jsonl({"id": 1802, "title": "Third Addition"}))
    add_items(repository, path)
    assert layout.complete_versions(repository, mcfg.STEP_MODELS) == [2, 3, 4]  # 3 served, 2 its rollback
