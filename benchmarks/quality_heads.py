"""Recall@100 and fresh-item recall of the two heads, from one tower training: a reduced quality check that runs
the same on any revision (it uses only `TrainingData.load`, `train_towers` and `evaluation.offline`).

    .venv/bin/python benchmarks/quality_heads.py --epochs 2 --max-train-pairs 60000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from widefunnel.builders.train import TrainingData, item_embeddings, train_towers
from widefunnel.config import load_config
from widefunnel.evaluation import offline as E

K = 100


def measure(epochs: int, max_train_pairs: int, int8: bool = False, seed: int = 0) -> dict[str, float]:
    cfg = load_config(overrides={"training": {"epochs": epochs}, "data": {"max_train_pairs": max_train_pairs},
                                 "teacher": {"int8": int8}, "seed": seed})
    start = time.monotonic()
    data = TrainingData.load(cfg, progress=False)
    ev = E.build_eval_set(data.split.test, data.catalogue, data.split.fresh_items, cfg["data"]["max_eval_queries"],
                          cfg["seed"])
    tower = train_towers(data, cfg, progress=False)
    ids = data.catalogue.item_ids
    tables = item_embeddings(tower, np.arange(data.catalogue.table_size, dtype=np.int64))
    out: dict[str, float] = {"queries": float(len(ev.seeds))}
    for head, table, index in zip(("engagement", "relevance"), tables, E.head_indexes(tables, ids, cfg["seed"])):
        lists = E.ann_lists(index, table, ev.seeds, K)
        out[f"{head} recall@{K}"] = E.recall_at_k(lists, ev.targets)
        sliced = E.sliced_metrics(E.ranked(lists), ev, (K,))
        out[f"{head} fresh-seed recall@{K}"] = sliced[f"fq_recall@{K}"]
        out[f"{head} fresh-target recall@{K}"] = sliced[f"ft_recall@{K}"]
    out["seconds"] = time.monotonic() - start
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train-pairs", type=int, default=60000)
    p.add_argument("--int8", action="store_true", help="[teacher] int8 = true: the int8 content encoder")
    p.add_argument("--seed", type=int, default=0, help="the build's seed (pairs sampled, towers, evaluation set)")
    args = p.parse_args()
    print(json.dumps(measure(args.epochs, args.max_train_pairs, args.int8, args.seed), indent=1))


if __name__ == "__main__":
    main()
