"""Sharded ANN, the pure half: split one int8 index into S row slices with global ids, and merge the shards'
top-k' lists back into exactly the single-index answer (ids and scores, bit for bit).

Why the merge is exact, not approximately right:
  * a row's score depends on (query, row) only (per-row int8 quantisation, exact integer dot product), so a
    shard scores its rows bit-identically to the whole index;
  * the whole index ranks by (score desc, row asc) (``widefunnel.ann.search.make_keys``). Shards are
    *contiguous* row ranges in the index's own order, and each shard ranks its rows by (score desc, local row
    asc). Concatenating the shard lists in shard order and sorting stably by score therefore orders equal
    scores by shard, then by position inside the shard: that is global row order, the same tie-break;
  * each shard answers its top-k' with k' = min(k, N_s); every row of the global top-k is in its own shard's
    top-k', so nothing is lost. IVF slices keep the same centroids and clip the list offsets, so each shard
    probes the same lists and the union of the probed rows is the same set.

The merge gives a heap merge's result without its Python loop: unique int64 keys (score bits, then position
in the shard-ordered concatenation), merged as sorted runs (``top_positions``).

Only numpy is imported at module level: the router (a Python-backend model) merges without loading torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # importing widefunnel.ann loads torch; the router must not pay for it
    from widefunnel.ann.index import Int8Index, IvfLists

ALIGN = 64  # shard boundaries on 64-row chunks, the search's upper-bound block size
_LOW32 = 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------- splitting
def shard_bounds(count: int, shards: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """Contiguous row ranges [(start, stop)] of near-equal size, every shard non-empty.

    Boundaries are rounded to ``align`` rows where that still leaves every shard non-empty, so a shard's
    64-row scale blocks are the index's own blocks.
    """
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    if count < shards:
        raise ValueError(f"cannot split {count} rows into {shards} non-empty shards")
    raw = [i * count // shards for i in range(shards + 1)]
    aligned = [0] + [int(round(b / align)) * align for b in raw[1:-1]] + [count]
    cuts = aligned if all(a < b for a, b in zip(aligned, aligned[1:])) else raw
    return list(zip(cuts[:-1], cuts[1:]))


def _slice_ivf(ivf: IvfLists | None, start: int, stop: int) -> IvfLists | None:
    from widefunnel.ann.index import IvfLists

    if ivf is None:
        return None
    offsets = np.clip(np.asarray(ivf.offsets, np.int64), start, stop) - start
    return IvfLists(centroids=np.array(ivf.centroids, np.float32, copy=True), offsets=offsets.astype(np.int64))


@dataclass(frozen=True)
class IndexShard:
    """One slice of an index: rows [start, stop) of the whole, ids unchanged (ids are global)."""

    shard: int
    shards: int
    start: int
    stop: int
    total: int
    index: Int8Index

    def describe(self) -> dict:
        return {"shard": self.shard, "shards": self.shards, "row_start": self.start, "row_stop": self.stop,
                "total_rows": self.total, "tower_fingerprint": self.index.manifest["tower_fingerprint"]}


def split_index(index: Int8Index, shards: int) -> list[IndexShard]:
    """S contiguous slices of ``index`` in its own row order (no re-quantisation, no re-sorting)."""
    from widefunnel.ann.index import Int8Index

    bounds = shard_bounds(index.count, shards)
    n_lists = 0 if index.ivf is None else index.ivf.n_lists
    out = []
    for s, (a, b) in enumerate(bounds):
        if n_lists > b - a:
            raise ValueError(f"shard {s} would hold {b - a} rows, fewer than the index's {n_lists} IVF lists")
        manifest = copy.deepcopy(index.manifest)
        manifest.update(count=b - a, files={})
        part = Int8Index(codes=np.ascontiguousarray(index.codes[a:b]), scales=np.array(index.scales[a:b]),
                         ids=np.array(index.ids[a:b]), manifest=manifest, ivf=_slice_ivf(index.ivf, a, b))
        out.append(IndexShard(s, len(bounds), a, b, index.count, part))
    return out


# --------------------------------------------------------------------------------------------------- merging
def merge_keys(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Unique int64 keys, larger = better, for shard lists concatenated in shard order [B, W].

    High 32 bits: the score's orderable bits, exactly as the search's own sort keys (``make_keys``) order
    float32 (``-0.0`` below ``+0.0``); pads (id < 0) get the minimum, below every non-NaN score. Low 32 bits:
    ``2**32 - 1 - position``, so equal scores rank by shard, then by rank inside the shard: global row order.
    """
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.int32)
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)
    ordered = np.where(np.asarray(ids) >= 0, ordered, -(2**31))
    position = np.arange(scores.shape[-1], dtype=np.int64)
    return ordered * (1 << 32) + (_LOW32 - position)


@dataclass(frozen=True)
class MergedTopK:
    ids: np.ndarray  # int64 [B, k_out], -1 pads
    scores: np.ndarray  # float32 [B, k_out], -inf pads
    embeddings: np.ndarray | None  # float32 [B, k_out, d] (zeros on pads), when every shard gave them
    shard: np.ndarray  # int64 [B, k_out]: the shard each entry came from (-1 on pads)


def top_positions(keys: np.ndarray, k: int, runs: int) -> np.ndarray:
    """Positions of the ``k`` largest (unique) keys per row, best first, for rows made of ``runs`` sorted runs.

    Few runs: numpy's stable sort (timsort) finds the runs and merges them, O(W log runs). Many runs: select
    the k-th key first (partial selection, O(W)), keep the k positions at or above it in their original order
    (so the runs stay sorted) and merge only those. Keys are unique, so both give the one exact answer.
    """
    batch, width = keys.shape
    if runs <= 3 or k >= width:
        return np.argsort(-keys, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-keys, k - 1, axis=1)[:, k - 1:k]
    picked = np.nonzero(keys >= kth)[1].reshape(batch, k)
    order = np.argsort(-np.take_along_axis(keys, picked, axis=1), axis=1, kind="stable")
    return np.take_along_axis(picked, order, axis=1)


def merge_topk(ids: list[np.ndarray], scores: list[np.ndarray], k: int,
               embeddings: list[np.ndarray] | None = None) -> MergedTopK:
    """Exact merge of per-shard results [B, k_s] (each best first, in shard order) into the top-k.

    ``k_out = min(k, sum k_s)`` equals the single index's ``min(k, N)`` whenever every shard answered with its
    own ``min(k, N_s)``.
    """
    if not ids or len(ids) != len(scores) or (embeddings is not None and len(embeddings) != len(ids)):
        raise ValueError("merge_topk needs one (ids, scores[, embeddings]) per shard, at least one shard")
    batch = ids[0].shape[0]
    if any(i.shape != s.shape or i.ndim != 2 or i.shape[0] != batch for i, s in zip(ids, scores)):
        raise ValueError(f"shard results must be [B, k_s] with one B; got {[list(i.shape) for i in ids]}")
    cat_ids = np.concatenate([np.asarray(i, np.int64) for i in ids], axis=1)
    cat_scores = np.concatenate([np.asarray(s, np.float32) for s in scores], axis=1)
    if cat_ids.shape[1] >= 2**32:
        raise ValueError("merge_topk: more than 2**32 candidates per query")
    k_out = min(int(k), cat_ids.shape[1])
    order = top_positions(merge_keys(cat_scores, cat_ids), k_out, len(ids))
    out_ids = np.take_along_axis(cat_ids, order, axis=1)
    valid = out_ids >= 0
    out_ids = np.where(valid, out_ids, -1)
    out_scores = np.where(valid, np.take_along_axis(cat_scores, order, axis=1), -np.inf).astype(np.float32)
    starts = np.cumsum([0] + [i.shape[1] for i in ids])
    out_shard = np.where(valid, np.searchsorted(starts, order, side="right") - 1, -1)
    out_emb = None
    if embeddings is not None:
        cat_emb = np.concatenate([np.asarray(e, np.float32) for e in embeddings], axis=1)
        rows = (order + np.arange(batch)[:, None] * cat_emb.shape[1]).ravel()  # gather whole rows, not elements
        out_emb = np.take(cat_emb.reshape(-1, cat_emb.shape[-1]), rows, axis=0).reshape(batch, k_out, -1)
        out_emb[~valid] = 0.0
    return MergedTopK(out_ids, out_scores, out_emb, out_shard)


# ------------------------------------------------------------------------------------------- router settings
@dataclass(frozen=True)
class RouterSettings:
    """The router's config parameters, parsed strictly (unknown keys rejected, as every model here does)."""

    shard_urls: tuple[str, ...]
    shard_model: str
    k: int  # the shards' default k (their config's `k`), for requests without K
    allow_partial: bool = False
    timeout_s: float = 5.0
    ready_timeout_s: float = 60.0
    lb_policy: str = "pick_first"


ROUTER_REQUIRED = {"shard_urls", "shard_model", "k"}
ROUTER_OPTIONAL = {"allow_partial", "timeout_s", "ready_timeout_s", "lb_policy"}


def _bool(name: str, text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(f"parameter {name} must be 'true' or 'false', got {text!r}")
    return text.strip().lower() == "true"


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"parameter {name} must be a number of seconds, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"parameter {name} must be > 0, got {text!r}")
    return value


def parse_router_parameters(params: dict[str, str]) -> RouterSettings:
    missing, unknown = ROUTER_REQUIRED - params.keys(), params.keys() - ROUTER_REQUIRED - ROUTER_OPTIONAL
    if missing or unknown:
        raise ValueError(f"parameters missing {sorted(missing)} / unknown {sorted(unknown)}")
    urls = tuple(u.strip() for u in params["shard_urls"].split(",") if u.strip())
    if not urls:
        raise ValueError("parameter shard_urls must list at least one host:port, comma separated")
    if len(set(urls)) != len(urls):
        raise ValueError(f"parameter shard_urls lists a shard twice: {list(urls)}")
    if not params["shard_model"].strip():
        raise ValueError("parameter shard_model must name the shards' ANN model")
    if not params["k"].strip().isdigit() or int(params["k"]) < 1:
        raise ValueError(f"parameter k must be an integer >= 1, got {params['k']!r}")
    lb = params.get("lb_policy", "pick_first").strip()
    if lb not in ("pick_first", "round_robin"):
        raise ValueError(f"parameter lb_policy must be 'pick_first' or 'round_robin', got {lb!r}")
    return RouterSettings(
        shard_urls=urls, shard_model=params["shard_model"].strip(), k=int(params["k"]),
        allow_partial=_bool("allow_partial", params.get("allow_partial", "false")),
        timeout_s=_seconds("timeout_s", params.get("timeout_s", "5")),
        ready_timeout_s=_seconds("ready_timeout_s", params.get("ready_timeout_s", "60")),
        lb_policy=lb)
