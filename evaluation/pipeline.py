"""The funnel computed in one process from a repository's artifacts: onnxruntime on the same ONNX files,
the same ANN, filter and merge code. It is the parity reference for the served ensemble, and the "one process"
baseline when measuring the ensemble's overhead, so it takes every request the ensemble takes, filters named
after a dataset's own item fields included (`field_filters`, read from the build's `item_fields` folder).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from widefunnel import model_configs as mcfg
from widefunnel.ann.filters import HeadFilter
from widefunnel.ann.index import Int8Index, load_index
from widefunnel.ann.query import search
from widefunnel.ann.search import prepare_index
from widefunnel.arrays import load_table
from widefunnel.field_filters import FieldSchema, ItemFields
from widefunnel.item_ids import InternalTakedowns, ItemIds
from widefunnel.layout import CATALOGUE_FILE, CONFIG_FILE, INDEX_DIR, ITEM_FIELDS, ONNX_FILE
from widefunnel.merge import HEADS, Recommendation, merge_batch
from widefunnel.takedowns import TakedownWatch
from widefunnel.tensor_names import Client, Step
from widefunnel.validation import (
    RequestLimits,
    ValidFilters,
    filter_tensors,
    recommend_tensors,
    refuse_taken_down,
    validate_filters,
    validate_request,
)

if TYPE_CHECKING:
    from widefunnel.ann.triton_kernel import GpuIndex


def _session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # idle workers sleep instead of spinning: a benchmark interleaves this process with a server on the same cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _pinned_versions(repository: Path) -> dict[str, int]:
    config = mcfg.from_pbtxt((repository / mcfg.ENSEMBLE / CONFIG_FILE).read_text())
    return {s.model_name: s.model_version for s in config.ensemble_scheduling.step}


def _parameters(repository: Path, model: str) -> dict[str, str]:
    config = mcfg.from_pbtxt((repository / model / CONFIG_FILE).read_text())
    return {k: v.string_value for k, v in config.parameters.items()}


def _field_schema(folder: Path) -> FieldSchema:
    """The filters preprocess takes for a version folder: none without `item_fields` (older builds)."""
    path = folder / ITEM_FIELDS
    return ItemFields.load(path).schema() if path.exists() else FieldSchema((), ())


class InProcessFunnel:
    """``ann_device`` (a torch device, e.g. "cuda"): heads that search exactly do so on that device through
    ``GpuIndex``, as a KIND_GPU ``widefunnel_ann`` instance does (IVF heads stay on the CPU, as there).
    ``version``: every step at that version (a build on disk not yet served); default: the ensemble's pins.
    ``threads``: ONNX Runtime's intra-op threads per model (1: batch-1 latency, no thread team to wake; the
    machine's cores for wide requests). The ANN scan's threads follow torch's (``torch.set_num_threads``)."""

    def __init__(self, repository: Path, ann_device: str | None = None, version: int | None = None,
                 threads: int = 1):
        repository = Path(repository)
        v = _pinned_versions(repository)
        if version is not None:
            v = dict.fromkeys(v, int(version))
        self.versions = v
        pre = _parameters(repository, "preprocess")
        self.limits = RequestLimits.from_parameters(
            pre, load_table(repository / "preprocess" / str(v["preprocess"]) / CATALOGUE_FILE))
        self.tower = _session(repository / "query_tower" / str(v["query_tower"]) / ONNX_FILE, threads)
        self.scorer = _session(repository / "composite_scorer" / str(v["composite_scorer"]) / ONNX_FILE, threads)
        self.takedowns = TakedownWatch(repository)
        # requests and answers in the catalogue's ids; `retrieve` and `rerank` take internal ones, as the steps do
        self.ids = ItemIds.load(repository / "preprocess" / str(v["preprocess"]))
        self.fields = _field_schema(repository / "preprocess" / str(v["preprocess"]))
        self.indexes: dict[str, Int8Index] = {}
        self.rerankers: dict[str, ort.InferenceSession] = {}
        self.ann_params: dict[str, dict[str, str]] = {}
        self.head_filters: dict[str, HeadFilter] = {}
        for head in mcfg.HEADS:
            self.indexes[head] = load_index(repository / f"ann_{head}" / str(v[f"ann_{head}"]) / INDEX_DIR)
            self.rerankers[head] = _session(
                repository / f"rerank_{head}" / str(v[f"rerank_{head}"]) / ONNX_FILE, threads)
            self.ann_params[head] = _parameters(repository, f"ann_{head}")
            index = self.indexes[head]
            self.head_filters[head] = HeadFilter(index.ids, prepare_index(index).rows_of, repository / f"ann_{head}"
                                                 / str(v[f"ann_{head}"]) / ITEM_FIELDS,
                                                 InternalTakedowns(self.ids, self.takedowns.ids))
        self.gpu_indexes: dict[str, GpuIndex] = {}
        if ann_device is not None:
            from widefunnel.ann.triton_kernel import GpuIndex  # imports triton: only when asked for

            self.gpu_indexes = {head: GpuIndex.from_index(self.indexes[head], ann_device) for head in mcfg.HEADS
                                if self.ann_params[head]["search"] != "ivf" or self.indexes[head].ivf is None}

    def filters(self, batch: int, **filters) -> ValidFilters:
        """``exclude``, ``fields`` (and MovieLens' ``include_genres``, ``exclude_genres``, ``years``), as the client
        takes them, validated as preprocess validates them (a tensor the build does not take is refused by name),
        exclusions mapped to internal ids."""
        valid = validate_filters(self.limits, self.fields, batch, filter_tensors(**filters, batch=batch))
        if self.ids is not None:  # an id not in the catalogue excludes nothing, as in preprocess
            valid = replace(valid, exclude_ids=self.ids.to_internal(valid.exclude_ids))
        return valid

    def _allow(self, head: str, filters: ValidFilters | None, batch: int) -> np.ndarray | None:
        if filters is None:
            return self.head_filters[head].allow(batch)
        return self.head_filters[head].allow(batch, filters.exclude_ids, filters.field_tokens, filters.field_ranges)

    def retrieve(self, item_id: np.ndarray, filters: ValidFilters | None = None, k: int | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per head: (candidate ids, ANN scores, the seeds' query embeddings) for [B, 1] seeds in internal ids
        (``self.ids.to_internal``; ``filters`` from ``self.filters``); ``k`` candidates per head (the build's
        default when None)."""
        emb = dict(zip(mcfg.HEADS, self.tower.run(list(Step.EMBEDDINGS), {Step.ITEM_ID: item_id})))
        k = self.limits.default_candidates if k is None else int(k)
        out = {}
        for head in mcfg.HEADS:
            index, params = self.indexes[head], self.ann_params[head]
            allow = self._allow(head, filters, len(item_id))
            if head in self.gpu_indexes:
                found = self.gpu_indexes[head].search(emb[head], k, item_id[:, 0], allow=allow)
                ids, scores = found[Step.CANDIDATE_ID], found[Step.CANDIDATE_SCORE]
                out[head] = (ids.cpu().numpy(), scores.cpu().numpy(), emb[head])
                continue
            nprobe = int(params["nprobe"]) if params["search"] == "ivf" else None
            ids, scores = search(index, emb[head], k, item_id[:, 0], nprobe, allow)
            out[head] = (ids, scores, emb[head])
        return out

    def rerank(self, head: str, query: np.ndarray, ids: np.ndarray, keep: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """The head's reranker on candidate ids (it gathers their codes from its own item table)."""
        kept, scores = self.rerankers[head].run([Step.RERANK_ID, Step.RERANK_SCORE],
                                                {Step.QUERY: query, Step.CANDIDATE_ID: ids, Step.KEEP: keep})
        return kept, scores

    def _request(self, tensors: dict[str, np.ndarray], filters: dict):
        """A client's request checked as preprocess checks it -> (the valid request, its seeds in internal ids,
        its filters or None)."""
        req = validate_request(self.limits, **tensors)
        refuse_taken_down(Client.SEED_ITEM_ID, req.item_id, self.takedowns.ids())
        valid = self.filters(len(req.item_id), **filters) if filters else None
        return req, (req.item_id if self.ids is None else self.ids.to_internal(req.item_id)), valid

    def candidates(self, seed_item_id, candidates=None, **filters) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """As the ``widefunnel_retrieve`` ensemble answers (``WidefunnelClient.retrieve``): per head, the ANN's
        ``candidates`` in the catalogue's ids and their scores; ``filters`` as ``recommend``'s."""
        req, item_id, valid = self._request(recommend_tensors(seed_item_id, candidates=candidates), filters)
        found = self.retrieve(item_id, valid, int(req.k[0, 0]))
        return {head: (ids if self.ids is None else self.ids.to_external(ids), scores)
                for head, (ids, scores, _) in found.items()}

    def recommend(self, seed_item_id, alpha=None, top_n=None, value_weights=None, candidates=None, keep=None,
                  **filters) -> Recommendation:
        """As the ``widefunnel`` ensemble answers; ``candidates`` per head and reranker ``keep`` as the client's;
        ``filters`` as the client's: ``exclude``, ``include_genres``, ``exclude_genres``, ``years``, ``fields``."""
        req, item_id, valid = self._request(
            recommend_tensors(seed_item_id, alpha, top_n, value_weights, candidates, keep), filters)
        heads = {}
        for head, (ids, _, query) in self.retrieve(item_id, valid, int(req.k[0, 0])).items():
            kept, _ = self.rerank(head, query, ids, req.keep)
            probs, score = self.scorer.run([Step.TASK_PROBS, Step.SCORE], {
                Step.ITEM_ID: item_id, Step.CANDIDATE_ID: kept, Step.VALUE_WEIGHTS: req.value_weights})
            heads[head] = (kept, score, probs)
        m = merge_batch(heads["engagement"], heads["relevance"], req.alpha, req.top_n)
        names = np.array([""] + list(HEADS), dtype=object)
        answered = m.ids if self.ids is None else self.ids.to_external(m.ids)
        result = Recommendation(answered, m.scores, names[m.source.astype(np.int64) + 1], m.probs, [])
        fp = self.indexes["engagement"].manifest["tower_fingerprint"]
        result.fingerprint = [fp] * len(req.item_id)
        return result
