"""`widefunnel items add` on a real tritonserver (issue 17): new films from their content become a new version of
every step, swapped in under load (0 failed, 0 mixed); they are served at once as seeds and as candidates, equal
to the in-process funnel; takedown and restore apply to them; rollback and restart behave as for any build."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_swap import Load

from widefunnel import model_configs as mcfg
from widefunnel.cli import main
from widefunnel.client.client import WidefunnelClient, WidefunnelError
from widefunnel.data import load_catalogue
from widefunnel.evaluation.pipeline import InProcessFunnel
from widefunnel.layout import read_builds
from widefunnel.security import ADMIN_KEY_ENV

pytestmark = pytest.mark.server

CAT = load_catalogue()
NEW = [  # one copies Toy Story's content (id 1); the other is a sequel-like title
    {"id": 1700, "title": CAT.titles[1], "year": int(CAT.years[1]), "genres": list(CAT.genres[1])},
    {"id": 1701, "title": "Star Wars: Episode I - The Phantom Menace", "year": 1999,
     "genres": ["Action", "Adventure", "Sci-Fi"]},
]


@pytest.fixture(scope="module")
def served(built_repository, tmp_path_factory):
    from widefunnel.server import TritonServer

    repository = tmp_path_factory.mktemp("items-add") / "repo"
    shutil.copytree(built_repository, repository)
    server = TritonServer(repository)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


def test_items_added_under_load_are_served_at_once_and_roll_back(served, tmp_path, monkeypatch, capsys):
    repository = served.repository
    fp1 = read_builds(repository)["1"]["fingerprint"]
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in NEW))
    monkeypatch.setenv(ADMIN_KEY_ENV, served.admin_key)
    seeds = CAT.item_ids[:200].tolist()
    with Load(served.grpc_url, seeds) as load:
        assert main(["items", "add", str(new), "--repository", str(repository), "--url", served.http_url]) == 0
    out = capsys.readouterr().out
    assert "2 item(s) added to build 1" in out and "serving version 2, was 1" in out
    fp2 = read_builds(repository)["2"]["fingerprint"]
    assert fp2 != fp1
    assert load.outcomes and not [o.error for o in load.outcomes if o.error]  # 0 failed
    for o in load.outcomes:  # 0 mixed: every answer from one build
        assert len(set(o.fingerprints)) == 1 and o.fingerprints[0] in (fp1, fp2)
    assert load.outcomes[-1].fingerprints[0] == fp2

    local = InProcessFunnel(repository)
    for protocol, url in (("grpc", served.grpc_url), ("http", served.http_url)):
        with WidefunnelClient(url, protocol) as client:
            rec = client.recommend([1700, 1701, 1, 50], top_n=20)  # new items as seeds
            assert rec.fingerprint == [fp2] * 4
            np.testing.assert_array_equal(rec.item_id, local.recommend([1700, 1701, 1, 50], top_n=20).item_id)
            got = client.retrieve([1], candidates=50)  # as candidates: the copy of Toy Story, from Toy Story
            assert 1700 in got["relevance"][0][0]
            scored = client.score([1], [[1700, 1701, 50]])
            assert np.isfinite(scored["score"]).all()

    with WidefunnelClient(served.grpc_url, "grpc") as client:
        assert main(["items", "remove", "1700", "--repository", str(repository)]) == 0  # a takedown holds
        assert 1700 not in client.retrieve([1], candidates=50)["relevance"][0][0]
        with pytest.raises(WidefunnelError, match="seed_item_id"):
            client.recommend([1700])
        assert main(["items", "restore", "1700", "--repository", str(repository)]) == 0
        assert 1700 in client.retrieve([1], candidates=50)["relevance"][0][0]

        assert main(["rollback", "--url", served.http_url, "--repository", str(repository)]) == 0
        with pytest.raises(WidefunnelError, match="seed_item_id") as refused:  # build 1 never had them
            client.recommend([1700])
        assert refused.value.field == "seed_item_id"
        assert client.recommend([1, 50]).fingerprint == [fp1] * 2
        assert 1700 not in client.retrieve([1], candidates=1000)["relevance"][0][0]

    served.stop()  # a restart serves what the ensembles' configs on disk pin: build 1 after the rollback
    served.start()
    with WidefunnelClient(served.grpc_url, "grpc") as client:
        assert client.recommend([1]).fingerprint == [fp1]
    assert main(["swap", "--to", "2", "--url", served.http_url, "--repository", str(repository)]) == 0
    with WidefunnelClient(served.grpc_url, "grpc") as client:
        assert client.recommend([1700]).fingerprint == [fp2]


def test_a_refused_file_writes_nothing(served, tmp_path, capsys):
    repository = served.repository
    before = sorted(p.name for p in (repository / mcfg.ENSEMBLE).parent.glob("*/*"))
    bad = tmp_path / "bad.csv"
    bad.write_text("id,title,year,genres\n1800,Fine,1999,Drama\n1801,Bad,1999,Space Western\n")
    assert main(["items", "add", str(bad), "--repository", str(repository)]) == 2
    assert "bad.csv:3: field 'genres': unknown genre(s) ['Space Western']" in capsys.readouterr().err
    assert sorted(p.name for p in (repository / mcfg.ENSEMBLE).parent.glob("*/*")) == before
