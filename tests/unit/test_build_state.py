"""A build's training state keeps the trained weights and none of the items' inputs, so its size does not grow
with the catalogue, and new items placed with the loaded weights get exactly the rows the trained tower gives
them: pure, no server."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch

from widefunnel.builders.models import ItemTower, TowerFeatures
from widefunnel.builders.new_items import embed_new
from widefunnel.builders.state import FORMAT, load_state, save_state
from widefunnel.config import load_config
from widefunnel.data import load_catalogue


def _features(rows: int, seed: int, known: float = 0.0) -> TowerFeatures:
    rng = np.random.default_rng(seed)
    bags = (torch.from_numpy(rng.integers(0, 300, (rows, 3))),)
    return TowerFeatures(torch.from_numpy((rng.random((rows, 19)) < 0.2).astype(np.float32)),
                         torch.from_numpy(rng.integers(0, 21, rows)), torch.from_numpy(rng.random((rows, 2))),
                         torch.from_numpy(rng.standard_normal((rows, 384)).astype(np.float32)),
                         torch.from_numpy(np.arange(rows)), torch.full((rows,), known), bags, None, 301)


def _saved(tmp_path, rows: int, name: str):
    cfg = load_config(overrides={"rerank": {"hidden": [8]}, "scorer": {"hidden": [8]}})
    torch.manual_seed(0)
    tower = ItemTower(_features(rows, 1), cfg["towers"])
    path = tmp_path / name
    save_state(path, SimpleNamespace(tower=tower, rerankers=[]), load_catalogue(), cfg)
    return tower.eval(), path, cfg


def test_the_state_s_size_does_not_grow_with_the_items(tmp_path):
    _, small, _ = _saved(tmp_path, 2_000, "small.pt")
    _, large, _ = _saved(tmp_path, 60_000, "large.pt")
    assert abs(large.stat().st_size - small.stat().st_size) < 4096
    assert large.stat().st_size < 60_000 * 8  # not 8 bytes an item, let alone the ~1.6 KB of inputs


def test_new_items_placed_with_the_loaded_weights_get_the_trained_tower_s_rows(tmp_path):
    tower, path, _ = _saved(tmp_path, 5_000, "state.pt")
    state = load_state(path)
    new = _features(40, 7)  # cold items (not `known`), as `items add` places them: no id embedding counts
    ids = torch.arange(1, 40)
    with torch.no_grad():
        tower_new = ItemTower(new, load_config()["towers"])
        tower_new.load_state_dict({k: v for k, v in tower.state_dict().items()
                                   if k not in ("genres", "year_bucket", "dense", "content", "content_row", "known",
                                                "bag_0", "id_embedding.weight")}, strict=False)
        want = [h.numpy() for h in tower_new.eval()(ids)]
    got = embed_new(state.tower, new)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert not np.allclose(got[0], got[1])  # the two heads differ: the check reads each


def test_a_format_1_state_with_every_item_s_inputs_still_loads(tmp_path):
    tower, path, cfg = _saved(tmp_path, 3_000, "state.pt")
    raw = torch.load(path, weights_only=True)
    raw |= {"format": 1, "tower": dict(tower.state_dict()),
            "catalogue": {"genre_names": raw["catalogue"]["genre_names"], "item_ids": torch.arange(1, 3_000)}}
    torch.save(raw, tmp_path / "old.pt")
    state = load_state(tmp_path / "old.pt")
    assert not state.own and state.coding is None and json.loads(raw["config"]) == state.cfg
    assert state.tower.genres.shape[0] == 1  # the per-item tables are not kept
    for name, weight in tower.state_dict().items():
        if name in dict(state.tower.named_parameters()) and name != "id_embedding.weight":  # per item
            assert torch.equal(weight, state.tower.state_dict()[name]), name
    assert FORMAT == 2
