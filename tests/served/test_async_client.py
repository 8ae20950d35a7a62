"""The asyncio client is the sync client's equal (issue 32): exactly the same answers and the same errors, on the
real server over HTTP and gRPC (`tritonclient.http.aio` / `.grpc.aio`). Same calls and parameters:
`test_client_parity.py`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from widefunnel.client.client import AsyncWidefunnelClient, InvalidRequest, WidefunnelClient, WidefunnelError

pytestmark = pytest.mark.server

SEEDS = [1, 50, 181, 98]
FILTERS = {"exclude": [2, 3, 172], "include_genres": ["Drama", "Comedy"], "exclude_genres": ["Horror"],
           "years": (1980, 1998)}


@pytest.fixture(params=["http", "grpc"])
def clients(request, server):
    url = server.http_url if request.param == "http" else server.grpc_url
    with WidefunnelClient(url, request.param) as sync:
        yield sync, lambda: AsyncWidefunnelClient(url, request.param)


def _run(make, method: str, *args, **kwargs):
    """One call on a fresh asyncio client, closed afterwards (an aio client belongs to one event loop)."""
    async def call():
        async with make() as client:
            return await getattr(client, method)(*args, **kwargs)
    return asyncio.run(call())


def _same(a, b) -> None:
    """Exactly equal: arrays bit for bit (NaN pads included), containers element by element."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    elif hasattr(a, "__dataclass_fields__"):
        for name in a.__dataclass_fields__:
            _same(getattr(a, name), getattr(b, name))
    else:
        assert a == b


CALLS = [
    ("recommend", (SEEDS,), {"top_n": 10}),
    ("recommend", (SEEDS,), {"alpha": 0.3, "top_n": [5, 10, 3, 7], "value_weights": [1.0, 0.5, 0.2, 0.1],
                             "candidates": 50, "keep": 40, **FILTERS}),
    ("recommend_many", (list(range(1, 12)),), {"batch_size": 4, "top_n": 5, "candidates": 30, **FILTERS}),
    ("retrieve", (SEEDS,), {}),
    ("retrieve", (SEEDS,), {"candidates": 30, **FILTERS}),
    ("score", ([50, 1], [[2, 3, 4, 5], [181, 172, 174, 50]]), {}),
    ("score", ([50],), {"candidates": [[2, 3]], "value_weights": [1.0, 0.0, 0.0, 1.0]}),
]


@pytest.mark.parametrize("method, args, kwargs", CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CALLS)])
def test_the_async_client_answers_what_the_sync_client_answers(clients, method, args, kwargs):
    sync, make = clients
    expected = getattr(sync, method)(*args, **kwargs)
    _same(expected, _run(make, method, *args, **kwargs))


def test_filters_and_width_reach_the_server(clients):
    """Not a vacuous equality: the filters and the width change the async client's answer."""
    _, make = clients
    plain = _run(make, "retrieve", [1])
    narrow = _run(make, "retrieve", [1], candidates=20, exclude=plain["relevance"][0][0, :5].tolist())
    assert narrow["relevance"][0].shape[1] == 20 != plain["relevance"][0].shape[1]
    assert not set(plain["relevance"][0][0, :5].tolist()) & set(narrow["relevance"][0][0].tolist())


BAD = [
    ("recommend", ([1],), {"top_n": 5, "include_genres": ["Space Opera"]}, "include_genre"),
    ("recommend", ([1],), {"alpha": 1.5}, "alpha"),
    ("retrieve", ([1],), {"exclude": [-5]}, "exclude_item_id"),
    ("score", ([50], [[2, 999999]]), {}, "candidate_item_id"),
]


@pytest.mark.parametrize("method, args, kwargs, field", BAD, ids=[b[3] for b in BAD])
def test_a_bad_request_raises_the_same_error_naming_the_field(clients, method, args, kwargs, field):
    sync, make = clients
    with pytest.raises(WidefunnelError) as expected:
        getattr(sync, method)(*args, **kwargs)
    with pytest.raises(WidefunnelError) as got:
        _run(make, method, *args, **kwargs)
    assert type(got.value) is type(expected.value) is InvalidRequest
    assert got.value.field == expected.value.field == field
    assert field in str(got.value)
