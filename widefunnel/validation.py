"""Request validation as a pure function: each error names the client-facing field it is about."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


class RequestError(ValueError):
    """A client error; the message starts with the offending field's name."""


# Rules a step model applies to an input it is called with directly (config parameter `input_checks`).
STEP_RULES = ("id", "id_or_pad", "finite", "finite_nonnegative", "not_nan")


def check_step_input(name: str, array: np.ndarray, rule: str, max_item_id: int) -> None:
    """One input of a step model against its rule. Ids are the catalogue's (1..max_item_id); -1 is the
    padding id the ANN and rerankers emit for short lists (scored -inf, dropped by the merge); id 0 and
    negative ids would gather another row of an embedding table, so they are refused, never looked up."""
    if rule in ("id", "id_or_pad"):
        ok = (array >= 1) & (array <= max_item_id)
        if rule == "id_or_pad":
            ok |= array == -1
        bad = array[~ok]
        if bad.size:
            pad = " or -1 (padding)" if rule == "id_or_pad" else ""
            raise RequestError(f"{name}: item ids must be within [1, {max_item_id}]{pad}, got {bad[:5].tolist()}")
    elif rule in ("finite", "finite_nonnegative"):
        if not np.all(np.isfinite(array)):
            raise RequestError(f"{name}: must be finite (no NaN or inf)")
        if rule == "finite_nonnegative" and np.any(array < 0):
            raise RequestError(f"{name}: must be >= 0")
    elif rule == "not_nan":
        if np.any(np.isnan(array)):
            raise RequestError(f"{name}: must not be NaN")
    else:
        raise ValueError(f"unknown input check {rule!r} for {name}; known: {STEP_RULES}")


def check_request_candidates(name: str, batch: int, per_seed: int, limit: int) -> None:
    """Candidates in one request (seeds x per seed) are bounded: the memory budget of every step is sized
    for this many (docs/SECURITY.md)."""
    total = int(batch) * int(per_seed)
    if total > limit:
        raise RequestError(f"{name}: {total} candidates in one request (seeds x candidates per seed); "
                           f"at most {limit}")


@dataclass(frozen=True)
class RequestLimits:
    catalogue: np.ndarray  # sorted int64 item ids
    default_alpha: float
    default_top_n: int
    max_top_n: int
    default_value_weights: np.ndarray  # float32 [T + 1]
    max_candidates: int  # per seed
    max_request_candidates: int  # per request, all seeds together

    # The preprocess model's config parameters that make these limits (written by the builder).
    PARAMETERS = frozenset({"default_alpha", "default_top_n", "max_top_n", "default_value_weights",
                            "max_candidates", "max_request_candidates"})

    @classmethod
    def from_parameters(cls, params: dict[str, str], catalogue: np.ndarray) -> RequestLimits:
        return cls(catalogue=np.sort(np.asarray(catalogue, np.int64)),
                   default_alpha=float(params["default_alpha"]), default_top_n=int(params["default_top_n"]),
                   max_top_n=int(params["max_top_n"]),
                   default_value_weights=np.array(json.loads(params["default_value_weights"]), np.float32),
                   max_candidates=int(params["max_candidates"]),
                   max_request_candidates=int(params["max_request_candidates"]))


@dataclass(frozen=True)
class ValidRequest:
    item_id: np.ndarray  # int64 [B, 1]
    alpha: np.ndarray  # float32 [B, 1]
    top_n: np.ndarray  # int32 [B, 1]
    value_weights: np.ndarray  # float32 [B, T + 1]
    candidate_id: np.ndarray  # int64 [B, C] (C = 0 when none were sent)


def _column(name: str, value: np.ndarray | None, batch: int, dtype, default) -> np.ndarray:
    if value is None:
        return np.full((batch, 1), default, dtype=dtype)
    if value.shape != (batch, 1):
        raise RequestError(f"{name}: expected shape [{batch}, 1] (one per seed), got {list(value.shape)}")
    return value.astype(dtype, copy=False)


def unknown_ids(catalogue: np.ndarray, ids: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(catalogue, ids), 0, len(catalogue) - 1)
    return ids[catalogue[pos] != ids]


def validate_request(limits: RequestLimits, seed_item_id: np.ndarray | None, alpha: np.ndarray | None = None,
                     top_n: np.ndarray | None = None, value_weights: np.ndarray | None = None,
                     candidate_item_id: np.ndarray | None = None, require_candidates: bool = False) -> ValidRequest:
    if seed_item_id is None:
        raise RequestError("seed_item_id: required input is missing")
    if seed_item_id.ndim != 2 or seed_item_id.shape[1] != 1 or seed_item_id.shape[0] < 1:
        raise RequestError(f"seed_item_id: expected shape [batch, 1], got {list(seed_item_id.shape)}")
    batch = seed_item_id.shape[0]
    bad = unknown_ids(limits.catalogue, seed_item_id.ravel())
    if bad.size:
        raise RequestError(f"seed_item_id: unknown item id(s) {bad[:5].tolist()} (not in the catalogue)")
    a = _column("alpha", alpha, batch, np.float32, limits.default_alpha)
    if not np.all(np.isfinite(a)) or np.any((a < 0) | (a > 1)):
        raise RequestError(f"alpha: must be within [0, 1], got {a.ravel()[:5].tolist()}")
    n = _column("top_n", top_n, batch, np.int32, limits.default_top_n)
    if np.any((n < 1) | (n > limits.max_top_n)):
        raise RequestError(f"top_n: must be within [1, {limits.max_top_n}], got {n.ravel()[:5].tolist()}")
    width = len(limits.default_value_weights)
    if value_weights is None:
        w = np.tile(limits.default_value_weights, (batch, 1)).astype(np.float32)
    else:
        if value_weights.shape != (batch, width):
            raise RequestError(f"value_weights: expected shape [{batch}, {width}], got {list(value_weights.shape)}")
        w = value_weights.astype(np.float32, copy=False)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise RequestError("value_weights: must be finite and >= 0")
    if candidate_item_id is None:
        if require_candidates:
            raise RequestError("candidate_item_id: required input is missing (the scoring entry point scores "
                               "the candidates it is given)")
        c = np.zeros((batch, 0), dtype=np.int64)
    else:
        if candidate_item_id.ndim != 2 or candidate_item_id.shape[0] != batch:
            raise RequestError(f"candidate_item_id: expected shape [{batch}, C], got {list(candidate_item_id.shape)}")
        if not 1 <= candidate_item_id.shape[1] <= limits.max_candidates:
            raise RequestError(f"candidate_item_id: between 1 and {limits.max_candidates} candidates per seed, "
                               f"got {candidate_item_id.shape[1]}")
        check_request_candidates("candidate_item_id", batch, candidate_item_id.shape[1],
                                 limits.max_request_candidates)
        bad = unknown_ids(limits.catalogue, candidate_item_id.ravel())
        if bad.size:
            raise RequestError(f"candidate_item_id: unknown item id(s) {bad[:5].tolist()} (not in the catalogue)")
        c = candidate_item_id.astype(np.int64, copy=False)
    return ValidRequest(seed_item_id.astype(np.int64, copy=False), a, n, w, c)


def recommend_tensors(seeds, alpha=None, top_n=None, value_weights=None) -> dict[str, np.ndarray]:
    """Client tensors for seeds; scalar alpha / top_n / weights are broadcast to one per seed."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 1)
    tensors = {"seed_item_id": seeds}
    if alpha is not None:
        tensors["alpha"] = np.broadcast_to(np.asarray(alpha, np.float32).reshape(-1, 1), seeds.shape).copy()
    if top_n is not None:
        tensors["top_n"] = np.broadcast_to(np.asarray(top_n, np.int32).reshape(-1, 1), seeds.shape).copy()
    if value_weights is not None:
        w = np.asarray(value_weights, np.float32)
        tensors["value_weights"] = np.broadcast_to(w.reshape(1, -1) if w.ndim == 1 else w,
                                                   (len(seeds), w.shape[-1])).copy()
    return tensors
