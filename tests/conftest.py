"""What both tiers share: the offline environment and the test build's configuration.

The build and the servers (`built_repository`, `server`, `client`, ...) live in `tests/served/conftest.py`, so a
test under `tests/unit/` that asks for one fails with "fixture not found" (tests/README.md says which goes where).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A faster build than the default one; same code path, fewer epochs.
TEST_OVERRIDES = {
    "data": {"max_train_pairs": 60000},
    "training": {"epochs": 2},
    "rerank": {"epochs": 2},
    "scorer": {"epochs": 2},
}


@pytest.fixture(scope="session")
def test_config():
    from widefunnel.config import load_config

    return load_config(overrides=TEST_OVERRIDES)
