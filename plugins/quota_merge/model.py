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

from widefunnel.merge import HEAD_NAMES, merge_batch
from widefunnel.model_configs import FINGERPRINT_INPUTS, model_parameters

_REQUIRED = {"sort_by_score"}


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        try:
            params = model_parameters(config, _REQUIRED)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"quota_merge: {exc}") from exc
        self.sort_by_score = params["sort_by_score"].lower() == "true"

    def _merge_one(self, request):
        fps = np.concatenate([_input(request, n) for n in FINGERPRINT_INPUTS], axis=1)  # [B, 7]
        mixed = np.flatnonzero((fps != fps[:, :1]).any(axis=1))
        if mixed.size:
            raise RuntimeError(f"steps of one request came from different builds: {fps[mixed[0]].tolist()}")
        heads = [tuple(_input(request, f"{p}_{s}") for s in ("ID", "SCORE", "PROBS")) for p in ("ENG", "REL")]
        merged = merge_batch(*heads, _input(request, "ALPHA"), _input(request, "TOP_N"), self.sort_by_score)
        names = np.array([b""] + [h.encode() for h in HEAD_NAMES], dtype=object)
        source = names[merged.source.astype(np.int64) + 1]  # -1 (padding) -> b""
        fingerprint = np.array([[f"{int(fp):016x}".encode()] for fp in fps[:, 0]], dtype=object)
        return [pb_utils.Tensor("item_id", merged.ids), pb_utils.Tensor("score", merged.scores),
                pb_utils.Tensor("source_head", source), pb_utils.Tensor("task_probs", merged.probs),
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
