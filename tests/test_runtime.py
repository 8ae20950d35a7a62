"""The embedded server runtime: clear errors for taken ports and models that fail to load."""

from __future__ import annotations

import shutil
import socket

import pytest

from widefunnel.server import Ports, ServerError, TritonServer, assemble_backends, dead_instances


def test_backend_directory_has_matching_stub_and_our_backends(tmp_path):
    target = assemble_backends(tmp_path / "backends")
    assert (target / "python" / "triton_python_backend_stub").exists()
    assert (target / "python" / "libtriton_python.so").exists()
    assert (target / "onnxruntime" / "model.py").exists()
    assert (target / "widefunnel_ann" / "model.py").exists()


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


def test_dead_stub_detection_is_per_instance():
    """One dead instance among several of a version is found; a reload's overlap is not a death."""
    known = {10: ("quota_merge", "1", "quota_merge_0_0"), 11: ("quota_merge", "1", "quota_merge_0_1"),
             12: ("preprocess", "1", "preprocess_0_0")}
    alive = lambda pid: False  # noqa: E731
    assert dead_instances(known, dict(known), alive) == set()
    one_gone = {10: known[10], 12: known[12]}
    assert dead_instances(known, one_gone, alive) == {("quota_merge", "1", "quota_merge_0_1")}
    zombie = lambda pid: pid == 11  # noqa: E731 - still listed, but exited
    assert dead_instances(known, dict(known), zombie) == {("quota_merge", "1", "quota_merge_0_1")}
    reloaded = {10: known[10], 20: known[11], 12: known[12]}  # a new stub for the same instance
    assert dead_instances(known, reloaded, alive) == set()
