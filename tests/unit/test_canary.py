"""Pure parts of issue 33 without a server: the canary request each step gets, how a canary's result is read,
the restriction flags with a gateway key, and what the gateway adds to what it forwards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from widefunnel import model_configs as mcfg
from widefunnel.gateway import upstream
from widefunnel.security import (
    GATEWAY_HEADER,
    GATEWAY_KEY_ENV,
    GRPC_GATEWAY_HEADER,
    OPEN_APIS,
    RESTRICTED_APIS,
    restriction_flags,
)
from widefunnel.server.canary import ANSWERED, NO_ANSWER, STUB_DEAD, canary_inputs, canary_outcome, catalogue_item_id

TARGET = mcfg.Target("cpu")


def _served(config) -> dict:
    """The JSON form `get_model_config` answers (int64 dims come as strings there)."""
    return json.loads(mcfg.to_json(config))


def test_preprocess_gets_one_seed_and_nothing_that_would_make_it_a_scoring_call():
    tensors = canary_inputs(_served(mcfg.preprocess_config(TARGET, 3, {})), 50)
    assert set(tensors) == {"seed_item_id"}  # scoring_seed_item_id would require candidate_item_id
    assert tensors["seed_item_id"].dtype == np.int64 and tensors["seed_item_id"].tolist() == [[50]]


def test_ann_gets_a_query_and_k_of_one():
    tensors = canary_inputs(_served(mcfg.ann_config("engagement", TARGET, 32, {})), 50)
    assert set(tensors) == {"QUERY", "K"}
    assert tensors["QUERY"].shape == (1, 32) and tensors["QUERY"].dtype == np.float32
    assert tensors["K"].tolist() == [[1]] and tensors["K"].dtype == np.int32


def test_merge_gets_consistent_widths_and_one_build():
    tensors = canary_inputs(_served(mcfg.merge_config(TARGET, 3, {})), 7)
    assert tensors["ENG_ID"].shape == (1, 1) and tensors["ENG_PROBS"].shape == (1, 1, 3)
    assert {int(tensors[n][0, 0]) for n in mcfg.FINGERPRINT_INPUTS} == {7}  # one build: not UNAVAILABLE
    assert 0 <= tensors["ALPHA"][0, 0] <= 1 and tensors["TOP_N"][0, 0] >= 1


@pytest.mark.parametrize("config", [mcfg.rerank_config("relevance", TARGET, 32), mcfg.scorer_config(TARGET, 3),
                                    mcfg.query_tower_config(TARGET, 32)])
def test_onnx_steps_get_every_required_input_valid(config):
    served = _served(config)
    tensors = canary_inputs(served, 5)
    assert set(tensors) == {t["name"] for t in served["input"]}
    for name, array in tensors.items():
        assert array.shape[0] == 1 and np.isfinite(array).all() and (array > 0).all(), name


def test_ensembles_and_unfillable_models_get_no_canary():
    ensemble = _served(mcfg.ensemble_config(TARGET, 3, dict.fromkeys(mcfg.STEP_MODELS, 1)))
    assert canary_inputs(ensemble, 5) is None
    text_only = {"name": "t", "max_batch_size": 0, "input": [{"name": "X", "data_type": "TYPE_STRING", "dims": [1]}]}
    assert canary_inputs(text_only, 5) is None


def test_catalogue_item_id_is_a_real_item(tmp_path):
    assert catalogue_item_id(tmp_path) == 1  # no build: a fallback
    for version, ids in (("1", [9, 10]), ("2", [42, 43])):
        (tmp_path / "preprocess" / version).mkdir(parents=True)
        np.save(tmp_path / "preprocess" / version / "catalogue.npy", np.array(ids, np.int64))
    assert catalogue_item_id(tmp_path) == 42


@pytest.mark.parametrize("error, outcome", [
    (None, ANSWERED),
    (InferenceServerException("input 'seed_item_id': item ids must be within", "StatusCode.INVALID_ARGUMENT"),
     ANSWERED),  # a refusal is an answer: the stub is there
    (InferenceServerException("Failed to process the request(s) for model instance 'preprocess_0_0', message: "
                              "Stub process 'preprocess_0_0' is not healthy.", "StatusCode.INTERNAL"), STUB_DEAD),
    (InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), NO_ANSWER),
    (InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), NO_ANSWER),
])
def test_canary_outcome(error, outcome):
    assert canary_outcome(error) == outcome


def test_restriction_flags_put_every_api_class_behind_exactly_one_key():
    admin, gateway = "a" * 32, "g" * 32
    assert restriction_flags(admin) == restriction_flags(admin, None)  # no gateway: the open classes stay open
    flags = restriction_flags(admin, gateway)
    for option in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        named = [f.removeprefix(option) for f in flags if f.startswith(option)]
        classes = [c for flag in named for c in flag.split(":")[0].split(",")]
        assert sorted(classes) == sorted(RESTRICTED_APIS + OPEN_APIS)  # each class once
        assert f"{','.join(RESTRICTED_APIS)}:widefunnel-admin-key={admin}" in named
        assert f"{','.join(OPEN_APIS)}:{GATEWAY_HEADER}={gateway}" in named
    with pytest.raises(Exception, match="at least"):
        restriction_flags(admin, "short")


def test_the_gateway_adds_its_key_and_drops_a_client_sent_one(monkeypatch):
    monkeypatch.delenv(GATEWAY_KEY_ENV, raising=False)
    assert upstream.upstream_key() is None and upstream.http_headers() == {} and upstream.grpc_metadata() == ()
    monkeypatch.setenv(GATEWAY_KEY_ENV, "k" * 32)
    assert upstream.http_headers() == {GATEWAY_HEADER: "k" * 32}
    assert upstream.grpc_metadata() == ((GRPC_GATEWAY_HEADER, "k" * 32),)
    sent = [("Widefunnel-Gateway-Key", "guess"), (GRPC_GATEWAY_HEADER, "guess"), ("x-other", "1")]
    assert upstream.without_key(sent) == (("x-other", "1"),)
