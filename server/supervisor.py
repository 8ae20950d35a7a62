"""Replaces a Python stub that died (OOM kill, segfault, a tensor it could not map) and sweeps what it left.

Triton 2.51 keeps reporting such a model ready and fails every request with "Stub process ... is not healthy"
(server #7230), and does not restart the stub itself. Unloading the model would take every ensemble that uses
it down; instead the supervisor reloads it in place with a config override that differs only in the
`widefunnel_restart` parameter (Triton skips a load whose config did not change): the new stub starts beside
the dead one and the ensembles keep their state. A stub that exits because its model was unloaded or reloaded
on purpose (a swap) is left alone: a stub that vanished counts as a death only once ``grace_s`` has passed
with no stub of any version serving its instance while its version is still READY (an unloaded version stops
being READY; a swap's new version, or a reload's new stub, serves the instance).

The dead stub is reaped by the kernel (the server runs with SIGCHLD ignored), and the shared-memory region
it leaves behind in /dev/shm is removed once no process of the server maps it.

Liveness means answers: a replacement stub that dies within 0.5 s of loading is never seen by the process
scan, its model stays READY, and every ensemble request would hang. So every ``canary_every`` seconds
the supervisor also (1) reloads a model READY with no live stub for ``stubless_s``, and (2) sends each step
its canary request (`canary.canary_inputs`) on tritonserver's own gRPC port, with the gateway key and a
``canary_timeout`` deadline; a step whose stub is reported unhealthy, or that misses ``canary_failures``
deadlines in a row while another step answers, is reloaded in place. When tritonserver does not even answer
its liveness endpoint for ``wedged_s``, the whole process is wedged: ``on_wedged`` (the server's narrow
callback: kill it, so whoever restarts crashed servers restarts it) is called. Canaries never pass the gateway,
so they are not client traffic in `widefunnel_requests_total`.

Reloads run on a thread of their own, each bounded by ``load_timeout``: tritonserver 2.51's load call can hang
when a stub is killed while its model loads, and every later load of that model then queues behind it. A reload
still running after ``load_timeout`` means the server cannot repair itself in place, so it counts as wedged
(``on_wedged``); meanwhile the process scans and canary rounds go on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from widefunnel.model_configs import RESTART_PARAMETER
from widefunnel.security import admin_headers, gateway_headers, with_keys
from widefunnel.server.canary import ANSWERED, NO_ANSWER, STUB_DEAD, canary_inputs, canary_outcome, catalogue_item_id
from widefunnel.server.processes import (
    dead_instances,
    instance_stubs,
    orphan_regions,
    process_dead,
    remove_regions,
    stub_processes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorTiming:
    """How often the supervisor looks and how long it waits before it acts (module docstring)."""

    interval: float = 0.5  # one process scan
    sweep_every: int = 10  # scans between two sweeps of orphaned shared-memory regions
    grace_s: float = 5.0  # a vanished stub with no successor for this long is dead
    canary_every: float = 1.5
    canary_timeout: float = 2.0
    canary_failures: int = 2  # missed deadlines in a row (while another step answers) before a reload
    stubless_s: float = 1.0
    wedged_s: float = 6.0
    # one in-place reload: a step's index at 1M items loads in seconds; one past this is hung (module docstring)
    load_timeout: float = 60.0


@dataclass(frozen=True)
class Supervised:
    """All the supervisor sees of one started tritonserver, and its one way to act on the whole process.

    A narrow view rather than the server object, so the supervisor does not depend on how servers are started
    (and `triton.py` imports this module, never the other way)."""

    pid: Callable[[], int | None]  # the running tritonserver's pid; None once it has exited
    http_url: str  # tritonserver's own ports (host:port), not the gateway's
    grpc_url: str
    repository: Path
    shm_prefix: str  # the Python backend's shared-memory region prefix
    admin_key: str | None
    gateway_key: str | None
    on_wedged: Callable[[str], None] | None = None  # kill the server; whoever restarts crashed servers restarts it

    def admin_headers(self, protocol: str = "http") -> dict[str, str] | None:
        return admin_headers(self.admin_key, protocol)

    def upstream_headers(self, protocol: str = "http") -> dict[str, str]:
        return gateway_headers(self.gateway_key, protocol)


@dataclass
class Reload:
    """One in-place reload in flight on its own thread."""

    model: str
    started: float  # time.monotonic()
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class StubSupervisor(threading.Thread):
    def __init__(self, server: Supervised, timing: SupervisorTiming | None = None):
        super().__init__(daemon=True, name="widefunnel-stub-supervisor")
        self.server, self.timing = server, timing or SupervisorTiming()
        t = self.timing
        self.interval, self.sweep_every, self.grace_s, self.stubless_s = (t.interval, t.sweep_every, t.grace_s,
                                                                          t.stubless_s)
        self.canary_every, self.canary_timeout = t.canary_every, t.canary_timeout
        self.canary_failures, self.wedged_s, self.on_wedged = t.canary_failures, t.wedged_s, server.on_wedged
        self.load_timeout = t.load_timeout
        self.stopped = threading.Event()
        self.restarts: list[str] = []  # models reloaded in place, each when its reload returned
        self.canary_rounds = 0
        self.regions_removed = 0
        self._generation = 0
        self._configs: dict[str, tuple[frozenset[str], dict[str, np.ndarray] | None]] = {}
        self._missed: dict[str, int] = {}
        self._stubless: dict[str, float] = {}
        self._had_stub: set[str] = set()
        self._unresponsive_since: float | None = None
        self._item_id = catalogue_item_id(server.repository)
        self._reloads: dict[str, Reload] = {}

    def _ready_versions(self, client, model: str) -> set[str] | None:
        """The model's READY versions; None when the server did not say (asked again next round)."""
        index = self._index(client)
        if index is None:
            return None
        return {m.get("version") for m in index if m.get("name") == model and m.get("state") == "READY"}

    def _index(self, client) -> list[dict] | None:
        try:
            return client.get_model_repository_index(headers=self.server.admin_headers("http"))
        except Exception:
            return None

    def restart(self, client, model: str, generation: int) -> None:
        """Reload `model` in place: its served config with restart generation `generation`, pinned to the
        versions READY now (the served config may still name a version a swap has just retired)."""
        headers = self.server.admin_headers("http")
        versions = self._ready_versions(client, model)
        if not versions:
            raise RuntimeError("no READY version to reload")
        config = client.get_model_config(model, headers=headers)
        config.setdefault("parameters", {})[RESTART_PARAMETER] = {"string_value": str(generation)}
        config["version_policy"] = {"specific": {"versions": sorted(int(v) for v in versions)}}
        client.load_model(model, config=json.dumps(config), headers=headers)

    def _start_reload(self, model: str) -> None:
        """Reload `model` on a thread of its own, with a client of its own bounded by ``load_timeout``."""
        import tritonclient.http as httpclient

        self._generation += 1
        reload = Reload(model, time.monotonic())

        def run() -> None:
            wait = 2 * self.load_timeout  # the loop calls it hung at load_timeout; this only frees the thread
            client = with_keys(httpclient.InferenceServerClient(
                self.server.http_url, network_timeout=wait, connection_timeout=wait),
                gateway_key=self.server.gateway_key)
            try:
                self.restart(client, model, generation)
                self.restarts.append(model)  # at once: the step answers again from here on
            except Exception as exc:  # noqa: BLE001 - reported to the supervisor's loop, which retries
                reload.error = exc
            finally:
                client.close()
                reload.done.set()

        generation = self._generation
        self._reloads[model] = reload
        threading.Thread(target=run, daemon=True, name=f"widefunnel-reload-{model}").start()

    def _collect_reloads(self, pending: set[str], now: float) -> bool:
        """Settle the reloads that finished; True when one has hung past ``load_timeout`` (the server is
        wedged: ``on_wedged`` was called)."""
        for model, reload in list(self._reloads.items()):
            if reload.done.is_set():
                del self._reloads[model]
                if reload.error is None:
                    pending.discard(model)
                    self._configs.pop(model, None)
                    self._missed.pop(model, None)
                    self._stubless.pop(model, None)
                else:  # the next round tries again
                    log.error("restarting '%s' failed: %s", model, reload.error)
            elif now - reload.started >= self.load_timeout:
                reason = (f"reloading model '{model}' did not finish in {now - reload.started:.0f}s "
                          "(a load hung in tritonserver)")
                log.error("%s; restarting it", reason)
                if self.on_wedged is not None:
                    self.on_wedged(reason)
                self.stopped.set()
                return True
        return False

    def sweep(self, pid: int) -> None:
        removed = remove_regions(orphan_regions(pid, self.server.shm_prefix))
        if removed:
            self.regions_removed += removed
            log.warning("removed %d shared-memory region(s) left by dead stubs", removed)

    # ------------------------------------------------------------------------------------------ canaries
    def _live(self) -> bool:
        """tritonserver's own liveness endpoint answers (an overloaded server still does; a wedged one not)."""
        request = urllib.request.Request(f"http://{self.server.http_url}/v2/health/live",
                                         headers=self.server.upstream_headers("http"))
        try:
            with urllib.request.urlopen(request, timeout=self.canary_timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _canary_request(self, client, model: str, versions: frozenset[str]) -> dict[str, np.ndarray] | None:
        """The model's canary tensors, derived once per set of READY versions (a swap may change a shape)."""
        cached = self._configs.get(model)
        if cached is None or cached[0] != versions:
            config = client.get_model_config(model, headers=self.server.admin_headers("http"))
            cached = (versions, canary_inputs(config, self._item_id))
            self._configs[model] = cached
        return cached[1]

    def _send_canaries(self, grpc_client, requests: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
        """model -> outcome, all canaries in flight at once, each with the same deadline."""
        from tritonclient.grpc import InferInput
        from tritonclient.utils import np_to_triton_dtype

        results: dict[str, str] = {}
        done = threading.Event()
        lock = threading.Lock()

        def callback(model: str):
            def record(result, error) -> None:  # tritonclient passes both by keyword
                with lock:
                    results[model] = canary_outcome(error)
                    if len(results) == len(requests):
                        done.set()
            return record

        for model, tensors in requests.items():
            inputs = []
            for name, array in tensors.items():
                tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            try:
                grpc_client.async_infer(model, inputs, callback(model), client_timeout=self.canary_timeout)
            except Exception as exc:  # noqa: BLE001 - the channel itself failed: no answer
                callback(model)(None, exc)
        done.wait(self.canary_timeout + 0.2)
        with lock:
            return {model: results.get(model, NO_ANSWER) for model in requests}

    def stubless(self, client, live_models: set[str], now: float) -> set[str]:
        """Models once served by a stub that have had no live stub at all for ``stubless_s`` and are still READY
        (an unloaded model is not READY; a reload or a swap starts its new stub before the old one exits). This
        finds a replacement stub that died before any process scan saw it."""
        self._had_stub |= live_models
        for model in live_models:
            self._stubless.pop(model, None)
        out = set()
        for model in self._had_stub - live_models:
            since = self._stubless.setdefault(model, now)
            if now - since < self.stubless_s:
                continue
            ready = self._ready_versions(client, model)
            if ready:
                log.warning("model '%s' is READY with no live stub for %.1fs", model, now - since)
                out.add(model)
            elif ready is not None:  # unloaded on purpose
                self._had_stub.discard(model)
                self._stubless.pop(model, None)
        return out

    def check_answers(self, client, grpc_client) -> set[str]:
        """One canary round: the models to reload (not answering their canary). Calls ``on_wedged`` when
        tritonserver has not answered at all for ``wedged_s``."""
        now = time.monotonic()
        index = self._index(client)
        if index is None or not self._live():
            self._unresponsive_since = self._unresponsive_since or now
            if now - self._unresponsive_since >= self.wedged_s and self.on_wedged is not None:
                reason = f"tritonserver answered nothing for {now - self._unresponsive_since:.0f}s (wedged)"
                log.error("%s; restarting it", reason)
                self.on_wedged(reason)
                self.stopped.set()
            return set()
        self._unresponsive_since = None
        self.canary_rounds += 1
        ready: dict[str, frozenset[str]] = {}
        for entry in index:
            if entry.get("state") == "READY":
                ready[entry["name"]] = ready.get(entry["name"], frozenset()) | {entry.get("version")}
        reload = set()
        requests = {}
        for model, versions in ready.items():
            try:
                tensors = self._canary_request(client, model, versions)
            except Exception:  # noqa: BLE001 - unloaded meanwhile: next round
                continue
            if tensors is not None:
                requests[model] = tensors
        outcomes = self._send_canaries(grpc_client, requests) if requests else {}
        someone_answered = ANSWERED in outcomes.values()
        for model, outcome in outcomes.items():
            if outcome == ANSWERED:
                self._missed.pop(model, None)
                continue
            self._missed[model] = self._missed.get(model, 0) + 1
            # A dead stub is evidence enough; a missed deadline counts only while another step answers (an
            # overloaded server misses them all, and reloading everything would make it worse).
            if outcome == STUB_DEAD or (someone_answered and self._missed[model] >= self.canary_failures):
                log.warning("model '%s' failed its canary (%s, %d in a row)", model, outcome, self._missed[model])
                reload.add(model)
        return reload

    def run(self) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        pid = self.server.pid()
        known = instance_stubs(stub_processes(pid)) if pid is not None else {}
        gateway_key = self.server.gateway_key
        probe = with_keys(httpclient.InferenceServerClient(self.server.http_url,
                                                           network_timeout=self.canary_timeout,
                                                           connection_timeout=self.canary_timeout),
                          gateway_key=gateway_key)
        grpc_client = with_keys(grpcclient.InferenceServerClient(self.server.grpc_url),
                                gateway_key=gateway_key, protocol="grpc")
        rounds, pending, suspects = 0, set(), {}
        next_canary = time.monotonic() + self.canary_every
        while not self.stopped.wait(self.interval):
            pid = self.server.pid()
            if pid is None:
                break
            current = instance_stubs(stub_processes(pid))  # one snapshot; a stub dying after it: next round
            dead = dead_instances(known, current, process_dead)
            now = time.monotonic()
            for stub in dead:
                suspects.setdefault(stub, now)
            # (model, instance) without the version: a swap retires version 1 while version 2's stub of the same
            # instance serves, and reloads an instance by starting its new stub (an ANN index takes seconds)
            live = {(m, i) for pid, (m, _, i) in current.items() if not process_dead(pid)}
            for stub, since in list(suspects.items()):
                if (stub[0], stub[2]) in live:  # another stub serves the instance: a reload or a retire
                    del suspects[stub]
                elif now - since >= self.grace_s and (ready := self._ready_versions(probe, stub[0])) is not None:
                    del suspects[stub]
                    if stub[1] in ready:
                        pending.add(stub[0])
            pending |= self.stubless(probe, {m for pid, (m, _, _) in current.items() if not process_dead(pid)}, now)
            if now >= next_canary:
                try:
                    pending |= self.check_answers(probe, grpc_client)
                except Exception as exc:  # noqa: BLE001 - a supervisor that dies supervises nothing
                    log.error("canary round failed: %s", exc)
                if self.stopped.is_set():
                    break
                next_canary = time.monotonic() + self.canary_every
            if self._collect_reloads(pending, time.monotonic()):
                break
            for model in sorted(pending - self._reloads.keys()):
                log.warning("the Python stub of model '%s' died or stopped answering; reloading it in place", model)
                self._start_reload(model)
            rounds += 1
            if dead or rounds % self.sweep_every == 0:
                self.sweep(pid)
            known = {pid: stub for pid, stub in current.items() if not process_dead(pid)}
        for c in (probe, grpc_client):
            c.close()
