"""Python-based Triton backend `widefunnel_ann`: int8 ANN search over one head's item index.

The index (int8 codes, per-row scales, item ids, manifest, optional IVF lists) lives in `<version>/index/`.
The config says which tower fingerprint each version's index must carry; a mismatch refuses to load.
Instance kind decides the path: KIND_GPU runs the triton-language kernel on the instance's device with the
index resident in GPU memory; KIND_CPU the blocked exact scan (or IVF).
"""

from __future__ import annotations

import os
import site
import sys

# The embedded server's stub runs Python isolated (PYTHONPATH ignored): `widefunnel serve` names the
# environment's site-packages here. Unset on NVIDIA's image, where packages are installed system-wide.
for _path in filter(None, os.environ.get("WIDEFUNNEL_SITE", "").split(os.pathsep)):
    if _path not in sys.path:
        site.addsitedir(_path)

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from widefunnel.ann.index import IndexLoadError, load_index
from widefunnel.ann.query import search
from widefunnel.ann.search import dequantized, prepare_index
from widefunnel.layout import FINGERPRINTS_PARAMETER, parse_fingerprints
from widefunnel.model_configs import model_parameters
from widefunnel.stub import input_array, required_array, respond_each
from widefunnel.validation import RequestError, check_request_candidates, check_step_input

_PARAMETERS = {"k", "max_k", "search", "nprobe", "tower_fingerprints", "emit_embeddings"}
# Optional: the Python backend's own setting, and the per-request candidate bound (absent in repositories
# built before it existed, and in index-only ones: then only K <= max_k bounds a request).
_OPTIONAL = {"FORCE_CPU_ONLY_INPUT_TENSORS", "max_request_candidates"}


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
        directory = os.path.join(args["model_repository"], version, "index")
        try:
            self.index = load_index(directory, expected_fingerprint=expected[version])
            prepare_index(self.index)  # caches, the GEMM self-test and kernel warm-up: not on the first request
        except (IndexLoadError, OSError) as exc:
            raise pb_utils.TritonModelException(f"{self.name} version {version}: refusing index: {exc}") from exc
        self.k, self.max_k = int(params["k"]), int(params["max_k"])
        self.mode = params["search"]
        if self.mode not in ("exact", "ivf"):
            raise pb_utils.TritonModelException(f"{self.name}: parameter search must be 'exact' or 'ivf'")
        self.nprobe = int(params["nprobe"])
        self.max_request_candidates = int(params.get("max_request_candidates", "0"))
        self.emit_embeddings = params["emit_embeddings"].lower() == "true"
        self.fingerprint = np.int64(int(self.index.manifest["tower_fingerprint"], 16) & 0x7FFF_FFFF_FFFF_FFFF)
        self.gpu = None
        if args.get("model_instance_kind") == "GPU":
            import torch

            device = f"cuda:{args['model_instance_device_id']}"  # the instance's own GPU, not device 0
            self.gpu = {
                "device": device,
                "codes": torch.from_numpy(np.ascontiguousarray(self.index.codes)).to(device),
                "scales": torch.from_numpy(np.ascontiguousarray(self.index.scales)).to(device),
                "ids": torch.from_numpy(self.index.ids).to(device),
                "sorted_ids": torch.from_numpy(self.index.cache["ids_sorted"]).to(device),
                "rows_by_id": torch.from_numpy(self.index.cache["ids_order"]).to(device),
            }

    def _gpu_search(self, request, k: int) -> list:
        """Exact int8 scan with the triton-language kernel; results stay on the GPU for the next step."""
        import torch
        import torch.utils.dlpack as dl

        from widefunnel.ann.triton_kernel import gpu_search

        g = self.gpu
        query = pb_utils.get_input_tensor_by_name(request, "QUERY")
        q = query.as_numpy() if query.is_cpu() else dl.from_dlpack(query.to_dlpack())
        q = torch.as_tensor(q, device=g["device"]).float()
        exclude_rows = None
        ex = pb_utils.get_input_tensor_by_name(request, "EXCLUDE_ID")
        if ex is not None:
            ex_ids = torch.as_tensor(input_array(request, "EXCLUDE_ID")[:, 0], device=g["device"])
            pos = torch.searchsorted(g["sorted_ids"], ex_ids).clamp(max=len(g["sorted_ids"]) - 1)
            exclude_rows = torch.where(g["sorted_ids"][pos] == ex_ids, g["rows_by_id"][pos], -1)
        rows, scores = gpu_search(g["codes"], g["scales"], q, k, exclude_rows)
        safe = rows.clamp(min=0)
        ids = torch.where(rows >= 0, g["ids"][safe], -1)
        fp = torch.full((q.shape[0], 1), int(self.fingerprint), dtype=torch.int64, device=g["device"])
        outputs = [("CANDIDATE_ID", ids), ("CANDIDATE_SCORE", scores.float()), ("FINGERPRINT", fp)]
        if self.emit_embeddings:
            emb = g["codes"][safe].float() * g["scales"][safe][..., None]
            outputs.append(("CANDIDATE_EMB", emb * (rows >= 0)[..., None]))  # the -1 pad gets zeros, as on CPU
        return [pb_utils.Tensor.from_dlpack(n, dl.to_dlpack(t.contiguous())) for n, t in outputs]

    @staticmethod
    def _scalar(request, name: str, default: int, low: int, high: int) -> int:
        values = input_array(request, name)
        if values is None:
            return default
        values = values.ravel()
        if values.size == 0 or np.any(values != values[0]):
            raise RequestError(f"{name}: one value per request expected")
        value = int(values[0])
        if not low <= value <= high:
            raise RequestError(f"{name}: must be within [{low}, {high}], got {value}")
        return value

    def _search(self, request) -> list:
        queries = required_array(request, "QUERY")
        check_step_input("QUERY", queries, "finite", 0)
        k = self._scalar(request, "K", self.k, 1, self.max_k)
        if self.max_request_candidates:
            check_request_candidates("K", len(queries), k, self.max_request_candidates)
        has_probe = input_array(request, "NPROBE") is not None
        if has_probe and (self.mode != "ivf" or self.index.ivf is None):
            raise RequestError("NPROBE: this model searches exactly (parameter search = 'exact'); NPROBE "
                               "applies to IVF models only")
        nprobe = self._scalar(request, "NPROBE", self.nprobe, 1, 1 << 20)
        use_ivf = self.mode == "ivf" and self.index.ivf is not None
        if self.gpu is not None and not use_ivf:
            return self._gpu_search(request, k)
        exclude = input_array(request, "EXCLUDE_ID")
        if exclude is not None:
            if exclude.shape != (len(queries), 1):
                raise RequestError(f"EXCLUDE_ID: expected shape [{len(queries)}, 1], got {list(exclude.shape)}")
            exclude = exclude[:, 0]
        ids, scores = search(self.index, queries, k, exclude, nprobe if use_ivf else None)
        outputs = [pb_utils.Tensor("CANDIDATE_ID", ids), pb_utils.Tensor("CANDIDATE_SCORE", scores),
                   pb_utils.Tensor("FINGERPRINT", np.full((len(queries), 1), self.fingerprint, np.int64))]
        if self.emit_embeddings:
            outputs.append(pb_utils.Tensor("CANDIDATE_EMB", dequantized(self.index, ids)))
        return outputs

    def execute(self, requests):
        return respond_each(requests, self._search, self.name)
