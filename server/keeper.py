"""Restarts a server that died (a crash, or the supervisor killing a wedged tritonserver), with growing pauses so
a crash loop does not spin the host. `widefunnel serve` runs one; so does any test that checks healing end to end."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
CRASH_WINDOW_S = 300.0  # crashes counted for the backoff


class Restartable(Protocol):
    def alive(self) -> bool: ...
    def death_reason(self) -> str: ...
    def restart(self) -> object: ...


def backoff(crashes: int, steps: tuple[float, ...] = RESTART_BACKOFF_S) -> float:
    """The pause before restarting after the `crashes`-th crash in the window (1-based)."""
    return steps[min(max(crashes, 1), len(steps)) - 1]


class Keeper(threading.Thread):
    """Watches `server` every `poll_s` seconds and restarts it when it is not alive. `report(event, text)` is
    told of each death ("died") and each restart ("restarted" or "restart failed"); by default it logs."""

    def __init__(self, server: Restartable, poll_s: float = 1.0,
                 report: Callable[[str, str], None] | None = None):
        super().__init__(daemon=True, name="widefunnel-keeper")
        self.server, self.poll_s = server, poll_s
        self.report = report or (lambda event, text: log.warning("%s: %s", event, text))
        self.stopped = threading.Event()
        self.restarts = 0
        self.deaths: list[str] = []  # why it died, each time
        self._crashes: list[float] = []

    def run(self) -> None:
        from widefunnel.server.triton import ServerError

        while not self.stopped.wait(self.poll_s):
            if self.server.alive():
                continue
            now = time.monotonic()
            self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW_S] + [now]
            pause = backoff(len(self._crashes))
            self.deaths.append(self.server.death_reason())
            self.report("died", f"the server died: {self.server.death_reason()}\nrestarting in {pause:.0f}s "
                                f"({len(self._crashes)} crash(es) in {CRASH_WINDOW_S / 60:.0f} min)")
            if self.stopped.wait(pause):
                break
            try:
                self.server.restart()
                self.restarts += 1
                self.report("restarted", "restarted; serving again")
            except ServerError as exc:
                self.report("restart failed", f"restart failed: {exc}")

    def stop(self, timeout: float | None = None) -> None:
        self.stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
