"""Every Triton tensor name of the funnel, spelled here once (one owner per fact): `model_configs` builds the
configs from these, and the plugins, validation, the merge, the kernels, the client, the router, the tools and
the exporters read them from here, so a name cannot drift between a config and the code that reads it
(`tests/unit/test_architecture.py` refuses one spelled anywhere else).

`Step`: the tensors between the models of an ensemble (uppercase). `Client`: the ensembles' own inputs and
outputs, what a client sends and reads (lowercase); the names are the wire's, unchanged.

The plugins import this module inside tritonserver's Python stub: standard library only.
"""

from __future__ import annotations


class _Names(type):
    """A namespace of constants: a class whose attributes cannot be rebound."""

    def __setattr__(cls, name: str, value: object) -> None:
        raise AttributeError(f"{cls.__name__}.{name}: tensor names are constants")


class Step(metaclass=_Names):
    """Inputs and outputs of the step models (the ensembles wire them under internal names like ``_item_id``)."""

    # preprocess's outputs, in internal ids (`widefunnel.item_ids`), and the later steps' inputs of the same name
    ITEM_ID = "ITEM_ID"
    ALPHA = "ALPHA"
    TOP_N = "TOP_N"
    VALUE_WEIGHTS = "VALUE_WEIGHTS"
    CANDIDATE_ID = "CANDIDATE_ID"  # also the ANN's answer and the reranker's and scorer's input
    K = "K"  # candidates per head, the ANN's width
    KEEP = "KEEP"  # candidates each reranker keeps
    # filters, validated by preprocess and applied by the ANN steps (FIELD_*: `widefunnel.field_filters`)
    EXCLUDE_IDS = "EXCLUDE_IDS"
    FIELD_TOKENS = "FIELD_TOKENS"
    FIELD_RANGES = "FIELD_RANGES"
    # the query tower; FINGERPRINT (the build's tower fingerprint) comes out of every ONNX and ANN step
    EMB_ENGAGEMENT = "EMB_ENGAGEMENT"
    EMB_RELEVANCE = "EMB_RELEVANCE"
    FINGERPRINT = "FINGERPRINT"
    # every input that carries candidates per seed is named CANDIDATE_* (an ONNX step bounds them per request)
    CANDIDATE_PREFIX = "CANDIDATE_"
    # the ANN step (and the sharded router in its place, which adds COVERAGE)
    QUERY = "QUERY"
    EXCLUDE_ID = "EXCLUDE_ID"
    NPROBE = "NPROBE"
    CANDIDATE_SCORE = "CANDIDATE_SCORE"
    CANDIDATE_EMB = "CANDIDATE_EMB"
    CANDIDATE_ITEM_ID = "CANDIDATE_ITEM_ID"
    COVERAGE = "COVERAGE"
    # the rerankers and the composite scorer
    RERANK_ID = "RERANK_ID"
    RERANK_SCORE = "RERANK_SCORE"
    TASK_PROBS = "TASK_PROBS"
    RELEVANCE_PROBS = "RELEVANCE_PROBS"
    SCORE = "SCORE"
    # quota_merge: each head's reranked ids, composite scores and task probabilities, and every step's fingerprint
    ENG_ID = "ENG_ID"
    ENG_SCORE = "ENG_SCORE"
    ENG_PROBS = "ENG_PROBS"
    REL_ID = "REL_ID"
    REL_SCORE = "REL_SCORE"
    REL_PROBS = "REL_PROBS"
    FP_TOWER = "FP_TOWER"
    FP_ANN_ENGAGEMENT = "FP_ANN_ENGAGEMENT"
    FP_ANN_RELEVANCE = "FP_ANN_RELEVANCE"
    FP_RERANK_ENGAGEMENT = "FP_RERANK_ENGAGEMENT"
    FP_RERANK_RELEVANCE = "FP_RERANK_RELEVANCE"
    FP_SCORER_ENGAGEMENT = "FP_SCORER_ENGAGEMENT"
    FP_SCORER_RELEVANCE = "FP_SCORER_RELEVANCE"

    # Per head, in `widefunnel.merge.HEADS` order (engagement, relevance):
    EMBEDDINGS = (EMB_ENGAGEMENT, EMB_RELEVANCE)  # the tower's query embedding
    MERGE_HEADS = ((ENG_ID, ENG_SCORE, ENG_PROBS), (REL_ID, REL_SCORE, REL_PROBS))  # (ids, scores, task probs)
    MERGE_FINGERPRINTS = ((FP_ANN_ENGAGEMENT, FP_RERANK_ENGAGEMENT, FP_SCORER_ENGAGEMENT),
                          (FP_ANN_RELEVANCE, FP_RERANK_RELEVANCE, FP_SCORER_RELEVANCE))  # (ANN, reranker, scorer)


class Client(metaclass=_Names):
    """Inputs and outputs of the ensembles (`widefunnel`, `widefunnel_retrieve`, `widefunnel_score`)."""

    SEED_ITEM_ID = "seed_item_id"
    # preprocess only: the scoring entry point's seed, mapped a second time (candidates are required there)
    SCORING_SEED_ITEM_ID = "scoring_seed_item_id"
    ALPHA = "alpha"
    TOP_N = "top_n"
    VALUE_WEIGHTS = "value_weights"
    CANDIDATE_ITEM_ID = "candidate_item_id"
    CANDIDATES_PER_HEAD = "candidates_per_head"
    RERANK_KEEP = "rerank_keep"
    # filters: items never to return (every build), then one include/exclude or min/max pair per item field
    EXCLUDE_ITEM_ID = "exclude_item_id"
    # MovieLens' field filters, as `token_filters` / `range_filters` name its fields genre and year (every build
    # names its own after its fields); spelled here for the client's keyword arguments and its error mapping
    INCLUDE_GENRE = "include_genre"
    EXCLUDE_GENRE = "exclude_genre"
    MIN_YEAR = "min_year"
    MAX_YEAR = "max_year"
    # outputs (the retrieve entry point's: `retrieved`)
    ITEM_ID = "item_id"
    SCORE = "score"
    SOURCE_HEAD = "source_head"
    TASK_PROBS = "task_probs"
    RELEVANCE_PROBS = "relevance_probs"
    FINGERPRINT = "fingerprint"


def retrieved(head: str) -> tuple[str, str]:
    """The retrieve entry point's outputs for one head: (its candidates' item ids, their ANN scores)."""
    return f"{head}_{Client.ITEM_ID}", f"{head}_{Client.SCORE}"


def token_filters(field: str) -> tuple[str, str]:
    """A token or token_seq item field's client filters: (any of these values, none of these values)."""
    return f"include_{field}", f"exclude_{field}"


def range_filters(field: str) -> tuple[str, str]:
    """A float item field's client filters: (inclusive lower bound, inclusive upper bound)."""
    return f"min_{field}", f"max_{field}"
