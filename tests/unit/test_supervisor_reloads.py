"""The supervisor's reload bookkeeping, without a server: a reload that finishes is settled, one that fails is
retried, and one still running after ``load_timeout`` makes the server count as wedged (tritonserver 2.51's load
call can hang when a stub dies while its model loads; tests/served/test_liveness.py shows the whole path)."""

from __future__ import annotations

from pathlib import Path

from widefunnel.server.supervisor import Reload, StubSupervisor, Supervised, SupervisorTiming


def _supervisor(tmp_path: Path, wedged: list[str]) -> StubSupervisor:
    view = Supervised(pid=lambda: None, http_url="127.0.0.1:1", grpc_url="127.0.0.1:2", repository=tmp_path,
                      shm_prefix="test_", admin_key="a", gateway_key="g", on_wedged=wedged.append)
    return StubSupervisor(view, SupervisorTiming(load_timeout=10.0))


def test_a_finished_reload_leaves_pending(tmp_path):
    wedged: list[str] = []
    supervisor = _supervisor(tmp_path, wedged)
    supervisor._reloads["preprocess"] = done = Reload("preprocess", started=100.0)
    done.done.set()
    pending = {"preprocess"}
    assert not supervisor._collect_reloads(pending, now=101.0)
    assert not pending and not supervisor._reloads and not wedged  # (its thread recorded it in `restarts`)


def test_a_failed_reload_stays_pending_for_the_next_round(tmp_path):
    wedged: list[str] = []
    supervisor = _supervisor(tmp_path, wedged)
    supervisor._reloads["quota_merge"] = failed = Reload("quota_merge", started=100.0, error=RuntimeError("no"))
    failed.done.set()
    pending = {"quota_merge"}
    assert not supervisor._collect_reloads(pending, now=101.0)
    assert pending == {"quota_merge"} and not supervisor.restarts and not supervisor._reloads and not wedged


def test_a_reload_running_past_the_bound_wedges_the_server(tmp_path):
    wedged: list[str] = []
    supervisor = _supervisor(tmp_path, wedged)
    supervisor._reloads["ann_engagement"] = Reload("ann_engagement", started=100.0)
    pending = {"ann_engagement"}
    assert not supervisor._collect_reloads(pending, now=109.9)  # still within the bound: wait
    assert not wedged and not supervisor.stopped.is_set()
    assert supervisor._collect_reloads(pending, now=110.0)
    assert len(wedged) == 1 and "reloading model 'ann_engagement' did not finish in 10s" in wedged[0]
    assert supervisor.stopped.is_set() and not supervisor.restarts
