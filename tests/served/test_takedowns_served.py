"""Takedowns on a real tritonserver (issue 17): `widefunnel items remove` applies from the next request on,
at every entry point, during load, across a restart, and `restore` undoes it; no rebuild, no reload."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import private_server

from widefunnel import model_configs as mcfg
from widefunnel.cli import main
from widefunnel.client.client import WidefunnelClient, WidefunnelError
from widefunnel.evaluation.pipeline import InProcessFunnel

pytestmark = pytest.mark.server

SEEDS = [1, 50, 181, 300]


@pytest.fixture(scope="module")
def own(built_repository, tmp_path_factory):
    yield from private_server(built_repository, tmp_path_factory, "takedowns")


def _answers(client, seeds=tuple(SEEDS[1:])) -> tuple[set[int], set[int]]:
    rec = client.recommend(list(seeds), top_n=50)
    got = client.retrieve(list(seeds), candidates=500)
    retrieved = set().union(*(set(got[h][0].ravel().tolist()) for h in mcfg.HEADS))
    return set(rec.item_id.ravel().tolist()), retrieved


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_taken_down_items_leave_every_answer_and_restore_brings_them_back(own, protocol, capsys):
    repository = own.repository
    url = own.grpc_url if protocol == "grpc" else own.http_url
    with WidefunnelClient(url, protocol) as client:
        recommended, retrieved = _answers(client)
        victims = sorted(recommended - {-1} - set(SEEDS))[:5] + [SEEDS[0]]
        assert main(["items", "remove", *map(str, victims), "--repository", str(repository),
                     "--reason", "test"]) == 0
        recommended, retrieved = _answers(client)
        assert not set(victims) & (recommended | retrieved)
        rec = client.recommend(SEEDS[1:], top_n=50)
        assert (rec.item_id >= 0).all()  # top_n stays full: the scan excludes them, nothing is cut afterwards
        local = InProcessFunnel(repository).recommend(SEEDS[1:], top_n=50)
        np.testing.assert_array_equal(rec.item_id, local.item_id)
        with pytest.raises(WidefunnelError, match=rf"seed_item_id: item id\(s\) \[{SEEDS[0]}\] are taken down") as e:
            client.recommend([SEEDS[0]])
        assert e.value.field == "seed_item_id"
        with pytest.raises(WidefunnelError, match="candidate_item_id: item id"):
            client.score([SEEDS[1]], [victims[:2]])
        assert main(["items", "list-removed", "--repository", str(repository)]) == 0
        listed = capsys.readouterr().out
        assert all(f"{v}\t" in listed for v in victims)
        assert main(["items", "restore", *map(str, victims), "--repository", str(repository)]) == 0
        recommended_after, _ = _answers(client)
        assert set(victims[:5]) & recommended_after  # back in the answers
        assert client.recommend([SEEDS[0]]).item_id.shape == (1, 10)


def test_a_takedown_during_load_applies_from_the_next_request_without_a_failure(own):
    with WidefunnelClient(own.grpc_url, "grpc") as client:
        victims = sorted(set(client.recommend(SEEDS, top_n=30).item_id.ravel().tolist()) - {-1} - set(SEEDS))[:8]
    answers: list[tuple[float, set[int]]] = []
    errors: list[str] = []
    stop = threading.Event()

    def load(i: int) -> None:
        with WidefunnelClient(own.grpc_url, "grpc") as client:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    ids = set(client.recommend(SEEDS, top_n=30).item_id.ravel().tolist())
                    answers.append((start, ids))
                except WidefunnelError as exc:
                    errors.append(str(exc))

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert main(["items", "remove", *map(str, victims), "--repository", str(own.repository)]) == 0
    written = time.monotonic()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    before = [ids for start, ids in answers if start < written - 1.0]
    after = [ids for start, ids in answers if start > written]
    assert before and any(ids & set(victims) for ids in before)
    assert after and not any(ids & set(victims) for ids in after)
    assert main(["items", "restore", *map(str, victims), "--repository", str(own.repository)]) == 0


def test_a_takedown_survives_a_restart(built_repository, tmp_path_factory):
    import shutil

    from widefunnel.server import TritonServer

    repository = tmp_path_factory.mktemp("takedown-restart") / "repo"
    shutil.copytree(built_repository, repository)
    recommended = set(InProcessFunnel(repository).recommend(SEEDS, top_n=20).item_id.ravel().tolist())
    victims = sorted(recommended - {-1} - set(SEEDS))[:3]  # a seed taken down would be refused, not answered
    assert main(["items", "remove", *map(str, victims), "--repository", str(repository)]) == 0
    with TritonServer(repository) as server, WidefunnelClient(server.grpc_url, "grpc") as client:
        assert not set(victims) & set(client.recommend(SEEDS, top_n=20).item_id.ravel().tolist())


def test_items_commands_refuse_bad_input_by_name(own, tmp_path, capsys):
    repository = str(own.repository)
    assert main(["items", "remove", "999999", "--repository", repository]) == 2
    assert "item ids [999999] are not in the catalogue" in capsys.readouterr().err
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n6 oops\n")
    assert main(["items", "remove", "--file", str(ids), "--repository", repository]) == 2
    assert "ids.txt, line 2: 'oops' is not an item id" in capsys.readouterr().err
    assert main(["items", "restore", "5", "--repository", repository]) == 2
    assert "item ids [5] are not taken down" in capsys.readouterr().err
    ids.write_bytes(b"5\n6\n\xef\xbc\x91\n")  # a full-width 1: UTF-8, not an id
    assert main(["items", "remove", "--file", str(ids), "--repository", repository]) == 2
    assert "ids.txt, line 3: '\uff11' is not an item id" in capsys.readouterr().err
    ids.write_bytes(b"5\n\xff6\n")
    assert main(["items", "remove", "--file", str(ids), "--repository", repository]) == 2
    assert "ids.txt, line 2: not UTF-8 (byte 0xff at column 1)" in capsys.readouterr().err
    new = tmp_path / "new.csv"
    new.write_bytes(b"id,title,year,genres\n5000,Caf\xe9,1999,Comedy\n")
    assert main(["items", "add", str(new), "--repository", repository]) == 2
    assert "new.csv:2: field 'title': not UTF-8 (byte 0xe9)" in capsys.readouterr().err
