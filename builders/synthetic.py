"""Catalogue-scale builds: the real MovieLens items plus synthetic ones drawn from them.

MovieLens-100K has 1,682 items; serving questions (a 100,000-candidate pool, a million-item scan) need more.
A synthetic item takes
- the content (content-encoder embedding, genres, release year) of a real item drawn uniformly,
- a training popularity drawn from the real items' popularities,
- an id embedding drawn from a Gaussian fitted to the trained real id embeddings (mean, full covariance),
and the trained tower maps it like any item, so its head embeddings follow the real items' distribution without
copying any one of them. Training sees only the real interactions; synthetic items are added afterwards (the
build stays within minutes), take the ids after the real ones, and are recorded in the build record so that
quality metrics (which only ever use real interactions) can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from widefunnel.builders.models import CompositeScorer, ItemTower, TowerFeatures, set_features
from widefunnel.builders.train import TrainedFunnel, TrainingData, scorer_features, tables_and_indexes
from widefunnel.data import Catalogue
from widefunnel.genres import SourcedGenres


@dataclass(frozen=True)
class SyntheticItems:
    first_id: int  # synthetic ids are first_id .. first_id + count - 1
    count: int
    source: np.ndarray  # int64 [count]: the real item whose content each one takes

    def record(self) -> dict:
        """What the build record says about them."""
        return {"first_id": self.first_id, "count": self.count,
                "how": "content of a uniformly drawn real item; popularity drawn from the real items'; id "
                       "embedding from a Gaussian fitted to the trained real id embeddings"}


def plan(catalogue: Catalogue, items: int, seed: int) -> SyntheticItems:
    """``items`` in all (real + synthetic); ValueError when fewer than the real items."""
    real = len(catalogue.item_ids)
    if items < real:
        raise ValueError(f"--items: at least the {real} real items, got {items}")
    rng = np.random.default_rng(seed)
    return SyntheticItems(catalogue.table_size, items - real, rng.choice(catalogue.item_ids, items - real))


def extend_catalogue(catalogue: Catalogue, synthetic: SyntheticItems) -> Catalogue:
    """The catalogue with the synthetic items (genres and year of their source; no title)."""
    ids = np.arange(synthetic.first_id, synthetic.first_id + synthetic.count, dtype=np.int64)
    years = np.concatenate([catalogue.years, catalogue.years[synthetic.source]])
    genres = SourcedGenres(dict(catalogue.genres), synthetic.first_id, synthetic.source)
    return replace(catalogue, item_ids=np.concatenate([catalogue.item_ids, ids]), years=years, genres=genres)


def extend_popularity(popularity: np.ndarray, real_ids: np.ndarray, synthetic: SyntheticItems,
                      seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return np.concatenate([popularity, rng.choice(popularity[real_ids], synthetic.count)])


def _gaussian_rows(real: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 2)
    mean = real.mean(axis=0)
    lower = np.linalg.cholesky(np.cov(real, rowvar=False) + 1e-8 * np.eye(real.shape[1])).astype(np.float32)
    out = np.empty((count, real.shape[1]), np.float32)
    for start in range(0, count, 1 << 20):  # float32 chunks: no float64 copy of 10M rows
        z = rng.standard_normal((min(1 << 20, count - start), real.shape[1]), dtype=np.float32)
        out[start:start + len(z)] = z @ lower.T + mean.astype(np.float32)
    return out


@torch.no_grad()
def extend_tower(tower: ItemTower, features: TowerFeatures, real_ids: np.ndarray, synthetic: SyntheticItems,
                 seed: int) -> ItemTower:
    """The trained tower with the synthetic items' rows (``features`` of the extended catalogue; their content
    rows are their sources'; id embeddings drawn from the real ones' Gaussian); the real items' rows are
    unchanged."""
    weight = tower.id_embedding.weight
    table = torch.empty((len(weight) + synthetic.count, weight.shape[1]), dtype=weight.dtype)
    table[:len(weight)] = weight
    table[len(weight):] = torch.from_numpy(_gaussian_rows(weight[torch.from_numpy(real_ids)].numpy(),
                                                          synthetic.count, seed))
    tower.id_embedding = torch.nn.Embedding.from_pretrained(table, freeze=True)
    set_features(tower, features)
    return tower.eval()


@torch.no_grad()
def extend_scorer(scorer: CompositeScorer, features: torch.Tensor) -> CompositeScorer:
    """The trained scorer over the extended item features (the real rows are unchanged)."""
    scorer.features = features.float()
    return scorer.eval()


def widen(funnel: TrainedFunnel, data: TrainingData, cfg: dict, items: int, fingerprint_of
          ) -> tuple[TrainedFunnel, TrainingData, SyntheticItems]:
    """A trained funnel and its data at ``items`` items: towers and scorer extended, indexes rebuilt over every
    item under the extended tower's fingerprint; the rerankers are the trained ones (they read the item
    table of the index they are exported with)."""
    seed = cfg["seed"]
    synthetic = plan(data.catalogue, items, seed)
    real_ids = data.catalogue.item_ids
    catalogue = extend_catalogue(data.catalogue, synthetic)
    split = replace(data.split, train_popularity=extend_popularity(data.split.train_popularity, real_ids,
                                                                   synthetic, seed))
    rows = np.arange(data.catalogue.table_size) if data.content_row is None else data.content_row
    wide = replace(data, catalogue=catalogue, split=split, content_row=np.concatenate([rows, rows[synthetic.source]]))
    features = wide.tower_inputs(cfg["towers"]["min_id_count"])  # the scorer reads its genres and dense columns
    tower = extend_tower(funnel.tower, features, real_ids, synthetic, seed)
    tables, indexes = tables_and_indexes(tower, catalogue, cfg, fingerprint_of)
    scorer = extend_scorer(funnel.scorer, scorer_features(features, tables))
    return TrainedFunnel(tower, tables, indexes, funnel.rerankers, scorer), wide, synthetic
