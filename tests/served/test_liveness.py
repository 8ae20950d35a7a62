"""Liveness means answers (issue 33, part 4), against a real server of its own.

Once, under 4 concurrent clients, a replacement stub died within 0.5 s of loading: `preprocess` stayed READY
with no stub and every ensemble request hung for minutes. Here stubs are SIGKILLed while they load, just
after, and under load; every client request must succeed or fail within its deadline (none hangs), and
answers must be back, identical, within 10 s. A wedged tritonserver (SIGSTOP), or a reload that hangs in
tritonserver (its new stub stopped), is killed by the supervisor, and the `Keeper` that `widefunnel serve` runs
restarts it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
from helpers import ClientThreads, admin_client, private_server, reloaded

from widefunnel.client.client import WidefunnelClient
from widefunnel.model_configs import RESTART_PARAMETER
from widefunnel.server import stub_processes
from widefunnel.server.processes import instance_stubs
from widefunnel.server.supervisor import SupervisorTiming

pytestmark = [pytest.mark.server, pytest.mark.isolated]
log = logging.getLogger(__name__)
SEEDS = [1, 50, 181]
TIMEOUT_S = 5.0  # each client request's deadline
SLACK_S = 2.0  # what a request may take beyond it (thread scheduling on a busy 2-core host)
# The goal is 10 s (benchmarks/RESULTS.md has the measured heal times); a test asserts a bound that also holds
# on a host that runs other suites beside this one (an ANN step's reload alone took 8.4 s on a busy 2-core host).
HEAL_S = 20.0
# A reload still loading after this is hung (production's default is 60 s; at this build's size a reload takes
# 1 to 8 s). Healing through a whole restart also waits for the keeper's pause and the server's start.
LOAD_TIMEOUT_S = 12.0
RESTART_S = 60.0


@pytest.fixture(scope="module")
def live_server(built_repository, tmp_path_factory):
    yield from private_server(built_repository, tmp_path_factory, "liveness", keep=True,
                              supervision=SupervisorTiming(load_timeout=LOAD_TIMEOUT_S))


@pytest.fixture(autouse=True)
def _no_hung_load(live_server):
    """Each case starts with no client load of an earlier case still hanging in tritonserver."""
    _clear_hung_loads(live_server)


def _answer(server, protocol: str = "grpc", timeout: float = TIMEOUT_S):
    with WidefunnelClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol, timeout) as c:
        return c.recommend(SEEDS, top_n=10)


class Clients(ClientThreads):
    """4 client threads (2 gRPC, 2 HTTP) sending requests with a deadline until stopped; each request's
    outcome and duration recorded."""

    join_timeout = TIMEOUT_S + 30

    def __init__(self, server, threads: int = 4):
        self.server = server
        self.records: list[tuple[str, float, bool, str]] = []
        super().__init__([("grpc" if i % 2 == 0 else "http",) for i in range(threads)])

    def _run(self, protocol: str) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                _answer(self.server, protocol)
                ok, why = True, ""
            except Exception as exc:  # noqa: BLE001 - failures are allowed, hangs are not
                ok, why = False, str(exc)[:200]
                time.sleep(0.05)
            with self.lock:
                self.records.append((protocol, time.monotonic() - start, ok, why))

    def check_none_hung(self) -> None:
        slow = [r for r in self.records if r[1] > TIMEOUT_S + SLACK_S]
        failed = [r for r in self.records if not r[2]]
        log.warning("%d requests, %d failed, slowest %.2fs; failures: %s", len(self.records), len(failed),
                    max((r[1] for r in self.records), default=0.0), sorted({r[3] for r in failed})[:3])
        assert self.records and not slow, slow[:5]


def _heal_time(server, before, since: float, bound: float = HEAL_S) -> float:
    """Seconds from ``since`` until the answer is identical to ``before``; fails after `bound` (+ a request)."""
    while time.monotonic() - since < bound:
        try:
            after = _answer(server, timeout=2.0)
            if np.array_equal(after.item_id, before.item_id) and np.array_equal(after.score, before.score):
                healed = time.monotonic() - since
                log.warning("healed %.1f s after the kill", healed)
                return healed
        except Exception:  # noqa: BLE001 - not yet
            pass
        time.sleep(0.1)
    restarts = server.supervisor.restarts if server.supervisor is not None else "(no supervisor)"
    raise AssertionError(f"not healed {bound:.0f}s after the kill; supervisor restarts: {restarts}; server "
                         f"deaths: {server.keeper.deaths}\ntritonserver log:\n{server.log_text()[-3000:]}\n"
                         f"gateway log:\n{server.gateway_log()[-3000:]}")


def _instances(server, model: str) -> set[int]:
    proc = server.process  # None while the keeper restarts the server
    if proc is None:
        return set()
    return {pid for pid, stub in instance_stubs(stub_processes(proc.pid)).items() if stub[0] == model}


def _settled(server) -> None:
    """Waits until a restart by the keeper has finished: the gateway may answer before `start` returns, and a
    fault injected then would meet a server that has no supervisor yet."""
    deadline = time.monotonic() + RESTART_S
    while (server.supervisor is None or not server.alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.supervisor is not None and server.alive(), f"not restarted: {server.keeper.deaths[-1:]}"


def _restarting(server, deaths: int) -> bool:
    """Whether the keeper has seen the server die since it had seen ``deaths`` deaths."""
    return len(server.keeper.deaths) > deaths or server.process is None


def _serving_answer(server):
    """The answer once the server serves: a test before may have left it restarting (the keeper's pause)."""
    _settled(server)
    deadline = time.monotonic() + RESTART_S
    while True:
        try:
            return _answer(server)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Reload(threading.Thread):
    """What a swap or the supervisor does: reload the served config with the admin key (a new stub starts). Its
    outcome is kept, so a failure can say whether the load was refused or is still hanging."""

    def __init__(self, server, model: str, generation: str):
        super().__init__(daemon=True, name=f"test-reload-{model}")
        self.server, self.model, self.generation = server, model, generation
        self.outcome = "still loading"
        self.started = time.monotonic()

    def run(self) -> None:
        client = admin_client(self.server)
        try:
            config = client.get_model_config(self.model)
            config.setdefault("parameters", {})[RESTART_PARAMETER] = {"string_value": self.generation}
            client.load_model(self.model, config=json.dumps(config))
            self.outcome = f"loaded in {time.monotonic() - self.started:.1f}s"
        except Exception as exc:  # noqa: BLE001 - the load may fail: its stub was killed
            self.outcome = f"failed after {time.monotonic() - self.started:.1f}s: {str(exc)[:300]}"
        finally:
            client.close()
        log.warning("reload of %s: %s", self.model, self.outcome)


_hung: list[Reload] = []  # client loads that had not returned when their test ended


def _clear_hung_loads(server) -> None:
    """tritonserver 2.51's load call can hang for good when its stub is killed while loading; it keeps answering
    from the old stub, but every later load of that model queues behind the hung one. A case that left one behind
    would make the next case's reload start no stub, so that next case restarts the server first (logged)."""
    hung = [r for r in _hung if r.is_alive()]
    _hung.clear()
    if not hung:
        return
    log.warning("a reload from an earlier case is still hanging (%s); restarting the server",
                [(r.model, f"{time.monotonic() - r.started:.0f}s") for r in hung])
    deaths = len(server.keeper.deaths)
    with contextlib.suppress(ProcessLookupError, AttributeError):
        os.kill(server.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_S
    while len(server.keeper.deaths) == deaths and time.monotonic() < deadline:
        time.sleep(0.1)
    _settled(server)


@pytest.mark.parametrize("when", ["while loading", "just loaded"])
def test_a_replacement_stub_killed_within_half_a_second_is_noticed_under_load(live_server, when):
    model = "preprocess"
    before = _serving_answer(live_server)
    old = _instances(live_server, model)
    assert old
    with Clients(live_server) as clients:
        time.sleep(1.0)
        reload = Reload(live_server, model, f"test-{when}")
        reload.start()
        deaths = len(live_server.keeper.deaths)
        new: set[int] = set()
        deadline = time.monotonic() + 60
        while not new and time.monotonic() < deadline and not _restarting(live_server, deaths):
            new = _instances(live_server, model) - old  # the new instance's stub, as soon as it exists
            time.sleep(0.01)
        # tritonserver 2.51 may stop the old stub before the new one exists; the supervisor's in-place reload then
        # meets the client's load, and that pair can hang until the supervisor restarts the whole server.
        assert new or _restarting(live_server, deaths), (
            f"the reload started no stub in 60 s; the load call: {reload.outcome}; supervisor restarts "
            f"{live_server.supervisor.restarts}\ntritonserver log:\n{live_server.log_text()[-3000:]}")
        if when == "just loaded":
            reload.join(timeout=60)
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # tritonserver 2.51's load call can hang when its stub is killed while loading: then the supervisor's reload
        # times out and the whole server restarts, which takes longer than an in-place reload.
        healed = _heal_time(live_server, before, killed, HEAL_S + LOAD_TIMEOUT_S + RESTART_S)
        reload.join(timeout=60)
        if reload.is_alive():
            _hung.append(reload)
        time.sleep(1.0)  # requests after healing, too
    clients.check_none_hung()
    restarted = live_server.keeper.deaths[deaths:]
    log.warning("%s: healed %.1fs after the kill; the load call: %s; supervisor restarts %s; server restarts %s",
                when, healed, reload.outcome, live_server.supervisor.restarts, restarted)
    if not restarted:
        assert healed <= HEAL_S, f"healed in place, but only after {healed:.1f}s"
    assert _instances(live_server, model), "no live stub serves the model"


@pytest.mark.parametrize("victim", ["preprocess", "quota_merge", "ann_engagement"])
def test_a_stub_killed_under_load_hangs_no_request_and_heals(live_server, victim):
    before = _serving_answer(live_server)
    with Clients(live_server) as clients:
        time.sleep(1.0)
        victims = _instances(live_server, victim)
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        deaths = len(live_server.keeper.deaths)
        healed = _heal_time(live_server, before, killed, HEAL_S + LOAD_TIMEOUT_S + RESTART_S)
        time.sleep(1.0)
    clients.check_none_hung()
    restarted = live_server.keeper.deaths[deaths:]
    log.warning("%s: healed %.1fs after the kill; server restarts %s", victim, healed, restarted)
    if restarted:  # the in-place reload hung in tritonserver and the supervisor restarted the server (logged)
        assert "did not finish" in restarted[0] or "SIGSEGV" in restarted[0], restarted
    else:
        assert healed <= HEAL_S, f"healed in place, but only after {healed:.1f}s"
        assert reloaded(live_server, victim), live_server.supervisor.restarts


def test_canaries_do_not_count_as_client_traffic(live_server):
    import re
    import urllib.request

    def requests_total() -> float:
        with urllib.request.urlopen(live_server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(r"^widefunnel_requests_total\{[^}]*\} (\S+)$", text, re.M))

    rounds, before = live_server.supervisor.canary_rounds, requests_total()
    deadline = time.monotonic() + 30
    while live_server.supervisor.canary_rounds < rounds + 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_server.supervisor.canary_rounds >= rounds + 3  # canaries ran ...
    assert requests_total() == before  # ... and the gateway counted none of them


def _restarted_and_answering(server, before, since: float, deaths: int) -> str:
    """Waits until the keeper has restarted the server and it answers as before; the death's reason."""
    healed = _heal_time(server, before, since, LOAD_TIMEOUT_S + server.settings.supervision.wedged_s + RESTART_S)
    assert len(server.keeper.deaths) > deaths, "answers came back without a restart"
    _settled(server)
    log.warning("restarted and answering %.1fs after the fault: %s", healed, server.keeper.deaths[-1][:300])
    return server.keeper.deaths[-1]


def test_a_reload_that_hangs_restarts_the_server(live_server):
    """The supervisor's own in-place reload never finishes (its new stub is stopped while it loads): after
    ``load_timeout`` the server counts as wedged, is killed, and the keeper starts it again. tritonserver 2.51
    sometimes crashes (SIGSEGV) on that reload before a stub can be stopped: the keeper restarts it then too.
    (The decision itself, a reload past ``load_timeout`` is a wedge, is tested without a server in
    tests/unit/test_supervisor_reloads.py.)"""
    model = "preprocess"
    before = _serving_answer(live_server)
    deaths = len(live_server.keeper.deaths)
    old = _instances(live_server, model)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    new: set[int] = set()
    while not new and time.monotonic() - killed < 30 and len(live_server.keeper.deaths) == deaths:
        new = _instances(live_server, model) - old  # the supervisor's replacement, stopped as soon as it exists
        time.sleep(0.01)
    for pid in new:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    reason = _restarted_and_answering(live_server, before, killed, deaths)
    assert f"reloading model '{model}' did not finish" in reason or "SIGSEGV" in reason, reason


def test_a_wedged_tritonserver_is_killed_and_restarted(live_server):
    """It takes the server down and brings it back (through the keeper, as `widefunnel serve` does)."""
    before = _serving_answer(live_server)
    deaths = len(live_server.keeper.deaths)
    os.kill(live_server.process.pid, signal.SIGSTOP)  # answers nothing, and is not dead
    stopped = time.monotonic()
    reason = _restarted_and_answering(live_server, before, stopped, deaths)
    assert "wedged" in reason, reason
