"""One served repository: tritonserver on loopback, the gateway in front of it, the stub supervisor beside it.

Clients reach the gateway's HTTP, gRPC and metrics ports (bound to `host`); tritonserver's own ports are
bound to 127.0.0.1, its control-plane APIs need the admin key and every other API a per-server gateway key
(`widefunnel.security`) that the gateway gets in its environment, so a local process cannot skip the
gateway's checks. The metrics port serves tritonserver's series followed by the gateway's
(`widefunnel_requests_total`). `gateway=False` exposes tritonserver itself, control plane still restricted,
inference open, for trusted callers (shards behind a router, benchmarks of the server alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from widefunnel.security import GATEWAY_KEY_ENV, admin_headers, gateway_headers, restriction_flags
from widefunnel.server.distribution import DistributionError, TritonDistribution, assemble_backends, server_environment
from widefunnel.server.ports import Ports, free_port, port_in_use
from widefunnel.server.processes import remove_regions, shm_regions
from widefunnel.server.settings import LOOPBACK, ServerSettings
from widefunnel.server.supervisor import StubSupervisor, Supervised

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The server could not start or stopped; the message carries the server's own reason."""


# tritonserver starts with SIGCHLD ignored: that survives exec, so the kernel reaps the server's dead stubs (Triton
# 2.51 never waits for a stub that died on its own: it stays a zombie). A fresh interpreter sets it and execs the
# server (same pid), instead of a preexec_fn: that runs Python in the forked child of a threaded process (gRPC
# clients, the supervisor) and crashed there now and then (SIGSEGV in the child, the server "exited with -11").
_EXEC_IGNORING_SIGCHLD = ("import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
                          "os.execv(sys.argv[1], sys.argv[1:])")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = (" (a crash inside tritonserver: deeply nested JSON on its own port, a body of 4 MiB or more, or a "
                "reload racing a dead stub)") if name == "SIGSEGV" else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


class TritonServer:
    """The running `tritonserver` child process (and its gateway) of one `ServerSettings`; a context manager,
    or start()/stop(). ``TritonServer(repository, ports, **options)`` builds the settings from the options
    given, so every default stays in `ServerSettings`."""

    def __init__(self, settings: ServerSettings | Path | str, ports: Ports | None = None, **options: Any):
        if not isinstance(settings, ServerSettings):
            settings = ServerSettings(Path(settings), **({"ports": ports} if ports is not None else {}), **options)
        elif ports is not None or options:
            settings = replace(settings, **({"ports": ports} if ports is not None else {}), **options)
        self.settings = settings
        self.ports: Ports = settings.ports  # resolved at the first start, then kept across restarts
        self.triton_ports = Ports()  # tritonserver's own, picked at each start
        self.shm_prefix = f"widefunnel_{os.getpid()}_{secrets.token_hex(4)}_"  # this server's, not the settings'
        self.log_path: Path | None = settings.log_path
        self.process: subprocess.Popen | None = None
        self.gateway_process: subprocess.Popen | None = None
        self.supervisor: StubSupervisor | None = None
        self.wedged_reason: str | None = None  # why the supervisor killed a tritonserver that answered nothing
        self._workdir: Path | None = None

    def __repr__(self) -> str:
        return f"TritonServer({self.settings.repository}, http={self.http_url}, grpc={self.grpc_url})"

    @property
    def repository(self) -> Path:
        return self.settings.repository

    @property
    def admin_key(self) -> str:
        return self.settings.admin_key

    @property
    def gateway_key(self) -> str | None:
        return self.settings.gateway_key

    @property
    def gateway(self) -> bool:
        return self.settings.gateway

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def connect_host(self) -> str:
        return self.settings.connect_host

    @property
    def http_url(self) -> str:
        return f"{self.connect_host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.connect_host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.connect_host}:{self.ports.metrics}/metrics"

    @property
    def triton_http_url(self) -> str:
        """tritonserver's own HTTP endpoint (loopback; the gateway's upstream)."""
        return f"{LOOPBACK}:{self.triton_ports.http}"

    @property
    def triton_grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.triton_ports.grpc}"

    def admin_headers(self, protocol: str = "http") -> dict[str, str] | None:
        return admin_headers(self.admin_key, protocol)

    def upstream_headers(self, protocol: str = "http") -> dict[str, str]:
        """What a call to tritonserver's own port must carry (the gateway key; nothing without a gateway)."""
        return gateway_headers(self.gateway_key, protocol)

    def exposure(self) -> list[str]:
        """What listens where, for `serve` to print."""
        front = "gateway" if self.gateway else "tritonserver"
        return [f"HTTP    http://{self.host}:{self.ports.http}  ({front})",
                f"gRPC    {self.host}:{self.ports.grpc}  ({front})",
                f"metrics http://{self.host}:{self.ports.metrics}/metrics  ({front})",
                "open: inference, health, metadata, statistics, metrics; admin key needed: "
                "model-repository, model-config, shared-memory, logging, trace",
                *(["tritonserver's own ports: loopback, answering only the gateway (gateway key)"]
                  if self.gateway else [])]

    def command(self, backend_dir: Path) -> list[str]:
        dist = TritonDistribution.find()
        settings, address = self.settings, self.settings.triton_address
        cmd = [
            str(dist.binary),
            f"--model-repository={settings.repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={address}",
            f"--http-port={self.triton_ports.http}",
            f"--grpc-address={address}",
            f"--grpc-port={self.triton_ports.grpc}",
            f"--metrics-address={address}",
            f"--metrics-port={self.triton_ports.metrics}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *restriction_flags(self.admin_key, self.gateway_key),
        ]
        if settings.explicit:
            cmd += ["--model-control-mode=explicit", "--load-model=*"]
        return cmd + list(settings.extra_args)

    def gateway_command(self) -> list[str]:
        return [sys.executable, "-m", "widefunnel.gateway",
                "--http", f"{self.host}:{self.ports.http}", "--grpc", f"{self.host}:{self.ports.grpc}",
                "--metrics", f"{self.host}:{self.ports.metrics}",
                "--http-upstream", self.triton_http_url, "--grpc-upstream", self.triton_grpc_url,
                "--metrics-upstream", f"{LOOPBACK}:{self.triton_ports.metrics}",
                "--repository", str(self.repository), "--max-body-bytes", str(self.settings.limits.max_body_bytes)]

    def _check_ports(self) -> None:
        for name in ("http", "grpc", "metrics"):
            port = getattr(self.ports, name)
            if port_in_use(port, self.host if self.host not in ("::",) else "0.0.0.0"):
                raise ServerError(f"{name} port {port} is already in use; pick another with --{name}-port")

    def start(self) -> TritonServer:
        repository = self.repository
        if not (repository.is_dir() and any(repository.iterdir())):
            raise ServerError(f"model repository {repository} is missing or empty: run `widefunnel build` first")
        self.ports = self.ports.resolved()
        self._check_ports()
        self.wedged_reason = None
        self.triton_ports = Ports(free_port(), free_port(), free_port()) if self.gateway else \
            Ports(self.ports.http, self.ports.grpc, self.ports.metrics)
        self._workdir = Path(tempfile.mkdtemp(prefix="widefunnel-server-"))
        try:
            backend_dir = assemble_backends(self._workdir / "backends")
        except DistributionError as exc:
            raise ServerError(str(exc)) from exc
        self.log_path = self.settings.log_path or self._workdir / "tritonserver.log"
        env = server_environment(dict(self.settings.env))
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen([sys.executable, "-c", _EXEC_IGNORING_SIGCHLD, *self.command(backend_dir)],
                                            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self.wait_ready(f"http://{self.triton_http_url}/v2/health/ready", "tritonserver",
                            headers=self.upstream_headers())
            if self.gateway:
                self._start_gateway()
        except BaseException:
            self.stop()
            raise
        if self.settings.supervise_stubs:
            self.supervisor = StubSupervisor(self._supervised(), self.settings.supervision)
            self.supervisor.start()
        return self

    def _start_gateway(self) -> None:
        env = dict(os.environ)  # the key in the environment, not argv: /proc/<pid>/environ is the owner's only
        env[GATEWAY_KEY_ENV] = self.gateway_key
        with open(self._workdir / "gateway.log", "ab") as log_file:
            self.gateway_process = subprocess.Popen(self.gateway_command(), stdout=log_file, env=env,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(f"http://{self.http_url}/v2/health/ready", "gateway", self.gateway_process)

    def _supervised(self) -> Supervised:
        return Supervised(pid=self._running_pid, http_url=self.triton_http_url, grpc_url=self.triton_grpc_url,
                          repository=self.repository, shm_prefix=self.shm_prefix, admin_key=self.admin_key,
                          gateway_key=self.gateway_key, on_wedged=self._kill_wedged)

    def _running_pid(self) -> int | None:
        proc = self.process
        return proc.pid if proc is not None and proc.poll() is None else None

    def log_text(self) -> str:
        if self.log_path and Path(self.log_path).exists():
            return Path(self.log_path).read_text(errors="replace")
        return ""

    def gateway_log(self) -> str:
        path = self._workdir / "gateway.log" if self._workdir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def failure_reason(self) -> str:
        """The server's own words: model load failures first, else the log's tail."""
        lines = self.log_text().splitlines()
        noise = ("CUDA", "CudaDriverHelper", "pinned memory")  # no GPU here: expected, not a failure
        reasons = [ln for ln in lines if (ln[:1] == "E" or "failed to load" in ln or "UNAVAILABLE" in ln
                                          or "Address already in use" in ln) and not any(n in ln for n in noise)]
        reasons += [ln for ln in lines if ln.startswith("error:")]
        picked = reasons or lines[-25:]
        return "\n".join(dict.fromkeys(picked))

    def _kill_wedged(self, reason: str) -> None:
        """The supervisor's one way to act on the whole server: a tritonserver that answers nothing is killed,
        so that `alive()` turns False and whoever restarts crashed servers (`widefunnel serve`, Kubernetes)
        restarts it, saying why."""
        self.wedged_reason = reason
        proc = self.process
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def death_reason(self) -> str:
        """Why a server that was serving is gone: which process, how it ended, the last log lines."""
        parts = [f"the stub supervisor killed tritonserver: {self.wedged_reason}"] if self.wedged_reason else []
        for name, proc, text in (("tritonserver", self.process, self.log_text()),
                                 ("gateway", self.gateway_process, self.gateway_log())):
            if proc is not None and proc.poll() is not None:
                tail = "\n".join(text.splitlines()[-8:])
                parts.append(f"{name} {describe_exit(proc.returncode)}; last log lines:\n{tail}")
        return "\n".join(parts) or "both processes are running"

    def is_ready(self) -> bool:
        return self._ready(f"http://{self.http_url}/v2/health/ready")

    def _ready(self, url: str, headers: dict[str, str] | None = None) -> bool:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.probe_timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, url: str | None = None, what: str = "tritonserver",
                   proc: subprocess.Popen | None = None, headers: dict[str, str] | None = None) -> None:
        url = url or f"http://{self.http_url}/v2/health/ready"
        proc = proc or self.process
        timeout = self.settings.startup_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                reason = self.failure_reason() if proc is self.process else self.gateway_log()[-3000:]
                raise ServerError(f"{what} exited with code {proc.returncode} before it was ready:\n{reason}")
            if self._ready(url, headers):
                return
            time.sleep(self.settings.ready_poll_s)
        raise ServerError(f"{what} not ready after {timeout:.0f}s:\n{self.failure_reason()}")

    def alive(self) -> bool:
        server = self.process is not None and self.process.poll() is None
        front = not self.gateway or (self.gateway_process is not None and self.gateway_process.poll() is None)
        return server and front

    def _stop_supervisor(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stopped.set()
            self.supervisor = None

    @staticmethod
    def _end(proc: subprocess.Popen, sig: int, timeout: float) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Children (the stubs) live in the process's group; make sure none outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGINT lets Triton drain in-flight requests; SIGKILL only if it hangs. The gateway stops first,
        so no new request arrives while Triton drains."""
        self._stop_supervisor()
        gateway, self.gateway_process = self.gateway_process, None
        if gateway is not None:
            self._end(gateway, signal.SIGTERM, self.settings.gateway_stop_timeout)
        proc, self.process = self.process, None
        timeout = self.settings.stop_timeout if timeout is None else timeout
        code = self._end(proc, signal.SIGINT, timeout) if proc is not None else None
        remove_regions(shm_regions(self.shm_prefix))
        return code

    def restart(self) -> TritonServer:
        """After a crash: stop what is left and start again on the same client-facing ports."""
        self.stop(timeout=self.settings.restart_stop_timeout)
        self.cleanup()
        return self.start()

    def kill(self) -> None:
        """Simulate a crash (SIGKILL to both process groups, stubs included)."""
        self._stop_supervisor()
        for attr in ("gateway_process", "process"):
            proc = getattr(self, attr)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                setattr(self, attr, None)
        remove_regions(shm_regions(self.shm_prefix))

    def cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.log_path = self.settings.log_path

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()
