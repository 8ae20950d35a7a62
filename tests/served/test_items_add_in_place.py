"""`items add` without a rewrite (issue 30): the new version hard-links every file of the build it grows, appends
the new items' rows to the per-item tables in place and writes only what is small or ordered; the old version
reads exactly what it read before; deleting it leaves the new one serving on a real tritonserver; a second add
from the same build copies the tables the first one grew."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from widefunnel import layout
from widefunnel import model_configs as mcfg
from widefunnel.ann.index import load_index
from widefunnel.arrays import load_table
from widefunnel.builders.new_items import add_items
from widefunnel.data import load_catalogue
from widefunnel.evaluation.pipeline import InProcessFunnel

pytestmark = pytest.mark.server

CAT = load_catalogue()
NEW = [{"id": 1700, "title": CAT.titles[1], "year": int(CAT.years[1]), "genres": list(CAT.genres[1])},
       {"id": 1703, "title": "Documentary about deep sea fishing fleets", "year": 2023, "genres": ["Documentary"]}]
SEEDS = [1, 50, 181, 300]
# Written whole by an add (small, or ordered by external id), besides the graphs' protobufs and the row listings.
REWRITTEN = {"1.parquet", "fields.json", "manifest.json", layout.ONNX_FILE,
             layout.TABLE_ROWS}


def _files(repository, version: int) -> dict[str, os.stat_result]:
    out = {}
    for step in mcfg.STEP_MODELS:
        folder = repository / step / str(version)
        out |= {f"{step}/{p.relative_to(folder)}": os.stat(p) for p in folder.rglob("*") if p.is_file()}
    return out


def shared_names(before: dict, after: dict) -> set[str]:
    return {name for name in after if name in before and after[name].st_ino == before[name].st_ino}


def _disk(repository) -> int:
    """The bytes of the repository's files, each file once however many links it has (as `du` counts)."""
    seen = {os.stat(p).st_ino: os.stat(p).st_size for p in repository.rglob("*") if p.is_file()}
    return sum(seen.values())


@pytest.fixture(scope="module")
def grown(built_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("in-place") / "repo"
    subprocess.run(["cp", "-a", str(built_repository), str(repository)], check=True)  # links kept, as built
    before = _files(repository, 1)
    answers = InProcessFunnel(repository, version=1).recommend(SEEDS, top_n=20).item_id
    disk = _disk(repository)
    new = tmp_path_factory.mktemp("in-place-file") / "new.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in NEW))
    result = add_items(repository, new)
    return repository, result, before, answers, disk


def test_the_new_version_links_every_table_and_writes_only_the_new_rows(grown):
    repository, result, before, _, disk = grown
    assert result.version == 2
    after = _files(repository, 2)
    assert set(after) == set(before) | {f"{s}/{layout.TABLE_ROWS}" for s in mcfg.STEP_MODELS if s != "quota_merge"} | {
        f"{s}/{layout.ITEM_FIELDS}/{layout.TABLE_ROWS}" for s in ("preprocess", "ann_engagement", "ann_relevance")} | {
        f"preprocess/{layout.ITEM_TITLES}/1.parquet"}  # the new items' titles: a part of their own
    assert "preprocess/catalogue.npy" in shared_names(before, after)  # new ids past the old: appended, in order
    shared = shared_names(before, after)
    written = {name for name in after if name not in shared}
    assert {name.rsplit("/", 1)[-1] for name in written} <= REWRITTEN, written
    grew = {name for name in shared if after[name].st_size > before[name].st_size}
    for head in ("engagement", "relevance"):  # the index's rows, each id's row, read by four steps from one file
        for name in ("index/codes.npy", "index/scales.npy", "index/ids.npy", "item_rows.npy"):
            assert f"ann_{head}/{name}" in grew
        assert after[f"ann_{head}/index/codes.npy"].st_size - before[f"ann_{head}/index/codes.npy"].st_size == 2 * 32
        for step in (f"rerank_{head}", "query_tower", "composite_scorer"):  # links of the grown files, not copies
            name = "codes.npy" if step.startswith("rerank") else f"{head}_codes.npy"
            assert after[f"{step}/{name}"].st_ino == after[f"ann_{head}/index/codes.npy"].st_ino
    assert {"composite_scorer/rest_uint8.npy", "composite_scorer/rest_float.npy", "preprocess/item_fields/t0_codes.npy",
            "preprocess/catalogue.npy"} <= grew
    assert not any(name.endswith(layout.ITEM_IDS) for name in after)  # MovieLens: its ids are the internal ids
    assert (after["query_tower/build_state.pt"].st_ino == before["query_tower/build_state.pt"].st_ino
            and after["query_tower/build_state.pt"].st_size < 1 << 20)  # weights only, whatever the catalogue
    # every byte the add put on disk is counted, and it is the rewritten files and the new rows
    rewritten = sum({after[name].st_ino: after[name].st_size for name in written}.values())
    appended = sum({after[n].st_ino: after[n].st_size - before[n].st_size for n in grew}.values())  # each file once
    assert result.bytes_written == rewritten + appended
    assert _disk(repository) - disk <= result.bytes_written + 64 * 1024  # + the configs and builds.json
    assert appended < 4096  # two items: the rows of every table, a few hundred bytes


def test_the_old_version_reads_what_it_read_before(grown):
    repository, _, before, answers, _ = grown
    for name in before:
        path = repository / name.split("/", 1)[0] / "1" / name.split("/", 1)[1]
        if path.suffix == ".npy" and "index" not in path.parts:
            assert len(load_table(path)) == len(np.load(path, mmap_mode="r")), name  # its header's rows
    for head in ("engagement", "relevance"):
        index = load_index(repository / f"ann_{head}" / "1" / layout.INDEX_DIR)  # sha256 of its own bytes holds
        assert index.count == len(CAT.item_ids)
    np.testing.assert_array_equal(InProcessFunnel(repository, version=1).recommend(SEEDS, top_n=20).item_id, answers)
    grown_funnel = InProcessFunnel(repository, version=2)
    assert 1700 in grown_funnel.retrieve(np.array([[1]]), k=50)["relevance"][0][0]
    years = grown_funnel.retrieve(np.array([[1]]), grown_funnel.filters(1, years=(2020, 2030)), k=5)
    assert all(ids[0, 0] == 1703 and (ids[0, 1:] == -1).all() for ids, _, _ in years.values())


_GPU_PATH = """
import os, sys, json
os.environ["TRITON_INTERPRET"] = "1"  # the triton-language kernel on this CPU
import numpy as np, torch
from widefunnel.ann.index import ROWS_FILE, load_index, load_row_map
from widefunnel.ann.search import exact_search
from widefunnel.ann.triton_kernel import GpuIndex
from widefunnel.layout import INDEX_DIR
from widefunnel.tensor_names import Step
version = sys.argv[1]
index = load_index(os.path.join(version, INDEX_DIR))  # as the plugin's initialize, whatever the instance kind
if os.path.exists(os.path.join(version, ROWS_FILE)):
    load_row_map(index, os.path.join(version, ROWS_FILE))
gpu = GpuIndex.from_index(index, "cpu")
rng = np.random.default_rng(0)
q = rng.standard_normal((3, index.codes.shape[1])).astype(np.float32)
exclude = np.array([int(index.ids[-1]), -1, int(index.ids[0])])
want_ids, want_scores = exact_search(index, q, 40, exclude_ids=exclude)
for use_kernel in (True, False):
    out = gpu.search(torch.from_numpy(q), 40, torch.from_numpy(exclude), use_kernel=use_kernel)
    assert np.array_equal(out[Step.CANDIDATE_ID].numpy(), want_ids), use_kernel
    assert np.array_equal(out[Step.CANDIDATE_SCORE].numpy().view(np.int32), want_scores.view(np.int32)), use_kernel
print(json.dumps({"rows": int(index.count), "ids": [int(i) for i in index.ids[-2:]]}))
"""


def test_the_gpu_path_reads_the_grown_version_as_it_is_on_disk(grown):
    """A KIND_GPU instance loads a grown version by the same loaders as a CPU one, with no second format: its
    ``GpuIndex`` (the triton-language kernel through the interpreter, and the torch fallback) answers exactly
    as the CPU scan over the version's rows, the added items included. No GPU is needed to read the files."""
    repository, *_ = grown
    for head in ("engagement", "relevance"):
        done = subprocess.run([sys.executable, "-c", _GPU_PATH, str(repository / f"ann_{head}" / "2")],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["rows"] == len(CAT.item_ids) + len(NEW) and seen["ids"] == [1700, 1703]


def test_deleting_the_old_version_leaves_the_new_one_serving(grown, tmp_path):
    from widefunnel.client.client import WidefunnelClient
    from widefunnel.server import TritonServer

    source, result, *_ = grown
    repository = tmp_path / "repo"
    subprocess.run(["cp", "-a", str(source), str(repository)], check=True)
    for step in mcfg.STEP_MODELS:
        shutil.rmtree(repository / step / "1")
    local = InProcessFunnel(repository, version=2)
    server = TritonServer(repository)
    server.start()
    try:
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            with WidefunnelClient(url, protocol) as client:
                rec = client.recommend([1700, 1703, 1, 50], top_n=20)
                assert rec.fingerprint == [result.fingerprint] * 4
                np.testing.assert_array_equal(rec.item_id, local.recommend([1700, 1703, 1, 50], top_n=20).item_id)
                assert 1700 in client.retrieve([1], candidates=50)["relevance"][0][0]
    finally:
        server.stop()
        server.cleanup()


def test_a_second_add_from_the_same_build_copies_the_tables_the_first_grew(grown, tmp_path):
    repository, first, *_ = grown
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": 1700, "title": "Another film on the same id", "year": 2001,
                                 "genres": ["Drama"]}) + "\n")
    second = add_items(repository, other, from_version=1)
    assert second.version == 3 and second.fingerprint not in (first.fingerprint,)
    codes = {v: repository / "ann_engagement" / str(v) / "index" / "codes.npy" for v in (1, 2, 3)}
    assert os.stat(codes[3]).st_ino != os.stat(codes[1]).st_ino == os.stat(codes[2]).st_ino
    three, two = InProcessFunnel(repository, version=3), InProcessFunnel(repository, version=2)
    assert load_index(codes[3].parent).count == load_index(codes[1].parent).count + 1
    assert 1703 not in three.retrieve(np.array([[1]]), k=2000)["relevance"][0][0]
    assert 1703 in two.retrieve(np.array([[1]]), k=2000)["relevance"][0][0]
    np.testing.assert_array_equal(three.recommend([1700], top_n=5).item_id.shape, (1, 5))
    assert layout.complete_versions(repository, mcfg.STEP_MODELS) == [1, 2, 3]


def test_an_add_that_fails_leaves_the_build_as_it_was(grown, tmp_path, monkeypatch):
    """Interrupted after its rows were appended (here: publishing fails), an add takes them back and leaves no
    staged folder, so the build's files end where they did and the next add appends to them again."""
    from widefunnel.builders import grown_version

    repository, *_ = grown
    before = {name: stat.st_size for name, stat in _files(repository, 2).items()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(grown_version, "publish_version", fail)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"id": 1800, "title": "Never published", "year": 2001}) + "\n")
    with pytest.raises(OSError, match="disk full"):
        add_items(repository, new, from_version=2)
    assert {name: stat.st_size for name, stat in _files(repository, 2).items()} == before
    assert not [p for p in repository.glob("*/.*.partial")]
    monkeypatch.undo()
    inode = os.stat(repository / "ann_engagement" / "2" / "index" / "codes.npy").st_ino
    again = add_items(repository, new, from_version=2)  # (a prune may take version 2 now: its file lives on)
    assert os.stat(repository / "ann_engagement" / str(again.version) / "index" / "codes.npy").st_ino == inode


def test_a_build_whose_scorer_keeps_its_columns_inside_is_refused_before_anything_is_written(grown, tmp_path):
    """A build written before tables grew in place (the scorer's own columns inside `model.onnx.data`) is refused
    by name, and nothing of it changes."""
    source, *_ = grown
    repository = tmp_path / "repo"
    subprocess.run(["cp", "-a", str(source), str(repository)], check=True)
    newest = max(layout.complete_versions(repository, mcfg.STEP_MODELS))
    (repository / "composite_scorer" / str(newest) / "rest_uint8.npy").unlink()
    before = {name: stat.st_size for name, stat in _files(repository, newest).items()}
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"id": 1900, "title": "Refused"}) + "\n")
    with pytest.raises(ValueError, match=r"item columns \['rest_uint8'\] are not tables of their own .* rebuild once"):
        add_items(repository, new)
    assert {name: stat.st_size for name, stat in _files(repository, newest).items()} == before
    assert max(layout.complete_versions(repository, mcfg.STEP_MODELS)) == newest
    assert not [p for p in repository.glob("*/.*.partial")]

