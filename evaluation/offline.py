"""Offline quality of the funnel: pure metrics over held-out co-engagement, and the runners that produce the
ranked lists they score (each head's ANN, the alpha quota merge, baselines, the scoring stages, the served
ensemble).

Definitions (every metric is a per-query value, then the plain mean over the queries where it is defined):
  query set     the distinct query items of the held-out co-engaged pairs (timestamp after the split time),
                at most `data.max_eval_queries` (a seeded sample when there are more); T(q) = every item
                co-engaged with q after the split. A seed is never among its own results (the ANN excludes it).
  recall@K      |R_K(q) ∩ T(q)| / |T(q)|; queries with an empty T(q) are left out.
  relevance@K   share of the returned items of R_K(q) (ids >= 0) that share at least one genre with q.
  jaccard@K     mean over the returned items c of |G(q) ∩ G(c)| / |G(q) ∪ G(c)| (genre sets).
  ndcg@10       binary gain 1[c ∈ T(q)], DCG = sum_i gain_i / log2(i + 2) over the first 10 positions; the
                ideal DCG puts min(|T(q)|, 10) hits first. The ideal is global (not "the best order of this
                candidate list"), so pipelines that retrieve different candidates are comparable.
  auc           P(score(positive) > score(negative)) + P(tie) / 2 (Mann-Whitney U over all pairs).
Genres are MovieLens' 19 flags; the two items labelled only "unknown" share that pseudo-genre.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from widefunnel.ann.index import Int8Index, build_index
from widefunnel.ann.search import exact_search
from widefunnel.builders.train import load_configured_dataset, relevance_levels, relevance_thresholds
from widefunnel.data import Catalogue, Pairs, co_engagement_pairs, funnel_data, time_split
from widefunnel.merge import HEADS, quota_merge
from widefunnel.tensor_names import Step

RETRIEVAL_METRICS = ("recall", "relevance", "jaccard")


# --------------------------------------------------------------------------------------------- query set
@dataclass(frozen=True)
class EvalSet:
    seeds: np.ndarray  # int64 [Q] query items
    targets: np.ndarray  # bool [Q, table_size]: T(q), future co-engaged items
    genres: np.ndarray  # bool [table_size, G]
    fresh: np.ndarray  # bool [table_size]: items first seen after the split time

    def rows(self, rows: np.ndarray) -> EvalSet:
        return EvalSet(self.seeds[rows], self.targets[rows], self.genres, self.fresh)

    def fresh_queries(self) -> tuple[np.ndarray, EvalSet]:
        """Rows whose seed is a fresh item (cold-start queries)."""
        rows = np.flatnonzero(self.fresh[self.seeds])
        return rows, self.rows(rows)

    def fresh_targets(self) -> tuple[np.ndarray, EvalSet]:
        """Rows with at least one fresh target; T(q) restricted to fresh items (recall of cold-start items)."""
        targets = self.targets & self.fresh[None, :]
        rows = np.flatnonzero(targets.any(axis=1))
        return rows, EvalSet(self.seeds[rows], targets[rows], self.genres, self.fresh)


def build_eval_set(test: Pairs, catalogue: Catalogue, fresh_items: np.ndarray, max_queries: int,
                   seed: int = 0) -> EvalSet:
    queries = np.unique(test.query)
    if 0 < max_queries < len(queries):
        queries = np.sort(np.random.default_rng(seed).choice(queries, max_queries, replace=False))
    size = catalogue.table_size
    targets = np.zeros((len(queries), size), dtype=bool)
    pos = np.searchsorted(queries, test.query)
    keep = (pos < len(queries)) & (queries[np.minimum(pos, len(queries) - 1)] == test.query)
    targets[pos[keep], test.target[keep]] = True
    targets[np.arange(len(queries)), queries] = False  # a seed is never its own target
    fresh = np.zeros(size, dtype=bool)
    fresh[fresh_items] = True
    return EvalSet(queries.astype(np.int64), targets, catalogue.genre_matrix() > 0, fresh)


# ------------------------------------------------------------------------------------------ pure metrics
def hit_matrix(retrieved: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """bool [Q, K]: retrieved[q, i] is one of q's targets (-1 pads never hit)."""
    retrieved = np.asarray(retrieved)
    valid = retrieved >= 0
    return targets[np.arange(len(retrieved))[:, None], np.where(valid, retrieved, 0)] & valid


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def recall_per_query(retrieved: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[Q] |R ∩ T| / |T|, NaN where T is empty."""
    found = hit_matrix(retrieved, targets).sum(axis=1).astype(np.float64)
    total = targets.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, found / total, np.nan)


def _genre_overlap(retrieved: np.ndarray, seeds: np.ndarray, genres: np.ndarray) -> tuple[np.ndarray, ...]:
    retrieved = np.asarray(retrieved)
    valid = retrieved >= 0
    seed_g = genres[np.asarray(seeds)][:, None, :]
    cand_g = genres[np.where(valid, retrieved, 0)]
    inter = (seed_g & cand_g).sum(-1)
    union = (seed_g | cand_g).sum(-1)
    return valid, inter, union


def relevance_per_query(retrieved: np.ndarray, seeds: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """[Q] share of returned items sharing >= 1 genre with the seed, NaN where nothing was returned."""
    valid, inter, _ = _genre_overlap(retrieved, seeds, genres)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, ((inter > 0) & valid).sum(axis=1) / n, np.nan)


def jaccard_per_query(retrieved: np.ndarray, seeds: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """[Q] mean genre Jaccard between the seed and each returned item, NaN where nothing was returned."""
    valid, inter, union = _genre_overlap(retrieved, seeds, genres)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where(valid & (union > 0), inter / np.maximum(union, 1), 0.0)
        return np.where(n > 0, jac.sum(axis=1) / n, np.nan)


def ndcg_per_query(ranked: np.ndarray, targets: np.ndarray, k: int = 10) -> np.ndarray:
    """[Q] NDCG@k with binary gains and the global ideal (min(|T|, k) hits first); NaN where T is empty."""
    hits = hit_matrix(np.asarray(ranked)[:, :k], targets).astype(np.float64)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (hits * discount[: hits.shape[1]]).sum(axis=1)
    n_ideal = np.minimum(targets.sum(axis=1), k)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[n_ideal]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_ideal > 0, dcg / ideal, np.nan)


def recall_at_k(retrieved, targets) -> float:
    return _mean(recall_per_query(retrieved, targets))


def relevance_at_k(retrieved, seeds, genres) -> float:
    return _mean(relevance_per_query(retrieved, seeds, genres))


def jaccard_at_k(retrieved, seeds, genres) -> float:
    return _mean(jaccard_per_query(retrieved, seeds, genres))


def ndcg_at_k(ranked, targets, k: int = 10) -> float:
    return _mean(ndcg_per_query(ranked, targets, k))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic with tied scores counted half; NaN if a class is empty."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.concatenate([[0], np.cumsum(counts)[:-1]]) + 1  # 1-based rank of each value's first copy
    mid_rank = first_rank + (counts - 1) / 2.0
    rank_sum = mid_rank[inverse][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def retrieval_metrics(retrieved: np.ndarray, ev: EvalSet, k: int, prefix: str = "") -> dict[str, float]:
    """recall / relevance / jaccard of the first k columns of `retrieved` (rows aligned with ev.seeds)."""
    top = np.asarray(retrieved)[:, :k]
    return {f"{prefix}recall@{k}": recall_at_k(top, ev.targets),
            f"{prefix}relevance@{k}": relevance_at_k(top, ev.seeds, ev.genres),
            f"{prefix}jaccard@{k}": jaccard_at_k(top, ev.seeds, ev.genres)}


# --------------------------------------------------------------------------------------- list producers
TopK = Callable[[int], np.ndarray]  # k -> ids [Q, k] (rows aligned with the eval set's seeds, -1 pads)


def ann_lists(index: Int8Index, table: np.ndarray, seeds: np.ndarray, k: int) -> np.ndarray:
    """Exact int8 search (the served ANN's default) for each seed's embedding row, the seed excluded."""
    ids, _ = exact_search(index, table[seeds], k, exclude_ids=seeds)
    return ids


def head_indexes(tables: list[np.ndarray], item_ids: np.ndarray, seed: int = 0) -> list[Int8Index]:
    """An exact int8 index per head table, as the build makes them (IVF lists are not needed here)."""
    return [build_index(t[item_ids], item_ids, "0" * 16, ivf_lists=0, seed=seed) for t in tables]


def _top_by_score(scores: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """Best k columns per row, ties to the lower id (item_ids sorted ascending)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return item_ids[order]


def teacher_lists(teacher: np.ndarray, item_ids: np.ndarray, seeds: np.ndarray, k: int) -> np.ndarray:
    """kNN on the content encoder's (L2-normalised) embeddings: cosine, float32, the seed excluded."""
    scores = teacher[seeds] @ teacher[item_ids].T
    scores[seeds[:, None] == item_ids[None, :]] = -np.inf
    return _top_by_score(scores, item_ids, k)


def popularity_lists(popularity: np.ndarray, item_ids: np.ndarray, seeds: np.ndarray, k: int) -> np.ndarray:
    """The most frequent training targets, the same list for every seed (minus the seed itself)."""
    scores = np.tile(popularity[item_ids].astype(np.float64), (len(seeds), 1))
    scores[seeds[:, None] == item_ids[None, :]] = -np.inf
    return _top_by_score(scores, item_ids, k)


def cooccurrence_lists(train: Pairs, popularity: np.ndarray, item_ids: np.ndarray, seeds: np.ndarray,
                       k: int) -> np.ndarray:
    """Item-to-item co-occurrence: the items most often co-engaged with the seed in `train` (count of pairs
    (seed, item)), ties and the remainder of the list by popularity, then the lower id; the seed excluded."""
    seeds = np.asarray(seeds, np.int64)
    order = np.argsort(seeds, kind="stable")
    sorted_seeds = seeds[order]
    pos = np.searchsorted(sorted_seeds, train.query)
    hit = (pos < len(seeds)) & (sorted_seeds[np.minimum(pos, len(seeds) - 1)] == train.query)
    counts = np.zeros((len(seeds), len(popularity)), np.float64)
    np.add.at(counts, (order[pos[hit]], train.target[hit]), 1.0)
    counts = counts[order[np.searchsorted(sorted_seeds, seeds)]]  # a repeated seed: its first row's counts
    pop = np.asarray(popularity, np.float64)
    scores = counts[:, item_ids] * (pop.max(initial=0.0) + 1.0) + pop[item_ids][None, :]
    scores[seeds[:, None] == item_ids[None, :]] = -np.inf
    return _top_by_score(scores, item_ids, k)


def merge_lists(eng_ids: np.ndarray, rel_ids: np.ndarray, alpha: float, top_n: int,
                eng_scores: np.ndarray | None = None, rel_scores: np.ndarray | None = None) -> np.ndarray:
    """Row-wise `quota_merge` of two ranked lists -> ids [Q, top_n] (-1 pads). Without scores the merge keeps
    quota order (the set of items, which is all that recall/relevance@K see, is the same either way); with
    scores it sorts by them as the served merge does."""
    out = np.full((len(eng_ids), top_n), -1, np.int64)
    sort = eng_scores is not None and rel_scores is not None
    for row, (e, r) in enumerate(zip(eng_ids, rel_ids)):
        ev, rv = e >= 0, r >= 0
        es = eng_scores[row][ev] if sort else -np.arange(ev.sum(), dtype=np.float32)
        rs = rel_scores[row][rv] if sort else -np.arange(rv.sum(), dtype=np.float32)
        m = quota_merge(e[ev], es, r[rv], rs, alpha, top_n, sort_by_score=sort)
        out[row, : len(m.ids)] = m.ids
    return out


def ranked(ids: np.ndarray) -> TopK:
    """A single ranked list: the top k is its prefix."""
    return lambda k: ids[:, :k]


def merged(eng_ids: np.ndarray, rel_ids: np.ndarray, alpha: float) -> TopK:
    """The quota merge at each K of the heads' lists (depth K of each head is enough to fill K slots)."""
    cache: dict[int, np.ndarray] = {}

    def topk(k: int) -> np.ndarray:
        if k not in cache:
            cache[k] = merge_lists(eng_ids[:, :k], rel_ids[:, :k], alpha, k)
        return cache[k]

    return topk


def system_metrics(topk: TopK, ev: EvalSet, ks: tuple[int, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out.update(retrieval_metrics(topk(k), ev, k))
    return out


def sliced_metrics(topk: TopK, ev: EvalSet, ks: tuple[int, ...]) -> dict[str, float]:
    """Fresh-item slice: all metrics over fresh seeds (`fq_`), recall of fresh targets (`ft_`)."""
    fq_rows, fq = ev.fresh_queries()
    ft_rows, ft = ev.fresh_targets()
    out: dict[str, float] = {}
    for k in ks:
        ids = topk(k)
        out.update(retrieval_metrics(ids[fq_rows], fq, k, "fq_"))
        out[f"ft_recall@{k}"] = recall_at_k(ids[ft_rows][:, :k], ft.targets)
    return out


# --------------------------------------------------------------------------------------- the funnel's stages
def _sorted_by(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


STAGES = ("ann", "rerank", "composite", "rerank+composite")
SCORED_STAGES = ("composite", "rerank+composite")


def _scorer_feeds(item_id: np.ndarray, candidate_id: np.ndarray, value_weights: np.ndarray) -> dict[str, np.ndarray]:
    """The composite scorer's inputs, for its ONNX session."""
    return {Step.ITEM_ID: item_id, Step.CANDIDATE_ID: candidate_id, Step.VALUE_WEIGHTS: value_weights}


def funnel_stages(funnel, seeds: np.ndarray, batch: int = 128) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per head and stage, (ids, scores) best first, computed with an InProcessFunnel's own sessions:
    ann = the ANN's K in ANN order; rerank = the reranker's kept M in reranker order; composite = the
    composite scorer on all K ANN candidates (no reranker); rerank+composite = the served path (composite
    on the reranker's M)."""
    parts: dict[str, dict[str, list]] = {h: {s: [] for s in STAGES} for h in HEADS}
    weights = funnel.limits.default_value_weights
    for start in range(0, len(seeds), batch):
        item_id = np.asarray(seeds[start:start + batch], np.int64).reshape(-1, 1)
        vw = np.tile(weights, (len(item_id), 1)).astype(np.float32)
        keep = np.full((len(item_id), 1), funnel.limits.default_keep, np.int32)
        for head, (ids, ann_scores, query) in funnel.retrieve(item_id).items():
            kept, kept_scores = funnel.rerank(head, query, ids, keep)
            (all_scores,) = funnel.scorer.run([Step.SCORE], _scorer_feeds(item_id, ids, vw))
            (kept_comp,) = funnel.scorer.run([Step.SCORE], _scorer_feeds(item_id, kept, vw))
            parts[head]["ann"].append((ids, ann_scores))
            parts[head]["rerank"].append((kept, kept_scores))
            parts[head]["composite"].append(_sorted_by(ids, all_scores))
            parts[head]["rerank+composite"].append(_sorted_by(kept, kept_comp))
    return {h: {s: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])) for s, v in st.items()}
            for h, st in parts.items()}


def merge_stage(stages: dict, stage: str, alpha: float, top_n: int) -> np.ndarray:
    """Merged list of one stage: composite-scored stages are sorted by score as served; ANN and reranker
    scores of the two heads are not on one scale, so those keep quota order."""
    (e_ids, e_sc), (r_ids, r_sc) = stages["engagement"][stage], stages["relevance"][stage]
    if stage in SCORED_STAGES:
        return merge_lists(e_ids, r_ids, alpha, top_n, e_sc, r_sc)
    return merge_lists(e_ids[:, :top_n], r_ids[:, :top_n], alpha, top_n)


def heldout_scorer_examples(data, cfg: dict, max_pairs: int = 40000) -> dict[str, np.ndarray]:
    """Held-out (after the split time) version of the scorer's training examples: co-engaged pairs over all
    ratings (engaged), liked = rating >= 4, loved = rating 5, one random negative per positive; ordinal
    relevance level from the teacher with the training thresholds."""
    rng = np.random.default_rng(cfg["seed"] + 1)
    every = co_engagement_pairs(data.interactions, cfg["data"]["window"], every=True)
    every = every.take(every.timestamp > data.split.split_time)
    pick = rng.choice(len(every), size=min(len(every), max_pairs), replace=False)
    q, t, r = every.query[pick], every.target[pick], every.rating[pick]
    nt = rng.choice(data.catalogue.item_ids, size=len(q))
    query, target = np.concatenate([q, q]), np.concatenate([t, nt])
    engaged = np.concatenate([np.ones(len(q)), np.zeros(len(q))]).astype(bool)
    rating = np.concatenate([r, np.zeros(len(q))])
    level = relevance_levels(data.teacher, query, target, relevance_thresholds(data, cfg["seed"]))
    return {"query": query, "target": target, "engaged": engaged, "rating": rating, "level": level}


def scorer_aucs(funnel, examples: dict[str, np.ndarray], batch: int = 8192) -> dict[str, tuple[float, int, int]]:
    """Per task: (AUC, positives, negatives) of the served composite scorer's outputs on held-out pairs."""
    probs, rel = [], []
    w = np.tile(funnel.limits.default_value_weights, (1, 1)).astype(np.float32)
    for start in range(0, len(examples["query"]), batch):
        q = examples["query"][start:start + batch].reshape(-1, 1)
        c = examples["target"][start:start + batch].reshape(-1, 1)
        p, r = funnel.scorer.run([Step.TASK_PROBS, Step.RELEVANCE_PROBS], _scorer_feeds(q, c, np.repeat(w, len(q), 0)))
        probs.append(p[:, 0])
        rel.append(r[:, 0])
    p, r = np.concatenate(probs), np.concatenate(rel)
    eng, rating, level = examples["engaged"], examples["rating"], examples["level"]
    cases = {
        "engaged (pos vs random)": (p[:, 0], eng),
        "liked (all pairs)": (p[:, 1], rating >= 4),
        "loved (all pairs)": (p[:, 2], rating >= 5),
        "liked (among engaged)": (p[eng, 1], rating[eng] >= 4),
        "loved (among engaged)": (p[eng, 2], rating[eng] >= 5),
        "relevance >= 1 (P(rel>=1))": (r[:, 0], level >= 1),
        "relevance >= 2 (P(rel>=2))": (r[:, 1], level >= 2),
    }
    return {name: (auc(s, y), int(np.sum(y)), int(np.sum(~y))) for name, (s, y) in cases.items()}


# ----------------------------------------------------------------- the whole funnel, in process or served
class FunnelSource(Protocol):
    """What the funnel table needs: each head's ANN lists, and the ensemble's merged recommendations."""

    def retrieve_ids(self, seeds: np.ndarray) -> dict[str, np.ndarray]: ...

    def recommend_ids(self, seeds: np.ndarray, alpha: float, top_n: int) -> np.ndarray: ...


class InProcessSource:
    """The funnel computed in this process from a repository's artifacts (widefunnel.evaluation.pipeline)."""

    def __init__(self, funnel, batch: int = 128):
        self.funnel, self.batch = funnel, batch

    def retrieve_ids(self, seeds: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self.funnel.retrieve(np.asarray(seeds[i:i + self.batch], np.int64).reshape(-1, 1))
                 for i in range(0, len(seeds), self.batch)]
        return {h: np.concatenate([p[h][0] for p in parts]) for h in HEADS}

    def recommend_ids(self, seeds: np.ndarray, alpha: float, top_n: int) -> np.ndarray:
        return np.concatenate([self.funnel.recommend(seeds[i:i + self.batch], alpha=alpha, top_n=top_n).item_id
                               for i in range(0, len(seeds), self.batch)])


class ServedSource:
    """The same through a running server's ensembles (widefunnel.client), in batches the server accepts."""

    def __init__(self, client, batch: int = 32):
        self.client, self.batch = client, batch

    def retrieve_ids(self, seeds: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self.client.retrieve(seeds[i:i + self.batch]) for i in range(0, len(seeds), self.batch)]
        return {h: np.concatenate([p[h][0] for p in parts]) for h in HEADS}

    def recommend_ids(self, seeds: np.ndarray, alpha: float, top_n: int) -> np.ndarray:
        recs = self.client.recommend_many(seeds, batch_size=self.batch, alpha=alpha, top_n=top_n)
        return np.concatenate([r.item_id for r in recs])


class StagedSource:
    """The pipeline's stages computed once for a fixed seed set (`funnel_stages`), merged per request: the
    same lists as InProcessSource (the benchmark checks it) at a fraction of the cost of a full pass per
    (alpha, K)."""

    def __init__(self, stages: dict, seeds: np.ndarray):
        self.stages, self.seeds = stages, np.asarray(seeds)

    def _check(self, seeds: np.ndarray) -> None:
        if not np.array_equal(np.asarray(seeds), self.seeds):
            raise ValueError("StagedSource answers only the seeds it was staged for")

    def retrieve_ids(self, seeds: np.ndarray) -> dict[str, np.ndarray]:
        self._check(seeds)
        return {h: self.stages[h]["ann"][0] for h in HEADS}

    def recommend_ids(self, seeds: np.ndarray, alpha: float, top_n: int) -> np.ndarray:
        self._check(seeds)
        return merge_stage(self.stages, "rerank+composite", alpha, top_n)


def funnel_table(source: FunnelSource, ev: EvalSet, alphas: tuple[float, ...], ks: tuple[int, ...],
                 max_top_n: int) -> list[tuple[str, dict[str, float]]]:
    """Rows (name, metrics) of the deployed funnel: each head's ANN alone, the merge of the ANN lists, and the
    ensemble's own output (rerank + composite + quota merge) for each alpha. A K above the ANN's k (for the
    ANN rows) or above the ensemble's max top_n (for the ensemble rows) is left out."""
    lists = source.retrieve_ids(ev.seeds)
    depth = min(v.shape[1] for v in lists.values())
    ann_ks = tuple(k for k in ks if k <= depth)
    rows: list[tuple[str, dict[str, float]]] = []
    for head in HEADS:
        rows.append((f"ANN {head} head", system_metrics(ranked(lists[head]), ev, ann_ks)))
    for a in alphas:
        rows.append((f"ANN merge alpha={a:g}", system_metrics(merged(lists["engagement"], lists["relevance"], a),
                                                              ev, ann_ks)))
    for a in alphas:
        rows.append((f"ensemble alpha={a:g}", system_metrics(lambda k, a=a: source.recommend_ids(ev.seeds, a, k),
                                                             ev, tuple(k for k in ks if k <= max_top_n))))
    return rows


def eval_set_for(cfg: dict) -> EvalSet:
    """The query set of a config without training anything (the served mode needs only the split): the same
    dataset, internal ids and positives (`[dataset] positive`) as the build's `TrainingData.load`."""
    catalogue, inter = funnel_data(load_configured_dataset(cfg), cfg["dataset"])
    pairs = co_engagement_pairs(inter, cfg["data"]["window"])
    split = time_split(pairs, inter, cfg["data"]["split_quantile"], catalogue.table_size)
    return build_eval_set(split.test, catalogue, split.fresh_items, cfg["data"]["max_eval_queries"], cfg["seed"])
