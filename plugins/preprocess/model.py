"""Python-backend model `preprocess`: the ensemble's front door.

Validates what clients send (seed ids in the catalogue, alpha in [0, 1], 1 <= top_n <= max_top_n, finite
non-negative value weights, candidate ids) and fills defaults from the config, so every later step sees
well-formed tensors and a bad request fails here with the field's name, alone in its batch.
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

from widefunnel.model_configs import model_parameters
from widefunnel.validation import RequestError, RequestLimits, validate_request

_REQUIRED = {"default_alpha", "default_top_n", "max_top_n", "default_value_weights", "max_candidates"}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        try:
            params = model_parameters(config, _REQUIRED)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"preprocess: {exc}") from exc
        catalogue = os.path.join(args["model_repository"], args["model_version"], "catalogue.npy")
        try:
            ids = np.load(catalogue, allow_pickle=False)
        except Exception as exc:
            raise pb_utils.TritonModelException(f"preprocess: cannot read {catalogue}: {exc}") from exc
        self.limits = RequestLimits(
            catalogue=np.sort(ids.astype(np.int64)),
            default_alpha=float(params["default_alpha"]),
            default_top_n=int(params["default_top_n"]),
            max_top_n=int(params["max_top_n"]),
            default_value_weights=np.array(json.loads(params["default_value_weights"]), dtype=np.float32),
            max_candidates=int(params["max_candidates"]),
        )

    @staticmethod
    def _array(request, name: str):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def execute(self, requests):
        responses = []
        for request in requests:
            names = ("seed_item_id", "alpha", "top_n", "value_weights", "candidate_item_id")
            try:
                valid = validate_request(self.limits, **{n: self._array(request, n) for n in names},
                                         require_candidates=self._array(request, "scoring_seed_item_id") is not None)
            except RequestError as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("ITEM_ID", valid.item_id),
                pb_utils.Tensor("ALPHA", valid.alpha),
                pb_utils.Tensor("TOP_N", valid.top_n),
                pb_utils.Tensor("VALUE_WEIGHTS", valid.value_weights),
                pb_utils.Tensor("CANDIDATE_ID", valid.candidate_id),
            ]))
        return responses
