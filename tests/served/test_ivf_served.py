"""IVF served (the ANN steps' `search = "ivf"`): a real tritonserver answers a batch of seeds, unfiltered and
filtered, over gRPC and HTTP, exactly as the in-process funnel's IVF search does; the batch's probed lists are
scanned once for all its seeds (`kernels.ivf_scan_shared`), and the answers are IVF's, not the exact scan's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_filters_served import FILTERS

from widefunnel import model_configs as mcfg
from widefunnel.ann.query import search
from widefunnel.client.client import WidefunnelClient
from widefunnel.evaluation.pipeline import InProcessFunnel
from widefunnel.merge import HEADS

SEEDS = [1, 50, 181, 98, 7, 300, 1000, 12]
K = 300


@pytest.fixture(scope="module")
def ivf_served(built_repository, tmp_path_factory):
    from widefunnel.server import TritonServer

    repository = tmp_path_factory.mktemp("ivf") / "repo"
    shutil.copytree(built_repository, repository)
    for head in HEADS:
        path = repository / f"ann_{head}" / "config.pbtxt"
        config = mcfg.from_pbtxt(path.read_text())
        config.parameters["search"].string_value = "ivf"
        config.parameters["nprobe"].string_value = "3"
        path.write_text(mcfg.to_pbtxt(config))
    server = TritonServer(repository)
    server.start()
    yield server, InProcessFunnel(repository)
    server.stop()
    server.cleanup()


@pytest.mark.parametrize("filters", [{}, *FILTERS], ids=["none", "genre+years", "not-genres+ids", "rare-genre"])
def test_served_ivf_is_the_in_process_ivf(ivf_served, filters):
    server, local = ivf_served
    seeds = np.asarray(SEEDS, np.int64).reshape(-1, 1)
    want = local.retrieve(seeds, local.filters(len(SEEDS), **filters) if filters else None, k=K)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with WidefunnelClient(url, protocol) as client:
            got = client.retrieve(SEEDS, candidates=K, **filters)
        for head in HEADS:
            assert np.array_equal(got[head][0], want[head][0]), (protocol, head)
            assert np.array_equal(got[head][1].view(np.int32), want[head][1].view(np.int32)), (protocol, head)


def test_the_served_answers_are_ivfs_not_the_exact_scans(ivf_served):
    """3 of 16 lists probed: some seed's 300 candidates differ from the exact scan's (else IVF was not on)."""
    server, local = ivf_served
    with WidefunnelClient(server.grpc_url, "grpc") as client:
        got = client.retrieve(SEEDS, candidates=K)
    seeds = np.asarray(SEEDS, np.int64).reshape(-1, 1)
    emb = local.retrieve(seeds, k=K)
    for head in HEADS:
        exact, _ = search(local.indexes[head], emb[head][2], K, seeds[:, 0])
        assert not np.array_equal(got[head][0], exact), head
