"""The embedded server runtime: clear errors for taken ports and models that fail to load."""

from __future__ import annotations

import shutil
import socket

import pytest

from widefunnel.server import Ports, ServerError, TritonServer


def test_port_in_use_is_reported(built_repository):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServerError, match=f"http port {port} is already in use"):
            TritonServer(built_repository, Ports(http=port)).start()


def test_model_that_fails_to_load_is_reported_with_the_servers_reason(built_repository, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(built_repository, broken)
    onnx = broken / "query_tower" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:200])  # truncated artifact
    with pytest.raises(ServerError) as info:
        TritonServer(broken, startup_timeout=120).start()
    message = str(info.value)
    assert "query_tower" in message and "failed to load" in message


def test_empty_repository_is_refused(tmp_path):
    with pytest.raises(ServerError, match="missing or empty"):
        TritonServer(tmp_path).start()
