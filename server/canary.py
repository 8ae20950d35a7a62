"""The canary request of each step: the smallest valid request, derived from the step's served config.

A stub process that exists is not a stub that answers (a replacement stub can die within 0.5 s of loading
while its model stays READY, and every ensemble request would hang). The supervisor sends each
step this request on tritonserver's own port and reloads a step that does not answer in time.

The request is one seed (batch 1), every width 1: required inputs, plus the optional ones a step needs to do
the real work (`seed_item_id` for preprocess, which otherwise refuses; `K` = 1 so an ANN step returns one
candidate). Ids are a real catalogue id; fingerprints are that same value everywhere, so `quota_merge` sees
one build; counts are 1, floats 1.0 (finite, within alpha's [0, 1], non-negative weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from widefunnel import model_configs as mcfg
from widefunnel.tensor_names import Step

_DTYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}
# Optional inputs a step needs for a meaningful answer (see the module docstring).
CANARY_OPTIONAL = frozenset({mcfg.SEED.name, Step.K})
FALLBACK_ITEM_ID = 1


def canary_inputs(config: dict, item_id: int) -> dict[str, np.ndarray] | None:
    """name -> array of the canary request for the model whose served config (`get_model_config`, JSON form)
    is ``config``; None for an ensemble (it has no stub of its own) or a model needing a type we cannot fill."""
    if config.get("platform") == "ensemble":
        return None
    batch = (1,) if int(config.get("max_batch_size", 0)) > 0 else ()
    tensors = {}
    for spec in config.get("input", []):
        name = spec["name"]
        if spec.get("optional") and name not in CANARY_OPTIONAL:
            continue
        dtype = _DTYPES.get(spec.get("data_type", ""))
        if dtype is None:
            return None
        shape = batch + tuple(1 if int(d) < 0 else int(d) for d in spec.get("dims", []))
        value = item_id if dtype is np.int64 else 1
        tensors[name] = np.full(shape, value, dtype)
    return tensors or None


def catalogue_item_id(repository: Path) -> int:
    """A real item id of the served build (the newest preprocess version's catalogue), else 1."""
    catalogues = sorted(Path(repository).glob("preprocess/*/catalogue.npy"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)
    if not catalogues:
        return FALLBACK_ITEM_ID
    try:
        ids = np.load(catalogues[-1], mmap_mode="r")
        return int(ids[0]) if len(ids) else FALLBACK_ITEM_ID
    except (OSError, ValueError):
        return FALLBACK_ITEM_ID


# Canary outcomes: the step answered (any response, a refusal included: the stub is there), its stub is reported
# dead, or no answer within the deadline (a hung stub, a wedged or overloaded server).
ANSWERED, STUB_DEAD, NO_ANSWER = "answered", "stub dead", "no answer"
_STUB_DEAD_WORDS = ("stub", "not healthy")


def canary_outcome(error: Exception | None) -> str:
    """What one canary's result says about its step."""
    if error is None:
        return ANSWERED
    text = str(error).lower()
    if any(word in text for word in _STUB_DEAD_WORDS):
        return STUB_DEAD
    status = getattr(error, "status", lambda: None)() or ""
    if "DEADLINE_EXCEEDED" in status or "UNAVAILABLE" in status or "deadline" in text or "connect" in text:
        return NO_ANSWER
    return ANSWERED
