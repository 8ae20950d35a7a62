"""Python-based Triton backend `widefunnel_ann`: int8 ANN search over one head's item index.

The index (int8 codes, per-row scales, item ids, manifest, optional IVF lists) lives in `<version>/index/`.
The config says which tower fingerprint each version's index must carry; a mismatch refuses to load.
Instance kind decides the path: KIND_GPU runs the triton-language kernel on the instance's device with the
index resident in GPU memory; KIND_CPU the blocked exact scan (or IVF).
"""

from __future__ import annotations

import json
import os

import widefunnel_site  # noqa: F401  (first: makes `widefunnel` importable in the stub)
import numpy as np
import triton_python_backend_utils as pb_utils

from widefunnel.ann.filters import HeadFilter
from widefunnel.ann.index import ROWS_FILE, IndexLoadError, load_index, load_row_map
from widefunnel.ann.query import search
from widefunnel.ann.search import dequantized, prepare_index
from widefunnel.item_ids import InternalTakedowns, ItemIds
from widefunnel.layout import (
    FINGERPRINTS_PARAMETER,
    INDEX_DIR,
    ITEM_FIELDS,
    fingerprint_int,
    parse_fingerprints,
    repository_of,
)
from widefunnel.model_configs import FILTER_STEP_TENSORS, model_parameters
from widefunnel.plugins.stub import input_array, request_inputs, required_array, respond_each
from widefunnel.takedowns import TakedownWatch
from widefunnel.tensor_names import Step
from widefunnel.validation import (
    DEFAULT_MAX_EXCLUDE,
    RequestError,
    check_ann_inputs,
    check_not_empty,
    check_request_candidates,
    check_step_input,
    request_scalar,
)

_PARAMETERS = {"k", "max_k", "search", "nprobe", "tower_fingerprints", "emit_embeddings"}
# Optional: the Python backend's own setting, the per-request candidate bound (absent in repositories built
# before it existed, and in index-only ones: then only K <= max_k bounds a request) and the exclusion ids per
# query (absent before issue 33: the default build's bound, validation.DEFAULT_MAX_EXCLUDE).
_OPTIONAL = {"FORCE_CPU_ONLY_INPUT_TENSORS", "max_request_candidates", "max_exclude"}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name, version = config["name"], args["model_version"]
        try:
            params = model_parameters(config, _PARAMETERS, _OPTIONAL)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        try:
            expected = parse_fingerprints(params[FINGERPRINTS_PARAMETER])
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        if version not in expected:
            raise pb_utils.TritonModelException(
                f"{self.name}: config parameter {FINGERPRINTS_PARAMETER} names no fingerprint for version {version}")
        directory = os.path.join(args["model_repository"], version, INDEX_DIR)
        try:
            self.index = load_index(directory, expected_fingerprint=expected[version])
            rows = os.path.join(args["model_repository"], version, ROWS_FILE)
            if os.path.exists(rows):  # absent in repositories written before it and in index-only ones
                load_row_map(self.index, rows)
            prepare_index(self.index)  # caches, the GEMM self-test and kernel warm-up: not on the first request
        except (IndexLoadError, OSError) as exc:
            raise pb_utils.TritonModelException(f"{self.name} version {version}: refusing index: {exc}") from exc
        fields = os.path.join(args["model_repository"], version, ITEM_FIELDS)
        # taken-down items (the repository's takedowns.json, external ids) are never admissible, whatever the request
        watch = TakedownWatch(repository_of(args["model_repository"]))
        try:  # fields absent in a build without a filterable item field (exclusions still work)
            self.ids = ItemIds.load(os.path.join(args["model_repository"], version))  # None: internal == external
            self.filter = HeadFilter(self.index.ids, prepare_index(self.index).rows_of, fields,
                                     InternalTakedowns(self.ids, watch.ids))
        except (OSError, ValueError, KeyError) as exc:
            raise pb_utils.TritonModelException(f"{self.name} version {version}: refusing {fields}: {exc}") from exc
        self.k, self.max_k = int(params["k"]), int(params["max_k"])
        self.mode = params["search"]
        if self.mode not in ("exact", "ivf"):
            raise pb_utils.TritonModelException(f"{self.name}: parameter search must be 'exact' or 'ivf'")
        self.nprobe = int(params["nprobe"])
        self.max_request_candidates = int(params.get("max_request_candidates", "0"))
        self.max_exclude = int(params.get("max_exclude", DEFAULT_MAX_EXCLUDE))
        self.emit_embeddings = params["emit_embeddings"].lower() == "true"
        self.fingerprint = np.int64(fingerprint_int(self.index.manifest["tower_fingerprint"]))
        self.gpu = None
        if args.get("model_instance_kind") == "GPU":
            from widefunnel.ann.triton_kernel import GpuIndex

            # the instance's own GPU, not device 0; the index stays resident there
            self.gpu = GpuIndex.from_index(self.index, f"cuda:{args['model_instance_device_id']}")

    def _allow(self, inputs: dict, batch: int) -> np.ndarray | None:
        """The request's filters (EXCLUDE_IDS, FIELD_TOKENS, FIELD_RANGES; one row per query) and the taken-down
        items -> a row bitmap the scan applies, or None when nothing is filtered."""
        tensors = {n: input_array(inputs, n) for n in (Step.EXCLUDE_ID, *(t.name for t in FILTER_STEP_TENSORS))}
        check_ann_inputs(tensors, batch, self.max_exclude)
        try:
            return self.filter.allow(batch, tensors[Step.EXCLUDE_IDS], tensors[Step.FIELD_TOKENS],
                                     tensors[Step.FIELD_RANGES])
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    def _gpu_search(self, inputs: dict, k: int, allow: np.ndarray | None, emit: bool, external: bool) -> list:
        """Exact int8 scan with the triton-language kernel; results stay on the GPU for the next step
        (CANDIDATE_ITEM_ID, for a caller outside the funnel, is mapped on the host)."""
        query = inputs[Step.QUERY]
        exclude = input_array(inputs, Step.EXCLUDE_ID)
        outputs = self.gpu.search_dlpack(query.as_numpy() if query.is_cpu() else query.to_dlpack(), k,
                                         None if exclude is None else exclude[:, 0], emit,
                                         int(self.fingerprint), allow)
        tensors = [pb_utils.Tensor.from_dlpack(name, capsule) for name, capsule in outputs]
        if external:
            import torch

            ids = next(t for t in tensors if t.name() == Step.CANDIDATE_ID)
            host = ids.as_numpy() if ids.is_cpu() else torch.from_dlpack(ids.to_dlpack()).cpu().numpy()
            tensors.append(pb_utils.Tensor(Step.CANDIDATE_ITEM_ID, self._external(host)))
        return tensors

    def _search(self, request) -> list:
        inputs = request_inputs(request)
        queries = required_array(inputs, Step.QUERY)
        check_not_empty(Step.QUERY, queries)
        check_step_input(Step.QUERY, queries, "finite", 0)
        k = request_scalar(Step.K, input_array(inputs, Step.K), self.k, 1, self.max_k)
        if self.max_request_candidates:
            check_request_candidates(Step.K, len(queries), k, self.max_request_candidates)
        probe = input_array(inputs, Step.NPROBE)
        if probe is not None and (self.mode != "ivf" or self.index.ivf is None):
            raise RequestError(f"{Step.NPROBE}: this model searches exactly (parameter search = 'exact'); "
                               f"{Step.NPROBE} applies to IVF models only")
        nprobe = request_scalar(Step.NPROBE, probe, self.nprobe, 1, 1 << 20)
        use_ivf = self.mode == "ivf" and self.index.ivf is not None
        allow = self._allow(inputs, len(queries))
        requested = request.requested_output_names()
        emit = self.emit_embeddings and Step.CANDIDATE_EMB in requested
        external = Step.CANDIDATE_ITEM_ID in requested  # the catalogue's ids, for a caller outside the funnel
        if self.gpu is not None and not use_ivf:
            return self._gpu_search(inputs, k, allow, emit, external)
        exclude = input_array(inputs, Step.EXCLUDE_ID)  # its shape was checked with the filters'
        if exclude is not None:
            exclude = exclude[:, 0]
        ids, scores = search(self.index, queries, k, exclude, nprobe if use_ivf else None, allow)
        outputs = [pb_utils.Tensor(Step.CANDIDATE_ID, ids), pb_utils.Tensor(Step.CANDIDATE_SCORE, scores),
                   pb_utils.Tensor(Step.FINGERPRINT, np.full((len(queries), 1), self.fingerprint, np.int64))]
        if emit:
            outputs.append(pb_utils.Tensor(Step.CANDIDATE_EMB, dequantized(self.index, ids)))
        if external:
            outputs.append(pb_utils.Tensor(Step.CANDIDATE_ITEM_ID, self._external(ids)))
        return outputs

    def _external(self, ids: np.ndarray) -> np.ndarray:
        return ids if self.ids is None else self.ids.to_external(ids)

    def execute(self, requests):
        return respond_each(requests, self._search, self.name)
