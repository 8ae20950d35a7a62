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
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING

from widefunnel.model_configs import RESTART_PARAMETER
from widefunnel.server.processes import (
    dead_instances,
    instance_stubs,
    orphan_regions,
    process_dead,
    remove_regions,
    stub_processes,
)

if TYPE_CHECKING:
    from widefunnel.server.triton import TritonServer

log = logging.getLogger(__name__)


class StubSupervisor(threading.Thread):
    def __init__(self, server: TritonServer, interval: float = 0.5, sweep_every: int = 10, grace_s: float = 5.0):
        super().__init__(daemon=True, name="widefunnel-stub-supervisor")
        self.server, self.interval, self.sweep_every, self.grace_s = server, interval, sweep_every, grace_s
        self.stopped = threading.Event()
        self.restarts: list[str] = []
        self.regions_removed = 0
        self._generation = 0

    def _ready_versions(self, client, model: str) -> set[str] | None:
        """The model's READY versions; None when the server did not say (asked again next round)."""
        try:
            index = client.get_model_repository_index(headers=self.server.admin_headers("http"))
        except Exception:
            return None
        return {m.get("version") for m in index if m.get("name") == model and m.get("state") == "READY"}

    def restart(self, client, model: str) -> None:
        """Reload `model` in place: its served config with a new restart generation, pinned to the versions
        READY now (the served config may still name a version a swap has just retired)."""
        headers = self.server.admin_headers("http")
        versions = self._ready_versions(client, model)
        if not versions:
            raise RuntimeError("no READY version to reload")
        config = client.get_model_config(model, headers=headers)
        self._generation += 1
        config.setdefault("parameters", {})[RESTART_PARAMETER] = {"string_value": str(self._generation)}
        config["version_policy"] = {"specific": {"versions": sorted(int(v) for v in versions)}}
        client.load_model(model, config=json.dumps(config), headers=headers)

    def sweep(self, pid: int) -> None:
        removed = remove_regions(orphan_regions(pid, self.server.shm_prefix))
        if removed:
            self.regions_removed += removed
            log.warning("removed %d shared-memory region(s) left by dead stubs", removed)

    def run(self) -> None:
        import tritonclient.http as httpclient

        proc = self.server.process
        known = instance_stubs(stub_processes(proc.pid)) if proc is not None else {}
        client = httpclient.InferenceServerClient(self.server.triton_http_url, network_timeout=300.0,
                                                  connection_timeout=300.0)
        rounds, pending, suspects = 0, set(), {}
        while not self.stopped.wait(self.interval):
            proc = self.server.process
            if proc is None or proc.poll() is not None:
                break
            current = instance_stubs(stub_processes(proc.pid))  # one snapshot; a stub dying after it: next round
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
                elif now - since >= self.grace_s and (ready := self._ready_versions(client, stub[0])) is not None:
                    del suspects[stub]
                    if stub[1] in ready:
                        pending.add(stub[0])
            for model in sorted(pending):
                log.warning("the Python stub of model '%s' died; reloading the model in place", model)
                try:
                    self.restart(client, model)
                    self.restarts.append(model)
                    pending.discard(model)
                except Exception as exc:  # the next round tries again
                    log.error("restarting '%s' failed: %s", model, exc)
            rounds += 1
            if dead or rounds % self.sweep_every == 0:
                self.sweep(proc.pid)
            known = {pid: stub for pid, stub in current.items() if not process_dead(pid)}
        client.close()
