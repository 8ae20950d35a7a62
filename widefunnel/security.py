"""The admin key that guards Triton's control plane, and the server flags that enforce it.

tritonserver 2.51 can require a header on chosen API classes (`--http-restricted-api`,
`--grpc-restricted-protocol`). Everything that changes or reveals the server's internals (loading models,
shared-memory registration, log and trace settings, model configs) needs the key; inference, health,
metadata, statistics and metrics stay open to the clients, probes and Prometheus that need them.

The key comes from `WIDEFUNNEL_ADMIN_KEY`, else from a key file (0600) that `widefunnel serve` writes when
there is none. Tools that load or unload models (`swap`, `rollback`, `cluster`, `perf`, the stub supervisor)
send it as the `widefunnel-admin-key` header (gRPC: `triton-grpc-protocol-widefunnel-admin-key`).

Behind a gateway, the open API classes are restricted too, with a per-server random *gateway key*
(`widefunnel-gateway-key`) that only the gateway and widefunnel's own probes send: tritonserver's loopback
ports then answer nothing to a local process that skips the gateway's checks.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from tritonclient._plugin import InferenceServerClientPlugin

log = logging.getLogger(__name__)

ADMIN_HEADER = "widefunnel-admin-key"
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
ADMIN_KEY_ENV = "WIDEFUNNEL_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "WIDEFUNNEL_ADMIN_KEY_FILE"
# Triton's API classes that control the server; the same names on HTTP and gRPC.
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace")
OPEN_APIS = ("inference", "health", "metadata", "statistics")
GATEWAY_HEADER = "widefunnel-gateway-key"
GRPC_GATEWAY_HEADER = "triton-grpc-protocol-" + GATEWAY_HEADER
GATEWAY_KEY_ENV = "WIDEFUNNEL_GATEWAY_KEY"
_KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MIN_KEY_LENGTH = 24


class AdminKeyError(RuntimeError):
    """No usable admin key: the message says where one is looked for and how to pass it."""


def default_key_file() -> Path:
    """`$WIDEFUNNEL_ADMIN_KEY_FILE`, else `$XDG_CONFIG_HOME/widefunnel/admin-key` (~/.config by default)."""
    if os.environ.get(ADMIN_KEY_FILE_ENV):
        return Path(os.environ[ADMIN_KEY_FILE_ENV])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "widefunnel" / "admin-key"


def new_key() -> str:
    return secrets.token_urlsafe(32)


def check_key(key: str) -> str:
    """Keys travel inside a server flag (`apis:header=key`) and a header: URL-safe characters only."""
    key = key.strip()
    if len(key) < MIN_KEY_LENGTH or not set(key) <= _KEY_CHARS:
        raise AdminKeyError(f"admin key: at least {MIN_KEY_LENGTH} characters from A-Z a-z 0-9 - _ "
                            f"(`python -c 'import secrets; print(secrets.token_urlsafe(32))'` makes one)")
    return key


def read_key(path: Path | None = None) -> str | None:
    """The key from the environment, else from the key file; None when neither has one."""
    if os.environ.get(ADMIN_KEY_ENV):
        return check_key(os.environ[ADMIN_KEY_ENV])
    path = Path(path) if path is not None else default_key_file()
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        raise AdminKeyError(f"admin key file {path} is readable by others: chmod 600 {path}")
    return check_key(path.read_text())


def ensure_key(path: Path | None = None) -> tuple[str, str]:
    """(key, where it came from): the environment's or the file's, else a new key written to the file (0600)."""
    existing = read_key(path)
    path = Path(path) if path is not None else default_key_file()
    if existing is not None:
        return existing, ADMIN_KEY_ENV if os.environ.get(ADMIN_KEY_ENV) else str(path)
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.info("wrote a new admin key to %s", path)
    return key, str(path)


def require_key(key: str | None = None, path: Path | None = None) -> str:
    """The key a control-plane call sends; AdminKeyError saying how to pass one when there is none."""
    if key:
        return check_key(key)
    found = read_key(path)
    if found is None:
        where = Path(path) if path is not None else default_key_file()
        raise AdminKeyError(
            f"no admin key: the server's model-repository API needs one. Set {ADMIN_KEY_ENV}, pass "
            f"--admin-key-file, or run where `widefunnel serve` wrote {where}")
    return found


def admin_headers(key: str | None, protocol: str = "http") -> dict[str, str] | None:
    """The header a control-plane call carries: Triton's gRPC server expects the restricted-protocol
    header under its own prefix (`triton-grpc-protocol-<header>`)."""
    if not key:
        return None
    return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER: key}


def gateway_headers(key: str | None, protocol: str = "http") -> dict[str, str]:
    """The header every call to a gateway-fronted tritonserver's own port carries; {} without a key."""
    if not key:
        return {}
    return {GRPC_GATEWAY_HEADER if protocol == "grpc" else GATEWAY_HEADER: key}


def restriction_flags(key: str, gateway_key: str | None = None) -> list[str]:
    """tritonserver flags that put the control-plane APIs behind the admin key on both protocols and, given a
    gateway key, the open ones (inference, health, metadata, statistics) behind that one. tritonserver allows
    one restriction per API class, so each class is named in exactly one flag."""
    key = check_key(key)
    apis = ",".join(RESTRICTED_APIS)
    flags = [f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}",
             f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}"]
    if gateway_key:
        gateway_key, opened = check_key(gateway_key), ",".join(OPEN_APIS)
        flags += [f"--http-restricted-api={opened}:{GATEWAY_HEADER}={gateway_key}",
                  f"--grpc-restricted-protocol={opened}:{GATEWAY_HEADER}={gateway_key}"]
    return flags


class HeadersPlugin(InferenceServerClientPlugin):
    """A tritonclient plugin that adds fixed headers to every call of one client (tritonclient keeps one
    plugin per client, so the admin and gateway keys share this one)."""

    def __init__(self, headers: dict[str, str]):
        self.headers = dict(headers)

    def __call__(self, request) -> None:
        if request.headers is None:
            request.headers = {}
        request.headers.update(self.headers)


class AdminKeyPlugin(HeadersPlugin):
    """A tritonclient plugin that adds the admin header to every call of one client."""

    def __init__(self, key: str, protocol: str = "http"):
        super().__init__(admin_headers(check_key(key), protocol))


def with_admin_key(client, key: str | None, protocol: str = "http"):
    """`client` (tritonclient HTTP or gRPC, sync or asyncio), sending the admin key on every call."""
    if key:
        client.register_plugin(AdminKeyPlugin(key, protocol))
    return client


def with_keys(client, admin_key: str | None = None, gateway_key: str | None = None, protocol: str = "http"):
    """`client` sending the admin key and/or the gateway key on every call (tritonserver's own port)."""
    headers = (admin_headers(admin_key, protocol) or {}) | gateway_headers(gateway_key, protocol)
    if headers:
        client.register_plugin(HeadersPlugin(headers))
    return client
