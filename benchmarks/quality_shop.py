"""Recall of the two heads against popularity and item-to-item co-occurrence on the generated shop
(`widefunnel.dataset.synthetic_shop`), on the time split's held-out co-engaged pairs (towers only).

The shop is written as RecBole atomic files to a temporary folder and read through `[dataset]` with the config
of tests/served/test_own_catalogue.py (every view a positive; tasks viewed, purchased). The content encoder's
embeddings are cached by item text under $WIDEFUNNEL_CACHE (default ~/.cache/widefunnel), so a rerun on the
same shop skips encoding.

    .venv/bin/python benchmarks/quality_shop.py --epochs 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from widefunnel.builders.train import TrainingData, item_embeddings, train_towers
from widefunnel.config import load_config
from widefunnel.data import co_engagement_pairs, time_split
from widefunnel.dataset.synthetic_shop import DATASET_CONFIG, generate_shop, write_atomic
from widefunnel.evaluation import offline as E

KS = (50, 100)
CONFIG = DATASET_CONFIG  # the served test's [dataset] tables; training sizes come from the flags


def measure(args: argparse.Namespace) -> tuple[list[tuple[str, dict[int, float]]], dict[str, float]]:
    """Rows (method, {K: recall@K}) on one eval set, and facts about the run."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="widefunnel-shop-") as tmp:
        folder = write_atomic(generate_shop(args.users, args.items, args.interactions, args.seed), Path(tmp) / "shop")
        config = Path(tmp) / "shop.toml"
        config.write_text(CONFIG)
        cfg = load_config(config, {"dataset": {"path": str(folder)}, "training": {"epochs": args.epochs},
                                   "data": {"max_train_pairs": args.max_train_pairs}})
        data = TrainingData.load(cfg, progress=False)
    loaded = time.monotonic()
    d = cfg["data"]
    split = time_split(co_engagement_pairs(data.interactions, d["window"]), data.interactions,
                       d["split_quantile"], data.catalogue.table_size)  # every training pair (the cap is the towers')
    ev = E.build_eval_set(data.split.test, data.catalogue, data.split.fresh_items, d["max_eval_queries"], cfg["seed"])
    tower = train_towers(data, cfg, progress=False)
    trained = time.monotonic()
    ids, k = data.catalogue.item_ids, max(KS)
    tables = item_embeddings(tower, np.arange(data.catalogue.table_size, dtype=np.int64))
    indexes = E.head_indexes(tables, ids, cfg["seed"])
    lists = {f"{head} head (ANN)": E.ann_lists(index, table, ev.seeds, k)
             for head, table, index in zip(("engagement", "relevance"), tables, indexes)}
    pop = split.train_popularity
    lists["popularity"] = E.popularity_lists(pop, ids, ev.seeds, k)
    lists["co-occurrence"] = E.cooccurrence_lists(split.train, pop, ids, ev.seeds, k)
    if len(data.split.train) < len(split.train):
        lists["co-occurrence (the towers' sampled pairs)"] = E.cooccurrence_lists(data.split.train, pop, ids,
                                                                                 ev.seeds, k)
    rows = [(name, {kk: E.recall_at_k(ids_[:, :kk], ev.targets) for kk in KS}) for name, ids_ in lists.items()]
    facts = {"items": float(len(ids)), "log rows": float(len(data.interactions.items)),
             "training pairs": float(len(split.train)), "towers' training pairs": float(len(data.split.train)),
             "held-out pairs": float(len(data.split.test)), "queries": float(len(ev.seeds)),
             "load s": loaded - start, "train s": trained - loaded, "total s": time.monotonic() - start}
    return rows, facts


def table(rows: list[tuple[str, dict[int, float]]]) -> str:
    """Markdown: recall@K per method (%), and the engagement head's ratio to each baseline."""
    by = dict(rows)
    eng = by["engagement head (ANN)"]
    head = "| method | " + " | ".join(f"recall@{k} (%)" for k in KS) + " | " + " | ".join(
        f"engagement / method @{k}" for k in KS) + " |"
    out = [head, "|---" * (1 + 2 * len(KS)) + "|"]
    for name, rec in rows:
        ratios = " | ".join(f"{eng[k] / rec[k]:.2f}x" if rec[k] > 0 else "-" for k in KS)
        out.append(f"| {name} | " + " | ".join(f"{100 * rec[k]:.2f}" for k in KS) + f" | {ratios} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--interactions", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0, help="the shop's generator seed")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train-pairs", type=int, default=0, help="towers' training pairs (0: all)")
    args = p.parse_args()
    rows, facts = measure(args)
    print("    .venv/bin/python benchmarks/quality_shop.py " + shlex.join(sys.argv[1:]) + "\n")
    print(", ".join(f"{name} {value:,.0f}" for name, value in facts.items()) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
