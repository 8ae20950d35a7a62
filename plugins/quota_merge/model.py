"""Python-backend model `quota_merge`: MTMH's alpha quota over the two heads' composite-scored lists.

Also the funnel's coherence guard: every step reports the fingerprint of the build that made it; a
request whose steps disagree (a half-finished swap) is refused rather than served mixed.
"""

from __future__ import annotations

import json
import os

import widefunnel_site  # noqa: F401  (first: makes `widefunnel` importable in the stub)
import numpy as np
import triton_python_backend_utils as pb_utils

from widefunnel.item_ids import ItemIds
from widefunnel.layout import fingerprint_hex
from widefunnel.merge import HEADS, check_merge_inputs, merge_batch
from widefunnel.model_configs import FINGERPRINT_INPUTS, model_parameters
from widefunnel.plugins.stub import StepUnavailable, request_inputs, required_array, respond_each
from widefunnel.tensor_names import Client, Step

_REQUIRED = {"sort_by_score", "max_top_n", "max_item_id"}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        try:
            params = model_parameters(config, _REQUIRED)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        self.sort_by_score = params["sort_by_score"].lower() == "true"
        self.max_top_n, self.max_item_id = int(params["max_top_n"]), int(params["max_item_id"])
        # answers leave in the catalogue's ids (absent table: a build whose ids are the catalogue's)
        self.ids = ItemIds.load(os.path.join(args["model_repository"], args["model_version"]))

    def _merge_one(self, request) -> list:
        inputs = request_inputs(request)
        heads = [tuple(required_array(inputs, name) for name in names) for names in Step.MERGE_HEADS]
        alpha, top_n = required_array(inputs, Step.ALPHA), required_array(inputs, Step.TOP_N)
        check_merge_inputs(*heads, alpha, top_n, self.max_top_n, self.max_item_id)
        fps = np.concatenate([required_array(inputs, n).reshape(-1, 1) for n in FINGERPRINT_INPUTS], axis=1)
        mixed = np.flatnonzero((fps != fps[:, :1]).any(axis=1))
        if mixed.size:  # never serve a mixed answer: a swap that is half done, not the client's fault
            raise StepUnavailable(f"steps of one request came from different builds: {fps[mixed[0]].tolist()}")
        merged = merge_batch(*heads, alpha, top_n, self.sort_by_score)
        names = np.array([b""] + [h.encode() for h in HEADS], dtype=object)
        source = names[merged.source.astype(np.int64) + 1]  # -1 (padding) -> b""
        fingerprint = np.array([[fingerprint_hex(fp).encode()] for fp in fps[:, 0]], dtype=object)
        ids = merged.ids if self.ids is None else self.ids.to_external(merged.ids)
        return [pb_utils.Tensor(Client.ITEM_ID, ids), pb_utils.Tensor(Client.SCORE, merged.scores),
                pb_utils.Tensor(Client.SOURCE_HEAD, source), pb_utils.Tensor(Client.TASK_PROBS, merged.probs),
                pb_utils.Tensor(Client.FINGERPRINT, fingerprint)]

    def execute(self, requests):
        return respond_each(requests, self._merge_one, self.name)
