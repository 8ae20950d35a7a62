"""ONNX export of each learned stage with the tensor names its Triton config declares.

Every exported graph also emits FINGERPRINT (the build's tower fingerprint as int64), so the merge step can
prove that one response was computed by one coherent set of versions.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from widefunnel.builders.models import CompositeScorer, ItemTower, Reranker, unified_value
from widefunnel.layout import ONNX_DATA_FILE, fingerprint_hex, fingerprint_int
from widefunnel.tensor_names import Step

OPSET = 17


def tower_fingerprint(tower: ItemTower) -> str:
    """sha256 over the tower's parameters and buffers: names the embedding space everything else uses."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return fingerprint_hex(int(digest.hexdigest()[:16], 16))


def _stamp(like: torch.Tensor, value: int) -> torch.Tensor:
    return torch.zeros_like(like[:, :1], dtype=torch.int64) + value


class QueryTowerGraph(nn.Module):
    def __init__(self, tower: ItemTower, fingerprint: str):
        super().__init__()
        self.tower, self.fp = tower, fingerprint_int(fingerprint)

    def forward(self, item_id: torch.Tensor):
        eng, rel = self.tower(item_id[:, 0])
        return eng, rel, _stamp(item_id, self.fp)


class RerankGraph(nn.Module):
    """Scores the head's candidates and keeps each seed's best min(KEEP, K), sorted.

    Candidates arrive as ids: the head's item table (the ANN index's int8 codes and scales, row = item id) is
    part of the graph, so embeddings never cross the step boundary (SilverTorch's resident representations).
    A batch may mix seeds asking for different KEEP: the graph keeps the largest and pads the rest (-1, -inf)."""

    def __init__(self, reranker: Reranker, codes: np.ndarray, scales: np.ndarray, fingerprint: str):
        super().__init__()
        self.reranker, self.fp = reranker, fingerprint_int(fingerprint)
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(codes, np.int8)))
        self.register_buffer("scales", torch.from_numpy(np.ascontiguousarray(scales, np.float32)))

    def forward(self, query: torch.Tensor, candidate_id: torch.Tensor, keep: torch.Tensor):
        real = candidate_id >= 0  # the ANN pads short lists with id -1: row 0 (zeros), scored -inf
        rows = torch.where(real, candidate_id, torch.zeros_like(candidate_id))
        emb = self.codes[rows].to(torch.float32) * self.scales[rows].unsqueeze(-1)
        scores = self.reranker.serve(query, emb)
        scores = torch.where(real, scores, torch.full_like(scores, float("-inf")))
        keep = keep.to(torch.int64)
        k = torch.minimum(keep.max().reshape(1), torch._shape_as_tensor(scores)[1:2])
        top, pos = torch.topk(scores, k[0], dim=1)
        ids = torch.gather(candidate_id, 1, pos)
        within = torch.arange(top.shape[1], dtype=torch.int64).unsqueeze(0) < keep
        ids = torch.where(within, ids, torch.full_like(ids, -1))
        top = torch.where(within, top, torch.full_like(top, float("-inf")))
        return ids, top, _stamp(candidate_id, self.fp)


class ScorerGraph(nn.Module):
    def __init__(self, scorer: CompositeScorer, fingerprint: str):
        super().__init__()
        self.scorer, self.fp = scorer, fingerprint_int(fingerprint)

    def forward(self, item_id: torch.Tensor, candidate_id: torch.Tensor, value_weights: torch.Tensor):
        real = candidate_id >= 0  # a pad (-1) is looked up as item 0 and scored -inf, never as the last item
        probs, cumulative = self.scorer(item_id[:, 0], torch.where(real, candidate_id, torch.zeros_like(candidate_id)))
        score = unified_value(probs, cumulative, value_weights)
        score = torch.where(real, score, torch.full_like(score, float("-inf")))
        return probs, cumulative, score, _stamp(item_id, self.fp)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs, dynamic_axes=dynamic)
    externalize(path)


def externalize(path: Path, threshold: int = 64 * 1024, align: int = 4096) -> None:
    """Moves every table of ``path`` of at least ``threshold`` bytes out of the protobuf into one file beside it
    (`layout.ONNX_DATA_FILE`, ONNX external data, each table at a page-aligned offset). Protobuf stops at 2 GB;
    external data does not, and ONNX Runtime maps it read-only, so the page cache holds one copy however many
    processes serve it (instances, steps, two versions during a swap). Files torch wrote for a graph past 2 GB
    are folded into that one file and removed."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    scattered = {entry.value for t in model.graph.initializer for entry in t.external_data if entry.key == "location"}
    onnx.load_external_data_for_model(model, str(path.parent))  # what torch wrote outside, if anything
    data_path = path.with_name(ONNX_DATA_FILE)
    tmp = data_path.with_name(f".{data_path.name}.tmp")
    offset = 0
    with open(tmp, "wb") as out:
        for tensor in model.graph.initializer:
            raw = tensor.raw_data
            if len(raw) < threshold:
                continue
            pad = -offset % align
            out.write(b"\0" * pad)
            offset += pad
            out.write(raw)
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", ONNX_DATA_FILE), ("offset", str(offset)), ("length", str(len(raw)))):
                tensor.external_data.add(key=key, value=value)
            offset += len(raw)
    if offset == 0:
        tmp.unlink()
        return
    tmp.replace(data_path)
    onnx.save_model(model, str(path))
    for name in scattered - {ONNX_DATA_FILE}:
        (path.parent / name).unlink(missing_ok=True)


def export_query_tower(tower: ItemTower, fingerprint: str, path: Path) -> None:
    _export(QueryTowerGraph(tower, fingerprint), (torch.ones(2, 1, dtype=torch.int64),), path,
            [Step.ITEM_ID], [*Step.EMBEDDINGS, Step.FINGERPRINT],
            {n: {0: "batch"} for n in (Step.ITEM_ID, *Step.EMBEDDINGS, Step.FINGERPRINT)})


def export_reranker(reranker: Reranker, codes: np.ndarray, scales: np.ndarray, fingerprint: str,
                    path: Path) -> None:
    """``codes`` int8 [table, d] and ``scales`` float32 [table]: the head's item table by id (`item_table`)."""
    dim = codes.shape[1]
    args = (torch.randn(2, dim), torch.ones(2, 5, dtype=torch.int64), torch.full((2, 1), 3, dtype=torch.int32))
    _export(RerankGraph(reranker, codes, scales, fingerprint), args, path,
            [Step.QUERY, Step.CANDIDATE_ID, Step.KEEP], [Step.RERANK_ID, Step.RERANK_SCORE, Step.FINGERPRINT],
            {Step.QUERY: {0: "batch"}, Step.CANDIDATE_ID: {0: "batch", 1: "k"}, Step.KEEP: {0: "batch"},
             Step.RERANK_ID: {0: "batch", 1: "m"}, Step.RERANK_SCORE: {0: "batch", 1: "m"},
             Step.FINGERPRINT: {0: "batch"}})


def export_scorer(scorer: CompositeScorer, tasks: int, fingerprint: str, path: Path) -> None:
    args = (torch.ones(2, 1, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64), torch.ones(2, tasks + 1))
    _export(ScorerGraph(scorer, fingerprint), args, path,
            [Step.ITEM_ID, Step.CANDIDATE_ID, Step.VALUE_WEIGHTS],
            [Step.TASK_PROBS, Step.RELEVANCE_PROBS, Step.SCORE, Step.FINGERPRINT],
            {Step.ITEM_ID: {0: "batch"}, Step.CANDIDATE_ID: {0: "batch", 1: "m"}, Step.VALUE_WEIGHTS: {0: "batch"},
             Step.TASK_PROBS: {0: "batch", 1: "m"}, Step.RELEVANCE_PROBS: {0: "batch", 1: "m"},
             Step.SCORE: {0: "batch", 1: "m"}, Step.FINGERPRINT: {0: "batch"}})


def onnx_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
