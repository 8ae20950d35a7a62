"""Each exported step keeps its tables out of the protobuf (ONNX external data, page-aligned in one file beside
the graph) and answers exactly as the same graph with its tables inside."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from widefunnel.arrays import npy_region
from widefunnel.builders.export import export_reranker, externalize
from widefunnel.builders.models import Reranker
from widefunnel.layout import ONNX_DATA_FILE, ONNX_FILE
from widefunnel.tensor_names import Step


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_an_exported_reranker_keeps_its_item_table_outside_and_answers_the_same(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (50_000, 32)).astype(np.int8)
    scales = rng.random(50_000).astype(np.float32)
    torch.manual_seed(0)
    path = tmp_path / "v" / ONNX_FILE
    export_reranker(Reranker(32, [16], "mlp", 4), codes, scales, "00000000000000ab", path)
    assert path.stat().st_size < 200_000  # the item table is not in the protobuf ...
    model = onnx.load(str(path), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data}
    # ... but each per-item table in a .npy of its own (so `items add` appends its rows), read at its data
    for name, table in (("table.codes", codes), ("table.scales", scales)):
        stored = np.load(path.with_name(where[name]["location"]))
        np.testing.assert_array_equal(stored, table)
        assert int(where[name]["offset"]) == npy_region(path.with_name(where[name]["location"]))[0]
    assert {p.name for p in path.parent.iterdir()} == {ONNX_FILE, *(w["location"] for w in where.values())}

    embedded = tmp_path / "embedded.onnx"
    onnx.save_model(onnx.load(str(path)), str(embedded))  # the same graph, tables inside the protobuf
    assert embedded.stat().st_size > codes.nbytes
    feeds = {Step.QUERY: rng.standard_normal((3, 32)).astype(np.float32),
             Step.CANDIDATE_ID: rng.integers(-1, 50_000, (3, 400)).astype(np.int64),
             Step.KEEP: np.full((3, 1), 50, np.int32)}
    for mine, theirs in zip(_run(path, feeds), _run(embedded, feeds)):
        np.testing.assert_array_equal(mine, theirs)


def test_files_torch_scattered_are_folded_into_one(tmp_path):
    """Past 2 GB torch writes each table to a file named after it; those become the one data file."""
    rng = np.random.default_rng(1)
    table = onnx.numpy_helper.from_array(rng.standard_normal((40_000, 8)).astype(np.float32), "scorer.features")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["scorer.features", "ids"], ["out"])], "g",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [None])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [None, 8])], [table])
    path = tmp_path / ONNX_FILE
    onnx.save_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert (tmp_path / "scorer.features").is_file()
    ids = {"ids": np.array([0, 7, 39_999], np.int64)}
    before = _run(path, ids)[0]
    externalize(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ONNX_FILE, ONNX_DATA_FILE]
    np.testing.assert_array_equal(_run(path, ids)[0], before)


def test_a_reranker_reads_the_index_files_in_place_and_answers_as_with_its_own_table(tmp_path):
    """The build hard-links the ANN index's codes and scales into the reranker's folder; the graph reads them there
    (through each id's row) instead of a by-id copy in its own data, with the same answers."""
    import os

    from widefunnel.ann.index import CODES_FILE, SCALES_FILE, build_index, item_rows, item_table, save_index
    from widefunnel.layout import link_or_copy

    rng = np.random.default_rng(2)
    size = 30_000
    ids = np.sort(rng.choice(np.arange(1, size), 20_000, replace=False))
    index = build_index(rng.standard_normal((len(ids), 32)).astype(np.float32), ids, "00000000000000ab",
                        ivf_lists=8, seed=0)  # IVF: the index's rows are not in id order
    save_index(index, tmp_path / "ann" / "index")
    torch.manual_seed(0)
    model = Reranker(32, [16], "mlp", 4)
    own = tmp_path / "own" / ONNX_FILE
    export_reranker(model, *item_table(index, size), "00000000000000ab", own)
    folder = tmp_path / "rerank"
    shared = tuple(link_or_copy(tmp_path / "ann" / "index" / n, folder / n) for n in (CODES_FILE, SCALES_FILE))
    path = folder / ONNX_FILE
    export_reranker(model, index.codes, index.scales, "00000000000000ab", path, rows=item_rows(index, size),
                    shared=shared)
    assert os.stat(folder / CODES_FILE).st_ino == os.stat(tmp_path / "ann" / "index" / CODES_FILE).st_ino
    locations = {e.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert {CODES_FILE, SCALES_FILE} <= locations  # read in place ...
    own_files = sum(f.stat().st_size for f in folder.iterdir() if f.name not in (ONNX_FILE, CODES_FILE, SCALES_FILE))
    assert own_files < index.codes.nbytes  # ... not copied: rows only (4 B/item)
    feeds = {Step.QUERY: rng.standard_normal((4, 32)).astype(np.float32),
             Step.CANDIDATE_ID: np.where(rng.random((4, 300)) < 0.05, -1, rng.choice(ids, (4, 300))).astype(np.int64),
             Step.KEEP: np.full((4, 1), 40, np.int32)}
    for mine, theirs in zip(_run(path, feeds), _run(own, feeds)):
        np.testing.assert_array_equal(mine, theirs)


def _head_tables(rng, n: int, d: int = 32):
    """Each head's float table (unit rows, as the tower makes them; row 0 pads), its int8 index over ids 1..n-1,
    and the index's files as a build writes them: (float tables, [Int8Table], [(codes, scales, rows) paths])."""
    from widefunnel.ann.index import build_index, item_rows
    from widefunnel.builders.export import Int8Table

    floats, heads, arrays = [], [], []
    for _ in range(2):
        table = rng.standard_normal((n, d)).astype(np.float32)
        table /= np.linalg.norm(table, axis=1, keepdims=True)
        ids = np.arange(1, n)
        index = build_index(table[1:], ids, "00000000000000cd", ivf_lists=4, seed=0)
        rows = item_rows(index, n)
        floats.append(table)
        heads.append(Int8Table(index.codes, index.scales, rows))
        arrays.append((np.asarray(index.codes), np.asarray(index.scales), rows))
    return floats, heads, arrays


def _link(arrays, folder):
    """The heads' arrays saved once under ``folder / "ann"`` and hard-linked into ``folder``: the shared files."""
    from widefunnel.layout import head_file, link_or_copy

    (folder / "ann").mkdir(parents=True)
    files = []
    for h, head_arrays in enumerate(arrays):
        for name, array in zip(("codes.npy", "scales.npy", "rows.npy"), head_arrays, strict=True):
            np.save(folder / "ann" / f"{h}{name}", array)
            files.append(link_or_copy(folder / "ann" / f"{h}{name}", folder / head_file(str(h), name)))
    return tuple(files)


def test_the_query_tower_is_each_heads_index_table_looked_up_within_half_a_step(tmp_path):
    """The served query tower answers each id's int8 row of the ANN index, dequantised: within half a
    quantisation step (scale / 2 per component) of the tower's float embedding, and it stores no table of its
    own (it reads the ANN step's files)."""
    from widefunnel.builders.export import export_query_tower

    floats, heads, arrays = _head_tables(np.random.default_rng(4), 40_000)
    path = tmp_path / ONNX_FILE
    export_query_tower(heads, "00000000000000cd", path, shared=_link(arrays, tmp_path))
    ids = np.array([[1], [2], [39_999], [17]], np.int64)
    *embeddings, fingerprint = _run(path, {Step.ITEM_ID: ids})
    for got, table, (codes, scales, rows) in zip(embeddings, floats, arrays, strict=True):
        r = rows[ids[:, 0]]
        np.testing.assert_array_equal(got, codes[r].astype(np.float32) * scales[r][:, None])
        assert (np.abs(got - table[ids[:, 0]]) <= scales[r][:, None] / 2 + 1e-7).all()
    assert (fingerprint == 0xCD).all()
    data = path.with_name(ONNX_DATA_FILE)
    assert path.stat().st_size + (data.stat().st_size if data.exists() else 0) < 200_000  # the graph, no table


def test_the_scorer_reads_the_heads_index_tables_within_a_stated_bound(tmp_path):
    """The scorer's features begin with the heads' embeddings; served, those come from the ANN step's int8
    files; its other columns are its own, a multi-hot one as uint8 (exact). Its probabilities and scores stay within
    0.03 of the float scorer's (0.002 on average; an untrained scorer over random unit vectors)."""
    import os

    from widefunnel.builders.export import ScorerGraph, export_scorer
    from widefunnel.builders.models import CompositeScorer

    rng = np.random.default_rng(6)
    floats, heads, arrays = _head_tables(rng, 30_000)
    extra = rng.standard_normal((30_000, 5)).astype(np.float32)
    extra[:, [1, 3]] = rng.random((30_000, 2)) < 0.3  # multi-hot columns, between float ones: stored as uint8
    torch.manual_seed(0)
    scorer = CompositeScorer(torch.from_numpy(np.concatenate([*floats, extra], axis=1)), [16], 2).eval()
    whole = tmp_path / "whole" / ONNX_FILE
    export_scorer(scorer, 2, "00000000000000ef", whole)
    files = _link(arrays, tmp_path / "scorer")
    path = tmp_path / "scorer" / ONNX_FILE
    export_scorer(scorer, 2, "00000000000000ef", path, heads=heads, shared=files)
    assert os.stat(files[0]).st_ino == os.stat(tmp_path / "scorer" / "ann" / "0codes.npy").st_ino
    # the heads' tables not copied, the multi-hot columns 1 byte an item
    own = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file() and f.name != ONNX_FILE
              and os.stat(f).st_nlink == 1)
    assert own < 30_000 * (3 * 4 + 2) + 100_000
    feeds = {Step.ITEM_ID: rng.integers(1, 30_000, (16, 1)),
             Step.CANDIDATE_ID: np.concatenate([rng.integers(1, 30_000, (16, 199)), np.full((16, 1), -1)], axis=1),
             Step.VALUE_WEIGHTS: np.ones((16, 3), np.float32)}
    mine, theirs = _run(path, feeds), _run(whole, feeds)
    ids = torch.from_numpy(feeds[Step.CANDIDATE_ID][:, :-1])
    rows = ScorerGraph(scorer, "00000000000000ef", heads)._rows(ids)
    assert torch.equal(rows[..., 64:], scorer.features[ids][..., 64:])  # its own columns, uint8 ones too: exact
    real = feeds[Step.CANDIDATE_ID] >= 0
    for a, b in (*zip(mine[:2], theirs[:2], strict=True), (mine[2][real], theirs[2][real])):
        np.testing.assert_allclose(a, b, rtol=0, atol=0.03)
        assert np.abs(a - b).mean() < 0.002
    assert np.isneginf(mine[2][~real]).all()
