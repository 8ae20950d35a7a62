"""Local simulation of the sharded deployment: S shard servers and one router server on free loopback ports,
from one built repository (what docker/k8s runs as S shard Deployments and a router Deployment).

The shard and router repositories are derived with `widefunnel.builders.shards` (`widefunnel shard-layout`);
ports are picked before the repositories are written, because the router's config names its shards' gRPC URLs.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from widefunnel.layout import CONFIG_FILE
from widefunnel.security import new_key, with_admin_key
from widefunnel.server import Ports, ServerError, TritonServer


def _parallel(calls: list) -> None:
    """Run callables in threads (server starts are mostly waiting); re-raise the first failure."""
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@dataclass
class LocalCluster:
    """``start()`` writes the layout under ``workdir`` (a temporary one by default) and starts shards, then
    the router; ``stop()`` stops the router first, then the shards."""

    source: Path
    shards: int
    workdir: Path | None = None
    allow_partial: bool = False
    timeout_s: float = 5.0
    instances: int = 2
    extra_args: list[str] = field(default_factory=list)
    admin_key: str | None = None  # one key for every server of the cluster; None: a fresh one
    shard_servers: list[TritonServer] = field(default_factory=list)
    router: TritonServer | None = None
    _own_workdir: bool = False

    @property
    def shard_urls(self) -> list[str]:
        return [s.grpc_url for s in self.shard_servers]

    def prepare(self):
        """Pick ports and write the shard and router repositories (idempotent); returns the layout."""
        from widefunnel.builders.shards import write_sharded

        if self.workdir is None:
            self.workdir, self._own_workdir = Path(tempfile.mkdtemp(prefix="widefunnel-cluster-")), True
        if not self.shard_servers:
            from widefunnel.builders.shards import layout

            lay = layout(self.workdir, self.shards)
            self.admin_key = self.admin_key or new_key()
            # Shards take traffic from the router only (loopback here, a NetworkPolicy on Kubernetes): no
            # gateway hop; the router's gateway checks what clients send before it is fanned out.
            self.shard_servers = [TritonServer(repo, Ports().resolved(), gateway=False, admin_key=self.admin_key,
                                               extra_args=list(self.extra_args))
                                  for repo in lay.shard_repositories]
            self.router = TritonServer(lay.router_repository, Ports().resolved(), admin_key=self.admin_key,
                                       extra_args=list(self.extra_args))
        return write_sharded(self.source, self.workdir, self.shards, self.shard_urls, **self._router_options())

    def _router_options(self) -> dict:
        return {"allow_partial": self.allow_partial, "timeout_s": self.timeout_s, "instances": self.instances}

    def start(self) -> LocalCluster:
        self.prepare()
        try:
            _parallel([s.start for s in self.shard_servers])
            self.router.start()
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        return all(s.alive() for s in self.shard_servers) and self.router is not None and self.router.alive()

    def failure_reason(self) -> str:
        servers = [("router", self.router)] + [(f"shard {i}", s) for i, s in enumerate(self.shard_servers)]
        return "\n".join(f"{name}: {srv.failure_reason()}" for name, srv in servers if srv is not None
                         and not srv.alive())

    def endpoints(self) -> dict[str, dict[str, str]]:
        out = {f"shard {i}": {"http": s.http_url, "grpc": s.grpc_url, "metrics": s.metrics_url}
               for i, s in enumerate(self.shard_servers)}
        out["router"] = {"http": self.router.http_url, "grpc": self.router.grpc_url,
                         "metrics": self.router.metrics_url}
        return out

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        _parallel([s.stop for s in self.shard_servers])
        for server in [self.router, *self.shard_servers]:
            if server is not None:
                server.cleanup()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ roll-out
    def roll_out(self, timeout: float = 120.0) -> dict[str, list[int]]:
        """After a new build landed in ``source``: every shard loads it beside the old; once every shard reports
        it ready, the router loads its new version (the switch); only then are dropped versions pruned."""
        from widefunnel.builders.shards import write_sharded

        lay = write_sharded(self.source, self.workdir, self.shards, self.shard_urls, prune=False,
                            **self._router_options())
        wanted = load_shards(self.shard_servers, lay.shard_repositories, timeout)
        names = _model_dirs(self.source)
        load_router(self.router, lay.router_repository, names)
        write_sharded(self.source, self.workdir, self.shards, self.shard_urls, prune=True, **self._router_options())
        load_router(self.router, lay.router_repository, names)
        load_shards(self.shard_servers, lay.shard_repositories, timeout)
        return wanted


def _model_dirs(repository: Path) -> list[str]:
    return sorted(p.name for p in Path(repository).iterdir() if (p / CONFIG_FILE).is_file())


def load_shards(servers: list[TritonServer], repositories: list[Path], timeout: float = 120.0
                ) -> dict[str, list[int]]:
    """(Re)load every ANN model on every shard, then wait until every shard reports every version on its disk
    ready -> {model: versions}."""
    import tritonclient.http as http

    from widefunnel.builders.shards import versions

    wanted = {m: versions(Path(repositories[0]) / m) for m in _model_dirs(repositories[0])}

    def load(server: TritonServer) -> None:
        with http.InferenceServerClient(server.http_url, network_timeout=timeout, connection_timeout=timeout) as c:
            with_admin_key(c, server.admin_key)
            for model in wanted:
                c.load_model(model)

    _parallel([lambda s=s: load(s) for s in servers])
    deadline = time.monotonic() + timeout
    for server in servers:
        with http.InferenceServerClient(server.http_url) as c:
            for model, vs in wanted.items():
                for v in vs:
                    while not c.is_model_ready(model, str(v)):
                        if time.monotonic() > deadline:
                            raise ServerError(f"{server.grpc_url}: {model} version {v} not ready after {timeout}s")
                        time.sleep(0.1)
    return wanted


def load_router(server: TritonServer, repository: Path, names: list[str] | None = None) -> None:
    """(Re)load ``names`` (default: every model of the router repository): steps first (an ANN router loads a
    new version only once every shard has it ready), ensembles last."""
    import tritonclient.http as http

    from widefunnel.builders.shards import read_config

    names = names or _model_dirs(repository)
    ensembles = [n for n in names if read_config(Path(repository) / n).platform == "ensemble"]
    with http.InferenceServerClient(server.http_url, network_timeout=300, connection_timeout=300) as c:
        with_admin_key(c, server.admin_key)
        for name in [n for n in names if n not in ensembles] + ensembles:
            c.load_model(name)
