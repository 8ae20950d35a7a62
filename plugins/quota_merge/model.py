"""Python-backend model `quota_merge`: MTMH's alpha quota over the two heads' composite-scored lists.

Also the funnel's coherence guard: every step reports the fingerprint of the build that made it; a
request whose steps disagree (a half-finished swap) is refused rather than served mixed.
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

from widefunnel.merge import HEAD_NAMES, quota_merge
from widefunnel.model_configs import FINGERPRINT_INPUTS

_REQUIRED = {"sort_by_score"}


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if params.keys() != _REQUIRED:
            raise pb_utils.TritonModelException(f"quota_merge: parameters must be exactly {sorted(_REQUIRED)}")
        self.sort_by_score = params["sort_by_score"].lower() == "true"
        self.tasks = next(t["dims"][-1] for t in config["output"] if t["name"] == "task_probs")

    def _merge_one(self, request):
        fps = np.concatenate([_input(request, n) for n in FINGERPRINT_INPUTS], axis=1)  # [B, 7]
        mixed = np.flatnonzero((fps != fps[:, :1]).any(axis=1))
        if mixed.size:
            raise RuntimeError(f"steps of one request came from different builds: {fps[mixed[0]].tolist()}")
        heads = {p: [_input(request, f"{p}_{s}") for s in ("ID", "SCORE", "PROBS")] for p in ("ENG", "REL")}
        alpha, top_n = _input(request, "ALPHA")[:, 0], _input(request, "TOP_N")[:, 0]
        batch, width = len(alpha), int(top_n.max())
        ids = np.full((batch, width), -1, dtype=np.int64)
        scores = np.full((batch, width), np.nan, dtype=np.float32)
        source = np.full((batch, width), b"", dtype=object)
        probs = np.full((batch, width, self.tasks), np.nan, dtype=np.float32)
        for b in range(batch):
            ranked = {}
            for p, (hid, hscore, hprobs) in heads.items():
                order = np.argsort(-hscore[b], kind="stable")  # each head ranked by the composite score
                ranked[p] = (hid[b][order], hscore[b][order], hprobs[b][order])
            merged = quota_merge(ranked["ENG"][0], ranked["ENG"][1], ranked["REL"][0], ranked["REL"][1],
                                 float(alpha[b]), int(top_n[b]), self.sort_by_score)
            n = len(merged.ids)
            ids[b, :n], scores[b, :n] = merged.ids, merged.scores
            source[b, :n] = [HEAD_NAMES[h].encode() for h in merged.source]
            for j, (h, pos) in enumerate(zip(merged.source, merged.positions)):
                probs[b, j] = ranked["ENG" if h == 0 else "REL"][2][pos]
        fingerprint = np.array([[f"{int(fp):016x}".encode()] for fp in fps[:, 0]], dtype=object)
        return [pb_utils.Tensor("item_id", ids), pb_utils.Tensor("score", scores),
                pb_utils.Tensor("source_head", source), pb_utils.Tensor("task_probs", probs),
                pb_utils.Tensor("fingerprint", fingerprint)]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._merge_one(request)))
            except Exception as exc:  # never serve a mixed or half-merged answer
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"quota_merge: {exc}", pb_utils.TritonError.INTERNAL)))
        return responses
