"""A build's training state stores integer-valued tables in their smallest exact type, and a tower loads it back
unchanged: pure, no server."""

from __future__ import annotations

import numpy as np
import torch

from widefunnel.builders.models import ItemTower, TowerFeatures
from widefunnel.builders.state import compact
from widefunnel.config import load_config

ROWS = 70_000  # past compact's 65,536-element floor


def _features(rng: np.random.Generator) -> TowerFeatures:
    bags = (torch.from_numpy(rng.integers(0, 300, (ROWS, 3))),)
    return TowerFeatures(torch.from_numpy((rng.random((ROWS, 19)) < 0.2).astype(np.float32)),
                         torch.from_numpy(rng.integers(0, 21, ROWS)), torch.from_numpy(rng.random((ROWS, 2))),
                         torch.from_numpy(rng.standard_normal((40, 384)).astype(np.float32)),
                         torch.from_numpy(rng.integers(0, 40, ROWS)),
                         torch.from_numpy((rng.random(ROWS) < 0.5).astype(np.float32)), bags, None, 301)


def test_compact_is_lossless_and_a_tower_loads_the_compacted_state_unchanged():
    rng = np.random.default_rng(0)
    cfg = load_config()["towers"]
    torch.manual_seed(0)
    tower = ItemTower(_features(rng), cfg)
    state = tower.state_dict()
    small = {name: compact(t) for name, t in state.items()}
    assert small["genres"].dtype == torch.uint8 and small["known"].dtype == torch.uint8  # 1 byte, not 4
    assert small["year_bucket"].dtype == torch.uint8 and small["content_row"].dtype == torch.uint8  # not 8
    assert small["id_embedding.weight"].dtype == torch.float32 and small["dense"].dtype == torch.float32  # as is
    before = sum(t.numel() * t.element_size() for t in state.values())
    after = sum(t.numel() * t.element_size() for t in small.values())
    assert after < 0.7 * before
    loaded = ItemTower(_features(np.random.default_rng(1)), cfg)
    loaded.load_state_dict(small)
    for name, t in loaded.state_dict().items():
        assert t.dtype == state[name].dtype and torch.equal(t, state[name]), name
    ids = torch.from_numpy(rng.integers(1, ROWS, 64))
    with torch.no_grad():
        for a, b in zip(tower.eval()(ids), loaded.eval()(ids), strict=True):
            assert torch.equal(a, b)
    assert compact(torch.full((70_000,), 0.5)).dtype == torch.float32  # not integer-valued: kept
    assert compact(torch.full((70_000,), -3, dtype=torch.int64)).dtype == torch.int8
    assert compact(torch.full((70_000,), 2**40, dtype=torch.int64)).dtype == torch.int64


def test_a_widened_catalogue_s_genres_load_back_sourced_and_a_plain_one_s_as_a_dict(tmp_path):
    """The state keeps a widened catalogue's genres as `SourcedGenres` (loading it is no pass over every item)
    and rebuilds a plain catalogue's from the tower's multi-hot: each answers as the catalogue saved."""
    from types import SimpleNamespace

    from widefunnel.builders.models import CompositeScorer
    from widefunnel.builders.state import load_state, save_state
    from widefunnel.builders.synthetic import extend_catalogue, plan
    from widefunnel.builders.train import tower_features
    from widefunnel.data import load_catalogue
    from widefunnel.genres import SourcedGenres

    cfg = load_config(overrides={"rerank": {"hidden": [8]}, "scorer": {"hidden": [8]}})
    real = load_catalogue()
    for catalogue in (real, extend_catalogue(real, plan(real, len(real.item_ids) + 500, 5))):
        size = catalogue.table_size
        content = np.random.default_rng(0).standard_normal((size, 384)).astype(np.float32)
        features = tower_features(catalogue, np.zeros(size), content, np.arange(size), 0)
        torch.manual_seed(0)
        funnel = SimpleNamespace(tower=ItemTower(features, cfg["towers"]), rerankers=[],
                                 scorer=CompositeScorer(torch.zeros(size, 4), [8], 3))
        path = tmp_path / "state.pt"
        save_state(path, funnel, catalogue, cfg)
        loaded = load_state(path).catalogue
        assert isinstance(loaded.genres, SourcedGenres) == isinstance(catalogue.genres, SourcedGenres)
        assert dict(loaded.genres.items()) == dict(catalogue.genres.items())
