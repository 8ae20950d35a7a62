"""The asyncio client offers every call of the sync client with the same parameters, so the two cannot drift
apart again (no server needed; the answers are compared in `test_async_client.py`)."""

from __future__ import annotations

import inspect

from widefunnel.client.client import AsyncWidefunnelClient, WidefunnelClient


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") or name == "__init__"}


def test_every_sync_call_has_an_async_counterpart_with_the_same_parameters():
    sync, aio = _public(WidefunnelClient), _public(AsyncWidefunnelClient)
    missing = sorted(set(sync) - set(aio))
    assert not missing, f"AsyncWidefunnelClient lacks {missing}"
    for name, signature in sync.items():
        assert list(aio[name].parameters.values()) == list(signature.parameters.values()), name
        if name != "__init__":
            assert inspect.iscoroutinefunction(getattr(AsyncWidefunnelClient, name)), f"{name} is not async"
    assert inspect.iscoroutinefunction(AsyncWidefunnelClient.__aenter__)  # `async with`, as `with` for the sync one
    assert inspect.iscoroutinefunction(AsyncWidefunnelClient.__aexit__)
