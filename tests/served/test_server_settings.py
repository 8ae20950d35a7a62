"""A server's settings apart from its processes: defaults in `ServerSettings` alone, frozen, keys never printed;
the supervisor sees only the narrow `Supervised` view (no server started here)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from widefunnel.server import Ports, ServerSettings, TritonServer
from widefunnel.server.supervisor import StubSupervisor, Supervised


def test_keyword_construction_builds_the_same_settings(tmp_path):
    server = TritonServer(tmp_path, Ports(1, 2, 3), gateway=False, admin_key="k", extra_args=["--x"],
                          startup_timeout=5)
    assert server.settings == ServerSettings(tmp_path, Ports(1, 2, 3), gateway=False, admin_key="k",
                                             extra_args=("--x",), startup_timeout=5)
    assert (server.repository, server.admin_key, server.gateway_key) == (tmp_path, "k", None)
    assert server.http_url == "127.0.0.1:1" and server.grpc_url == "127.0.0.1:2"
    same = TritonServer(server.settings)
    assert same.settings is server.settings and same.shm_prefix != server.shm_prefix  # one prefix per server


def test_triton_server_owns_no_default():
    """Every option of the keyword form is a settings field; TritonServer itself declares no default."""
    params = inspect.signature(TritonServer.__init__).parameters
    assert [p for p in params if p not in ("self", "settings", "ports", "options")] == []
    assert params["ports"].default is None  # "not given": the settings' default applies


def test_settings_are_frozen_and_fill_keys(tmp_path):
    settings = ServerSettings(str(tmp_path), extra_args=["--a"], env={"A": "1"})
    assert settings.repository == Path(tmp_path) and settings.extra_args == ("--a",)
    assert settings.admin_key and settings.gateway_key and settings.admin_key != settings.gateway_key
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.host = "0.0.0.0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.env["B"] = "2"  # type: ignore[index]
    assert settings.admin_key not in repr(settings) and settings.gateway_key not in repr(settings)
    assert ServerSettings(tmp_path, gateway=False, gateway_key="g").gateway_key is None  # no gateway, no key
    variant = dataclasses.replace(settings, gateway=False)
    assert variant.admin_key == settings.admin_key and variant.gateway_key is None


def test_connect_host_and_triton_address(tmp_path):
    assert ServerSettings(tmp_path, host="0.0.0.0").connect_host == "127.0.0.1"
    assert ServerSettings(tmp_path, host="0.0.0.0").triton_address == "127.0.0.1"  # behind the gateway
    assert ServerSettings(tmp_path, host="0.0.0.0", gateway=False).triton_address == "0.0.0.0"


def test_the_supervisor_gets_the_narrow_view(tmp_path):
    server = TritonServer(tmp_path)
    view = server._supervised()
    assert isinstance(view, Supervised) and view.pid() is None  # not started
    assert view.http_url == server.triton_http_url and view.shm_prefix == server.shm_prefix
    assert view.upstream_headers() == server.upstream_headers() and view.admin_headers() == server.admin_headers()
    supervisor = StubSupervisor(view, server.settings.supervision)
    assert supervisor.wedged_s == server.settings.supervision.wedged_s and supervisor.on_wedged == server._kill_wedged
