"""Helpers of the served tier that are not fixtures: a private server on a copy of the build, an admin client.

Served test modules import them as `from helpers import admin_client, private_server` (pytest puts this folder on
sys.path); `tests/served/conftest.py` re-exports them, so `from conftest import ...` keeps working there too.
"""

from __future__ import annotations

import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path


def private_server(built_repository: Path, tmp_path_factory, name: str, keep: bool = False, **options):
    """A server of its own on a private copy of the build, for tests that break artifacts, unload models,
    kill stubs or crash the server (module-scoped fixtures yield from this). `options` are `ServerSettings`
    fields; with `keep`, a `Keeper` restarts the server when it dies, as `widefunnel serve` does (`srv.keeper`)."""
    from widefunnel.server import Keeper, TritonServer

    repo = tmp_path_factory.mktemp(name) / "repo"
    shutil.copytree(built_repository, repo)
    srv = TritonServer(repo, **options)
    srv.start()
    srv.keeper = Keeper(srv, poll_s=0.5) if keep else None
    if srv.keeper is not None:
        srv.keeper.start()
    yield srv
    if srv.keeper is not None:
        srv.keeper.stop(timeout=srv.settings.startup_timeout)
    srv.stop()
    srv.cleanup()


def admin_client(server, protocol: str = "http"):
    """A tritonclient client of `server` that sends its admin key (repository, config, shared-memory APIs)."""
    from widefunnel.security import with_admin_key

    if protocol == "grpc":
        import tritonclient.grpc as grpc

        return with_admin_key(grpc.InferenceServerClient(server.grpc_url), server.admin_key, "grpc")
    import tritonclient.http as http

    return with_admin_key(http.InferenceServerClient(server.http_url, network_timeout=300.0,
                                                     connection_timeout=300.0), server.admin_key)


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    """(status, body text) of a raw HTTP POST: what a hand-made or hostile request gets back."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def reloaded(server, model: str, within: float = 10.0) -> bool:
    """Whether the supervisor records an in-place reload of `model` within `within` seconds: the step may answer
    a moment before the reload's call returns to the supervisor's thread."""
    import time

    deadline = time.monotonic() + within
    while model not in server.supervisor.restarts and time.monotonic() < deadline:
        time.sleep(0.1)
    return model in server.supervisor.restarts


class ClientThreads:
    """Client threads that each run ``self._run(*args)`` until ``stop`` is set (a subclass's request loop, which
    records what it saw under ``lock``). Leaving the ``with`` block stops them and fails if one is still waiting on
    a request after ``join_timeout`` seconds: a hang."""

    join_timeout = 60.0

    def __init__(self, thread_args: list[tuple]):
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=args, daemon=True) for args in thread_args]

    def _run(self, *args) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.join_timeout)
        hung = [t for t in self.threads if t.is_alive()]
        assert not hung, f"{len(hung)} client thread(s) still waiting on a request"
