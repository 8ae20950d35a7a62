"""The served tier: one small real build of the funnel and one real tritonserver over it, per session.

Every test collected under this folder is marked `server` (`pytest -m "not server"` leaves them out).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import admin_client, private_server  # noqa: F401 - `from conftest import ...` in served modules

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # A conftest hook sees every collected item, not only its folder's: mark the ones under tests/served.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.server)


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


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    from widefunnel.client.client import WidefunnelClient

    url = server.http_url if request.param == "http" else server.grpc_url
    with WidefunnelClient(url, request.param) as c:
        yield c
