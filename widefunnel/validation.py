"""Request validation as a pure function: each error names the client-facing field it is about."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from widefunnel.field_filters import ANY_OF, NONE_OF, FieldSchema, no_ranges, pack_token
from widefunnel.tensor_names import Client, Step, range_filters, token_filters


class RequestError(ValueError):
    """A client error; the message starts with the offending field's name."""


# Rules a step model applies to an input it is called with directly (config parameter `input_checks`).
STEP_RULES = ("id", "id_or_pad", "finite", "finite_nonnegative", "not_nan", "positive")


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
    elif rule == "positive":
        if np.any(array < 1):
            raise RequestError(f"{name}: must be >= 1, got {array[array < 1][:5].tolist()}")
    elif rule == "not_nan":
        if np.any(np.isnan(array)):
            raise RequestError(f"{name}: must not be NaN")
    else:
        raise ValueError(f"unknown input check {rule!r} for {name}; known: {STEP_RULES}")


def check_not_empty(name: str, array: np.ndarray) -> None:
    """A step input with a zero dimension (no seeds, or no candidates per seed) is a caller's mistake: refused by
    name before a graph or scan runs on it (an ONNX gather over nothing fails as an internal error)."""
    if 0 in array.shape:
        raise RequestError(f"{name}: empty input (shape {list(array.shape)}); at least one value per row")


def check_row_shape(name: str, array: np.ndarray | None, batch: int, width: int | None = None,
                    max_width: int | None = None) -> None:
    """A step input of one row per query: [batch, width], or [batch, 1..max_width] when the width varies."""
    if array is None:
        return
    if array.ndim != 2 or array.shape[0] != batch or (width is not None and array.shape[1] != width):
        raise RequestError(f"{name}: expected shape [{batch}, {width or 'E'}], got {list(array.shape)}")
    if max_width is not None and not 1 <= array.shape[1] <= max_width:
        raise RequestError(f"{name}: between 1 and {max_width} values per query, got {array.shape[1]}")


def check_ann_inputs(inputs: dict[str, np.ndarray | None], batch: int, max_exclude: int) -> None:
    """The ANN step's per-query inputs: EXCLUDE_ID [B, 1], EXCLUDE_IDS [B, 1..max_exclude] (the build's bound,
    as preprocess applies it to exclude_item_id), FIELD_TOKENS [B, 1..MAX_FIELD_TOKENS], FIELD_RANGES
    [B, 2..MAX_FIELD_RANGES] (pairs). A direct call has no gateway or preprocess in front of it, so the step
    bounds what it reads itself."""
    check_row_shape(Step.EXCLUDE_ID, inputs.get(Step.EXCLUDE_ID), batch, 1)
    check_row_shape(Step.EXCLUDE_IDS, inputs.get(Step.EXCLUDE_IDS), batch, max_width=max_exclude)
    check_row_shape(Step.FIELD_TOKENS, inputs.get(Step.FIELD_TOKENS), batch, max_width=MAX_FIELD_TOKENS)
    ranges = inputs.get(Step.FIELD_RANGES)
    check_row_shape(Step.FIELD_RANGES, ranges, batch, max_width=MAX_FIELD_RANGES)
    if ranges is not None and ranges.shape[1] % 2:
        raise RequestError(f"{Step.FIELD_RANGES}: (min, max) pairs expected, got width {ranges.shape[1]}")


def request_scalar(name: str, values: np.ndarray | None, default: int, low: int, high: int) -> int:
    """One value for the whole request (K, NPROBE: one scan per request), within [low, high]; ``default`` when
    the input is absent."""
    if values is None:
        return default
    values = values.ravel()
    if values.size == 0 or np.any(values != values[0]):
        raise RequestError(f"{name}: one value per request expected")
    value = int(values[0])
    if not low <= value <= high:
        raise RequestError(f"{name}: must be within [{low}, {high}], got {value}")
    return value


def check_request_candidates(name: str, batch: int, per_seed: int, limit: int) -> None:
    """Candidates in one request (seeds x per seed) are bounded: the memory budget of every step is sized
    for this many (docs/SECURITY.md)."""
    total = int(batch) * int(per_seed)
    if total > limit:
        raise RequestError(f"{name}: {total} candidates in one request (seeds x candidates per seed); "
                           f"at most {limit}")


DEFAULT_MAX_EXCLUDE = 1000
# What one request may carry beyond its ids and widths (issue 33): the gateway refuses more before it reaches
# tritonserver, and preprocess and the steps refuse it when called directly. A value over these is a client's
# mistake, never a cost other clients pay.
MAX_FILTER_VALUES = 64  # values of one filter field (include_genre, include_brand, ...) for one seed
MAX_FIELD_TOKENS = 4096  # packed FIELD_TOKENS entries per query at the ANN step (its own bound on a direct call)
MAX_FIELD_RANGES = 2048  # FIELD_RANGES values per query: (min, max) for up to 1024 float fields
MAX_REQUEST_FILTER_VALUES = 4096  # values of one filter field for all seeds of a request together
MAX_STRING_BYTES = 256  # one BYTES element (a filter value, a request parameter's string)
MAX_REQUEST_ID_CHARS = 128  # the request's "id", echoed back by the server
MAX_LISTED_CHARS = 240  # an unknown filter value's error lists the field's values when they fit in this many


@dataclass(frozen=True)
class RequestLimits:
    catalogue: np.ndarray  # sorted int64 item ids
    default_alpha: float
    default_top_n: int
    max_top_n: int
    default_value_weights: np.ndarray  # float32 [T + 1]
    max_candidates: int  # per seed
    max_request_candidates: int  # per request, all seeds together

    max_exclude: int = DEFAULT_MAX_EXCLUDE  # exclusion ids per seed
    default_candidates: int = 200  # candidates per head when a request does not say (ann.k)
    default_keep: int = 100  # candidates each reranker keeps when a request does not say (rerank.keep)
    max_keep: int = 10_000

    # The preprocess model's config parameters that make these limits (written by the builder); the optional
    # ones are absent in builds older than filters.
    PARAMETERS = frozenset({"default_alpha", "default_top_n", "max_top_n", "default_value_weights",
                            "max_candidates", "max_request_candidates"})
    OPTIONAL = frozenset({"max_exclude", "default_candidates", "default_keep", "max_keep"})

    @classmethod
    def from_parameters(cls, params: dict[str, str], catalogue: np.ndarray) -> RequestLimits:
        return cls(catalogue=np.sort(np.asarray(catalogue, np.int64)),
                   default_alpha=float(params["default_alpha"]), default_top_n=int(params["default_top_n"]),
                   max_top_n=int(params["max_top_n"]),
                   default_value_weights=np.array(json.loads(params["default_value_weights"]), np.float32),
                   max_candidates=int(params["max_candidates"]),
                   max_request_candidates=int(params["max_request_candidates"]),
                   max_exclude=int(params.get("max_exclude", DEFAULT_MAX_EXCLUDE)),
                   default_candidates=int(params.get("default_candidates", cls.default_candidates)),
                   default_keep=int(params.get("default_keep", cls.default_keep)),
                   max_keep=int(params.get("max_keep", cls.max_keep)))


@dataclass(frozen=True)
class ValidRequest:
    item_id: np.ndarray  # int64 [B, 1]
    alpha: np.ndarray  # float32 [B, 1]
    top_n: np.ndarray  # int32 [B, 1]
    value_weights: np.ndarray  # float32 [B, T + 1]
    candidate_id: np.ndarray  # int64 [B, C] (C = 0 when none were sent)
    k: np.ndarray  # int32 [B, 1]: candidates per head (one value for the request)
    keep: np.ndarray  # int32 [B, 1]: candidates each reranker keeps


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
                     candidate_item_id: np.ndarray | None = None, require_candidates: bool = False,
                     candidates_per_head: np.ndarray | None = None, rerank_keep: np.ndarray | None = None
                     ) -> ValidRequest:
    """The client's tensors (the keyword arguments are their names, `Client`) -> `ValidRequest`; RequestError
    naming the tensor otherwise."""
    seed, candidates = Client.SEED_ITEM_ID, Client.CANDIDATE_ITEM_ID
    if seed_item_id is None:
        raise RequestError(f"{seed}: required input is missing")
    if seed_item_id.ndim != 2 or seed_item_id.shape[1] != 1 or seed_item_id.shape[0] < 1:
        raise RequestError(f"{seed}: expected shape [batch, 1], got {list(seed_item_id.shape)}")
    batch = seed_item_id.shape[0]
    bad = unknown_ids(limits.catalogue, seed_item_id.ravel())
    if bad.size:
        raise RequestError(f"{seed}: unknown item id(s) {bad[:5].tolist()} (not in the catalogue)")
    a = _column(Client.ALPHA, alpha, batch, np.float32, limits.default_alpha)
    if not np.all(np.isfinite(a)) or np.any((a < 0) | (a > 1)):
        raise RequestError(f"{Client.ALPHA}: must be within [0, 1], got {a.ravel()[:5].tolist()}")
    n = _column(Client.TOP_N, top_n, batch, np.int32, limits.default_top_n)
    if np.any((n < 1) | (n > limits.max_top_n)):
        raise RequestError(f"{Client.TOP_N}: must be within [1, {limits.max_top_n}], got {n.ravel()[:5].tolist()}")
    width = len(limits.default_value_weights)
    if value_weights is None:
        w = np.tile(limits.default_value_weights, (batch, 1)).astype(np.float32)
    else:
        if value_weights.shape != (batch, width):
            raise RequestError(f"{Client.VALUE_WEIGHTS}: expected shape [{batch}, {width}], "
                               f"got {list(value_weights.shape)}")
        w = value_weights.astype(np.float32, copy=False)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise RequestError(f"{Client.VALUE_WEIGHTS}: must be finite and >= 0")
    if candidate_item_id is None:
        if require_candidates:
            raise RequestError(f"{candidates}: required input is missing (the scoring entry point scores "
                               "the candidates it is given)")
        c = np.zeros((batch, 0), dtype=np.int64)
    else:
        if candidate_item_id.ndim != 2 or candidate_item_id.shape[0] != batch:
            raise RequestError(f"{candidates}: expected shape [{batch}, C], got {list(candidate_item_id.shape)}")
        if not 1 <= candidate_item_id.shape[1] <= limits.max_candidates:
            raise RequestError(f"{candidates}: between 1 and {limits.max_candidates} candidates per seed, "
                               f"got {candidate_item_id.shape[1]}")
        check_request_candidates(candidates, batch, candidate_item_id.shape[1], limits.max_request_candidates)
        bad = unknown_ids(limits.catalogue, candidate_item_id.ravel())
        if bad.size:
            raise RequestError(f"{candidates}: unknown item id(s) {bad[:5].tolist()} (not in the catalogue)")
        c = candidate_item_id.astype(np.int64, copy=False)
    k = _width(Client.CANDIDATES_PER_HEAD, candidates_per_head, batch, limits.default_candidates,
               limits.max_candidates, limits.max_request_candidates)
    keep = _width(Client.RERANK_KEEP, rerank_keep, batch, limits.default_keep, limits.max_keep,
                  limits.max_request_candidates)
    return ValidRequest(seed_item_id.astype(np.int64, copy=False), a, n, w, c, k, keep)


def _width(name: str, value: np.ndarray | None, batch: int, default: int, limit: int, request_limit: int
           ) -> np.ndarray:
    """A width of the funnel (candidates per head, reranker keep): one value for all seeds of a request, within
    [1, limit], and seeds x width within the per-request candidate budget."""
    w = _column(name, value, batch, np.int32, default)
    if np.any(w != w[0, 0]):
        raise RequestError(f"{name}: one value for all seeds of a request, got {np.unique(w)[:5].tolist()}")
    if not 1 <= int(w[0, 0]) <= limit:
        raise RequestError(f"{name}: must be within [1, {limit}], got {int(w[0, 0])}")
    check_request_candidates(name, batch, int(w[0, 0]), request_limit)
    return w


def refuse_taken_down(field: str, ids: np.ndarray, taken: np.ndarray) -> None:
    """A request may not name a taken-down item (``widefunnel.takedowns``) as a seed or a candidate."""
    if taken.size and ids.size:
        hit = np.unique(ids[np.isin(ids, taken)])
        if hit.size:
            raise RequestError(f"{field}: item id(s) {hit[:5].tolist()} are taken down (not served; "
                               f"`widefunnel items restore` undoes it)")


def recommend_tensors(seeds, alpha=None, top_n=None, value_weights=None, candidates=None, keep=None
                      ) -> dict[str, np.ndarray]:
    """Client tensors for seeds; scalar alpha / top_n / weights / widths are broadcast to one per seed."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 1)
    tensors = {Client.SEED_ITEM_ID: seeds}
    if alpha is not None:
        tensors[Client.ALPHA] = np.broadcast_to(np.asarray(alpha, np.float32).reshape(-1, 1), seeds.shape).copy()
    if top_n is not None:
        tensors[Client.TOP_N] = np.broadcast_to(np.asarray(top_n, np.int32).reshape(-1, 1), seeds.shape).copy()
    for name, value in ((Client.CANDIDATES_PER_HEAD, candidates), (Client.RERANK_KEEP, keep)):
        if value is not None:
            tensors[name] = np.full(seeds.shape, value, np.int32)
    if value_weights is not None:
        w = np.asarray(value_weights, np.float32)
        tensors[Client.VALUE_WEIGHTS] = np.broadcast_to(w.reshape(1, -1) if w.ndim == 1 else w,
                                                   (len(seeds), w.shape[-1])).copy()
    return tensors


@dataclass(frozen=True)
class ValidFilters:
    """A request's filters in the form the ANN steps take (one row per seed)."""

    exclude_ids: np.ndarray  # int64 [B, E] (E >= 1), -1 pads
    field_tokens: np.ndarray  # int64 [B, T] (T >= 1): packed FIELD_TOKENS, -1 pads (`field_filters`)
    field_ranges: np.ndarray  # float32 [B, 2F]: FIELD_RANGES, (min, max) per float field, -inf / inf = open


MAX_SHOWN_CHARS = 80  # of a client's value quoted in an error: a long echo would itself be refused (gRPC metadata)


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """A client's value as an error message quotes it: its repr, cut to ``limit`` characters, so that an error
    never carries more of what was sent than a reader needs to find it."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: limit * 4]).decode("utf-8", "replace")  # never decode a huge value whole
    text = repr(value[: limit + 1] if isinstance(value, str) else value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_filter_shape(field: str, shape: tuple[int, ...], batch: int) -> int:
    """[batch, width] with 1 <= width <= MAX_FILTER_VALUES and batch x width <= MAX_REQUEST_FILTER_VALUES; the
    width. Shapes only: a request over a bound is refused before any of its values is read."""
    if len(shape) != 2 or shape[0] != batch:
        raise RequestError(f"{field}: expected shape [{batch}, G] (names), got {list(shape)}")
    width = int(shape[1])
    if not 1 <= width <= MAX_FILTER_VALUES:
        raise RequestError(f"{field}: between 1 and {MAX_FILTER_VALUES} values per seed, got {width}")
    if batch * width > MAX_REQUEST_FILTER_VALUES:
        raise RequestError(f"{field}: {batch * width} values in one request (seeds x values per seed); at most "
                           f"{MAX_REQUEST_FILTER_VALUES}")
    return width


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, np.bytes_ | np.str_):
        return _as_bytes(value.item())
    raise TypeError(f"a BYTES element, got {type(value).__name__}")


def check_strings(field: str, values: np.ndarray) -> np.ndarray:
    """The [B, G] elements as bytes (an object array), each non-empty and at most MAX_STRING_BYTES long;
    RequestError naming the seed and position of the first that is not. One pass, linear in the elements."""
    flat = np.empty(values.size, object)
    for n, raw in enumerate(values.ravel()):
        try:
            value = _as_bytes(raw)
        except TypeError as exc:
            raise RequestError(f"{field}: {exc}") from None
        if not value or len(value) > MAX_STRING_BYTES:
            seed, position = divmod(n, values.shape[1])
            if not value:
                raise RequestError(f"{field}: empty value at seed {seed}, position {position}; send names only "
                                   f"(pad a shorter row by repeating one of its names)")
            raise RequestError(f"{field}: value at seed {seed}, position {position} is {len(value)} bytes, more "
                               f"than {MAX_STRING_BYTES}: {shown(value)}")
        flat[n] = value
    return flat.reshape(values.shape)


def filter_names(schema: FieldSchema) -> tuple[str, ...]:
    """The client filter tensors of a build (`validate_filters` reads these): exclude_item_id, then the ones
    named after its item fields (``FieldSchema.client_inputs``)."""
    return (Client.EXCLUDE_ITEM_ID, *(name for name, _ in schema.client_inputs()))


def validate_filters(limits: RequestLimits, schema: FieldSchema, batch: int,
                     tensors: dict[str, np.ndarray | None]) -> ValidFilters:
    """The filter tensors of one request, by client name (exclude_item_id and the build's field filters,
    ``filter_names``) -> ``ValidFilters``; RequestError naming the field otherwise. A filter that matches nothing
    is valid (the answer is a padded empty list)."""
    excluded = Client.EXCLUDE_ITEM_ID
    exclude_item_id = tensors.get(excluded)
    if exclude_item_id is None:
        ex = np.full((batch, 1), -1, np.int64)
    else:
        if exclude_item_id.ndim != 2 or exclude_item_id.shape[0] != batch:
            raise RequestError(f"{excluded}: expected shape [{batch}, E] (-1 pads), "
                               f"got {list(exclude_item_id.shape)}")
        if not 1 <= exclude_item_id.shape[1] <= limits.max_exclude:
            raise RequestError(f"{excluded}: between 1 and {limits.max_exclude} ids per seed, "
                               f"got {exclude_item_id.shape[1]}")
        ex = exclude_item_id.astype(np.int64, copy=False)
        if np.any(ex < -1):
            raise RequestError(f"{excluded}: ids must be >= 0 (-1 pads), got {ex[ex < -1][:5].tolist()}")
    tokens, ranges = validate_field_filters(schema, batch, {n: v for n, v in tensors.items() if n != excluded})
    return ValidFilters(ex, tokens, ranges)


def filter_tensors(exclude=None, include_genres=None, exclude_genres=None, years=None, batch: int = 1,
                   fields: dict[str, object] | None = None) -> dict[str, np.ndarray]:
    """Client tensors for one set of filters, repeated for ``batch`` seeds (None = that filter is not sent).
    ``fields``: filters named after a build's item fields, by tensor name: a list of values for
    ``include_<f>`` / ``exclude_<f>``, a number for ``min_<f>`` / ``max_<f>``. ``include_genres``,
    ``exclude_genres`` and ``years`` (an inclusive (min, max)) are MovieLens' fields genre and year by their
    names of old."""
    tensors: dict[str, np.ndarray] = {}
    for name, value in (fields or {}).items():
        if isinstance(value, int | float):
            tensors[name] = np.full((batch, 1), value, np.float32)
        else:
            row = np.array([v.encode() if isinstance(v, str) else v for v in value], dtype=np.object_)
            tensors[name] = np.repeat(row.reshape(1, -1), batch, axis=0)
    if exclude is not None:
        ids = np.asarray(exclude, np.int64).reshape(1, -1)
        ids = ids if ids.size else np.full((1, 1), -1, np.int64)
        tensors[Client.EXCLUDE_ITEM_ID] = np.repeat(ids, batch, axis=0)
    for field, names in ((Client.INCLUDE_GENRE, include_genres), (Client.EXCLUDE_GENRE, exclude_genres)):
        if names:  # no names: no filter, so the field is not sent (empty values are refused)
            row = np.array([n.encode() for n in names], dtype=np.object_).reshape(1, -1)
            tensors[field] = np.repeat(row, batch, axis=0)
    if years is not None:  # MovieLens' field `year`: FP32, as every range filter
        tensors[Client.MIN_YEAR] = np.full((batch, 1), years[0], np.float32)
        tensors[Client.MAX_YEAR] = np.full((batch, 1), years[1], np.float32)
    return tensors


def _token_codes(field: str, values: np.ndarray, batch: int, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Values [B, V] of one token field -> vocabulary codes int64 [B, V]; RequestError naming the field and the
    first unknown value. Each distinct value is looked up once."""
    check_filter_shape(field, values.shape, batch)
    strings = check_strings(field, values)
    distinct, inverse = np.unique(strings.ravel(), return_inverse=True)
    code = {v.encode(): j for j, v in enumerate(vocabulary) if v}
    codes = np.empty(len(distinct), np.int64)
    for n, value in enumerate(distinct):
        if value not in code:
            listed = ", ".join(vocabulary[1:]) if len(vocabulary) <= MAX_LISTED_CHARS // 3 else ""  # fits at most
            known = f"; known: {listed}" if listed and len(listed) <= MAX_LISTED_CHARS else ""
            raise RequestError(f"{field}: unknown value {shown(value)} (not in this build's catalogue{known})")
        codes[n] = code[value]
    return codes[inverse].reshape(values.shape)


def validate_field_filters(schema: FieldSchema, batch: int, tensors: dict[str, np.ndarray | None]
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Filters named after the build's item fields (``FieldSchema.client_inputs``: ``include_<f>``,
    ``exclude_<f>``, ``min_<f>``, ``max_<f>``) -> the packed step tensors (FIELD_TOKENS int64 [B, T], -1 pads,
    T >= 1; FIELD_RANGES float32 [B, 2F]), ``ann.field_filters``' form. RequestError naming the field for an
    unknown tensor, an unknown value, a bad shape or an empty range."""
    known = {name for name, _ in schema.client_inputs()}
    for name, value in tensors.items():
        if value is not None and name not in known:
            raise RequestError(f"{name}: not a filter of this build (its fields: {', '.join(sorted(known)) or 'none'})")
    parts = [np.full((batch, 1), -1, np.int64)]
    for slot, (name, vocabulary) in enumerate(schema.tokens):
        for mode, tensor in zip((ANY_OF, NONE_OF), token_filters(name)):
            values = tensors.get(tensor)
            if values is not None:
                parts.append(pack_token(slot, mode, _token_codes(tensor, values, batch, vocabulary)))
    ranges = no_ranges(batch, len(schema.floats))
    for j, name in enumerate(schema.floats):
        low, high = range_filters(name)
        lo = _column(low, tensors.get(low), batch, np.float32, -np.inf)
        hi = _column(high, tensors.get(high), batch, np.float32, np.inf)
        if np.isnan(lo).any() or np.isnan(hi).any():
            raise RequestError(f"{low}, {high}: NaN is not a bound (leave the field out for no bound)")
        if np.any(lo > hi):
            bad = int(np.argmax(lo > hi))
            raise RequestError(f"{low}, {high}: empty range at seed {bad}, got "
                               f"[{float(lo[bad, 0])}, {float(hi[bad, 0])}]")
        ranges[:, 2 * j], ranges[:, 2 * j + 1] = lo[:, 0], hi[:, 0]
    tokens = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    return (tokens[:, 1:] if len(parts) > 1 else tokens), ranges
