"""Hot-swap and rollback on a real tritonserver under concurrent load (its own server and repository copy).

The flow an operator runs: a server serves build 1; `widefunnel build` writes build 2 (another seed, so another
fingerprint) into the live repository; `swap` moves traffic to 2 and `rollback` back to 1 while 8 clients keep
querying. No request may fail, every answer must come from exactly one build, and the switch must be clean.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers import ClientThreads, admin_client

from widefunnel import model_configs as mcfg
from widefunnel.client.client import WidefunnelClient, WidefunnelError
from widefunnel.client.swap import SwapError, disk_versions, rollback, served_pins, served_version, swap

pytestmark = pytest.mark.server

CLIENTS = 8


@dataclass
class Swapped:
    server: object
    repository: Path
    fingerprints: dict[int, str]
    seeds: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def swapped(tmp_path_factory, built_repository, test_config):
    from widefunnel.builders.repository import build
    from widefunnel.server import TritonServer

    repository = tmp_path_factory.mktemp("swap") / "model_repository"
    shutil.copytree(built_repository, repository)
    server = TritonServer(repository)
    server.start()
    try:
        config = copy.deepcopy(test_config)
        config["seed"] = test_config["seed"] + 1  # another model: another fingerprint
        # a cheaper build than the session's (serving and swapping do not depend on how well it is trained)
        config["data"]["max_train_pairs"] = 20000
        for stage in ("training", "rerank", "scorer"):
            config[stage]["epochs"] = 1
        result = build(repository, config, mcfg.Target("cpu"), progress=False)  # into the live repository
        assert result.version == 2
        builds = json.loads((repository / "builds.json").read_text())
        fps = {int(v): b["fingerprint"] for v, b in builds.items()}
        assert fps[1] != fps[2]
        seeds = np.load(repository / "preprocess" / "1" / "catalogue.npy")[:200].tolist()
        yield Swapped(server, repository, fps, seeds)
    finally:
        server.stop()
        server.cleanup()


@dataclass
class Outcome:
    start: float
    end: float
    fingerprints: tuple[str, ...] = ()
    error: str | None = None


class Load(ClientThreads):
    """CLIENTS threads, each its own gRPC client, querying two seeds per request until stopped (bounded)."""

    def __init__(self, url: str, seeds: list[int], max_seconds: float = 240.0):
        self.url, self.seeds, self.deadline = url, seeds, time.monotonic() + max_seconds
        self.outcomes: list[Outcome] = []
        super().__init__([(i,) for i in range(CLIENTS)])

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        with WidefunnelClient(self.url, "grpc") as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                start = time.monotonic()
                try:
                    rec = client.recommend(rng.sample(self.seeds, 2), top_n=5)
                    outcome = Outcome(start, time.monotonic(), tuple(rec.fingerprint))
                except WidefunnelError as exc:
                    outcome = Outcome(start, time.monotonic(), error=str(exc))
                with self.lock:
                    self.outcomes.append(outcome)
                time.sleep(0.05)  # 8 in flight at most, but leave the 2-core box room to load versions

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.start >= start and o.end <= end]


def test_build_into_live_repository_does_not_change_what_is_served(swapped):
    assert disk_versions(swapped.repository) == [1, 2]
    with WidefunnelClient(swapped.server.grpc_url, "grpc") as client:
        assert client.recommend([1, 50]).fingerprint == [swapped.fingerprints[1]] * 2
    with admin_client(swapped.server) as client:  # closed: open ones delay shutdown
        assert set(served_pins(client).values()) == {1}


def test_swap_and_rollback_under_load_never_fail_or_mix(swapped, capsys, monkeypatch):
    from widefunnel.cli import main
    from widefunnel.layout import served_version as served_on_record

    fp1, fp2 = swapped.fingerprints[1], swapped.fingerprints[2]
    monkeypatch.setenv("WIDEFUNNEL_ADMIN_KEY", swapped.server.admin_key)  # the CLI reads the key from here
    with Load(swapped.server.grpc_url, swapped.seeds) as load:
        time.sleep(2.0)
        t_swap = time.monotonic()
        staged: list[float] = []  # when each stage load returned: reloading steps must not move the pins
        report = swap(swapped.server.http_url, swapped.repository, 2, admin_key=swapped.server.admin_key,  # over HTTP
                      log=lambda action: staged.append(time.monotonic()) if action.startswith("stage") else None)
        t_swapped = time.monotonic()
        served_after_swap = served_on_record(swapped.repository)
        time.sleep(2.0)
        t_back = time.monotonic()
        code = main(["rollback", "--url", swapped.server.grpc_url, "--protocol", "grpc",  # the CLI, over gRPC
                     "--repository", str(swapped.repository)])
        t_rolled = time.monotonic()
        time.sleep(2.0)
    outcomes = load.outcomes
    errors = [o.error for o in outcomes if o.error]
    assert not errors, f"{len(errors)} of {len(outcomes)} requests failed, e.g. {errors[:3]}"
    assert (report.from_version, report.to_version, report.fingerprint) == (1, 2, fp2)
    assert code == 0 and f"serving version 1 (fingerprint {fp1}), was 2" in capsys.readouterr().out
    assert report.ensembles == list(mcfg.ENSEMBLES)
    # every answer from one build, and one of the two builds
    assert all(len(set(o.fingerprints)) == 1 and o.fingerprints[0] in (fp1, fp2) for o in outcomes)
    before = load.between(0, t_swap)
    during_swap = load.between(t_swap, t_swapped)
    after_swap = load.between(t_swapped, t_back)
    after_back = load.between(t_rolled, float("inf"))
    assert len(before) >= 8 and len(after_swap) >= 8 and len(after_back) >= 8, \
        (len(before), len(after_swap), len(after_back))
    assert {o.fingerprints[0] for o in before} == {fp1}
    assert len(staged) == len(mcfg.STEP_MODELS)
    while_staging = load.between(t_swap, staged[-1])  # 8 step reloads, each reloading the ensembles using it
    assert len(while_staging) >= CLIENTS and {o.fingerprints[0] for o in while_staging} == {fp1}
    assert {o.fingerprints[0] for o in after_swap} == {fp2}
    assert {o.fingerprints[0] for o in after_back} == {fp1}
    assert {o.fingerprints[0] for o in during_swap} <= {fp1, fp2} and len(during_swap) >= CLIENTS
    # recorded for the builder: no prune removes the served build or the one its rollback needs
    assert (served_after_swap, served_on_record(swapped.repository)) == (2, 1)
    for ensemble in mcfg.ENSEMBLES:  # persisted: a restart serves the rolled-back build too
        disk = mcfg.from_pbtxt((swapped.repository / ensemble / "config.pbtxt").read_text())
        assert {s.model_version for s in disk.ensemble_scheduling.step} == {1}, ensemble
    with admin_client(swapped.server) as client:
        assert served_version(client) == 1
        for model in mcfg.STEP_MODELS:  # the old build was retired, the rollback target is what is loaded
            assert client.is_model_ready(model, "1") and not client.is_model_ready(model, "2"), model


def test_swap_to_a_build_whose_index_does_not_match_fails_with_the_servers_reason(swapped):
    """Version 3: version 2's artifacts, but the config expects build 1's tower: the ANN refuses to load it."""
    repository = swapped.repository
    for model in mcfg.STEP_MODELS:
        shutil.copytree(repository / model / "2", repository / model / "3")
    for head in mcfg.HEADS:
        path = repository / f"ann_{head}" / "config.pbtxt"
        config = mcfg.from_pbtxt(path.read_text())
        config.parameters["tower_fingerprints"].string_value += f";3={swapped.fingerprints[1]}"
        path.write_text(mcfg.to_pbtxt(config))
    with admin_client(swapped.server) as client:
        served = served_version(client)
        with pytest.raises(SwapError) as info:
            swap(swapped.server.http_url, repository, 3, admin_key=swapped.server.admin_key)
        message = str(info.value)
        assert "ann_engagement" in message and "version 3" in message
        assert (f"'{swapped.fingerprints[2]}' does not match the serving tower '{swapped.fingerprints[1]}'"
                in message), message
        assert served_version(client) == served
        disk = mcfg.from_pbtxt((repository / mcfg.ENSEMBLE / "config.pbtxt").read_text())
        assert {s.model_version for s in disk.ensemble_scheduling.step} == {served}
        for model in mcfg.STEP_MODELS:
            assert not client.is_model_ready(model, "3"), model
            assert client.is_model_ready(model, str(served)), model
    with WidefunnelClient(swapped.server.grpc_url, "grpc") as wf:
        assert wf.recommend([1, 50]).fingerprint == [swapped.fingerprints[served]] * 2


def test_swap_refuses_a_version_not_on_disk_and_rollback_past_the_oldest(swapped):
    with pytest.raises(SwapError, match="not on disk"):
        swap(swapped.server.http_url, swapped.repository, 9, admin_key=swapped.server.admin_key)
    with admin_client(swapped.server) as client:
        assert served_version(client) == 1
    with pytest.raises(SwapError, match="nothing to roll back to"):
        rollback(swapped.server.http_url, swapped.repository, admin_key=swapped.server.admin_key)


def test_a_takedown_holds_across_swap_and_rollback(swapped):
    """Takedowns belong to the repository, not to a build: neither a swap nor a rollback brings an item back."""
    from widefunnel.cli import main

    url, repository, key = swapped.server.http_url, swapped.repository, swapped.server.admin_key
    seeds = [1, 50, 181]
    with WidefunnelClient(swapped.server.grpc_url, "grpc") as client:
        victims = sorted(set(client.recommend(seeds, top_n=20).item_id.ravel().tolist()) - {-1} - set(seeds))[:4]
        assert main(["items", "remove", *map(str, victims), "--repository", str(repository)]) == 0
        try:
            for step in ("swap", "rollback"):
                if step == "swap":
                    swap(url, repository, 2, admin_key=key)
                else:
                    swap(url, repository, 1, admin_key=key)  # version 3 on disk is broken: back to 1 by number
                rec = client.recommend(seeds, top_n=20)
                assert not set(victims) & set(rec.item_id.ravel().tolist()), step
                assert set(rec.fingerprint) == {swapped.fingerprints[2 if step == "swap" else 1]}
        finally:
            assert main(["items", "restore", *map(str, victims), "--repository", str(repository)]) == 0
