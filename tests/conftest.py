"""Shared fixtures: one small real build of the funnel and one real tritonserver over it, per session."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def built_repository(tmp_path_factory, test_config) -> Path:
    from widefunnel.builders.repository import build
    from widefunnel.model_configs import Target

    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    build(repository, test_config, Target("cpu"), progress=False)
    return repository


@pytest.fixture(scope="session")
def server(built_repository):
    from widefunnel.server import TritonServer

    srv = TritonServer(built_repository)
    srv.start()
    yield srv
    srv.stop()
    srv.cleanup()


def private_server(built_repository: Path, tmp_path_factory, name: str):
    """A server of its own on a private copy of the build, for tests that break artifacts, unload models,
    kill stubs or crash the server (module-scoped fixtures yield from this)."""
    import shutil

    from widefunnel.server import TritonServer

    repo = tmp_path_factory.mktemp(name) / "repo"
    shutil.copytree(built_repository, repo)
    srv = TritonServer(repo)
    srv.start()
    yield srv
    srv.stop()
    srv.cleanup()


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    from widefunnel.client.client import WidefunnelClient

    url = server.http_url if request.param == "http" else server.grpc_url
    with WidefunnelClient(url, request.param) as c:
        yield c


def admin_client(server, protocol: str = "http"):
    """A tritonclient client of `server` that sends its admin key (repository, config, shared-memory APIs)."""
    from widefunnel.security import with_admin_key

    if protocol == "grpc":
        import tritonclient.grpc as grpc

        return with_admin_key(grpc.InferenceServerClient(server.grpc_url), server.admin_key, "grpc")
    import tritonclient.http as http

    return with_admin_key(http.InferenceServerClient(server.http_url, network_timeout=300.0,
                                                     connection_timeout=300.0), server.admin_key)
