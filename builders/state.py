"""A build's training state: what `widefunnel items add` needs to place new items without retraining.

Saved with the build's query tower version (`layout.BUILD_STATE_FILE`), so it is pruned with that version and a
later build never reads another build's weights. It holds the trained weights (the tower without its per-item
tables, the rerankers, the scorer without its item table), the genre names, the build config and, for a dataset
of its own, how its item fields were read and coded (`dataset.additions.ItemCoding`: vocabularies, bag widths,
float means and scales), which a state written before `items add` grew such builds lacks (`items add` refuses
it by name). `items add` computes the new items' rows alone and appends them to the served tables, so the state
keeps no item's inputs: its size does not grow with the catalogue. (Format 1 kept them; it still loads.)
Loaded with `torch.load(weights_only=True)`: tensors and plain containers only, no pickled code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from widefunnel.builders.models import ItemTower, Reranker, TowerFeatures
from widefunnel.data import Catalogue
from widefunnel.dataset.additions import ItemCoding

FORMAT = 2
READS = (1, 2)  # format 1 also kept every item's tower inputs (ignored now)
SCORER_TABLE = "features"  # the scorer's item table: follows from the tower (train.scorer_features)
# The tower's per-item tables (row = item id): a state keeps only their padding row, which gives their widths.
ITEM_TABLES = ("genres", "year_bucket", "dense", "content", "content_row", "known", "floats", "id_embedding.weight")


@dataclass
class BuildState:
    cfg: dict
    tower: ItemTower  # the trained weights; its per-item tables hold the padding row only
    rerankers: list[Reranker]
    genre_names: tuple[str, ...]
    coding: ItemCoding | None  # a dataset of its own: how its item fields were coded (None: MovieLens' fields)
    own: bool  # a dataset of its own (external ids, its own item format), else MovieLens


def _per_item(name: str) -> bool:
    return name in ITEM_TABLES or name.startswith("bag_")


def save_state(path: Path, funnel, catalogue: Catalogue, cfg: dict) -> None:
    """``funnel``: a `train.TrainedFunnel`. The tower's per-item tables keep their padding row only."""
    torch.save({
        "format": FORMAT,
        "config": json.dumps(cfg),
        "heads": len(funnel.tower.heads),
        "tower": {name: t[:1].clone() if _per_item(name) else t for name, t in funnel.tower.state_dict().items()},
        "rerankers": [r.state_dict() for r in funnel.rerankers],
        "catalogue": {"genre_names": list(catalogue.genre_names), "own": catalogue.external_ids is not None,
                      **({} if catalogue.coding is None else {"coding": catalogue.coding.to_state()})},
    }, path)


def load_state(path: Path) -> BuildState:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no build state (a build older than `items add`; rebuild once)")
    raw = torch.load(path, weights_only=True, map_location="cpu")
    if raw.get("format") not in READS:
        raise ValueError(f"{path}: build state format {raw.get('format')!r}, this widefunnel reads {READS}")
    cfg = json.loads(raw["config"])
    sd = {name: t[:1] if _per_item(name) else t for name, t in raw["tower"].items()}
    bags = tuple(sd[f"bag_{i}"] for i in range(sum(1 for k in sd if k.startswith("bag_"))))
    rows = int(sd["field_embedding.weight"].shape[0]) if "field_embedding.weight" in sd else 0
    # the year embedding's size follows the largest bucket the build saw
    buckets = torch.tensor([sd["year.weight"].shape[0] - 1])
    tower = ItemTower(TowerFeatures(sd["genres"], buckets, sd["dense"], sd["content"], sd["content_row"],
                                    sd["known"], bags, sd.get("floats"), rows), cfg["towers"], heads=raw["heads"])
    tower.load_state_dict(sd | {"year_bucket": torch.zeros(1, dtype=torch.int64)})
    rcfg = cfg["rerank"]
    dim = cfg["towers"]["embedding_dim"]
    rerankers = []
    for state in raw["rerankers"]:
        reranker = Reranker(dim, rcfg["hidden"], rcfg["kind"], rcfg["mixture_components"])
        reranker.load_state_dict(state)
        rerankers.append(reranker.eval())
    c = raw["catalogue"]
    own = bool(c["own"]) if "own" in c else "external_ids" in c
    return BuildState(cfg, tower.eval(), rerankers, tuple(c["genre_names"]),
                      ItemCoding.from_state(c["coding"]) if "coding" in c else None, own)
