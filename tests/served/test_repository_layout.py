"""A build stores each per-item table once (issue 30): the steps that read another step's table get a hard link
in their own version folder, and the ONNX graphs read their tables as external data, never inside the protobuf.
(Served answers over this layout: every other served test.)"""

from __future__ import annotations

import os

import onnx
import pytest

from widefunnel import layout
from widefunnel.ann.index import CODES_FILE, ROWS_FILE, SCALES_FILE
from widefunnel.merge import HEADS
from widefunnel.model_configs import STEP_MODELS

pytestmark = pytest.mark.server


def _locations(path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def test_each_table_is_stored_once_and_read_in_place(built_repository):
    repo = built_repository
    v = str(max(layout.complete_versions(repo, STEP_MODELS)))
    fields = repo / "preprocess" / v / layout.ITEM_FIELDS
    same = [(path, repo / f"ann_{h}" / v / layout.ITEM_FIELDS / path.name) for h in HEADS for path in fields.iterdir()]
    assert len(same) >= 2 * 4  # genres (offsets, codes), years, the schema
    for head in HEADS:  # the ANN index's codes, scales and row map: read by the reranker, query tower and scorer
        ann = repo / f"ann_{head}" / v
        owners = {CODES_FILE: ann / layout.INDEX_DIR / CODES_FILE, SCALES_FILE: ann / layout.INDEX_DIR / SCALES_FILE,
                  ROWS_FILE: ann / ROWS_FILE}
        for name, owner in owners.items():
            same.append((owner, repo / f"rerank_{head}" / v / name))
            same += [(owner, repo / step / v / layout.head_file(head, name)) for step in ("query_tower",
                                                                                        "composite_scorer")]
        assert set(owners) <= _locations(repo / f"rerank_{head}" / v / layout.ONNX_FILE)
        for step in ("query_tower", "composite_scorer"):
            assert {layout.head_file(head, n) for n in owners} <= _locations(repo / step / v / layout.ONNX_FILE)
    for owner, reader in same:
        assert os.stat(owner).st_ino == os.stat(reader).st_ino, (owner, reader)
    for step in ("query_tower", "composite_scorer", *(f"rerank_{h}" for h in HEADS)):
        assert (repo / step / v / layout.ONNX_FILE).stat().st_size < 200_000, step  # the graph, no tables
