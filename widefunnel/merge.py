"""MTMH's alpha quota merge of the two heads' ranked lists, as a pure function."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from widefunnel.tensor_names import Step

# The funnel's two heads, in this order everywhere (model names ann_<head>, rerank_<head>, merge sources).
HEADS = ("engagement", "relevance")
ENGAGEMENT, RELEVANCE = 0, 1


@dataclass
class Recommendation:
    """A merged answer, as the served ensemble and the in-process pipeline both give it."""

    item_id: np.ndarray  # [B, N] int64, -1 pads rows with fewer than N items
    score: np.ndarray  # [B, N] float32
    source_head: np.ndarray  # [B, N] str: "engagement" | "relevance" ("" on padding)
    task_probs: np.ndarray  # [B, N, T]
    fingerprint: list[str]  # per seed: the build that answered


@dataclass(frozen=True)
class Merged:
    ids: np.ndarray  # int64 [n]
    scores: np.ndarray  # float32 [n]
    source: np.ndarray  # int8 [n]: ENGAGEMENT or RELEVANCE, the head whose quota took the item
    positions: np.ndarray  # int64 [n]: index of the item in its source head's list


def quota(alpha: float, top_n: int) -> int:
    """Slots for the engagement head: round(alpha * N), halves rounded up (so alpha 0.5, N 5 gives 3)."""
    return int(np.floor(alpha * top_n + 0.5))


def _dedupe(ids: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each id, in list order."""
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)


def quota_merge(eng_ids: np.ndarray, eng_scores: np.ndarray, rel_ids: np.ndarray, rel_scores: np.ndarray,
                alpha: float, top_n: int, sort_by_score: bool = True) -> Merged:
    """Take round(alpha * N) from the engagement list and the rest from the relevance list, each in its own
    order; an item found by both is kept once (counted to the engagement head); a head short of unique
    items is backfilled from the other; padding ids (< 0) are never picked. Lists must be ranked best
    first. With `sort_by_score` the result is stably sorted by score (both heads are scored by the same
    composite model, so each head's order is kept); without it, quota order: engagement picks, relevance
    picks, then backfill."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    lists = ((np.asarray(eng_ids), np.asarray(eng_scores)), (np.asarray(rel_ids), np.asarray(rel_scores)))
    order = [_dedupe(ids) for ids, _ in lists]
    want = [quota(alpha, top_n), top_n - quota(alpha, top_n)]
    taken: set[int] = set()
    cursor = [0, 0]
    picks: list[tuple[int, int]] = []  # (head, position)

    def take(head: int, count: int) -> None:
        while count > 0 and cursor[head] < len(order[head]):
            pos = order[head][cursor[head]]
            cursor[head] += 1
            item = int(lists[head][0][pos])
            if item < 0 or item in taken:  # -1: a padded slot of a short candidate list, never an item
                continue
            taken.add(item)
            picks.append((head, pos))
            count -= 1

    take(ENGAGEMENT, want[ENGAGEMENT])
    take(RELEVANCE, want[RELEVANCE])
    for head in (ENGAGEMENT, RELEVANCE):  # backfill whatever is still missing
        take(head, top_n - len(picks))
    heads = np.array([h for h, _ in picks], dtype=np.int8)
    pos = np.array([p for _, p in picks], dtype=np.int64)
    ids = np.array([lists[h][0][p] for h, p in picks], dtype=np.int64)
    scores = np.array([lists[h][1][p] for h, p in picks], dtype=np.float32)
    if sort_by_score:
        keep = np.argsort(-scores, kind="stable")
        ids, scores, heads, pos = ids[keep], scores[keep], heads[keep], pos[keep]
    return Merged(ids, scores, heads, pos)


@dataclass(frozen=True)
class MergedBatch:
    """Per-seed merges padded to the widest top_n: id -1, score NaN, source -1, probabilities NaN."""

    ids: np.ndarray  # int64 [B, N]
    scores: np.ndarray  # float32 [B, N]
    source: np.ndarray  # int8 [B, N]
    probs: np.ndarray  # float32 [B, N, T]


def merge_batch(eng: tuple[np.ndarray, np.ndarray, np.ndarray], rel: tuple[np.ndarray, np.ndarray, np.ndarray],
                alpha: np.ndarray, top_n: np.ndarray, sort_by_score: bool = True) -> MergedBatch:
    """Each head's (ids [B, M], composite scores [B, M], task probabilities [B, M, T]) ranked by score, then
    quota-merged per seed; the served merge step and the in-process pipeline both use this."""
    alpha, top_n = np.asarray(alpha).reshape(-1), np.asarray(top_n).reshape(-1)
    batch, width, tasks = len(alpha), int(top_n.max()), eng[2].shape[-1]
    out = MergedBatch(np.full((batch, width), -1, np.int64), np.full((batch, width), np.nan, np.float32),
                      np.full((batch, width), -1, np.int8), np.full((batch, width, tasks), np.nan, np.float32))
    for b in range(batch):
        ranked = []
        for hid, hscore, hprobs in (eng, rel):
            order = np.argsort(-hscore[b], kind="stable")
            ranked.append((hid[b][order], hscore[b][order], hprobs[b][order]))
        m = quota_merge(*ranked[ENGAGEMENT][:2], *ranked[RELEVANCE][:2], float(alpha[b]), int(top_n[b]),
                        sort_by_score)
        n = len(m.ids)
        out.ids[b, :n], out.scores[b, :n], out.source[b, :n] = m.ids, m.scores, m.source
        for j, (h, pos) in enumerate(zip(m.source, m.positions)):
            out.probs[b, j] = ranked[h][2][pos]
    return out


def check_merge_inputs(eng: tuple[np.ndarray, np.ndarray, np.ndarray], rel: tuple[np.ndarray, np.ndarray, np.ndarray],
                       alpha: np.ndarray, top_n: np.ndarray, max_top_n: int, max_item_id: int) -> None:
    """What `merge_batch` needs, refused by input name (RequestError) when a caller of the merge step sends
    something else: every head's ids, scores and probabilities of one shape, one alpha and top_n per seed in
    range, catalogue ids or the -1 pad, no NaN (a pad's score is -inf)."""
    from widefunnel.validation import RequestError, check_step_input

    batch = alpha.shape[0]
    for (id_name, score_name, probs_name), (ids, scores, probs) in zip(Step.MERGE_HEADS, (eng, rel)):
        if ids.ndim != 2 or ids.shape[0] != batch or ids.shape[1] == 0:
            raise RequestError(f"{id_name}: expected shape [{batch}, M] (M >= 1), got {list(ids.shape)}")
        if scores.shape != ids.shape:
            raise RequestError(f"{score_name}: shape {list(scores.shape)} does not match {id_name} "
                               f"{list(ids.shape)}")
        if probs.ndim != 3 or probs.shape[:2] != ids.shape:
            raise RequestError(f"{probs_name}: shape {list(probs.shape)} does not match {id_name} "
                               f"{list(ids.shape)} x tasks")
        check_step_input(id_name, ids, "id_or_pad", max_item_id)
        check_step_input(score_name, scores, "not_nan", max_item_id)
        check_step_input(probs_name, probs, "not_nan", max_item_id)
    if eng[2].shape[2] != rel[2].shape[2]:
        raise RequestError(f"{Step.REL_PROBS}: {rel[2].shape[2]} tasks, {Step.ENG_PROBS} has {eng[2].shape[2]}")
    for name, value in ((Step.ALPHA, alpha), (Step.TOP_N, top_n)):
        if value.shape != (batch, 1):
            raise RequestError(f"{name}: expected shape [{batch}, 1], got {list(value.shape)}")
    if not np.all(np.isfinite(alpha)) or np.any((alpha < 0) | (alpha > 1)):
        raise RequestError(f"{Step.ALPHA}: must be within [0, 1], got {alpha.ravel()[:5].tolist()}")
    if np.any((top_n < 1) | (top_n > max_top_n)):
        raise RequestError(f"{Step.TOP_N}: must be within [1, {max_top_n}], got {top_n.ravel()[:5].tolist()}")
