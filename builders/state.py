"""A build's training state: what `widefunnel items add` needs to grow the catalogue without retraining.

Saved with the build's query tower version (`layout.BUILD_STATE_FILE`), so it is pruned with that version and a
later build never reads another build's weights. It holds the trained weights (tower with its item tables,
rerankers, scorer without its item table, which follows from the tower), the catalogue's titles and years, and
the build config; for a dataset of its own also the external ids, texts and how its item fields were read and
coded (`dataset.additions.ItemCoding`: vocabularies, bag widths, float means and scales), which a state written
before `items add` grew such builds lacks (`items add` refuses it by name). Loaded with
`torch.load(weights_only=True)`: tensors and plain containers only, no pickled code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from widefunnel.builders.models import CompositeScorer, ItemTower, Reranker, TowerFeatures
from widefunnel.config import task_names
from widefunnel.data import Catalogue
from widefunnel.dataset.additions import ItemCoding
from widefunnel.genres import SourcedGenres

FORMAT = 1
SCORER_TABLE = "features"  # the scorer's item table: rebuilt from the tower (train.scorer_features)


@dataclass
class BuildState:
    cfg: dict
    tower: ItemTower
    rerankers: list[Reranker]
    scorer_state: dict[str, torch.Tensor]  # without SCORER_TABLE
    catalogue: Catalogue

    def scorer(self, features: torch.Tensor) -> CompositeScorer:
        """The trained scorer over ``features`` (one row per item id)."""
        scfg = self.cfg["scorer"]
        scorer = CompositeScorer(features, scfg["hidden"], len(task_names(self.cfg)))
        scorer.load_state_dict({**self.scorer_state, SCORER_TABLE: features.float()})
        return scorer.eval()


def tower_features_of(tower: ItemTower) -> TowerFeatures:
    """The item tables a tower carries (its buffers)."""
    bags = tuple(getattr(tower, f"bag_{i}") for i in range(tower.fields))
    return TowerFeatures(tower.genres, tower.year_bucket, tower.dense, tower.content, tower.content_row, tower.known,
                         bags, tower.floats if tower.has_floats else None,
                         tower.field_embedding.num_embeddings if tower.fields else 0)


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """The smallest integer type that holds ``tensor`` exactly (a multi-hot, a bucket, a row map: 1 or 2 bytes an
    item instead of 4 or 8); other tensors as they are. Lossless: a tower loading the state casts back to its
    buffers' types (`load_state_dict` copies with a cast)."""
    if tensor.numel() < 1 << 16 or tensor.dtype not in (torch.float32, torch.float64, torch.int64, torch.int32):
        return tensor
    if tensor.is_floating_point():
        head = tensor.reshape(-1)[:4096]  # a learned table fails on its first values: no pass over all of it
        if not bool((head == head.round()).all()) or not bool((tensor == tensor.round()).all()):
            return tensor
    low, high = int(tensor.min()), int(tensor.max())
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return tensor.to(dtype) if dtype.itemsize < tensor.element_size() else tensor
    return tensor


def save_state(path: Path, funnel, catalogue: Catalogue, cfg: dict) -> None:
    """``funnel``: a `train.TrainedFunnel`. Integer-valued tables are stored `compact`."""
    torch.save({
        "format": FORMAT,
        "config": json.dumps(cfg),
        "heads": len(funnel.tower.heads),
        "tower": {name: compact(t) for name, t in funnel.tower.state_dict().items()},
        "rerankers": [r.state_dict() for r in funnel.rerankers],
        "scorer": {k: v for k, v in funnel.scorer.state_dict().items() if k != SCORER_TABLE},
        "catalogue": {"item_ids": compact(torch.from_numpy(catalogue.item_ids)),
                      "years": compact(torch.from_numpy(catalogue.years)),
                      "titles": {int(k): v for k, v in catalogue.titles.items()},
                      "genre_names": list(catalogue.genre_names),
                      # a catalogue-scale build's synthetic items take their genres from real ones: kept as such,
                      # so loading it is not a pass over every item
                      **({} if not isinstance(catalogue.genres, SourcedGenres) else
                         {"sourced_genres": {"real": {int(k): list(v) for k, v in catalogue.genres.real.items()},
                                             "first": catalogue.genres.first,
                                             "source": compact(torch.from_numpy(catalogue.genres.source))}}),
                      **({} if catalogue.external_ids is None else
                         {"external_ids": torch.from_numpy(catalogue.external_ids),
                          "texts": {int(k): v for k, v in (catalogue.texts or {}).items()}}),
                      **({} if catalogue.coding is None else {"coding": catalogue.coding.to_state()})},
    }, path)


def _genres_of(matrix: np.ndarray, ids: np.ndarray, names: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
    """Each item's genres from the tower's multi-hot: one tuple per distinct row, not a pass over each item's."""
    if not len(ids):
        return {}
    patterns, inverse = np.unique(np.asarray(matrix[ids]) != 0, axis=0, return_inverse=True)
    tuples = [tuple(names[j] for j in np.flatnonzero(p)) for p in patterns]
    return {i: tuples[p] for i, p in zip(ids.tolist(), np.asarray(inverse).reshape(-1).tolist())}


def load_state(path: Path) -> BuildState:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no build state (a build older than `items add`; rebuild once)")
    raw = torch.load(path, weights_only=True, map_location="cpu")
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: build state format {raw.get('format')!r}, this widefunnel reads {FORMAT}")
    cfg = json.loads(raw["config"])
    sd = raw["tower"]
    bags = tuple(sd[f"bag_{i}"] for i in range(sum(1 for k in sd if k.startswith("bag_"))))
    rows = int(sd["field_embedding.weight"].shape[0]) if "field_embedding.weight" in sd else 0
    tower = ItemTower(TowerFeatures(sd["genres"], sd["year_bucket"], sd["dense"], sd["content"], sd["content_row"],
                                    sd["known"], bags, sd.get("floats"), rows), cfg["towers"], heads=raw["heads"])
    tower.load_state_dict(sd)
    rcfg = cfg["rerank"]
    dim = cfg["towers"]["embedding_dim"]
    rerankers = []
    for state in raw["rerankers"]:
        reranker = Reranker(dim, rcfg["hidden"], rcfg["kind"], rcfg["mixture_components"])
        reranker.load_state_dict(state)
        rerankers.append(reranker.eval())
    c = raw["catalogue"]
    names = tuple(c["genre_names"])
    ids = c["item_ids"].numpy().astype(np.int64)
    if "sourced_genres" in c:
        sourced = c["sourced_genres"]
        genres = SourcedGenres({int(k): tuple(v) for k, v in sourced["real"].items()}, int(sourced["first"]),
                               sourced["source"].numpy().astype(np.int64))
    else:
        genres = _genres_of(tower.genres.numpy(), ids, names)
    external = c.get("external_ids")
    catalogue = Catalogue(ids, dict(c["titles"]), c["years"].numpy().astype(np.int64), genres, names,
                          dict(c["texts"]) if "texts" in c else None,
                          None if external is None else external.numpy(),
                          coding=ItemCoding.from_state(c["coding"]) if "coding" in c else None)
    return BuildState(cfg, tower.eval(), rerankers, raw["scorer"], catalogue)
