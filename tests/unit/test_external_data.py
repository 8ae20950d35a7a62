"""Each exported step keeps its tables out of the protobuf (ONNX external data, page-aligned in one file beside
the graph) and answers exactly as the same graph with its tables inside."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

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
    data = path.with_name(ONNX_DATA_FILE)
    assert data.stat().st_size >= codes.nbytes + scales.nbytes  # the item table lives there ...
    assert path.stat().st_size < 200_000  # ... not in the protobuf
    model = onnx.load(str(path), load_external_data=False)
    offsets = [int(e.value) for t in model.graph.initializer for e in t.external_data if e.key == "offset"]
    assert len(offsets) >= 2 and all(o % 4096 == 0 for o in offsets)  # each table page-aligned, for mapping
    assert sorted(p.name for p in path.parent.iterdir()) == [ONNX_FILE, ONNX_DATA_FILE]

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
