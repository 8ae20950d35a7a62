"""What one served repository is started with: every default of a server (ports, addresses, keys, timeouts) here.

`ServerSettings` is frozen: the same settings start the server again after a crash, and a cluster may hand one
to many servers (`dataclasses.replace` for a variant). The running processes live in `triton.TritonServer`; the
stub supervisor's knobs are its own (`supervisor.SupervisorTiming`), carried here so a server starts with one
object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from widefunnel.gateway.checks import Limits
from widefunnel.security import new_key
from widefunnel.server.ports import Ports
from widefunnel.server.supervisor import SupervisorTiming

LOOPBACK = "127.0.0.1"
ANY_ADDRESS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServerSettings:
    """One server's configuration. Keys left empty are filled with fresh random ones (the gateway key only
    when there is a gateway), so a settings object always says which keys its server uses."""

    repository: Path
    ports: Ports = field(default_factory=Ports)  # client-facing; 0 = a free port, picked at the first start
    host: str = LOOPBACK  # where the client-facing ports bind; tritonserver's own stay on loopback
    gateway: bool = True  # False: tritonserver itself is exposed (inference open, control plane keyed)
    admin_key: str | None = field(default=None, repr=False)  # None: a fresh random key for this server
    # with a gateway: a fresh random key unless given; without one: always None
    gateway_key: str | None = field(default=None, repr=False)
    explicit: bool = True  # --model-control-mode=explicit, every model loaded at start
    log_path: Path | None = None  # None: tritonserver.log in the server's temporary work folder
    extra_args: tuple[str, ...] = ()  # appended to tritonserver's command line
    env: Mapping[str, str] = field(default_factory=dict)  # added to the stubs' environment
    limits: Limits = field(default_factory=Limits)  # the gateway's request bounds
    supervise_stubs: bool = True
    supervision: SupervisorTiming = field(default_factory=SupervisorTiming)
    startup_timeout: float = 180.0  # each process, to its ready endpoint
    ready_poll_s: float = 0.25
    probe_timeout: float = 2.0  # one readiness probe
    stop_timeout: float = 30.0  # tritonserver's drain after SIGINT, before SIGKILL
    restart_stop_timeout: float = 10.0  # the same when restarting a crashed server: what is left is broken
    gateway_stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalize once, here
        set_(self, "repository", Path(self.repository))
        set_(self, "log_path", Path(self.log_path) if self.log_path is not None else None)
        set_(self, "extra_args", tuple(self.extra_args))
        set_(self, "env", MappingProxyType(dict(self.env)))
        set_(self, "admin_key", self.admin_key or new_key())
        set_(self, "gateway_key", (self.gateway_key or new_key()) if self.gateway else None)

    @property
    def connect_host(self) -> str:
        """Where a local client connects: loopback when the ports bind every address."""
        return LOOPBACK if self.host in ANY_ADDRESS else self.host

    @property
    def triton_address(self) -> str:
        """Where tritonserver's own ports bind: loopback behind a gateway, else the client-facing host."""
        return LOOPBACK if self.gateway else self.host
