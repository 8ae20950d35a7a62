"""What the gateway adds to every call it forwards: the gateway key tritonserver's own ports require.

`TritonServer` starts the gateway with the key in `WIDEFUNNEL_GATEWAY_KEY` (the environment, not argv: another
user cannot read it from /proc/<pid>/cmdline). No key (a gateway started by hand, or in front of a server
without one): nothing is added. A client-sent copy of the header is dropped by the proxy before these are
merged, so a client can neither pass nor probe a key of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from widefunnel.security import GATEWAY_HEADER, GATEWAY_KEY_ENV, GRPC_GATEWAY_HEADER


def upstream_key() -> str | None:
    return os.environ.get(GATEWAY_KEY_ENV) or None


def http_headers() -> dict[str, str]:
    key = upstream_key()
    return {GATEWAY_HEADER: key} if key else {}


def grpc_metadata() -> tuple[tuple[str, str], ...]:
    key = upstream_key()
    return ((GRPC_GATEWAY_HEADER, key),) if key else ()


def without_key(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Headers or metadata without any client-sent copy of the gateway header (either protocol's spelling)."""
    return tuple((k, v) for k, v in pairs if k.lower() not in (GATEWAY_HEADER, GRPC_GATEWAY_HEADER))
