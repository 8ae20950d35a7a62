"""Ports: a free one for each server we start, and a clear error when one is taken."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

_HANDED_OUT: set[int] = set()
_LOCK = threading.Lock()


def free_port() -> int:
    """A port nothing listens on now and that this process has not handed out before: servers started side
    by side pick their ports before any of them binds, and the kernel may offer a picked port again."""
    with _LOCK:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise OSError("no free port left that this process has not handed out")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class Ports:
    """The ports clients use (HTTP and gRPC: the gateway's; metrics: tritonserver's). 0 = pick a free one."""

    http: int = 0
    grpc: int = 0
    metrics: int = 0

    def resolved(self) -> Ports:
        return Ports(*(p or free_port() for p in (self.http, self.grpc, self.metrics)))
