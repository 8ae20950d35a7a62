"""Python-based Triton backend named `onnxruntime`: serves `<version>/model.onnx` on servers without the
native onnxruntime backend (the embedded pytriton server). On NVIDIA's image the native
`libtriton_onnxruntime.so` is found first and takes the very same config, so never ship this file there.

Honours the config's inputs, outputs, max_batch_size and dynamic batching: requests in one execute() whose
non-batch shapes agree run as one ORT call (so this model keeps its own loop instead of `respond_each`); a
request whose inputs ORT rejects fails alone, answered through the same `failure_response`.
"""

from __future__ import annotations

import json
import os

import widefunnel_site  # noqa: F401  (first: makes `widefunnel` importable in the stub)
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from widefunnel.layout import ONNX_FILE
from widefunnel.model_configs import model_parameters
from widefunnel.plugins.stub import failure_response, request_inputs
from widefunnel.tensor_names import Step
from widefunnel.validation import (
    STEP_RULES,
    RequestError,
    check_not_empty,
    check_request_candidates,
    check_step_input,
)

# ORT settings, and what a direct call may send: `input_checks` (JSON {input: rule}, rules in
# widefunnel.validation.STEP_RULES), the catalogue's largest id, the per-request candidate bound.
_PARAMETERS = {"intra_op_thread_count", "inter_op_thread_count", "enable_mem_arena", "enable_mem_pattern",
               "input_checks", "max_item_id", "max_request_candidates"}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        name = self.name = self.config["name"]
        try:
            params = model_parameters(self.config, set(), _PARAMETERS)
            self.checks = json.loads(params.get("input_checks", "{}"))
            unknown_rules = {r for r in self.checks.values() if r not in STEP_RULES}
            if unknown_rules:
                raise ValueError(f"input_checks: unknown rules {sorted(unknown_rules)}; known: {STEP_RULES}")
            self.max_item_id = int(params.get("max_item_id", "0"))
            self.max_request_candidates = int(params.get("max_request_candidates", "0"))
            threads = (int(params.get("intra_op_thread_count", "1")), int(params.get("inter_op_thread_count", "1")))
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"model '{name}': {exc}") from exc
        filename = self.config.get("default_model_filename") or ONNX_FILE
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"model '{name}': {path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads
        # idle intra-op workers sleep instead of spinning: every step's stub shares the same few cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # ORT's arena keeps the largest request's buffers for the life of the session: off by default, so the
        # stub returns to its idle size after a wide request.
        options.enable_cpu_mem_arena = params.get("enable_mem_arena", "false").lower() == "true"
        options.enable_mem_pattern = params.get("enable_mem_pattern", "false").lower() == "true"
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # corrupt or truncated file: refuse to load with ORT's reason
            raise pb_utils.TritonModelException(f"model '{name}': cannot load {path}: {exc}") from exc
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"]), bool(t.get("optional")))
                       for t in self.config["input"]]
        self.outputs = [t["name"] for t in self.config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n, _, _ in self.inputs if n not in graph_inputs]
        missing += [n for n in self.outputs if n not in graph_outputs]
        if missing:
            raise pb_utils.TritonModelException(f"model '{name}': config names tensors not in {path}: {missing}")

    def _request_inputs(self, request) -> dict[str, np.ndarray]:
        feeds, tensors = {}, request_inputs(request)
        for name, dtype, optional in self.inputs:
            tensor = tensors.get(name)
            if tensor is None:
                if optional:
                    continue
                raise RequestError(f"{name}: required input is missing")
            feeds[name] = tensor.as_numpy().astype(dtype, copy=False)
            check_not_empty(name, feeds[name])
            if name in self.checks:
                check_step_input(name, feeds[name], self.checks[name], self.max_item_id)
            if name.startswith(Step.CANDIDATE_PREFIX) and self.max_request_candidates and feeds[name].ndim >= 2:
                check_request_candidates(name, feeds[name].shape[0], feeds[name].shape[1],
                                         self.max_request_candidates)
        widths = {n: a.shape[:2] for n, a in feeds.items() if n.startswith(Step.CANDIDATE_PREFIX) and a.ndim >= 2}
        if len(set(widths.values())) > 1:
            raise RequestError(f"{' vs '.join(widths)}: one [batch, candidates] shape expected, got "
                               f"{[list(w) for w in widths.values()]}")
        return feeds

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, feeds)

    def _respond(self, values: list[np.ndarray]):
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]
        )

    def _error(self, exc: Exception):
        return failure_response(self.name, exc)

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = self._request_inputs(request)
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                responses[i] = self._error(exc)
                continue
            if self.max_batch_size > 0:
                key = tuple(sorted((n, a.shape[1:], a.dtype.str) for n, a in feeds.items()))
            else:
                key = ("request", i)
            groups.setdefault(key, []).append((i, feeds))
        for members in groups.values():
            self._execute_group(members, responses)
        return responses

    def _execute_group(self, members: list[tuple[int, dict]], responses: list) -> None:
        if len(members) > 1:
            names = members[0][1].keys()
            batched = {n: np.concatenate([f[n] for _, f in members]) for n in names}
            try:
                values = self._run(batched)
            except Exception:  # one bad request must not fail the others: retry them alone
                values = None
            if values is not None:
                offset = 0
                for i, feeds in members:
                    size = next(iter(feeds.values())).shape[0]
                    responses[i] = self._respond([v[offset:offset + size] for v in values])
                    offset += size
                return
        for i, feeds in members:
            try:
                responses[i] = self._respond(self._run(feeds))
            except Exception as exc:
                responses[i] = self._error(exc)

    def finalize(self) -> None:
        self.session = None
