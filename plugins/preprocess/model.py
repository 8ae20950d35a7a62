"""Python-backend model `preprocess`: the ensemble's front door.

Validates what clients send (seed ids in the catalogue, alpha in [0, 1], 1 <= top_n <= max_top_n, finite
non-negative value weights, candidate ids, the funnel's width) and fills defaults from the config, so every
later step sees well-formed tensors and a bad request fails here with the field's name, alone in its batch.
"""

from __future__ import annotations

import os

import widefunnel_site  # noqa: F401  (first: makes `widefunnel` importable in the stub)
import triton_python_backend_utils as pb_utils

from widefunnel.arrays import load_table
from widefunnel.field_filters import FieldSchema, ItemFields
from widefunnel.item_ids import ItemIds
from widefunnel.layout import CATALOGUE_FILE, ITEM_FIELDS, repository_of
from widefunnel.model_configs import model_parameters
from widefunnel.plugins.stub import input_array, request_inputs, respond_each
from widefunnel.takedowns import TakedownWatch
from widefunnel.tensor_names import Client, Step
from widefunnel.validation import (
    RequestLimits,
    filter_names,
    refuse_taken_down,
    validate_filters,
    validate_request,
)

# the client tensors `validate_request` takes (its keyword arguments)
_INPUTS = (Client.SEED_ITEM_ID, Client.ALPHA, Client.TOP_N, Client.VALUE_WEIGHTS, Client.CANDIDATE_ITEM_ID,
           Client.CANDIDATES_PER_HEAD, Client.RERANK_KEEP)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import json

        config = json.loads(args["model_config"])
        self.name = config["name"]
        try:
            params = model_parameters(config, set(RequestLimits.PARAMETERS), set(RequestLimits.OPTIONAL))
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        folder = os.path.join(args["model_repository"], args["model_version"])
        catalogue = os.path.join(folder, CATALOGUE_FILE)
        try:
            self.limits = RequestLimits.from_parameters(params, load_table(catalogue))
            self.ids = ItemIds.load(folder)  # requests name external ids; every later step takes internal ones
            fields = os.path.join(folder, ITEM_FIELDS)  # absent: a build without a filterable item field
            self.fields = ItemFields.load(fields).schema() if os.path.exists(fields) else FieldSchema((), ())
            self.filter_names = filter_names(self.fields)
        except Exception as exc:
            raise pb_utils.TritonModelException(f"{self.name}: cannot read {catalogue}: {exc}") from exc
        self.takedowns = TakedownWatch(repository_of(args["model_repository"]))

    def _validate(self, request) -> list:
        inputs = request_inputs(request)
        valid = validate_request(self.limits, **{n: input_array(inputs, n) for n in _INPUTS},
                                 require_candidates=input_array(inputs, Client.SCORING_SEED_ITEM_ID) is not None)
        taken = self.takedowns.ids()
        refuse_taken_down(Client.SEED_ITEM_ID, valid.item_id, taken)
        refuse_taken_down(Client.CANDIDATE_ITEM_ID, valid.candidate_id, taken)
        filters = validate_filters(self.limits, self.fields, len(valid.item_id),
                                   {n: input_array(inputs, n) for n in self.filter_names})
        item_id, candidate_id, exclude_ids = valid.item_id, valid.candidate_id, filters.exclude_ids
        if self.ids is not None:
            item_id, candidate_id = self.ids.to_internal(item_id), self.ids.to_internal(candidate_id)
            exclude_ids = self.ids.to_internal(exclude_ids)  # an id not in the catalogue excludes nothing: -1
        outputs = {Step.ITEM_ID: item_id, Step.ALPHA: valid.alpha, Step.TOP_N: valid.top_n,
                   Step.VALUE_WEIGHTS: valid.value_weights, Step.CANDIDATE_ID: candidate_id, Step.K: valid.k,
                   Step.KEEP: valid.keep, Step.EXCLUDE_IDS: exclude_ids, Step.FIELD_TOKENS: filters.field_tokens,
                   Step.FIELD_RANGES: filters.field_ranges}
        return [pb_utils.Tensor(name, array) for name, array in outputs.items()]

    def execute(self, requests):
        return respond_each(requests, self._validate, self.name)
