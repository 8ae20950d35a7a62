"""The embedded Triton server: the `tritonserver` binary of the nvidia-pytriton wheel behind widefunnel's gateway.

- `distribution`: where the wheel keeps the server, the backend directory we assemble, the stub's environment;
- `keeper`: restarts a server that died, with growing pauses, `Keeper`;
- `ports`: free and taken ports;
- `processes`: what /proc says about the server's stubs, their memory and shared-memory regions;
- `settings`: what a server is started with, every default in one place, `ServerSettings`;
- `supervisor`: replaces a dead Python stub without taking the ensembles down (it sees the server through the
  narrow `Supervised`, never `TritonServer`);
- `triton`: one server's processes and lifecycle (gateway + tritonserver), `TritonServer`.
"""

from widefunnel.server.distribution import (
    PYTHON_BASED_BACKENDS,
    TritonDistribution,
    assemble_backends,
    server_environment,
)
from widefunnel.server.keeper import Keeper
from widefunnel.server.ports import Ports, free_port, port_in_use
from widefunnel.server.processes import dead_instances, process_dead, stub_processes, tree_rss_kib
from widefunnel.server.settings import ServerSettings
from widefunnel.server.triton import ServerError, TritonServer

__all__ = ["PYTHON_BASED_BACKENDS", "Keeper", "Ports", "ServerError", "ServerSettings", "TritonDistribution",
           "TritonServer", "assemble_backends", "dead_instances", "free_port", "port_in_use", "process_dead",
           "server_environment", "stub_processes", "tree_rss_kib"]
