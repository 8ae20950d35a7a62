"""Training of every learned stage on the configured dataset: towers (MTMH), rerankers, composite scorer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from widefunnel.ann.index import Int8Index, build_index
from widefunnel.ann.search import exact_search
from widefunnel.builders.losses import distillation_kl, info_nce, negatives_bias, ordinal_loss
from widefunnel.builders.models import CompositeScorer, ItemTower, Reranker, TowerFeatures, unified_value
from widefunnel.builders.stages import stage
from widefunnel.builders.teacher import teacher_embeddings
from widefunnel.config import DEFAULT_TASK_WEIGHT, dataset_config, task_names
from widefunnel.data import Catalogue, CoEngagement, Interactions, Split, funnel_data, sampled_split, up_to
from widefunnel.dataset import Dataset, load_dataset
from widefunnel.dataset.features import ItemFeatures
from widefunnel.dataset.movielens import load_movielens


def load_configured_dataset(cfg: dict) -> Dataset:
    """`[dataset] path` read and checked whole (a malformed one raises `DatasetError` before anything is
    written); empty: MovieLens-100K through the same reader."""
    path = cfg["dataset"]["path"]
    return load_dataset(path, dataset_config(cfg)) if path else load_movielens()


@dataclass
class TrainingData:
    catalogue: Catalogue
    interactions: Interactions
    split: Split
    teacher: np.ndarray  # [content rows, 384]: the content encoder's embedding of each item's text
    content_row: np.ndarray | None = None  # [table_size] item -> teacher row; None: row = item id

    @classmethod
    def load(cls, cfg: dict, progress: bool = True, dataset: Dataset | None = None,
             held_out: bool = True) -> TrainingData:
        """``dataset``: already loaded (the CLI checks it before anything is written); else the config's.
        ``held_out=False``: no test pairs (a build never evaluates)."""
        dataset = dataset if dataset is not None else load_configured_dataset(cfg)
        with stage("features"):
            catalogue, inter = funnel_data(dataset, cfg["dataset"])
        d = cfg["data"]
        with stage("pairs and split"):
            split = sampled_split(inter, d["window"], d["split_quantile"], catalogue.table_size,
                                  d["max_train_pairs"], cfg["seed"], held_out=held_out)
        with stage("content encoder"):
            teacher = teacher_embeddings(catalogue, cfg["teacher"]["batch_size"], progress, cfg["teacher"]["int8"])
        return cls(catalogue, inter, split, teacher)

    def tower_inputs(self, min_id_count: int = 0) -> TowerFeatures:
        """The tower's item tables; items with fewer than ``min_id_count`` training pairs get no id embedding."""
        rows = np.arange(self.catalogue.table_size) if self.content_row is None else self.content_row
        return tower_features(self.catalogue, self.split.train_popularity, self.teacher, rows, min_id_count)


def year_features(years: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Release year -> (5-year bucket, 0 unknown; scaled year, 0 unknown)."""
    years = np.asarray(years, dtype=np.float64)
    bucket = np.where(years > 0, np.clip((years - 1920) // 5 + 1, 1, 20), 0).astype(np.int64)
    return bucket, np.where(years > 0, (years - 1990) / 30.0, 0.0)


def tower_features(catalogue: Catalogue, popularity: np.ndarray, content: np.ndarray, content_row: np.ndarray,
                   min_id_count: int = 0) -> TowerFeatures:
    """Genre multi-hot, year bucket, dense [scaled log training popularity, scaled year], the content encoder's
    embeddings, and which items have an id embedding (at least ``min_id_count`` training pairs)."""
    bucket, scaled_year = year_features(catalogue.years)
    pop = np.log1p(popularity)
    dense = np.stack([pop / max(pop.max(), 1.0), scaled_year], axis=1)
    known = (popularity >= max(min_id_count, 0)).astype(np.float32)
    bags, floats, rows = field_tables(catalogue)
    return TowerFeatures(torch.from_numpy(catalogue.genre_matrix()), torch.from_numpy(bucket),
                         torch.from_numpy(dense), torch.from_numpy(np.asarray(content, np.float32)),
                         torch.from_numpy(np.asarray(content_row, np.int64)), torch.from_numpy(known),
                         bags, floats, rows)


def field_tables(catalogue: Catalogue) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, int]:
    """A dataset's item fields as the tower's buffers (`field_tables_of` the catalogue's features)."""
    return field_tables_of(catalogue.features)


def field_tables_of(features: ItemFeatures | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, int]:
    """Item fields as the tower's buffers: each token / token_seq field's codes moved into its own range of one
    shared embedding table (row 0 pads; a token field's OOV code 0 keeps a learned row), the floats. Items added
    later (`new_items`) go through here too, so their codes land in the build's rows."""
    if features is None:
        return (), None, 0
    bags, offset = [], 1
    for name, codes in features.tokens.items():  # one code per item, OOV included: never masked
        bags.append(torch.from_numpy((codes + offset)[:, None]))
        offset += features.vocabulary[name]
    for name, codes in features.bags.items():  # 0 pads the bag; code c >= 1 -> its row
        bags.append(torch.from_numpy(np.where(codes > 0, codes + offset - 1, 0)))
        offset += features.vocabulary[name] - 1
    floats = torch.from_numpy(features.dense) if features.dense.shape[1] else None
    return tuple(bags), floats, offset


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    name = cfg["optimizer"]
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg["lr"])
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"])
    raise ValueError(f"training.optimizer must be 'adagrad' or 'adam', got {name!r}")


def train_towers(data: TrainingData, cfg: dict, wr: float | None = None, heads: int = 2,
                 distill_heads: tuple[int, ...] = (1,), progress: bool = True) -> ItemTower:
    """MTMH: head 0 (engagement) on InfoNCE only; heads in `distill_heads` add wr * KL from the teacher.

    heads=1, distill_heads=() is the engagement-only baseline; heads=1, distill_heads=(0,) the
    multi-task single head."""
    tcfg = cfg["training"]
    wr = tcfg["wr"] if wr is None else wr
    seed_everything(cfg["seed"])
    tower = ItemTower(data.tower_inputs(cfg["towers"]["min_id_count"]), cfg["towers"], heads=heads)
    if tcfg["optimizer"] == "adagrad":
        # Per-item embedding tables get sparse gradients: a step then touches the batch's rows, not every item's
        # (Adagrad leaves a row without gradient unchanged either way, so the update is the same), and a step's
        # cost no longer grows with the catalogue.
        for table in (tower.id_embedding, getattr(tower, "field_embedding", None)):
            if table is not None:
                table.sparse = True
    opt = _optimizer(tower.parameters(), tcfg)
    train = data.split.train
    q_all, t_all = torch.from_numpy(train.query), torch.from_numpy(train.target)
    pop = data.split.train_popularity
    log_q = torch.from_numpy(np.log(np.maximum(pop, 1) / pop.sum())).float()
    teacher = torch.from_numpy(data.teacher)
    bs, temp = tcfg["batch_size"], tcfg["temperature"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    steps = tcfg["epochs"] * (len(q_all) // bs)
    cold_rate = tcfg["cold_dropout"]
    bar = tqdm(total=steps, desc=f"towers (heads={heads}, wr={wr})", disable=not progress, leave=False)
    for _ in range(tcfg["epochs"]):
        perm = torch.randperm(len(q_all), generator=gen)
        for start in range(0, len(perm) - bs + 1, bs):
            idx = perm[start:start + bs]
            q, t = q_all[idx], t_all[idx]
            cold = torch.rand(2, len(q), generator=gen) < cold_rate if cold_rate > 0 else (None, None)
            # both sides in one pass: one sparse gradient per table a step, not one per side
            both = tower(torch.cat([q, t]), None if cold[0] is None else torch.cat([cold[0], cold[1]]))
            eq, et = [e[:len(q)] for e in both], [e[len(q):] for e in both]
            bias = negatives_bias(log_q[t] if tcfg["logq_correction"] else None, t)  # one for every head
            loss = sum(info_nce(eq[h], et[h], temp, bias=bias) for h in range(heads))
            if wr > 0:
                for h in distill_heads:
                    loss = loss + wr * distillation_kl(eq[h], et[h], teacher[q], teacher[t], temp,
                                                       tcfg["teacher_temperature"])
            opt.zero_grad()
            loss.backward()
            with torch.sparse.check_sparse_tensor_invariants(enable=False):  # Adagrad's own sparse sums: valid
                opt.step()
            bar.update(1)
            bar.set_postfix(loss=float(loss.detach()))
    bar.close()
    return tower.eval()


@torch.no_grad()
def item_embeddings(tower: ItemTower, item_ids: np.ndarray) -> list[np.ndarray]:
    return [e.numpy() for e in tower(torch.from_numpy(item_ids))]


def candidates_for(index: Int8Index, queries: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    ids, _ = exact_search(index, queries, k, exclude_ids=query_ids)
    return ids


def positive_labels(query: np.ndarray, target: np.ndarray, queries: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """float32 [Q, K]: whether each candidate was co-engaged with its query in (query, target); -1 pads are not."""
    size = int(max(target.max(initial=0), cands.max(initial=0))) + 1
    keys = np.unique(query * size + target)
    want = queries[:, None] * size + cands
    at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    return ((keys[at] == want) & (cands >= 0)).astype(np.float32)


def train_reranker(data: TrainingData, index: Int8Index, head_table: np.ndarray, cfg: dict,
                   progress: bool = True) -> Reranker:
    """Trained on this head's own top-K ANN candidates; label = co-engaged with the query in training. At most
    `rerank.max_queries` query items (sampled): each brings K candidates, so a large catalogue's every item
    would cost an exact search of the whole index and K examples per epoch."""
    rcfg, k = cfg["rerank"], cfg["ann"]["k"]
    seed_everything(cfg["seed"])
    train = data.split.train
    queries = np.unique(train.query)
    cap = rcfg["max_queries"]
    if 0 < cap < len(queries):
        queries = np.sort(np.random.default_rng(cfg["seed"]).choice(queries, cap, replace=False))
    cands = candidates_for(index, head_table[queries], queries, k)
    labels = positive_labels(train.query, train.target, queries, cands)
    model = Reranker(head_table.shape[1], rcfg["hidden"], rcfg["kind"], rcfg["mixture_components"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    table = torch.from_numpy(head_table)
    qs, cs, ys = torch.from_numpy(queries), torch.from_numpy(cands), torch.from_numpy(labels)
    pos_weight = torch.tensor(max(1.0, float((1 - labels).sum() / max(labels.sum(), 1))) ** 0.5)
    gen = torch.Generator().manual_seed(cfg["seed"])
    for _ in tqdm(range(rcfg["epochs"]), desc="reranker", disable=not progress, leave=False):
        perm = torch.randperm(len(qs), generator=gen)
        for start in range(0, len(perm), 128):
            idx = perm[start:start + 128]
            logits = model(table[qs[idx]], table[cs[idx]])
            loss = F.binary_cross_entropy_with_logits(logits, ys[idx], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def relevance_levels(teacher: np.ndarray, query: np.ndarray, target: np.ndarray,
                     thresholds: tuple[float, float]) -> np.ndarray:
    """Ordinal label from the content encoder: 0 irrelevant, 1 somewhat, 2 highly relevant."""
    sim = (teacher[query] * teacher[target]).sum(-1)
    return (sim >= thresholds[0]).astype(np.int64) + (sim >= thresholds[1]).astype(np.int64)


def relevance_thresholds(data: TrainingData, seed: int) -> tuple[float, float]:
    """Teacher-similarity cut points at the 70th / 95th percentile of random item pairs."""
    rng = np.random.default_rng(seed)
    ids = data.catalogue.item_ids
    a, b = rng.choice(ids, 20000), rng.choice(ids, 20000)
    sim = (data.teacher[a] * data.teacher[b]).sum(-1)
    return float(np.quantile(sim, 0.7)), float(np.quantile(sim, 0.95))


def scorer_features(features: TowerFeatures, tower_tables: list[np.ndarray]) -> torch.Tensor:
    """The composite scorer's item table: the heads' embeddings, genres and the dense features, row = item id."""
    parts = [*(torch.from_numpy(np.asarray(t)) for t in tower_tables), features.genres, features.dense]
    out = torch.empty((len(tower_tables[0]), sum(p.shape[1] for p in parts)), dtype=torch.float32)
    at = 0
    for part in parts:  # written in place: no concatenated intermediate of 10M rows
        out[:, at:at + part.shape[1]] = part
        at += part.shape[1]
    return out


def scorer_examples(data: TrainingData, cfg: dict, negatives_per_positive: int = 1) -> dict[str, np.ndarray]:
    """Co-engaged pairs over every interaction, labelled by the config's tasks (`[dataset.tasks]`: by default
    engaged, liked = rating >= 4, loved = rating 5); random negatives."""
    rng = np.random.default_rng(cfg["seed"])
    pairs, before = CoEngagement(data.interactions, cfg["data"]["window"], every=True), up_to(data.split.split_time)
    total = pairs.count(before)
    every = pairs.pairs(before, rng.choice(total, size=min(total, 150_000), replace=False))
    q, t, r = every.query, every.target, every.rating
    tasks = len(task_names(cfg))
    nq = np.repeat(q, negatives_per_positive)
    nt = rng.choice(data.catalogue.item_ids, size=len(nq))
    query, target = np.concatenate([q, nq]), np.concatenate([t, nt])
    engaged = np.concatenate([np.ones(len(q)), np.zeros(len(nq))])
    rating = np.concatenate([r, np.zeros(len(nq))])
    if every.labels is not None:  # the config's tasks, as conditions on the target interaction
        labels = np.concatenate([every.labels, np.zeros((len(nq), tasks), bool)]).astype(np.float32)
    else:
        labels = np.stack([engaged, rating >= 4, rating >= 5], axis=1).astype(np.float32)
    level = relevance_levels(data.teacher, query, target, relevance_thresholds(data, cfg["seed"]))
    return {"query": query, "target": target, "labels": labels, "level": level}


def train_scorer(data: TrainingData, tower_tables: list[np.ndarray], cfg: dict,
                 progress: bool = True) -> CompositeScorer:
    scfg = cfg["scorer"]
    seed_everything(cfg["seed"])
    ex = scorer_examples(data, cfg)
    model = CompositeScorer(scorer_features(data.tower_inputs(), tower_tables), scfg["hidden"], len(task_names(cfg)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    q, t = torch.from_numpy(ex["query"]), torch.from_numpy(ex["target"])
    y, lvl = torch.from_numpy(ex["labels"]), torch.from_numpy(ex["level"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    for _ in tqdm(range(scfg["epochs"]), desc="composite scorer", disable=not progress, leave=False):
        perm = torch.randperm(len(q), generator=gen)
        for start in range(0, len(perm), 4096):
            idx = perm[start:start + 4096]
            cold = None
            if scfg["cold_dropout"] > 0:
                hidden = torch.rand(2, len(idx), generator=gen) < scfg["cold_dropout"]
                cold = (hidden[0], hidden[1][:, None])
            probs, cumulative = model(q[idx], t[idx][:, None], cold)
            loss = F.binary_cross_entropy(probs[:, 0].clamp(1e-6, 1 - 1e-6), y[idx])
            loss = loss + ordinal_loss(cumulative[:, 0], lvl[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def value_weights(cfg: dict) -> np.ndarray:
    """The config's unified-value weights in tensor order: tasks..., relevance."""
    w = cfg["scorer"]["weights"]
    return np.array([w.get(t, DEFAULT_TASK_WEIGHT) for t in task_names(cfg)] + [w["relevance"]], dtype=np.float32)


@dataclass
class TrainedFunnel:
    tower: ItemTower
    tables: list[np.ndarray]  # per head [table_size, d] (row 0 padding)
    indexes: list[Int8Index]
    rerankers: list[Reranker]
    scorer: CompositeScorer


EMBED_CHUNK = 100_000  # items per tower call: a catalogue-scale build never embeds a million rows at once


def tables_and_indexes(tower: ItemTower, catalogue: Catalogue, cfg: dict, fingerprint_of
                       ) -> tuple[list[np.ndarray], list[Int8Index]]:
    """Every table row's embedding per head, then an int8 index per head over the catalogue's items under
    `fingerprint_of(tower)`. The one place a build, a widened build and a grown one make their tables."""
    all_ids = np.arange(catalogue.table_size, dtype=np.int64)
    tables: list[np.ndarray] = []
    for i in range(0, len(all_ids), EMBED_CHUNK):  # filled chunk by chunk: no second copy of the tables
        part = item_embeddings(tower, all_ids[i:i + EMBED_CHUNK])
        if not tables:
            tables = [np.empty((len(all_ids), *p.shape[1:]), p.dtype) for p in part]
        for table, p in zip(tables, part):
            table[i:i + len(p)] = p
    fingerprint = fingerprint_of(tower)
    ids = catalogue.item_ids
    dense = len(ids) and int(ids[-1]) - int(ids[0]) + 1 == len(ids)  # sorted ids with no gap: a view, not a gather
    # IVF lists are always built, so a request may ask for approximate search whatever the default.
    indexes = [build_index(t[int(ids[0]):int(ids[-1]) + 1] if dense else t[ids], ids, fingerprint,
                           ivf_lists=cfg["ann"]["ivf_lists"], seed=cfg["seed"])
               for t in tables]
    return tables, indexes


def train_funnel(data: TrainingData, cfg: dict, fingerprint_of, progress: bool = True) -> TrainedFunnel:
    """Towers, then an int8 index per head, then a reranker per head on its own candidates, then the scorer.

    `fingerprint_of(tower)` names the tower version; every artifact of this build carries it."""
    with stage("towers"):
        tower = train_towers(data, cfg, progress=progress)
    with stage("tables, indexes"):
        tables, indexes = tables_and_indexes(tower, data.catalogue, cfg, fingerprint_of)
    with stage("rerankers"):
        rerankers = [train_reranker(data, idx, t, cfg, progress) for idx, t in zip(indexes, tables)]
    with stage("scorer"):
        scorer = train_scorer(data, tables, cfg, progress)
    return TrainedFunnel(tower, tables, indexes, rerankers, scorer)


__all__ = ["TrainingData", "TrainedFunnel", "tables_and_indexes", "train_funnel", "train_towers", "unified_value",
           "value_weights"]
