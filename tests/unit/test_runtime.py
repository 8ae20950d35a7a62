"""The embedded server runtime without starting it: the backend directory we assemble, dead-stub detection.
Starting it (taken ports, models that fail to load): tests/served/test_runtime_served.py."""

from __future__ import annotations

from widefunnel.server.distribution import assemble_backends
from widefunnel.server.processes import dead_instances


def test_backend_directory_has_matching_stub_and_our_backends(tmp_path):
    target = assemble_backends(tmp_path / "backends")
    assert (target / "python" / "triton_python_backend_stub").exists()
    assert (target / "python" / "libtriton_python.so").exists()
    assert (target / "onnxruntime" / "model.py").exists()
    assert (target / "widefunnel_ann" / "model.py").exists()


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
