"""The embedded Triton server: the `tritonserver` binary of the nvidia-pytriton wheel behind widefunnel's gateway.

- `distribution`: where the wheel keeps the server, the backend directory we assemble, the stub's environment;
- `ports`: free and taken ports;
- `processes`: what /proc says about the server's stubs, their memory and shared-memory regions;
- `supervisor`: replaces a dead Python stub without taking the ensembles down;
- `triton`: one server's lifecycle (gateway + tritonserver), `TritonServer`.
"""

from widefunnel.server.distribution import (
    PYTHON_BASED_BACKENDS,
    TritonDistribution,
    assemble_backends,
    server_environment,
)
from widefunnel.server.ports import Ports, free_port, port_in_use
from widefunnel.server.processes import dead_instances, process_dead, stub_processes, tree_rss_kib
from widefunnel.server.triton import ServerError, TritonServer

__all__ = ["PYTHON_BASED_BACKENDS", "Ports", "ServerError", "TritonDistribution", "TritonServer",
           "assemble_backends", "dead_instances", "free_port", "port_in_use", "process_dead",
           "server_environment", "stub_processes", "tree_rss_kib"]
