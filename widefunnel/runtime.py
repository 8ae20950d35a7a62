"""The embedded Triton server: the `tritonserver` binary shipped in the nvidia-pytriton wheel.

The server is started as a child process with a backend directory assembled here (the Python backend,
the stub matching this interpreter, and this project's Python-based backends from `plugins/`), so the
same model repository runs here and on NVIDIA's image, where native backends win for the same config.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def plugins_dir() -> Path:
    """`plugins/` at the repository root, installed as the package `widefunnel.plugins`."""
    spec = importlib.util.find_spec("widefunnel.plugins")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "plugins"

# Python-based backends this project ships; each is `<name>/model.py` in the backend directory.
PYTHON_BASED_BACKENDS = ("onnxruntime", "widefunnel_ann")


class ServerError(RuntimeError):
    """The server could not start or stopped; the message carries the server's own reason."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pytriton wheel keeps the server binary, its libraries and the Python backend."""

    root: Path

    @classmethod
    def find(cls) -> TritonDistribution:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise ServerError("nvidia-pytriton is not installed: run `make env` (pip install nvidia-pytriton==0.7.0)")
        return cls(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise ServerError(f"no Python backend stub for Python {version} in {stub.parent.parent}")
        return stub


def assemble_backends(target: Path, dist: TritonDistribution | None = None) -> Path:
    """Build `--backend-directory`: python/ (library, utils, matching stub) plus our Python-based backends."""
    dist = dist or TritonDistribution.find()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    source = dist.root / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(source / name, python_dir / name)
    shutil.copy2(dist.stub(), python_dir / "triton_python_backend_stub")
    for backend in PYTHON_BASED_BACKENDS:
        (target / backend).mkdir(exist_ok=True)
        shutil.copy2(plugins_dir() / backend / "model.py", target / backend / "model.py")
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class Ports:
    http: int = 0
    grpc: int = 0
    metrics: int = 0

    def resolved(self) -> Ports:
        return Ports(*(p or free_port() for p in (self.http, self.grpc, self.metrics)))


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stub must import this venv's packages (numpy, onnxruntime, widefunnel) and write no bytecode."""
    env = dict(os.environ)
    libs = str(TritonDistribution.find().libs)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["WIDEFUNNEL_SITE"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # stubs share few cores: spinning OpenMP threads starve them
    env.update(extra or {})
    return env


Stub = tuple[str, str, str]  # (model, version, instance name), e.g. ("quota_merge", "1", "quota_merge_0_1")


def stub_processes(server_pid: int) -> dict[int, Stub]:
    """pid -> (model, version, instance) of each Python-backend stub the server runs: its argv names the
    model file (argv[1]) and the instance (argv[8], "<model>_<group>_<index>")."""
    out = {}
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    try:
        pids = [int(p) for p in children.read_text().split()]
    except OSError:
        return out
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
            model_file = Path(argv[1].decode(errors="replace"))
            instance = argv[8].decode(errors="replace") if len(argv) > 8 else ""
            out[pid] = (model_file.parent.parent.name, model_file.parent.name, instance)
    return out


def dead_stubs(known: dict[int, Stub], current: dict[int, Stub], dead: Callable[[int], bool]
               ) -> set[tuple[str, str]]:
    """(model, version) pairs with an instance whose stub died since ``known`` was taken.

    Keyed by instance, so one dead instance among several of a version is found. A reload (a swap staging
    versions) starts the instance's new stub before the old one exits: an instance that still has a live
    stub did not die."""
    live = {stub for pid, stub in current.items() if not dead(pid)}
    return {(m, v) for pid, (m, v, i) in known.items()
            if (pid not in current or dead(pid)) and (m, v, i) not in live}


def tree_rss_kib(pid: int) -> int:
    """Resident memory of the server and its direct children (the Python stubs), KiB."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + ([int(p) for p in children.read_text().split()] if children.exists() else [])
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
    return total


def process_dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


class StubSupervisor(threading.Thread):
    """Restarts a model whose Python stub died (OOM kill, segfault).

    Triton 2.51 keeps reporting such a model ready and fails every request with "Stub process ... is not
    healthy" (server #7230); unloading and loading the model starts a fresh stub. A stub that exits because
    its model was unloaded on purpose (a swap) is left alone: only models still READY are restarted."""

    def __init__(self, server: TritonServer, interval: float = 0.5):
        super().__init__(daemon=True, name="widefunnel-stub-supervisor")
        self.server, self.interval = server, interval
        self.stopped = threading.Event()
        self.restarts: list[str] = []

    def _ready(self, client, model: str, version: str) -> bool:
        try:
            return any(m.get("name") == model and m.get("version") == version and m.get("state") == "READY"
                       for m in client.get_model_repository_index())
        except Exception:
            return False

    def run(self) -> None:
        import tritonclient.http as httpclient

        proc = self.server.process
        known = stub_processes(proc.pid) if proc is not None else {}
        client = httpclient.InferenceServerClient(self.server.http_url)
        while not self.stopped.wait(self.interval):
            proc = self.server.process
            if proc is None or proc.poll() is not None:
                break
            dead = dead_stubs(known, stub_processes(proc.pid), process_dead)
            for model in sorted({m for m, v in dead if self._ready(client, m, v)}):
                print(f"widefunnel: the Python stub of model '{model}' died; restarting the model", file=sys.stderr)
                try:
                    client.unload_model(model)
                    client.load_model(model)
                    self.restarts.append(model)
                except Exception as exc:  # the next round tries again
                    print(f"widefunnel: restarting '{model}' failed: {exc}", file=sys.stderr)
            known = {pid: stub for pid, stub in stub_processes(proc.pid).items() if not process_dead(pid)}
        client.close()


@dataclass
class TritonServer:
    """A running `tritonserver` child process; use as a context manager or call start()/stop()."""

    repository: Path
    ports: Ports = field(default_factory=Ports)
    explicit: bool = True
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 180.0
    supervise_stubs: bool = True
    process: subprocess.Popen | None = None
    supervisor: StubSupervisor | None = None
    _workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def command(self, backend_dir: Path) -> list[str]:
        dist = TritonDistribution.find()
        cmd = [
            str(dist.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        if self.explicit:
            cmd += ["--model-control-mode=explicit", "--load-model=*"]
        return cmd + self.extra_args

    def start(self) -> TritonServer:
        repository = Path(self.repository)
        if not (repository.is_dir() and any(repository.iterdir())):
            raise ServerError(f"model repository {repository} is missing or empty: run `widefunnel build` first")
        self.ports = self.ports.resolved()
        for name in ("http", "grpc", "metrics"):
            port = getattr(self.ports, name)
            if port_in_use(port):
                raise ServerError(f"{name} port {port} is already in use; pick another with --{name}-port")
        self._workdir = Path(tempfile.mkdtemp(prefix="widefunnel-server-"))
        backend_dir = assemble_backends(self._workdir / "backends")
        if self.log_path is None:
            self.log_path = self._workdir / "tritonserver.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(
            self.command(backend_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(self.env),
            start_new_session=True,
        )
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        if self.supervise_stubs:
            self.supervisor = StubSupervisor(self)
            self.supervisor.start()
        return self

    def log_text(self) -> str:
        if self.log_path and Path(self.log_path).exists():
            return Path(self.log_path).read_text(errors="replace")
        return ""

    def failure_reason(self) -> str:
        """The server's own words: model load failures first, else the log's tail."""
        lines = self.log_text().splitlines()
        noise = ("CUDA", "CudaDriverHelper", "pinned memory")  # no GPU here: expected, not a failure
        reasons = [ln for ln in lines if (ln[:1] == "E" or "failed to load" in ln or "UNAVAILABLE" in ln
                                          or "Address already in use" in ln) and not any(n in ln for n in noise)]
        reasons += [ln for ln in lines if ln.startswith("error:")]
        picked = reasons or lines[-25:]
        return "\n".join(dict.fromkeys(picked))

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready:\n"
                    f"{self.failure_reason()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {self.startup_timeout:.0f}s:\n{self.failure_reason()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT lets Triton drain in-flight requests; SIGKILL only if it hangs."""
        proc, self.process = self.process, None
        if self.supervisor is not None:
            self.supervisor.stopped.set()
            self.supervisor = None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            code = proc.returncode
            # The stubs live in the server's process group; make sure none outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return code

    def kill(self) -> None:
        """Simulate a crash (SIGKILL to the whole group, stubs included)."""
        if self.supervisor is not None:
            self.supervisor.stopped.set()
            self.supervisor = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()
